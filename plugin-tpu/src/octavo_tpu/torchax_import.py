"""Import torchax (torch ops lowered to JAX) under the torch that Octavo pins.

torchax 0.0.13, the newest release, names about twenty named-tensor overloads in its
decomposition and autocast tables at import (`aten.prod.dim_Dimname`, `aten.norm.names_*`,
`aten.std.names_dim`...). torch 2.13 removed named tensors, and with them those overloads, so
`import torchax` (and building its environment) raises AttributeError there. Nothing can call
an overload that no longer exists, so the tables only need a key for it: while torchax imports, a missing overload of an
existing op resolves to a placeholder that matches no op. Every other lookup is untouched,
and the patch is undone before this function returns.
"""

from __future__ import annotations

import functools
from typing import Any

from torch._ops import OpOverloadPacket


class _RemovedOverload:
    """An overload torchax names but this torch no longer has: a dict key, never called."""

    def __init__(self, packet: str, name: str) -> None:
        self.name = f"{packet}.{name}"

    def __repr__(self) -> str:
        return f"<overload {self.name} (not in this torch)>"


@functools.cache
def torchax() -> Any:
    """The torchax module, imported once, its default environment built."""
    original = OpOverloadPacket.__getattr__

    def lookup(packet: OpOverloadPacket, key: str) -> Any:
        try:
            return original(packet, key)
        except AttributeError:
            if key.startswith("__"):
                raise
            return _RemovedOverload(packet._qualified_op_name, key)

    OpOverloadPacket.__getattr__ = lookup  # type: ignore[method-assign]
    try:
        import torchax as module

        module.default_env()  # builds its op tables (the decompositions load here, not at import)
    finally:
        OpOverloadPacket.__getattr__ = original  # type: ignore[method-assign]
    return module
