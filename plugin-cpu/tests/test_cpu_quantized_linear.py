"""The native GGUF kernels (octavo_cpu._quant, csrc/quant_gguf.cpp) against the kit's
reference dequantization, at every row count from 1 to 20 (both sides of the GEMV tile of 4
and of the GEMV / GEMM switch) and at 300, with N not a multiple of the threads' chunk of 16,
in float32 and bf16, on each instruction set the module runs on this CPU (AVX-512 VNNI, AVX2,
portable). The GEMV rounds activations to int8 blocks (the kit's quantize_activation_blocks);
the dequantize + GEMM path of more rows does not."""

from __future__ import annotations

import pytest
import torch

from octavo.layers.linear import Linear
from octavo.quantization.scheme import QuantScheme
from octavo_cpu import quantized_linear
from octavo_cpu.platform import CpuPlatform
from octavo_plugin_kit import reference_quant
from octavo_plugin_kit.conformance.test_quantized_linear import random_tensors

pytestmark = pytest.mark.skipif(
    not quantized_linear.NATIVE, reason="octavo_cpu._quant is not built, or has no vector path for this CPU"
)
K, N = 576, 37


@pytest.fixture(params=["avx512_vnni", "avx2", "generic"])
def isa(request):
    """Each code path of the module this CPU runs."""
    quant = quantized_linear._quant
    if request.param not in quant.supported_isas():
        pytest.skip(f"this CPU does not run {request.param}")
    before = quant.isa()
    quant.set_isa(request.param)
    yield request.param
    quant.set_isa(before)


@pytest.mark.parametrize("gguf_type", list(quantized_linear.BLOCK_TYPES))
def test_gguf_kernels_match_the_reference(isa, gguf_type):
    scheme = QuantScheme("gguf", gguf_type=gguf_type)
    platform = CpuPlatform()
    method = platform.linear.quantized_method(scheme)
    assert isinstance(method, quantized_linear.GgufLinearMethod)
    g = torch.Generator().manual_seed(len(gguf_type) + len(isa))
    tensors = random_tensors(scheme, K, N, g)
    bias = torch.randn(N, generator=g)
    layer = Linear(K, N, method, bias=True)
    with torch.no_grad():
        layer.qweight.copy_(tensors["qweight"])
        layer.bias.copy_(bias)
    method.process_weights_after_loading(layer)
    for rows in [*range(1, 21), 300]:
        x = torch.randn(rows, K, generator=g)
        want = reference_quant.quantized_linear(_as_kernel_reads(x), scheme, tensors, bias)
        torch.testing.assert_close(layer(x), want, atol=1e-4, rtol=1e-4, msg=lambda m, r=rows: f"{r} rows: {m}")
        got = layer(x.bfloat16())  # bf16 inputs: the same kernel on their float32 values, rounded at the end
        want = reference_quant.quantized_linear(_as_kernel_reads(x.bfloat16().float()), scheme, tensors, bias)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


def _as_kernel_reads(x: torch.Tensor) -> torch.Tensor:
    """The activations each path multiplies: int8-block rounded up to the GEMV's row limit."""
    if x.shape[0] <= quantized_linear.GEMV_MAX_ROWS:
        return reference_quant.quantize_activation_blocks(x)
    return x
