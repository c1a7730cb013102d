"""Compile every kernel for a GPU that is not here, and report what each one needs.

Triton picks its back end from the active driver's target. `compile_for` installs a
stand-in driver that reports the chosen target and turns launches into no-ops, then calls
each launcher on CPU tensors with that target's tuning entry. So the kernel variants the
launchers would compile on that GPU are compiled by the real back end (LLVM's AMDGPU
target, ptxas for NVIDIA) down to the binary, and nothing runs. Each compiled kernel's
metadata gives its shared memory (LDS on AMD) and warps, which `Report.over_limit`
checks against the target's limit.

    python -m octavo_triton.aot [--conformance] hip:gfx942 hip:gfx950 hip:gfx1100 cuda:80 cuda:90

Every input class the tuning entry tells apart is compiled: each dtype, and for the
attention kernels the largest head size of each group that shares tiles (shared memory
grows with the head size at fixed tiles, so that one bounds its group). With
`conformance=True` (`--conformance`) the shapes the plugin kit's conformance suite runs are
compiled too: its GQA ratios and block sizes are compile-time constants of the attention
kernels, so they are variants of their own. Intel GPUs are compiled by `aot_xpu`: their
back end is a separate triton build (see the package README).
"""

from __future__ import annotations

import functools
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from octavo_triton import interpreting
from octavo_triton.tuning import Tuning, entry


@dataclass(frozen=True)
class Target:
    backend: str
    arch: int | str
    warp_size: int
    shared_limit: int  # bytes of shared memory (LDS) one program may use
    why: str  # where the limit comes from


#: the GPUs checked ahead of time; the limits are what one workgroup / CTA may allocate
TARGETS = {
    # CDNA3: 64 KiB of LDS per CU
    "hip:gfx942": Target("hip", "gfx942", 64, 64 << 10, "MI300: 64 KiB LDS per CU"),
    # CDNA4 has 160 KiB of LDS per CU; held to 64 KiB here, which keeps two workgroups on a CU
    # (raise it when larger tiles can be timed there)
    "hip:gfx950": Target("hip", "gfx950", 64, 64 << 10, "MI350: held to 64 KiB (the CU has 160 KiB)"),
    # RDNA3: a workgroup addresses at most 64 KiB
    "hip:gfx1100": Target("hip", "gfx1100", 32, 64 << 10, "RDNA3: 64 KiB LDS per workgroup"),
    # CDNA2 has no entry of its own: it checks the table's DEFAULT on a real ISA
    "hip:gfx90a": Target("hip", "gfx90a", 64, 64 << 10, "MI200: 64 KiB LDS per CU; runs DEFAULT"),
    # the opt-in maximum per block (cudaDevAttrMaxSharedMemoryPerBlockOptin)
    "cuda:80": Target("cuda", 80, 32, 163 << 10, "A100: 163 KiB per block"),
    "cuda:90": Target("cuda", 90, 32, 227 << 10, "H100: 227 KiB per block"),
}

#: every kernel the package launches; the checks require each for each dtype
KERNELS = {
    "_decode_kernel",
    "_combine_kernel",
    "_prefill_kernel",
    "_write_kv_kernel",
    "_rms_norm_kernel",
    "_rotary_kernel",
    "_silu_and_mul_kernel",
    "_gemv_kernel",
}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)
#: query heads per KV head: 8 (Llama 3) stacks 16 rows in the decode tile, as any group of
#: up to 16 does
QPK, NUM_KV_HEADS, BLOCK_SIZE = 8, 4, 16

#: the shapes of the plugin kit's conformance suite (octavo_plugin_kit/conformance:
#: test_attention.py's HEAD_DIMS less 80, which the kernels refuse, GQA_RATIOS, BLOCK_SIZES and
#: NUM_KV_HEADS; test_ops.py's shapes), which the AOT test checks against the kit's own
CONFORMANCE_HEAD_DIMS = (64, 128)
CONFORMANCE_GQA = (1, 4, 8)
CONFORMANCE_BLOCK_SIZES = (8, 16, 32)
CONFORMANCE_KV_HEADS = 2
CONFORMANCE_NORM_SHAPES = ((1, 64), (37, 896), (16, 4096), (5, 8, 128))
CONFORMANCE_SILU_SHAPES = ((1, 128), (37, 2816), (3, 5, 192))
#: (head_dim, rotary dims) of the suite's rotary cases (8 query and 2 KV heads: each head size,
#: full and partial rotary between them), and the (in, out) features of its one linear case of
#: one row of x (the others take torch's GEMM)
CONFORMANCE_ROTARY = ((64, 32), (128, 128), (80, 40))
CONFORMANCE_LINEAR = ((64, 128),)
#: an orthogonal array L9(3^4): every pair of values of any two of (head size, GQA ratio,
#: block size, dtype) is in some row, so 9 compiles per kernel stand for the 54 combinations
#: (head size takes its 2 values as levels 0 and 1, and 128 again as level 2: the larger)
L9 = (
    (0, 0, 0, 0),
    (0, 1, 1, 1),
    (0, 2, 2, 2),
    (1, 0, 1, 2),
    (1, 1, 2, 0),
    (1, 2, 0, 1),
    (2, 0, 2, 1),
    (2, 1, 0, 2),
    (2, 2, 1, 0),
)


@dataclass
class Compiled:
    kernel: str
    case: str  # the launcher call that compiled it: kernel, dtype, shape
    shared: int
    num_warps: int
    seconds: float
    # AMD only (from the ISA listing): registers spilled to scratch, and waves per SIMD
    vgpr_spills: int | None = None
    occupancy: int | None = None


@dataclass
class Report:
    target: Target
    tuning: Tuning
    kernels: list[Compiled] = field(default_factory=list)

    def over_limit(self) -> list[Compiled]:
        return [k for k in self.kernels if k.shared > self.target.shared_limit]

    def table(self) -> str:
        name = f"{self.target.backend}:{self.target.arch}"
        tiles = "" if self.tuning.target == name else f" with the {self.tuning.target} entry"
        lines = [f"{name}{tiles} ({self.target.why}): {len(self.kernels)} kernels compiled"]
        for k in self.kernels:
            amd = "" if k.vgpr_spills is None else f"  {k.vgpr_spills:>5} VGPRs spilled  occupancy {k.occupancy}"
            over = "  OVER THE LIMIT" if k.shared > self.target.shared_limit else ""
            lines.append(
                f"  {k.kernel:<22} {k.case:<32} {k.shared:>7} B shared  {k.num_warps:>2} warps"
                f"  {k.seconds:5.1f} s{amd}{over}"
            )
        return "\n".join(lines)


class _StandInDriver:
    """Enough of a Triton driver for the JIT to compile for `target` and "launch" on no device.

    The JIT keys its caches by the current device, so each target gets a device key of its
    own; the shared-memory limit reported to Triton is unbounded so that every kernel
    reaches the report, which then checks the real limit."""

    def __init__(self, target: Target):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget(target.backend, target.arch, target.warp_size)
        self.device = f"aot:{target.backend}:{target.arch}"
        self.utils = self
        self.case = ""
        self.compiled: list[Compiled] = []

    def listen(self, src, metadata, metadata_group, times, cache_hit):
        """Triton's compilation listener: called once per variant compiled or taken from the disk cache."""
        seconds = (times.ir_initialization + sum(t for _, t in times.lowering_stages)) / 1e6
        compiled = Compiled(metadata["name"], self.case, metadata["shared"], metadata["num_warps"], seconds)
        isa = next((path for name, path in metadata_group.items() if name.endswith(".amdgcn")), None)
        if isa:
            text = Path(isa).read_text()
            compiled.vgpr_spills = int(re.search(r"\.vgpr_spill_count:\s*(\d+)", text).group(1))
            compiled.occupancy = int(re.search(r"; Occupancy:\s*(\d+)", text).group(1))
        self.compiled.append(compiled)

    # what JITFunction.run and CompiledKernel ask of a driver
    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_properties(self, device):
        return {"max_shared_mem": 1 << 30, "multiprocessor_count": 1}

    def load_binary(self, name, kernel, shared, device):
        return None, None, 0, 0, 1024  # module, function, registers, spills, most threads per block

    def unload_module(self, module):
        pass

    def launcher_cls(self, src, metadata):
        return lambda *args, **kwargs: None


def _cases(tuning: Tuning, conformance: bool = False):
    """(label, call) for every input class the tuning entry tells apart, and with
    `conformance` the conformance suite's shapes (labels starting "conformance"). The tensors
    are empty: nothing reads them, only their dtypes, shapes and strides reach the compiler."""
    from octavo_triton.activation import silu_and_mul
    from octavo_triton.decode_attention import decode_attention
    from octavo_triton.gemv import gemv
    from octavo_triton.kv_cache import write_kv
    from octavo_triton.prefill_attention import prefill_attention
    from octavo_triton.rms_norm import rms_norm
    from octavo_triton.rotary import rotary
    from octavo_triton.sampling import sample

    def largest_per_tiles(rules, itemsize):
        biggest = {}
        for d in HEAD_DIMS:
            biggest[tuning.tiles(rules, d, itemsize)] = d
        return sorted(biggest.values())

    def call(fn, *args, **kwargs):
        return functools.partial(fn, *args, **kwargs, tuning=tuning)

    e, hq, hk = torch.empty, QPK * NUM_KV_HEADS, NUM_KV_HEADS
    i32 = dict(dtype=torch.int32)
    tables, seq_lens, qsl = torch.zeros(2, 8, **i32), torch.ones(2, **i32), torch.tensor([0, 512, 1024], **i32)
    slots = torch.zeros(4, dtype=torch.int64)
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        for d in largest_per_tiles(tuning.decode, dtype.itemsize):
            q, cache = e(2, hq, d, dtype=dtype), e(8, BLOCK_SIZE, hk, d, dtype=dtype)
            # two splits: the variant that also compiles the combine kernel (one split differs
            # only in where the last store goes)
            args = (e(2, hq, d, dtype=dtype), q, cache, cache, tables, seq_lens, 2, 4096, 0.1)
            yield f"decode {name} head {d}", call(decode_attention, *args, num_splits=2)
        for d in largest_per_tiles(tuning.prefill, dtype.itemsize):
            q, cache = e(1024, hq, d, dtype=dtype), e(8, BLOCK_SIZE, hk, d, dtype=dtype)
            args = (e(1024, hq, d, dtype=dtype), q, cache, cache, tables, seq_lens, qsl, 1024, 512, 0.1)
            yield f"prefill {name} head {d}", call(prefill_attention, *args)
        # the rest at Llama-3.1-8B shapes; their shared memory is a reduction's scratch at most
        k, cache = e(4, hk, 128, dtype=dtype), e(8, BLOCK_SIZE, hk, 128, dtype=dtype)
        yield f"write_kv {name}", call(write_kv, k, k, cache, cache, slots)
        x, w = e(4, 8192, dtype=dtype), e(8192, dtype=dtype)  # the widest rows take the most warps
        yield f"rms_norm {name} 8192", call(rms_norm, x, w, 1e-6, x)
        q, k, cos_sin = e(4, 32, 128, dtype=dtype), e(4, 8, 128, dtype=dtype), e(64, 128)
        yield f"rotary {name}", call(rotary, q, k, slots, cos_sin)
        yield f"silu_and_mul {name}", call(silu_and_mul, e(4, 2 * 14336, dtype=dtype))
        w = e(1024, 4096, dtype=dtype)
        yield f"gemv {name} 4096", call(gemv, x[:1, :4096], w, w[0, :1024])
    # the sampler's draw takes float32 logits only (the contract's), so its cases name no dtype
    logits = e(4, 128256)
    yield "sample vocab 128256", call(sample, logits, None, e(4))
    yield "sample vocab 128256 with temperatures", call(sample, logits, e(4), e(4))
    if conformance:
        yield from _conformance_cases(call)


def _conformance_cases(call):
    """The conformance suite's shapes: attention by the L9 rows, the other kernels at each of
    the suite's shapes in each dtype (they compile in a fraction of a second)."""
    from octavo_triton.activation import silu_and_mul
    from octavo_triton.decode_attention import decode_attention
    from octavo_triton.gemv import gemv
    from octavo_triton.kv_cache import write_kv
    from octavo_triton.prefill_attention import prefill_attention
    from octavo_triton.rms_norm import rms_norm
    from octavo_triton.rotary import rotary

    e, hk = torch.empty, CONFORMANCE_KV_HEADS
    i32 = dict(dtype=torch.int32)
    # the suite's longest prefill is 96 tokens of one request (its "long" batch): the largest BLOCK_M
    tables, seq_lens, qsl = torch.zeros(2, 8, **i32), torch.ones(2, **i32), torch.tensor([0, 48, 96], **i32)
    slots = torch.zeros(4, dtype=torch.int64)
    for h, g, b, t in L9:
        d, qpk, block = CONFORMANCE_HEAD_DIMS[min(h, 1)], CONFORMANCE_GQA[g], CONFORMANCE_BLOCK_SIZES[b]
        dtype = DTYPES[t]
        label = f"conformance {str(dtype).removeprefix('torch.')} head {d} gqa {qpk} block {block}"
        q, cache = e(96, qpk * hk, d, dtype=dtype), e(8, block, hk, d, dtype=dtype)
        # a sliding window (WINDOW is a compile-time constant too): the suite runs both
        out = torch.empty_like(q)
        yield f"{label} decode", call(decode_attention, out, q, cache, cache, tables, seq_lens, 2, 700, 0.1, 7, 2)
        yield f"{label} prefill", call(prefill_attention, out, q, cache, cache, tables, seq_lens, qsl, 96, 48, 0.1)
        k = e(4, hk, d, dtype=dtype)
        yield f"{label} write_kv", call(write_kv, k, k, cache, cache, slots)
    for dtype in DTYPES:
        name = f"conformance {str(dtype).removeprefix('torch.')}"
        for shape in CONFORMANCE_NORM_SHAPES:
            x = e(*shape, dtype=dtype)
            yield f"{name} rms_norm {shape}", call(rms_norm, x, e(shape[-1], dtype=dtype), 1e-6, x)
        for shape in CONFORMANCE_SILU_SHAPES:
            yield f"{name} silu_and_mul {shape}", call(silu_and_mul, e(*shape, dtype=dtype))
        for d, rot in CONFORMANCE_ROTARY:
            q, k = e(37, 8, d, dtype=dtype), e(37, 2, d, dtype=dtype)
            positions = torch.zeros(37, dtype=torch.int64)
            yield f"{name} rotary head {d} rot {rot}", call(rotary, q, k, positions, e(64, rot))
        for n_in, n_out in CONFORMANCE_LINEAR:
            w = e(n_out, n_in, dtype=dtype)
            yield f"{name} gemv {n_in}x{n_out}", call(gemv, e(1, n_in, dtype=dtype), w, w[0, :n_out])


def compile_for(name: str, conformance: bool = False) -> Report:
    """Compile every case for TARGETS[name] (with `conformance`, the conformance suite's shapes
    too) in a fresh Triton cache (nothing from earlier runs is reused, so a CI machine's first
    run is what this measures)."""
    from triton import knobs
    from triton.runtime.driver import driver

    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 replaces compilation with the interpreter: unset it to compile")
    target = TARGETS[name]
    tuning = entry(target.backend, target.arch)
    stand_in = _StandInDriver(target)
    previous = driver._active  # set_active has no inverse that keeps a driver already chosen
    with tempfile.TemporaryDirectory(prefix="octavo-aot-") as cache, knobs.cache.scope(), knobs.compilation.scope():
        knobs.cache.dir = cache
        knobs.compilation.listener = stand_in.listen
        driver.set_active(stand_in)
        try:
            for case, call in _cases(tuning, conformance):
                stand_in.case = case
                if case.startswith("conformance"):
                    # a device key of their own: a variant a serving case compiled is then looked up
                    # in the disk cache (reported as a cache hit) instead of the JIT's memory, which
                    # would not report it, so each conformance case reports all its kernels
                    stand_in.device = f"aot:{target.backend}:{target.arch}:conformance"
                call()
        finally:
            driver._active = previous
    return Report(target, tuning, stand_in.compiled)


def main(argv: list[str]) -> int:
    conformance = "--conformance" in argv
    argv = [a for a in argv if a != "--conformance"]
    names = argv or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    failed = False
    for name in names:
        report = compile_for(name, conformance)
        print(report.table())
        failed |= bool(report.over_limit())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
