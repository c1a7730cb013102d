"""Conformance of the quantized linear methods: for each scheme core serves, the method the
platform runs it with (its `LinearMethod.quantized_method`, or core's DequantLinearMethod
where it returns None) against the kit's reference dequantization (reference_quant), on a
real Linear built, loaded and processed as the runner does, at 1 to 300 rows of x.

The layers' tensors are random but valid encodings of each canonical layout
(octavo.quantization.scheme): random GGUF blocks with finite float16 scales, random INT4
nibbles, zero points and act-order groups, random INT8 and FP8 values.
"""

from __future__ import annotations

import pytest
import torch

from octavo.layers.linear import Linear
from octavo.quantization.linear import DequantLinearMethod, canonical_shapes
from octavo.quantization.scheme import GGUF_TYPES, QuantScheme
from octavo_plugin_kit import reference_quant
from octavo_plugin_kit.conformance.checks import DTYPE_NAMES, assert_close, call, generator_for, label, require_dtype

SCHEMES = [QuantScheme("gguf", gguf_type=t) for t in GGUF_TYPES] + [
    QuantScheme("int4", group_size=32, zero_point=True),
    QuantScheme("int4", group_size=128, act_order=True),
    QuantScheme("int4", group_size=None, zero_point=True),
    QuantScheme("int8", activations="int8"),
    QuantScheme("fp8", activations="fp8"),
    QuantScheme("fp8", group_size=128),
]
#: where each GGUF type keeps its float16 scales: byte offsets in a block
_F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
IN_FEATURES, OUT_FEATURES = 256, 96


def _scheme_id(s: QuantScheme) -> str:
    return s.describe().replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")


def random_tensors(scheme: QuantScheme, in_features: int, out_features: int, g: torch.Generator):
    """Valid random canonical tensors of a layer stored in `scheme`, scaled so that outputs stay O(1)."""
    shapes = canonical_shapes(scheme, in_features, out_features)
    out = {}
    if scheme.method == "gguf":
        block, nbytes = GGUF_TYPES[str(scheme.gguf_type)]
        raw = torch.randint(0, 256, (out_features * in_features // block, nbytes), generator=g, dtype=torch.uint8)
        for offset in _F16_FIELDS[str(scheme.gguf_type)]:
            d = (torch.rand(raw.shape[0], generator=g) * 0.02 / in_features**0.5).half()
            raw[:, offset : offset + 2] = d.view(torch.uint8).reshape(-1, 2)
        return {"qweight": raw.reshape(out_features, -1)}
    (rows, width), dtype = shapes["qweight"]
    if scheme.method == "int4":
        out["qweight"] = torch.randint(0, 256, (rows, width), generator=g, dtype=torch.uint8)
    elif scheme.method == "int8":
        out["qweight"] = torch.randint(-127, 128, (rows, width), generator=g, dtype=torch.int8)
    else:
        out["qweight"] = (torch.randn(rows, width, generator=g) * 100).clamp(-448, 448).to(dtype)
    levels = {"int4": 8, "int8": 127, "fp8": 100}[scheme.method]
    out["scales"] = torch.rand(shapes["scales"][0], generator=g) * (2.0 / levels / in_features**0.5)
    if "zeros" in shapes:
        out["zeros"] = torch.randint(0, 16, shapes["zeros"][0], generator=g, dtype=torch.uint8)
    if "g_idx" in shapes:
        assert scheme.group_size is not None
        perm = torch.randperm(in_features, generator=g)
        out["g_idx"] = torch.empty(in_features, dtype=torch.int32)
        out["g_idx"][perm] = (torch.arange(in_features) // scheme.group_size).to(torch.int32)
    return out


def quantized_layer(platform, scheme: QuantScheme, tensors: dict, bias, dtype) -> Linear:
    """A Linear of `scheme` as core builds it on `platform`: the platform's method (or core's),
    its canonical parameters filled as the loader fills them, then processed."""
    method = platform.linear.quantized_method(scheme) or DequantLinearMethod(platform.device, scheme)
    dev = platform.device.torch_device()
    with torch.device(dev):
        layer = Linear(IN_FEATURES, OUT_FEATURES, method, bias=bias is not None)
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(dtype)
    params = dict(layer.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
        if bias is not None:
            params["bias"].copy_(bias)
    method.process_weights_after_loading(layer)
    return layer


@pytest.mark.octavo_kernel("quantized_linear")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("scheme", SCHEMES, ids=_scheme_id)
def test_quantized_linear(octavo_platform, scheme, rows, dtype):
    p = octavo_platform
    require_dtype(p, dtype)
    case = label("quantized_linear", scheme=scheme.describe(), rows=rows, dtype=dtype)
    g = generator_for(case)
    tensors = random_tensors(scheme, IN_FEATURES, OUT_FEATURES, g)
    bias = (torch.randn(OUT_FEATURES, generator=g) * 0.1).to(dtype) if rows == 7 else None
    x = torch.randn(rows, IN_FEATURES, generator=g).to(dtype)
    layer = call("quantized_linear", case, quantized_layer, p, scheme, tensors, bias, dtype)
    out = call("quantized_linear", case, layer, x.to(p.device.torch_device()))
    ref = reference_quant.quantized_linear(x.float(), scheme, tensors, None if bias is None else bias.float())
    if scheme.activations is not None:
        out = _forgive_activation_ties(out, ref, x.float(), scheme, tensors)
    if scheme.method == "gguf":
        ref = _nearer(out, ref, _gguf_rounded_reference(x, scheme, tensors, bias))
    assert_close(case, out, ref, dtype)


def _gguf_rounded_reference(x: torch.Tensor, scheme: QuantScheme, tensors: dict, bias) -> torch.Tensor:
    """GGUF kernels may round activations to int8 blocks of 32 as llama.cpp's do (its vec_dot on
    Q8 activations): the reference on those activations is then the one to meet."""
    rounded = reference_quant.quantize_activation_blocks(x.float())
    return reference_quant.quantized_linear(rounded, scheme, tensors, None if bias is None else bias.float())


def _nearer(out: torch.Tensor, *refs: torch.Tensor) -> torch.Tensor:
    """Of the references a method may follow, the one its output is nearer to (judged in full)."""
    got = out.detach().float().cpu()
    return min(refs, key=lambda r: float((got - r).abs().max()))


def _forgive_activation_ties(out, ref, x: torch.Tensor, scheme: QuantScheme, tensors: dict) -> torch.Tensor:
    """W8A8: an activation within float32 noise of a rounding boundary (x / scale a hair from a
    midpoint) may round either way on another device's division; each such flip moves output j
    by its step times |w[j, k]|. Returns `out` moved towards `ref` by at most that sum, so only
    the rest of the difference is judged (a wrong scale or rounding rule is still far off)."""
    qmax = 127.0 if scheme.activations == "int8" else 448.0
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax  # as reference_quant's
    v = x / scale

    def rounded(v: torch.Tensor) -> torch.Tensor:
        v = v.clamp(-qmax, qmax)
        return torch.round(v) if scheme.activations == "int8" else v.to(torch.float8_e4m3fn).float()

    # nonzero only where a hair either side rounds differently
    steps = (rounded(v * (1 + 1e-5)) - rounded(v * (1 - 1e-5))).abs() * scale
    w = reference_quant.dequantize(scheme, tensors, x.shape[-1]).abs()
    slack = steps @ w.T
    got = out.detach().float().cpu()
    moved = ref + (got - ref).sign() * ((got - ref).abs() - slack).clamp(min=0)
    return moved.to(out.dtype)
