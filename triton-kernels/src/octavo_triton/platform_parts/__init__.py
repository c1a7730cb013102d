"""The parts of an Octavo platform for "a torch GPU with Triton", shared by octavo-cuda,
octavo-rocm and octavo-xpu, so that each of those is a thin declaration over them.

| module | part | what it runs |
| --- | --- | --- |
| `device.py` | `TritonGpuDevice` | bf16 by default; KV budget from free memory (`memory.py`); async host copies |
| `attention.py` | `TritonAttention` | leading decodes: the split-K decode kernel; the rest: the prefill kernel |
| `linear.py` | `TritonLinearMethod` | the Triton GEMV for one row of x, torch's GEMM (the vendor's BLAS) otherwise |
| `ops.py` | `TritonOps` | Triton RMSNorm (+ residual), rotary, SiLU-and-mul |
| `communicator.py` | `GpuCommunicator` | torch.distributed on the device's backend, each rank bound to its GPU first |
| `runner.py` | `TritonModelRunner` | core's eager runner; warm-up shapes at start, decode steps as device graphs |

Everything that differs between vendors goes through the torch device module of the
device's type (`torch.cuda` on NVIDIA and on ROCm, where HIP sits behind the CUDA names;
`torch.xpu` on Intel): memory counters, streams and events, graphs. The vendor plugins set
`Device.type` and `dist_backend`, declare what they verified, and gate availability.

These modules import octavo (the `platform` extra of octavo-triton) but neither triton nor
the GPU at import time: discovery builds the platforms on machines that have neither.
"""

from octavo_triton.platform_parts.attention import TritonAttention
from octavo_triton.platform_parts.communicator import GpuCommunicator
from octavo_triton.platform_parts.device import TritonGpuDevice
from octavo_triton.platform_parts.linear import TritonLinearMethod
from octavo_triton.platform_parts.ops import TritonOps
from octavo_triton.platform_parts.runner import TritonModelRunner

__all__ = [
    "GpuCommunicator",
    "TritonAttention",
    "TritonGpuDevice",
    "TritonLinearMethod",
    "TritonModelRunner",
    "TritonOps",
]
