"""The conformance suite against the Neuron platform's code on the CPU ("neuron-cpu"), run as
`octavo plugins check neuron-cpu -p octavo_neuron.testing` runs it (in this process)."""

from __future__ import annotations

import re

from octavo_plugin_kit.cli import run_check

#: what the platform provides and the suite checks; the communicator is left out: tensor
#: parallelism is refused on this platform, so nothing uses core's default communicator
KERNELS = ("platform", "kv_cache", "write_kv", "attend", "linear", "rms_norm", "rotary", "silu_and_mul", "sample")


def test_passes_the_conformance_suite_as_far_as_it_claims(capsys, one_thread):
    from octavo.platform import get_plugin_manager

    args = ["-q", "-s", "-p", "no:cacheprovider", "-p", "octavo_neuron.testing", "-k", "not collectives"]
    try:
        assert run_check("neuron-cpu", args) == 0, capsys.readouterr().out[-6000:]
    finally:
        get_plugin_manager(refresh=True)
    out = capsys.readouterr().out
    assert "octavo conformance: platform 'neuron-cpu' (octavo-neuron, API 2.0)" in out, out[-3000:]
    # generate: greedy tokens of the Neuron runner against the cpu platform's
    for kernel in (*KERNELS, "generate"):
        assert re.search(rf"^{kernel}\s+passed", out, re.M), f"{kernel} did not pass:\n{out[-3000:]}"
