"""BERT-family encoders on octavo-cuda (issue 26): the Triton prefill kernel's non-causal mode.

1. Correctness: a tiny random BERT (fp32, [CLS] pooling, normalized) through Octavo's pooling
   engine against transformers' last hidden state at [CLS]: min cosine over prompts of 1-300
   tokens (want >= 0.9999).
2. Throughput: a BERT-base-shaped encoder (12 x 768, 12 heads, dummy bf16 weights), `--num`
   inputs of 16-512 tokens: `LLM.embed` against transformers run as sentence-transformers runs
   it (length-sorted, padded batches of 32, [CLS], L2) in the same process.

    python3 plugin-cuda/scripts/bert_gpu.py TOKENIZER_DIR OUT.json [--device cuda] [--num 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel

from octavo import LLM


def _save(model: BertModel, tok, path: str) -> str:
    """The model with sentence-transformers' files saying: [CLS] pooling, then normalize."""
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(modules, f)
    for sub in ("1_Pooling", "2_Normalize"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": True}, f)
    return path


def _memory(device: str, share: float) -> dict:
    # two engines one after the other in one process: the first's memory still counts as in use
    # when the second sizes its cache, so the second's share must exceed the first's
    return {"gpu_memory_utilization": share} if device == "cuda" else {}


@torch.inference_mode()
def hf_encode(model: BertModel, prompts: list[list[int]], device: str, batch: int = 32) -> torch.Tensor:
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
        out[idx] = F.normalize(h[:, 0].float(), dim=-1).cpu()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--num", type=int, default=1000)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    result: dict = {}
    with tempfile.TemporaryDirectory() as root:
        torch.manual_seed(0)
        tiny = BertConfig(
            vocab_size=len(tok),
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=512,
        )
        hf = BertModel(tiny, add_pooling_layer=False).float().eval()
        path = _save(hf, tok, os.path.join(root, "tiny"))
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (5, 77, 300, 1, 129)]
        llm = LLM(
            path, runner="pooling", device=args.device, dtype="float32", max_model_len=512, **_memory(args.device, 0.15)
        )
        outs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
        llm.shutdown()
        del llm
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the first engine's cache, freed for the second
        want = hf_encode(hf, prompts, "cpu")
        got = torch.tensor([o.outputs.embedding for o in outs])
        result["tiny_fp32_min_cosine"] = float(F.cosine_similarity(got, want, dim=-1).min())
        print(result, flush=True)

        torch.manual_seed(0)
        base = BertConfig(vocab_size=len(tok), max_position_embeddings=1024)  # 12 x 768, 12 heads
        big = _save(BertModel(base, add_pooling_layer=False), tok, os.path.join(root, "base"))
        g = torch.Generator().manual_seed(2)
        lengths = torch.randint(16, 513, (args.num,), generator=g).tolist()
        prompts = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in lengths]
        llm = LLM(
            big, runner="pooling", device=args.device, dtype="bfloat16", max_model_len=1024, **_memory(args.device, 0.5)
        )
        batch = [{"prompt_token_ids": p} for p in prompts]
        llm.embed(batch[:32], use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.embed(batch, use_tqdm=False)
        result["octavo_inputs_per_s"] = args.num / (time.perf_counter() - t0)
        got = torch.tensor([o.outputs.embedding for o in outs])
        llm.shutdown()
        del llm
        model = BertModel.from_pretrained(big, torch_dtype=torch.bfloat16).to(args.device).eval()
        hf_encode(model, prompts[:32], args.device)
        t0 = time.perf_counter()
        want = hf_encode(model, prompts, args.device)
        result["hf_st_style_inputs_per_s"] = args.num / (time.perf_counter() - t0)
        result["base_bf16_min_cosine"] = float(F.cosine_similarity(got, want, dim=-1).min())
    result["ratio"] = result["octavo_inputs_per_s"] / result["hf_st_style_inputs_per_s"]
    result["tokens"] = sum(lengths)
    print(result, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
