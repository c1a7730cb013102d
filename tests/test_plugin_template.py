"""`octavo plugins new NAME` writes a package that installs, is discovered, and conforms."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from octavo.platform import API_VERSION, discover_platforms, get_plugin_manager, resolve_platform
from octavo_plugin_kit.cli import new_plugin

EXPECTED_FILES = [
    "README.md",
    "pyproject.toml",
    "src/octavo_acme_npu/__init__.py",
    "src/octavo_acme_npu/attention.py",
    "src/octavo_acme_npu/platform.py",
    "src/octavo_acme_npu/plugin.py",
    "tests/test_conformance.py",
]


def test_new_plugin_writes_a_complete_package(tmp_path):
    root = Path(new_plugin("acme_npu", str(tmp_path)))
    assert root == tmp_path / "octavo-acme-npu"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == EXPECTED_FILES
    for rel in files:
        text = (root / rel).read_text()
        assert "{{" not in text and "PACKAGE" not in text, f"unrendered placeholder in {rel}"
        if rel.endswith(".py"):
            compile(text, rel, "exec")
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "octavo-acme-npu"
    assert project["entry-points"]["octavo.platforms"] == {"acme_npu": "octavo_acme_npu.plugin"}
    platform_src = (root / "src/octavo_acme_npu/platform.py").read_text()
    assert "class AcmeNpuPlatform(Platform)" in platform_src
    assert "attention_cls = AcmeNpuAttention" in platform_src
    # the version it was generated for, as a literal: importing API_VERSION would
    # claim compatibility with every future core
    assert f'api_version = "{API_VERSION}"' in platform_src
    assert 'return "acme_npu"' in (root / "tests/test_conformance.py").read_text()


@pytest.mark.parametrize("bad", ["Acme", "1npu", "acme-npu", "", "a b", "../evil"])
def test_new_plugin_refuses_bad_names(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid platform name"):
        new_plugin(bad, str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_new_plugin_never_overwrites(tmp_path):
    new_plugin("acme", str(tmp_path))
    with pytest.raises(FileExistsError, match="octavo-acme already exists"):
        new_plugin("acme", str(tmp_path))


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


def test_generated_plugin_installs_is_discovered_and_passes_conformance(tmp_path):
    name = f"kit_template_{os.getpid()}"  # unique, so parallel runs do not collide
    dist, package = f"octavo-{name.replace('_', '-')}", f"octavo_{name}"
    root = new_plugin(name, str(tmp_path))
    # this changes the shared venv: the finally below must undo it
    installed = _pip("install", "--no-deps", "--no-build-isolation", "--quiet", root)
    try:
        assert installed.returncode == 0, installed.stderr[-3000:]
        importlib.invalidate_caches()
        infos = [i for i in discover_platforms(refresh=True) if i.name == name]
        assert len(infos) == 1, infos
        info = infos[0]
        assert (info.package, info.api_version, info.score, info.error) == (dist, API_VERSION, 1, None)
        platform = resolve_platform(name)
        assert type(platform).__module__ == f"{package}.platform" and platform.name == name

        # the package's own tests: the conformance suite through the fixture override
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            # small tensors: more OpenMP threads only spin-wait on a busy machine
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        assert f"octavo conformance: platform '{name}' ({dist}, API {API_VERSION})" in out, out[-3000:]
        passed = int(re.search(r"^(\d+) passed.* in [\d.]+s", out, re.M).group(1))
        assert passed >= 100, out[-3000:]
        # the template provides attention only: every other part is core's default
        assert re.search(r"^attend\s+passed", out, re.M) and re.search(r"^rms_norm\s+passed\s+core default", out, re.M)
        # the 2-rank collectives ran, each rank resolving the installed plugin by name
        assert re.search(r"^communicator\s+passed\s+1 passed", out, re.M), out[-3000:]
    finally:
        _pip("uninstall", "--yes", "--quiet", dist)
        for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module]
        importlib.invalidate_caches()
        get_plugin_manager(refresh=True)
    assert all(i.name != name for i in discover_platforms()), "the uninstalled plugin is still discovered"
