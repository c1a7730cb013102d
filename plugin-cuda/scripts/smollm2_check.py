"""SmolLM2-135M-Instruct (the real GGUF weights) on the GPU: greedy tokens of Octavo, with
decode graphs and with enforce_eager, against Hugging Face transformers loading the same
GGUF, float32 with TF32 off, the eight text prompts of tests/test_equivalence.py (1 to
~170 tokens), 32 new tokens each, submitted together.

    python3 plugin-cuda/scripts/smollm2_check.py PATH.gguf [JSON_OUT]

The GGUF (98 MB) is over the device tool's 64 MiB per-call transfer, so it travels in two
halves over two calls and is joined on the machine (see docs/cuda.md).
"""

import json
import os
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))

from test_equivalence import NEW_TOKENS, TEXT_PROMPTS  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from octavo import LLM, SamplingParams  # noqa: E402

DEV = os.environ.get("OCTAVO_CHECK_DEVICE", "cuda")  # "cpu": a dry run of this script
path = sys.argv[1]
folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
prompts = [tok.encode(p) for p in TEXT_PROMPTS]
greedy = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)

ours = {}
for mode, eager in (("graphs", False), ("eager", True)):
    llm = LLM(
        model=path, device=DEV, dtype="float32", max_model_len=1024, enforce_eager=eager, gpu_memory_utilization=0.3
    )
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)
    ours[mode] = [o.outputs[0].token_ids for o in outs]
    del llm
    if DEV == "cuda":
        torch.cuda.empty_cache()

model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).to(DEV).eval()
model.config._attn_implementation = "eager"
ref = []
with torch.no_grad():
    for p in prompts:  # one prompt at a time, no padding, argmax per step (as tests/tiny_models.hf_greedy)
        res = model(torch.tensor([p], device=DEV), use_cache=True)
        gen = [int(res.logits[0, -1].argmax())]
        for _ in range(NEW_TOKENS - 1):
            res = model(torch.tensor([[gen[-1]]], device=DEV), past_key_values=res.past_key_values, use_cache=True)
            gen.append(int(res.logits[0, -1].argmax()))
        ref.append(gen)

report = {"prompt_lengths": [len(p) for p in prompts], "first_text": tok.decode(ours["graphs"][0])}
for mode, toks in ours.items():
    same = [a == b for a, b in zip(toks, ref)]
    report[mode] = {
        "prompts_equal": sum(same),
        "of": len(same),
        "first_diff": [
            (i, next(j for j, (x, y) in enumerate(zip(a, b)) if x != y))
            for i, (a, b) in enumerate(zip(toks, ref))
            if a != b
        ],
    }
    print(
        f"SMOLLM2 {mode}: {sum(same)}/{len(same)} prompts token-equal to transformers "
        f"(first differing positions: {report[mode]['first_diff']})"
    )
print("first prompt continues:", repr(report["first_text"][:60]))
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as f:
        json.dump(report, f, indent=1)
ok = all(report[m]["prompts_equal"] == len(prompts) for m in ours)
sys.exit(0 if ok else 1)
