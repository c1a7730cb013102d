"""LoRA adapters made with PEFT on the tests' tiny models, and PEFT's greedy tokens (the reference)."""

from __future__ import annotations

import torch

#: every projection of a Llama decoder layer, as PEFT names them
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base: str, path: str, seed: int, targets: list[str], r: int = 8, **config) -> str:
    """A PEFT LoRA adapter of `base` with random A and B (B well away from PEFT's zeros)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, target_modules=targets, init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft.save_pretrained(path)
    return path


def peft_greedy(base: str, adapter: str | None, prompts: list[list[int]], n: int) -> list[list[int]]:
    """transformers' greedy tokens with PEFT's adapter (None: the base model), full recompute."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    outs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(n):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            outs.append(ids[len(prompt) :])
    return outs


def peft_log_softmax(base: str, adapter: str | None, prompt: list[int]) -> torch.Tensor:
    """transformers' log-probabilities [len(prompt), vocab] over a prompt with PEFT's adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0].float().log_softmax(dim=-1)
