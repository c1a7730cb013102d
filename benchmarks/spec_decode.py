"""Speculative decoding on an input-grounded workload: decode tok/s with and without n-gram lookup.

The workload asks the model to repeat or lightly edit a given text, so that its output largely
copies its prompt (the case prompt lookup is made for). Both engines run in this one process on
the same prompts, greedily, one request at a time (batch 1: the latency case), alternating
prompt by prompt so that a shared machine's load falls on both alike. Decode tok/s is the output
tokens after the first over the time after the first token (the prefill excluded). Greedy
outputs must be identical; the script says where they are not (tests/test_spec_decode.py asserts it).

    python benchmarks/spec_decode.py                       # SmolLM2-135M-Instruct (the `smollm2` model)
    python benchmarks/spec_decode.py --k 5 --max-tokens 256 --threads 2
    # G2's shape on a GPU: 1 x 128 random tokens in, 512 out, the target as its own draft
    python benchmarks/spec_decode.py --model DIR --load-format dummy --dtype bfloat16 --device cuda \
        --random-prompt 128 --max-tokens 512 --method draft_model --draft DIR --sequential

docs/benchmarks.md and docs/speculative-decoding.md have the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

#: texts to repeat or edit: the project's own prose, so that nothing is downloaded
TEXTS = [
    "Octavo is an LLM inference and serving engine: high throughput, memory-efficient KV cache with paged "
    "attention, continuous batching, an OpenAI-compatible server, an offline LLM class and an embeddable async "
    "engine. Its shape is a minimal, device-agnostic core plus hardware plugins, each its own pip package, "
    "discovered through Python entry points.",
    "Batches are flat: all scheduled tokens of all requests are concatenated, with no padding. One idea drives "
    "the scheduler: each request has a number of computed tokens, which catches up with its number of tokens; a "
    "prefill, a chunk of a prefill, a prefix-cache hit and a decode step are all the same operation with "
    "different lengths.",
    "The scheduler, the block manager and the request state are pure Python over integers and take a few "
    "numbers, not the whole config. Backends describe themselves and say why they reject a config. Every plugin "
    "declares an API version and a score, and device facts live in one dataclass.",
    "def merge(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
    "            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n"
    "    out.extend(a[i:])\n    out.extend(b[j:])\n    return out\n",
]
TASKS = [
    "Repeat the following text exactly, word for word:\n\n{text}",
    "Rewrite the following text, replacing every 'the' with 'THE' and changing nothing else:\n\n{text}",
]


def prompts(tokenizer, random_len: int = 0, vocab: int = 0) -> list[list[int]]:
    """The repeat / edit prompts in the model's chat template, or one of `random_len` random ids."""
    if random_len:
        import random

        rng = random.Random(0)
        return [[rng.randrange(3, min(vocab, len(tokenizer))) for _ in range(random_len)]]
    out = []
    for passage in TEXTS:
        for task in TASKS:
            messages = [{"role": "user", "content": task.format(text=passage)}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            out.append(tokenizer.encode(text, add_special_tokens=False))
    return out


def timed(llm, prompt: list[int], max_tokens: int, ignore_eos: bool = False) -> tuple[list[int], float, float]:
    """(output tokens, decode seconds: from the first token to the last, of which proposing). The
    repeat / edit prompts end at the model's EOS (where the copy ends); random ones run to max_tokens."""
    from octavo import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    engine.add_request("bench", {"prompt_token_ids": prompt}, params)
    first = None
    proposing = 0.0
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens = out.outputs[0].token_ids
            if first is None and tokens:
                first = time.perf_counter()
                spec = engine.speculator
                proposing = -spec.propose_seconds if spec is not None else 0.0
    assert first is not None
    if engine.speculator is not None:
        proposing += engine.speculator.propose_seconds
    return list(tokens), time.perf_counter() - first, proposing


def _release(llm) -> None:
    """Free an engine's device memory before the next one loads (--sequential)."""
    import gc

    import torch

    llm.shutdown()
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--method", default="ngram", choices=["ngram", "draft_model"])
    ap.add_argument("--draft", default=None, help="the draft model (method draft_model)")
    ap.add_argument("--random-prompt", type=int, default=0, metavar="N", help="one prompt of N random tokens")
    ap.add_argument("--sequential", action="store_true", help="all plain runs, then all speculative ones")
    ap.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    ap.add_argument("--prompt-lookup-max", type=int, default=4)
    ap.add_argument("--prompt-lookup-min", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the prompts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()

    import torch

    from octavo import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    spec_config: dict = {"method": args.method, "num_speculative_tokens": args.k}
    if args.method == "ngram":
        spec_config.update(prompt_lookup_max=args.prompt_lookup_max, prompt_lookup_min=args.prompt_lookup_min)
    else:
        spec_config["model"] = args.draft or args.model
    common = dict(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=False,
    )
    engines = {"plain": lambda: LLM(**common), "spec": lambda: LLM(**common, speculative_config=spec_config)}
    live: dict = {}
    results: dict[str, list[tuple[list[int], float, float]]] = {"plain": [], "spec": []}
    ps: list[list[int]] = []
    order = [["plain"], ["spec"]] if args.sequential else [["plain", "spec"]]
    stats = None
    for names in order:
        for name in names:
            live[name] = engines[name]()
            if not ps:
                ps = prompts(live[name].get_tokenizer(), args.random_prompt, live[name].llm_engine.vocab_size)
            timed(live[name], ps[0], 16)  # warm-up, not timed
        before = live["spec"].llm_engine.get_stats().spec_decode if "spec" in live else None
        for _ in range(args.rounds):
            for p in ps:
                for name in names:  # alternating, so that a shared machine's load falls on both alike
                    results[name].append(timed(live[name], p, args.max_tokens, bool(args.random_prompt)))
        if "spec" in live:
            stats = live["spec"].llm_engine.get_stats().spec_decode.since(before)
        for name in names:
            _release(live.pop(name))
    assert stats is not None
    rows = []
    for i, ((out_a, t_a, _), (out_b, t_b, t_prop)) in enumerate(zip(results["plain"], results["spec"])):
        if out_a != out_b:  # a near-tie broken the other way (bf16 on a GPU) changes what follows
            k = next(j for j, (a, b) in enumerate(zip(out_a + [-1], out_b + [-2])) if a != b)
            print(
                f"prompt {i % len(ps)}: GREEDY OUTPUTS DIFFER from token {k} on ({out_a[k : k + 3]} / {out_b[k : k + 3]})"
            )
        n = len(out_a) - 1  # tokens after the first
        rows.append({"prompt": i % len(ps), "decoded": n, "plain_s": t_a, "spec_s": t_b, "propose_s": t_prop})
        print(
            f"prompt {i % len(ps)}: {n + 1} out; decode {n / t_a:7.1f} tok/s plain, {n / t_b:7.1f} tok/s "
            f"{args.method} ({t_a / t_b:.2f}x)"
        )
    decoded = sum(r["decoded"] for r in rows)
    plain_rate = decoded / sum(r["plain_s"] for r in rows)
    spec_rate = decoded / sum(r["spec_s"] for r in rows)
    # batch 1: one draft per speculative step; its time without the proposer's is the target's verification
    verify_rate = stats.num_drafts / sum(r["spec_s"] - r["propose_s"] for r in rows)
    per_prompt = [r["plain_s"] / r["spec_s"] for r in rows]
    print(
        f"decode tok/s: plain {plain_rate:.1f}, {args.method} k={args.k} {spec_rate:.1f}: "
        f"{spec_rate / plain_rate:.2f}x (per prompt: median {statistics.median(per_prompt):.2f}x, "
        f"min {min(per_prompt):.2f}x, max {max(per_prompt):.2f}x)"
    )
    # the target for a draft that is always right: (k+1) tokens per verification at >= 0.9x
    # of (k+1) x the plain step rate, i.e. a verification step at >= 0.9x of a plain step's rate
    print(
        f"target steps/s: plain {plain_rate:.1f} (one token each), verification {verify_rate:.1f} (proposing "
        f"excluded): verification / plain step rate = {verify_rate / plain_rate:.2f} (target >= 0.9 when "
        f"every proposal stands)"
    )
    print(stats.summary())
    if args.json:
        with open(args.json, "w") as f:
            report = {"config": spec_config, "rows": rows, "plain_tok_s": plain_rate, "spec_tok_s": spec_rate}
            report.update(verify_steps_s=verify_rate, acceptance_rate=stats.acceptance_rate, summary=stats.summary())
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
