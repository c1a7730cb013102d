"""Issue 24b on the GPU: DeepSeek's latent attention through octavo-cuda.

1. A tiny random DeepSeek-V3 (dense layers, latent 64 + rotary 16: the Triton kernel's smallest
   sizes) in float32: greedy tokens against transformers', prompts prefilled in chunks, twice
   (the second round from the prefix cache).
2. A DeepSeek-V2-Lite-shaped model (27 layers, hidden 2048, 16 heads, latent 512 + rotary 64, no
   q LoRA; dummy bf16 weights) at batch 1 (time per output token) and 64 x 1024/128, each against
   its bandwidth floor: the bytes one decode step must read (weights, plus the latent cache of
   the batch's context) over the GPU's copy bandwidth, measured here with a device-to-device copy.
   Its layers are all dense MLPs of the dense layer's width (intermediate 10944), not V2-Lite's
   experts: this measures the latent attention and cache, the experts' kernels are issue 24a's
   to measure (`moe` in the JSON says so).

    python3 plugin-cuda/scripts/mla_gpu.py TOKENIZER_DIR OUT.json [--device cuda] [--tiny]

`--tiny` shrinks the big model to 2 layers of 256 (a dry run on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from transformers import AutoTokenizer, DeepseekV2Config, DeepseekV3Config, DeepseekV3ForCausalLM

from octavo import LLM, SamplingParams


def tiny_check(tok, device: str, root: str) -> dict:
    torch.manual_seed(0)
    cfg = DeepseekV3Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        first_k_dense_replace=2,
        num_attention_heads=8,
        num_key_value_heads=8,
        q_lora_rank=48,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        initializer_range=0.3,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 1e4,
            "factor": 4.0,
            "original_max_position_embeddings": 128,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    )
    hf = DeepseekV3ForCausalLM(cfg).float().eval()
    path = os.path.join(root, "tiny-v3")
    hf.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (5, 77, 300, 1, 129)]
    want = []
    with torch.inference_mode():
        for p in prompts:
            ids = list(p)
            for _ in range(16):
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
            want.append(ids[len(p) :])
    llm = LLM(
        path,
        device=device,
        dtype="float32",
        max_model_len=512,
        block_size=16,
        max_num_batched_tokens=64,
        enable_prefix_caching=True,
        gpu_memory_utilization=0.2,
    )
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    same = []
    for _ in range(2):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        same.append([o.outputs[0].token_ids == w for o, w in zip(outs, want)])
    llm.shutdown()
    return {"tiny_v3_fp32_greedy_equal": same}


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    if device != "cuda":
        return float("nan")
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * 10 * a.numel() / (time.perf_counter() - t0)


def lite_config(tiny: bool) -> DeepseekV2Config:
    size = dict(hidden_size=256, num_hidden_layers=2) if tiny else dict(hidden_size=2048, num_hidden_layers=27)
    layers = size["num_hidden_layers"]
    cfg = DeepseekV2Config(
        vocab_size=102400,
        intermediate_size=10944,
        num_attention_heads=16,
        num_key_value_heads=16,
        q_lora_rank=None,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        first_k_dense_replace=layers,  # dense MLPs everywhere: see the module doc
        max_position_embeddings=4096,
        **size,
    )
    cfg.architectures = ["DeepseekV2ForCausalLM"]
    return cfg


def bench(tok, device: str, root: str, tiny: bool) -> dict:
    cfg = lite_config(tiny)
    path = os.path.join(root, "lite")
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    llm = LLM(
        path,
        device=device,
        dtype="bfloat16",
        load_format="dummy",
        max_model_len=2048,
        max_num_batched_tokens=8192,
        enable_prefix_caching=False,  # every run prefills: the decode time is the difference
        gpu_memory_utilization=0.6,
    )
    runner = llm.llm_engine.runner
    weight_bytes = runner.model_bytes - cfg.vocab_size * cfg.hidden_size * 2  # one embedding row is read, not all
    kv_per_token = runner.kv_cache_bytes_per_block() / llm.llm_engine.config.cache.block_size
    bw = copy_bandwidth(device)
    out: dict = {
        "moe": "dense MLPs in every layer (V2-Lite's experts left out on purpose)",
        "copy_bandwidth_GBps": bw / 1e9,
    }
    out["kv_bytes_per_token"] = kv_per_token
    out["kv_bytes_per_token_per_head_kv"] = cfg.num_hidden_layers * cfg.num_attention_heads * (192 + 128) * 2
    g = torch.Generator().manual_seed(3)
    for batch, prompt_len, new in ((1, 128, 256), (64, 1024, 128)):
        prompts = [
            {"prompt_token_ids": torch.randint(3, 100000, (prompt_len,), generator=g).tolist()} for _ in range(batch)
        ]
        one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        full = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
        llm.generate(prompts[:2], full, use_tqdm=False)  # warm-up: kernels compiled, graphs captured
        t0 = time.perf_counter()
        llm.generate(prompts, one, use_tqdm=False)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        llm.generate(prompts, full, use_tqdm=False)
        total = time.perf_counter() - t0
        step = (total - prefill) / (new - 1)
        # one decode step reads every weight once and each request's latent context once
        ctx = batch * (prompt_len + new / 2)
        floor = (weight_bytes + ctx * kv_per_token) / bw
        out[f"batch{batch}"] = {
            "prompt": prompt_len,
            "new": new,
            "total_s": total,
            "prefill_s": prefill,
            "decode_step_ms": step * 1e3,
            "floor_step_ms": floor * 1e3,
            "fraction_of_floor": floor / step,
            "output_tokens_per_s": batch * new / total,
        }
        print(out, flush=True)
    llm.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    result: dict = {}
    with tempfile.TemporaryDirectory() as root:
        result.update(tiny_check(tok, args.device, root))
        print(result, flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        result.update(bench(tok, args.device, root, args.tiny))
    print(result, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
