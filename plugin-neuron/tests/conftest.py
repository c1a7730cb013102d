"""Fixtures of octavo-neuron's tests: the repository's tiny random-weight models and Hugging
Face reference (tests/tiny_models.py), and the test-only "neuron-cpu" platform registered for
the tests that use it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from tiny_models import TINY_ARCHS, hf_greedy, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """{arch: directory with config.json, model.safetensors and tokenizer files}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, str(root / arch)) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def hf_reference():
    return hf_greedy


@pytest.fixture(scope="module")
def neuron_cpu():
    """Device "neuron-cpu" resolvable for the module's tests; discovery as it was afterwards."""
    from octavo.platform import get_plugin_manager
    from octavo_neuron.testing import NAME, register

    register()
    yield NAME
    get_plugin_manager(refresh=True)


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models' ops are too small to split: a second thread only waits for the first,
    and on a busy machine those waits cost ten times the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
