"""`octavo bench serve`: an online benchmark client against a running OpenAI-compatible server.

Requests arrive as a Poisson process at --request-rate (default inf: all at once), each a
seeded random token-id prompt (or a conversation's first turn of a ShareGPT-format JSON file:
--dataset-name sharegpt --dataset-path FILE, as vLLM's benchmark) sent to /v1/completions with
ignore_eos and max_tokens, streamed.
Reports request throughput, output tokens/s, and TTFT, TPOT and inter-token latency (ITL)
percentiles; --json FILE writes the same numbers. Works against vLLM too (same API).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    prompt_len: int
    max_tokens: int
    success: bool = False
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)  # seconds between consecutive chunks
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def _pcts(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), **{f"p{p}": float("nan") for p in PERCENTILES}}
    import numpy as np

    a = np.asarray(values) * scale
    return {"mean": float(a.mean()), **{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}}


def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    return {
        "duration_s": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": out_tokens / duration if duration > 0 else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else 0.0,
        "ttft_ms": _pcts([r.ttft for r in ok]),
        "tpot_ms": _pcts([r.tpot for r in ok if r.tpot is not None]),
        "itl_ms": _pcts([x for r in ok for x in r.itl]),
        "e2el_ms": _pcts([r.latency for r in ok]),
        "errors": sorted({r.error for r in results if r.error})[:10],
    }


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def _one_request(
    client: Any, url: str, model: str, prompt: list[int], max_tokens: int, api_key: str | None, temperature: float
) -> RequestResult:
    r = RequestResult(prompt_len=len(prompt), max_tokens=max_tokens)
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    last = start
    chunks = 0
    usage_tokens = None
    try:
        async with client.stream("POST", url, json=body, headers=_auth(api_key)) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                r.error = f"HTTP {resp.status_code}: {text[:200]}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    r.error = str(msg["error"].get("message"))[:200]
                    return r
                if msg.get("usage"):
                    usage_tokens = msg["usage"].get("completion_tokens")
                if not msg.get("choices"):
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    r.ttft = now - start
                else:
                    r.itl.append(now - last)
                last = now
                chunks += 1
        r.latency = last - start
        r.output_tokens = usage_tokens if usage_tokens is not None else chunks
        r.success = chunks > 0
        if not r.success:
            r.error = "no output"
    except Exception as e:  # noqa: BLE001 - one failed request is a data point, not a crash
        r.error = f"{type(e).__name__}: {e}"
    return r


async def _server_peak_running(client: Any, base_url: str, api_key: str | None) -> float | None:
    """Octavo's high-water mark of requests running in one step, if the server exports it."""
    try:
        resp = await client.get(f"{base_url}/metrics", headers=_auth(api_key))
        for line in resp.text.splitlines():
            if line.split("{", 1)[0].split(" ", 1)[0].endswith(":num_requests_running_max"):  # any --metrics-prefix
                return float(line.rsplit(" ", 1)[1])
    except Exception:  # noqa: BLE001
        pass
    return None


async def run_benchmark(
    args: argparse.Namespace, prompts: list[list[int]], output_lens: list[int], model: str
) -> tuple[list[RequestResult], float, float | None]:
    import httpx

    url = f"{args.base_url}/v1/completions"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(args.timeout, connect=30.0)
    rng = random.Random(args.seed)
    sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        # one untimed request first: checks the setup, warms the server
        warm = await _one_request(client, url, model, prompts[0][:16] or prompts[0], 4, args.api_key, args.temperature)
        if not warm.success:
            raise RuntimeError(f"the warm-up request failed: {warm.error}")

        async def limited(p: list[int], n: int) -> RequestResult:
            if sem is None:
                return await _one_request(client, url, model, p, n, args.api_key, args.temperature)
            async with sem:
                return await _one_request(client, url, model, p, n, args.api_key, args.temperature)

        tasks = []
        start = time.perf_counter()
        for p, n in zip(prompts, output_lens):
            tasks.append(asyncio.ensure_future(limited(p, n)))
            if math.isfinite(args.request_rate):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
        peak = await _server_peak_running(client, args.base_url, args.api_key)
    return results, duration, peak


def _served_model(base_url: str, api_key: str | None) -> tuple[str, str | None]:
    import httpx

    resp = httpx.get(f"{base_url}/v1/models", headers=_auth(api_key), timeout=30.0)
    resp.raise_for_status()
    card = resp.json()["data"][0]
    return card["id"], card.get("root")


def _load_tokenizer(name: str) -> Any:
    from octavo.loader.source import load_tokenizer, resolve_model_source

    try:
        return load_tokenizer(resolve_model_source(name, weights=False))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot load the tokenizer of {name!r} ({e}); pass --tokenizer with a local model directory, "
            ".gguf file, hub ID or 'smollm2'"
        ) from None


def print_report(s: dict[str, Any], args: argparse.Namespace, peak: float | None) -> None:
    w = 50
    rate = "inf" if not math.isfinite(args.request_rate) else f"{args.request_rate:g}"
    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=w, c="="))
    rows = [
        ("Request rate (req/s)", rate),
        ("Max concurrency", args.max_concurrency or "unlimited"),
        ("Successful requests", s["completed"]),
        ("Failed requests", s["failed"]),
        ("Benchmark duration (s)", f"{s['duration_s']:.2f}"),
        ("Total input tokens", s["total_input_tokens"]),
        ("Total generated tokens", s["total_output_tokens"]),
        ("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{s['output_throughput']:.2f}"),
        ("Total token throughput (tok/s)", f"{s['total_token_throughput']:.2f}"),
    ]
    if peak is not None:
        rows.append(("Peak running requests (server)", f"{peak:g}"))
    for k, v in rows:
        print(f"{k:<40}{v:>10}")
    for key, title in (
        ("ttft_ms", "Time to First Token"),
        ("tpot_ms", "Time per Output Token (excl. 1st token)"),
        ("itl_ms", "Inter-token Latency"),
        ("e2el_ms", "End-to-end Latency"),
    ):
        print("{s:{c}^{n}}".format(s=f" {title} ", n=w, c="-"))
        name = key.split("_")[0].upper()
        print(f"{'Mean ' + name + ' (ms)':<40}{s[key]['mean']:>10.2f}")
        for p in PERCENTILES:
            print(f"{f'P{p} ' + name + ' (ms)':<40}{s[key][f'p{p}']:>10.2f}")
    print("=" * w)
    for e in s["errors"]:
        print(f"error: {e}")


def main(args: argparse.Namespace) -> int:
    import logging

    from octavo.entrypoints.bench_throughput import make_workload, sharegpt_workload

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    args.base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    served, root = _served_model(args.base_url, args.api_key)
    model = args.model or served
    tokenizer = _load_tokenizer(args.tokenizer or root or model)
    dataset = args.dataset
    if args.dataset_name == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name sharegpt needs --dataset-path FILE (a ShareGPT-format JSON file)")
        dataset = f"sharegpt:{args.dataset_path}"
    if dataset.startswith("sharegpt:"):
        w = sharegpt_workload(
            tokenizer, dataset.split(":", 1)[1], args.num_prompts, args.seed, args.sharegpt_output_len
        )
    else:
        w = make_workload(
            tokenizer, len(tokenizer), args.num_prompts, args.input_len, args.output_len, dataset, args.seed
        )
    print(
        f"workload: {len(w.prompts)} requests, {w.prompt_tokens} prompt tokens, {w.output_tokens} output "
        f"tokens ({dataset}); server {args.base_url}, model {model}"
    )
    results, duration, peak = asyncio.run(run_benchmark(args, w.prompts, w.output_lens, model))
    summary = summarize(results, duration)
    print_report(summary, args, peak)
    if args.json:
        config = {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in vars(args).items()
            if k not in ("func", "api_key")
        }
        report = {"config": config, "model": model, "peak_running_requests": peak, **summary}
        if args.save_requests:
            report["requests"] = [asdict(r) for r in results]
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0 if summary["failed"] == 0 else 1


def add_bench_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `serve` under `octavo bench` (the lead's cli.py calls this)."""
    p = subparsers.add_parser(
        "serve",
        help="online benchmark against a running server (TTFT, TPOT, ITL)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base-url", default=None, help="server URL (default http://HOST:PORT)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model name to request (default: the server's first)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="where to load the tokenizer for the random prompts (default: the served model's root)",
    )
    p.add_argument("--api-key", default=None)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument(
        "--dataset",
        default="random",
        help="random (every prompt --input-len tokens) | uniform:LOW-HIGH[:OUTLOW-OUTHIGH] (prompt and output "
        "lengths) | sharegpt:PATH",
    )
    p.add_argument(
        "--dataset-name",
        choices=["random", "sharegpt"],
        default=None,
        help="vLLM's spelling: sharegpt reads --dataset-path",
    )
    p.add_argument("--dataset-path", default=None, help="a ShareGPT-format JSON file (--dataset-name sharegpt)")
    p.add_argument(
        "--sharegpt-output-len",
        type=int,
        default=None,
        help="output tokens of every ShareGPT request (default: its answer's)",
    )
    p.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="Poisson arrival rate in requests/s (default inf: all at once)",
    )
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight at once")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results to FILE")
    p.add_argument("--save-requests", action="store_true", help="with --json: include every request's timings")
    p.set_defaults(func=main)
    return p
