"""Broken plugins are reported, refused and caught, never skipped silently.

The fixture plugins in fixtures/plugins/ are "installed" the way pip would leave
them: a *.dist-info with METADATA and entry_points.txt on sys.path, so discovery
goes through the real importlib.metadata entry-point loading path.
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from octavo.platform import API_VERSION, discover_platforms, get_plugin_manager, resolve_platform
from octavo_plugin_kit.cli import run_check

FIXTURES = Path(__file__).parent / "fixtures" / "plugins"
# distribution -> (entry point name, module)
FAKE_DISTS = {
    "octavo-fixture-badapi": ("badapi", "octavo_fixture_badapi"),
    "octavo-fixture-broken": ("broken", "octavo_fixture_broken"),
    "octavo-fixture-wrongattn": ("wrongattn", "octavo_fixture_wrongattn"),
}


def _install_fake_dist(site: Path, dist: str, entry_point: str, module: str) -> None:
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[octavo.platforms]\n{entry_point} = {module}\n")
    shutil.copy(FIXTURES / f"{module}.py", site / f"{module}.py")


@pytest.fixture(scope="module")
def fake_plugins(tmp_path_factory):
    """All fixture plugins installed for this module's tests; removed afterwards."""
    site = tmp_path_factory.mktemp("site")
    for dist, (entry_point, module) in FAKE_DISTS.items():
        _install_fake_dist(site, dist, entry_point, module)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    get_plugin_manager(refresh=True)
    try:
        yield {info.name: info for info in discover_platforms()}
    finally:
        sys.path.remove(str(site))
        for _, module in FAKE_DISTS.values():
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        get_plugin_manager(refresh=True)


@pytest.mark.parametrize("name,version", [("oldapi", "0.3"), ("futureapi", "1.99")])
def test_wrong_api_version_is_reported_with_both_versions_and_refused(fake_plugins, name, version):
    info = fake_plugins[name]
    assert info.package == "octavo-fixture-badapi" and not info.usable
    assert f"built for plugin API {version}" in info.error
    assert f"this octavo speaks plugin API {API_VERSION}" in info.error
    with pytest.raises(RuntimeError, match=rf"device '{name}' is installed but not usable.*API {re.escape(version)}"):
        resolve_platform(name)


def test_import_error_is_reported_not_skipped(fake_plugins):
    info = fake_plugins["broken"]
    assert info.package == "octavo-fixture-broken" and not info.usable
    assert "ImportError: libacme_driver.so.3: cannot open shared object file" in info.error
    with pytest.raises(RuntimeError, match="device 'broken' is installed but not usable.*libacme_driver"):
        resolve_platform("broken")
    # one broken plugin does not take the others down
    assert fake_plugins["cpu"].usable
    assert resolve_platform("cpu").name == "cpu"
    assert resolve_platform("auto").name not in ("broken", "oldapi", "futureapi")


def test_conformance_refuses_a_plugin_that_fails_to_import(fake_plugins, capsys):
    assert run_check("broken", ["-q", "-s"]) == pytest.ExitCode.USAGE_ERROR
    assert "libacme_driver.so.3" in capsys.readouterr().err


@pytest.fixture
def one_thread():
    """The suite's tensors are small: more torch threads only spin-wait on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_wrong_attention_fails_conformance_naming_kernel_and_shape(fake_plugins, capsys, one_thread):
    assert fake_plugins["wrongattn"].usable
    code = run_check("wrongattn", ["-q", "-s", "-k", "test_attend_shapes or test_write_kv_default_layout"])
    out = capsys.readouterr().out
    assert code == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    failed_ids = re.findall(r"^_+ (test_\w+\[[\w-]+\]) _+$", out, re.M)
    messages = re.findall(r"^attend\[.*$", out, re.M)
    assert len(failed_ids) == len(messages) == 18, out[-3000:]  # the 27 default shapes minus 9 without GQA
    for test_id, message in zip(failed_ids, messages):
        assert test_id.startswith("test_attend_shapes") and "gqa1" not in test_id, test_id
        assert re.match(
            r"attend\[head_dim=\d+, gqa=[48], block=\d+, dtype=(fp32|bf16|fp16), "
            r"q_lens=\[[\d,]+\], seq_lens=\[[\d,]+\]\]: max abs err \S+ > tol \S+",
            message,
        ), message
    assert re.search(r"^attend\s+failed\s+18 failed, 9 passed", out, re.M), out[-2000:]
    assert re.search(r"^write_kv\s+passed", out, re.M), out[-2000:]
