"""The server's named adapters: `--lora-modules name=path ...` and runtime loads (no torch).

A request chooses an adapter by its `model` field; the registry turns the name into the
`LoRARequest` the engine runs with. Each name added gets a fresh `lora_int_id`, so an adapter
unloaded and loaded again under the same name (perhaps from another folder) never shares
cached KV or a loaded copy with the old one.
"""

from __future__ import annotations

import json
import os

from octavo.lora.request import LoRARequest

#: env vars that enable /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's name too)
RUNTIME_UPDATING_ENV = ("OCTAVO_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_ALLOW_RUNTIME_LORA_UPDATING")


def runtime_updating_allowed() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true") for name in RUNTIME_UPDATING_ENV)


def parse_lora_modules(values: list[str]) -> list[tuple[str, str, str | None]]:
    """(name, path, base model name) of each `--lora-modules` value: `name=path`, or vLLM's JSON
    form `{"name": ..., "path": ..., "base_model_name": ...}`."""
    modules = []
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                spec = json.loads(value)
                modules.append((spec["name"], spec["path"], spec.get("base_model_name")))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f'--lora-modules {value!r}: a JSON value needs the keys "name" and "path"') from None
            continue
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f'--lora-modules {value!r}: give name=path (or JSON with "name" and "path")')
        modules.append((name, path, None))
    return modules


class LoRAModules:
    def __init__(self, base_names: list[str]) -> None:
        self.base_names = base_names  # the served names of the base model: no adapter may take one
        self.adapters: dict[str, LoRARequest] = {}
        self._next_id = 1

    def __contains__(self, name: object) -> bool:
        return name in self.adapters

    def get(self, name: str) -> LoRARequest | None:
        return self.adapters.get(name)

    def make(self, name: str, path: str, base_model_name: str | None = None) -> LoRARequest:
        """The request for a new adapter `name` (not added yet: `add` it once it is checked)."""
        if name in self.adapters or name in self.base_names:
            raise ValueError(f"The lora adapter '{name}' has already been loaded.")
        return LoRARequest(name, self._next_id, path, base_model_name)

    def add(self, req: LoRARequest) -> None:
        self.adapters[req.lora_name] = req
        self._next_id = max(self._next_id, req.lora_int_id + 1)

    def remove(self, name: str) -> LoRARequest:
        """KeyError if no adapter has that name."""
        return self.adapters.pop(name)
