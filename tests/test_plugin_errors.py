"""Broken plugins are reported, refused and caught, never skipped silently.

The fixture plugins in fixtures/plugins/ are "installed" the way pip would leave them (see
`fixtures.plugins.installed_plugins`), so discovery goes through the real importlib.metadata
entry-point loading path. A plugin that breaks the contract is refused at load, with a message
naming the method and the fix, by every way in: `discover_platforms`, `resolve_platform`,
`octavo plugins` and `octavo plugins check`.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from fixtures.plugins import installed_plugins

from octavo.entrypoints.cli import main as octavo_main
from octavo.platform import API_VERSION, discover_platforms, resolve_platform
from octavo_plugin_kit.cli import run_check

# distribution -> (entry point name, module)
FAKE_DISTS = {
    "octavo-fixture-badapi": ("badapi", "octavo_fixture_badapi"),
    "octavo-fixture-broken": ("broken", "octavo_fixture_broken"),
    "octavo-fixture-wrongattn": ("wrongattn", "octavo_fixture_wrongattn"),
    "octavo-fixture-wrongcomm": ("wrongcomm", "octavo_fixture_wrongcomm"),
    "octavo-fixture-misspelt": ("misspelt", "octavo_fixture_misspelt"),
    "octavo-fixture-badsig": ("badsig", "octavo_fixture_badsig"),
    "octavo-fixture-badhook": ("badhook", "octavo_fixture_badhook"),
    "octavo-fixture-nohook": ("nohook", "octavo_fixture_nohook"),
}
BROKEN = (
    "oldapi",
    "futureapi",
    "broken",
    "misspelt_attend",
    "misspelt_config",
    "badsig_attend",
    "badsig_rms_norm",
    "badhook",
    "nohook",
)

# platform -> what its refusal must say: the method, and the fix
CONTRACT_ERRORS = {
    "misspelt_attend": [
        "octavo_fixture_misspelt.MisspeltAttention.atend is not part of AttentionBackend's contract: "
        "did you mean 'attend'? Core would never call it. Give your own helpers a leading underscore.",
        "attention_cls = octavo_fixture_misspelt.MisspeltAttention does not define attend, which "
        "AttentionBackend requires: def attend(self, q: torch.Tensor, kv_cache: Any, meta: Any, "
        "layer: AttentionSpec) -> torch.Tensor",
    ],
    "misspelt_config": [
        "octavo_fixture_misspelt.MisspeltConfigPlatform.check_and_update_confg is not part of Platform's "
        "contract: did you mean 'check_and_update_config'?",
    ],
    "badsig_attend": [
        "octavo_fixture_badsig.OldAttendAttention.attend: parameter 'meta' is missing; match "
        "AttentionBackend.attend(self, q: torch.Tensor, kv_cache: Any, meta: Any, layer: AttentionSpec) "
        "-> torch.Tensor",
    ],
    "badsig_rms_norm": [
        "octavo_fixture_badsig.NoWeightOps.rms_norm: parameter 3 is 'eps', the contract's is 'weight'; match "
        "FusedOps.rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, "
        "residual: torch.Tensor | None = None)",
    ],
}


@pytest.fixture(scope="module")
def fake_plugins(tmp_path_factory):
    """All fixture plugins installed for this module's tests; removed afterwards."""
    with installed_plugins(tmp_path_factory.mktemp("site"), FAKE_DISTS):
        yield {info.name: info for info in discover_platforms()}


@pytest.mark.parametrize("name,version", [("oldapi", "1.0"), ("futureapi", "2.99")])
def test_wrong_api_version_is_reported_with_both_versions_and_refused(fake_plugins, name, version):
    info = fake_plugins[name]
    assert info.package == "octavo-fixture-badapi" and not info.usable
    assert f"built for plugin API {version}" in info.error
    assert f"this octavo speaks plugin API {API_VERSION}" in info.error
    assert f'set api_version = "{API_VERSION}"' in info.error
    with pytest.raises(RuntimeError, match=rf"device '{name}' is installed but not usable.*API {re.escape(version)}"):
        resolve_platform(name)


def test_import_error_is_reported_not_skipped(fake_plugins):
    info = fake_plugins["broken"]
    assert info.package == "octavo-fixture-broken" and not info.usable
    assert "ImportError: libacme_driver.so.3: cannot open shared object file" in info.error
    with pytest.raises(RuntimeError, match="device 'broken' is installed but not usable.*libacme_driver"):
        resolve_platform("broken")
    # broken plugins do not take the others down
    assert fake_plugins["wrongattn"].usable
    assert resolve_platform("wrongattn").name == "wrongattn"
    assert resolve_platform("auto").name not in BROKEN


def test_conformance_refuses_a_plugin_that_fails_to_import(fake_plugins, capsys):
    assert run_check("broken", ["-q", "-s"]) == pytest.ExitCode.USAGE_ERROR
    assert "libacme_driver.so.3" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(CONTRACT_ERRORS))
def test_contract_breaches_are_refused_at_load_naming_method_and_fix(fake_plugins, name, capsys):
    info = fake_plugins[name]
    assert not info.usable and info.error.startswith(f"platform {name!r} from octavo-fixture-"), info
    assert "breaks the plugin contract" in info.error
    for message in CONTRACT_ERRORS[name]:
        assert message in info.error, info.error
    with pytest.raises(
        RuntimeError, match=rf"device '{name}' is installed but not usable here: .*{re.escape(message)}"
    ):
        resolve_platform(name)
    assert run_check(name, ["-q", "-s"]) == pytest.ExitCode.USAGE_ERROR
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,message",
    [
        (
            "badhook",
            "octavo_fixture_badhook.octavo_platfroms is marked @hookimpl, but octavo has no hook of that name: "
            "did you mean 'octavo_platforms'? octavo's hooks are: octavo_platforms",
        ),
        (
            "nohook",
            "octavo_fixture_nohook implements none of octavo's hooks (octavo_platforms): mark each with @hookimpl "
            "(from octavo.platform import hookimpl)",
        ),
    ],
)
def test_hook_name_mistakes_are_refused_at_load(fake_plugins, name, message):
    info = fake_plugins[name]
    assert info.package == f"octavo-fixture-{name}" and not info.usable
    assert message in info.error, info.error
    with pytest.raises(
        RuntimeError, match=rf"device '{name}' is installed but not usable here: .*{re.escape(message)}"
    ):
        resolve_platform(name)


def test_octavo_plugins_lists_every_refusal_with_its_reason(fake_plugins, capsys):
    assert octavo_main(["plugins", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    for name in BROKEN:
        assert not listed[name]["usable"] and listed[name]["error"], listed[name]
    for name, messages in CONTRACT_ERRORS.items():
        assert all(m in listed[name]["error"] for m in messages), listed[name]
    assert "did you mean 'octavo_platforms'?" in listed["badhook"]["error"]
    assert octavo_main(["plugins"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "did you mean 'attend'?" in lines["misspelt_attend"] and " no " in lines["misspelt_attend"]
    assert "parameter 'meta' is missing" in lines["badsig_attend"]


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


def test_wrong_collective_fails_the_two_rank_conformance_test(fake_plugins, capsys):
    """A gather in the wrong rank order is invisible with one rank: the suite's 2-rank run,
    whose ranks resolve the plugin by name in fresh processes, must catch it."""
    assert fake_plugins["wrongcomm"].usable
    code = run_check("wrongcomm", ["-q", "-s", "-k", "two_ranks"])
    out = capsys.readouterr().out
    assert code == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    assert re.search(
        r"communicator\[rank=[01], world_size=2\]: all_gather\(dim=-1\) gave \[\[.*\]\], want \[\[.*\]\]", out
    ), out[-3000:]
    assert re.search(r"^communicator\s+failed\s+1 failed", out, re.M), out[-2000:]
