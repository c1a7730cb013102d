"""A request's output constraint, compiled before the request reaches the engine: a schema,
regex or grammar that does not compile is a 400 naming the field that carried it, and the
compilation runs off the event loop and off the engine's step loop (the engine then finds it in
its grammar cache)."""

from __future__ import annotations

import asyncio
from typing import Any

from octavo.entrypoints.openai.errors import BadRequestError
from octavo.sampling_params import SamplingParams


async def compile_constraint(engine: Any, req: Any, params: SamplingParams) -> None:
    so = params.structured_outputs
    if so is None:
        return
    field = req._constraints()[0][0]  # the one field that set it (several are refused earlier)
    if getattr(req, "use_beam_search", False):
        raise BadRequestError(f"{field} cannot be combined with use_beam_search", param=field)
    try:
        await asyncio.to_thread(engine.engine.structured.compile, so)
    except ValueError as e:
        raise BadRequestError(f"{field}: {e}", param=field) from None
