"""Triton kernels for LLM inference, shared by every Triton-capable Octavo plugin.

Each kernel module (decode_attention, prefill_attention, kv_cache, rms_norm, rotary,
activation, gemv) holds one kernel and its launcher: a plain function of torch tensors
that looks up its launch parameters for the tensors' device in `octavo_triton.tuning`.
The kernels import nothing of octavo, so the same source serves NVIDIA (octavo-cuda), AMD
(octavo-rocm) and Intel (octavo-xpu) GPUs; `platform_parts` builds the Octavo platform parts
those three share on top of them. Importing this package imports neither triton nor torch;
the kernel modules import triton.

The launchers work on GPU tensors, or on CPU tensors under Triton's interpreter
(`TRITON_INTERPRET=1`, set before triton is imported), which is how CI checks the
kernels without a GPU; `octavo_triton.aot` compiles them for GPUs that are not there.
"""

import os

__version__ = "0.1.0"


def interpreting() -> bool:
    """True under Triton's CPU interpreter. It keeps bfloat16 as raw uint16 and its
    tl.dot multiplies those bit patterns (triton-lang/triton#11584, "not supported
    yet"), so the attention kernels upcast dot operands to float32 there; products of
    bf16 values are exact in float32, so the result is what the matrix units give."""
    return os.environ.get("TRITON_INTERPRET") == "1"
