"""Models named as on the Hugging Face hub, found in a local cache with the hub out of reach
(HF_HUB_OFFLINE), with --revision, --tokenizer and --download-dir; pickled weights only on the
user's word (--load-format pt); remote code only with --trust-remote-code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hf_cache import put_in_cache

from octavo import LLM, EngineArgs, SamplingParams
from octavo.loader.hub import ModelNotCachedError
from octavo.loader.source import load_hf_config, resolve_model_source

REPO = "test-org/tiny-llama"
PROMPTS = [[5, 17, 300, 42, 9, 77], [1000, 3, 3, 250]]
SMALL = dict(device="cpu", dtype="float32", max_model_len=64, kv_cache_memory="16MiB")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, the only one huggingface_hub sees, with the hub unreachable."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return str(cache)


def greedy(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_hub_id_from_the_cache_offline_equals_transformers(hub_cache, tiny_model_dirs, hf_reference):
    commit = put_in_cache(hub_cache, REPO, tiny_model_dirs["llama"])
    source = resolve_model_source(REPO)
    assert source.directory == os.path.join(hub_cache, "models--test-org--tiny-llama", "snapshots", commit)
    llm = LLM(model=REPO, **SMALL)
    assert greedy(llm) == hf_reference(tiny_model_dirs["llama"], PROMPTS, 6)


def test_revision_picks_a_branch_or_a_commit(hub_cache, tiny_model_dirs):
    main = put_in_cache(hub_cache, REPO, tiny_model_dirs["llama"])
    v2 = put_in_cache(hub_cache, REPO, tiny_model_dirs["qwen2"], revision="v2")
    assert main != v2
    assert load_hf_config(resolve_model_source(REPO)).model_type == "llama"
    assert load_hf_config(resolve_model_source(REPO, revision="v2")).model_type == "qwen2"
    assert resolve_model_source(REPO, revision=main).directory.endswith(main)
    assert load_hf_config(resolve_model_source(REPO, revision=v2)).model_type == "qwen2"


def test_a_model_not_cached_offline_says_how_to_fetch_it(hub_cache):
    with pytest.raises(ModelNotCachedError) as e:
        resolve_model_source("test-org/absent", revision="v1")
    msg = str(e.value)
    assert "not cached" in msg and hub_cache in msg and "HF_HUB_OFFLINE is set" in msg
    assert "hf download test-org/absent --revision v1" in msg


def test_download_dir_is_the_cache_used(hub_cache, tiny_model_dirs, tmp_path):
    other = str(tmp_path / "elsewhere")
    put_in_cache(other, REPO, tiny_model_dirs["llama"])
    with pytest.raises(ModelNotCachedError, match="--cache-dir"):  # not in the default cache
        resolve_model_source(REPO, download_dir=str(tmp_path / "empty"))
    assert resolve_model_source(REPO, download_dir=other).directory.startswith(other)


def test_tokenizer_by_hub_id(hub_cache, tiny_model_dirs):
    put_in_cache(hub_cache, "test-org/tokenizer", tiny_model_dirs["qwen2"], revision="t1")
    args = EngineArgs(model=tiny_model_dirs["llama"], tokenizer="test-org/tokenizer", tokenizer_revision="t1", **SMALL)
    _, _, source = args.create_config()
    assert source.tokenizer_source is not None and "models--test-org--tokenizer" in source.tokenizer_source.directory


def test_hub_ids_through_the_command_line_with_hf_home(tmp_path, tiny_model_dirs):
    """HF_HOME and HF_HUB_OFFLINE as a user sets them: `octavo generate` finds the model, and a
    missing one is one clear line."""
    put_in_cache(str(tmp_path / "hf" / "hub"), REPO, tiny_model_dirs["llama"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    cmd = [sys.executable, "-m", "octavo.entrypoints.cli", "generate", "--device", "cpu", "--max-tokens", "3"]
    cmd += ["--max-model-len", "64", "--kv-cache-memory", "16MiB"]
    ok = subprocess.run([*cmd, "--model", REPO, "hi"], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "--- 'hi'" in ok.stdout
    bad = subprocess.run([*cmd, "--model", "test-org/absent"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not cached" in bad.stderr and "hf download test-org/absent" in bad.stderr


# ---- pickled weights: refused unless the user opts in -----------------------------------------
@pytest.fixture(scope="module")
def pickled_model(tiny_model_dirs, tmp_path_factory):
    """The tiny llama with its weights as pytorch_model.bin only."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("pickled")
    for f in os.listdir(tiny_model_dirs["llama"]):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(tiny_model_dirs["llama"], f), folder)
    state = load_file(os.path.join(tiny_model_dirs["llama"], "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    return str(folder)


def test_pickled_weights_are_refused_with_the_opt_in_named(pickled_model):
    with pytest.raises(ValueError, match=r"pickled weights.*--load-format pt.*loads pickles"):
        LLM(model=pickled_model, **SMALL)


def test_load_format_pt_loads_them(pickled_model, tiny_model_dirs, hf_reference):
    llm = LLM(model=pickled_model, load_format="pt", **SMALL)
    assert greedy(llm) == hf_reference(tiny_model_dirs["llama"], PROMPTS, 6)


# ---- remote code ----------------------------------------------------------------------------------
def _variant(src: str, dest, **config_changes) -> str:
    shutil.copytree(src, dest)
    path = os.path.join(dest, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(config_changes)
    with open(path, "w") as f:
        json.dump(config, f)
    return str(dest)


def test_an_architecture_needing_remote_code_is_named_with_the_supported_ones(tiny_model_dirs, tmp_path):
    folder = _variant(
        tiny_model_dirs["llama"],
        tmp_path / "fancy",
        architectures=["FancyForCausalLM"],
        auto_map={"AutoModelForCausalLM": "modeling_fancy.FancyForCausalLM"},
    )
    for trust in (False, True):
        with pytest.raises(ValueError) as e:
            LLM(model=folder, trust_remote_code=trust, **SMALL)
        msg = str(e.value)
        assert "FancyForCausalLM" in msg and "remote code" in msg and "LlamaForCausalLM" in msg


CONFIG_CODE = """
from transformers import LlamaConfig


class FancyLlamaConfig(LlamaConfig):
    model_type = "fancy_llama"
"""


def test_trust_remote_code_runs_a_checkpoints_config_class(tiny_model_dirs, tmp_path, hf_reference):
    folder = _variant(
        tiny_model_dirs["llama"],
        tmp_path / "fancy-config",
        model_type="fancy_llama",
        auto_map={"AutoConfig": "configuration_fancy.FancyLlamaConfig"},
    )
    (tmp_path / "fancy-config" / "configuration_fancy.py").write_text(CONFIG_CODE)
    with pytest.raises(ValueError, match="--trust-remote-code"):
        LLM(model=folder, **SMALL)
    llm = LLM(model=folder, trust_remote_code=True, **SMALL)
    assert type(llm.llm_engine.model_config.hf_config).__name__ == "FancyLlamaConfig"
    assert greedy(llm) == hf_reference(tiny_model_dirs["llama"], PROMPTS, 6)
