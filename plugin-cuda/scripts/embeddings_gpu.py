"""Issue 26 on the GPU: an E5-Mistral-shaped embedder (MistralModel, 32 x 4096, dummy weights,
last-token pooling, normalized) through Octavo's pooling engine against transformers run as
sentence-transformers runs it (length-sorted batches of 32, padded, last non-pad token, L2),
1,000 inputs of 16-512 tokens, bf16; first a correctness check on a tiny random Llama body
(fp32, against transformers' hidden states, cosine >= 0.9999).

    python3 plugin-cuda/scripts/embeddings_gpu.py TOKENIZER_DIR OUT.json [--device cuda] [--tiny]

`--tiny` shrinks the big model to 2 x 256 (a dry run on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaConfig, LlamaModel, MistralConfig, MistralModel

from octavo import LLM


def _dir(cfg, tok, path: str, weights=None) -> str:
    os.makedirs(path, exist_ok=True)
    if weights is None:
        cfg.save_pretrained(path)
    else:
        weights.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def check(tok, device: str, root: str) -> float:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
    )
    hf = LlamaModel(cfg).float().eval()
    path = _dir(cfg, tok, os.path.join(root, "tiny"), hf)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (5, 77, 300, 1, 129)]
    llm = LLM(path, runner="pooling", device=device, dtype="float32", max_model_len=512, gpu_memory_utilization=0.2)
    outs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    llm.shutdown()
    worst = 1.0
    with torch.inference_mode():
        for p, o in zip(prompts, outs):
            want = F.normalize(hf(torch.tensor([p])).last_hidden_state[0, -1], dim=0)
            worst = min(worst, float(F.cosine_similarity(torch.tensor(o.outputs.embedding), want, dim=0)))
    return worst


@torch.inference_mode()
def hf_encode(model, prompts: list[list[int]], device: str, batch: int = 32) -> torch.Tensor:
    """sentence-transformers' encode: sorted by length, padded batches, last real token, L2."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = torch.empty(len(prompts), model.config.hidden_size)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        n = max(len(prompts[i]) for i in idx)
        ids = torch.zeros(len(idx), n, dtype=torch.long)
        mask = torch.zeros(len(idx), n, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(prompts[i])] = torch.tensor(prompts[i])
            mask[r, : len(prompts[i])] = 1
        h = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        last = h[torch.arange(len(idx)), mask.sum(1).to(device) - 1]
        out[idx] = F.normalize(last.float(), dim=-1).cpu()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    result: dict = {}
    with tempfile.TemporaryDirectory() as root:
        result["tiny_fp32_min_cosine"] = check(tok, args.device, root)
        print(result, flush=True)
        size = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2) if args.tiny else {}
        cfg = MistralConfig(
            vocab_size=32000,
            num_attention_heads=32,
            num_key_value_heads=8,
            **(size or dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32)),
        )
        cfg.architectures = ["MistralModel"]
        path = _dir(cfg, tok, os.path.join(root, "e5"))
        g = torch.Generator().manual_seed(2)
        lengths = torch.randint(16, 513, (args.num,), generator=g).tolist()
        prompts = [torch.randint(3, 32000, (n,), generator=g).tolist() for n in lengths]
        llm = LLM(
            path,
            runner="pooling",
            device=args.device,
            dtype="bfloat16",
            load_format="dummy",
            max_model_len=1024,
            max_num_batched_tokens=16384,
            gpu_memory_utilization=0.5,
        )
        batch = [{"prompt_token_ids": p} for p in prompts]
        llm.embed(batch[:32], use_tqdm=False)
        t0 = time.perf_counter()
        llm.embed(batch, use_tqdm=False)
        result["octavo_inputs_per_s"] = args.num / (time.perf_counter() - t0)
        llm.shutdown()
        del llm
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the engine's cache and weights, freed
        torch.set_default_dtype(torch.bfloat16)  # 7B random weights built on the device, in bf16
        with torch.device(args.device):
            model = MistralModel(cfg).eval()
        torch.set_default_dtype(torch.float32)
        hf_encode(model, prompts[:32], args.device)
        t0 = time.perf_counter()
        hf_encode(model, prompts, args.device)
        result["hf_st_style_inputs_per_s"] = args.num / (time.perf_counter() - t0)
    result["ratio"] = result["octavo_inputs_per_s"] / result["hf_st_style_inputs_per_s"]
    result["tokens"] = sum(lengths)
    print(result, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
