"""The plugin kit's conformance suite against octavo-tpu's code on JAX's CPU back end ("tpu-cpu",
Pallas kernels in interpret mode), run as `OCTAVO_TPU_CPU=1 octavo plugins check tpu-cpu` runs it
(in this process). What it skips is what the platform declares it lacks (fp16, the default KV
layout: its cache is its own `PagedKVCache`, checked through `attend`)."""

from __future__ import annotations

import re

from octavo_plugin_kit.cli import run_check

#: every part the suite checks; "generate" is the runner's greedy tokens against the cpu platform's
PARTS = ("platform", "kv_cache", "write_kv", "attend", "linear", "rms_norm", "rotary", "silu_and_mul", "sample")


def test_passes_the_conformance_suite_as_far_as_it_claims(capsys):
    from octavo.platform import get_plugin_manager

    try:
        assert run_check("tpu-cpu", ["-q", "-s", "-p", "no:cacheprovider"]) == 0, capsys.readouterr().out[-6000:]
    finally:
        get_plugin_manager(refresh=True)
    out = capsys.readouterr().out
    assert "octavo conformance: platform 'tpu-cpu' (octavo-tpu, API 2.0)" in out, out[-3000:]
    for part in (*PARTS, "communicator", "generate"):
        assert re.search(rf"^{part}\s+passed", out, re.M), f"{part} did not pass:\n{out[-3000:]}"
