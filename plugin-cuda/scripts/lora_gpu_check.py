"""Multi-LoRA on octavo-cuda (issue 25), correctness on the GPU: a small random Llama in float32
with two random adapters on every projection, four requests (adapter A twice, B, none) in the
same steps; greedy tokens with the decode graphs (LoRA kernels captured, slots staged per
replay) must equal the eager run's, and each adapter's tokens must equal the base model's with
that adapter merged into its weights (W + scaling * B @ A), run without LoRA.

    python3 plugin-cuda/scripts/lora_gpu_check.py TOKENIZER_DIR WORK_DIR [DEVICE]

(DEVICE defaults to cuda; cpu runs the same check on core's default LoRA ops, without graphs.)
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _writer():
    spec = importlib.util.spec_from_file_location(
        "lora_throughput", os.path.join(HERE, "../../benchmarks/lora_throughput.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_adapter


def make_model(tok_dir: str, path: str):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, initializer_range=0.3,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, cfg


def merged(model, base_state: dict, adapter: str, path: str) -> None:
    """The base weights with `adapter` merged in (W + scaling * B @ A), saved at `path` as `model`."""
    from safetensors.torch import load_file

    with open(os.path.join(adapter, "adapter_config.json")) as f:
        config = json.load(f)
    scaling = config["lora_alpha"] / config["r"]
    weights = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    state = {k: v.clone() for k, v in base_state.items()}
    for name, a in weights.items():
        if ".lora_A." in name:
            b = weights[name.replace(".lora_A.", ".lora_B.")]
            target = name.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            state[target] += scaling * (b.float() @ a.float())
    model.load_state_dict(state)
    model.save_pretrained(path)


DEVICE = sys.argv[3] if len(sys.argv) > 3 else "cuda"


def run(path: str, eager: bool, loras, prompts) -> list[list[int]]:
    from octavo import LLM, SamplingParams

    llm = LLM(path, device=DEVICE, dtype="float32", kv_cache_memory="64MiB", enforce_eager=eager,
              gpu_memory_utilization=0.3, num_gpu_blocks_override=128, enable_lora=loras is not None, max_loras=2,
              max_lora_rank=16, max_model_len=512)  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=loras)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    llm.shutdown()
    del llm
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return tokens


def main() -> int:
    from transformers import AutoTokenizer

    from octavo.lora.request import LoRARequest

    tok_dir, work = sys.argv[1], sys.argv[2]
    model, cfg = make_model(tok_dir, os.path.join(work, "base"))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    write = _writer()
    adapters = {}
    for i, name in enumerate(("a", "b")):
        write(os.path.join(work, name), cfg, 16, seed=i, b_std=0.5)
        adapters[name] = LoRARequest(name, i + 1, os.path.join(work, name))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, cfg.vocab_size, (n,), generator=g).tolist() for n in (37, 5, 120, 64)]
    which = ["a", "b", None, "a"]
    loras = [adapters[w] if w else None for w in which]
    base = os.path.join(work, "base")
    graphs = run(base, False, loras, prompts)
    eager = run(base, True, loras, prompts)
    ok = True
    print("graphs == eager:", graphs == eager)
    ok &= graphs == eager
    for name in ("a", "b"):
        merged(model, base_state, adapters[name].lora_path, os.path.join(work, f"merged-{name}"))
        AutoTokenizer.from_pretrained(tok_dir).save_pretrained(os.path.join(work, f"merged-{name}"))
        rows = [i for i, w in enumerate(which) if w == name]
        want = run(os.path.join(work, f"merged-{name}"), False, None, [prompts[i] for i in rows])
        same = [graphs[i] == w for i, w in zip(rows, want)]
        print(f"adapter {name} == merged weights: {same}")
        ok &= all(same)
    plain = run(base, False, None, prompts)
    differs = [plain[i] != graphs[i] for i in range(len(prompts))]
    print(
        "base request unchanged by the adapters' neighbours:",
        plain[2] == graphs[2],
        "; adapters change tokens:",
        differs,
    )
    ok &= plain[2] == graphs[2] and differs[0] and differs[1] and differs[3]
    print("LORA GPU CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
