"""The TPU platforms: "tpu" (a real TPU through libtpu) and "tpu-cpu" (the same runner on JAX's
CPU back end, Pallas interpreted: for tests only, and only when OCTAVO_TPU_CPU=1 asks for it)."""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any

from octavo.platform import Availability, Platform, SchedulingPolicy, StaticShapes
from octavo_tpu.attention import TpuAttention
from octavo_tpu.device import TpuDevice
from octavo_tpu.runner import TpuRunner

#: the test-only switch: with OCTAVO_TPU_CPU=1, "tpu-cpu" scores 1 (below every real device)
CPU_SWITCH = "OCTAVO_TPU_CPU"
#: a page of 16 tokens is one (16, 128) bf16 tile of a 128-wide head
BLOCK_SIZE = 16

#: a starting point, not tuned on hardware: prompts of up to 1024 tokens a step (longer ones
#: are chunked), up to 64 requests, contexts of up to 512 blocks (8192 tokens)
TPU_SHAPES = StaticShapes(token_buckets=(16, 64, 256, 1024), request_buckets=(1, 8, 64), block_buckets=(16, 128, 512))
#: few shapes, so that tests compile every bucket in seconds
CPU_SHAPES = StaticShapes(token_buckets=(16, 64, 256), request_buckets=(1, 4), block_buckets=(4, 16))


def _policy(shapes: StaticShapes) -> SchedulingPolicy:
    # the kernel takes any ragged mix, so prompts may be chunked and share steps with decodes
    return SchedulingPolicy(
        default_max_num_batched_tokens=shapes.token_buckets[-1],
        chunked_prefill=True,
        mixed_steps=True,
        block_size=BLOCK_SIZE,
        static_shapes=shapes,
    )


def _tpu_chips() -> list[str]:
    """TPU chips the host exposes: /dev/accel* (v2 to v5e) or VFIO groups (v5p, v6e)."""
    return sorted(glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*"))


class TpuPlatform(Platform):
    name = "tpu"
    api_version = "2.0"
    package = "octavo-tpu"
    device_cls = TpuDevice
    attention_cls = TpuAttention
    runner_cls = TpuRunner
    scheduling = _policy(TPU_SHAPES)
    spmd = True

    @classmethod
    def availability(cls) -> Availability:
        # cheap and without touching the chips: libtpu installed and chips present; JAX itself
        # then confirms when the runner asks it for its TPU devices
        missing = []
        if importlib.util.find_spec("libtpu") is None:
            missing.append("libtpu is not installed (pip install 'octavo-tpu[tpu]')")
        chips = _tpu_chips()
        if not chips:
            missing.append("this host has no TPU chips (no /dev/accel* or /dev/vfio devices)")
        if missing:
            return Availability(
                0, "; ".join(missing) + f". For tests, {CPU_SWITCH}=1 enables 'tpu-cpu', this runner on JAX's CPU"
            )
        return Availability(100, f"{len(chips)} TPU chip device(s) through libtpu")

    def check_and_update_config(self, config: Any) -> None:
        if config.scheduler.async_scheduling:
            raise ValueError(
                f"device {self.name!r} does not support async scheduling yet (its step does not feed the last "
                "step's device tokens to the next); run without --async-scheduling"
            )
        tp = config.parallel.tensor_parallel_size
        devices = self.device._jax_devices()
        if tp > len(devices):
            raise ValueError(
                f"tensor_parallel_size={tp}, but JAX sees {len(devices)} {self.device._jax_platform} device(s) here"
            )
        hf = config.model.hf_config
        kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
        if kv_heads % tp:
            raise ValueError(
                f"device {self.name!r} splits the KV heads over the devices: {kv_heads} KV heads do not split over "
                f"tensor_parallel_size={tp}; pick a size that divides {kv_heads}"
            )


class TpuCpuDevice(TpuDevice):
    supported_dtypes = TpuDevice.supported_dtypes[::-1]  # float32 first: what tests compare
    _jax_platform = "cpu"


class TpuCpuPlatform(TpuPlatform):
    """The TPU runner on JAX's CPU back end: the same model, kernels (interpreted), buckets and
    SPMD sharding (over host devices: XLA_FLAGS=--xla_force_host_platform_device_count=N)."""

    name = "tpu-cpu"
    device_cls = TpuCpuDevice
    scheduling = _policy(CPU_SHAPES)

    @classmethod
    def availability(cls) -> Availability:
        if os.environ.get(CPU_SWITCH) != "1":
            return Availability(0, f"test-only: set {CPU_SWITCH}=1 to run the TPU runner on JAX's CPU back end")
        return Availability(1, f"the TPU runner on JAX's CPU back end, Pallas interpreted ({CPU_SWITCH}=1; tests only)")
