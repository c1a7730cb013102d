"""vLLM's import path of the engine options: `from octavo.engine.arg_utils import AsyncEngineArgs`."""

from octavo.engine_args import AsyncEngineArgs, EngineArgs

__all__ = ["AsyncEngineArgs", "EngineArgs"]
