"""Shared fixtures: the default model, tiny random-weight models, and a Hugging Face reference."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import TINY_ARCHS, hf_greedy, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_source():
    from octavo.loader.source import resolve_model_source

    return resolve_model_source("smollm2")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """{arch: directory with config.json, model.safetensors and tokenizer files}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, str(root / arch)) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def hf_reference():
    return hf_greedy
