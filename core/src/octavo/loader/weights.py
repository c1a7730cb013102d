"""Weight iterators yielding (Hugging Face parameter name, tensor): safetensors, GGUF, dummy."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from octavo.loader.source import ModelSource
from octavo.quantization.checkpoint import QuantConfig
from octavo.quantization.layouts import convert
from octavo.quantization.scheme import QuantScheme

# GGUF tensor names (llama.cpp) -> Hugging Face names, per layer and global
_GGUF_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def _unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rope -> Hugging Face's rotate-half)."""
    rows = w.shape[0]
    # the converter did reshape(h, 2, r/h/2).swapaxes(1, 2); this is its inverse
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_hf_name(name: str) -> str | None:
    """The Hugging Face name of GGUF tensor `name`, or None for one Octavo skips (llama3's
    rope factors, which it computes from the config); an unknown tensor is an error."""
    m = _LAYER_RE.match(name)
    if m:
        layer, kind, suffix = m.groups()
        if kind not in _GGUF_LAYER:
            raise ValueError(f"GGUF tensor {name!r} is not supported")
        return f"model.layers.{layer}.{_GGUF_LAYER[kind]}.{suffix}"
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    if name.startswith("rope_freqs"):
        return None
    raise ValueError(f"GGUF tensor {name!r} is not supported")


def iter_gguf(
    path: str, hf_config, dtype: torch.dtype, kept: Mapping[str, QuantScheme] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The file's tensors dequantized to `dtype`, except the linear layers in `kept`: those
    come as `<layer>.qweight`, their GGUF blocks as they are (scheme.py's "gguf" layout)."""
    import gguf

    kept = kept or {}
    reader = gguf.GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    permute = arch == "llama"  # the converter permutes q/k rows for llama-arch models only
    n_heads = hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    for t in reader.tensors:
        name = gguf_hf_name(t.name)
        if name is None:
            continue
        stem = name.removesuffix(".weight")
        data: np.ndarray
        if stem in kept:
            # [rows, bytes per row]: a row permutation (the rope unpermute below) moves whole rows of blocks
            data = np.array(t.data).reshape(int(t.shape[-1]), -1)
        else:
            data = np.array(gguf.quants.dequantize(t.data, t.tensor_type))
            data = data.reshape([int(x) for x in reversed(t.shape.tolist())])
        # GGUF shapes list the fastest dimension first; numpy's are already row-major. np.array
        # above made a writable copy: torch must not alias the read-only mmap
        tensor = torch.from_numpy(data)
        if permute and name.endswith("self_attn.q_proj.weight"):
            tensor = _unpermute_rope(tensor, n_heads)
        elif permute and name.endswith("self_attn.k_proj.weight"):
            tensor = _unpermute_rope(tensor, n_kv)
        yield (f"{stem}.qweight", tensor) if stem in kept else (name, tensor.to(dtype))


def _pickled_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "*.bin")) + glob.glob(os.path.join(directory, "*.pt")))


def iter_safetensors(
    directory: str, dtype: torch.dtype, quant: QuantConfig | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors in `dtype`, except those of `quant`'s quantized layers: converted to their
    canonical layout (octavo.quantization.layouts), in their own dtypes."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        if _pickled_files(directory):
            raise ValueError(
                f"{directory} has only pickled weights (.bin/.pt), which can run arbitrary code when loaded; "
                "convert them to safetensors (e.g. transformers' save_pretrained(safe_serialization=True)), or, "
                "for a checkpoint you trust, pass --load-format pt (load_format='pt'), which loads pickles"
            )
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    rows = _quantized_rows(files, quant) if quant else {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                stem, _, suffix = name.rpartition(".")
                if stem not in rows or suffix == "bias":
                    yield name, st.get_tensor(name).to(dtype)
                    continue
                assert quant is not None  # rows is empty without it
                tensor = st.get_tensor(name)
                converted = convert(quant.format, quant.layers[stem], suffix, tensor, rows[stem], quant.zeros_offset)
                if converted is not None:
                    yield f"{stem}.{converted[0]}", converted[1]


def _quantized_rows(files: list[str], quant: QuantConfig) -> dict[str, int]:
    """Each quantized layer's output features, from the files' headers (a per-tensor or block
    scale is spread over them)."""
    from safetensors import safe_open

    rows = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                stem, _, suffix = name.rpartition(".")
                if stem not in quant.layers:
                    continue
                shape = st.get_slice(name).get_shape()
                if suffix in ("weight", "weight_packed"):  # [out, in] and compressed-tensors' [out, in / 8]
                    rows[stem] = shape[0]
                elif suffix == "qweight":  # GPTQ [in / 8, out]; AWQ [in, out / 8]
                    rows[stem] = shape[1] * (8 if quant.format == "awq" else 1)
    return rows


def init_dummy(model: torch.nn.Module, seed: int) -> None:
    """Random weights at real shapes (benchmarks): small normal values, norms at 1.

    Filled in place on the parameters' device, so an 8B model does not pass through the CPU.
    """
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if p.dim() == 1 and "norm" in name:
                p.fill_(1.0)
            elif not p.is_floating_point() or p.dtype == torch.float8_e4m3fn or name.endswith(".scales"):
                _dummy_quantized(name, p, seed + i)
            else:
                g = torch.Generator(device=p.device).manual_seed(seed + i)
                p.normal_(0.0, 0.02, generator=g)


def _dummy_quantized(name: str, p: torch.Tensor, seed: int) -> None:
    """A quantized layer's tensor (octavo.quantization.scheme's layouts) with random contents
    whose dequantized weights are small, like init_dummy's dense ones."""
    g = torch.Generator(device=p.device).manual_seed(seed)
    if name.endswith(".scales"):
        p.fill_(0.004)  # int4 steps of 0.004 (|w| < 0.03); fp8 / int8 values are scaled likewise
    elif name.endswith(".g_idx"):
        p.copy_(torch.arange(p.numel(), device=p.device) // 128)
    elif p.dtype == torch.float8_e4m3fn:
        p.copy_(torch.randn(p.shape, generator=g, device=p.device).mul_(4.0).to(p.dtype))
    elif p.dtype == torch.uint8 and name.endswith(".qweight") and p.dim() == 2:
        p.random_(0, 256, generator=g)  # two int4 values per byte
    else:
        p.random_(0, 16, generator=g)


def iter_pickled(directory: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """PyTorch's pickled checkpoints (--load-format pt, the user's opt-in). torch's restricted
    unpickler (weights_only) refuses most code a pickle could run, but not every risk."""
    files = [f for f in _pickled_files(directory) if not f.endswith("training_args.bin")]
    if not files:
        raise FileNotFoundError(f"no pickled weights (*.bin, *.pt) in {directory} (--load-format pt)")
    for f in files:
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        for name, tensor in state.items():
            yield name, tensor.to(dtype)


def iter_weights(
    source: ModelSource,
    hf_config,
    dtype: torch.dtype,
    quant: QuantConfig | None = None,
    kept: Mapping[str, QuantScheme] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs for the model's `load_weights`: quantized layers `kept` (as
    `octavo.quantization.apply.quantize_linears` returned them) in their canonical layout."""
    if source.is_gguf:
        return iter_gguf(source.weights_path, hf_config, dtype, kept)
    if source.pickled and not glob.glob(os.path.join(source.directory, "*.safetensors")):
        if quant is not None:
            raise ValueError("quantized checkpoints load from safetensors files only, not pickled (.bin/.pt) ones")
        return iter_pickled(source.directory, dtype)
    return iter_safetensors(source.directory, dtype, quant)
