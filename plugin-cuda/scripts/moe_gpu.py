"""Issue 24a on the GPU: mixture-of-experts models on octavo-cuda (Triton fused_moe), bf16, dummy weights.

1. correctness: a tiny random Qwen3-MoE (fp32) on octavo-cuda, greedy tokens against transformers';
   the Triton fused_moe at Qwen3-30B-A3B and Mixtral-8x7B widths (bf16, 1 and 64 tokens) against
   core's definition, and its time against the expert bytes it must read.
2. a Qwen3-30B-A3B-shaped and a Mixtral-8x7B-shaped model: batch 1 (128-token prompt, the time per
   output token against the floor = weight bytes one token reads (attention, router, the top-k
   experts, lm_head) / 4.25e12 B/s), and 64 prompts x 1024 tokens, 128 out each, against its floor
   (prefill FLOPs at 989 TFLOP/s + each decode step's bytes: the experts 64 tokens touch, the
   rest of the weights and the KV cache read, at 4.25e12 B/s);
3. transformers beside, batch 1, while the time budget lasts; then other tiles of the kernel.

    python3 plugin-cuda/scripts/moe_gpu.py TOKENIZER_DIR OUT.json [--device cuda] [--tiny] [--budget 165]

`--tiny` shrinks the big models to 2 small layers (a dry run on the CPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MixtralConfig, Qwen3MoeConfig

from octavo import LLM, SamplingParams

BANDWIDTH = 4.25e12  # H200 HBM3e copy bandwidth, B/s (the floor)
FLOPS = 989e12  # H200 dense bf16 tensor-core peak, FLOP/s
START = time.monotonic()


def left(budget: float) -> float:
    return budget - (time.monotonic() - START)


def _dir(cfg, tok, path: str, model=None) -> str:
    os.makedirs(path, exist_ok=True)
    (model or cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _greedy(llm, prompts, n):
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@torch.inference_mode()
def _hf_greedy(model, prompt: list[int], n: int, device: str) -> list[int]:
    res = model(torch.tensor([prompt], device=device), use_cache=True)
    toks = [int(res.logits[0, -1].argmax())]
    for _ in range(n - 1):
        res = model(torch.tensor([[toks[-1]]], device=device), past_key_values=res.past_key_values, use_cache=True)
        toks.append(int(res.logits[0, -1].argmax()))
    return toks


def tiny_check(tok, device: str, root: str) -> dict:
    """A tiny Qwen3-MoE (16 experts, top-4, q/k norm) in fp32: octavo-cuda's greedy tokens equal transformers'."""
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=16, num_experts_per_tok=4,
        norm_topk_prob=True, initializer_range=0.3, tie_word_embeddings=False,
    )  # fmt: skip
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    path = _dir(cfg, tok, os.path.join(root, "tiny"), hf)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (1, 17, 90, 300)]
    llm = LLM(path, device=device, dtype="float32", max_model_len=512, gpu_memory_utilization=0.2)
    got = _greedy(llm, prompts, 16)
    llm.shutdown()
    del llm
    _free(device)
    hf = hf.to(device)
    want = [_hf_greedy(hf, p, 16, device) for p in prompts]
    return {"tiny_qwen3_moe_fp32_prompts_equal": sum(a == b for a, b in zip(got, want)), "of": len(prompts)}


def _time(fn, iters: int, device: str) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def kernel_check(name: str, experts: int, top_k: int, hidden: int, inter: int, device: str) -> dict:
    """The platform's fused_moe (octavo-cuda: Triton) against core's definition, and its time for
    1 and 64 tokens against the bytes of the experts they touch."""
    from octavo.platform import resolve_platform
    from octavo.platform.ops import fused_moe as definition

    ops = resolve_platform(device).ops
    g = torch.Generator(device=device).manual_seed(0)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g, device=device) * hidden**-0.5).bfloat16()
    w2 = (torch.randn(experts, hidden, inter, generator=g, device=device) * inter**-0.5).bfloat16()
    out = {}
    for tokens in (1, 64):
        x = torch.randn(tokens, hidden, generator=g, device=device).bfloat16()
        weights, ids = torch.topk(torch.randn(tokens, experts, generator=g, device=device).softmax(-1), top_k)
        got = ops.fused_moe(x, w13, w2, weights, ids)
        want = definition(x, w13, w2, weights, ids)
        err = float((got.float() - want.float()).abs().max())
        sec = _time(lambda: ops.fused_moe(x, w13, w2, weights, ids), 20, device)
        touched = int(ids.unique().numel())
        nbytes = touched * (w13[0].numel() + w2[0].numel()) * 2
        out[f"{name}_t{tokens}"] = {
            "max_abs_err_vs_definition": err,
            "us": sec * 1e6,
            "experts_touched": touched,
            "floor_us": nbytes / BANDWIDTH * 1e6,
            "pct_of_floor": nbytes / BANDWIDTH / sec * 100,
        }
    w13 = w2 = None  # freed before the next shapes
    _free(device)
    return out


def tile_sweep(device: str, budget: float) -> dict:
    """Other tiles of octavo_triton's fused_moe at Qwen3-30B-A3B widths, 1 and 512 tokens: the data to
    tune `_tiles` with (each entry: BLOCK_M, BLOCK_N gate/up, BLOCK_N down, BLOCK_K, warps -> us)."""
    from octavo_triton import fused_moe as module

    chosen = module._tiles
    g = torch.Generator(device=device).manual_seed(0)
    w13 = (torch.randn(128, 1536, 2048, generator=g, device=device) * 0.02).bfloat16()
    w2 = (torch.randn(128, 2048, 768, generator=g, device=device) * 0.03).bfloat16()
    out: dict = {}
    configs = [
        (16, 32, 64, 128, 4),
        (16, 64, 64, 64, 4),
        (16, 16, 32, 256, 2),
        (32, 64, 128, 64, 4),
        (64, 64, 128, 64, 4),
        (64, 128, 128, 64, 8),
    ]
    try:
        for tokens in (1, 512):
            x = torch.randn(tokens, 2048, generator=g, device=device).bfloat16()
            weights, ids = torch.topk(torch.randn(tokens, 128, generator=g, device=device).softmax(-1), 8)
            for cfg in configs:
                if left(budget) < 10:
                    return out
                module._tiles = lambda n, e, cfg=cfg: cfg
                out[f"t{tokens} {cfg}"] = _time(lambda: module.fused_moe(x, w13, w2, weights, ids), 20, device) * 1e6
    finally:
        module._tiles = chosen
    return out


def _weight_bytes(model, top_k: int, experts: int, touched_fraction: float) -> float:
    """Weight bytes a step reads: every weight but the embedding (a gather of a few rows) and the
    experts, plus `touched_fraction` of the experts."""
    total = 0.0
    for name, p in model.named_parameters():
        b = p.numel() * p.element_size()
        if name.endswith(("w13", "w2")):
            total += b * touched_fraction
        elif "embed_tokens" not in name or getattr(model, "tie_word_embeddings", False):
            total += b
    return total


def _active_params(model, top_k: int, experts: int) -> float:
    n = 0.0
    for name, p in model.named_parameters():
        if name.endswith(("w13", "w2")):
            n += p.numel() * top_k / experts
        elif "embed_tokens" not in name:
            n += p.numel()
    return n


def bench(
    name: str, cfg, top_k: int, experts: int, tok, device: str, root: str, budget: float, big=(64, 1024, 128)
) -> dict:
    """Batch 1, then `big` = (prompts, prompt tokens, output tokens) (64 x 1024/128; smaller in a dry run)."""
    cfg.architectures = [type(cfg).__name__.replace("Config", "ForCausalLM")]
    path = _dir(cfg, tok, os.path.join(root, name))
    t0 = time.perf_counter()
    llm = LLM(
        path, device=device, dtype="bfloat16", load_format="dummy", max_model_len=1280, gpu_memory_utilization=0.9
    )
    res: dict = {"startup_s": time.perf_counter() - t0}
    model = llm.llm_engine.runner.model
    vocab = cfg.vocab_size
    g = torch.Generator().manual_seed(3)
    one = [torch.randint(3, vocab, (128,), generator=g).tolist()]
    _greedy(llm, one, 8)  # warm
    t_first = min(_time_call(lambda: _greedy(llm, one, 1)) for _ in range(2))
    t_all = _time_call(lambda: _greedy(llm, one, 129))
    tpot = (t_all - t_first) / 128
    floor1 = _weight_bytes(model, top_k, experts, top_k / experts) / BANDWIDTH
    res.update(batch1_tpot_ms=tpot * 1e3, batch1_floor_ms=floor1 * 1e3, batch1_pct_of_floor=floor1 / tpot * 100)
    print(name, res, flush=True)
    if left(budget) > 45:
        n, plen, out = big
        prompts = [torch.randint(3, vocab, (plen,), generator=g).tolist() for _ in range(n)]
        t = _time_call(lambda: _greedy(llm, prompts, out))
        touched = 1 - (1 - top_k / experts) ** n  # the expected share of experts n tokens route to
        kv_per_token = sum(2 * s.num_kv_heads * s.head_dim * 2 for s in model.attention_specs())
        kv_reads = sum(n * (plen + s) * kv_per_token for s in range(out))
        prefill = 2 * _active_params(model, top_k, experts) * n * plen / FLOPS
        floor = prefill + (out * _weight_bytes(model, top_k, experts, touched) + kv_reads) / BANDWIDTH
        res.update(
            big_shape=f"{n} x {plen}/{out}",
            big_total_s=t,
            big_output_tok_per_s=n * out / t,
            big_floor_s=floor,
            big_pct_of_floor=floor / t * 100,
        )
    llm.shutdown()
    llm = model = None  # the engine's weights and cache, freed for transformers'
    _free(device)
    if left(budget) > 40:
        res.update(hf_beside(cfg, one[0], device))
        if "hf_batch1_tpot_ms" in res:
            res["octavo_vs_hf_batch1"] = res["hf_batch1_tpot_ms"] / res["batch1_tpot_ms"]
    print(name, res, flush=True)
    return res


def _time_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.inference_mode()
def hf_beside(cfg, prompt: list[int], device: str) -> dict:
    """transformers' own model on random bf16 weights: time per output token at batch 1."""
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    _hf_greedy(model, prompt, 4, device)
    t1 = min(_time_call(lambda: _hf_greedy(model, prompt, 1, device)) for _ in range(2))
    t = _time_call(lambda: _hf_greedy(model, prompt, 33, device))
    out = {
        "hf_batch1_tpot_ms": (t - t1) / 32 * 1e3,
        "hf_experts_implementation": str(getattr(model.config, "_experts_implementation", None)),
    }
    model = None
    _free(device)
    return out


def _bench_child(queue, start: float, tokenizer: str, *args) -> None:
    global START
    START = start  # CLOCK_MONOTONIC is the host's: the parent's budget carries over
    queue.put(bench(*args[:4], AutoTokenizer.from_pretrained(tokenizer), *args[4:]))


def isolated_bench(tokenizer: str, *args) -> dict | str:
    """`bench` in a process of its own: all its GPU memory (engine, CUDA graph pools, transformers'
    model) is gone when it exits, whatever still referenced it (the first run on the H200 kept
    ~60 GB of the Qwen3 part held, and the Mixtral part ran out of memory)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_bench_child, args=(queue, START, tokenizer, *args))
    proc.start()
    try:
        return queue.get(timeout=max(left(args[-2]), 1.0))
    except Exception as e:  # the child died (its exit code says how) or ran out of time
        return f"failed: {type(e).__name__}; child exit code {proc.exitcode}"
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--budget", type=float, default=165.0, help="seconds; later parts are skipped past it")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    result: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device}

    def dump():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    small = dict(hidden_size=256, num_hidden_layers=2, vocab_size=len(tok)) if args.tiny else {}
    qwen = Qwen3MoeConfig(  # Qwen3-30B-A3B
        **{"hidden_size": 2048, "num_hidden_layers": 48, "vocab_size": 151936, **small},
        intermediate_size=6144, moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, tie_word_embeddings=False,
        rope_theta=1e6, max_position_embeddings=40960,
    )  # fmt: skip
    mixtral = MixtralConfig(  # Mixtral-8x7B
        **{"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000, **small},
        intermediate_size=256 if args.tiny else 14336, num_attention_heads=32, num_key_value_heads=8,
        num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6, max_position_embeddings=32768,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        result.update(tiny_check(tok, args.device, root))
        print(result, flush=True)
        dump()
        result.update(kernel_check("qwen3_30b_a3b", 128, 8, qwen.hidden_size, qwen.moe_intermediate_size, args.device))
        result.update(kernel_check("mixtral_8x7b", 8, 2, mixtral.hidden_size, mixtral.intermediate_size, args.device))
        print(result, flush=True)
        dump()
        big = (4, 64, 8) if args.tiny else (64, 1024, 128)
        result["qwen3_30b_a3b"] = isolated_bench(
            args.tokenizer, "qwen3_30b_a3b", qwen, 8, 128, args.device, root, args.budget, big
        )
        dump()
        if left(args.budget) > 50:
            result["mixtral_8x7b"] = isolated_bench(
                args.tokenizer, "mixtral_8x7b", mixtral, 2, 8, args.device, root, args.budget, big
            )
        else:
            result["mixtral_8x7b"] = "skipped: out of time"
    if args.device == "cuda" and left(args.budget) > 25:
        result["tile_sweep_us"] = tile_sweep(args.device, args.budget)
    result["elapsed_s"] = time.monotonic() - START
    print(result, flush=True)
    dump()


if __name__ == "__main__":
    main()
