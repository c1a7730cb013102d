"""Chaos soak: rounds of hostile, mixed traffic against an OpenAI server, then its invariants.

Each round sends concurrent streaming and non-streaming requests; some clients vanish mid-stream,
some cancel a request that is waiting for its answer, some send bad requests, and bursts go past
the server's waiting-queue limit. After each round, once the server is idle: no request is stuck
(running and waiting are 0), no KV block is in use, the server's RSS has not grown since the
second round, and its /metrics count what the clients saw.

On the CPU the KV cache is committed page by page as blocks are first written (octavo-cpu's
attention allocates it zero-mapped), so a server's RSS rises toward weights + --kv-cache-memory
as the prefix cache fills, by design. The server this script starts therefore gets a KV cache
that the first round fills (--kv-cache-memory, default 256MiB): growth after it is a leak.

    python benchmarks/chaos_soak.py                          # starts `octavo serve smollm2` (minutes)
    python benchmarks/chaos_soak.py --rounds 2 --requests 60 # shorter
    python benchmarks/chaos_soak.py --base-url URL --server-pid PID   # a server already running

tests/test_chaos_soak.py runs a short version in CI; docs/reliability.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

#: request bodies a careless or hostile client sends; each must be a 4xx in OpenAI's shape
BAD_BODIES = [
    b"{not json",
    b'{"prompt": "hi", "max_tokens": "many"}',
    b'{"prompt": "hi", "n": 100000}',
    b'{"prompt": "hi", "logit_bias": {"999999999": 5}}',
    b'{"prompt": "hi", "temperature": -3}',
    b'{"prompt": "hi", "unknown_field": 1}',
    b'{"prompt": [], "max_tokens": 2}',
    b'{"prompt": [999999999], "max_tokens": 2}',
    b'{"prompt": "hi", "stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q","r","s","t",'
    b'"u","v","w","x","y","z","0","1","2","3","4","5","6","7","8","9","A","B","C","D","E","F","G","H","I","J","K",'
    b'"L","M","N","O","P","Q","R","S","T","U","V","W","X","Y","Z","!","?",".",","]}',
    b'{"messages": [{"role": "wizard", "content": "hi"}]}',
]
ACTIONS = ("stream", "complete", "chat", "disconnect", "cancel", "bad")
WEIGHTS = (3, 3, 2, 2, 2, 2)


@dataclass
class Tally:
    """What the clients saw; every request sent ends in exactly one of these."""

    sent: int = 0
    completed: int = 0  # a whole answer (a stream up to [DONE])
    disconnected: int = 0  # the client went away mid-stream, after its first event
    cancelled: int = 0  # the client gave up on a non-streaming request
    bad: int = 0  # refused with a 4xx in OpenAI's shape
    rejected: int = 0  # 503: the waiting queue was full
    failures: list[str] = field(default_factory=list)  # anything else: a 5xx, a malformed answer, a hang

    def add(self, other: Tally) -> None:
        for name in ("sent", "completed", "disconnected", "cancelled", "bad", "rejected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures


class Soak:
    def __init__(self, base_url: str, model: str, api_key: str | None, rng: random.Random, timeout: float) -> None:
        self.base = base_url
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.rng = rng
        self.timeout = timeout

    def _body(self, stream: bool, chat: bool = False) -> dict:
        tokens = self.rng.randint(4, 48)
        body: dict = {"model": self.model, "max_tokens": tokens, "ignore_eos": True, "stream": stream}
        body["temperature"] = self.rng.choice([0, 0.7, 1.0])
        if chat:
            body["messages"] = [
                {"role": "user", "content": f"Tell me about {self.rng.choice(['sea', 'sky', 'rain'])}."}
            ]
        else:
            body["prompt"] = " ".join(self.rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(8))
        return body

    async def one(self, client: httpx.AsyncClient, action: str) -> Tally:
        t = Tally(sent=1)
        try:
            await asyncio.wait_for(self._act(client, action, t), self.timeout)
        except TimeoutError:
            t.failures.append(f"{action}: no answer in {self.timeout} s (a stuck request)")
        except httpx.HTTPError as e:
            t.failures.append(f"{action}: {type(e).__name__}: {e}")
        return t

    async def _act(self, client: httpx.AsyncClient, action: str, t: Tally) -> None:
        if action == "bad":
            path = self.rng.choice(["/v1/completions", "/v1/chat/completions"])
            r = await client.post(path, content=self.rng.choice(BAD_BODIES), headers=self._json())
            return self._judge(r, t, want_error=True)
        if action == "cancel":
            task = asyncio.ensure_future(client.post("/v1/completions", json=self._body(False), headers=self.headers))
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            if not task.done():
                task.cancel()
                t.cancelled += 1
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                return
            return self._judge(task.result(), t)
        if action in ("complete", "chat"):
            path = "/v1/chat/completions" if action == "chat" else "/v1/completions"
            r = await client.post(path, json=self._body(False, chat=action == "chat"), headers=self.headers)
            return self._judge(r, t)
        # streaming: read to [DONE], or leave after a few events
        leave_after = self.rng.randint(1, 3) if action == "disconnect" else None
        body = self._body(True)
        if leave_after:  # far more tokens than it reads: the request is still running when it leaves
            body["max_tokens"] = 48
        async with client.stream("POST", "/v1/completions", json=body, headers=self.headers) as r:
            if r.status_code != 200:
                await r.aread()
                return self._judge(r, t)
            events = 0
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    t.completed += 1
                    return
                if '"error"' in line:
                    t.failures.append(f"stream: an error event: {line[:300]}")
                    return
                events += 1
                if events == leave_after:
                    t.disconnected += 1
                    return  # leaving the block closes the connection mid-stream
            t.failures.append("stream: ended without [DONE]")

    def _json(self) -> dict:
        return {**self.headers, "content-type": "application/json"}

    def _judge(self, r: httpx.Response, t: Tally, want_error: bool = False) -> None:
        if r.status_code == 503:
            t.rejected += 1
            return
        if r.status_code >= 500 or (want_error and r.status_code < 400):
            t.failures.append(f"HTTP {r.status_code}: {r.text[:300]}")
            return
        if r.status_code >= 400:
            body = r.json()
            if set(body) != {"error"} or set(body["error"]) != {"message", "type", "param", "code"}:
                t.failures.append(f"an error not in OpenAI's shape: {r.text[:300]}")
            t.bad += 1
            return
        t.completed += 1

    async def round(self, requests: int, concurrency: int, burst: int) -> Tally:
        """`requests` random actions, at most `concurrency` at once, then a burst of `burst` at once."""
        tally = Tally()
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency + burst, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.base, timeout=self.timeout, limits=limits) as client:

            async def gated(action: str) -> Tally:
                async with gate:
                    return await self.one(client, action)

            actions = self.rng.choices(ACTIONS, WEIGHTS, k=requests)
            for result in await asyncio.gather(*(gated(a) for a in actions)):
                tally.add(result)
            for result in await asyncio.gather(*(self.one(client, "complete") for _ in range(burst))):
                tally.add(result)
        return tally


# ---- the server's side: /metrics --------------------------------------------------------------
def scrape(base_url: str, headers: dict) -> dict[str, float]:
    """/metrics as {name{labels}: value}, label sets summed per name (and per finished_reason)."""
    text = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30).text
    out: Counter = Counter()
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? ([-+0-9.eE]+|NaN)$", line)
        if not m or m.group(3) == "NaN":
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        reason = re.search(r'finished_reason="(\w+)"', labels)
        out[f"{name}:{reason.group(1)}" if reason else name] += value
    return dict(out)


def metric(metrics: dict[str, float], suffix: str) -> float:
    """The value of the one metric whose name ends with `suffix` (any prefix: octavo or vllm)."""
    hits = [v for k, v in metrics.items() if k.endswith(suffix)]
    return sum(hits)


def wait_idle(base_url: str, headers: dict, timeout: float) -> dict[str, float]:
    """Poll /metrics until nothing runs or waits; the last scrape (a stuck request fails the soak)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(base_url, headers)
        busy = metric(m, ":num_requests_running") + metric(m, ":num_requests_waiting")
        if busy == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


@dataclass
class Report:
    rounds: list[dict]
    total: Tally
    server_finished: float
    server_aborted: float
    server_rejected: float
    problems: list[str]

    def as_dict(self) -> dict:
        t = self.total
        return {
            "rounds": self.rounds,
            "requests_sent": t.sent,
            "completed": t.completed,
            "disconnected_mid_stream": t.disconnected,
            "cancelled": t.cancelled,
            "bad_requests": t.bad,
            "rejected_503": t.rejected,
            "server_finished": self.server_finished,
            "server_aborted": self.server_aborted,
            "server_rejected": self.server_rejected,
            "failures": t.failures[:20],
            "problems": self.problems,
        }


def run_soak(
    base_url: str,
    *,
    model: str,
    rss: Callable[[], int],
    rounds: int = 3,
    requests: int = 100,
    concurrency: int = 16,
    burst: int = 48,
    api_key: str | None = None,
    seed: int = 0,
    timeout: float = 120,
    rss_slack_mib: float = 64,
) -> Report:
    """Soak a server; `rss()` is its resident memory in bytes. `Report.problems` lists every broken invariant."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    soak = Soak(base_url, model, api_key, random.Random(seed), timeout)
    before = wait_idle(base_url, headers, timeout)
    total, per_round, problems = Tally(), [], []
    for i in range(rounds):
        t0 = time.monotonic()
        tally = asyncio.run(soak.round(requests, concurrency, burst))
        total.add(tally)
        m = wait_idle(base_url, headers, timeout)
        running, waiting = metric(m, ":num_requests_running"), metric(m, ":num_requests_waiting")
        usage = metric(m, ":kv_cache_usage_perc")
        per_round.append(
            {
                "round": i,
                "seconds": round(time.monotonic() - t0, 2),
                "sent": tally.sent,
                "rss_mib": round(rss() / 2**20, 1),
                "kv_usage": usage,
                "running": running,
                "waiting": waiting,
            }
        )
        if running or waiting:
            problems.append(f"round {i}: {running:.0f} requests running and {waiting:.0f} waiting after the round")
        if usage:
            problems.append(f"round {i}: KV cache usage {usage} with no request in flight (leaked blocks)")
    problems += [f"client saw: {f}" for f in total.failures[:20]]
    if rounds >= 3:  # the first rounds warm caches and allocators up; flat from the second on
        growth = per_round[-1]["rss_mib"] - per_round[1]["rss_mib"]
        if growth > rss_slack_mib:
            problems.append(f"RSS grew {growth:.0f} MiB from round 1 to round {rounds - 1} (slack {rss_slack_mib})")
    after = scrape(base_url, headers)

    def delta(suffix: str) -> float:
        return metric(after, suffix) - metric(before, suffix)

    finished = delta("request_success_total:stop") + delta("request_success_total:length")
    aborted = delta("request_success_total:abort")
    rejected = delta("request_rejected_total")
    # every request the server read is counted once: finished, aborted or rejected. The clients
    # know where each of theirs ended, except a request they cancelled: the server may not have
    # read it yet (not counted), or have finished, aborted or rejected it (counted once); a stream
    # left just as it ended counts finished
    counted = finished + aborted + rejected
    least = total.completed + total.disconnected + total.rejected
    if finished < total.completed or rejected < total.rejected or not least <= counted <= least + total.cancelled:
        problems.append(
            f"/metrics counts {finished:.0f} finished, {aborted:.0f} aborted and {rejected:.0f} rejected requests; "
            f"the clients got {total.completed} answers and {total.rejected} 503s, left {total.disconnected} "
            f"streams and cancelled {total.cancelled} requests"
        )
    return Report(per_round, total, finished, aborted, rejected, problems)


# ---- the command line -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: str, max_waiting: int, max_seqs: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "octavo.entrypoints.cli", "serve", model, "--device", "cpu", "--port", str(port)]
    cmd += ["--max-waiting-requests", str(max_waiting), "--max-num-seqs", str(max_seqs), "--disable-access-log"]
    cmd += extra
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"octavo serve exited with status {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("octavo serve did not become healthy in 10 minutes")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--base-url", default=None, help="soak this server instead of starting one")
    p.add_argument("--server-pid", type=int, default=None, help="its process, for RSS (with --base-url)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=300, help="random requests per round")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--burst", type=int, default=96, help="requests sent at once at the end of each round")
    p.add_argument("--max-waiting-requests", type=int, default=32, help="for the server this script starts")
    p.add_argument("--max-num-seqs", type=int, default=16, help="for the server this script starts")
    p.add_argument(
        "--kv-cache-memory",
        default="256MiB",
        help="for the server this script starts: small enough that the first round commits all of it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("serve_args", nargs="*", help="more `octavo serve` options (after --)")
    args = p.parse_args(argv)

    import psutil

    proc = None
    if args.base_url is None:
        extra = ["--kv-cache-memory", args.kv_cache_memory, *args.serve_args]
        proc, base = _start_server(args.model, args.max_waiting_requests, args.max_num_seqs, extra)
        pid = proc.pid
    else:
        base, pid = args.base_url.rstrip("/"), args.server_pid
    process = psutil.Process(pid) if pid else None
    try:
        report = run_soak(
            base,
            model=args.model,
            rss=(lambda: process.memory_info().rss) if process else (lambda: 0),
            rounds=args.rounds,
            requests=args.requests,
            concurrency=args.concurrency,
            burst=args.burst,
            api_key=args.api_key,
            seed=args.seed,
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    out = report.as_dict()
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
