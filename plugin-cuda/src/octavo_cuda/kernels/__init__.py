"""Triton kernels and their launchers. Importing this package imports triton.

Every launcher takes torch tensors and works on CUDA tensors, or on CPU tensors under
Triton's interpreter (`TRITON_INTERPRET=1`, set before triton is imported), which is
how CI checks the kernels without a GPU.
"""
