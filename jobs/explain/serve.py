"""A model served inside the auto-interp job: `serve_command` (vLLM's `vllm serve` by default;
llama.cpp's server works too) started on a free local port in its own process group, waited
for until `/v1/models` answers, and stopped when the scoring ends, however it ends."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

from e2e.typed import ConfigError

READY_S = 1800  # a large model's first load from a shared filesystem takes minutes


@contextlib.contextmanager
def served(ai, ready_s: float = READY_S) -> Iterator[str]:
    """The base URL to ask: `ai.base_url`, or that of the server this starts for `ai.serve`."""
    if not ai.serve:
        yield ai.base_url
        return
    port = _free_port()
    cmd = shlex.split(ai.serve_command.format(model=ai.serve, port=port))
    proc = subprocess.Popen(cmd, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait(proc, url, ready_s, cmd[0])
        print(f"auto-interp: serving {ai.serve} at {url} (pid {proc.pid})", flush=True)
        yield url
    finally:
        _stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen, url: str, ready_s: float, name: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < ready_s:
        if proc.poll() is not None:
            raise ConfigError(f"autointerp.serve: {name} exited with status {proc.returncode} "
                              "before answering (its output is above)")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise ConfigError(f"autointerp.serve: {name} did not answer at {url} within {ready_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
