"""Launch parameters of every kernel, per target: the one place where a GPU is tuned.

A target is (backend, arch) as Triton names it: ("cuda", 90) for compute capability 9.0,
("hip", "gfx942") for an MI300. Intel GPUs are one ("xpu", None) entry: Triton's XPU back
end names its targets by a dict of device properties, not a name to key a table on.

`for_device(device)` returns the entry for a tensor's device. An arch without an entry of
its own takes its family's: on CUDA the newest listed capability at or below it (sm_86 and
sm_89 take ("cuda", 80), sm_100 and sm_120 take ("cuda", 90)), on AMD the entry of the
same major.minor (gfx1101 takes gfx1100's); anything else takes DEFAULT. The launchers
call it on every launch of a decode step, so the answer is cached per device.

Where each value came from is written beside it. Only the NVIDIA values were measured
(on an H100, docs/cuda.md); the AMD ones were chosen so that every kernel
compiles and fits the target's shared memory (tests/test_triton_aot.py compiles them for
the real ISA without the GPU) and have never been timed.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

#: what the CPU interpreter runs by default: the tiles that were measured and ship on
#: NVIDIA, so a CPU run checks the shapes that serve
INTERPRETER_TARGET = ("cuda", 90)

#: TEST ONLY: a target such as "hip:gfx942" that every device takes the entry of, whatever it
#: is: how the lent NVIDIA GPU runs the AMD tiles through the same Triton source
#: (plugin-rocm/scripts/rocm_on_nvidia_gpu.sh). Never for serving: the tiles are another GPU's.
TARGET_OVERRIDE = "OCTAVO_TRITON_TARGET"


class UnsupportedTarget(RuntimeError):
    """The kernels are known not to work on this target; the message says why."""


@dataclass(frozen=True)
class Tiles:
    """Launch shape of an attention kernel for one class of inputs."""

    tile_n: int  # keys per step of the online softmax
    num_warps: int
    num_stages: int
    block_m: int = 0  # prefill only: most query rows (tokens x the GQA group's heads) per program


@dataclass(frozen=True)
class ByInput:
    """One rule of a kernel's tile table: these tiles for the inputs it matches. A kernel's
    rules are tried in order and the first match wins; the last should match everything."""

    tiles: Tiles
    itemsize: int | None = None  # bytes per element of q and the cache (2: bf16/fp16, 4: fp32)
    head_dims: tuple[int, ...] | None = None

    def matches(self, head_dim: int, itemsize: int) -> bool:
        return (self.itemsize is None or self.itemsize == itemsize) and (
            self.head_dims is None or head_dim in self.head_dims
        )


@dataclass(frozen=True)
class SplitK:
    """How the decode kernel splits a request's keys across programs (flash-decoding)."""

    min_keys: int  # fewest keys a split takes
    programs_per_cu: int  # programs to aim for per SM / CU, so that enough loads are in flight
    max_splits: int  # past this the merge costs more than the extra programs gain


@dataclass(frozen=True)
class RowKernels:
    """The memory-bound kernels with no shared-memory tiles: one program per row or token."""

    kv_write_warps: tuple[int, int]  # for a token of < 2048 / >= 2048 elements (all KV heads)
    norm_cols_per_warp: int  # RMSNorm: one warp per this many columns of the row...
    norm_max_warps: int  # ...up to this many
    rotary_warps: int
    silu_block: int  # SiLU-and-mul: columns per program
    silu_warps: int


@dataclass(frozen=True)
class Gemv:
    """The decode GEMV: each program owns block_n output features and walks K in steps."""

    block_n: int
    max_block_k: int
    num_warps: int
    #: (most weight elements, block_n, block_k, num_warps) for small weights, first match wins:
    #: their few waves of programs gain from other tiles than the large weights'
    small: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Tuning:
    """One target's launch parameters for every kernel."""

    target: str  # "cuda:90", "hip:gfx942", ...: for messages
    #: tl.dot's input_precision for bf16 / fp16 operands (their products are exact in
    #: float32 either way; the name only has to be one the back end accepts). float32
    #: operands always use "ieee", so float32 runs match a float32 reference.
    dot_precision: str
    decode: tuple[ByInput, ...]
    prefill: tuple[ByInput, ...]
    split_k: SplitK
    combine_warps: int
    rows: RowKernels
    gemv: Gemv
    #: launch the kernels with programmatic dependent launch (NVIDIA sm_90+, octavo_triton.dependent_launch)
    dependent_launch: bool = False
    #: set when the kernels cannot run on this target: the launchers refuse it with this reason
    unsupported: str | None = None

    def tiles(self, rules: tuple[ByInput, ...], head_dim: int, itemsize: int) -> Tiles:
        for rule in rules:
            if rule.matches(head_dim, itemsize):
                return rule.tiles
        raise LookupError(f"{self.target}: no tiles for head_dim {head_dim}, {itemsize}-byte elements")


# ---- the values ----------------------------------------------------------------------------


def _named(entry: Tuning, target: str, **changes) -> Tuning:
    return Tuning(**{**entry.__dict__, "target": target, **changes})


#: docs/cuda.md: decode and split-K swept under CUDA graphs, the GEMV by gemv_bench.py --sweep,
#: the rest from bench_kernels.py on an H100 (2026-11-24)
_NVIDIA = Tuning(
    target="cuda",
    dot_precision="tf32",
    decode=(
        # 4-byte or 256-wide keys: a 64-key tile does not fit the registers at 4 warps
        ByInput(Tiles(tile_n=32, num_warps=4, num_stages=2), itemsize=4),
        ByInput(Tiles(tile_n=32, num_warps=4, num_stages=2), head_dims=(256,)),
        ByInput(Tiles(tile_n=64, num_warps=4, num_stages=2)),
    ),
    prefill=(
        ByInput(Tiles(block_m=64, tile_n=32, num_warps=4, num_stages=2), itemsize=4),
        # the sweep (BLOCK_M 64/128 x TILE_N 32/64/128 x 4/8 warps x 2-4 stages): 8 warps and
        # 2 stages won at heads 64 and 256, 4 warps and 3 stages at 128; 16 and 32 follow 128
        ByInput(Tiles(block_m=128, tile_n=64, num_warps=8, num_stages=2), head_dims=(64, 256)),
        ByInput(Tiles(block_m=128, tile_n=64, num_warps=4, num_stages=3)),
    ),
    # batch 1 x 1024 keys ran fastest with 16 splits of 64; 3 programs per SM kept the loads in
    # flight; past 32 splits the merge cost more (batch 1 x 4096: 32 beat 50 and 64)
    split_k=SplitK(min_keys=64, programs_per_cu=3, max_splits=32),
    combine_warps=4,
    rows=RowKernels(
        kv_write_warps=(2, 4),
        norm_cols_per_warp=512,
        norm_max_warps=16,
        rotary_warps=4,
        silu_block=1024,
        silu_warps=4,
    ),
    # 4 x 2048 with 4 warps: first or within 1% for every Llama-3.1-8B weight (16 elements,
    # two 16-byte loads, per thread per row and step)
    gemv=Gemv(block_n=4, max_block_k=2048, num_warps=4),
)

# AMD: not timed (no AMD GPU was at hand); sized by compiling for each ISA (octavo_triton.aot).
# At one stage the prefill kernel's LDS on AMD is BLOCK_M x head_dim x element bytes, the query
# tile (128 x 256 x 2 would be all of gfx942's 64 KiB), so 256-wide heads take 64 rows. Prefill at
# one stage and 128 x 64 tiles with 4 warps, as ROCm's tuned Triton flash attention for MI300 runs;
# with NVIDIA's tiles the bf16 prefill took 81,920 B of LDS on gfx942 at head 256.

_CDNA3 = Tuning(
    target="hip:gfx942",
    # gfx942 also accepts "tf32", gfx950 and gfx1100 do not; for bf16 / fp16 operands the products
    # are exact either way, so every AMD entry says "ieee"
    dot_precision="ieee",
    decode=(
        ByInput(Tiles(tile_n=32, num_warps=4, num_stages=1), itemsize=4),  # 2 stages: 67,584 B at head 256
        ByInput(Tiles(tile_n=32, num_warps=4, num_stages=2), head_dims=(256,)),  # 32 KiB
        ByInput(Tiles(tile_n=64, num_warps=4, num_stages=2)),  # NVIDIA's tiles: 32 KiB at head 128
    ),
    prefill=(
        ByInput(Tiles(block_m=32, tile_n=32, num_warps=4, num_stages=1), itemsize=4),  # 32 KiB at head 256
        ByInput(Tiles(block_m=64, tile_n=64, num_warps=4, num_stages=1), head_dims=(256,)),  # 32 KiB
        ByInput(Tiles(block_m=128, tile_n=64, num_warps=4, num_stages=1)),  # 32 KiB at head 128
    ),
    # the NVIDIA values, counted in CUs (304 on an MI300X)
    split_k=_NVIDIA.split_k,
    combine_warps=4,
    # the memory-bound kernels keep NVIDIA's warp counts: a 64-wide wavefront only gives each lane
    # fewer elements, and 16 of them (RMSNorm's widest rows) are the 1,024 threads a workgroup may have
    rows=_NVIDIA.rows,
    gemv=_NVIDIA.gemv,
)

#: what a target without an entry runs (Intel GPUs, MI200s, RDNA4): small tiles at one stage and
#: the dot precision every back end accepts. 32 KiB of LDS at most on gfx90a (checked in CI);
#: 70 KiB of shared memory at most on sm_80 (float32 prefill), under any NVIDIA GPU's 99 KiB
DEFAULT = Tuning(
    target="default",
    dot_precision="ieee",
    decode=(ByInput(Tiles(tile_n=32, num_warps=4, num_stages=1)),),
    prefill=(
        ByInput(Tiles(block_m=32, tile_n=32, num_warps=4, num_stages=1), itemsize=4),
        ByInput(Tiles(block_m=64, tile_n=32, num_warps=4, num_stages=1)),
    ),
    split_k=_NVIDIA.split_k,
    combine_warps=4,
    rows=_NVIDIA.rows,
    gemv=_NVIDIA.gemv,
)


TABLE: dict[tuple[str, int | str | None], Tuning] = {
    ("cuda", 80): _named(_NVIDIA, "cuda:80"),
    # PDL needs sm_90 (docs/benchmarks.md: the H200's batch-1 decode step 4.44 -> 4.25 ms). The small
    # GEMV tiles won gemv_bench.py --sweep on the H200 (2026-12-04): Llama-3.1-8B's o_proj (4096 x
    # 4096) at 3.67 TB/s against 3.46 with the large weights' tiles, qkv_proj (6144 x 4096) 3.86
    # against 3.71; gate_up, down and lm_head were fastest with the large weights' tiles
    ("cuda", 90): _named(
        _NVIDIA,
        "cuda:90",
        dependent_launch=True,
        gemv=Gemv(4, 2048, 4, small=((4096 * 4096, 4, 1024, 2), (6144 * 4096, 8, 512, 4))),
    ),
    ("hip", "gfx942"): _CDNA3,
    # a second stage costs far more LDS on gfx950 than on gfx942: 67,520 B for the decode tiles
    # above (32,768 on gfx942), 68,016 for NVIDIA's prefill tiles at head 128; one stage keeps the
    # decode kernel at 16 KiB
    ("hip", "gfx950"): _named(
        _CDNA3,
        "hip:gfx950",
        decode=(
            ByInput(Tiles(tile_n=32, num_warps=4, num_stages=1), itemsize=4),
            ByInput(Tiles(tile_n=32, num_warps=4, num_stages=1), head_dims=(256,)),
            ByInput(Tiles(tile_n=64, num_warps=4, num_stages=1)),
        ),
    ),
    # RDNA3: 256 VGPRs a wave and no float32 matrix instructions. NVIDIA's prefill tiles spill
    # 3,291 VGPRs there; these are the tiles of the fewest spills among those tried: none in decode
    # bf16 / fp16, 1 in prefill up to head 128, about 190 at head 256, 109-186 in float32
    ("hip", "gfx1100"): _named(
        _CDNA3,
        "hip:gfx1100",
        decode=(
            ByInput(Tiles(tile_n=16, num_warps=8, num_stages=1), itemsize=4),
            ByInput(Tiles(tile_n=32, num_warps=4, num_stages=1), head_dims=(256,)),
            ByInput(Tiles(tile_n=64, num_warps=4, num_stages=1)),
        ),
        prefill=(
            ByInput(Tiles(block_m=16, tile_n=16, num_warps=8, num_stages=1), itemsize=4),
            ByInput(Tiles(block_m=32, tile_n=16, num_warps=8, num_stages=1), head_dims=(256,)),
            ByInput(Tiles(block_m=64, tile_n=32, num_warps=8, num_stages=1)),
        ),
    ),
    # Intel: never compiled with the current triton (see the README); DEFAULT's small tiles
    ("xpu", None): _named(DEFAULT, "xpu"),
}


# ---- lookup ----------------------------------------------------------------------------------


def entry(backend: str, arch: int | str | None) -> Tuning:
    """The table's entry for a target, or its family's, or DEFAULT (see the module docstring)."""
    if (backend, arch) in TABLE:
        return TABLE[(backend, arch)]
    if backend == "cuda" and isinstance(arch, int):
        older = [a for (b, a) in TABLE if b == "cuda" and a <= arch]
        if older:
            return TABLE[("cuda", max(older))]
    if backend == "hip" and isinstance(arch, str):
        # gfx<major><minor><stepping>: steppings of one major.minor share LDS size and matrix units
        for (b, a), tuning in TABLE.items():
            if b == "hip" and a[:-1] == arch[:-1]:
                return tuning
    if (backend, None) in TABLE:
        return TABLE[(backend, None)]
    return DEFAULT


def target_of(device) -> tuple[str, int | str | None]:
    """(backend, arch) of a torch device, as Triton would name it."""
    import torch

    if device.type == "cuda":
        if getattr(torch.version, "hip", None):
            # "gfx942:sramecc+:xnack-": the features after the name do not change the tiles
            return "hip", torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
        major, minor = torch.cuda.get_device_capability(device)
        return "cuda", major * 10 + minor
    if device.type == "xpu":
        return "xpu", None
    if device.type == "cpu":
        return INTERPRETER_TARGET
    raise UnsupportedTarget(f"no Triton back end serves torch device type {device.type!r}")


def _override() -> tuple[str, int | str] | None:
    """The target TARGET_OVERRIDE names, if set: "cuda:90" -> ("cuda", 90)."""
    value = os.environ.get(TARGET_OVERRIDE)
    if not value:
        return None
    backend, _, arch = value.partition(":")
    return backend, int(arch) if arch.isdigit() else arch


@functools.lru_cache(maxsize=16)
def for_device(device) -> Tuning:
    """The entry the launchers use for tensors on `device` (a torch.device; cached), or the
    entry of the TARGET_OVERRIDE target where that is set (tests only)."""
    tuning = entry(*(_override() or target_of(device)))
    if tuning.unsupported:
        raise UnsupportedTarget(f"octavo_triton's kernels do not support {tuning.target}: {tuning.unsupported}")
    return tuning
