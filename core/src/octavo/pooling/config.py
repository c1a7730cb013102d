"""How a checkpoint pools its hidden states into one vector: sentence-transformers'
`modules.json` and `<Pooling module>/config.json` where the checkpoint has them, else
the default of its kind (encoders: the first, [CLS], token; decoders: the last token)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

POOLING_TYPES = ("LAST", "MEAN", "CLS")
#: model_type of the encoder (bidirectional) families, which pool their [CLS] token by default
ENCODER_TYPES = ("bert", "xlm-roberta")

_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
# sentence-transformers' Pooling config keys -> ours; the other modes (max, weighted mean) are refused
_ST_MODES = {"pooling_mode_lasttoken": "LAST", "pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS"}


@dataclass(frozen=True)
class PoolerConfig:
    pooling_type: str  # one of POOLING_TYPES
    normalize: bool  # embeddings are scaled to unit length unless a request says otherwise


def read_pooler_config(directory: str | None, hf_config, pooling_type: str | None = None) -> PoolerConfig:
    """The checkpoint's pooling (`pooling_type` overrides its type)."""
    default = "CLS" if getattr(hf_config, "model_type", None) in ENCODER_TYPES else "LAST"
    found, normalize = _sentence_transformers(directory) if directory else (None, None)
    kind = (pooling_type or found or default).upper()
    if kind not in POOLING_TYPES:
        raise ValueError(f"pooling type {kind!r} is not supported; supported: {', '.join(POOLING_TYPES)}")
    return PoolerConfig(kind, True if normalize is None else normalize)


def _sentence_transformers(directory: str) -> tuple[str | None, bool | None]:
    """(pooling type, normalize) from sentence-transformers' files; (None, None) without them."""
    path = os.path.join(directory, "modules.json")
    if not os.path.isfile(path):
        return None, None
    with open(path) as f:
        modules = json.load(f)
    types = [m.get("type") for m in modules]
    kind = None
    for m in modules:
        if m.get("type") != _ST_POOLING:
            continue
        with open(os.path.join(directory, m.get("path", ""), "config.json")) as f:
            cfg = json.load(f)
        modes = [ours for key, ours in _ST_MODES.items() if cfg.get(key)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
        if others or len(modes) != 1:
            raise ValueError(
                f"{path}: pooling modes {others + [k for k in _ST_MODES if cfg.get(k)]} are not supported; "
                "exactly one of lasttoken, mean_tokens or cls_token is"
            )
        kind = modes[0]
    return kind, _ST_NORMALIZE in types
