"""Entry point module named in pyproject (group `octavo.platforms`)."""

from octavo.platform import hookimpl
from octavo_xpu.platform import XpuPlatform


@hookimpl
def octavo_platforms():
    return [XpuPlatform]
