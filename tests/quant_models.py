"""Tiny quantized checkpoints, each written in its format's layout from that format's
specification (or by its own library: compressed-tensors; the gguf package for the
metadata and the Q4_0 / Q4_1 / Q8_0 quantizers), next to the dequantized weights the
quantizer produced, saved as a dense Hugging Face directory: the reference to compare with.

The quantizers here are simple (min/max scales); any valid encoding will do, since the
tests compare a quantized checkpoint with its own dequantized weights.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import torch

#: the linear layers of a Llama checkpoint, per decoder layer
LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _state(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        state.update(load_file(f))
    return state


def _linear_stems(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n.removesuffix(".weight") for n in state if n.endswith(".weight") and n.split(".")[-2] in
                  {s.split(".")[-1] for s in LINEARS})  # fmt: skip


def _save(src: str, dst: str, state: dict[str, torch.Tensor], quantization_config: dict | None) -> str:
    """A copy of model directory `src` with `state` as its weights (and the quantization_config)."""
    from safetensors.torch import save_file

    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(src, f), dst)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json")) as fh:
        config = json.load(fh)
    config.pop("quantization_config", None)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    with open(os.path.join(dst, "config.json"), "w") as fh:
        json.dump(config, fh)
    return dst


# ---- INT4: GPTQ and AWQ ---------------------------------------------------------------------
def _int4_groups(w: torch.Tensor, group_of: torch.Tensor, groups: int, min_zero: int = 0):
    """Asymmetric 4-bit min/max quantization of w [out, in] by input group: (q, scales, zeros),
    [out, in] and [out, groups], with w ~ (q - zeros[:, g]) * scales[:, g]."""
    lo = torch.stack([w[:, group_of == g].amin(1).clamp(max=0) for g in range(groups)], 1)
    hi = torch.stack([w[:, group_of == g].amax(1).clamp(min=0) for g in range(groups)], 1)
    scales = ((hi - lo) / 15).clamp(min=1e-6).half().float()
    zeros = torch.round(-lo / scales).clamp(min_zero, 15)
    q = torch.clamp(torch.round(w / scales[:, group_of]) + zeros[:, group_of], 0, 15)
    return q.to(torch.int32), scales, zeros.to(torch.int32)


def _pack_nibbles(values: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """int32 [..., 8n] (0..15) -> int32 [..., n]: element 8c + order[i] in bits 4i of word c."""
    v = values.reshape(*values.shape[:-1], -1, 8)
    words = torch.zeros(v.shape[:-1], dtype=torch.int64)
    for i, j in enumerate(order):
        words |= v[..., j].long() << (4 * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the bits of an unsigned word


def write_gptq(src: str, dst: str, dense_dst: str, group: int, act_order: bool) -> str:
    """GPTQ (AutoGPTQ's original format: qzeros hold zero - 1), with act-order a shuffled g_idx."""
    state, dense = _state(src), _state(src)
    for stem in _linear_stems(state):
        w = state.pop(f"{stem}.weight").float()
        out, inp = w.shape
        group_of = torch.arange(inp) // group
        if act_order:  # inputs in an order of their own, as GPTQ's desc_act sorts them
            perm = torch.randperm(inp, generator=torch.Generator().manual_seed(inp))
            group_of = torch.empty(inp, dtype=torch.long)
            group_of[perm] = torch.arange(inp) // group
        # zero - 1 is stored: GPTQ's original format cannot hold a zero point of 0
        q, scales, zeros = _int4_groups(w, group_of, inp // group, min_zero=1)
        dense[f"{stem}.weight"] = (q - zeros[:, group_of]) * scales[:, group_of]
        state[f"{stem}.qweight"] = _pack_nibbles(q).T.contiguous()  # [in / 8, out], packed along inputs
        state[f"{stem}.qzeros"] = _pack_nibbles(zeros.T.contiguous() - 1)  # [groups, out / 8]
        state[f"{stem}.scales"] = scales.T.half().contiguous()
        state[f"{stem}.g_idx"] = group_of.to(torch.int32)
    _save(src, dense_dst, dense, None)
    cfg = {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": act_order, "sym": False}
    return _save(src, dst, state, cfg)


def write_awq(src: str, dst: str, dense_dst: str, group: int) -> str:
    """AWQ's GEMM layout: qweight [in, out / 8] and qzeros packed along outputs in AWQ's nibble order."""
    order = (0, 2, 4, 6, 1, 3, 5, 7)
    state, dense = _state(src), _state(src)
    for stem in _linear_stems(state):
        w = state.pop(f"{stem}.weight").float()
        inp = w.shape[1]
        group_of = torch.arange(inp) // group
        q, scales, zeros = _int4_groups(w, group_of, inp // group)
        dense[f"{stem}.weight"] = (q - zeros[:, group_of]) * scales[:, group_of]
        state[f"{stem}.qweight"] = _pack_nibbles(q.T.contiguous(), order)
        state[f"{stem}.qzeros"] = _pack_nibbles(zeros.T.contiguous(), order)
        state[f"{stem}.scales"] = scales.T.half().contiguous()
    _save(src, dense_dst, dense, None)
    cfg = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
    return _save(src, dst, state, cfg)


# ---- compressed-tensors (by its own library) ---------------------------------------------------
def write_compressed_tensors(src: str, dst: str, dense_dst: str, kind: str) -> str:
    """`kind` "int4" (pack-quantized, symmetric, group 32, weight-only), "int8" or "fp8"
    (per-channel weights, dynamic per-token activations), compressed and decompressed (the
    dense reference) by the compressed-tensors library."""
    from compressed_tensors.compressors import (
        FloatQuantizationCompressor,
        IntQuantizationCompressor,
        PackedQuantizationCompressor,
    )
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    acts = None
    if kind == "int4":
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
        fmt, compressor = "pack-quantized", PackedQuantizationCompressor
    else:
        t = "int" if kind == "int8" else "float"
        weights = QuantizationArgs(num_bits=8, type=t, symmetric=True, strategy="channel")
        acts = QuantizationArgs(num_bits=8, type=t, symmetric=True, strategy="token", dynamic=True)
        fmt = "int-quantized" if kind == "int8" else "float-quantized"
        compressor = IntQuantizationCompressor if kind == "int8" else FloatQuantizationCompressor
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    state, dense = _state(src), _state(src)
    for stem in _linear_stems(state):
        w = state.pop(f"{stem}.weight").float()
        blocks = w.reshape(w.shape[0], -1, 32) if kind == "int4" else w.unsqueeze(1)
        scale, zero = calculate_qparams(blocks.amin(-1), blocks.amax(-1), weights)
        parts = compressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zero}, scheme)
        dense[f"{stem}.weight"] = compressor.decompress(dict(parts), scheme)["weight"].float()
        state.update({f"{stem}.{k}": v for k, v in parts.items()})
    _save(src, dense_dst, dense, None)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, ignore=["lm_head"])
    cfg = config.to_dict()
    cfg["quant_method"] = "compressed-tensors"
    return _save(src, dst, state, cfg)


# ---- FP8 with block scales (DeepSeek's layout) --------------------------------------------------
def write_fp8_block(src: str, dst: str, dense_dst: str, block: int = 128) -> str:
    """weight float8_e4m3fn [out, in] and weight_scale_inv [ceil(out / b), ceil(in / b)], the
    multiplier that dequantizes each b x b block."""
    state, dense = _state(src), _state(src)
    for stem in _linear_stems(state):
        w = state.pop(f"{stem}.weight").float()
        out, inp = w.shape
        r, c = -(-out // block), -(-inp // block)
        padded = torch.zeros(r * block, c * block)
        padded[:out, :inp] = w
        amax = padded.reshape(r, block, c, block).abs().amax(dim=(1, 3))
        scale = (amax / 448).clamp(min=1e-8)
        full = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out, :inp]
        q = (w / full).to(torch.float8_e4m3fn)
        dense[f"{stem}.weight"] = q.float() * full
        state[f"{stem}.weight"], state[f"{stem}.weight_scale_inv"] = q, scale
    _save(src, dense_dst, dense, None)
    cfg = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [block, block]}
    return _save(src, dst, state, cfg)


# ---- GGUF ------------------------------------------------------------------------------------
def _k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per block -> the 12 bytes llama.cpp's get_scale_min_k4 reads."""
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    for j in range(4):
        out[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        out[:, j + 4] = (mn[:, j] & 63) | ((mn[:, j + 4] >> 4) << 6)
        out[:, j + 8] = (sc[:, j + 4] & 0xF) | ((mn[:, j + 4] & 0xF) << 4)
    return out


def _k_affine(x: np.ndarray, levels: int):
    """Q4_K / Q5_K: per 32-value sub-block x ~ d * sc * q - dmin * m, q in 0..levels."""
    sub = x.reshape(-1, 8, 32)
    lo, hi = np.minimum(sub.min(-1), 0), np.maximum(sub.max(-1), 0)
    scale, mins = (hi - lo) / levels, -lo
    d = (scale.max(-1) / 63).astype(np.float16)
    dmin = (mins.max(-1) / 63).astype(np.float16)
    df, dminf = np.maximum(d.astype(np.float32), 1e-8), np.maximum(dmin.astype(np.float32), 1e-8)
    sc = np.clip(np.round(scale / df[:, None]), 1, 63).astype(np.uint8)
    mn = np.clip(np.round(mins / dminf[:, None]), 0, 63).astype(np.uint8)
    step = (d.astype(np.float32)[:, None] * sc)[..., None]
    off = (dmin.astype(np.float32)[:, None] * mn)[..., None]
    q = np.clip(np.round((sub + off) / np.maximum(step, 1e-8)), 0, levels).astype(np.uint8).reshape(-1, 256)
    head = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), _k_scales(sc, mn)], 1)
    return head, q


def _low_nibbles(q: np.ndarray) -> np.ndarray:
    """128 bytes: chunk c's byte l holds value 64c + l (low nibble) and 64c + 32 + l (high)."""
    c = q.reshape(-1, 4, 2, 32) & 0xF
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    head, q = _k_affine(x, 15)
    return np.concatenate([head, _low_nibbles(q)], 1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    head, q = _k_affine(x, 31)
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for c in range(4):  # value 64c + l's fifth bit is bit 2c of qh[l], 64c + 32 + l's bit 2c + 1
        qh |= ((q[:, 64 * c : 64 * c + 32] >> 4) << (2 * c)).astype(np.uint8)
        qh |= ((q[:, 64 * c + 32 : 64 * c + 64] >> 4) << (2 * c + 1)).astype(np.uint8)
    return np.concatenate([head, qh, _low_nibbles(q)], 1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Per 16-value sub-block x ~ d * sc * (q - 32), sc int8, q in 0..63."""
    sub = x.reshape(-1, 16, 16)
    scale = np.abs(sub).max(-1) / 31
    d = (scale.max(-1) / 127).astype(np.float16)
    sc = np.clip(np.round(scale / np.maximum(d.astype(np.float32), 1e-8)[:, None]), 1, 127).astype(np.int8)
    step = np.maximum(d.astype(np.float32)[:, None] * sc, 1e-8)[..., None]
    q = (np.clip(np.round(sub / step), -32, 31) + 32).astype(np.uint8).reshape(-1, 256)
    ql, qh = np.zeros((q.shape[0], 128), np.uint8), np.zeros((q.shape[0], 64), np.uint8)
    for n in range(2):
        v = q[:, 128 * n : 128 * n + 128]
        q1, q2, q3, q4 = v[:, 0:32], v[:, 32:64], v[:, 64:96], v[:, 96:128]
        ql[:, 64 * n : 64 * n + 32] = (q1 & 0xF) | ((q3 & 0xF) << 4)
        ql[:, 64 * n + 32 : 64 * n + 64] = (q2 & 0xF) | ((q4 & 0xF) << 4)
        qh[:, 32 * n : 32 * n + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], 1)


def quantize_gguf(x: np.ndarray, gguf_type: str) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, bytes] in `gguf_type`: the gguf package's quantizer
    where it has one (Q4_0, Q4_1, Q8_0), the ones above for the K types."""
    import gguf

    k_types = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}
    if gguf_type in k_types:
        return k_types[gguf_type](x.astype(np.float32)).reshape(x.shape[0], -1)
    return gguf.quants.quantize(x.astype(np.float32), gguf.GGMLQuantizationType[gguf_type])


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    keep += list(range(ord("\xae"), ord("\xff") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tokenizer_fields(writer, vocab: int) -> None:
    """A byte-level BPE tokenizer of `vocab` tokens (the 256 bytes, then merges of letter
    pairs) in llama.cpp's metadata, so that converting the file's tokenizer takes no time."""
    import gguf

    tokens = _byte_tokens()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = []
    for a in letters:
        for b in letters:
            if len(tokens) < vocab:
                tokens.append(a + b)
                merges.append(f"{a} {b}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def write_gguf(src: str, path: str, types: dict[str, str]) -> str:
    """Tiny Llama HF directory `src` as a llama.cpp GGUF file: a small byte-level tokenizer,
    q/k rows permuted as llama.cpp's converter does, and each linear in `types[stem]` (e.g.
    {"model.layers.0.mlp.down_proj": "Q4_K"}; others float32)."""
    import gguf

    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    state = _state(src)
    writer = gguf.GGUFWriter(path, "llama")
    write_tokenizer_fields(writer, cfg["vocab_size"])
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    for name, tensor in sorted(state.items()):
        w = tensor.float().numpy()
        stem = name.removesuffix(".weight")
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, part = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{layer}.{_GGUF_NAMES[part.removesuffix('.weight')]}.weight"
            if part.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                n = heads if part.startswith("self_attn.q_proj") else kv_heads
                w = w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if stem in types:
            kind = gguf.GGMLQuantizationType[types[stem]]
            writer.add_tensor(gname, quantize_gguf(w, types[stem]), raw_dtype=kind)
        else:
            writer.add_tensor(gname, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
