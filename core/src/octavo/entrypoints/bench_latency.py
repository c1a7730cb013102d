"""`octavo bench latency`: how long one batch of requests takes end to end, as vLLM's
`vllm bench latency`: --batch-size prompts of --input-len random tokens, each generating
--output-len tokens (EOS ignored), timed over --num-iters runs after --num-iters-warmup."""

from __future__ import annotations

import argparse
import json
import random
import time

PERCENTILES = (10, 25, 50, 75, 90, 99)


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from octavo import EngineArgs, SamplingParams
    from octavo.entrypoints.llm import LLM

    llm = LLM(**vars(EngineArgs.from_cli_args(args)))
    tokenizer = llm.get_tokenizer()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [t for t in range(min(len(tokenizer), llm.llm_engine.vocab_size)) if t not in special]
    rng = random.Random(args.seed)
    prompts = [{"prompt_token_ids": [rng.choice(vocab) for _ in range(args.input_len)]} for _ in range(args.batch_size)]
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len)

    def run() -> float:
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    for _ in range(args.num_iters_warmup):
        run()
    spec_before = llm.llm_engine.get_stats().spec_decode
    latencies = [run() for _ in range(args.num_iters)]
    spec_after = llm.llm_engine.get_stats().spec_decode
    avg = float(np.mean(latencies))
    pcts = {p: float(np.percentile(latencies, p)) for p in PERCENTILES}
    print(f"Avg latency: {avg} seconds")
    for p, v in pcts.items():
        print(f"{p}% percentile latency: {v} seconds")
    if spec_after is not None and spec_before is not None:  # speculative decoding: the timed runs' drafts
        print(spec_after.since(spec_before).summary())
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"avg_latency": avg, "latencies": latencies, "percentiles": pcts}, f, indent=2)
    llm.shutdown()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from octavo import EngineArgs

    p = subparsers.add_parser("latency", help="end-to-end latency of one batch of requests", description=__doc__)
    EngineArgs.add_cli_args(p)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--num-iters-warmup", type=int, default=10)
    p.add_argument("--num-iters", type=int, default=30)
    p.add_argument("--output-json", default=None, metavar="FILE", help="write the latencies to FILE")
    p.set_defaults(func=main)
    return p
