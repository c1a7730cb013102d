"""The TPU device descriptor: torch tensors on the host, JAX arrays on the TPU (or, for tests,
on JAX's CPU back end)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from octavo.platform import Device


class TpuDevice(Device):
    """The host side of the platform is the CPU: core's scheduler inputs and the sampled tokens
    are host tensors; weights, KV cache and the compiled step live on the JAX devices."""

    type: ClassVar[str] = "cpu"
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.bfloat16, torch.float32)
    #: which JAX back end runs the step ("cpu": the test-only platform, Pallas interpreted)
    _jax_platform: ClassVar[str] = "tpu"

    def _jax_devices(self) -> list[Any]:
        import jax

        return jax.devices(self._jax_platform)

    @property
    def _interpret(self) -> bool:
        """Run Pallas kernels in interpret mode (off a TPU)."""
        return self._jax_platform != "tpu"

    def _compiler_options(self) -> dict[str, Any] | None:
        """XLA options of the step's compilation: on the CPU back end, which only tests use,
        compile time matters more than speed (interpreted Pallas makes large programs; the
        backend's optimizations halve their compile time)."""
        return {"xla_backend_optimization_level": 0} if self._jax_platform == "cpu" else None

    def kv_cache_budget_bytes(self, config: Any, profile: Callable[[], None]) -> int:
        """On TPUs: the devices of the run's mesh, each up to `gpu_memory_utilization` of its
        HBM, less what the weights already took (XLA allocates the step's activations in the
        rest). On the CPU back end: the fixed `kv_cache_memory`."""
        if self._jax_platform != "tpu":
            return int(config.cache.kv_cache_memory)
        budget = 0
        for device in self._jax_devices()[: config.parallel.tensor_parallel_size]:
            stats = device.memory_stats() or {}
            limit = stats.get("bytes_limit", 0)
            budget += max(int(limit * config.cache.gpu_memory_utilization) - stats.get("bytes_in_use", 0), 0)
        return budget
