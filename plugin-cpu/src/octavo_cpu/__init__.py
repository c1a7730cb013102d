"""octavo-cpu: the CPU platform for Octavo."""

from octavo_cpu.platform import CpuPlatform

__all__ = ["CpuPlatform"]
__version__ = "0.1.0"
