"""End-to-end check of the CUDA platform with decode graphs (issue 7), one process:

* a random-weight tiny Llama (Llama-3.1 rope, GQA) in float32 with TF32 off: greedy tokens of
  Octavo with graphs, Octavo with enforce_eager, and transformers (no KV cache, argmax per
  step) must agree token for token; requests of different lengths finish at different
  steps so decode batches get padded to the captured sizes;
* the same in bfloat16: graphs vs eager (reported; bf16 rounding may legitimately differ
  where the decode split count differs, since graphs fix max_seq_len = max_model_len);
* decode throughput of the tiny model, graphs vs eager (launch-bound: the graph's gain).

    [OCTAVO_CHECK_TP=2] [OCTAVO_CHECK_PLATFORM=rocm] python3 plugin-cuda/scripts/graph_check.py TOKENIZER_DIR [JSON_OUT]
"""

import gc
import json
import logging
import os
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: E402

from octavo import LLM, SamplingParams  # noqa: E402
from octavo.graph_runner import GraphRunner  # noqa: E402


def main():
    global report, replays
    TOK = sys.argv[1]
    DEV = os.environ.get("OCTAVO_CHECK_DEVICE", "cuda")  # "cpu": a dry run of this script
    # the octavo platform to check on that device: "rocm" with OCTAVO_ROCM_ON_CUDA=1 runs
    # octavo-rocm's code on an NVIDIA GPU (plugin-rocm/scripts/rocm_on_nvidia_gpu.sh)
    PLATFORM = os.environ.get("OCTAVO_CHECK_PLATFORM", DEV)
    TP = int(os.environ.get("OCTAVO_CHECK_TP", "1"))  # tensor-parallel ranks (NCCL on GPUs)
    PATH = "/tmp/octavo_tiny_llama"
    LENGTHS = [1, 5, 17, 64, 100, 160, 250, 300, 33, 7, 128, 511]
    report = {}

    tok = AutoTokenizer.from_pretrained(TOK)
    vocab = len(tok)
    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        vocab_size=vocab,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(PATH)
    tok.save_pretrained(PATH)

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in LENGTHS]
    new = [32 - 2 * i for i in range(len(prompts))]  # 32 .. 10: the batch shrinks step by step

    hf = hf.to(DEV).eval()
    hf.config._attn_implementation = "eager"
    ref = []
    with torch.inference_mode():
        for p, n in zip(prompts, new):
            ids = torch.tensor([p], device=DEV)
            for _ in range(n):
                nxt = hf(ids).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
            ref.append(ids[0, len(p) :].tolist())
    del hf
    gc.collect()
    torch.cuda.empty_cache()

    replays = []
    _run = GraphRunner.run

    def _spy(self, batch):
        h = _run(self, batch)
        if h is not None:
            replays.append((batch.num_reqs, self.padded_size(batch.num_reqs)))
        return h

    GraphRunner.run = _spy

    def generate(dtype, eager, **kw):
        llm = LLM(
            model=PATH,
            device=PLATFORM,
            dtype=dtype,
            max_model_len=1024,
            gpu_memory_utilization=0.3,
            max_num_seqs=16,
            enforce_eager=eager,
            tensor_parallel_size=TP,
            **kw,
        )
        assert (llm.llm_engine.runner.graph_runner is None) == (eager or DEV == "cpu")
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in new]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        toks = [o.outputs[0].token_ids for o in outs]
        # decode throughput: 16 requests, 8-token prompts, 256 new tokens each
        sp = SamplingParams(temperature=0.0, max_tokens=256, ignore_eos=True)
        dec = [{"prompt_token_ids": p[:8] if len(p) >= 8 else p * 8} for p in prompts[:16]] * 2
        llm.generate(dec[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
        sync = llm.llm_engine.platform.device.synchronize
        sync()
        t = time.perf_counter()
        o = llm.generate(dec[:16], sp, use_tqdm=False)
        sync()
        dt = time.perf_counter() - t
        ntok = sum(len(x.outputs[0].token_ids) for x in o)
        llm.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        return toks, ntok / dt

    def agree(a, b):
        first = [next((j for j, (x, y) in enumerate(zip(u, v)) if x != y), None) for u, v in zip(a, b)]
        return sum(f is None for f in first), first

    for dtype in ("float32", "bfloat16"):
        graphs, tps_g = generate(dtype, False)
        n_replays = len(replays)
        padded = sum(1 for n, b in replays if b > n)
        replays.clear()
        eager, tps_e = generate(dtype, True)
        same_ge, first_ge = agree(graphs, eager)
        r = {
            "graphs_eq_eager": f"{same_ge}/{len(prompts)}",
            "first_diff_graphs_eager": first_ge,
            "decode_tok_s_graphs": round(tps_g, 1),
            "decode_tok_s_eager": round(tps_e, 1),
            "graph_replays": n_replays,
            "padded_replays": padded,
        }
        if dtype == "float32":
            same_gh, first_gh = agree(graphs, ref)
            same_eh, _ = agree(eager, ref)
            r.update(
                {
                    "graphs_eq_hf": f"{same_gh}/{len(prompts)}",
                    "eager_eq_hf": f"{same_eh}/{len(prompts)}",
                    "first_diff_graphs_hf": first_gh,
                }
            )
        report[dtype] = r
        print(dtype, json.dumps(r), flush=True)

    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(report, f, indent=2)
    ok = (
        report["float32"]["graphs_eq_eager"] == f"{len(prompts)}/{len(prompts)}"
        and report["float32"]["graphs_eq_hf"] == f"{len(prompts)}/{len(prompts)}"
    )
    print("GRAPH CHECK", "PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":  # tensor-parallel workers start by importing this file
    main()
