"""Throughput with LoRA adapters against the same workload without, in one engine and one run.

    python benchmarks/lora_throughput.py --model smollm2 --device cpu --dtype bfloat16        # C1
    python benchmarks/lora_throughput.py --model DIR --load-format dummy --device cuda \\
        --dtype bfloat16 --input-len 1024 --max-model-len 4096                               # G3

The workload (random prompt token ids, ignore_eos) runs without adapters, then with
`--num-adapters` distinct random adapters of rank `--rank` on every projection (q, k, v, o,
gate, up, down), spread round-robin over the requests, alternating `--rounds` times after a
warm-up of each. Both passes run in one engine started with --enable-lora: requests without an
adapter take the engine's plain path (its CPU one-call decode step, its GPU graphs), so the
base pass is what a server without LoRA runs. Prints each pass and the ratio of the LoRA
pass's time to the base pass's (the issue's target: at most 1.3x).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

import torch


def write_adapter(path: str, hf_config, rank: int, seed: int, b_std: float = 0.02) -> None:
    """A random PEFT-format adapter of rank `rank` on every projection of every layer (B's
    entries of standard deviation `b_std`; lora_alpha = 2 * rank)."""
    from safetensors.torch import save_file

    cfg = hf_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, (cfg.num_key_value_heads or cfg.num_attention_heads) * head_dim
    h, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = {  # module: (in, out)
        "self_attn.q_proj": (h, q),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (q, h),
        "mlp.gate_proj": (h, inter),
        "mlp.up_proj": (h, inter),
        "mlp.down_proj": (inter, h),
    }
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for module, (fan_in, fan_out) in shapes.items():
            stem = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{stem}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=g) * fan_in**-0.5).bfloat16()
            tensors[f"{stem}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=g) * b_std).bfloat16()
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": [m.split(".")[-1] for m in shapes],
        "bias": "none",
    }
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-cache-memory", default="4GiB")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-adapters", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()

    from octavo import LLM, SamplingParams
    from octavo.lora.request import LoRARequest

    llm = LLM(
        args.model,
        device=args.device,
        dtype=args.dtype,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        kv_cache_memory=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_lora=True,
        max_loras=args.num_adapters,
        max_lora_rank=args.rank,
    )
    hf = llm.llm_engine.model_config.hf_config
    folder = tempfile.mkdtemp(prefix="octavo-lora-bench-")
    adapters = []
    for i in range(args.num_adapters):
        write_adapter(os.path.join(folder, f"a{i}"), hf, args.rank, seed=i)
        adapters.append(LoRARequest(f"a{i}", i + 1, os.path.join(folder, f"a{i}")))
    g = torch.Generator().manual_seed(0)
    vocab = min(hf.vocab_size, len(llm.get_tokenizer()))
    prompts = [
        {"prompt_token_ids": torch.randint(10, vocab, (args.input_len,), generator=g).tolist()}
        for _ in range(args.num_prompts)
    ]
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    loras = [adapters[i % len(adapters)] for i in range(args.num_prompts)]

    passes = itertools.count()

    def run(with_lora: bool, n: int | None = None) -> float:
        # fresh prompts each pass (another first token), so no pass reuses another's prefix cache
        first = 10 + next(passes)
        batch = [{"prompt_token_ids": [first] + pr["prompt_token_ids"][1:]} for pr in prompts[:n]]
        t0 = time.perf_counter()
        llm.generate(batch, params, use_tqdm=False, lora_request=loras[: len(batch)] if with_lora else None)
        return time.perf_counter() - t0

    run(False, 8)  # warm-up: first touches, kernel compilation
    run(True, 8)
    times: dict[str, list[float]] = {"base": [], "lora": []}
    for r in range(args.rounds):
        for kind in ("base", "lora"):
            times[kind].append(run(kind == "lora"))
            tok = args.num_prompts * args.output_len / times[kind][-1]
            print(f"round {r + 1} {kind:4s}: {times[kind][-1]:.2f} s, {tok:.1f} output tok/s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["lora"] / best["base"]
    print(
        f"{args.num_adapters} adapters of rank {args.rank} over {args.num_prompts} requests: "
        f"{best['lora']:.2f} s against {best['base']:.2f} s without: {ratio:.2f}x the time (best of {args.rounds})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "times": times, "lora_over_base": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
