"""Rotary position embedding tables, for every rope type transformers knows."""

from __future__ import annotations

import torch


def rope_parameters(hf_config, layer_type: str | None = None) -> dict:
    """The config's rope settings in transformers 5 form (`rope_parameters`); with `layer_type`,
    those of that kind of layer where the config keeps one set per kind (Gemma 3: local and
    global layers)."""
    params = getattr(hf_config, "rope_parameters", None)
    if params is None:  # transformers 4 style configs
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    params = dict(params)
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


def build_cos_sin_cache(hf_config, head_dim: int, max_positions: int, layer_type: str | None = None) -> torch.Tensor:
    """[max_positions, rot_dim] float32: cat(cos, sin) of each rotary frequency.

    Non-default rope types (llama3, linear, yarn, longrope, ...) take their inverse
    frequencies and attention scaling from transformers' own ROPE_INIT_FUNCTIONS, so they
    match the reference implementation by construction. `layer_type` picks one set of a
    config that has one per kind of layer.

    LongRoPE (Phi-3, Phi-4-mini) has two sets of frequencies, short and long; transformers
    picks one per forward call from the longest position in it. A table row must not
    depend on the batch (prefix-cached keys are reused by later requests), so here a
    position's row uses the long set from the pretraining length
    (`original_max_position_embeddings`) on and the short set below it: the same numbers
    transformers produces for a prompt within that length and the tokens generated past it.
    """
    params = rope_parameters(hf_config, layer_type)
    rope_type = params["rope_type"]
    partial = float(params.get("partial_rotary_factor") or getattr(hf_config, "partial_rotary_factor", 1.0) or 1.0)
    rot_dim = int(head_dim * partial)
    scaling = 1.0
    t = torch.arange(max_positions, dtype=torch.float32)
    if rope_type == "default":
        base = float(params.get("rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
        freqs = torch.outer(t, inv_freq)
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type == "dynamic" or rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"rope type {rope_type!r} is not supported; supported: default, "
                + ", ".join(k for k in ROPE_INIT_FUNCTIONS if k != "dynamic")
            )
        init = ROPE_INIT_FUNCTIONS[rope_type]
        cpu = torch.device("cpu")
        inv_freq, scaling = init(hf_config, cpu, layer_type=layer_type)
        freqs = torch.outer(t, inv_freq.float().to(t.device))  # t: on the ambient torch.device(...) of the caller
        if rope_type == "longrope":
            original = int(params.get("original_max_position_embeddings") or hf_config.original_max_position_embeddings)
            long_inv_freq, _ = init(hf_config, cpu, seq_len=original + 1, layer_type=layer_type)
            freqs[original:] = torch.outer(t[original:], long_inv_freq.float().to(t.device))
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1)
