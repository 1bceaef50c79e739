#!/usr/bin/env bash
# Debian's Chromium and its matching chromedriver, for the feature browser's tests
# (tests/test_browser.py drives them through selenium). Idempotent; run as root.
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
chromium --version
