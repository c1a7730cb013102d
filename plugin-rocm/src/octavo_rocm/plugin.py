"""Entry point module named in pyproject (group `octavo.platforms`)."""

from octavo.platform import hookimpl
from octavo_rocm.platform import RocmPlatform


@hookimpl
def octavo_platforms():
    return [RocmPlatform]
