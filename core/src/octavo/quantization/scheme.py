"""How one linear layer's weight is stored once loaded: a `QuantScheme`.

Every checkpoint format is converted by the loader into one of four canonical layouts, so
that the model's loader (which fuses q/k/v and gate/up by rows) and every platform's kernels
see one layout per method, whatever the checkpoint's packing. Every tensor but `g_idx` has
the layer's output features as its first dimension:

- "gguf": `qweight` uint8 [out, in / block * block_bytes], each row the GGUF blocks of one
  output feature, in llama.cpp's byte layout of `gguf_type` (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K).
- "int4": `qweight` uint8 [out, in / 2], input feature 2j in the low nibble of byte j and
  2j + 1 in the high one, values 0..15; `scales` float32 [out, groups]; `zeros` uint8
  [out, groups] (values 0..15) with `zero_point`, else the zero is 8; `g_idx` int32 [in],
  input feature -> group, with `act_order`, else input i is in group i // group_size.
- "int8": `qweight` int8 [out, in], `scales` float32 [out, groups] (symmetric, zero 0).
- "fp8": `qweight` float8_e4m3fn [out, in], `scales` float32 [out, groups].

Dequantized, w[o, i] = (q[o, i] - zero[o, g(i)]) * scales[o, g(i)]; a per-tensor scale is
stored as a per-channel one (groups = 1, group_size None) and a block scale (DeepSeek's
128 x 128) as one per output row and input group. With `activations` set ("int8", "fp8") the
layer also quantizes its input per token (scale max|x_t| / qmax, dynamic), as W8A8 checkpoints
are run. The kit's `octavo_plugin_kit.reference_quant` defines each of these from its spec.
"""

from __future__ import annotations

from dataclasses import dataclass

#: GGUF tensor types kept quantized, as llama.cpp names them -> (weights per block, bytes per block)
GGUF_TYPES = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
METHODS = ("gguf", "int4", "int8", "fp8")
#: input features per scale that the int4 layouts take (GPTQ, AWQ and compressed-tensors'
#: usual ones); None is one scale per output row
INT4_GROUP_SIZES = (32, 64, 128, None)


class QuantizationError(ValueError):
    """A quantized checkpoint (or a --quantization) Octavo or the platform cannot serve."""


@dataclass(frozen=True)
class QuantScheme:
    method: str  # one of METHODS
    gguf_type: str | None = None  # method "gguf": a key of GGUF_TYPES
    group_size: int | None = None  # input features per scale; None: one scale per output row
    zero_point: bool = False  # int4: asymmetric (a zero per group) rather than symmetric (zero 8)
    act_order: bool = False  # int4: groups follow `g_idx` (GPTQ's desc_act) rather than i // group_size
    activations: str | None = None  # "int8" / "fp8": dynamic per-token input quantization; None: weight-only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizationError(f"quantization method {self.method!r} is unknown; supported: {', '.join(METHODS)}")
        if self.method == "gguf" and self.gguf_type not in GGUF_TYPES:
            raise QuantizationError(
                f"GGUF type {self.gguf_type} cannot be kept quantized; supported: {', '.join(GGUF_TYPES)} "
                "(pass --dtype to dequantize the whole file at load)"
            )
        if self.method == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise QuantizationError(
                f"int4 group size {self.group_size} is not supported; supported: "
                + ", ".join("per-channel" if g is None else str(g) for g in INT4_GROUP_SIZES)
            )
        if self.activations not in (None, "int8", "fp8"):
            raise QuantizationError(
                f"activation quantization {self.activations!r} is not supported; supported: dynamic per-token int8 "
                "or fp8, or none (weight-only)"
            )

    def describe(self) -> str:
        """How errors and logs name the scheme, e.g. `int4 (group 128, zero points, act-order)`."""
        if self.method == "gguf":
            return f"GGUF {self.gguf_type}"
        parts = [f"group {self.group_size}" if self.group_size else "per-channel"]
        parts += ["zero points"] * self.zero_point + ["act-order"] * self.act_order
        parts += [f"dynamic {self.activations} activations"] if self.activations else []
        return f"{self.method} ({', '.join(parts)})"

    def groups(self, in_features: int) -> int:
        """Scales per output row."""
        if self.method == "gguf":
            return 0
        return 1 if self.group_size is None else -(-in_features // self.group_size)

    def check_shape(self, in_features: int, out_features: int) -> None:
        """Refuse a layer whose width the layout cannot hold, naming the widths it needs."""
        if self.method == "gguf":
            block = GGUF_TYPES[str(self.gguf_type)][0]
            if in_features % block:
                raise QuantizationError(
                    f"{self.describe()} needs input features in multiples of {block}; this layer has {in_features}"
                )
        elif self.method == "int4" and (in_features % 2 or (self.group_size and in_features % self.group_size)):
            raise QuantizationError(
                f"{self.describe()} needs input features in multiples of {self.group_size or 2}; "
                f"this layer has {in_features}"
            )
