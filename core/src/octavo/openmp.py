"""Bounded OpenMP spinning, set before torch loads (no torch import here).

torch's wheels ship GNU OpenMP (libgomp); octavo-cpu's kernels link the same library, so torch's
intra-op work and octavo's kernels run on one pool of threads. libgomp's idle threads spin for
300,000 iterations (milliseconds) before sleeping. On a loaded host that spinning takes the cores
the pool's other threads are waiting for: two-thread C2 on SmolLM2 fell to 2-7 tok/s with one
competing busy process and came back to ~20 with GOMP_SPINCOUNT=10000 (docs/benchmarks.md).
libgomp reads its environment once, when it loads (with `import torch`), so this must run first:
`octavo/__init__.py` calls it, and every octavo import passes through there. Child processes
(engine core, data-parallel and tensor-parallel workers) inherit the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

#: spin iterations before an idle libgomp thread sleeps (the default is 300,000)
SPIN_COUNT = "10000"
# a user's own choice of either wins: GOMP_SPINCOUNT overrides the spin count OMP_WAIT_POLICY implies
_USER_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
#: set by bound_spinning: torch (with libgomp) loaded before octavo, so this process keeps the long spin
loaded_too_late = False


def bound_spinning(environ: MutableMapping[str, str] | None = None) -> None:
    """Set GOMP_SPINCOUNT to SPIN_COUNT unless the user set it or OMP_WAIT_POLICY.

    Where torch (and with it libgomp) loaded before octavo, only child processes get it and
    `loaded_too_late` says so (octavo-cpu warns: export GOMP_SPINCOUNT=10000 before starting Python).
    """
    global loaded_too_late
    environ = os.environ if environ is None else environ
    if any(name in environ for name in _USER_VARIABLES):
        return
    environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    loaded_too_late = "torch" in sys.modules
