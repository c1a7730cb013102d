"""Graceful shutdown and restart (issue 19, part 6): `octavo serve` as a subprocess on a tiny model.

SIGTERM stops accepting connections, lets requests in flight finish for up to --shutdown-timeout
seconds, then aborts the rest (a stream ends with finish_reason "abort" and [DONE], not a cut
connection) and exits; a server started at once on the same port serves (the
listening socket is bound with SO_REUSEADDR, so the old server's connections in TIME_WAIT do
not hold the port). Each engine step is slowed by 20 ms so a long stream outlives the timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from served import free_port

SLOW_STEPS = textwrap.dedent(
    """
    import sys, time
    import octavo.engine as engine

    step = engine.LLMEngine.step

    def slow_step(self):
        time.sleep(0.02)
        return step(self)

    engine.LLMEngine.step = slow_step
    from octavo.entrypoints.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
TIMEOUT = 2.0


def _serve(model: str, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SLOW_STEPS, "serve", model, "--device", "cpu", "--dtype", "float32"]
    cmd += ["--port", str(port), "--max-model-len", "1024", "--kv-cache-memory", "16MiB"]
    cmd += ["--shutdown-timeout", str(TIMEOUT), "--disable-access-log", "--served-model-name", "tiny"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_healthy(proc: subprocess.Popen, base: str, log_path: str) -> float:
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, open(log_path).read()[-3000:]
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        assert time.monotonic() - t0 < 120, "the server did not become healthy"
        time.sleep(0.1)


def test_sigterm_drains_within_the_timeout_and_a_restart_serves_at_once(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = str(tmp_path / "serve.log")
    with open(log_path, "w") as log:
        proc = _serve(model, port, log)
        try:
            _wait_healthy(proc, base, log_path)
            short = {"model": "tiny", "prompt": "Hello", "max_tokens": 20, "ignore_eos": True}
            long = {**short, "max_tokens": 900, "stream": True}  # >= 18 s at 20 ms a step
            results: dict[str, object] = {}

            def run_short() -> None:
                results["short"] = httpx.post(f"{base}/v1/completions", json=short, timeout=60)

            events: list[str] = []
            with httpx.Client(timeout=60) as client, client.stream("POST", f"{base}/v1/completions", json=long) as s:
                lines = s.iter_lines()
                events.append(next(line for line in lines if line.startswith("data: ")))
                waiter = threading.Thread(target=run_short)
                waiter.start()
                time.sleep(0.2)  # the short request is in flight
                t_term = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    events += [line for line in lines if line.startswith("data: ")]
                except httpx.RemoteProtocolError:
                    events.append("cut")  # the server closed the connection mid-stream at the timeout
            waiter.join(60)
            proc.wait(TIMEOUT + 30)
            took = time.monotonic() - t_term
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # the short request finished normally during the drain; the long stream was aborted just
        # before the timeout and ended properly: its last choice says "abort", then [DONE]
        short_resp = results["short"]
        assert isinstance(short_resp, httpx.Response) and short_resp.status_code == 200, short_resp
        assert short_resp.json()["choices"][0]["finish_reason"] == "length"
        assert "cut" not in events, events[-3:]
        assert events[-1] == "data: [DONE]" and len(events) < 900
        assert '"finish_reason":"abort"' in events[-2].replace(" ", ""), events[-3:]
        assert TIMEOUT - 1 <= took < TIMEOUT + 10, took
        assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
        text = open(log_path).read()
        assert "timeout graceful shutdown exceeded" not in text and "engine stopped" in text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)

        # restart on the same port: it binds at once and serves
        proc = _serve(model, port, log)
        try:
            _wait_healthy(proc, base, log_path)
            r = httpx.post(f"{base}/v1/completions", json=short, timeout=60)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert "address already in use" not in open(log_path).read().lower()
