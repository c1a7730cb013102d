"""octavo-xpu: the Intel GPU platform for Octavo (XPU builds of torch).

Importing this package never imports triton and never touches the GPU, so discovery
works on machines without either; the kernels (`octavo_triton`, a dependency) load on first use.
"""

from octavo_xpu.platform import XpuPlatform

__all__ = ["XpuPlatform"]
__version__ = "0.1.0"
