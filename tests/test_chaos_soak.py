"""A short chaos soak in CI (issue 19, part 2): benchmarks/chaos_soak.py's rounds against a tiny
model served on a real socket. Clients vanish mid-stream, cancel, send bad requests and burst
past the waiting-queue limit; afterwards nothing is stuck, no KV block leaked, RSS is flat and
/metrics count what the clients saw. The long soak is `python benchmarks/chaos_soak.py`."""

from __future__ import annotations

import importlib.util
import os
import sys

import psutil
from live_server import MODEL, LiveServer

_path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "chaos_soak.py")
_spec = importlib.util.spec_from_file_location("chaos_soak", _path)
assert _spec is not None and _spec.loader is not None
chaos_soak = importlib.util.module_from_spec(_spec)
sys.modules["chaos_soak"] = chaos_soak  # its dataclasses look their module up
_spec.loader.exec_module(chaos_soak)


def test_short_chaos_soak(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    # a batch of 4 and a queue of 6: the bursts of 24 must overflow it
    with LiveServer(path, max_waiting_requests=6, engine={"max_num_seqs": 4}, api_key="sk-soak") as server:
        me = psutil.Process()
        report = chaos_soak.run_soak(
            server.base_url,
            model=MODEL,
            rss=lambda: me.memory_info().rss,
            rounds=3,
            requests=40,
            concurrency=8,
            burst=24,
            api_key="sk-soak",
            timeout=60,
        )
        print(report.as_dict())
        assert report.problems == []
        t = report.total
        assert t.sent == 3 * (40 + 24)
        assert t.sent == t.completed + t.disconnected + t.cancelled + t.bad + t.rejected
        # every kind of chaos happened
        assert min(t.disconnected, t.cancelled, t.bad, t.rejected) > 0, report.as_dict()
        # and the engine agrees with /metrics: nothing left, every block free
        server.wait_idle()
        assert server.engine.engine.block_manager.usage() == 0.0
        assert not server.engine.engine.has_unfinished_requests() and not server.engine.errored
