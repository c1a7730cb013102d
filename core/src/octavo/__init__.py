"""Octavo: a fast, device-agnostic LLM inference and serving engine."""

from octavo import openmp
from octavo.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
from octavo.engine_args import AsyncEngineArgs, EngineArgs
from octavo.outputs import CompletionOutput, Logprob, RequestOutput
from octavo.pooling_params import PoolingParams
from octavo.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

# before anything loads torch and its OpenMP runtime, which reads its settings once (none of the
# imports above loads torch; openmp.py says why)
openmp.bound_spinning()

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncLLMEngine",
    "LLMEngine",
    "EngineArgs",
    "AsyncEngineArgs",
    "SamplingParams",
    "PoolingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "RequestOutputKind",
    "CompletionOutput",
    "Logprob",
    "BeamSearchParams",
    "BeamSearchOutput",
    "BeamSearchSequence",
    "__version__",
]


def __getattr__(name):
    # torch-heavy parts load on first use, so `import octavo` stays cheap
    if name == "LLM":
        from octavo.entrypoints.llm import LLM

        return LLM
    if name == "LLMEngine":
        from octavo.engine import LLMEngine

        return LLMEngine
    if name == "AsyncLLMEngine":
        from octavo.async_engine import AsyncLLMEngine

        return AsyncLLMEngine
    raise AttributeError(f"module 'octavo' has no attribute {name!r}")
