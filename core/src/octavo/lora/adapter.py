"""Reading a LoRA adapter in PEFT's format and checking it against the base model.

PEFT saves `adapter_config.json` (rank `r`, `lora_alpha`, `target_modules`, `use_rslora`, ...)
and `adapter_model.safetensors`, whose tensors are named after the base model's modules:
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` [r, in] and `...lora_B.weight`
[out, r]. The adapter adds `scaling * B @ A @ x` to the module's output, scaling being
lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`), per module where `rank_pattern` /
`alpha_pattern` set other values.

`load_adapter` returns each target's A and B in float32 with the scaling folded into B, or
raises `LoRAError` naming what does not fit: a missing file, a PEFT feature Octavo does not run
(DoRA, biases, `modules_to_save`, trained added tokens), a rank over --max-lora-rank,
a module the base model does not have, or a shape that differs from the base module's.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from octavo.lora.config import LoRAError
from octavo.lora.request import LoRARequest

#: PEFT's names of fused checkpoint modules (Phi-3) -> the modules Octavo's loader splits them into
FUSED_TARGETS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


@dataclass
class LoRAAdapter:
    """A loaded adapter: per target (`layers.3.self_attn.q_proj`), A [r, in] and scaling * B
    [out, r], float32 on the host."""

    request: LoRARequest
    rank: int  # the largest of its modules' ranks
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _pattern_value(patterns: Mapping[str, int | float], module: str, default):
    """PEFT's per-module override: the first pattern matching the end of the module's name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _read_config(req: LoRARequest) -> dict:
    path = os.path.join(req.lora_path, "adapter_config.json")
    if not os.path.isfile(path):
        raise LoRAError(f"LoRA adapter {req.lora_name!r}: no adapter_config.json in {req.lora_path!r}")
    with open(path) as f:
        cfg = json.load(f)
    refuse = {
        "peft_type": (cfg.get("peft_type", "LORA") != "LORA", "is not a LoRA adapter (peft_type "
                      f"{cfg.get('peft_type')!r}); only LoRA adapters are served"),
        "use_dora": (bool(cfg.get("use_dora")), "is a DoRA adapter (use_dora), which Octavo does not run"),
        "bias": (cfg.get("bias", "none") != "none" or bool(cfg.get("lora_bias")),
                 "trains biases (bias / lora_bias), which Octavo's LoRA does not apply"),
        "modules_to_save": (bool(cfg.get("modules_to_save")),
                            f"replaces whole modules ({cfg.get('modules_to_save')}, modules_to_save), "
                            "which Octavo's LoRA does not serve"),
        "fan_in_fan_out": (bool(cfg.get("fan_in_fan_out")), "stores transposed weights (fan_in_fan_out)"),
        "trainable_token_indices": (bool(cfg.get("trainable_token_indices")),
                                    "trains token embeddings (trainable_token_indices), which Octavo does not "
                                    "serve (as vLLM, no vocabulary beyond the base model's)"),
    }  # fmt: skip
    for bad, why in refuse.values():
        if bad:
            raise LoRAError(f"LoRA adapter {req.lora_name!r} {why}")
    return cfg


def _module_of(name: str) -> tuple[str, str]:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> (`layers.0.self_attn.q_proj`, `A`);
    the part (`A`, `B`, `embedding_A`, ...) names what the tensor is."""
    stem = name.removeprefix("base_model.model.").removeprefix("model.")
    module, _, part = stem.rpartition(".lora_")
    part = part.removesuffix(".weight")
    if not module:
        raise LoRAError(f"tensor {name!r} is not a LoRA weight (lora_A / lora_B)")
    return module, part


def load_adapter(req: LoRARequest, targets: Mapping[str, tuple[int, int]], max_rank: int) -> LoRAAdapter:
    """Read and check `req`'s adapter. `targets` maps every module a LoRA may target
    (`layers.3.self_attn.q_proj`) to its (in_features, out_features)."""
    from safetensors.torch import load_file

    cfg = _read_config(req)
    file = os.path.join(req.lora_path, "adapter_model.safetensors")
    if not os.path.isfile(file):
        extra = " (pickled adapter_model.bin files are not loaded: save with safe_serialization)"
        raise LoRAError(f"LoRA adapter {req.lora_name!r}: no adapter_model.safetensors in {req.lora_path!r}{extra}")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in load_file(file).items():
        if name.endswith(".base_layer.weight"):
            _check_base_copy(req, name, tensor, targets)
            continue
        module, part = _module_of(name)
        if module == "embed_tokens":  # PEFT's names for an embedding's A [r, vocab] and B [hidden, r]
            part = {"embedding_A": "A", "embedding_B": "B"}.get(part, part)
        if part not in ("A", "B"):
            what = "embeddings" if "embedding" in part else part
            raise LoRAError(
                f"LoRA adapter {req.lora_name!r} adapts {module} ({what}), which Octavo's LoRA does not serve; "
                f"supported targets: {_target_kinds(targets)}"
            )
        parts.setdefault(module, {})[part] = tensor
    if not parts:
        raise LoRAError(f"LoRA adapter {req.lora_name!r}: adapter_model.safetensors holds no lora_A / lora_B weights")
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rank = 0
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise LoRAError(f"LoRA adapter {req.lora_name!r}: {module} has lora_{''.join(ab)} without its pair")
        a, b = ab["A"].float(), ab["B"].float()
        r = _pattern_value(ranks, module, cfg.get("r", a.shape[0]))
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise LoRAError(
                f"LoRA adapter {req.lora_name!r}: {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, "
                f"not [r, in] and [out, r] with the config's rank r = {r}"
            )
        if r > max_rank:
            raise LoRAError(
                f"LoRA adapter {req.lora_name!r} has rank {r} ({module}), over --max-lora-rank {max_rank}; "
                f"raise --max-lora-rank to at least {r}"
            )
        alpha = _pattern_value(alphas, module, cfg.get("lora_alpha", 8))
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        for name, b_part in _split_fused(req, module, b, targets):
            if name not in targets:
                raise LoRAError(
                    f"LoRA adapter {req.lora_name!r} targets {module}, which the base model does not have "
                    f"(or Octavo's LoRA does not serve); supported targets: {_target_kinds(targets)}"
                )
            fan_in, fan_out = targets[name]
            if a.shape[1] != fan_in or b_part.shape[0] != fan_out:
                vocab = name in ("embed_tokens", "lm_head")
                why = " (added tokens are not served: as vLLM, no vocabulary beyond the base model's)" if vocab else ""
                raise LoRAError(
                    f"LoRA adapter {req.lora_name!r} does not fit the base model: {name} takes {fan_in} features "
                    f"and gives {fan_out}, the adapter's lora_A is {list(a.shape)} and lora_B {list(b_part.shape)}"
                    f"{why}"
                )
            weights[name] = (a.contiguous(), (b_part * scaling).contiguous())
        rank = max(rank, r)
    return LoRAAdapter(req, rank, weights)


def _check_base_copy(req: LoRARequest, name: str, tensor: torch.Tensor, targets: Mapping[str, tuple[int, int]]):
    """PEFT saves the (frozen) base embedding and lm_head beside an adapter that targets them
    (`save_embedding_layers`): a copy of the base model's weights, which is not read. One of
    another shape holds added tokens, which are not served (vLLM dropped its extra vocabulary)."""
    module = name.removesuffix(".base_layer.weight").removeprefix("base_model.model.").removeprefix("model.")
    if module not in ("embed_tokens", "lm_head") or module not in targets:
        raise LoRAError(f"LoRA adapter {req.lora_name!r}: tensor {name!r} is not a LoRA weight (lora_A / lora_B)")
    vocab = targets["embed_tokens"][0] if module == "embed_tokens" else targets[module][1]
    if tensor.shape[0] != vocab:
        raise LoRAError(
            f"LoRA adapter {req.lora_name!r} has a {module} of {tensor.shape[0]} tokens, the base model {vocab}: "
            "added tokens are not served (as vLLM, no vocabulary beyond the base model's)"
        )


def _split_fused(req: LoRARequest, module: str, b: torch.Tensor, targets: Mapping[str, tuple[int, int]]):
    """(module, B) pairs: a fused module (Phi-3's qkv_proj) as the modules it is split into,
    each with its rows of B (they share A)."""
    fused = next((f for f in FUSED_TARGETS if module.endswith("." + f)), None)
    if fused is None:
        return [(module, b)]
    layer = module[: -len(fused) - 1]
    names = [f"{layer}.{p}" for p in FUSED_TARGETS[fused]]
    if not all(n in targets for n in names):
        return [(module, b)]  # reported as an unknown target by the caller
    sizes = [targets[n][1] for n in names]
    if b.shape[0] != sum(sizes):
        raise LoRAError(
            f"LoRA adapter {req.lora_name!r} does not fit the base model: {module}'s lora_B has {b.shape[0]} rows, "
            f"the base model's {' + '.join(names)} give {sum(sizes)}"
        )
    return list(zip(names, b.split(sizes)))


def _target_kinds(targets: Mapping[str, tuple[int, int]]) -> str:
    kinds = sorted({name.split(".")[-1] for name in targets})
    return ", ".join(kinds)
