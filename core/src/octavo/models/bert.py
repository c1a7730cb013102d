"""BERT and XLM-RoBERTa encoders: bidirectional (non-causal) attention through the
platform's attention back end, absolute position and token-type embeddings, post-LN
layers (x = LayerNorm(x + attention(x)); x = LayerNorm(x + MLP(x))), GELU.

Pooling models only (LLM(..., runner="pooling")): the forward returns the last layer's
hidden states, which `octavo.pooling` pools ([CLS] by default). The
`*ForSequenceClassification` heads are `score`: dense + tanh over the [CLS] state, then a
linear layer to the labels (BERT names the first part `pooler.dense`, XLM-R
`classifier.dense`). Module and parameter names are the checkpoints', so loading is a
lookup. Token types: 0, and 1 after a sentence pair's first [SEP] (`BertEmbeddings`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.linear import Linear
from octavo.platform import AttentionSpec, Platform


class BertEmbeddings(nn.Module):
    def __init__(self, cfg, position_offset: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # XLM-R numbers positions from padding_idx + 1 (RoBERTa's convention); BERT from 0
        self.position_offset = position_offset
        #: the tokenizer's [SEP] id, set by the pooling engine where the model has two token
        #: types: a sentence pair's second part ([CLS] a [SEP] b [SEP]: "b [SEP]") is type 1
        self.sep_token_id: int | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions + self.position_offset)
        return self.LayerNorm(x + self.token_type_embeddings(self._token_types(input_ids, positions)))

    def _token_types(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """1 after a request's first [SEP], else 0. Each request's prompt is whole in its step
        (position 0 starts it): the pooling engine schedules encoders' prompts so."""
        if self.sep_token_id is None or self.token_type_embeddings.num_embeddings < 2:
            return torch.zeros_like(input_ids)
        is_sep = (input_ids == self.sep_token_id).long()
        before = is_sep.cumsum(0) - is_sep  # [SEP]s before each token, over the whole step
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        start = torch.where(positions == 0, rows, 0).cummax(0).values  # each token's request's first row
        return (before - before[start]).clamp(max=1)


class _DenseNorm(nn.Module):
    """dense, then LayerNorm(that + residual): BERT's attention and MLP outputs."""

    def __init__(self, platform: Platform, cfg, size_in: int) -> None:
        super().__init__()
        self.dense = Linear(size_in, cfg.hidden_size, platform.linear, bias=True)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertSelfAttention(nn.Module):
    def __init__(self, platform: Platform, cfg) -> None:
        super().__init__()
        h, heads = cfg.hidden_size, cfg.num_attention_heads
        self.platform = platform
        self.spec = AttentionSpec(
            num_heads=heads, num_kv_heads=heads, head_dim=h // heads, scale=(h // heads) ** -0.5, causal=False
        )
        self.query = Linear(h, h, platform.linear, bias=True)
        self.key = Linear(h, h, platform.linear, bias=True)
        self.value = Linear(h, h, platform.linear, bias=True)

    def forward(self, x: torch.Tensor, kv_cache, meta) -> torch.Tensor:
        s = self.spec
        q, k, v = (proj(x).view(-1, s.num_heads, s.head_dim) for proj in (self.query, self.key, self.value))
        return self.platform.attention.forward(q, k, v, kv_cache, meta, s).reshape(x.shape)


class BertAttention(nn.Module):
    def __init__(self, platform: Platform, cfg) -> None:
        super().__init__()
        self.self = BertSelfAttention(platform, cfg)
        self.output = _DenseNorm(platform, cfg, cfg.hidden_size)


class BertIntermediate(nn.Module):
    def __init__(self, platform: Platform, cfg) -> None:
        super().__init__()
        if cfg.hidden_act != "gelu":
            raise ValueError(f"activation {cfg.hidden_act!r} is not supported for BERT models; supported: gelu")
        self.dense = Linear(cfg.hidden_size, cfg.intermediate_size, platform.linear, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, platform: Platform, cfg) -> None:
        super().__init__()
        self.attention = BertAttention(platform, cfg)
        self.intermediate = BertIntermediate(platform, cfg)
        self.output = _DenseNorm(platform, cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, kv_cache, meta) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, kv_cache, meta), x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, platform: Platform, cfg) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(platform, cfg) for _ in range(cfg.num_hidden_layers))


class ClassificationHead(nn.Module):
    """tanh(dense(cls)) -> out_proj: the labels' logits from the [CLS] state."""

    def __init__(self, platform: Platform, cfg) -> None:
        super().__init__()
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, platform.linear, bias=True)
        self.out_proj = Linear(cfg.hidden_size, cfg.num_labels, platform.linear, bias=True)
        self.out_features = cfg.num_labels

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(cls)))


class BertModel(nn.Module):
    prefix = "bert."  # of a *ForSequenceClassification checkpoint's body weights
    cos_sin_cache: torch.Tensor  # empty: no rotary (the runner casts every model's table to float32)

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__()
        cfg = self.config = hf_config
        if platform.communicator.world_size > 1:
            raise ValueError("BERT-family models run on one device; use tensor_parallel_size=1")
        offset = cfg.pad_token_id + 1 if cfg.model_type == "xlm-roberta" else 0
        if max_positions + offset > cfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len={max_positions} exceeds this model's {cfg.max_position_embeddings - offset} "
                "position embeddings; lower --max-model-len"
            )
        self.embeddings = BertEmbeddings(cfg, offset)
        self.encoder = BertEncoder(platform, cfg)
        self.register_buffer("cos_sin_cache", torch.empty(0), persistent=False)

    def attention_specs(self) -> list[AttentionSpec]:
        return [layer.attention.self.spec for layer in self._layers()]

    def _layers(self) -> list[BertLayer]:
        # nn.ModuleList is not generic: a type checker sees Modules where BertEncoder put BertLayers
        return cast("list[BertLayer]", list(self.encoder.layer))

    def forward(self, input_ids, positions, kv_caches: list, meta) -> torch.Tensor:
        x = self.embeddings(input_ids, positions)
        for layer, kv in zip(self._layers(), kv_caches):
            x = layer(x, kv, meta)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise ValueError("an encoder has no language-model head: it cannot generate text")

    def _checkpoint_name(self, name: str) -> str | None:
        """Our parameter's name for a checkpoint tensor's, or None for one a pooling model
        does not use (the embedder's pooler, the MLM head, position_ids buffers)."""
        name = name.removeprefix(self.prefix)
        if name.startswith(("pooler.", "cls.", "lm_head.")) or name.endswith("position_ids"):
            return None
        return name

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        seen = set()
        for name, tensor in weights:
            ours = self._checkpoint_name(name)
            if ours is None:
                continue
            if ours not in params:
                raise ValueError(f"unexpected weight {name!r} for {type(self).__name__}")
            if tuple(params[ours].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(params[ours].shape)}"
                )
            params[ours].copy_(tensor)
            seen.add(ours)
        missing = sorted(set(params) - seen)
        if missing:
            raise ValueError(f"checkpoint is missing weights for: {', '.join(missing[:8])}")


class XLMRobertaModel(BertModel):
    prefix = "roberta."


class BertForSequenceClassification(BertModel):
    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__(platform, hf_config, max_positions)
        self.score = ClassificationHead(platform, hf_config)

    def _checkpoint_name(self, name: str) -> str | None:
        # BERT's head: pooler.dense (tanh) then classifier
        head = {"bert.pooler.dense": "score.dense", "classifier": "score.out_proj"}
        stem, _, suffix = name.rpartition(".")
        return f"{head[stem]}.{suffix}" if stem in head else super()._checkpoint_name(name)


class XLMRobertaForSequenceClassification(BertModel):
    prefix = "roberta."

    def __init__(self, platform: Platform, hf_config, max_positions: int) -> None:
        super().__init__(platform, hf_config, max_positions)
        self.score = ClassificationHead(platform, hf_config)

    def _checkpoint_name(self, name: str) -> str | None:
        if name.startswith("classifier."):  # classifier.dense, classifier.out_proj
            return "score." + name.removeprefix("classifier.")
        return super()._checkpoint_name(name)
