"""The step runner of the Triton GPUs: core's eager runner, with Triton's kernels compiled at
start-up and decode steps replayed from device graphs (octavo.graph_runner) through torch's
graph API of the device type: CUDA graphs on NVIDIA, HIP graphs on ROCm (the same
`torch.cuda` API), XPU graphs on Intel (`torch.xpu`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from octavo.graph_runner import GraphRunner, capture_sizes
from octavo.model_runner import ModelRunner
from octavo.platform import ForwardBatch

#: the graph class of each device type's module (torch.cuda.CUDAGraph also captures HIP graphs)
GRAPH_CLASSES = {"cuda": "CUDAGraph", "xpu": "XPUGraph"}


class TritonModelRunner(ModelRunner):
    # Triton compiles a kernel variant the first time it meets a new length class (seconds
    # each): run those shapes once after the KV cache is allocated, not in the first requests
    warm_up_at_start = True

    #: the memory pool every decode graph of this runner captures into
    _graph_pool: Any = None

    def warm_up_batches(self) -> list[tuple[list[int], list[int]]]:
        """The shapes serving meets, all under the token budget: one long decode (split over
        its context) beside a 2-token chunk, many short decodes beside a 5-token chunk, and a
        64-long decode beside a 9- and a 128-token chunk (each prefill length class). Nothing
        is stored (slot -1) and every page is block 0, which holds no one's tokens yet."""
        max_len = self.config.model.max_model_len
        max_seqs = self.config.scheduler.max_num_seqs
        budget = self.config.scheduler.max_num_batched_tokens
        # (decode context lengths, prefill chunk lengths)
        shapes = [([max_len], [2]), ([1] * min(max_seqs, max(1, budget - 128)), [5]), ([64], [9]), ([64], [128])]
        batches = []
        for decode_lens, chunk_lens in shapes:
            decode_lens = [min(n, max_len) for n in decode_lens]
            chunk_lens = [min(n, max_len) for n in chunk_lens if len(decode_lens) + n <= budget]
            batches.append(([1] * len(decode_lens) + chunk_lens, decode_lens + chunk_lens))
        return batches

    def make_graph_runner(self) -> GraphRunner | None:
        """Decode graphs for every size of `capture_sizes(max_num_seqs)`, largest first, in
        one memory pool (the smaller graphs reuse the largest one's blocks). The graphs live
        as long as the runner: the GraphRunner holds their replays."""
        self._graph_pool = self._graphs().graph_pool_handle()
        runner = GraphRunner(
            self._eager_forward,
            self._capture,
            capture_sizes(self.config.scheduler.max_num_seqs),
            self.config.model.max_model_len,
            self.block_size,
            self.device,
        )
        runner.capture()
        return runner

    def _graphs(self) -> Any:
        """torch.cuda or torch.xpu: the module whose graph API captures on this device."""
        return torch.get_device_module(self.platform.device.type)

    def _eager_forward(self, batch: ForwardBatch) -> torch.Tensor:
        meta = self.platform.attention.build_metadata(batch)
        return self.model(batch.input_ids, batch.positions, self.kv_caches, meta)

    def _capture(self, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Callable[[], None]]:
        module = self._graphs()
        graph = getattr(module, GRAPH_CLASSES[self.platform.device.type])()
        module.synchronize()
        with module.graph(graph, pool=self._graph_pool):
            out = fn()
        module.synchronize()
        return out, graph.replay  # the bound method keeps the graph alive
