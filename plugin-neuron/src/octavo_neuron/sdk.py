"""Whether the AWS Neuron SDK and a Neuron device are here, from package metadata and device
files only: discovery asks on every machine, so this must be cheap and must not start the
device (importing torch_neuronx would).

The SDK (torch-neuronx, TorchNeuron's PyTorch back end, and the neuronx-cc compiler) is published
only on AWS's own package index. PyPI has packages of the same names that are placeholders
(torch-neuronx 1.0, neuronx-cc 1.0.post1: importing them raises "WRONG PACKAGE"), so a package
being installed is not enough: its version must be a real build for this torch.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch

#: AWS's package index, the only place the Neuron SDK's Python packages are published
AWS_NEURON_INDEX = "https://pip.repos.neuron.amazonaws.com"
#: the SDK's distributions: TorchNeuron (torch's "neuron" device and torch.compile back end) and the compiler
SDK_PACKAGES = ("torch-neuronx", "neuronx-cc")


def torch_release() -> str:
    """torch's major.minor ("2.13"): torch-neuronx builds are made for one torch release."""
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def install_command() -> str:
    """The pip command that installs the SDK for this torch from AWS's index."""
    return f"pip install --extra-index-url {AWS_NEURON_INDEX} 'torch-neuronx=={torch_release()}.*' neuronx-cc"


@dataclass(frozen=True)
class SdkStatus:
    """`usable`: the SDK is installed for this torch and a Neuron device is present; `reason`
    says what was found, or what is missing and how to get it."""

    usable: bool
    reason: str


def probe() -> SdkStatus:
    found: dict[str, str] = {}
    for dist in SDK_PACKAGES:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    missing = [d for d in SDK_PACKAGES if d not in found]
    if missing:
        return SdkStatus(
            False,
            f"the AWS Neuron SDK is not installed ({' and '.join(missing)} missing); it is published only on "
            f"AWS's package index, not PyPI: {install_command()}",
        )
    wrong = []
    if not found["torch-neuronx"].startswith(torch_release() + "."):
        wrong.append(f"torch-neuronx {found['torch-neuronx']} is not a build for torch {torch_release()}")
    compiler_major = found["neuronx-cc"].split(".")[0]
    if not compiler_major.isdigit() or int(compiler_major) < 2:
        wrong.append(f"neuronx-cc {found['neuronx-cc']} is PyPI's placeholder, not the compiler")
    if wrong:
        return SdkStatus(
            False,
            f"the AWS Neuron SDK is not usable: {'; '.join(wrong)} (PyPI's packages of these names are "
            f"placeholders); pip uninstall -y {' '.join(SDK_PACKAGES)}, then {install_command()}",
        )
    devices = glob.glob("/dev/neuron[0-9]*")
    sdk = f"torch-neuronx {found['torch-neuronx']}, neuronx-cc {found['neuronx-cc']}"
    if not devices:
        return SdkStatus(
            False, f"the Neuron SDK is installed ({sdk}) but no Neuron device is (no /dev/neuron*): run on Trn2 or Trn3"
        )
    return SdkStatus(True, f"{len(devices)} Neuron device(s), {sdk}")
