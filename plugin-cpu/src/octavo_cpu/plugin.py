"""Entry point module named in pyproject (group `octavo.platforms`)."""

from octavo.platform import hookimpl
from octavo_cpu.platform import CpuPlatform


@hookimpl
def octavo_platforms():
    return [CpuPlatform]
