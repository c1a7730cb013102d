"""Multi-LoRA serving: many adapters of one base model, batched in the same steps (docs/lora.md)."""

from octavo.lora.config import LoRAConfig, LoRAError
from octavo.lora.request import LoRARequest

__all__ = ["LoRAConfig", "LoRAError", "LoRARequest"]
