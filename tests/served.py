"""`octavo serve` in a subprocess for the tests that drive a real server over HTTP: started on
a free port, waited for until /health answers, stopped with SIGINT (as Ctrl-C) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    log: str  # the server's stdout and stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def octavo_serve(
    argv: list[str], *, env: dict | None = None, timeout: float = 300.0, code: str | None = None
) -> Iterator[Served]:
    """`python -m octavo.entrypoints.cli <argv> --port P` until the block ends; a server that
    exits or is not healthy within `timeout` fails the test with the tail of its log. `code`:
    Python run as `python -c code <argv>` instead (a test's patches, then the CLI's main)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="octavo-serve-", suffix=".log", delete=False)
    run = ["-c", code] if code is not None else ["-m", "octavo.entrypoints.cli"]
    cmd = [sys.executable, *run, *argv, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"octavo serve exited with {proc.returncode}:\n{log.read()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"octavo serve not healthy after {timeout} s")
            time.sleep(0.5)
        yield Served(base, proc, log.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        os.unlink(log.name)
