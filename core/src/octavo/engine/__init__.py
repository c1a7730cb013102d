"""The engine, at the import paths vLLM users know: `octavo.engine.llm_engine.LLMEngine`,
`octavo.engine.async_llm_engine.AsyncLLMEngine`, `octavo.engine.arg_utils.AsyncEngineArgs`."""

from octavo.engine.llm_engine import EngineStats, LLMEngine, PromptType

__all__ = ["EngineStats", "LLMEngine", "PromptType"]
