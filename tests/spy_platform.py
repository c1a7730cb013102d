"""A platform for core's tests: the kit's reference kernels, and a runner whose hooks record
what core asks of them (graph captures and replays, warm-up forwards, profiling).

Its "graph" records the callable at capture and re-runs it on replay, writing into the
captured output as a real graph would, so the graph runner's padding and slicing run for
real on the CPU.
"""

from __future__ import annotations

import types

from octavo.graph_runner import GraphRunner, capture_sizes
from octavo.model_runner import ModelRunner
from octavo.platform import hookimpl
from octavo_plugin_kit.reference import ReferencePlatform


class Spy:
    def __init__(self) -> None:
        self.captured: list[int] = []
        self.replayed: list[int] = []
        self.steps: list[tuple[bool, int, bool]] = []  # (all decodes, requests, replayed)
        self.warm_ups = 0
        self.profiles = 0
        self.graphs = False  # capture decode graphs
        self.warm_up_batches: list[tuple[list[int], list[int]]] = []


class SpyRunner(ModelRunner):
    _spy = Spy()  # replaced by each test (`spy_platform` below)

    def warm_up_batches(self):
        self._spy.warm_ups += 1
        return self._spy.warm_up_batches

    def profile_run(self) -> None:
        self._spy.profiles += 1
        super().profile_run()

    def make_graph_runner(self) -> GraphRunner | None:
        if not self._spy.graphs:
            return None
        gr = GraphRunner(
            self._eager,
            self._capture,
            capture_sizes(self.config.scheduler.max_num_seqs),
            self.config.model.max_model_len,
            self.block_size,
            self.device,
        )
        gr.capture()
        return gr

    def _eager(self, batch):
        meta = self.platform.attention.build_metadata(batch)
        return self.model(batch.input_ids, batch.positions, self.kv_caches, meta)

    def _capture(self, fn):
        spy = self._spy
        out = fn()
        b = out.shape[0]
        spy.captured.append(b)

        def replay():
            spy.replayed.append(b)
            out.copy_(fn())

        return out, replay

    def forward(self, batch):
        before = len(self._spy.replayed)
        hidden = super().forward(batch)
        if self.graph_runner is not None:
            decodes = batch.max_query_len == 1 and batch.query_start_loc_cpu[-1] == batch.num_reqs
            self._spy.steps.append((decodes, batch.num_reqs, len(self._spy.replayed) > before))
        return hidden


class SpyPlatform(ReferencePlatform):
    name = "spy"
    package = "tests"
    runner_cls = SpyRunner


def spy_platform(**settings) -> Spy:
    """Register the spy platform (again after a test refreshed the plugin manager) and give
    its runner a fresh Spy with `settings`."""
    from octavo.platform.discovery import get_plugin_manager, register_plugin

    if get_plugin_manager().get_plugin("spy") is None:
        module = types.ModuleType("spy_platform_plugin")
        module.octavo_platforms = hookimpl(lambda: [SpyPlatform])
        register_plugin(module, name="spy")
    spy = Spy()
    for key, value in settings.items():
        setattr(spy, key, value)
    SpyRunner._spy = spy
    SpyRunner.warm_up_at_start = bool(spy.warm_up_batches)
    return spy
