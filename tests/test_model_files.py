"""Corrupt and hostile model files are refused with a clear error before anything is allocated
for them (octavo.loader.file_checks; issue 19, part 4).

The header readers are checked against the reference readers (the safetensors and gguf
packages) on files those packages wrote, then fed hand-made hostile headers and, under
Hypothesis, mutations of valid files: they either agree with the reference reader or raise
ModelFileError, never anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from octavo.loader.file_checks import (
    CONFIG_LIMITS,
    ModelFileError,
    check_config_dims,
    gguf_header,
    safetensors_extents,
)

FUZZ = settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---- valid files, written by the reference writers ---------------------------------------------
def write_safetensors(path: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(4, 6, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.float16),
        "c.ids": torch.arange(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    save_file(tensors, path, metadata={"format": "pt"})
    return tensors


def write_gguf(path: str) -> None:
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "bc", "<s>", "\u00e9t\u00e9"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0, 3.0])
    w.add_float32("llama.rope.freq_base", 10000.0)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 32), dtype=np.float32))
    w.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("valid")
    write_safetensors(str(d / "m.safetensors"))
    write_gguf(str(d / "m.gguf"))
    return {kind: (d / f"m.{kind}").read_bytes() for kind in ("safetensors", "gguf")}


def test_safetensors_extents_match_the_reference_reader(tmp_path):
    path = str(tmp_path / "m.safetensors")
    tensors = write_safetensors(path)
    data = open(path, "rb").read()
    extents = {e.name: e for e in safetensors_extents(path)}
    assert set(extents) == set(tensors)
    with safe_open(path, framework="pt") as f:
        for name in f.keys():
            ref = f.get_tensor(name)
            e = extents[name]
            assert e.shape == tuple(ref.shape)
            assert data[e.start : e.start + e.nbytes] == ref.numpy().tobytes()


def test_gguf_header_matches_the_reference_reader(tmp_path):
    import gguf

    path = str(tmp_path / "m.gguf")
    write_gguf(path)
    header = gguf_header(path)
    ref = gguf.GGUFReader(path)
    assert [(e.name, e.start, e.nbytes) for e in header.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in ref.tensors
    ]
    assert [e.shape for e in header.tensors] == [tuple(int(x) for x in reversed(t.shape.tolist())) for t in ref.tensors]
    assert header.tensor_types == {t.name: int(t.tensor_type) for t in ref.tensors}
    assert header.metadata["general.name"] == "tiny" and header.metadata["tokenizer.ggml.tokens"] == 4


def test_the_default_model_passes(tmp_path):
    from octavo.loader.source import resolve_model_source

    source = resolve_model_source("smollm2")
    header = gguf_header(source.weights_path)
    assert len(header.tensors) > 100 and header.metadata["general.architecture"] == "llama"


# ---- hand-made hostile headers ------------------------------------------------------------------
def _safetensors(header: dict | bytes, data: bytes = b"", claimed: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if claimed is None else claimed) + raw + data


F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
HOSTILE_SAFETENSORS = {
    "absurd header length": (_safetensors({"a": F32_2x2}, bytes(16), claimed=2**63), "header claims"),
    "header past the end": (_safetensors({"a": F32_2x2}, claimed=10_000), "truncated"),
    "truncated data": (_safetensors({"a": F32_2x2}, bytes(10)), "truncated"),
    "absurd shape": (
        _safetensors({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, bytes(16)),
        "do not hold",
    ),
    "overlapping offsets": (
        _safetensors({"a": F32_2x2, "b": {**F32_2x2, "data_offsets": [8, 24]}}, bytes(24)),
        "overlap",
    ),
    "negative offset": (_safetensors({"a": {**F32_2x2, "data_offsets": [-16, 0]}}, bytes(16)), "data_offsets"),
    "unknown dtype": (_safetensors({"a": {**F32_2x2, "dtype": "F128"}}, bytes(16)), "dtype"),
    "not json": (_safetensors(b"{not json", bytes(16)), "JSON"),
    "nested json": (_safetensors(b"[" * 100_000 + b"]" * 100_000), "JSON"),
    "tiny file": (b"\x01\x02", "truncated"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SAFETENSORS))
def test_hostile_safetensors_is_refused(tmp_path, case):
    data, words = HOSTILE_SAFETENSORS[case]
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=words) as e:
        safetensors_extents(str(path))
    assert str(path) in str(e.value)


def _gguf(n_tensors: int, n_kv: int, body: bytes, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def _gstr(s: str, claimed: int | None = None) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw) if claimed is None else claimed) + raw


def _tensor_info(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return (
        _gstr(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


_KV = _gstr("general.architecture") + struct.pack("<I", 8) + _gstr("llama")
HOSTILE_GGUF = {
    "bogus tensor count": (_gguf(2**60, 1, _KV), "claims"),
    "bogus metadata count": (_gguf(0, 2**62, _KV), "claims"),
    "bogus string length": (
        _gguf(0, 1, _gstr("general.architecture") + struct.pack("<I", 8) + _gstr("x", 2**62)),
        "past the end",
    ),
    "bogus key length": (_gguf(0, 1, _gstr("k", 2**40) + bytes(64)), "past the end"),
    "bogus array length": (
        _gguf(0, 1, _gstr("tokens") + struct.pack("<IIQ", 9, 8, 2**61) + _gstr("a")),
        "claims",
    ),
    "bogus scalar array length": (_gguf(0, 1, _gstr("scores") + struct.pack("<IIQ", 9, 6, 2**61)), "past the end"),
    "unknown value type": (_gguf(0, 1, _gstr("k") + struct.pack("<I", 77) + bytes(16)), "unknown value type"),
    "unknown tensor type": (_gguf(1, 1, _KV + _tensor_info("t", [4], ggml_type=99)) + bytes(64), "unknown ggml type"),
    "too many dims": (_gguf(1, 1, _KV + _tensor_info("t", [1] * 9)) + bytes(64), "dimensions"),
    "zero dim": (_gguf(1, 1, _KV + _tensor_info("t", [4, 0])) + bytes(64), "dimensions"),
    "blocks do not fit": (_gguf(1, 1, _KV + _tensor_info("t", [33], ggml_type=8)) + bytes(64), "blocks"),
    "offset past the end": (_gguf(1, 1, _KV + _tensor_info("t", [4], offset=2**40)) + bytes(64), "truncated"),
    "unaligned offset": (_gguf(1, 1, _KV + _tensor_info("t", [4], offset=3)) + bytes(64), "multiple of"),
    "truncated data": (_gguf(1, 1, _KV + _tensor_info("t", [4096])) + bytes(64), "truncated"),
    "overlapping tensors": (
        _gguf(2, 1, _KV + _tensor_info("a", [8]) + _tensor_info("b", [8], offset=0)) + bytes(128),
        "overlap",
    ),
    "duplicate tensor": (
        _gguf(2, 1, _KV + _tensor_info("a", [8]) + _tensor_info("a", [8], offset=32)) + bytes(128),
        "twice",
    ),
    "version 1": (_gguf(0, 0, b"", version=1), "version 1"),
    "not gguf": (b"GGML" + bytes(60), "magic"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_GGUF))
def test_hostile_gguf_is_refused(tmp_path, case):
    data, words = HOSTILE_GGUF[case]
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=words) as e:
        gguf_header(str(path))
    assert str(path) in str(e.value)


# ---- fuzz: mutations of valid files -------------------------------------------------------------
def _mutations(size: int):
    """Byte flips, truncations and 8-byte overwrites (counts, lengths, offsets) of a file of `size` bytes."""
    spot = st.integers(0, size - 1)
    flip = st.tuples(st.just("flip"), spot, st.integers(1, 255))
    cut = st.tuples(st.just("cut"), spot, st.just(0))
    word = st.tuples(st.just("u64"), spot, st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**64 - 1]))
    return st.lists(st.one_of(flip, cut, word), min_size=1, max_size=4)


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, at, value in edits:
        at = min(at, len(out) - 1) if out else 0
        if kind == "flip" and out:
            out[at] ^= value
        elif kind == "cut":
            del out[at:]
        elif kind == "u64":
            out[at : at + 8] = struct.pack("<Q", value)
    return bytes(out)


@FUZZ
@given(edits=st.data())
def test_fuzzed_safetensors_is_read_as_the_reference_does_or_refused(valid, tmp_path, edits):
    data = _mutate(valid["safetensors"], edits.draw(_mutations(len(valid["safetensors"]))))
    path = str(tmp_path / "f.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    try:
        extents = safetensors_extents(path)
    except ModelFileError:
        return
    try:  # accepted: the reference reader must find the same tensors, byte for byte
        with safe_open(path, framework="np") as f:
            ref = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError:
        return  # safetensors also refuses holes between tensors, which do no harm
    assert {e.name: e.shape for e in extents} == {n: t.shape for n, t in ref.items()}
    for e in extents:
        assert data[e.start : e.start + e.nbytes] == ref[e.name].tobytes()


@FUZZ
@given(edits=st.data())
def test_fuzzed_gguf_is_read_as_the_reference_does_or_refused(valid, tmp_path, edits):
    import gguf

    data = _mutate(valid["gguf"], edits.draw(_mutations(len(valid["gguf"]))))
    path = str(tmp_path / "f.gguf")
    with open(path, "wb") as f:
        f.write(data)
    try:
        header = gguf_header(path)
    except ModelFileError:
        return
    ref = gguf.GGUFReader(path)  # accepted: the reference reader must not fail, and agree
    assert [(e.name, e.start, e.nbytes) for e in header.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in ref.tensors
    ]


# ---- config.json ------------------------------------------------------------------------------
def tiny_llama(**over):
    from transformers import LlamaConfig

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return LlamaConfig(**{**base, "num_key_value_heads": 2, "vocab_size": 1000, **over})


@pytest.mark.parametrize(
    "field, value",
    [("hidden_size", 10**9), ("num_hidden_layers", 0), ("vocab_size", -5), ("intermediate_size", 2.5)]
    + [("num_attention_heads", CONFIG_LIMITS["num_attention_heads"] + 1), ("max_position_embeddings", 2**40)],
)
def test_absurd_config_dimensions_are_refused(field, value):
    # as the values stand in config.json (transformers' own checks catch some types, not sizes)
    config = SimpleNamespace(**{**tiny_llama().to_dict(), field: value})
    with pytest.raises(ModelFileError, match=field):
        check_config_dims(config, 0, "m")


def test_a_config_larger_than_its_weights_is_refused():
    config = tiny_llama(num_hidden_layers=4000, intermediate_size=100_000)
    check_config_dims(config, 10**12, "m")  # weights large enough
    with pytest.raises(ModelFileError, match="does not belong to these weights"):
        check_config_dims(config, 10**6, "m")
    with pytest.raises(ModelFileError, match="not a multiple"):
        check_config_dims(tiny_llama(num_key_value_heads=3), 0, "m")


def test_the_engine_refuses_a_hostile_model_before_building_it(tiny_model_dirs, tmp_path):
    """Through the engine's configuration, the step before the model is built: the error names the file."""
    from octavo.engine_args import EngineArgs
    from octavo.engine_config import create_engine_config

    path = str(shutil.copytree(tiny_model_dirs["llama"], tmp_path / "m"))
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:  # truncate the data: the header now promises bytes that are gone
        f.truncate(os.path.getsize(weights) - 100)
    with pytest.raises(ModelFileError, match="truncated"):
        create_engine_config(EngineArgs(model=path, device="cpu"))
    path = str(shutil.copytree(tiny_model_dirs["llama"], tmp_path / "big"))
    config = json.load(open(os.path.join(path, "config.json")))
    json.dump({**config, "num_hidden_layers": 4000, "hidden_size": 65536}, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(ModelFileError, match="does not belong to these weights"):
        create_engine_config(EngineArgs(model=path, device="cpu"))
