"""The platform as discovery sees it: the contract, the availability reason without the SDK
(and with a placeholder SDK, or no device), and the test-only CPU switch kept out of reach
of device="auto"."""

from __future__ import annotations

import pytest

from octavo.platform import check_platform, discover_platforms, resolve_platform
from octavo_neuron import sdk
from octavo_neuron.platform import NeuronPlatform
from octavo_neuron.testing import NeuronOnCpuPlatform

INSTALL = "pip install --extra-index-url https://pip.repos.neuron.amazonaws.com 'torch-neuronx==2.13.*' neuronx-cc"


def test_both_platforms_keep_the_contract():
    assert check_platform(NeuronPlatform) == []
    assert check_platform(NeuronOnCpuPlatform) == []


def test_without_the_sdk_it_scores_0_naming_the_sdk_and_its_install_command():
    info = next(i for i in discover_platforms() if i.name == "neuron")
    assert info.package == "octavo-neuron" and info.error is None
    assert info.score == 0 and not info.usable
    assert "Neuron SDK is not installed (torch-neuronx and neuronx-cc missing)" in info.reason, info.reason
    assert "only on AWS's package index, not PyPI" in info.reason
    assert info.reason.endswith(INSTALL), info.reason
    with pytest.raises(RuntimeError, match="device 'neuron' is installed but not usable here: .*torch-neuronx"):
        resolve_platform("neuron")


def _fake_sdk(monkeypatch, versions: dict[str, str], devices: list[str]) -> sdk.SdkStatus:
    def version(dist: str) -> str:
        if dist not in versions:
            raise sdk.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(sdk, "version", version)
    monkeypatch.setattr(sdk.glob, "glob", lambda pattern: devices)
    monkeypatch.setattr(sdk.torch, "__version__", "2.13.0+cpu")
    return sdk.probe()


def test_pypi_placeholders_are_not_the_sdk(monkeypatch):
    status = _fake_sdk(monkeypatch, {"torch-neuronx": "1.0", "neuronx-cc": "1.0.post1"}, ["/dev/neuron0"])
    assert not status.usable
    assert "torch-neuronx 1.0 is not a build for torch 2.13" in status.reason
    assert "neuronx-cc 1.0.post1 is PyPI's placeholder" in status.reason
    assert status.reason.endswith(f"pip uninstall -y torch-neuronx neuronx-cc, then {INSTALL}"), status.reason


def test_one_missing_package_is_named(monkeypatch):
    status = _fake_sdk(monkeypatch, {"torch-neuronx": "2.13.3.0"}, ["/dev/neuron0"])
    assert not status.usable and "(neuronx-cc missing)" in status.reason


def test_the_sdk_without_a_device_is_not_usable(monkeypatch):
    status = _fake_sdk(monkeypatch, {"torch-neuronx": "2.13.3.0", "neuronx-cc": "2.27.5334.0"}, [])
    assert not status.usable and "no Neuron device is (no /dev/neuron*)" in status.reason


def test_the_sdk_and_a_device_make_it_usable(monkeypatch):
    status = _fake_sdk(
        monkeypatch, {"torch-neuronx": "2.13.3.0", "neuronx-cc": "2.27.5334.0"}, ["/dev/neuron0", "/dev/neuron1"]
    )
    assert status.usable and status.reason == "2 Neuron device(s), torch-neuronx 2.13.3.0, neuronx-cc 2.27.5334.0"


def test_the_cpu_switch_is_never_discovered_nor_picked_by_auto(neuron_cpu):
    from octavo.platform import get_plugin_manager

    get_plugin_manager(refresh=True)  # what an installed engine sees: the entry points only
    assert neuron_cpu not in {i.name for i in discover_platforms()}
    assert resolve_platform("auto").name != neuron_cpu
    with pytest.raises(ValueError, match="no plugin provides device 'neuron-cpu'"):
        resolve_platform(neuron_cpu)
    from octavo_neuron.testing import register

    register()  # registered by hand, it resolves by name; it scores 1 (for tests), below any real device
    assert type(resolve_platform(neuron_cpu)) is NeuronOnCpuPlatform
    assert resolve_platform("auto").name != neuron_cpu


def test_tensor_parallelism_is_refused_with_the_fix(neuron_cpu, tiny_model_dirs):
    from octavo import LLM

    with pytest.raises(ValueError, match="does not run tensor parallelism yet.*use tensor_parallel_size=1"):
        LLM(model=tiny_model_dirs["llama"], device=neuron_cpu, tensor_parallel_size=2, max_model_len=64)
