"""Conformance of the platform's identity, its device, and its communicator between 2 ranks.

The communicator test is a real 2-rank run: two processes (spawned, as core's tensor
parallel workers are), each resolving the platform by name and joining the group through
`platform.join_group(2, rank, init_method)`, then checking every collective against
what the other rank sent. It needs two devices of the platform's type (host processes
share the CPU), and skips, saying so, where torch sees fewer.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch

from octavo.platform import (
    API_VERSION,
    AttentionBackend,
    Availability,
    Communicator,
    Device,
    FusedOps,
    LinearMethod,
    api_compatible,
    check_platform,
)
from octavo_plugin_kit.conformance.checks import devices_of_type

WORLD_SIZE = 2
#: how long the 2-rank run may take, start-up included, before it counts as hung
RANKS_TIMEOUT_S = 300.0


@pytest.mark.octavo_kernel("platform")
def test_identity(octavo_platform, octavo_platform_name):
    p = octavo_platform
    assert p.name == octavo_platform_name, f"platform: resolved {octavo_platform_name!r} but name is {p.name!r}"
    assert api_compatible(p.api_version), f"platform: api_version {p.api_version!r} vs core API {API_VERSION}"
    assert check_platform(type(p)) == [], f"platform: breaks the contract: {check_platform(type(p))}"
    avail = type(p).availability()
    assert isinstance(avail, Availability) and avail.score > 0, f"platform: availability() = {avail!r}"
    for part, base in (
        ("device", Device),
        ("attention", AttentionBackend),
        ("linear", LinearMethod),
        ("ops", FusedOps),
        ("communicator", Communicator),
    ):
        value = getattr(p, part)
        assert isinstance(value, base), f"platform: {part} is a {type(value).__name__}, not a {base.__name__}"


@pytest.mark.octavo_kernel("platform")
def test_device_and_dtypes(octavo_platform):
    device = octavo_platform.device
    dev = device.torch_device()
    assert torch.ones(2, device=dev).sum().item() == 2.0, f"platform: cannot compute on {dev}"
    device.synchronize()
    assert device.supported_dtypes, "platform: supported_dtypes is empty"
    for model_dtype in (None, *device.supported_dtypes, torch.float64):
        chosen = device.default_dtype(model_dtype)
        assert chosen in device.supported_dtypes, f"platform: default_dtype({model_dtype}) = {chosen}, not supported"


@pytest.mark.octavo_kernel("platform")
def test_copy_to_host(octavo_platform):
    """`copy_to_host` (how async scheduling reads sampled tokens): host tensors equal to the
    device ones once the returned callable has been called, even with work queued after."""
    device = octavo_platform.device
    dev = device.torch_device()
    tokens = torch.arange(7, device=dev) * 3
    logprobs = torch.linspace(-1, 0, 5, device=dev)
    wait = device.copy_to_host([tokens, logprobs])
    tokens.add_(1000)  # queued after the copy: must not show in it
    host = wait()
    assert len(host) == 2 and all(h.device.type == "cpu" for h in host), (
        "platform: copy_to_host must return host tensors"
    )
    assert host[0].tolist() == [3 * i for i in range(7)], f"platform: copy_to_host gave {host[0].tolist()}"
    assert torch.equal(host[1], torch.linspace(-1, 0, 5)), f"platform: copy_to_host gave {host[1].tolist()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, name: str, platform_cls: type | None, init_method: str) -> None:
    """One rank: resolve the platform, join the group, check each collective."""
    from octavo.platform import resolve_platform

    platform = platform_cls() if platform_cls is not None else resolve_platform(name)
    platform.join_group(WORLD_SIZE, rank, init_method)
    comm, dev = platform.communicator, platform.device.torch_device()
    assert (comm.world_size, comm.rank) == (WORLD_SIZE, rank), (
        f"communicator: after join_group({WORLD_SIZE}, {rank}) world_size={comm.world_size}, rank={comm.rank}"
    )

    def of(r: int) -> torch.Tensor:  # rank r's tensor: distinct values per rank
        return torch.arange(6, dtype=torch.float32).reshape(2, 3) + 100 * r

    def expect(op: str, got: torch.Tensor, want: torch.Tensor) -> None:
        got = got.cpu()
        assert tuple(got.shape) == tuple(want.shape) and torch.equal(got, want), (
            f"communicator[rank={rank}, world_size={WORLD_SIZE}]: {op} gave {got.tolist()}, want {want.tolist()}"
        )

    ranks = range(WORLD_SIZE)
    expect("all_reduce", comm.all_reduce(of(rank).to(dev)), sum(of(r) for r in ranks))
    expect("all_gather(dim=-1)", comm.all_gather(of(rank).to(dev)), torch.cat([of(r) for r in ranks], -1))
    expect("all_gather(dim=0)", comm.all_gather(of(rank).to(dev), dim=0), torch.cat([of(r) for r in ranks], 0))
    # chunk j of rank r's input goes to rank j: rank `rank` receives chunk `rank` of every rank's
    chunks = torch.cat([of(rank) + 10 * j for j in ranks])  # [WORLD_SIZE * 2, 3]
    want = torch.cat([of(r) + 10 * rank for r in ranks])
    expect("all_to_all", comm.all_to_all(chunks.to(dev)), want)
    # a ring: each rank sends to the next and receives from the one before
    nxt, prev = (rank + 1) % WORLD_SIZE, (rank - 1) % WORLD_SIZE
    buf = torch.zeros(2, 3, device=dev)
    if rank % 2 == 0:  # one side sends first, so blocking send/recv pairs cannot deadlock
        comm.send(of(rank).to(dev), dst=nxt)
        got = comm.recv(buf, src=prev)
    else:
        got = comm.recv(buf, src=prev)
        comm.send(of(rank).to(dev), dst=nxt)
    expect(f"recv(src={prev})", got, of(prev))
    comm.all_reduce(torch.zeros(1, device=dev))  # no rank leaves while another still sends
    if torch.distributed.is_initialized():  # the default communicator's group: leave it cleanly
        torch.distributed.destroy_process_group()


@pytest.mark.octavo_kernel("communicator")
def test_collectives_between_two_ranks(octavo_platform, octavo_platform_name):
    p = octavo_platform
    device_type = p.device.type
    available = devices_of_type(device_type)
    if available is not None and available < WORLD_SIZE:
        pytest.skip(f"a {WORLD_SIZE}-rank run needs {WORLD_SIZE} {device_type!r} devices; torch sees {available} here")
    from octavo.platform import discover_platforms

    # a platform registered by hand in this process (tests) is not discoverable in a fresh
    # one: it travels to the ranks as its class instead of its name
    discoverable = any(i.name == octavo_platform_name and i.platform_cls is type(p) for i in discover_platforms())
    platform_cls = None if discoverable else type(p)
    if platform_cls is not None and "<locals>" in platform_cls.__qualname__:
        pytest.skip(f"{platform_cls.__qualname__} is defined inside a function: spawned ranks cannot import it")
    init_method = f"tcp://127.0.0.1:{_free_port()}"

    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _rank_main,
        args=(octavo_platform_name, platform_cls, init_method),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"communicator: the {WORLD_SIZE}-rank run did not finish in {RANKS_TIMEOUT_S:.0f} s "
                    "(a collective waiting for a peer that never comes?)",
                    pytrace=False,
                )
    except mp.ProcessRaisedException as e:
        pytest.fail(f"communicator: a rank failed:\n{e}", pytrace=False)
    except mp.ProcessExitedException as e:
        pytest.fail(f"communicator: a rank died: {e}", pytrace=False)
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.terminate()
