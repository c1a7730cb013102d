"""What both generation endpoints share: model names, tokenizing, context checks, submission,
SSE framing, logprobs formatting and cancelling a request whose client went away."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from octavo.async_engine import AsyncLLMEngine, QueueFullError, RequestStream, last_output
from octavo.entrypoints.openai.errors import (
    APIError,
    BadRequestError,
    ContextLengthError,
    InternalServerError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from octavo.entrypoints.openai.limits import RequestLimits, prompt_byte_bound
from octavo.lora.registry import LoRAModules
from octavo.lora.request import LoRARequest
from octavo.multimodal import MultiModalInputs
from octavo.outputs import CompletionOutput, Logprob, RequestOutput
from octavo.sampling_params import SamplingParams

T = TypeVar("T")


class OpenAIServing:
    def __init__(
        self,
        engine: AsyncLLMEngine,
        served_model_names: list[str],
        metrics: Any = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.engine = engine
        self.served_model_names = served_model_names
        self.tokenizer = engine.tokenizer
        self.max_model_len = int(engine.model_config.max_model_len)
        self.metrics = metrics
        self.limits = limits or RequestLimits()
        # prompts must be ids the tokenizer knows and the model embeds; sampling fields only
        # need a column of the logits
        self._vocab_size = min(len(self.tokenizer), engine.vocab_size)
        self._model_vocab_size = engine.vocab_size
        most = self.limits.max_prompt_bytes
        self.max_prompt_bytes = most if most is not None else prompt_byte_bound(self.tokenizer, self.max_model_len)
        # what a request leaves unset: the model's generation_config.json (--generation-config)
        generation = getattr(engine.model_config, "generation", None)
        self.default_sampling: dict[str, Any] = dict(generation.sampling) if generation is not None else {}
        # LoRA adapters served as models of their own (serving_lora.py); None without --enable-lora
        self.loras: LoRAModules | None = None

    # ---- checks ------------------------------------------------------------------------
    def model_name(self, requested: str | None) -> str:
        """The name to answer with; 404 for a model this server does not serve."""
        if requested is None or requested == "":
            return self.served_model_names[0]
        if requested not in self.served_model_names and (self.loras is None or requested not in self.loras):
            adapters = list(self.loras.adapters) if self.loras is not None else []
            raise ModelNotFoundError(requested, self.served_model_names + adapters)
        return requested

    def lora_for(self, model: str) -> LoRARequest | None:
        """The adapter a request's (checked) model name chooses; None for the base model."""
        return self.loras.get(model) if self.loras is not None else None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def check_prompt_bytes(self, texts: list[str], param: str) -> None:
        """Refuse prompt text too long to fit the context before paying for its tokenization."""
        size = sum(len(t.encode("utf-8", errors="replace")) for t in texts)
        if size > self.max_prompt_bytes:
            raise BadRequestError(
                f"the {param} has {size} bytes of text, more than this server accepts ({self.max_prompt_bytes}: "
                f"it cannot fit the model's context of {self.max_model_len} tokens); shorten it",
                param=param,
                code="context_length_exceeded",
            )

    def check_request_limits(self, req: Any) -> None:
        """The bounds of `limits.py` on one generation request's fields (400 naming the field)."""
        lim = self.limits
        stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
        checks = [  # (field, its size, the most allowed, the flag that sets it)
            ("n", req.n, lim.max_n, "--max-n"),
            ("best_of", req.best_of or 0, lim.max_n, "--max-n"),
            ("stop", len(stops), lim.max_stop, "--max-stop"),
            ("stop_token_ids", len(req.stop_token_ids or ()), lim.max_stop, "--max-stop"),
            ("logit_bias", len(req.logit_bias or ()), lim.max_logit_bias, "--max-logit-bias"),
            ("allowed_token_ids", len(req.allowed_token_ids or ()), self._model_vocab_size, "the vocabulary size"),
        ]
        for name, size, most, flag in checks:
            if size > most:
                raise BadRequestError(
                    f"{name}: {size} is more than this server allows ({most}; see {flag})", param=name
                )

    def check_chat_template(self, template: str | None) -> None:
        if template is not None and not self.limits.trust_request_chat_template:
            raise BadRequestError(
                "this server does not run chat templates sent in requests (start it with "
                "--trust-request-chat-template to allow them)",
                param="chat_template",
            )

    def sampling_params(self, req: Any, max_tokens: int | None) -> SamplingParams:
        """The request's SamplingParams, each field checked (ranges, and token ids against the
        model's vocabulary): any problem is a 400 naming the field."""
        try:
            params = req.to_sampling_params(max_tokens, self.default_sampling)
            params.verify_token_ids(self._model_vocab_size)
        except ValueError as e:
            raise sampling_error(e) from None
        return params

    def check_token_ids(self, ids: list[int], param: str) -> None:
        for t in ids:
            if not isinstance(t, int) or not 0 <= t < self._vocab_size:
                raise BadRequestError(
                    f"token id {t!r} in {param} is out of the vocabulary [0, {self._vocab_size})", param=param
                )

    def max_tokens_for(self, num_prompt_tokens: int, requested: int | None, param: str) -> int:
        """Check prompt + max_tokens against the context; None means "the rest of it". The model's
        generation config caps the result at its max_new_tokens, as vLLM does."""
        allowed = self._max_tokens_for(num_prompt_tokens, requested, param)
        cap = self.default_sampling.get("max_tokens")
        return allowed if cap is None else min(allowed, cap)

    def _max_tokens_for(self, num_prompt_tokens: int, requested: int | None, param: str) -> int:
        if num_prompt_tokens == 0:
            raise BadRequestError(f"the {param} is empty", param=param)
        if requested is not None and (not isinstance(requested, int) or requested < 1):
            name = "max_tokens"
            raise BadRequestError(
                f"invalid sampling parameter {name}={requested!r}: must be an integer >= 1 or null", param=name
            )
        if num_prompt_tokens >= self.max_model_len:
            raise ContextLengthError(self.max_model_len, num_prompt_tokens, requested, param)
        if requested is None:
            return self.max_model_len - num_prompt_tokens
        if num_prompt_tokens + requested > self.max_model_len:
            raise ContextLengthError(self.max_model_len, num_prompt_tokens, requested, param)
        return requested

    # ---- submission --------------------------------------------------------------------
    async def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int] | MultiModalInputs,
        params: SamplingParams,
        lora: LoRARequest | None = None,
    ) -> RequestStream:
        """Hand a request to the engine (token ids, or a prompt with images already processed);
        engine-side rejections become OpenAI errors."""
        try:
            ids = prompt_token_ids
            prompt = ids if isinstance(ids, MultiModalInputs) else {"prompt_token_ids": ids}
            return await self.engine.add_request(request_id, prompt, params, lora_request=lora)
        except QueueFullError as e:
            if self.metrics is not None:
                self.metrics.rejected.inc()
            raise ServiceUnavailableError(str(e), code="server_overloaded") from None
        except ValueError as e:
            raise BadRequestError(str(e)) from None
        except APIError:
            raise
        except RuntimeError as e:  # EngineDeadError and friends
            raise InternalServerError(str(e)) from None

    async def submit_all(
        self,
        request_id: str,
        requests: Sequence[tuple[list[int] | MultiModalInputs, SamplingParams]],
        lora: LoRARequest | None = None,
    ) -> list[RequestStream]:
        """Submit one request per prompt (with `lora`'s adapter); if any is refused, abort those already accepted."""
        if len(requests) == 1:
            return [await self.submit(request_id, *requests[0], lora)]
        streams: list[RequestStream] = []
        try:
            for i, (ids, params) in enumerate(requests):
                streams.append(await self.submit(f"{request_id}-{i}", ids, params, lora))
        except BaseException:
            for s in streams:
                s.abort()
            raise
        return streams

    # ---- helpers for the response ------------------------------------------------------
    def token_str(self, token_id: int, lp: Logprob | None) -> str:
        if lp is not None and lp.decoded_token is not None:
            return lp.decoded_token
        return self.tokenizer.decode([token_id])

    def top_logprobs(self, entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
        items = sorted(
            entry.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30, -kv[1].logprob)
        )
        return items[:k]


def sampling_error(e: ValueError) -> BadRequestError:
    """A SamplingParams ValueError as a 400 that names the field."""
    m = re.match(r"invalid sampling parameter (\w+)\b", str(e))
    return BadRequestError(str(e), param=m.group(1) if m else None)


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several requests' outputs as they come, tagged with the stream's position."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                queue.put_nowait((i, out))
        except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
            queue.put_nowait((i, e))
        queue.put_nowait((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.abort()


async def final_outputs(streams: list[RequestStream]) -> list[RequestOutput]:
    """The last output of each stream (FINAL_ONLY requests yield exactly one)."""
    return list(await asyncio.gather(*(last_output(s) for s in streams)))


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run a non-streaming handler's work; cancel it (aborting its requests) if the client leaves.

    (Streaming responses need no help: Starlette cancels the body iterator on disconnect.)
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        raise ClientDisconnected()
    return task.result()


class ClientDisconnected(Exception):
    """The client of a non-streaming request went away; its requests were aborted."""


class EventStreamResponse(StreamingResponse):
    """Server-sent events whose requests are aborted however the response ends.

    The body generator's own `finally` covers a client that leaves mid-stream; this also covers
    one that leaves before the generator first ran (a never-started generator runs no finally).
    """

    def __init__(self, content: AsyncIterator[str], streams: list[RequestStream]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._streams = streams

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for s in self._streams:
                s.abort()


def sse(obj: Any) -> str:
    """One server-sent event carrying a JSON object (a pydantic model or a dict)."""
    data = obj.model_dump_json() if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def num_output_tokens(outputs: list[CompletionOutput]) -> int:
    return sum(len(c.token_ids) for c in outputs)
