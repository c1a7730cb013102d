"""Entry point module named in pyproject (group `octavo.platforms`)."""

from octavo.platform import hookimpl
from octavo_cuda.platform import CudaPlatform


@hookimpl
def octavo_platforms():
    return [CudaPlatform]
