"""Model files checked before anything trusts them: safetensors and GGUF headers, config.json's dimensions.

A model file is input from whoever published it. Its header says how large each tensor is and
where it lies; a reader that believes a corrupt or hostile header allocates what the header
claims (a string of 2**63 bytes, 10**12 array items, a model of 10**13 parameters) or reads past
the end of a truncated file. These readers walk the headers themselves, check every count,
length, type and offset against the file's real size, and raise `ModelFileError` naming the
file and the field before the safetensors, gguf or transformers readers see the file.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

#: safetensors' own limit on the JSON header (its Rust reader refuses larger ones)
MAX_SAFETENSORS_HEADER = 100_000_000
#: bits per element of each safetensors dtype
SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
#: ggml's limit on a tensor's dimensions
GGUF_MAX_DIMS = 4
#: GGUF metadata value types: fixed sizes (struct format), 8 = string, 9 = array
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_UINT32, _GGUF_STRING, _GGUF_ARRAY = 4, 8, 9
#: arrays of arrays deeper than this are refused (llama.cpp writes none)
_GGUF_MAX_NESTING = 2
#: the fewest bytes one metadata pair (key length, type, a one-byte value) and one tensor info
#: (name length, n_dims, one dimension, type, offset) can take: bounds on the claimed counts
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8


class ModelFileError(ValueError):
    """A model file that is corrupt, truncated, or claims sizes it cannot have."""


@dataclass(frozen=True)
class TensorExtent:
    """Where one tensor's bytes lie in its file (offsets from the start of the file)."""

    name: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


# ---- safetensors -------------------------------------------------------------------------------
def safetensors_extents(path: str) -> list[TensorExtent]:
    """The tensors of a .safetensors file, every header field checked against the file's size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise ModelFileError(f"{path}: truncated ({size} bytes; a safetensors file starts with an 8-byte length)")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > size:
            raise ModelFileError(
                f"{path}: the header claims {header_len} bytes but the file has {size} (the most allowed is "
                f"{MAX_SAFETENSORS_HEADER}): the file is truncated or not a safetensors file"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise ModelFileError(f"{path}: the header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the header is not a JSON object")
    data_start, data_len = 8 + header_len, size - 8 - header_len
    extents = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ModelFileError(f"{path}: __metadata__ must map strings to strings")
            continue
        begin, end, shape = _safetensors_entry(path, name, entry)
        if end > data_len:
            raise ModelFileError(
                f"{path}: tensor {name!r} ends at byte {end} of the data, which has {data_len}: the file is truncated"
            )
        extents.append(TensorExtent(name, shape, data_start + begin, end - begin))
    _check_disjoint(path, extents)
    return extents


def _safetensors_entry(path: str, name: str, entry: Any) -> tuple[int, int, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise ModelFileError(f"{path}: tensor {name!r}: its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_BITS:
        raise ModelFileError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelFileError(f"{path}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ModelFileError(f"{path}: tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if end < begin or bits % 8 or end - begin != bits // 8:
        raise ModelFileError(
            f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] do not hold a {dtype} tensor of shape {shape}"
        )
    return begin, end, tuple(shape)


# ---- GGUF ---------------------------------------------------------------------------------------
class _Reader:
    """Reads a file front to back; every read is checked against the bytes left."""

    def __init__(self, f: BinaryIO, size: int, path: str) -> None:
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise ModelFileError(f"{self.path}: {what} needs {n} bytes at offset {self.pos}, past the end of the file")
        self.pos += n
        data = self.f.read(n)
        assert len(data) == n  # the size was taken from the same file
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.left():
            raise ModelFileError(f"{self.path}: {what} needs {n} bytes at offset {self.pos}, past the end of the file")
        self.pos += n
        self.f.seek(self.pos)

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", f"the length of {what}")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.path}: {what} is not UTF-8") from None


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # scalars and strings; arrays are checked and skipped (their length kept)
    tensors: list[TensorExtent]
    tensor_types: dict[str, int]


def gguf_header(path: str) -> GGUFHeader:
    """The metadata and tensors of a GGUF file (v2 or v3), every count, length, type and offset
    checked against the file's size before anything is allocated for it."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, size, path)
        if r.take(4, "the magic number") != b"GGUF":
            raise ModelFileError(f"{path}: not a GGUF file (no 'GGUF' magic number)")
        version = r.unpack("I", "the version")
        if version not in (2, 3):
            raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = r.unpack("Q", "the tensor count"), r.unpack("Q", "the metadata count")
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > r.left():
            raise ModelFileError(
                f"{path}: the header claims {n_tensors} tensors and {n_kv} metadata entries, more than "
                f"the file's {size} bytes can hold"
            )
        metadata, types = _gguf_metadata(r, n_kv)
        alignment = metadata.get("general.alignment", 32)
        if types.get("general.alignment", _GGUF_UINT32) != _GGUF_UINT32 or alignment < 1 or alignment & (alignment - 1):
            raise ModelFileError(f"{path}: general.alignment {alignment!r} is not a power of two (a uint32)")
        infos = [_gguf_tensor_info(r, i) for i in range(n_tensors)]
    data_start = -(-r.pos // alignment) * alignment
    extents, types = [], {}
    for name, shape, ggml_type, offset, nbytes in infos:
        if name in types:
            raise ModelFileError(f"{path}: tensor {name!r} is listed twice")
        if offset % alignment:
            raise ModelFileError(f"{path}: tensor {name!r}: offset {offset} is not a multiple of {alignment}")
        if data_start + offset + nbytes > size:
            raise ModelFileError(
                f"{path}: tensor {name!r} ends at byte {data_start + offset + nbytes}, past the end of the file "
                f"({size} bytes): the file is truncated"
            )
        types[name] = ggml_type
        extents.append(TensorExtent(name, shape, data_start + offset, nbytes))
    _check_disjoint(path, extents)
    return GGUFHeader(version, metadata, extents, types)


def _gguf_metadata(r: _Reader, count: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The metadata's values (an array's: its length) and value types, by key."""
    metadata: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(count):
        key = r.string("a metadata key")
        if key in metadata:
            raise ModelFileError(f"{r.path}: metadata key {key!r} is listed twice")
        types[key] = r.unpack("I", f"the type of {key}")
        metadata[key] = _gguf_value(r, types[key], key, 0)
    return metadata, types


def _gguf_value(r: _Reader, vtype: int, key: str, depth: int) -> Any:
    if vtype in _GGUF_SCALARS:
        return r.unpack(_GGUF_SCALARS[vtype], key)
    if vtype == _GGUF_STRING:
        return r.string(key)
    if vtype != _GGUF_ARRAY:
        raise ModelFileError(f"{r.path}: metadata {key!r} has unknown value type {vtype}")
    if depth >= _GGUF_MAX_NESTING:
        raise ModelFileError(f"{r.path}: metadata {key!r} nests arrays more than {_GGUF_MAX_NESTING} deep")
    item_type, n = r.unpack("I", f"the item type of {key}"), r.unpack("Q", f"the length of {key}")
    if item_type in _GGUF_SCALARS:  # fixed-size items: skipped in one seek, after the bound
        r.skip(n * struct.calcsize(_GGUF_SCALARS[item_type]), f"array {key!r} of {n} items")
        return n
    least = 8 if item_type == _GGUF_STRING else 12  # a string's length; an array's type and length
    if n * least > r.left():
        raise ModelFileError(f"{r.path}: array {key!r} claims {n} items, more than the file's remaining bytes can hold")
    for _ in range(n):
        _gguf_value(r, item_type, key, depth + 1)
    return n


def _gguf_tensor_info(r: _Reader, i: int) -> tuple[str, tuple[int, ...], int, int, int]:
    """One tensor's (name, shape in numpy order, ggml type, offset from the data start, bytes)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    name = r.string(f"the name of tensor {i}")
    n_dims = r.unpack("I", f"the dimension count of {name!r}")
    if not 1 <= n_dims <= GGUF_MAX_DIMS:
        raise ModelFileError(f"{r.path}: tensor {name!r} has {n_dims} dimensions (1 to {GGUF_MAX_DIMS} allowed)")
    dims = [r.unpack("Q", f"a dimension of {name!r}") for _ in range(n_dims)]
    ggml_type, offset = r.unpack("I", f"the type of {name!r}"), r.unpack("Q", f"the offset of {name!r}")
    sizes = {int(t): s for t, s in GGML_QUANT_SIZES.items()}
    if ggml_type not in sizes:
        raise ModelFileError(f"{r.path}: tensor {name!r} has unknown ggml type {ggml_type}")
    block, type_size = sizes[ggml_type]
    if any(d < 1 for d in dims) or dims[0] % block:
        kind = GGMLQuantizationType(ggml_type).name
        raise ModelFileError(f"{r.path}: tensor {name!r}: dimensions {dims} do not fit {kind}'s blocks of {block}")
    nbytes = math.prod(dims) // block * type_size
    return name, tuple(reversed(dims)), ggml_type, offset, nbytes


# ---- both ---------------------------------------------------------------------------------------
def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_disjoint(path: str, extents: list[TensorExtent]) -> None:
    """No two tensors share a byte: overlapping tensors alias one buffer (and hide a crafted file)."""
    ordered = sorted((e for e in extents if e.nbytes), key=lambda e: e.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.start + a.nbytes:
            raise ModelFileError(f"{path}: tensors {a.name!r} and {b.name!r} overlap")


def check_weight_files(directory: str, gguf_file: str | None) -> int:
    """Check a model's weight files (its GGUF file, or every .safetensors file of its folder);
    return their tensors' total bytes (0 when there is none: a config-only folder)."""
    if gguf_file is not None:
        return sum(t.nbytes for t in gguf_header(os.path.join(directory, gguf_file)).tensors)
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    return sum(t.nbytes for f in files for t in safetensors_extents(f))


# ---- config.json --------------------------------------------------------------------------------
#: generous ceilings on each dimension (the largest released models are far below them)
CONFIG_LIMITS = {
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1 << 12,
    "num_attention_heads": 1 << 12,
    "num_key_value_heads": 1 << 12,
    "head_dim": 1 << 12,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 26,
}
#: the fewest bits any weight format stores a parameter in (ggml's 1-bit types use a little more)
_MIN_BITS_PER_PARAM = 1


def check_config_dims(config: Any, weight_bytes: int, where: str) -> None:
    """Refuse a config whose dimensions are not positive integers under `CONFIG_LIMITS`, or that
    describes more parameters than its weight files could hold at one bit each: building that
    model would allocate memory the files never justified. `weight_bytes` 0: no files to compare."""
    dims = {}
    for name, most in CONFIG_LIMITS.items():
        value = getattr(config, name, None)
        if value is None and name in ("num_key_value_heads", "head_dim", "max_position_embeddings"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise ModelFileError(f"{where}: {name}={value!r} is not an integer in [1, {most}]")
        dims[name] = value
    heads = dims["num_attention_heads"]
    kv_heads = dims.get("num_key_value_heads", heads)
    if heads % kv_heads:
        raise ModelFileError(
            f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    head_dim = dims.get("head_dim", dims["hidden_size"] // heads)
    if head_dim < 1:
        raise ModelFileError(f"{where}: hidden_size={dims['hidden_size']} is smaller than num_attention_heads={heads}")
    params = model_parameter_estimate(dims, head_dim, bool(getattr(config, "tie_word_embeddings", False)))
    if weight_bytes and params * _MIN_BITS_PER_PARAM > 8 * weight_bytes:
        raise ModelFileError(
            f"{where}: the config describes a model of about {params:.3g} parameters, but its weight files hold "
            f"{weight_bytes} bytes of tensors (at most {8 * weight_bytes // _MIN_BITS_PER_PARAM:.3g} parameters): "
            "the config does not belong to these weights"
        )


def model_parameter_estimate(dims: dict[str, int], head_dim: int, tied: bool) -> int:
    """A dense decoder's parameter count from its dimensions (norms and biases left out: a lower bound)."""
    hidden, layers, vocab = dims["hidden_size"], dims["num_hidden_layers"], dims["vocab_size"]
    heads = dims["num_attention_heads"]
    kv_heads = dims.get("num_key_value_heads", heads)
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * dims["intermediate_size"]
    return vocab * hidden * (1 if tied else 2) + layers * (attention + mlp)
