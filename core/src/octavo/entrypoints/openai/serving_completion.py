"""POST /v1/completions: text or token-id prompts (one or a batch), streamed or not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse

from octavo.async_engine import RequestStream
from octavo.entrypoints.openai.errors import APIError, BadRequestError, error_body
from octavo.entrypoints.openai.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    UsageInfo,
    random_id,
)
from octavo.entrypoints.openai.serving_engine import (
    SSE_DONE,
    EventStreamResponse,
    OpenAIServing,
    cancel_on_disconnect,
    final_outputs,
    merge_streams,
    sse,
)
from octavo.entrypoints.openai.structured import compile_constraint
from octavo.outputs import CompletionOutput, Logprob, PromptLogprobs


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, req: CompletionRequest, raw: Request) -> JSONResponse | EventStreamResponse:
        model = self.model_name(req.model)
        if req.suffix:
            raise BadRequestError("suffix is not supported", param="suffix")
        self.check_request_limits(req)
        self.sampling_params(req, None)  # every field checked before any prompt is tokenized
        prompts = self._prompts(req)
        submissions = []
        for _, ids in prompts:
            max_tokens = self.max_tokens_for(len(ids), req.max_tokens, "prompt")
            submissions.append((ids, self.sampling_params(req, max_tokens)))
        await compile_constraint(self.engine, req, submissions[0][1])
        request_id = req.request_id or random_id("cmpl")
        n = req.n
        if req.use_beam_search and self.lora_for(model) is not None:
            raise BadRequestError("beam search does not run LoRA adapters yet", param="use_beam_search")
        if req.use_beam_search:
            return await cancel_on_disconnect(raw, self._beam_search(req, request_id, model, prompts, submissions))
        streams = await self.submit_all(request_id, submissions, self.lora_for(model))
        if req.stream:
            return EventStreamResponse(self._stream(req, request_id, model, prompts, streams, n), streams)
        try:
            return await cancel_on_disconnect(raw, self._full(req, request_id, model, prompts, streams, n))
        finally:
            for s in streams:  # no-op once finished; frees the KV of a request nobody awaits
                s.abort()

    def _prompts(self, req: CompletionRequest) -> list[tuple[str | None, list[int]]]:
        """(text or None, token ids) for each prompt of the request."""
        p = req.prompt
        if isinstance(p, str):
            items: list = [p]
        elif p and isinstance(p[0], int):
            items = [p]
        else:
            items = list(p)
        out: list[tuple[str | None, list[int]]] = []
        for item in items:
            if isinstance(item, str):
                self.check_prompt_bytes([item], "prompt")
                out.append((item, self.encode(item, req.add_special_tokens)))
            else:
                ids = list(item)
                if not ids:
                    raise BadRequestError("a token-id prompt must not be empty", param="prompt")
                self.check_token_ids(ids, "prompt")
                out.append((None, ids))
        return out

    def _prompt_text(self, text: str | None, ids: list[int]) -> str:
        return text if text is not None else self.tokenizer.decode(ids)

    # ---- non-streaming ----------------------------------------------------------------------
    async def _beam_search(
        self,
        req: CompletionRequest,
        request_id: str,
        model: str,
        prompts: list[tuple[str | None, list[int]]],
        submissions,
    ) -> JSONResponse:
        from octavo.beam_search import BeamSearchParams

        if req.stream:
            raise BadRequestError(
                "use_beam_search cannot stream: the best beams are known only at the end", param="stream"
            )
        if req.logprobs is not None or req.echo:
            raise BadRequestError("use_beam_search does not return logprobs or echo", param="use_beam_search")
        try:
            params = [
                BeamSearchParams(
                    beam_width=req.n,
                    max_tokens=sp.max_tokens,
                    ignore_eos=req.ignore_eos,
                    length_penalty=req.length_penalty,
                )
                for _, sp in submissions
            ]
        except ValueError as e:
            raise BadRequestError(str(e), param="n") from None
        finals = await asyncio.gather(
            *(
                self.engine.beam_search(ids, p, f"{request_id}-{i}")
                for i, ((ids, _), p) in enumerate(zip(submissions, params))
            )
        )
        return self._respond(req, request_id, model, prompts, list(finals), req.n)

    async def _full(
        self,
        req: CompletionRequest,
        request_id: str,
        model: str,
        prompts: list[tuple[str | None, list[int]]],
        streams: list[RequestStream],
        n: int,
    ) -> JSONResponse:
        return self._respond(req, request_id, model, prompts, await final_outputs(streams), n)

    def _respond(
        self,
        req: CompletionRequest,
        request_id: str,
        model: str,
        prompts: list[tuple[str | None, list[int]]],
        finals,
        n: int,
    ) -> JSONResponse:
        choices: list[CompletionResponseChoice] = []
        num_generated = 0
        for p, out in enumerate(finals):
            text_p, ids = prompts[p]
            for c in sorted(out.outputs, key=lambda c: c.index):
                num_generated += len(c.token_ids)
                text = c.text
                logprobs = None
                if req.echo:
                    prompt_text = self._prompt_text(text_p, ids)
                    text = prompt_text + text
                if req.logprobs is not None:
                    logprobs = self._logprobs(
                        c, req.logprobs, out.prompt_logprobs if req.echo else None, ids if req.echo else None
                    )
                choices.append(
                    CompletionResponseChoice(
                        index=p * n + c.index,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                    )
                )
        num_prompt = sum(len(ids) for _, ids in prompts)
        resp = CompletionResponse(
            id=request_id,
            model=model,
            choices=choices,
            usage=UsageInfo(
                prompt_tokens=num_prompt, completion_tokens=num_generated, total_tokens=num_prompt + num_generated
            ),
        )
        return JSONResponse(resp.model_dump())

    # ---- streaming -------------------------------------------------------------------------
    async def _stream(
        self,
        req: CompletionRequest,
        request_id: str,
        model: str,
        prompts: list[tuple[str | None, list[int]]],
        streams: list[RequestStream],
        n: int,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        num_prompt = sum(len(ids) for _, ids in prompts)
        num_generated = 0
        echoed: set[int] = set()
        offsets: dict[int, int] = {}
        try:
            async for p, out in merge_streams(streams):
                text_p, ids = prompts[p]
                for c in out.outputs:
                    index = p * n + c.index
                    text = c.text
                    prompt_lp = prompt_ids = None
                    if req.echo and index not in echoed:
                        echoed.add(index)
                        text = self._prompt_text(text_p, ids) + text
                        prompt_lp, prompt_ids = out.prompt_logprobs, ids
                    if not text and not c.token_ids and c.finish_reason is None:
                        continue
                    num_generated += len(c.token_ids)
                    logprobs = None
                    if req.logprobs is not None:
                        logprobs = self._logprobs(c, req.logprobs, prompt_lp, prompt_ids, offsets.get(index, 0))
                        if logprobs.text_offset:
                            offsets[index] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                    chunk = CompletionStreamResponse(
                        id=request_id,
                        created=created,
                        model=model,
                        choices=[
                            CompletionResponseChoice(
                                index=index,
                                text=text,
                                logprobs=logprobs,
                                finish_reason=c.finish_reason,
                                stop_reason=c.stop_reason,
                            )
                        ],
                    )
                    if req.continuous_usage:
                        chunk.usage = UsageInfo(
                            prompt_tokens=num_prompt,
                            completion_tokens=num_generated,
                            total_tokens=num_prompt + num_generated,
                        )
                    yield sse(chunk)
            if req.include_usage:
                yield sse(
                    CompletionStreamResponse(
                        id=request_id,
                        created=created,
                        model=model,
                        choices=[],
                        usage=UsageInfo(
                            prompt_tokens=num_prompt,
                            completion_tokens=num_generated,
                            total_tokens=num_prompt + num_generated,
                        ),
                    )
                )
        except APIError as e:
            yield sse(error_body(e.message, type=e.type, param=e.param, code=e.code))
        except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
            yield sse(error_body(f"generation failed: {e}", type="server_error"))
        yield SSE_DONE

    # ---- logprobs -------------------------------------------------------------------------
    def _logprobs(
        self,
        c: CompletionOutput,
        k: int,
        prompt_logprobs: PromptLogprobs | None,
        prompt_ids: list[int] | None,
        offset: int = 0,
    ) -> CompletionLogProbs:
        lp = CompletionLogProbs()
        pieces: list[tuple[list[int], Sequence[dict[int, Logprob] | None] | None]] = []
        if prompt_ids is not None:
            pieces.append((prompt_ids, prompt_logprobs))
        pieces.append((c.token_ids, c.logprobs))
        for ids, entries in pieces:
            for i, tid in enumerate(ids):
                entry = entries[i] if entries is not None and i < len(entries) else None
                chosen = entry.get(tid) if entry else None
                tok = self.token_str(tid, chosen)
                lp.tokens.append(tok)
                lp.text_offset.append(offset)
                offset += len(tok)
                lp.token_logprobs.append(max(chosen.logprob, -9999.0) if chosen else None)
                if entry:
                    lp.top_logprobs.append(
                        {
                            self.token_str(t, lp): max(lp.logprob, -9999.0)
                            for t, lp in self.top_logprobs(entry, max(k, 1))
                        }
                    )
                else:
                    lp.top_logprobs.append(None)
        return lp
