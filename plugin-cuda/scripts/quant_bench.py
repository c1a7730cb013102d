"""Batch-1 decode of Llama-3.1-8B's linear layers with INT4 weights (octavo_triton.int4_linear,
group 128 with zero points, random canonical tensors) against bf16 (cuBLAS through torch, and
octavo_triton's GEMV), and the INT4 figure against its bandwidth floor: the quantized bytes a
token reads (qweight, scales, zeros of 32 layers' qkv, o, gate_up, down) over the copy
bandwidth measured in the same run. Prints one JSON line per figure.

    PYTHONPATH=core/src:plugins/src:triton-kernels/src python3 plugin-cuda/scripts/quant_bench.py
"""

from __future__ import annotations

import json

import torch

from octavo_triton.gemv import gemv
from octavo_triton.int4_linear import int4_linear

HIDDEN, INTER, Q, KV = 4096, 14336, 4096, 1024
SHAPES = [(Q + 2 * KV, HIDDEN), (HIDDEN, Q), (2 * INTER, HIDDEN), (HIDDEN, INTER)]  # (out, in) per layer
LAYERS, GROUP, DISTINCT = 32, 128, 4  # DISTINCT layers' weights cycled: together far past the L2


def timed(fn, iters: int = 20) -> float:
    """Seconds per call, from CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def copy_bandwidth() -> float:
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / timed(lambda: b.copy_(a))  # bytes read + written per second


def main() -> None:
    torch.manual_seed(0)
    bw = copy_bandwidth()
    x = torch.randn(1, HIDDEN, dtype=torch.bfloat16, device="cuda")
    xi = torch.randn(1, INTER, dtype=torch.bfloat16, device="cuda")
    int4_layers, dense_layers, qbytes = [], [], 0
    for _ in range(DISTINCT):
        int4_layer, dense_layer = [], []
        for out, inp in SHAPES:
            qw = torch.randint(0, 256, (out, inp // 2), dtype=torch.uint8, device="cuda")
            scales = torch.rand(out, inp // GROUP, device="cuda") * 0.004
            zeros = torch.randint(0, 16, (out, inp // GROUP), dtype=torch.uint8, device="cuda")
            int4_layer.append((qw, scales, zeros))
            dense_layer.append(torch.randn(out, inp, dtype=torch.bfloat16, device="cuda") * 0.02)
            if len(int4_layers) == 0:
                qbytes += (qw.numel() + scales.numel() * 4 + zeros.numel()) * LAYERS
        int4_layers.append(int4_layer)
        dense_layers.append(dense_layer)

    def run_int4():
        for i in range(LAYERS):
            for (qw, s, z), (_out, inp) in zip(int4_layers[i % DISTINCT], SHAPES):
                int4_linear(xi if inp == INTER else x, qw, s, z, None, GROUP)

    def run_dense(kernel):
        for i in range(LAYERS):
            for w, (_out, inp) in zip(dense_layers[i % DISTINCT], SHAPES):
                kernel(xi if inp == INTER else x, w)

    t_int4 = timed(run_int4)
    t_cublas = timed(lambda: run_dense(torch.nn.functional.linear))
    t_gemv = timed(lambda: run_dense(lambda a, w: gemv(a, w)))
    floor = qbytes / bw
    bf16 = min(t_cublas, t_gemv)
    figures = {
        "copy_bandwidth_GBps": bw / 1e9,
        "int4_bytes_per_token_MB": qbytes / 1e6,
        "int4_ms_per_token": t_int4 * 1e3,
        "int4_floor_ms": floor * 1e3,
        "int4_fraction_of_floor": floor / t_int4,
        "bf16_cublas_ms_per_token": t_cublas * 1e3,
        "bf16_triton_gemv_ms_per_token": t_gemv * 1e3,
        "int4_speedup_vs_best_bf16": bf16 / t_int4,
        "targets": ">= 0.70 of the floor, >= 2.5x bf16",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
