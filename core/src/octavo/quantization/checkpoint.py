"""What a checkpoint's quantization is: its `quantization_config` (or a GGUF file's tensor
types) read into a `QuantConfig`, checked against `--quantization` / `quantization=`.

Octavo serves the quantization a checkpoint was saved in; it does not quantize at load. So
`--quantization X` asks to serve a checkpoint of format X (an error otherwise), and, for a
GGUF file, to keep its weights quantized even where the platform has no kernel for them.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from octavo.quantization.scheme import GGUF_TYPES, INT4_GROUP_SIZES, QuantizationError, QuantScheme

logger = logging.getLogger("octavo")

FORMATS = ("gguf", "gptq", "awq", "compressed-tensors", "fp8")
#: vLLM's names for the same checkpoint formats (kernel choices there; the platform picks here)
ALIASES = {"gptq_marlin": "gptq", "awq_marlin": "awq", "compressed_tensors": "compressed-tensors"}
SUPPORTED = (
    "GGUF (" + ", ".join(GGUF_TYPES) + "); GPTQ 4-bit (with or without act-order); AWQ 4-bit (GEMM layout); "
    "compressed-tensors (pack-quantized INT4 weight-only, INT8 W8A8, FP8 W8A8; dynamic per-token activations); "
    "FP8 (per-tensor, per-channel or block scales; dynamic activations). INT4 group sizes: "
    + ", ".join("per-channel" if g is None else str(g) for g in INT4_GROUP_SIZES)
)
#: the checkpoint tensor, by suffix, that marks a layer as quantized in each format
_MARKERS = {
    "gptq": ("qweight",),
    "awq": ("qweight",),
    "compressed-tensors": ("weight_packed", "weight_scale"),
    "fp8": ("weight_scale_inv", "weight_scale"),
}


@dataclass
class QuantConfig:
    format: str  # one of FORMATS
    #: checkpoint layer name ("model.layers.0.self_attn.q_proj") -> how it is stored
    layers: dict[str, QuantScheme] = field(default_factory=dict)
    #: the user asked for it: keep every layer quantized, with core's method where the platform has none
    forced: bool = False
    zeros_offset: int = 0  # GPTQ's original format stores each zero point minus one

    def describe(self) -> str:
        schemes = sorted({s.describe() for s in self.layers.values()})
        return f"{self.format}: {', '.join(schemes) or 'no quantized layers'}"


def _canonical_name(requested: str | None) -> str | None:
    if requested is None:
        return None
    name = ALIASES.get(requested.lower(), requested.lower())
    if name not in FORMATS:
        raise QuantizationError(f"quantization {requested!r} is not supported; supported: {SUPPORTED}")
    return name


#: the scheme of every linear layer of a dummy-weight model run with --quantization (benchmarks)
DUMMY_SCHEMES = {
    "gptq": QuantScheme("int4", group_size=128, zero_point=True),
    "awq": QuantScheme("int4", group_size=128, zero_point=True),
    "compressed-tensors": QuantScheme("int4", group_size=128),
    "fp8": QuantScheme("fp8", activations="fp8"),
}
_LLAMA_LINEARS = (
    *("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    *("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)


def read_quantization(
    source, hf_config, requested: str | None, dtype_given: bool, dummy: bool = False
) -> QuantConfig | None:
    """The checkpoint's quantization as it will be served, or None to load dense weights (an
    unquantized checkpoint, or a GGUF file with --dtype and no --quantization). With dummy
    weights (load_format "dummy"), --quantization gives every decoder linear the format's
    DUMMY_SCHEMES entry, filled with random values: benchmarks at real shapes."""
    want = _canonical_name(requested)
    if dummy:
        if want is None:
            return None
        if want not in DUMMY_SCHEMES:
            raise QuantizationError(
                f"dummy weights with --quantization {requested} are not supported; supported: "
                f"{', '.join(DUMMY_SCHEMES)}"
            )
        stems = [f"model.layers.{i}.{p}" for i in range(hf_config.num_hidden_layers) for p in _LLAMA_LINEARS]
        return QuantConfig(want, {stem: DUMMY_SCHEMES[want] for stem in stems}, forced=True)
    if source.is_gguf:
        config = None if dtype_given and want is None else _gguf_config(source.weights_path, forced=want == "gguf")
        have = "gguf"
    else:
        raw = getattr(hf_config, "quantization_config", None)
        config = _hf_config(source.directory, raw) if raw is not None else None
        have = config.format if config else "not quantized"
    if want is not None and want != have:
        raise QuantizationError(
            f"--quantization {requested} (quantization={requested!r}) was asked for, but the checkpoint is {have}: "
            "Octavo serves the quantization a checkpoint was saved in and does not quantize at load; "
            + ("leave the option out" if have == "not quantized" else f"pass {have} or leave the option out")
        )
    if config is not None:
        config.forced = want is not None
    return config


# ---- GGUF -----------------------------------------------------------------------------------
def _gguf_config(path: str, forced: bool) -> QuantConfig:
    """Each linear layer's GGUF type: the ones in GGUF_TYPES stay quantized; float ones load
    dense; other quantized types are refused when asked for, else dequantized at load."""
    import gguf

    from octavo.loader.weights import gguf_hf_name

    config = QuantConfig("gguf")
    dense = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
    others = set()
    for t in gguf.GGUFReader(path).tensors:
        name = gguf_hf_name(t.name)
        if name is None or not name.endswith(".weight") or "embed_tokens" in name or t.tensor_type in dense:
            continue
        if t.tensor_type.name in GGUF_TYPES:
            config.layers[name.removesuffix(".weight")] = QuantScheme("gguf", gguf_type=t.tensor_type.name)
        elif not name.endswith("norm.weight"):
            others.add(t.tensor_type.name)
    if others:
        what = f"GGUF types {', '.join(sorted(others))} cannot be kept quantized (supported: {', '.join(GGUF_TYPES)})"
        if forced:
            raise QuantizationError(f"{what}; pass --dtype without --quantization to dequantize them at load")
        logger.info("%s: those layers are dequantized at load", what)
    return config


# ---- Hugging Face quantization_config ---------------------------------------------------------
def _quantized_stems(directory: str, markers: tuple[str, ...]) -> list[str]:
    """The layers of the checkpoint's safetensors files that hold a marker tensor (read from the
    files' headers only)."""
    from safetensors import safe_open

    stems = set()
    for f in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                stem, _, suffix = key.rpartition(".")
                if suffix in markers:
                    stems.add(stem)
    return sorted(stems)


def _hf_config(directory: str, raw: Any) -> QuantConfig:
    cfg = raw if isinstance(raw, dict) else raw.to_dict()
    method = str(cfg.get("quant_method", "")).lower()
    fmt = ALIASES.get(method, method)
    if fmt == "gptq":
        scheme, config = _int4_scheme("GPTQ", cfg, act_order=bool(cfg.get("desc_act"))), QuantConfig("gptq")
        # GPTQ's original format (checkpoint_format "gptq", AutoGPTQ's default) stores zero - 1
        fmt_name = cfg.get("checkpoint_format") or cfg.get("format") or "gptq"
        config.zeros_offset = 0 if fmt_name == "gptq_v2" else 1
    elif fmt == "awq":
        if str(cfg.get("version", "gemm")).lower() != "gemm" or not cfg.get("zero_point", True):
            raise QuantizationError(
                f"AWQ version {cfg.get('version')!r} with zero_point={cfg.get('zero_point', True)} is not supported; "
                "supported: the GEMM layout with zero points (AutoAWQ's default)"
            )
        scheme, config = _int4_scheme("AWQ", cfg, act_order=False), QuantConfig("awq")
    elif fmt == "compressed-tensors":
        scheme, config = _compressed_tensors_scheme(cfg), QuantConfig("compressed-tensors")
    elif fmt == "fp8":
        if cfg.get("activation_scheme", "dynamic") != "dynamic":
            raise QuantizationError(
                f"fp8 activation_scheme {cfg.get('activation_scheme')!r} is not supported; supported: dynamic"
            )
        block = cfg.get("weight_block_size")
        scheme = QuantScheme("fp8", group_size=block[1] if block else None, activations="fp8")
        config = QuantConfig("fp8")
    else:
        raise QuantizationError(f"quantization method {method or '(none)'!r} is not supported; supported: {SUPPORTED}")
    config.layers = {stem: scheme for stem in _quantized_stems(directory, _MARKERS[config.format])}
    return config


def _int4_scheme(name: str, cfg: dict, act_order: bool) -> QuantScheme:
    bits = cfg.get("bits", cfg.get("w_bit", 4))
    if bits != 4:
        raise QuantizationError(f"{name} with {bits} bits is not supported; supported: 4 bits")
    group = cfg.get("group_size", cfg.get("q_group_size", 128))
    group = None if group in (-1, None) else int(group)
    return QuantScheme("int4", group_size=group, zero_point=True, act_order=act_order and group is not None)


def _compressed_tensors_scheme(cfg: dict) -> QuantScheme:
    groups = list((cfg.get("config_groups") or {}).values())
    schemes = {repr((g.get("weights"), g.get("input_activations"))) for g in groups}
    if len(schemes) != 1:
        raise QuantizationError(
            f"compressed-tensors with {len(schemes)} different schemes is not supported; supported: one scheme "
            "for every quantized Linear"
        )
    weights, acts = groups[0].get("weights") or {}, groups[0].get("input_activations")
    bits, kind, strategy = weights.get("num_bits"), weights.get("type", "int"), weights.get("strategy")
    dynamic = "dynamic " if acts and acts.get("dynamic") else ""
    what = f"compressed-tensors {kind}{bits} weights ({strategy}) with {dynamic}"
    what += f"{acts.get('type')}{acts.get('num_bits')} activations" if acts else "no activation quantization"
    if acts is not None and not (acts.get("dynamic") and acts.get("num_bits") == 8 and acts.get("type") == kind):
        raise QuantizationError(f"{what} is not supported; supported: {SUPPORTED}")
    group = weights.get("group_size") if strategy == "group" else None
    if strategy == "block":
        group = (weights.get("block_structure") or [128, 128])[1]
    if kind == "int" and bits == 4 and acts is None:
        act_order = weights.get("actorder") == "group"
        return QuantScheme("int4", group_size=group, zero_point=not weights.get("symmetric", True), act_order=act_order)
    if kind == "int" and bits == 8 and weights.get("symmetric", True) and strategy in ("channel", "tensor"):
        return QuantScheme("int8", activations="int8" if acts else None)
    if kind == "float" and bits == 8 and strategy in ("channel", "tensor", "block"):
        return QuantScheme("fp8", group_size=group, activations="fp8" if acts else None)
    raise QuantizationError(f"{what} is not supported; supported: {SUPPORTED}")
