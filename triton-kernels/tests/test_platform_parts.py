"""The platform parts shared by octavo-cuda, octavo-rocm and octavo-xpu go through the torch
module of their device type (torch.cuda, torch.xpu), never through torch.cuda by name: checked
with a stand-in device module that records what is asked of it.

Their routing to the kernels is tested where a platform declares them (plugin-cuda/tests);
the kernels themselves in test_triton_kernels.py.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from octavo_triton.platform_parts import GpuCommunicator, TritonGpuDevice, TritonModelRunner, memory, runner

GiB = 1 << 30


class FakeModule:
    """A torch.<device> module: 80 GiB total, 70 free; 2 GiB reserved by torch, 1.5 allocated."""

    def __init__(self):
        self.calls: list[str] = []
        self.graphs: list[FakeGraph] = []

    def mem_get_info(self, device):
        self.calls.append("mem_get_info")
        return 70 * GiB, 80 * GiB

    def memory_reserved(self, device):
        return 2 * GiB

    def memory_allocated(self, device):
        return 3 * GiB // 2

    def synchronize(self, device=None):
        self.calls.append("synchronize")

    def device_count(self):
        return 4

    def set_device(self, index):
        self.calls.append(f"set_device {index}")

    def graph_pool_handle(self):
        return "pool"

    def XPUGraph(self):  # noqa: N802 (torch.xpu's name)
        graph = FakeGraph()
        self.graphs.append(graph)
        return graph

    @contextlib.contextmanager
    def graph(self, graph, pool=None):
        graph.capturing, graph.pool = True, pool
        yield
        graph.capturing = False


class FakeGraph:
    capturing = False
    pool = None

    def replay(self):
        pass


@pytest.fixture
def xpu(monkeypatch):
    """torch.get_device_module("xpu") answers with a FakeModule; other types are refused."""
    fake = FakeModule()

    def get_device_module(device_type):
        assert device_type == "xpu", f"asked for torch.{device_type}'s module on an xpu device"
        return fake

    monkeypatch.setattr(torch, "get_device_module", get_device_module)
    return fake


class XpuLike(TritonGpuDevice):
    type = "xpu"
    dist_backend = "xccl"


def test_the_kv_budget_reads_the_device_types_memory_counters(xpu):
    config = SimpleNamespace(cache=SimpleNamespace(gpu_memory_utilization=0.9))
    budget = memory.kv_cache_budget_bytes(config, xpu, torch.device("xpu", 0), activation_bytes=GiB)
    # 80 GiB x 0.9, less what is in use (10 GiB used, of which 0.5 GiB torch holds unallocated),
    # less the activations and the slack
    want = 72 * GiB - (10 * GiB - GiB // 2) - (GiB + memory.PROFILED_SLACK_BYTES)
    assert budget == want and "mem_get_info" in xpu.calls


def test_the_device_synchronizes_through_its_module(xpu):
    XpuLike().synchronize()
    assert xpu.calls == ["synchronize"]


def test_the_communicator_binds_the_rank_to_its_gpu_through_the_module(xpu, monkeypatch):
    joined = []
    monkeypatch.setattr("octavo.platform.Communicator.join", lambda self, *args: joined.append(args))
    device = XpuLike()
    GpuCommunicator(device).join(2, 5, "tcp://127.0.0.1:1")
    # rank 5 of 4 local GPUs: GPU 1 (rank modulo the count, without LOCAL_RANK)
    assert xpu.calls == ["set_device 1"] and device.local_rank == 1 and joined == [(2, 5, "tcp://127.0.0.1:1")]


def test_graphs_are_captured_through_the_device_types_graph_api(xpu):
    owner = TritonModelRunner.__new__(TritonModelRunner)  # no model: only the capture is under test
    owner.platform = SimpleNamespace(device=XpuLike())
    owner._graph_pool = "pool"
    seen = []
    out, replay = owner._capture(lambda: seen.append(xpu.graphs[-1].capturing) or "out")
    assert out == "out" and seen == [True] and xpu.graphs[-1].pool == "pool"
    assert replay == xpu.graphs[-1].replay


@pytest.mark.parametrize("device_type", sorted(runner.GRAPH_CLASSES))
def test_each_device_types_graph_class_is_torchs(device_type):
    module = torch.get_device_module(device_type)
    assert hasattr(module, runner.GRAPH_CLASSES[device_type]) and hasattr(module, "graph")
