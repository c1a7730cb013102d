"""A model's generation_config.json: the stop tokens and sampling defaults its authors chose.

As vLLM's `--generation-config`: "auto" reads the model's own file, "vllm" keeps Octavo's
sampling defaults (the file's EOS ids still stop generation, as in vLLM), and any other value is
a folder holding a generation_config.json. `--override-generation-config` (a JSON object) sets
fields over either. The sampling fields taken are vLLM's: temperature, top_p, top_k, min_p,
repetition_penalty and max_new_tokens (as max_tokens). One difference, on transformers' side: a
file that says `"do_sample": false` asks for greedy decoding, so its default temperature is 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

FILE_NAME = "generation_config.json"
# generation_config.json field -> SamplingParams field
_SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


@dataclass(frozen=True)
class GenerationDefaults:
    #: SamplingParams fields a request takes when it does not set them
    sampling: dict[str, Any] = field(default_factory=dict)
    #: token ids that end generation besides the tokenizer's EOS
    eos_token_ids: tuple[int, ...] = ()


def _read(folder: str | None) -> dict[str, Any]:
    if folder is None:
        return {}
    path = os.path.join(folder, FILE_NAME)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def load_generation_defaults(
    setting: str, model_dir: str | None, overrides: dict[str, Any] | None = None
) -> GenerationDefaults:
    """The defaults of `setting` ("auto", "vllm" or a folder) for a model in `model_dir` (None
    for a GGUF file, which has no generation_config.json)."""
    if setting in ("auto", "vllm"):
        folder = model_dir
    elif os.path.isdir(setting):
        folder = setting
        if not os.path.exists(os.path.join(folder, FILE_NAME)):
            raise FileNotFoundError(f"--generation-config {setting!r} holds no {FILE_NAME}")
    else:
        raise ValueError(f"--generation-config must be 'auto', 'vllm' or a folder holding {FILE_NAME}, got {setting!r}")
    config = _read(folder)
    eos = config.get("eos_token_id")
    eos_ids = tuple(sorted({int(t) for t in ([eos] if isinstance(eos, int) else eos or [])}))
    if setting == "vllm":
        config = {}
    config = {**config, **(overrides or {})}
    sampling = {ours: config[theirs] for theirs, ours in _SAMPLING_FIELDS.items() if config.get(theirs) is not None}
    if config.get("do_sample") is False:
        sampling["temperature"] = 0.0  # greedy, as transformers' generate() reads this file
    _check(sampling, folder)
    return GenerationDefaults(sampling, eos_ids)


def _check(sampling: dict[str, Any], folder: str | None) -> None:
    """Refuse at start-up a default that every request would fail on."""
    from octavo.sampling_params import SamplingParams

    try:
        SamplingParams(**sampling)
    except ValueError as e:
        where = os.path.join(folder, FILE_NAME) if folder else "--override-generation-config"
        raise ValueError(f"{where}: {e} (fix the file, or start with --generation-config vllm)") from None
