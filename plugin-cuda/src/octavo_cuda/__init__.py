"""octavo-cuda: the NVIDIA GPU platform for Octavo.

Importing this package never imports triton and never touches the GPU, so discovery
works on machines without either; the kernels (`octavo_triton`, a dependency) load on first use.
"""

from octavo_cuda.platform import CudaPlatform

__all__ = ["CudaPlatform"]
__version__ = "0.1.0"
