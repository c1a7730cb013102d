"""Weight iterators yielding (Hugging Face parameter name, tensor): safetensors, GGUF, dummy."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator

import numpy as np
import torch

from octavo.loader.source import ModelSource

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


def iter_gguf(path: str, hf_config, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    permute = arch == "llama"  # the converter permutes q/k rows for llama-arch models only
    n_heads = hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        # GGUF shapes list the fastest dimension first; numpy's are already row-major
        arr = np.array(data)  # a writable copy: torch must not alias the read-only mmap
        arr = arr.reshape([int(x) for x in reversed(t.shape.tolist())])
        tensor = torch.from_numpy(arr)
        m = _LAYER_RE.match(t.name)
        if m:
            layer, kind, suffix = m.groups()
            if kind not in _GGUF_LAYER:
                raise ValueError(f"GGUF tensor {t.name!r} is not supported")
            if permute and kind == "attn_q":
                tensor = _unpermute_rope(tensor, n_heads)
            elif permute and kind == "attn_k":
                tensor = _unpermute_rope(tensor, n_kv)
            name = f"model.layers.{layer}.{_GGUF_LAYER[kind]}.{suffix}"
        elif t.name in _GGUF_GLOBAL:
            name = _GGUF_GLOBAL[t.name]
        elif t.name.startswith("rope_freqs"):
            continue  # llama3 rope factors: we compute them from the config
        else:
            raise ValueError(f"GGUF tensor {t.name!r} is not supported")
        yield name, tensor.to(dtype)


def _pickled_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "*.bin")) + glob.glob(os.path.join(directory, "*.pt")))


def iter_safetensors(directory: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
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
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name).to(dtype)


def init_dummy(model: torch.nn.Module, seed: int) -> None:
    """Random weights at real shapes (benchmarks): small normal values, norms at 1.

    Filled in place on the parameters' device, so an 8B model does not pass through the CPU.
    """
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if p.dim() == 1 and "norm" in name:
                p.fill_(1.0)
            else:
                g = torch.Generator(device=p.device).manual_seed(seed + i)
                p.normal_(0.0, 0.02, generator=g)


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


def iter_weights(source: ModelSource, hf_config, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    if source.is_gguf:
        return iter_gguf(source.weights_path, hf_config, dtype)
    if source.pickled and not glob.glob(os.path.join(source.directory, "*.safetensors")):
        return iter_pickled(source.directory, dtype)
    return iter_safetensors(source.directory, dtype)
