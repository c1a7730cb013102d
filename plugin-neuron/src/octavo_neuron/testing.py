"""Test-only switch: octavo-neuron's platform on the CPU, for machines without the Neuron SDK.

`NeuronOnCpuPlatform` (device "neuron-cpu") is `NeuronPlatform` with three things swapped: the
device is the host CPU; the compiler is torch.compile's "aot_eager" back end, which traces each
step through AOT Autograd, as the Neuron back end does before lowering to neuronx-cc, and runs
the traced graph in torch; and the buckets are fewer and smaller (`SHAPES`), so a test engine
compiles 6 programs, not 45. Everything else (block size, the runner that compiles
forward, logits and sampling as one program per bucket, the padding, the attention, the sampler
and its top-k limit) is the Neuron platform's own code, so CI runs the path a Trainium machine
runs. It proves nothing about neuronx-cc: whether each program lowers, fits and runs fast there.

It is not an entry point, so an installed engine never discovers it and `--device auto` never
picks it. Register it in the process first:

    from octavo_neuron.testing import register
    register()
    LLM(model=..., device="neuron-cpu")

and for the conformance suite, `octavo plugins check neuron-cpu -p octavo_neuron.testing` (the
`-p` loads this module into pytest, whose `pytest_configure` below registers it).
"""

from __future__ import annotations

import dataclasses
import sys

from octavo.platform import Availability, Device, Platform, StaticShapes, get_plugin_manager, hookimpl
from octavo.platform.discovery import register_plugin
from octavo_neuron.device import DTYPES
from octavo_neuron.platform import NeuronPlatform

NAME = "neuron-cpu"
#: 3 x 2 shapes at most; block tables always 8 blocks of 32 tokens wide (core's padding of the
#: table width to its buckets is checked by the plugin kit's static-reference tests)
SHAPES = StaticShapes(token_buckets=(8, 32, 256), request_buckets=(1, 4), block_buckets=(8,))


class _HostDevice(Device):
    """The host CPU, with the Neuron device's dtypes."""

    supported_dtypes = DTYPES


class NeuronOnCpuPlatform(NeuronPlatform):
    name = NAME
    device_cls = _HostDevice
    scheduling = dataclasses.replace(
        NeuronPlatform.scheduling, default_max_num_batched_tokens=SHAPES.token_buckets[-1], static_shapes=SHAPES
    )
    _compile_backend = "aot_eager"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(
            1,
            "test only: octavo-neuron's runner on the CPU, compiled by torch.compile's aot_eager back end "
            "instead of neuronx-cc",
        )


@hookimpl
def octavo_platforms() -> list[type[Platform]]:
    return [NeuronOnCpuPlatform]


def register() -> None:
    """Make device "neuron-cpu" resolvable in this process (idempotent)."""
    module = sys.modules[__name__]
    if not get_plugin_manager().is_registered(module):
        register_plugin(module, name=NAME)


def pytest_configure(config) -> None:
    """`pytest -p octavo_neuron.testing`: the platform is there before the suite resolves it."""
    register()
