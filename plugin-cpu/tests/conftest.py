"""Fixtures of octavo-cpu's tests: the repository's tiny random-weight models (tests/tiny_models.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from tiny_models import TINY_ARCHS, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """{arch: directory with config.json, model.safetensors and tokenizer files}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, str(root / arch)) for arch in TINY_ARCHS}
