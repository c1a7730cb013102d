"""Fixtures of octavo-tpu's tests: JAX's CPU back end with two host devices (for the SPMD
tests), the test-only "tpu-cpu" platform, and the repository's tiny random-weight models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# before JAX starts a back end: the CPU only (libtpu, installed for the ahead-of-time tests,
# would otherwise probe for chips), as two devices
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from tiny_models import TINY_ARCHS, hf_greedy, make_tiny_model  # noqa: E402

try:
    from octavo_tpu.platform import CPU_SWITCH
except ImportError:  # octavo-tpu not installed (a GPU image, say): these tests are not collected
    CPU_SWITCH = ""
    collect_ignore_glob = ["*"]


@pytest.fixture(scope="module", autouse=True)
def tpu_on_cpu():
    """'tpu-cpu' is usable in these tests only (and in the processes they spawn); set before
    any other fixture of a module builds an engine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CPU_SWITCH, "1")
        yield


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """{arch: directory with config.json, model.safetensors and tokenizer files}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, str(root / arch)) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def smollm2_source():
    from octavo.loader.source import resolve_model_source

    return resolve_model_source("smollm2")


@pytest.fixture(scope="session")
def hf_reference():
    return hf_greedy
