"""`octavo bench throughput`: an offline workload through Octavo and, with --compare hf,
through Hugging Face transformers' generate() on the same weights in the same run."""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


@dataclass(frozen=True)
class HfTarget:
    """What --compare hf needs of the engine; kept while the engine itself is released, so
    generate() gets the device memory Octavo's weights and KV cache held."""

    model_config: Any
    platform: Any
    tokenizer: Any


@dataclass
class Result:
    elapsed_s: float
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    num_requests: int
    output_tokens: int
    prompt_tokens: int


def make_workload(
    tokenizer, vocab_size: int, num_prompts: int, input_len: int, output_len: int, dataset: str, seed: int
) -> Workload:
    """Seeded random token ids, special tokens excluded.

    dataset "random": every prompt has input_len tokens and every request output_len.
    dataset "uniform:LOW-HIGH[:OLOW-OHIGH]": prompt lengths uniform in LOW..HIGH, output
    lengths uniform in OLOW..OHIGH (default output_len/4..output_len). G1 of
    BENCHMARKS.md is "uniform:128-2048:32-512".
    dataset "prefix:LEN": every prompt is one shared LEN-token prefix + input_len unique tokens.
    dataset "sharegpt:PATH": conversations of a ShareGPT-format JSON file (`sharegpt_workload`).
    """
    if dataset.startswith("sharegpt:"):
        return sharegpt_workload(tokenizer, dataset.split(":", 1)[1], num_prompts, seed)
    rng = random.Random(seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = [t for t in range(min(vocab_size, len(tokenizer))) if t not in special]
    if dataset == "random":
        in_lens = [input_len] * num_prompts
        out_lens = [output_len] * num_prompts
    elif dataset.startswith("uniform:"):
        ranges = dataset.split(":")[1:]
        try:
            lo, hi = (int(x) for x in ranges[0].split("-"))
            olo, ohi = (
                (int(x) for x in ranges[1].split("-")) if len(ranges) > 1 else (max(1, output_len // 4), output_len)
            )
        except ValueError:
            raise ValueError(
                f"bad dataset {dataset!r}; use uniform:LOW-HIGH or uniform:LOW-HIGH:OUTLOW-OUTHIGH"
            ) from None
        in_lens = [rng.randint(lo, hi) for _ in range(num_prompts)]
        out_lens = [rng.randint(olo, ohi) for _ in range(num_prompts)]
    elif dataset.startswith("prefix:"):
        shared = [rng.choice(allowed) for _ in range(int(dataset.split(":", 1)[1]))]
        prompts = [shared + [rng.choice(allowed) for _ in range(input_len)] for _ in range(num_prompts)]
        return Workload(prompts, [output_len] * num_prompts)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; use random, uniform:LOW-HIGH, prefix:LEN or sharegpt:PATH")
    prompts = [[rng.choice(allowed) for _ in range(n)] for n in in_lens]
    return Workload(prompts, out_lens)


# ShareGPT conversations kept, as vLLM's benchmark keeps them: prompt and answer of at least 4
# tokens, a prompt of at most 1024 and both together at most 2048
SHAREGPT_MIN_LEN, SHAREGPT_MAX_PROMPT, SHAREGPT_MAX_TOTAL = 4, 1024, 2048


def sharegpt_workload(tokenizer, path: str, num_prompts: int, seed: int, output_len: int | None = None) -> Workload:
    """`num_prompts` conversations of a ShareGPT-format JSON file (a list of {"conversations":
    [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}), in a seeded random
    order: the first turn is the prompt, the second's length in tokens the output length (or
    `output_len` for all)."""
    with open(path) as f:
        data = json.load(f)
    convs = [d["conversations"] for d in data if len(d.get("conversations") or ()) >= 2]
    random.Random(seed).shuffle(convs)
    prompts: list[list[int]] = []
    out_lens: list[int] = []
    for conv in convs:
        if len(prompts) == num_prompts:
            break
        ids = tokenizer.encode(conv[0]["value"])
        n_out = output_len or len(tokenizer.encode(conv[1]["value"], add_special_tokens=False))
        if min(len(ids), n_out) < SHAREGPT_MIN_LEN or len(ids) > SHAREGPT_MAX_PROMPT:
            continue
        if len(ids) + n_out > SHAREGPT_MAX_TOTAL:
            continue
        prompts.append(ids)
        out_lens.append(n_out)
    if len(prompts) < num_prompts:
        raise ValueError(f"{path} has {len(prompts)} usable conversations, fewer than --num-prompts {num_prompts}")
    return Workload(prompts, out_lens)


def _result(w: Workload, elapsed: float) -> Result:
    return Result(
        elapsed,
        len(w.prompts) / elapsed,
        w.output_tokens / elapsed,
        (w.prompt_tokens + w.output_tokens) / elapsed,
        len(w.prompts),
        w.output_tokens,
        w.prompt_tokens,
    )


#: --structured-output-ratio's default schema: a list of records that cannot end before
#: max_tokens (64 items at least), so constrained requests produce as many tokens as the others
LONG_SCHEMA = {
    "type": "object",
    "properties": {
        "records": {
            "type": "array",
            "minItems": 64,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string", "maxLength": 24},
                    "kind": {"enum": ["alpha", "beta", "gamma"]},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
                },
                "required": ["id", "name", "kind", "tags"],
            },
        }
    },
    "required": ["records"],
}


def run_octavo(llm, w: Workload, schema: dict | None = None, ratio: float = 0.0) -> tuple[Result, dict]:
    """Drive the engine directly (what LLM.generate does), sampling KV-cache figures each step.
    With `schema`, the first `ratio` of the requests are constrained to it (structured outputs);
    a constrained request may end before its output length, so throughput counts the tokens made."""
    from octavo import SamplingParams
    from octavo.sampling_params import RequestOutputKind, StructuredOutputsParams

    engine = llm.llm_engine
    # warm-up, not timed: allocator and first-call overheads, on a prompt of the workload's
    # first length (reversed, so the prefix cache gives the timed run nothing)
    llm.generate(
        [{"prompt_token_ids": w.prompts[0][::-1]}], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False
    )
    constrained = round(ratio * len(w.prompts)) if schema is not None else 0
    if constrained:  # compiled before the clock starts: a server compiles a schema once too
        engine.structured.compile(StructuredOutputsParams(json=schema))
    before = engine.get_stats()
    t = time.perf_counter()
    for i, (p, n) in enumerate(zip(w.prompts, w.output_lens)):
        engine.add_request(
            f"bench-{i}",
            {"prompt_token_ids": p},
            SamplingParams(
                temperature=1.0,
                top_p=1.0,
                ignore_eos=True,
                max_tokens=n,
                seed=i,
                output_kind=RequestOutputKind.FINAL_ONLY,
                structured_outputs=StructuredOutputsParams(json=schema) if i < constrained else None,
            ),
        )
    got = steps = samples = 0
    util_sum = 0.0
    while engine.has_unfinished_requests():
        for out in engine.step():
            got += len(out.outputs[0].token_ids)
        steps += 1
        if steps % 16 == 1:  # a sample: the figure walks every block of every request
            util_sum += engine.get_kv_cache_utilization()
            samples += 1
    elapsed = time.perf_counter() - t
    if not constrained:
        assert got == w.output_tokens, f"octavo produced {got} tokens, expected {w.output_tokens}"
    else:
        assert got <= w.output_tokens, f"octavo produced {got} tokens, more than {w.output_tokens}"
        w = Workload(w.prompts, [got])  # the output tokens made
    after = engine.get_stats()
    queries = after.prefix_cache_queries - before.prefix_cache_queries
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    extra = {
        "steps": steps,
        "kv_slot_utilization_mean": util_sum / max(samples, 1),
        "prefix_cache_hit_rate": hits / queries if queries else 0.0,
        "num_preemptions": after.num_preemptions_total - before.num_preemptions_total,
    }
    if after.spec_decode is not None:  # speculative decoding: this pass's drafts
        spec = after.spec_decode.since(before.spec_decode)
        extra["spec_decode"] = {**asdict(spec), "acceptance_rate": spec.acceptance_rate, "summary": spec.summary()}
    return _result(w, elapsed), extra


def load_hf_model(target: HfTarget):
    """The same weights in Hugging Face transformers (GGUF and HF directories), or the same
    shapes with transformers' own random init for load_format=dummy."""
    import torch
    from transformers import AutoModelForCausalLM

    from octavo.loader.source import resolve_model_source

    cfg = target.model_config
    dtype = cfg.dtype
    device = target.platform.device.torch_device()
    if cfg.load_format == "dummy":
        # built on the device: initialising 8B random parameters on the CPU takes minutes
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg.hf_config, dtype=dtype)
    else:
        src = resolve_model_source(cfg.model)
        kw = {"gguf_file": src.gguf_file} if src.is_gguf else {}
        model = AutoModelForCausalLM.from_pretrained(src.directory, dtype=dtype, **kw)
    return model.to(device).eval(), torch


def run_hf(target: HfTarget, w: Workload, batch_size: int) -> Result:
    model, torch = load_hf_model(target)
    device = next(model.parameters()).device
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else 0

    def batches():
        for i in range(0, len(w.prompts), batch_size):
            yield w.prompts[i : i + batch_size], w.output_lens[i : i + batch_size]

    def run(prompts, out_lens):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        n = max(out_lens)  # a batch runs until its longest request is done
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=pad,
            )

    run([w.prompts[0][:16]], [4])  # warm-up
    t = time.perf_counter()
    for prompts, out_lens in batches():
        run(prompts, out_lens)
    elapsed = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _result(w, elapsed)


def _print(name: str, r: Result) -> None:
    print(
        f"{name:>8}: {r.elapsed_s:8.2f} s  {r.requests_per_s:8.2f} req/s  "
        f"{r.output_tokens_per_s:9.1f} output tok/s  {r.total_tokens_per_s:9.1f} total tok/s"
    )


def main(args: argparse.Namespace) -> int:
    from octavo import EngineArgs
    from octavo.entrypoints.llm import LLM

    eargs = EngineArgs.from_cli_args(args)
    llm = LLM(**vars(eargs))
    engine = llm.llm_engine
    w = make_workload(
        engine.tokenizer, engine.vocab_size, args.num_prompts, args.input_len, args.output_len, args.dataset, args.seed
    )
    print(
        f"workload: {len(w.prompts)} requests, {w.prompt_tokens} prompt tokens, {w.output_tokens} output tokens "
        f"({args.dataset}); model {eargs.model} on {engine.platform.name}, {str(engine.model_config.dtype)[6:]}"
    )
    report: dict = {}
    ours, extra = run_octavo(llm, w)
    report["octavo"] = {**asdict(ours), **extra}
    _print("octavo", ours)
    print(
        f"          {extra['steps']} steps, KV slots holding tokens: {100 * extra['kv_slot_utilization_mean']:.1f}% "
        f"(mean over every 16th step), prefix-cache hit rate {100 * extra['prefix_cache_hit_rate']:.1f}%, "
        f"{extra['num_preemptions']} preemptions"
    )
    if "spec_decode" in extra:
        print(f"          {extra['spec_decode']['summary']}")
    if args.structured_output_ratio:
        schema = LONG_SCHEMA
        if args.json_schema:
            with open(args.json_schema) as f:
                schema = json.load(f)
        constrained, extra = run_octavo(llm, w, schema, args.structured_output_ratio)
        report["octavo_structured"] = {**asdict(constrained), **extra, "ratio": args.structured_output_ratio}
        _print("json", constrained)
        # the first pass also paid for first touches (the KV cache's pages, allocator growth): the
        # ratio compares the constrained pass with an unconstrained one run after it, both warm
        again, _ = run_octavo(llm, w)
        report["octavo_again"] = asdict(again)
        _print("octavo", again)
        report["structured_ratio"] = constrained.output_tokens_per_s / again.output_tokens_per_s
        print(
            f"   ratio: {report['structured_ratio']:.3f}x output tokens/s with "
            f"{100 * args.structured_output_ratio:.0f}% of the requests constrained by a JSON schema / the "
            f"unconstrained pass after it ({constrained.output_tokens} tokens made)"
        )
    if args.compare == "hf":
        target = HfTarget(engine.model_config, engine.platform, engine.tokenizer)
        llm.shutdown()
        del llm, engine
        gc.collect()  # the caching allocator reuses the freed blocks for transformers' model
        hf = run_hf(target, w, args.hf_batch_size)
        report["hf"] = asdict(hf)
        report["ratio"] = ours.output_tokens_per_s / hf.output_tokens_per_s
        _print("hf", hf)
        print(f"   ratio: {report['ratio']:.2f}x output tokens/s (octavo / hf, hf in batches of {args.hf_batch_size})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    from octavo import EngineArgs

    p = subparsers.add_parser("throughput", help="offline throughput on a seeded random-token workload")
    EngineArgs.add_cli_args(p)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument(
        "--dataset",
        default="random",
        help="random | uniform:LOW-HIGH[:OUTLOW-OUTHIGH] (prompt and output lengths) | "
        "prefix:LEN (shared prefix + input-len tokens)",
    )
    p.add_argument(
        "--structured-output-ratio",
        type=float,
        default=0.0,
        metavar="R",
        help="run the workload again with this fraction of the requests constrained by a JSON schema "
        "(structured outputs), then once more unconstrained, and print the throughput ratio of the last two",
    )
    p.add_argument(
        "--json-schema",
        default=None,
        metavar="FILE",
        help="the schema for --structured-output-ratio (default: a list of at least 64 records, which "
        "outlasts the output length)",
    )
    p.add_argument("--compare", choices=["hf"], default=None)
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--json", default=None, help="write results to this file")
    p.set_defaults(func=main)
    return p
