"""octavo-rocm: the AMD GPU platform for Octavo (ROCm builds of torch).

Importing this package never imports triton and never touches the GPU, so discovery
works on machines without either; the kernels (`octavo_triton`, a dependency) load on first use.
"""

from octavo_rocm.platform import RocmPlatform

__all__ = ["RocmPlatform"]
__version__ = "0.1.0"
