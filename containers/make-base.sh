#!/usr/bin/env bash
# Where no registry is reachable (this development machine, CI): a Debian bookworm base image
# made from Debian's own repositories with mmdebstrap, imported into podman as e2e-base, and the
# project image built on it with the local CPU torch wheel. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mmdebstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
if ! podman image exists localhost/e2e-base; then
  mmdebstrap --quiet --variant=apt \
    --include=python3,python3-venv,python3-pip,slurm-client,ca-certificates,libtcmalloc-minimal4 \
    bookworm containers/rootfs.tar
  podman import containers/rootfs.tar localhost/e2e-base >/dev/null
  rm -f containers/rootfs.tar
fi
mkdir -p containers/wheels
cp -n /opt/wheels/torch-2.13.0*.whl containers/wheels/ 2>/dev/null || true
# The machine reaches PyPI through a TLS proxy whose CA only the host's bundle holds.
cp /etc/ssl/certs/ca-certificates.crt containers/wheels/ca-certificates.crt
podman build -q --network host --build-arg BASE_IMAGE=localhost/e2e-base \
  --build-arg PIP_FIND_LINKS=/app/containers/wheels \
  --build-arg PIP_CERT=/app/containers/wheels/ca-certificates.crt -t localhost/e2e-sae-hpc .
echo "image: localhost/e2e-sae-hpc"
