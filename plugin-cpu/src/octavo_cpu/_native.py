"""Torch-facing wrappers of the compiled kernels in `octavo_cpu._C` (csrc/).

Tensors cross to C++ as data pointers and element strides; this module checks what the
kernels assume (dtypes, a contiguous last dimension, int32 metadata on the CPU) so the
C++ side can trust its arguments. `available()` is False when the extension did not
build or import; callers then keep their torch path.

Debugging switches (read once, at import):
  OCTAVO_CPU_NATIVE=0      run the torch paths only, as if the extension were missing
  OCTAVO_CPU_ISA=NAME      run a lower instruction-set level than the best the CPU has:
                           generic (portable), then on x86-64 avx2 (AVX2 + FMA + F16C),
                           avx512 (F, BW, VL, DQ), avx512_bf16 (adds the BF16 dot products;
                           "avx512bf16" too), amx (adds AMX tiles for the bf16 GEMM); on
                           aarch64 neon. A level the CPU lacks is an error, not a fallback.
                           It lowers these kernels only: torch's own (oneDNN, MKL, ATen)
                           follow ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS and
                           ATEN_CPU_CAPABILITY, set before torch loads
                           (benchmarks/cpu_workloads.sh sets all four)
  OCTAVO_CPU_ATTN_KERNEL=rows
                           paged attention on the per-row kernel everywhere (the portable
                           one) instead of the blocked AVX-512 kernel; `ATTENTION_KERNEL`
                           below holds the choice and may be set at run time (benchmarks)
"""

from __future__ import annotations

import os

import torch

try:
    if os.environ.get("OCTAVO_CPU_NATIVE", "1") == "0":
        raise ImportError("disabled by OCTAVO_CPU_NATIVE=0")
    from octavo_cpu import _C
except ImportError as e:  # a source tree without a build, or a broken build
    _C = None
    IMPORT_ERROR: ImportError | None = e
else:
    IMPORT_ERROR = None

# spellings of the levels people type; the kernels' names are the values
_ISA_ALIASES = {"avx512bf16": "avx512_bf16", "avx512_core_bf16": "avx512_bf16", "amx_bf16": "amx", "avx2_fma": "avx2"}


def requested_isa() -> str | None:
    """OCTAVO_CPU_ISA, normalized ("AVX512-BF16" -> "avx512_bf16"); None when unset."""
    name = os.environ.get("OCTAVO_CPU_ISA", "").strip().lower().replace("-", "_")
    return _ISA_ALIASES.get(name, name) or None


if _C is not None and requested_isa():
    _C.set_isa(requested_isa())

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_ATTN_KERNELS = {"auto": 0, "rows": 1}  # csrc/kernels.h AttnKernel
#: "auto" (blocked kernel where it applies) or "rows"; the default of paged_attention(kernel=)
ATTENTION_KERNEL = os.environ.get("OCTAVO_CPU_ATTN_KERNEL", "auto")
if ATTENTION_KERNEL not in _ATTN_KERNELS:
    raise ValueError(f"OCTAVO_CPU_ATTN_KERNEL must be one of {sorted(_ATTN_KERNELS)}; got {ATTENTION_KERNEL!r}")
#: dtypes the kernels read and write (fp16 stays on the torch path)
SUPPORTED_DTYPES = tuple(_DTYPES)


def available() -> bool:
    return _C is not None


def isa() -> str:
    """Which kernel build runs: "generic", "avx2", "avx512", "avx512_bf16", "amx" or "neon"."""
    return _C.isa() if _C is not None else "none"


def supported_isas() -> list[str]:
    """The levels this CPU can run, lowest first (the last is the default)."""
    return list(_C.supported_isas()) if _C is not None else []


def set_isa(name: str) -> None:
    _C.set_isa(name)


def _code_of(dtype: torch.dtype, what: str = "tensor") -> int:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TypeError(
            f"{what}: dtype {dtype} is not supported by the native CPU kernels (supported: {list(SUPPORTED_DTYPES)})"
        ) from None


def _code(t: torch.Tensor, what: str) -> int:
    return _code_of(t.dtype, what)


def _int32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()


def paged_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    first_seq: int = 0,
    num_seqs: int | None = None,
    q_tile: int = 16,
    kv_splits: int = 0,
    kernel: str | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention of requests first_seq..first_seq+num_seqs-1 of a flat batch into `out`.

    q, out: [T, num_heads, head_dim] (same dtype); kv_cache: [2, num_blocks, block_size,
    num_kv_heads, head_dim]; block_tables [B, max_blocks], seq_lens [B], query_start_loc
    [B + 1] (int32, indexed by request). Semantics: `octavo.platform.attention`.
    `q_tile` query tokens of one request share a pass over its KV (prefill only).
    `kv_splits` > 0 splits every (tile, KV head) item's keys that many ways, merged after
    (tests); 0 splits only when there are too few items for the threads. `kernel`: "auto"
    or "rows" (None: `ATTENTION_KERNEL`). `causal` False: every query of a request sees its
    whole context (encoders; no sliding window then).
    """
    assert causal or not sliding_window, "a sliding window needs causal attention"
    assert q.dtype == out.dtype and q.shape == out.shape and q.dim() == 3
    assert q.device.type == out.device.type == kv_cache.device.type == "cpu"
    assert q.stride(-1) == 1 and out.stride(-1) == 1 and kv_cache.stride(-1) == 1
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_heads = q.shape[1]
    assert q.shape[2] == head_dim and num_heads % num_kv_heads == 0
    block_tables, seq_lens, query_start_loc = _int32(block_tables), _int32(seq_lens), _int32(query_start_loc)
    if num_seqs is None:
        num_seqs = seq_lens.shape[0] - first_seq
    _C.paged_attention(
        out.data_ptr(),
        out.stride(0),
        out.stride(1),
        q.data_ptr(),
        q.stride(0),
        q.stride(1),
        _code(q, "q"),
        kv_cache.data_ptr(),
        *kv_cache.stride()[:4],
        _code(kv_cache, "kv_cache"),
        block_tables.data_ptr(),
        block_tables.stride(0),
        seq_lens.data_ptr(),
        query_start_loc.data_ptr(),
        first_seq,
        num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        block_size,
        float(scale),
        int(sliding_window or 0),
        q_tile,
        torch.get_num_threads(),
        kv_splits,
        _ATTN_KERNELS[kernel or ATTENTION_KERNEL],
        int(causal),
    )
    return out


def write_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store k, v ([T, num_kv_heads, head_dim]) at their slots; slot -1 = padding."""
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and kv_cache.stride(-1) == 1
    assert k.dtype == v.dtype and k.shape == v.shape
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    slots = (
        slot_mapping
        if slot_mapping.dtype == torch.int64 and slot_mapping.is_contiguous()
        else slot_mapping.to(torch.int64).contiguous()
    )
    _C.write_kv(
        k.data_ptr(),
        k.stride(0),
        k.stride(1),
        v.data_ptr(),
        v.stride(0),
        v.stride(1),
        _code(k, "k"),
        kv_cache.data_ptr(),
        *kv_cache.stride()[:4],
        _code(kv_cache, "kv_cache"),
        slots.data_ptr(),
        slots.shape[0],
        num_kv_heads,
        head_dim,
        block_size,
        torch.get_num_threads(),
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """`FusedOps.rms_norm`'s semantics in one pass over each row: with `residual`,
    returns (normed, x + residual); without, normed. Rows must have a contiguous last dim."""
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    weight = weight.contiguous()
    out = torch.empty(x2.shape, dtype=x.dtype)
    res_ptr = res_out_ptr = 0
    res_out = None
    if residual is not None:
        assert residual.dtype == x.dtype and residual.shape == x.shape
        residual = residual.reshape(-1, hidden).contiguous()
        res_out = torch.empty_like(residual)
        res_ptr, res_out_ptr = residual.data_ptr(), res_out.data_ptr()
    _C.rms_norm(
        out.data_ptr(),
        hidden,
        x2.data_ptr(),
        x2.stride(0),
        res_ptr,
        res_out_ptr,
        hidden,
        weight.data_ptr(),
        _code(weight, "weight"),
        x2.shape[0],
        hidden,
        float(eps),
        _code(x, "x"),
        torch.get_num_threads(),
    )
    out = out.view(x.shape)
    return out if res_out is None else (out, res_out.view(x.shape))


def linear_operands(x: torch.Tensor, n: int, bias: torch.Tensor | None):
    """(x as 2-D rows with unit stride, bias kept alive for the call, bias pointer or 0) for
    the native linears, which take x's rows at any row stride."""
    # called ~120 times a decode step: 2-D x (what the layers pass) skips the reshapes
    x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if bias is None:
        return x2, None, 0
    assert bias.shape == (n,)
    bias = bias.contiguous()
    return x2, bias, bias.data_ptr()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) for few rows of x (the decode GEMV), fp32 accumulation.

    x [..., K] (rows may be strided), weight [N, K] with contiguous rows, bias [N]; all one
    dtype. The kernel streams weight once whatever the row count, but its compute grows
    with it: callers keep it to small row counts (`linear.linear_path`).
    """
    k = x.shape[-1]
    n = weight.shape[0]
    assert weight.dim() == 2 and weight.shape[1] == k, f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}"
    assert weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype), "x, weight and bias share one dtype"
    x2, bias, bias_ptr = linear_operands(x, n, bias)
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype)
    _C.linear(
        y.data_ptr(),
        n,
        x2.data_ptr(),
        x2.stride(0),
        weight.data_ptr(),
        weight.stride(0),
        bias_ptr,
        m,
        n,
        k,
        _code(x, "x"),
        torch.get_num_threads(),
    )
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor):
    """`FusedOps.rotary` (neox rotate-half) IN PLACE on q [T, Hq, D] and k [T, Hk, D], which
    may be strided views (e.g. of the fused qkv output); returns (q, k), the same tensors.
    cos_sin_cache: float32 [max_pos, rot_dim]; positions: [T] integers < max_pos."""
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == positions.shape[0]
    assert q.dtype == k.dtype and q.stride(-1) == 1 and k.stride(-1) == 1
    assert cos_sin_cache.dtype == torch.float32 and cos_sin_cache.stride(-1) == 1
    rot_dim = cos_sin_cache.shape[-1]
    assert rot_dim % 2 == 0 and rot_dim <= q.shape[-1] and rot_dim <= k.shape[-1]
    pos = (
        positions
        if positions.dtype == torch.int64 and positions.is_contiguous()
        else positions.to(torch.int64).contiguous()
    )
    _C.rotary(
        q.data_ptr(),
        q.stride(0),
        q.stride(1),
        q.shape[1],
        k.data_ptr(),
        k.stride(0),
        k.stride(1),
        k.shape[1],
        pos.data_ptr(),
        pos.shape[0],
        cos_sin_cache.data_ptr(),
        cos_sin_cache.stride(0),
        cos_sin_cache.shape[0],
        rot_dim,
        _code(q, "q"),
        torch.get_num_threads(),
    )
    return q, k


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2d] -> silu(x[..., :d]) * x[..., d:], computed in fp32 and rounded once."""
    d = x.shape[-1] // 2
    assert x.shape[-1] == 2 * d
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], d, dtype=x.dtype)
    _C.silu_and_mul(
        out.data_ptr(), d, x2.data_ptr(), x2.stride(0), x2.shape[0], d, _code(x, "x"), torch.get_num_threads()
    )
    return out.view(*x.shape[:-1], d)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """`FusedOps.apply_token_bitmask` in one pass: logits [S, V] float32 with a contiguous last
    dim, banned in place where the bit of bitmask [S, >= ceil(V / 32)] int32 is 0."""
    assert logits.dim() == 2 and logits.stride(-1) == 1 and logits.dtype == torch.float32
    s, v = logits.shape
    bitmask = _int32(bitmask)
    assert bitmask.dim() == 2 and bitmask.shape[0] == s and bitmask.shape[1] * 32 >= v, "bitmask too small"
    if s:
        _C.apply_token_bitmask(logits.data_ptr(), logits.stride(0), s, v, bitmask.data_ptr(), bitmask.shape[1])
    return logits


def sample(logits: torch.Tensor, temperatures: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """`FusedOps.sample`'s semantics (inverse CDF of softmax(logits / t) at u, per row) in one
    call: logits [S, V] float32 or bfloat16 with a contiguous last dim."""
    assert logits.dim() == 2 and logits.stride(-1) == 1
    s, v = logits.shape
    u = u.to(torch.float32).contiguous()
    temps = temperatures.to(torch.float32).contiguous() if temperatures is not None else None
    assert u.shape == (s,) and (temps is None or temps.shape == (s,))
    out = torch.empty(s, dtype=torch.int64)
    if s:
        _C.sample(
            out.data_ptr(),
            logits.data_ptr(),
            logits.stride(0),
            s,
            v,
            temps.data_ptr() if temps is not None else 0,
            u.data_ptr(),
            _code(logits, "logits"),
            torch.get_num_threads(),
        )
    return out
