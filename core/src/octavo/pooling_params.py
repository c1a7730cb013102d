"""Options of a pooling request (vLLM's `PoolingParams`): what `LLM.embed`, `LLM.classify`,
`LLM.score` and `LLM.encode` take where `LLM.generate` takes SamplingParams."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: vLLM's pooling tasks. The token_* tasks return one row per prompt token (multi-vector
#: embeddings, per-token class probabilities) where the others pool the prompt into one.
TASKS = ("embed", "classify", "score", "encode", "token_embed", "token_classify")
#: the tasks of an embedder (no classification head) and of a classifier
EMBED_TASKS = ("embed", "token_embed", "encode")
CLASSIFY_TASKS = ("classify", "score", "token_classify", "encode")


@dataclass
class PoolingParams:
    """`dimensions`: keep the first n features of an embedding (Matryoshka models), before
    normalizing. `normalize`: scale embeddings to unit length (None: the model's default,
    its sentence-transformers Normalize module or on). `use_activation`: softmax (sigmoid
    for one label) over classification logits (None: on). `truncate_prompt_tokens`: keep
    the last n prompt tokens (-1: as many as the context holds); None refuses longer prompts.
    The token_* tasks apply `dimensions`, `normalize` and `use_activation` to each token's row.
    """

    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None
    truncate_prompt_tokens: int | None = None
    #: one of TASKS; set by the LLM method used (`LLM.encode` takes it as `pooling_task`)
    task: str | None = None

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {self.dimensions}")
        t = self.truncate_prompt_tokens
        if t is not None and t != -1 and t < 1:
            raise ValueError(f"truncate_prompt_tokens must be -1 or at least 1, got {t}")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown pooling task {self.task!r}; use one of {', '.join(TASKS)}")

    def clone(self) -> PoolingParams:
        return dataclasses.replace(self)
