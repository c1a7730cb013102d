"""LoRA serving limits (`--enable-lora`, `--max-loras`, `--max-lora-rank`, `--max-cpu-loras`)."""

from __future__ import annotations

from dataclasses import dataclass


class LoRAError(ValueError):
    """An adapter that cannot be served with this base model and these limits, or LoRA not enabled."""


@dataclass(frozen=True)
class LoRAConfig:
    """`max_loras` adapters sit on the device at once (slots; a step runs at most that many
    distinct adapters), each of rank at most `max_lora_rank`; `max_cpu_loras` loaded adapters are
    kept in host memory (an LRU), so one evicted from the device comes back without reading files."""

    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # None: max_loras

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras}): every adapter on "
                "the device is also kept in host memory"
            )

    @property
    def cpu_capacity(self) -> int:
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras
