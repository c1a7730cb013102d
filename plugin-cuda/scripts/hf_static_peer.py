"""The Hugging Face peer of G2 and G3 at its best on one GPU: `generate()` with a static KV cache,
whose forward transformers then compiles (torch.compile, CUDA graphs), on random weights of
the model folder's shapes (as `--load-format dummy` gives Octavo).

    python3 plugin-cuda/scripts/hf_static_peer.py MODEL_DIR g2|g3 [--json FILE]

G2: 1 x 128 prompt tokens, 512 output; G3: 64 x 1024 prompt tokens, 128 output; random prompt
ids, sampling at temperature 1 with every output length forced (`min_new_tokens`), as
`octavo bench throughput` runs them. Two untimed runs first compile the prefill and decode
shapes and record their graphs; the third is timed. Prints output tokens/s.
"""

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

#: (requests, prompt tokens, output tokens)
WORKLOADS = {"g2": (1, 128, 512), "g3": (64, 1024, 128)}

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("workload", choices=sorted(WORKLOADS))
ap.add_argument("--json", default=None)
args = ap.parse_args()
batch, prompt_len, out_len = WORKLOADS[args.workload]

with torch.device("cuda"):  # random init on the GPU: on the CPU it takes minutes for 8B
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=torch.bfloat16)
model.eval()
gen = torch.Generator(device="cuda").manual_seed(0)
ids = torch.randint(0, 49152, (batch, prompt_len), device="cuda", generator=gen)
kw = dict(
    attention_mask=torch.ones_like(ids),
    do_sample=True,
    top_k=0,
    top_p=1.0,
    temperature=1.0,
    max_new_tokens=out_len,
    min_new_tokens=out_len,
    cache_implementation="static",
    pad_token_id=0,
)
times = []
with torch.inference_mode():
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, **kw)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        assert out.shape == (batch, prompt_len + out_len), out.shape
tok_s = batch * out_len / times[-1]
print(
    f"hf static cache + compile, {args.workload} ({batch} x {prompt_len} in / {out_len} out): untimed runs "
    f"{times[0]:.1f} s, {times[1]:.1f} s; timed {times[2]:.3f} s, {tok_s:.1f} output tok/s"
)
if args.json:
    with open(args.json, "w") as fh:
        json.dump(dict(workload=args.workload, times_s=times, output_tokens_per_s=tok_s), fh)
