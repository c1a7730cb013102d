"""The entry point (`octavo.platforms`: neuron = "octavo_neuron.plugin")."""

from __future__ import annotations

from octavo.platform import Platform, hookimpl
from octavo_neuron.platform import NeuronPlatform


@hookimpl
def octavo_platforms() -> list[type[Platform]]:
    return [NeuronPlatform]
