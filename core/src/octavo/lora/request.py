"""The LoRA adapter a request runs with: plain data, as vLLM's `vllm.lora.request.LoRARequest`.

It is what crosses from the API into the engine (and between processes): a name, an integer id
and the adapter's folder, never open files or tensors. The engine loads the folder itself
(octavo.lora.adapter) the first time it sees the id.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRARequest:
    """An adapter in PEFT's format: `lora_path` holds adapter_config.json and
    adapter_model.safetensors. `lora_int_id` (>= 1) names the adapter inside the engine: two
    requests with the same id share one loaded copy, so give each distinct adapter its own id."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None  # vLLM's field: the model the adapter was trained on (informative)

    def __post_init__(self) -> None:
        if not isinstance(self.lora_int_id, int) or isinstance(self.lora_int_id, bool) or self.lora_int_id < 1:
            raise ValueError(
                f"LoRARequest {self.lora_name!r}: lora_int_id must be an integer >= 1, got {self.lora_int_id!r}"
            )
        if not self.lora_name:
            raise ValueError("LoRARequest: lora_name must not be empty")
        if not self.lora_path:
            raise ValueError(f"LoRARequest {self.lora_name!r}: lora_path (the adapter's folder) must be given")

    # vLLM's accessors
    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path
