"""Llama family: Llama 2/3/3.1, SmolLM2, Mistral; Qwen2, Qwen3, Phi-3, Granite, OLMo 2 and
Gemma 2/3 subclass it, changing what its `make_*` methods build (layers, attention, MLP,
norms, rotary tables), the embedding and the logits.

Tensor parallelism (world size and rank from `platform.communicator`): attention heads (by
kv-head group, see layers/attention.py) and the MLP's intermediate features are split across
ranks, as evenly as the counts allow; the
embedding, lm_head and norms are replicated, so every rank holds the whole residual stream
and only rank 0's logits are used. `load_weights` slices each rank's shard out of the
full checkpoint tensors.

Pipeline parallelism (`platform.communicator.stage`, octavo.pipeline): a stage builds only its
layers (under their global indices: windows and rotary tables follow the index), the first
stage the embedding, the last the final norm and lm_head (and the embedding when the lm_head
is tied to it); its forward takes and returns the residual stream `(x, residual)` where a stage
before or after it runs the rest, and `load_weights` skips the other stages' weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from octavo.layers.attention import Attention, QKNorm, even_split
from octavo.layers.linear import Linear
from octavo.layers.norm import Float32RMSNorm, RMSNorm
from octavo.layers.rotary import build_cos_sin_cache
from octavo.models.structure import DecoderLayerStructure, DecoderStructure
from octavo.platform import AttentionSpec, Platform

if TYPE_CHECKING:
    from octavo.lora.layers import EmbeddingLoRA

#: the config's hidden_act -> the fused op of its gated MLP
GATED_ACTIVATIONS = {"silu": "silu_and_mul", "gelu_pytorch_tanh": "gelu_tanh_and_mul"}


def sliding_window(cfg, layer: int) -> int | None:
    """Layer `layer`'s attention window: the config's sliding_window, on the layers its
    `layer_types` mark "sliding_attention" (every layer when it has none: Mistral), unless
    use_sliding_window is off (Qwen2)."""
    if not getattr(cfg, "use_sliding_window", True):
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and types[layer] != "sliding_attention":
        return None
    return getattr(cfg, "sliding_window", None)


class MLP(nn.Module):
    def __init__(
        self,
        platform: Platform,
        hidden: int,
        intermediate: int,
        tp_rank: int = 0,
        tp_size: int = 1,
        hidden_act: str = "silu",
    ) -> None:
        super().__init__()
        self.platform = platform
        if hidden_act not in GATED_ACTIVATIONS:
            raise ValueError(
                f"activation {hidden_act!r} is not supported; supported: {', '.join(sorted(GATED_ACTIVATIONS))}"
            )
        self.act = GATED_ACTIVATIONS[hidden_act]
        # column-parallel gate/up and row-parallel down: a rank's slice of the intermediate
        # features needs no communication until down_proj's partial sums are all-reduced
        self.total_intermediate = intermediate
        self.inter_start, self.intermediate = even_split(intermediate, tp_size, tp_rank)
        self.gate_up_proj = Linear(hidden, 2 * self.intermediate, platform.linear)  # [gate; up] in one GEMM
        self.down_proj = Linear(self.intermediate, hidden, platform.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.platform
        return p.communicator.all_reduce(self.down_proj(getattr(p.ops, self.act)(self.gate_up_proj(x))))


class DecoderLayer(nn.Module):
    """Pre-norm: h = input_layernorm(x + residual); attention; post_attention_layernorm; MLP.

    Every layer class of the models here takes and returns (x, residual), the residual
    stream kept in two parts so that the next norm adds them in its fused op."""

    def __init__(self, model: LlamaForCausalLM, index: int) -> None:
        super().__init__()
        cfg, platform = model.config, model.platform
        self.self_attn = model.make_attention(index)
        self.mlp = model.make_mlp()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, platform.ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, platform.ops)

    def forward(self, x, residual, positions, cos_sin, kv_cache, meta):
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, positions, cos_sin, kv_cache, meta)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


def _llama_norm(norm: RMSNorm | Float32RMSNorm | None) -> RMSNorm | None:
    """A norm as DecoderStructure types it: Llama's rounding (a model with others has no structure)."""
    assert norm is None or isinstance(norm, RMSNorm), f"{norm} is not described by DecoderStructure"
    return norm


class LlamaForCausalLM(nn.Module):
    qkv_bias = False
    qk_norm = False
    cos_sin_cache: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__()
        cfg = hf_config
        self.platform = platform
        self.config = cfg
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.qkv_bias = bool(getattr(cfg, "attention_bias", self.qkv_bias)) or self.qkv_bias
        self.tp_size, self.tp_rank = platform.communicator.world_size, platform.communicator.rank
        self.stage = platform.communicator.stage
        self.layer_range = self.stage.layer_range(cfg.num_hidden_layers)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        last = self.stage.is_last
        self.embed_tokens: nn.Parameter | None = None
        self.embed_lora: EmbeddingLoRA | None = None  # the embedding's LoRA adapters (octavo.lora)
        if self.stage.is_first or (last and self.tie_word_embeddings):
            self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(self.make_layer(i) for i in self.layer_range)
        # a stage before the last hands on its residual stream: no final norm, no lm_head
        self.norm = self.make_norm(cfg.hidden_size) if last else None
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, platform.linear) if last else None
        if self.lm_head is not None and self.tie_word_embeddings:
            assert self.embed_tokens is not None  # the last stage keeps it when tied (above)
            self.lm_head.weight = self.embed_tokens  # one parameter, loaded once
        self.register_buffer("cos_sin_cache", self.make_cos_sin_cache(max_positions), persistent=False)

    # ---- what the architectures built on this class change --------------------------
    def make_layer(self, index: int) -> nn.Module:
        return DecoderLayer(self, index)

    def make_attention(self, index: int) -> Attention:
        return self.build_attention(index, QKNorm(self.config.rms_norm_eps) if self.qk_norm else None)

    def build_attention(
        self,
        index: int,
        qk_norm: QKNorm | None = None,
        scale: float | None = None,
        logits_soft_cap: float | None = None,
    ) -> Attention:
        """Layer `index`'s attention as the config describes it (heads, window, bias, this
        rank's shard), with the arguments of `Attention` that architectures set."""
        cfg = self.config
        return Attention(
            self.platform,
            cfg.hidden_size,
            cfg.num_attention_heads,
            getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            self.head_dim,
            qkv_bias=self.qkv_bias,
            qk_norm=qk_norm,
            sliding_window=sliding_window(cfg, index),
            tp_rank=self.tp_rank,
            tp_size=self.tp_size,
            scale=scale,
            logits_soft_cap=logits_soft_cap,
        )

    def make_mlp(self) -> MLP:
        cfg = self.config
        act = getattr(cfg, "hidden_act", None) or "silu"
        return MLP(self.platform, cfg.hidden_size, cfg.intermediate_size, self.tp_rank, self.tp_size, act)

    def make_norm(self, size: int) -> RMSNorm | Float32RMSNorm:
        return RMSNorm(size, self.config.rms_norm_eps, self.platform.ops)

    def make_cos_sin_cache(self, max_positions: int) -> torch.Tensor:
        return build_cos_sin_cache(self.config, self.head_dim, max_positions)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        assert self.embed_tokens is not None, "only the first pipeline stage embeds"
        x = self.embed_tokens.index_select(0, input_ids)
        return x if self.embed_lora is None else self.embed_lora.apply(input_ids, x)

    def attention_specs(self) -> list[AttentionSpec]:
        """Each layer's attention, as this rank runs it: what its KV cache must hold."""
        return [layer.self_attn.spec for layer in self._decoder_layers()]

    def _layer(self, name: str) -> DecoderLayer | None:
        """The layer of a `layers.N...` name, or None where another pipeline stage holds layer N
        (IndexError: there is no layer N)."""
        index = int(name.split(".")[1])
        if not 0 <= index < self.config.num_hidden_layers:
            raise IndexError(name)
        if index not in self.layer_range:
            return None
        return self._decoder_layers()[index - self.layer_range.start]

    def _decoder_layers(self) -> list[DecoderLayer]:
        # nn.ModuleList is not generic: a type checker sees Modules where make_layer put layers
        # with DecoderLayer's attributes (self_attn, mlp and their norms)
        return cast("list[DecoderLayer]", list(self.layers))

    def forward(self, input_ids, positions, kv_caches: list, meta, intermediate=None):
        """Hidden states after the final norm; on a pipeline stage, from the previous stage's
        residual stream `intermediate` (x, residual) unless it is the first, and the residual
        stream for the next stage unless it is the last."""
        x, residual = (self.embed(input_ids), None) if intermediate is None else intermediate
        for layer, kv in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, positions, self.cos_sin_cache, kv, meta)
        if self.norm is None:
            return x, residual
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.lm_head is not None, "only the last pipeline stage computes logits"
        return self.lm_head(hidden).float()

    def structure(self) -> DecoderStructure | None:
        """The layers as `DecoderStructure` describes them (what a platform's runner may
        compute its own way); None where this model's math is not that structure's, or where
        this process runs one pipeline stage of it."""
        if self.stage.size > 1:
            return None
        norm = _llama_norm(self.norm)
        assert norm is not None and self.embed_tokens is not None
        return DecoderStructure(
            embed=self.embed_tokens,
            layers=[
                DecoderLayerStructure(
                    input_norm=layer.input_layernorm,
                    qkv=layer.self_attn.qkv_proj,
                    q_norm=_llama_norm(layer.self_attn.q_norm),
                    k_norm=_llama_norm(layer.self_attn.k_norm),
                    attention=layer.self_attn.spec,
                    o=layer.self_attn.o_proj,
                    post_norm=layer.post_attention_layernorm,
                    gate_up=layer.mlp.gate_up_proj,
                    down=layer.mlp.down_proj,
                )
                for layer in self._decoder_layers()
            ],
            norm=norm,
            cos_sin_cache=self.cos_sin_cache,
            tp_size=self.tp_size,
        )

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
        if name == "lm_head.weight" and self.tie_word_embeddings:  # the embedding, loaded under its own name
            return None, None, None
        if name.startswith("lm_head.") and self.lm_head is None:  # a pipeline stage before the last
            return None, None, None
        if name == "embed_tokens.weight":
            return self.embed_tokens, None, None  # None: a stage without it
        if name == "norm.weight":
            return (self.norm.weight if self.norm is not None else None), None, None
        if name.startswith("layers.") and self._layer(name) is None:  # another pipeline stage's layer
            return None, None, None
        stem, _, suffix = name.rpartition(".")
        linear, dst, src = self._linear_entry(stem)
        if linear is not None:
            param = linear._parameters.get(suffix)
            if param is None:
                raise KeyError(name)
            if suffix in ("weight", "bias"):
                return param, dst, src
            # a quantized layer's tensors, in the canonical layout (octavo.quantization.scheme):
            # rows are output features like a weight's, g_idx indexes input features (no rows);
            # tensor parallelism is refused for quantized models, so nothing is sliced here
            return param, (None if suffix == "g_idx" else dst), None
        parts = name.split(".")
        if parts[0] != "layers":
            raise KeyError(name)
        layer = self._layer(name)
        assert layer is not None  # _target returned early for other stages' layers
        # the norms, whole on every rank, under their module names (input_layernorm, ...; Qwen3's
        # self_attn.q_norm)
        norms = {f"{n}.weight": m for n, m in layer.named_modules() if isinstance(m, (RMSNorm, Float32RMSNorm))}
        return norms[".".join(parts[2:])].weight, None, None

    def _linear_entry(self, stem: str) -> tuple[Linear | None, tuple[int, int] | None, tuple[int, int, int] | None]:
        """The Linear a checkpoint layer (`layers.3.self_attn.q_proj`, `lm_head`) loads into, with
        its rows in it (dst) and this rank's slice of the checkpoint's (src), as `_target`
        describes them; (None, None, None) when `stem` names no linear layer."""
        if stem == "lm_head":
            return self.lm_head, None, None
        parts = stem.split(".")
        if len(parts) < 3 or parts[0] != "layers":
            return None, None, None
        layer = self._layer(stem)
        if layer is None:  # another pipeline stage's layer
            return None, None, None
        attn = layer.self_attn
        q, kv, hd = attn.q_size, attn.kv_size, attn.spec.head_dim
        # this rank's slices of the full tensors (the whole tensors without tensor parallelism)
        q_src = (0, attn.shard.q_start * hd, attn.total_num_heads * hd)
        kv_src = (0, attn.shard.kv_start * hd, attn.total_num_kv_heads * hd)
        table: dict[str, tuple[Linear, tuple[int, int] | None, tuple[int, int, int] | None]] = {
            "self_attn.q_proj": (attn.qkv_proj, (0, q), q_src),
            "self_attn.k_proj": (attn.qkv_proj, (q, kv), kv_src),
            "self_attn.v_proj": (attn.qkv_proj, (q + kv, kv), kv_src),
            "self_attn.o_proj": (attn.o_proj, None, (1, *q_src[1:])),
            **self._mlp_entries(layer.mlp),
        }
        return table.get(".".join(parts[2:]), (None, None, None))

    def _mlp_entries(self, mlp) -> dict[str, tuple[Linear, tuple[int, int] | None, tuple[int, int, int] | None]]:
        """`_linear_entry`'s table for a layer's MLP (models whose MLPs are experts change it)."""
        inter = mlp.intermediate
        inter_src = (0, mlp.inter_start, mlp.total_intermediate)
        return {
            "mlp.gate_proj": (mlp.gate_up_proj, (0, inter), inter_src),
            "mlp.up_proj": (mlp.gate_up_proj, (inter, inter), inter_src),
            "mlp.down_proj": (mlp.down_proj, None, (1, *inter_src[1:])),
        }

    def linear_for(self, stem: str) -> Linear | None:
        """The Linear that checkpoint layer `stem` (`model.layers.3.self_attn.q_proj`) loads
        into (q, k and v share one, as gate and up do), or None: what quantization replaces."""
        stem = stem.removeprefix("model.")
        if stem == "lm_head" and self.tie_word_embeddings:
            return None
        try:
            return self._linear_entry(stem)[0]
        except (IndexError, ValueError):
            return None

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
            # rows add up; a whole tensor counts once, however often it comes (a quantized
            # layer's g_idx comes with each of q, k and v)
            seen[id(param)] = param.numel() if shard is None else seen.get(id(param), 0) + dst.numel()
        missing = [n for pid, n in expected.items() if seen.get(pid, 0) != params[n].numel()]
        if missing:
            raise ValueError(
                f"checkpoint is missing weights for: {', '.join(missing[:8])}"
                + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            )
