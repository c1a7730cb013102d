"""Llama family: Llama 2/3/3.1, SmolLM2, Mistral; Qwen2 and Qwen3 subclass it.

Tensor parallelism (world size and rank from `platform.communicator`): attention heads (by
kv-head group, see layers/attention.py) and the MLP's intermediate features are split across
ranks, as evenly as the counts allow; the
embedding, lm_head and norms are replicated, so every rank holds the whole residual stream
and only rank 0's logits are used. `load_weights` slices each rank's shard out of the
full checkpoint tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from octavo.layers.attention import Attention, even_split
from octavo.layers.rotary import build_cos_sin_cache
from octavo.platform import AttentionMetadata, Platform


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class MLP(nn.Module):
    def __init__(self, platform: Platform, hidden: int, intermediate: int, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        self.platform = platform
        # column-parallel gate/up and row-parallel down: a rank's slice of the intermediate
        # features needs no communication until down_proj's partial sums are all-reduced
        self.total_intermediate = intermediate
        self.inter_start, self.intermediate = even_split(intermediate, tp_size, tp_rank)
        self.gate_up_proj = _param(2 * self.intermediate, hidden)  # [gate; up] in one GEMM
        self.down_proj = _param(hidden, self.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.platform
        h = p.silu_and_mul(p.linear(x, self.gate_up_proj))
        return p.communicator.all_reduce(p.linear(h, self.down_proj))


class DecoderLayer(nn.Module):
    def __init__(
        self, platform: Platform, cfg, head_dim: int, qkv_bias: bool, qk_norm: bool, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__()
        self.platform = platform
        self.eps = cfg.rms_norm_eps
        window = getattr(cfg, "sliding_window", None)
        if not getattr(cfg, "use_sliding_window", True):
            window = None
        self.self_attn = Attention(
            platform,
            cfg.hidden_size,
            cfg.num_attention_heads,
            getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim,
            qkv_bias=qkv_bias,
            qk_norm_eps=cfg.rms_norm_eps if qk_norm else None,
            sliding_window=window,
            tp_rank=tp_rank,
            tp_size=tp_size,
        )
        self.mlp = MLP(platform, cfg.hidden_size, cfg.intermediate_size, tp_rank, tp_size)
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)

    def forward(self, x, residual, positions, cos_sin, kv_cache, meta):
        p = self.platform
        if residual is None:
            residual = x
            h = p.rms_norm(x, self.input_layernorm, self.eps)
        else:
            h, residual = p.rms_norm(x, self.input_layernorm, self.eps, residual)
        h = self.self_attn(h, positions, cos_sin, kv_cache, meta)
        h, residual = p.rms_norm(h, self.post_attention_layernorm, self.eps, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    qkv_bias = False
    qk_norm = False

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__()
        cfg = hf_config
        self.platform = platform
        self.config = cfg
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.qkv_bias = bool(getattr(cfg, "attention_bias", self.qkv_bias)) or self.qkv_bias
        self.tp_size, self.tp_rank = platform.communicator.world_size, platform.communicator.rank
        self.embed_tokens = _param(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(platform, cfg, self.head_dim, self.qkv_bias, self.qk_norm, self.tp_rank, self.tp_size)
            for _ in range(cfg.num_hidden_layers)
        )
        # this rank's kv heads: what its KV cache holds
        self.num_kv_heads = self.layers[0].self_attn.num_kv_heads
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        self.lm_head = None if self.tie_word_embeddings else _param(cfg.vocab_size, cfg.hidden_size)
        self.register_buffer("cos_sin_cache", build_cos_sin_cache(cfg, self.head_dim, max_positions), persistent=False)

    def forward(self, input_ids, positions, kv_caches: list[torch.Tensor], meta: AttentionMetadata):
        x = self.embed_tokens.index_select(0, input_ids)
        residual = None
        for layer, kv in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, positions, self.cos_sin_cache, kv, meta)
        x, _ = self.platform.rms_norm(x, self.norm, self.config.rms_norm_eps, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.embed_tokens if self.lm_head is None else self.lm_head
        return self.platform.linear(hidden, w).float()

    # ---- weights -------------------------------------------------------------------
    def _target(self, name: str):
        """Map a Hugging Face parameter name to (our parameter, dst, src).

        dst: (row offset, rows) inside the parameter, or None for all of it.
        src: None to copy the checkpoint tensor whole, or (dim, start, full) to copy this
        rank's slice of it: rows or columns [start, start + size along dim), where the
        checkpoint tensor must have `full` of them.
        """
        if name.startswith("model."):
            name = name[len("model.") :]
        if name == "lm_head.weight":
            return (None, None, None) if self.lm_head is None else (self.lm_head, None, None)
        if name == "embed_tokens.weight":
            return self.embed_tokens, None, None
        if name == "norm.weight":
            return self.norm, None, None
        parts = name.split(".")
        if parts[0] != "layers":
            raise KeyError(name)
        layer = self.layers[int(parts[1])]
        attn = layer.self_attn
        rest = ".".join(parts[2:])
        q, kv, inter, hd = attn.q_size, attn.kv_size, layer.mlp.intermediate, attn.head_dim
        # this rank's slices of the full tensors (the whole tensors without tensor parallelism)
        q_src = (0, attn.shard.q_start * hd, attn.total_num_heads * hd)
        kv_src = (0, attn.shard.kv_start * hd, attn.total_num_kv_heads * hd)
        inter_src = (0, layer.mlp.inter_start, layer.mlp.total_intermediate)
        table = {
            "self_attn.q_proj.weight": (attn.qkv_proj, (0, q), q_src),
            "self_attn.k_proj.weight": (attn.qkv_proj, (q, kv), kv_src),
            "self_attn.v_proj.weight": (attn.qkv_proj, (q + kv, kv), kv_src),
            "self_attn.o_proj.weight": (attn.o_proj, None, (1, *q_src[1:])),
            "mlp.gate_proj.weight": (layer.mlp.gate_up_proj, (0, inter), inter_src),
            "mlp.up_proj.weight": (layer.mlp.gate_up_proj, (inter, inter), inter_src),
            "mlp.down_proj.weight": (layer.mlp.down_proj, None, (1, *inter_src[1:])),
            "input_layernorm.weight": (layer.input_layernorm, None, None),
            "post_attention_layernorm.weight": (layer.post_attention_layernorm, None, None),
        }
        if attn.qkv_bias is not None:
            table.update(
                {
                    "self_attn.q_proj.bias": (attn.qkv_bias, (0, q), q_src),
                    "self_attn.k_proj.bias": (attn.qkv_bias, (q, kv), kv_src),
                    "self_attn.v_proj.bias": (attn.qkv_bias, (q + kv, kv), kv_src),
                }
            )
        if attn.qk_norm_eps is not None:  # per-head norms: the same on every rank
            table.update(
                {
                    "self_attn.q_norm.weight": (attn.q_norm, None, None),
                    "self_attn.k_norm.weight": (attn.k_norm, None, None),
                }
            )
        return table[rest]

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (HF name, tensor) pairs into the parameters; every parameter must be set."""
        params = dict(self.named_parameters())
        expected = {id(p): n for n, p in params.items()}
        seen: dict[int, int] = {}
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            try:
                param, shard, src = self._target(name)
            except (KeyError, IndexError):
                raise ValueError(f"unexpected weight {name!r} for {type(self).__name__}") from None
            if param is None:
                continue
            dst = param.data if shard is None else param.data.narrow(0, shard[0], shard[1])
            if src is not None:
                dim, start, full = src
                if tensor.dim() <= dim or tensor.shape[dim] != full:
                    raise ValueError(
                        f"weight {name!r} has shape {tuple(tensor.shape)}, expected {full} along dimension {dim}"
                    )
                tensor = tensor.narrow(dim, start, dst.shape[dim])
            if tuple(dst.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(tensor)
            seen[id(param)] = seen.get(id(param), 0) + dst.numel()
        missing = [n for pid, n in expected.items() if seen.get(pid, 0) != params[n].numel()]
        if missing:
            raise ValueError(
                f"checkpoint is missing weights for: {', '.join(missing[:8])}"
                + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            )
