"""One decode token's linear layers of SmolLM2 (30 x qkv, o, gate_up, down at M = 1): the
default model's Q4_1 blocks through octavo_cpu._quant's GEMV against the same layers in bf16
through the packed GEMM that serves bf16 models (and fp32 through torch), alternating the
three in the same minutes and printing the median of each with the bytes each reads.

    python plugin-cpu/bench/quant_gemv.py [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from octavo.quantization.scheme import QuantScheme
from octavo_cpu import gemm
from octavo_cpu.quantized_linear import GgufLinearMethod

HIDDEN, INTER, Q, KV, LAYERS = 576, 1536, 576, 192, 30
SHAPES = [(Q + 2 * KV, HIDDEN), (HIDDEN, Q), (2 * INTER, HIDDEN), (HIDDEN, INTER)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import gguf

    from octavo.layers.linear import Linear
    from octavo.platform.device import Device

    method = GgufLinearMethod(Device(), QuantScheme("gguf", gguf_type="Q4_1"))
    q4, bf16, fp32 = [], [], []
    for _ in range(LAYERS):
        for n, k in SHAPES:
            w = torch.randn(n, k) * 0.02
            layer = Linear(k, n, method)
            blocks = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_1)
            layer.qweight.data.copy_(torch.from_numpy(np.ascontiguousarray(blocks)))
            q4.append(layer)
            bf16.append((gemm.pack(w.bfloat16()), n))
            fp32.append(w)
    x = {HIDDEN: torch.randn(1, HIDDEN), INTER: torch.randn(1, INTER)}
    xb = {k: v.bfloat16() for k, v in x.items()}

    def run_q4():
        for layer in q4:
            layer(xb[layer.in_features])

    def run_bf16():
        for (packed, n), (_, k) in zip(bf16, SHAPES * LAYERS):
            gemm.linear(xb[k], packed, n, None)

    def run_fp32():
        for w in fp32:
            torch.nn.functional.linear(x[w.shape[1]], w)

    times: dict[str, list[float]] = {"q4_1": [], "bf16_packed_gemm": [], "fp32_torch": []}
    for _ in range(args.rounds):
        for name, fn in zip(times, (run_q4, run_bf16, run_fp32)):
            fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    params = sum(n * k for n, k in SHAPES) * LAYERS
    sizes = {"q4_1": params * 20 / 32, "bf16_packed_gemm": params * 2, "fp32_torch": params * 4}
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:18s} {med * 1e3:7.2f} ms per token  ({sizes[name] / 1e6:6.1f} MB, {sizes[name] / med / 1e9:5.1f} GB/s)"
        )


if __name__ == "__main__":
    main()
