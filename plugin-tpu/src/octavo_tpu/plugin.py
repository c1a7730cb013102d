"""The `octavo.platforms` entry point of octavo-tpu."""

from __future__ import annotations

from octavo.platform import Platform, hookimpl


@hookimpl
def octavo_platforms() -> list[type[Platform]]:
    from octavo_tpu.platform import TpuCpuPlatform, TpuPlatform

    return [TpuPlatform, TpuCpuPlatform]
