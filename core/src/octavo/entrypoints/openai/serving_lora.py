"""LoRA adapters on the OpenAI server: `--lora-modules`, adapters as models, runtime loading.

Adapters are listed by /v1/models beside the base model (`parent`: the base model's name) and
chosen by a request's `model` field (OpenAIServing.lora_for). With
OCTAVO_ALLOW_RUNTIME_LORA_UPDATING (or vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING) set to true,
POST /v1/load_lora_adapter {"lora_name", "lora_path"} and POST /v1/unload_lora_adapter
{"lora_name"} add and remove them while the server runs (vLLM's routes and answers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from octavo.entrypoints.openai.errors import BadRequestError, NotFoundError
from octavo.entrypoints.openai.protocol import ModelCard
from octavo.lora import LoRAError
from octavo.lora.adapter import load_adapter
from octavo.lora.registry import LoRAModules, parse_lora_modules, runtime_updating_allowed

logger = logging.getLogger("octavo")


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str
    base_model_name: str | None = None


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def _manager(engine: Any):
    """The in-process engine's LoRA manager, or a LoRAError saying how to enable LoRA."""
    manager = getattr(getattr(getattr(engine, "engine", None), "runner", None), "lora_manager", None)
    if manager is None:
        raise LoRAError("LoRA adapters are not enabled on this server: start it with --enable-lora")
    return manager


def lora_modules(engine: Any, base_names: list[str], values: list[str] | None) -> LoRAModules | None:
    """The registry of a server started with --enable-lora, holding the --lora-modules adapters,
    each read and checked now (LoRAError for one that does not fit); None without LoRA."""
    if getattr(getattr(engine.engine, "config", None), "lora", None) is None:
        if values:
            raise LoRAError("--lora-modules needs --enable-lora")
        return None
    registry = LoRAModules(base_names)
    for name, path, base in parse_lora_modules(values or []):
        req = registry.make(name, path, base)
        engine.engine.add_lora(req)  # the engine thread has not started: safe to load here
        registry.add(req)
    return registry


def lora_model_cards(registry: LoRAModules | None, parent: str, created: int, max_model_len: int) -> list[ModelCard]:
    if registry is None:
        return []
    return [
        ModelCard(id=name, created=created, root=req.lora_path, parent=parent, max_model_len=max_model_len)
        for name, req in registry.adapters.items()
    ]


def add_lora_routes(app: FastAPI, engine: Any, registry: LoRAModules | None, errors: dict) -> None:
    """/v1/load_lora_adapter and /v1/unload_lora_adapter, where runtime updating is allowed."""
    if not runtime_updating_allowed():
        return

    @app.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=errors)
    async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> PlainTextResponse:
        if registry is None:
            raise BadRequestError("LoRA adapters are not enabled on this server: start it with --enable-lora")
        try:
            req = registry.make(body.lora_name, body.lora_path, body.base_model_name)
            manager = _manager(engine)
            # read and checked off the event loop; the engine loads it again (cached) at its first request
            await asyncio.to_thread(load_adapter, req, manager.targets, manager.config.max_lora_rank)
        except ValueError as e:  # LoRAError included
            raise BadRequestError(str(e), param="lora_path") from None
        registry.add(req)
        logger.info("LoRA adapter %r loaded from %s", req.lora_name, req.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=errors)
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        req = registry.get(body.lora_name) if registry is not None else None
        if registry is None or req is None or (body.lora_int_id is not None and body.lora_int_id != req.lora_int_id):
            raise NotFoundError(f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name")
        # requests already running keep their adapter to the end; new ones cannot name it
        registry.remove(body.lora_name)
        logger.info("LoRA adapter %r unloaded", body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
