"""OpenMP spinning is bounded by default (octavo/openmp.py), and a user's own setting is kept.

Each case runs in a fresh interpreter: libgomp reads its environment once, when torch loads it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_USER_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

# CPU time the process burns while its main thread sleeps right after a two-thread torch op: what
# the idle OpenMP thread spends spinning (libgomp's default: 300,000 iterations, milliseconds)
_IDLE_CPU = """
import sys, time
if sys.argv[1] == "octavo":
    import octavo
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
spent = 0.0
for _ in range(20):
    torch.mm(a, a)
    start = time.process_time()
    time.sleep(0.02)
    spent += time.process_time() - start
print(spent)
"""


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in _USER_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


def _python(code: str, *args: str, **env: str) -> str:
    return _run(code, *args, **env).stdout.strip()


_SHOW = "import os, sys, octavo; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"


def test_spin_count_set_before_torch_loads():
    assert _python(_SHOW) == "10000 False"


@pytest.mark.parametrize("variable, value", [("GOMP_SPINCOUNT", "50"), ("OMP_WAIT_POLICY", "ACTIVE")])
def test_user_setting_kept(variable, value):
    shown = _python(_SHOW + "; print(os.environ.get(sys.argv[1]))", variable, **{variable: value})
    expected_spin = value if variable == "GOMP_SPINCOUNT" else "None"
    assert shown.split() == [expected_spin, "False", value]


def test_idle_threads_stop_spinning():
    # the policy reaches the runtime: octavo's process burns far less CPU between parallel regions
    # than the same program without octavo (the best of two tries each: a loaded host delays spinning)
    plain = max(float(_python(_IDLE_CPU, "plain")) for _ in range(2))
    bounded = min(float(_python(_IDLE_CPU, "octavo")) for _ in range(2))
    assert bounded < plain / 2, f"idle CPU {bounded * 1e3:.1f} ms with octavo, {plain * 1e3:.1f} ms without"


_CONFIGURE = """
import sys
if sys.argv[1] == "torch first":
    import torch
import octavo
from octavo_cpu.platform import CpuPlatform
CpuPlatform().check_and_update_config(None)
"""


@pytest.mark.parametrize("order", ["torch first", "octavo first"])
def test_warns_where_torch_loaded_first(order):
    # too late for this process's libgomp: the platform says what to do instead
    stderr = _run(_CONFIGURE, order, OMP_NUM_THREADS="2").stderr
    assert ("export GOMP_SPINCOUNT=10000" in stderr) == (order == "torch first"), stderr
