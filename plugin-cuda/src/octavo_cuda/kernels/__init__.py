"""Triton kernels and their launchers. Importing this package imports triton.

Every launcher takes torch tensors and works on CUDA tensors, or on CPU tensors under
Triton's interpreter (`TRITON_INTERPRET=1`, set before triton is imported), which is
how CI checks the kernels without a GPU.
"""

import os


def interpreting() -> bool:
    """True under Triton's CPU interpreter. It keeps bfloat16 as raw uint16 and its
    tl.dot multiplies those bit patterns (triton-lang/triton#11584, "not supported
    yet"), so the attention kernels upcast dot operands to float32 there; products of
    bf16 values are exact in float32, so the result is what the tensor cores give."""
    return os.environ.get("TRITON_INTERPRET") == "1"
