"""The Neuron device as core sees it: TorchNeuron's "neuron" torch device."""

from __future__ import annotations

import torch

from octavo.platform import Device

#: what the model computes in: bf16 first (NeuronCores' matmul type), fp32 for exactness checks
DTYPES = (torch.bfloat16, torch.float32)


class NeuronDevice(Device):
    """One NeuronCore (group) per process, through torch-neuronx (TorchNeuron). The KV cache
    budget is the user's --kv-cache-memory (core's default): reading the device's free memory
    is not wired up, because it was never run on a device here."""

    type = "neuron"
    supported_dtypes = DTYPES

    def __init__(self) -> None:
        super().__init__()
        # TorchNeuron registers the "neuron" device type and the "neuron" torch.compile back end
        import torch_neuronx  # noqa: F401

    def synchronize(self) -> None:
        torch.accelerator.synchronize()
