"""Conformance of the platform's identity, fitness and single-process collectives.

Multi-process collectives need one device per rank, which a conformance run on one
machine cannot assume; they are the integration tests' job.
"""

from __future__ import annotations

import pytest
import torch

from octavo.platform import API_VERSION, AttentionBackend, Availability, Communicator, DeviceProps, api_compatible


@pytest.mark.octavo_kernel("platform")
def test_identity(octavo_platform, octavo_platform_name):
    p = octavo_platform
    assert p.name == octavo_platform_name, f"platform: resolved {octavo_platform_name!r} but name is {p.name!r}"
    assert api_compatible(p.api_version), f"platform: api_version {p.api_version!r} vs core API {API_VERSION}"
    avail = type(p).availability()
    assert isinstance(avail, Availability) and avail.score > 0, f"platform: availability() = {avail!r}"
    assert isinstance(p.attention, AttentionBackend), f"platform: attention is {type(p.attention).__name__}"


@pytest.mark.octavo_kernel("platform")
def test_device_and_dtypes(octavo_platform):
    p = octavo_platform
    props = p.device_props()
    assert isinstance(props, DeviceProps), f"platform: device_props() returned {type(props).__name__}"
    assert props.memory_free_bytes <= props.memory_total_bytes or props.memory_total_bytes == 0, (
        f"platform: device_props() reports more free than total memory: {props}"
    )
    dev = p.torch_device()
    assert torch.ones(2, device=dev).sum().item() == 2.0, f"platform: cannot compute on {dev}"
    p.synchronize()
    assert p.supported_dtypes, "platform: supported_dtypes is empty"
    for model_dtype in (None, *p.supported_dtypes, torch.float64):
        chosen = p.default_dtype(model_dtype)
        assert chosen in p.supported_dtypes, f"platform: default_dtype({model_dtype}) = {chosen}, not supported"


@pytest.mark.octavo_kernel("platform")
def test_copy_to_host(octavo_platform):
    """`copy_to_host` (how async scheduling reads sampled tokens): host tensors equal to the
    device ones once the returned callable has been called, even with work queued after."""
    p = octavo_platform
    dev = p.torch_device()
    tokens = torch.arange(7, device=dev) * 3
    logprobs = torch.linspace(-1, 0, 5, device=dev)
    wait = p.copy_to_host([tokens, logprobs])
    tokens.add_(1000)  # queued after the copy: must not show in it
    host = wait()
    assert len(host) == 2 and all(h.device.type == "cpu" for h in host), (
        "platform: copy_to_host must return host tensors"
    )
    assert host[0].tolist() == [3 * i for i in range(7)], f"platform: copy_to_host gave {host[0].tolist()}"
    assert torch.equal(host[1], torch.linspace(-1, 0, 5)), f"platform: copy_to_host gave {host[1].tolist()}"


@pytest.mark.octavo_kernel("platform")
@pytest.mark.parametrize("block_size", (8, 16, 32))
def test_kv_cache_shape(octavo_platform, block_size):
    attn = octavo_platform.attention
    if attn.check_config(head_dim=128, block_size=block_size, dtype=octavo_platform.supported_dtypes[0]):
        pytest.skip(f"block size {block_size} is not supported")
    shape = tuple(attn.kv_cache_shape(10, block_size, 4, 128))
    assert shape and all(isinstance(n, int) and n > 0 for n in shape), (
        f"platform: kv_cache_shape(10, {block_size}, 4, 128) = {shape}, want positive ints"
    )
    # the cache must have room for every slot's k and v
    assert torch.Size(shape).numel() >= 2 * 10 * block_size * 4 * 128, (
        f"platform: kv_cache_shape(10, {block_size}, 4, 128) = {shape} is too small for 10 blocks"
    )


@pytest.mark.octavo_kernel("communicator")
def test_single_process_collectives(octavo_platform):
    p = octavo_platform
    comm = p.init_communicator(world_size=1, rank=0, init_method="tcp://127.0.0.1:0")
    assert isinstance(comm, Communicator), f"communicator: init_communicator returned {type(comm).__name__}"
    assert (comm.world_size, comm.rank) == (1, 0), f"communicator: world {comm.world_size}, rank {comm.rank}"
    x = torch.arange(6, dtype=torch.float32, device=p.torch_device()).reshape(2, 3)
    for op, out in (
        ("all_reduce", comm.all_reduce(x.clone())),
        ("all_gather", comm.all_gather(x.clone())),
        ("broadcast", comm.broadcast(x.clone())),
    ):
        assert torch.equal(out.cpu(), x.cpu()), f"communicator: {op} with world_size 1 changed its input"
