"""What every conformance test shares: tolerances, labels, comparisons, kernel calls.

A failure message always starts with a label naming the kernel and the case, e.g.
`attend[head_dim=128, gqa=4, block=16, dtype=bf16, q_lens=[1,37], seq_lens=[300,37]]`,
so a vendor can reproduce it without reading this suite.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# An element passes when |out - ref| <= atol + rtol * |ref|. The reference is exact
# float32 on the same (already rounded) inputs, so the budget is the kernel's own
# rounding: a few ulps of the dtype, with room for a reduction order of its choice.
# fp32 means fp32: a kernel that silently computes in TF32 or half precision fails.
TOLERANCES = {
    torch.float32: Tolerance(atol=1e-4, rtol=1e-4),
    torch.bfloat16: Tolerance(atol=2e-2, rtol=2e-2),
    torch.float16: Tolerance(atol=3e-3, rtol=3e-3),
}

#: kernels a platform must provide itself; the rest have core defaults
REQUIRED_KERNELS = ("write_kv", "attend")


def grid(*factors: tuple[str, tuple[Any, ...]]) -> list[Any]:
    """pytest params for every combination of (id prefix, values) factors; the last
    factor is the dtype.

    The default run keeps the combinations whose dtype index equals the sum of the
    other indices modulo the number of dtypes (a Latin square): every shape
    combination runs once and every (shape value, dtype) pair is covered, at a third
    of the cost. The others carry the `octavo_exhaustive` marker and run with
    --octavo-exhaustive.
    """
    *shape_factors, (_, dtypes) = factors
    params = []
    for idx in itertools.product(*(range(len(values)) for _, values in factors)):
        values = tuple(vals[i] for (_, vals), i in zip(factors, idx))
        keep = idx[-1] == sum(idx[:-1]) % len(dtypes)
        case_id = "-".join(
            DTYPE_NAMES.get(v, str(v)) if isinstance(v, torch.dtype) else f"{prefix}{v}"
            for (prefix, _), v in zip(factors, values)
        )
        marks = () if keep else (pytest.mark.octavo_exhaustive,)
        params.append(pytest.param(*values, marks=marks, id=case_id))
    return params


def label(kernel: str, **case: Any) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, torch.dtype):
            return DTYPE_NAMES.get(v, str(v))
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(str(x) for x in v) + "]"
        return str(v)

    return f"{kernel}[" + ", ".join(f"{k}={fmt(v)}" for k, v in case.items() if v is not None) + "]"


def generator_for(case_label: str) -> torch.Generator:
    """A generator seeded by the case, so every case is reproducible on its own."""
    return torch.Generator().manual_seed(zlib.crc32(case_label.encode()))


def require_dtype(platform: Any, dtype: torch.dtype) -> None:
    if dtype not in platform.device.supported_dtypes:
        pytest.skip(f"{platform.name} does not support {DTYPE_NAMES.get(dtype, dtype)}")


def devices_of_type(device_type: str) -> int | None:
    """How many devices of this torch device type torch sees here; None: no limit (host
    processes share the CPU, so any number of ranks fit)."""
    if device_type == "cpu":
        return None
    try:
        return int(torch.get_device_module(device_type).device_count())
    except Exception:  # a device type torch has no module for: it sees none
        return 0


def call(kernel: str, case_label: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one platform kernel, naming the case if it raises.

    NotImplementedError means the platform does not provide the kernel: a skip for
    optional kernels, a failure for the required ones.
    """
    try:
        return fn(*args)
    except NotImplementedError as e:
        detail = f"not provided: {kernel} raised NotImplementedError {str(e)!r}"
        if kernel in REQUIRED_KERNELS:
            pytest.fail(f"{case_label}: {detail} (every platform must implement it)", pytrace=False)
        pytest.skip(detail)
    except Exception as e:
        raise AssertionError(f"{case_label}: raised {type(e).__name__}: {e}") from e


def assert_close(case_label: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Fail with the label, the worst element and how many are off."""
    if not isinstance(out, torch.Tensor):
        pytest.fail(f"{case_label}: returned {type(out).__name__}, expected a tensor", pytrace=False)
    if tuple(out.shape) != tuple(ref.shape):
        pytest.fail(f"{case_label}: output shape {tuple(out.shape)} != expected {tuple(ref.shape)}", pytrace=False)
    if out.dtype != dtype:
        pytest.fail(f"{case_label}: output dtype {out.dtype} != input dtype {dtype}", pytrace=False)
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    tol = TOLERANCES[dtype]
    err = (out - ref).abs().nan_to_num(nan=float("inf"))
    allowed = tol.atol + tol.rtol * ref.abs()
    bad = err > allowed
    if not bad.any():
        return
    # the largest error among the elements out of tolerance
    worst = int(err.masked_fill(~bad, -1.0).flatten().argmax())
    index = torch.unravel_index(torch.tensor(worst), out.shape)
    pytest.fail(
        f"{case_label}: max abs err {err.flatten()[worst]:.3g} > tol {allowed.flatten()[worst]:.3g} "
        f"at {[int(i) for i in index]} (got {out.flatten()[worst]:.5g}, want {ref.flatten()[worst]:.5g}); "
        f"{int(bad.sum())} of {bad.numel()} elements out of tolerance",
        pytrace=False,
    )
