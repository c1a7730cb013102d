"""POST /v1/chat/completions: messages through the model's chat template, streamed or not."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from octavo.async_engine import RequestStream
from octavo.entrypoints.openai.chat_output import ChatOutput
from octavo.entrypoints.openai.errors import APIError, BadRequestError, error_body
from octavo.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatLogProbs,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
    DeltaMessage,
    NamedToolChoice,
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
from octavo.entrypoints.openai.serving_images import multimodal_prompt, take_images
from octavo.entrypoints.openai.structured import compile_constraint
from octavo.multimodal import MultiModalInputs
from octavo.multimodal.media import UrlFetch
from octavo.multimodal.processor import multimodal_processor, renders_parts
from octavo.outputs import CompletionOutput
from octavo.reasoning import get_reasoning_parser
from octavo.tool_parsers import get_tool_parser

ROLE = "assistant"


def check_tool_choice(req: ChatCompletionRequest, auto_tools: bool) -> None:
    """tool_choice "auto" (the default with tools) needs the server's parser of the model's format."""
    if req.tool_mode == "auto" and not auto_tools:
        raise BadRequestError(
            'tool_choice "auto" (the default when tools are given) needs a server started with '
            "--enable-auto-tool-choice and --tool-call-parser; send tool_choice 'required', a named function or 'none'",
            param="tool_choice",
        )


def load_chat_template(value: str | None) -> str | None:
    """--chat-template: a file holding a Jinja template, or the template itself."""
    if value is None:
        return None
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text()
    except OSError:
        pass
    if "{" not in value:
        raise ValueError(f"--chat-template {value!r} is neither a readable file nor a Jinja template")
    return value


class OpenAIServingChat(OpenAIServing):
    def __init__(
        self,
        *args: Any,
        chat_template: str | None = None,
        tool_call_parser: str | None = None,
        enable_auto_tool_choice: bool = False,
        reasoning_parser: str | None = None,
        image_fetch: UrlFetch | None = None,
        **kw: Any,
    ) -> None:
        """`image_fetch`: how http(s) image URLs are fetched, None to refuse them (--allow-image-urls)."""
        super().__init__(*args, **kw)
        self.image_fetch = image_fetch
        # a vision-language model's processor: images are decoded and processed here, in the API process
        engine = self.engine
        self.mm_processor = getattr(engine.engine, "mm_processor", None) or multimodal_processor(
            engine.model_config, self.tokenizer
        )
        self.chat_template = chat_template
        if self.mm_processor is not None and not (chat_template or getattr(self.tokenizer, "chat_template", None)):
            self.chat_template = self.mm_processor.processor_template()  # older processors keep it apart
        self.tool_parser = get_tool_parser(tool_call_parser) if tool_call_parser else None
        self.auto_tools = enable_auto_tool_choice and self.tool_parser is not None
        self.reasoning = get_reasoning_parser(reasoning_parser) if reasoning_parser else None

    def chat_output(self, req: ChatCompletionRequest) -> ChatOutput:
        mode = req.tool_mode
        named = req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None
        return ChatOutput(mode, self.reasoning, self.tool_parser, named, single_call=req.parallel_tool_calls is False)

    # ---- prompt -------------------------------------------------------------------------
    def render_checked(self, messages: list[ChatMessage], **kw: Any) -> str:
        """`render`, after the bound on the messages' text (`limits.py`): a conversation whose
        text cannot fit the context is refused before the template runs."""
        try:
            texts = [m.text() for m in messages]
        except ValueError as e:
            raise BadRequestError(str(e), param="messages") from None
        self.check_prompt_bytes(texts, "messages")
        return self.render(messages, **kw)

    def render(
        self,
        messages: list[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text the chat template makes of the messages and tools (OpenAI's tool
        objects, which Hugging Face templates read as they are; 400 on any template error)."""
        template = chat_template or self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise BadRequestError(
                "this model has no chat template; start the server with --chat-template FILE or use /v1/completions",
                param="messages",
            )
        try:
            conversation = [m.template_fields() for m in messages]
        except ValueError as e:
            raise BadRequestError(str(e), param="messages") from None
        if continue_final_message and add_generation_prompt:
            add_generation_prompt = False  # vLLM refuses both; continuing wins, as the caller asked
        self._check_template_kwargs(chat_template_kwargs)
        try:
            text = self.tokenizer.apply_chat_template(
                conversation,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tools=tools,
                **(chat_template_kwargs or {}),
            )
        except Exception as e:  # noqa: BLE001 - jinja's errors and raise_exception() in templates
            raise BadRequestError(f"the chat template could not render these messages: {e}", param="messages") from None
        return text if isinstance(text, str) else str(text)

    def _check_template_kwargs(self, kwargs: dict[str, Any] | None) -> None:
        """chat_template_kwargs are variables for the template; none may be a parameter of
        apply_chat_template itself (tokenize, padding, max_length, tokenizer_kwargs...), which
        would let a request make the server tokenize and pad to any length it names."""
        own = set(inspect.signature(self.tokenizer.apply_chat_template).parameters) - {"kwargs"}
        taken = sorted(own & set(kwargs or ()))
        if taken:
            raise BadRequestError(
                f"chat_template_kwargs may not set {', '.join(taken)}: they are the server's, not the template's",
                param="chat_template_kwargs",
            )

    async def create_chat_completion(
        self, req: ChatCompletionRequest, raw: Request
    ) -> JSONResponse | EventStreamResponse:
        model = self.model_name(req.model)
        if req.use_beam_search:
            raise BadRequestError("use_beam_search is supported on /v1/completions only", param="use_beam_search")
        check_tool_choice(req, self.auto_tools)
        self.check_request_limits(req)
        self.check_chat_template(req.chat_template)
        self.sampling_params(req, None)  # every field checked before the prompt is built
        processor = self.mm_processor
        template = req.chat_template or self.chat_template or getattr(self.tokenizer, "chat_template", None)
        parts = template is not None and renders_parts(template)  # the template writes images itself
        messages, images = take_images(req.messages, processor, self.image_fetch, parts)
        text = self.render_checked(
            messages,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
            tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        )
        prompt: list[int] | MultiModalInputs
        if processor is not None:
            prompt = multimodal_prompt(processor, text, images, req.add_special_tokens)
            ids = prompt.prompt_token_ids
        else:
            ids = prompt = self.encode(text, req.add_special_tokens)
        max_tokens = self.max_tokens_for(len(ids), req.requested_max_tokens, "messages")
        params = self.sampling_params(req, max_tokens)
        if req.tool_mode == "auto" and self.tool_parser is not None:
            keep = self.tool_parser.skip_special_tokens()  # a format whose markers are special tokens
            if keep is not None:
                params.skip_special_tokens = keep
        await compile_constraint(self.engine, req, params)
        request_id = req.request_id or random_id("chatcmpl")
        streams = await self.submit_all(request_id, [(prompt, params)], self.lora_for(model))
        echo = ""
        if req.echo and req.messages[-1].role == ROLE:
            echo = req.messages[-1].text()
        if req.stream:
            return EventStreamResponse(self._stream(req, request_id, model, ids, streams, echo), streams)
        try:
            return await cancel_on_disconnect(raw, self._full(req, request_id, model, ids, streams, echo))
        finally:
            for s in streams:  # no-op once finished; frees the KV of a request nobody awaits
                s.abort()

    # ---- non-streaming ----------------------------------------------------------------------
    async def _full(
        self,
        req: ChatCompletionRequest,
        request_id: str,
        model: str,
        ids: list[int],
        streams: list[RequestStream],
        echo: str,
    ) -> JSONResponse:
        (out,) = await final_outputs(streams)
        reader = self.chat_output(req)
        choices = []
        num_generated = 0
        for c in sorted(out.outputs, key=lambda c: c.index):
            num_generated += len(c.token_ids)
            reasoning, content, calls = reader.message(c.text)
            if echo:
                content = echo + (content or "")
            message = ChatResponseMessage(role=ROLE, content=content, reasoning_content=reasoning, tool_calls=calls)
            choices.append(
                ChatCompletionResponseChoice(
                    index=c.index,
                    message=message,
                    logprobs=self._logprobs(c, req.top_logprobs or 0) if req.logprobs else None,
                    finish_reason=reader.finish_reason(c.finish_reason, len(calls)),
                    stop_reason=c.stop_reason,
                )
            )
        usage = UsageInfo(
            prompt_tokens=len(ids), completion_tokens=num_generated, total_tokens=len(ids) + num_generated
        )
        resp = ChatCompletionResponse(id=request_id, model=model, choices=choices, usage=usage)
        data = resp.model_dump()
        for choice in data["choices"]:  # OpenAI's messages have no reasoning_content: only with a reasoning parser
            if choice["message"]["reasoning_content"] is None:
                del choice["message"]["reasoning_content"]
        return JSONResponse(data)

    # ---- streaming -------------------------------------------------------------------------
    async def _stream(
        self,
        req: ChatCompletionRequest,
        request_id: str,
        model: str,
        ids: list[int],
        streams: list[RequestStream],
        echo: str,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        num_prompt = len(ids)
        num_generated = 0

        def chunk(choice: ChatCompletionStreamChoice | None) -> str:
            resp = ChatCompletionStreamResponse(
                id=request_id, created=created, model=model, choices=[choice] if choice else []
            )
            if req.continuous_usage or (choice is None and req.include_usage):
                resp.usage = UsageInfo(
                    prompt_tokens=num_prompt, completion_tokens=num_generated, total_tokens=num_prompt + num_generated
                )
            data = resp.model_dump()
            for c in data["choices"]:  # OpenAI's deltas carry only the fields that changed
                c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
            return sse(data)

        reader = self.chat_output(req)
        plain = reader.reasoning is None and reader.mode == "none"  # text deltas pass as they are
        choice_streams = [reader.stream() for _ in range(req.n)]
        try:
            # the first chunk of each choice names the role, as OpenAI's do
            for i in range(req.n):
                yield chunk(ChatCompletionStreamChoice(index=i, delta=DeltaMessage(role=ROLE, content=echo)))
            async for _, out in merge_streams(streams):
                for c in out.outputs:
                    if not c.text and not c.token_ids and c.finish_reason is None:
                        continue
                    num_generated += len(c.token_ids)
                    final = c.finish_reason is not None
                    if plain:
                        delta = DeltaMessage(content=c.text)
                        finish_reason = c.finish_reason
                    else:
                        stream = choice_streams[c.index]
                        reasoning, content, calls = stream.feed(c.text, final)
                        delta = DeltaMessage(content=content, reasoning_content=reasoning, tool_calls=calls or None)
                        finish_reason = reader.finish_reason(c.finish_reason, stream.num_calls)
                        if delta == DeltaMessage() and not final and not req.logprobs:
                            continue  # text held back (a marker may be arriving): nothing to send yet
                    yield chunk(
                        ChatCompletionStreamChoice(
                            index=c.index,
                            delta=delta,
                            logprobs=self._logprobs(c, req.top_logprobs or 0) if req.logprobs else None,
                            finish_reason=finish_reason,
                            stop_reason=c.stop_reason,
                        )
                    )
            if req.include_usage:
                yield chunk(None)
        except APIError as e:
            yield sse(error_body(e.message, type=e.type, param=e.param, code=e.code))
        except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
            yield sse(error_body(f"generation failed: {e}", type="server_error"))
        yield SSE_DONE

    # ---- logprobs ----------------------------------------------------------------------------
    def _logprobs(self, c: CompletionOutput, k: int) -> ChatLogProbs:
        content = []
        for i, tid in enumerate(c.token_ids):
            entry = c.logprobs[i] if c.logprobs is not None and i < len(c.logprobs) else {}
            chosen = entry.get(tid)
            tok = self.token_str(tid, chosen)
            top = (
                [
                    ChatTopLogprob(
                        token=(s := self.token_str(t, lp)),
                        logprob=max(lp.logprob, -9999.0),
                        bytes=list(s.encode("utf-8", errors="replace")),
                    )
                    for t, lp in self.top_logprobs(entry, k)
                ]
                if k
                else []
            )
            content.append(
                ChatTokenLogprob(
                    token=tok,
                    logprob=max(chosen.logprob, -9999.0) if chosen else -9999.0,
                    bytes=list(tok.encode("utf-8", errors="replace")),
                    top_logprobs=top,
                )
            )
        return ChatLogProbs(content=content)
