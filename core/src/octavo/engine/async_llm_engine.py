"""vLLM's import path of the async engine: `from octavo.engine.async_llm_engine import AsyncLLMEngine`."""

from octavo.async_engine import AsyncLLMEngine

__all__ = ["AsyncLLMEngine"]
