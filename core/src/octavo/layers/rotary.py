"""Rotary position embedding tables, for every rope type transformers knows."""

from __future__ import annotations

import torch


def rope_parameters(hf_config) -> dict:
    """The config's rope settings in transformers 5 form (`rope_parameters`)."""
    params = getattr(hf_config, "rope_parameters", None)
    if params is None:  # transformers 4 style configs
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    params = dict(params)
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


def build_cos_sin_cache(hf_config, head_dim: int, max_positions: int) -> torch.Tensor:
    """[max_positions, rot_dim] float32: cat(cos, sin) of each rotary frequency.

    Non-default rope types (llama3, linear, yarn, ...) take their inverse frequencies
    and attention scaling from transformers' own ROPE_INIT_FUNCTIONS, so they match the
    reference implementation by construction.
    """
    params = rope_parameters(hf_config)
    rope_type = params["rope_type"]
    partial = float(getattr(hf_config, "partial_rotary_factor", 1.0) or 1.0)
    rot_dim = int(head_dim * partial)
    scaling = 1.0
    if rope_type == "default":
        base = float(params.get("rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        if rope_type == "dynamic" or rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"rope type {rope_type!r} is not supported; supported: default, "
                + ", ".join(k for k in ROPE_INIT_FUNCTIONS if k != "dynamic")
            )
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
        inv_freq = inv_freq.float().to(torch.empty(0).device)  # the ambient torch.device(...) of the caller
    t = torch.arange(max_positions, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1)
