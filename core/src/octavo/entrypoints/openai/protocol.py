"""The OpenAI API's request and response bodies (the subset Octavo serves), as pydantic models.

Requests accept OpenAI's fields plus the extra sampling fields vLLM accepts (top_k, min_p,
repetition_penalty, stop_token_ids, ignore_eos, min_tokens, allowed_token_ids, ...). A field
this server does not implement is refused with a 400 that names it (`RequestModel`): ignoring
it would answer a different question than the client asked. `to_sampling_params()` is the one
place a request becomes engine input; range checks live in `SamplingParams` (their
ValueError -> 400), bounds in `limits.py`. A sampling field the request leaves unset (or null)
takes the server's default: the model's generation_config.json (--generation-config), else
OpenAI's; pydantic's `model_fields_set` tells "unset" from "set to the default value".
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from octavo.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class RequestModel(BaseModel):
    """A request body: unknown fields are an error (FastAPI answers 400 naming them)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ---- shared pieces ----------------------------------------------------------------------
class StreamOptions(RequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage in every chunk


class UsageInfo(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, int] | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class JsonSchemaFormat(RequestModel):
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    # the schema is always enforced (xgrammar's strict mode: no properties beyond the schema's)
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())


class ResponseFormat(RequestModel):
    """OpenAI's response_format: text (no constraint), any JSON object, or a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def to_params(self) -> StructuredOutputsParams | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        if self.json_schema is None:
            raise ValueError("invalid sampling parameter response_format: type json_schema needs a json_schema field")
        return StructuredOutputsParams(json=self.json_schema.json_schema)


def structured_outputs_params(fields: dict[str, Any]) -> StructuredOutputsParams:
    """vLLM's `structured_outputs` request field as engine params (400 on unknown keys)."""
    try:
        return StructuredOutputsParams(**fields)
    except TypeError as e:
        raise ValueError(f"invalid sampling parameter structured_outputs: {e}") from None


class _SamplingFields(RequestModel):
    """Fields both generation endpoints share (OpenAI's and vLLM's extras)."""

    model: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    # vLLM's extra sampling parameters
    best_of: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: int | None = None
    request_id: str | None = None  # vLLM: the id the server logs and returns
    use_beam_search: bool = False  # vLLM: beam search with n beams (completions only)
    length_penalty: float = 1.0
    # the output's format: OpenAI's response_format, or vLLM's structured_outputs (json, regex, choice, grammar...)
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None

    def _constraints(self) -> list[tuple[str, StructuredOutputsParams]]:
        """(field, constraint) for each field of the request that constrains the output."""
        found = []
        if self.structured_outputs is not None:
            found.append(("structured_outputs", structured_outputs_params(self.structured_outputs)))
        fmt = self.response_format.to_params() if self.response_format is not None else None
        if fmt is not None:
            found.append(("response_format", fmt))
        return found

    def _structured_outputs(self) -> StructuredOutputsParams | None:
        found = self._constraints()
        if len(found) > 1:
            raise ValueError(
                f"invalid sampling parameter {found[1][0]}: {found[0][0]} constrains the output already; "
                "send one of them"
            )
        return found[0][1] if found else None

    def _logit_bias(self) -> dict[int, float] | None:
        if not self.logit_bias:
            return None
        try:
            return {int(k): float(v) for k, v in self.logit_bias.items()}
        except ValueError:
            raise ValueError("invalid sampling parameter logit_bias: keys must be token ids") from None

    def _or_default(self, name: str, defaults: dict[str, Any], fallback: float) -> Any:
        """The request's value of `name` if it set one, else the server's default, else `fallback`."""
        value = getattr(self, name)
        if name in self.model_fields_set and value is not None:
            return value
        return defaults.get(name, fallback)

    def _sampling_params(
        self, max_tokens: int | None, logprobs: int | None, stream: bool, defaults: dict[str, Any]
    ) -> SamplingParams:
        return SamplingParams(
            n=self.n,
            best_of=self.best_of,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self._or_default("repetition_penalty", defaults, 1.0),
            temperature=self._or_default("temperature", defaults, 1.0),
            top_p=self._or_default("top_p", defaults, 1.0),
            top_k=self._or_default("top_k", defaults, 0),
            min_p=self._or_default("min_p", defaults, 0.0),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            allowed_token_ids=self.allowed_token_ids,
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            logprobs=logprobs,
            prompt_logprobs=self.prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            logit_bias=self._logit_bias(),
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            structured_outputs=self._structured_outputs(),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(
            self.stream_options and self.stream_options.include_usage and self.stream_options.continuous_usage_stats
        )


# ---- /v1/completions --------------------------------------------------------------------
PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingFields):
    prompt: PromptInput
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    add_special_tokens: bool = True  # vLLM: BOS etc. when tokenizing a text prompt

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: PromptInput) -> PromptInput:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v

    def to_sampling_params(self, max_tokens: int | None, defaults: dict[str, Any] | None = None) -> SamplingParams:
        params = self._sampling_params(max_tokens, self.logprobs, self.stream, defaults or {})
        if self.echo and self.logprobs is not None and params.prompt_logprobs is None:
            params.prompt_logprobs = self.logprobs
        return params


class CompletionLogProbs(OpenAIModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionResponseChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionStreamResponse(CompletionResponse):
    pass


# ---- /v1/chat/completions ---------------------------------------------------------------
class ChatContentPart(RequestModel):
    type: str
    text: str | None = None
    # {"url": "data:image/png;base64,..."} (or the URL alone): vision-language models (serving_images.py)
    image_url: dict[str, Any] | str | None = None


#: the roles OpenAI's chat API knows ("function" is its deprecated name for "tool")
ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(RequestModel):
    role: ChatRole
    content: str | list[ChatContentPart] | None = None
    name: str | None = None
    # an earlier assistant turn's tool calls and a tool result's id: the chat template renders them
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def template_fields(self) -> dict[str, Any]:
        """The message as chat templates read it. Tool calls' arguments arrive as JSON text
        (OpenAI's shape) and go to the template as objects, which templates write with
        `tojson` (as vLLM passes them)."""
        msg: dict[str, Any] = {"role": self.role, "content": self.text()}
        if isinstance(self.content, list) and any(p.type == "image" for p in self.content):
            # a vision-language model's template that writes images itself (serving_images.py): its parts
            msg["content"] = [
                {"type": "image"} if p.type == "image" else {"type": "text", "text": p.text} for p in self.content
            ]
        for key in ("name", "tool_call_id"):
            if getattr(self, key) is not None:
                msg[key] = getattr(self, key)
        if self.tool_calls is not None:
            msg["tool_calls"] = [_template_tool_call(c) for c in self.tool_calls]
        return msg

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.type == "image":  # an image's place, left by serving_images.py: no text
                continue
            if part.type != "text" or part.text is None:
                raise ValueError(f"message content part of type {part.type!r} is not supported (only 'text' parts)")
            out.append(part.text)
        return "\n".join(out)


def _template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError("an assistant message's tool_calls need function.name (OpenAI's shape)")
    args = function.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"tool call {function['name']!r}: arguments are not valid JSON ({e})") from None
    return {**call, "function": {**function, "arguments": args}}


class FunctionDefinition(RequestModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None  # the arguments always follow the schema where a call is enforced


class ChatTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ChatTool] | None = None
    # default: "auto" with tools, "none" without (OpenAI's)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # False: at most one call
    # vLLM's extras
    echo: bool = False  # prepend the last message's content when it is the assistant's
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False  # the template already has them
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("messages must not be empty")
        return v

    @property
    def tool_mode(self) -> str:
        """none, auto, required, or named (a function named in tool_choice)."""
        choice = self.tool_choice
        if choice is None:
            return "auto" if self.tools else "none"
        return "named" if isinstance(choice, NamedToolChoice) else choice

    def _constraints(self) -> list[tuple[str, StructuredOutputsParams]]:
        found = super()._constraints()
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("invalid sampling parameter tool_choice: needs tools")
        schema = self._tool_schema()
        if schema is not None:  # the call always parses: its JSON is constrained
            found.append(("tool_choice", StructuredOutputsParams(json=schema)))
        return found

    def _tool_schema(self) -> dict[str, Any] | None:
        """The JSON schema `required` and a named tool_choice constrain the output to: the
        named function's arguments, or a list of calls of any of the tools."""
        tools = {t.function.name: t.function for t in self.tools or ()}
        mode = self.tool_mode
        if mode == "named":
            assert isinstance(self.tool_choice, NamedToolChoice)  # tool_mode says so
            name = self.tool_choice.function.name
            if name not in tools:
                raise ValueError(
                    f"invalid sampling parameter tool_choice: no tool is named {name!r} (tools: {', '.join(tools)})"
                )
            return tools[name].parameters or {"type": "object", "properties": {}}
        if mode != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [f.name]},
                    "parameters": f.parameters or {"type": "object", "properties": {}},
                },
                "required": ["name", "parameters"],
            }
            for f in tools.values()
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if self.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return schema

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def to_sampling_params(self, max_tokens: int | None, defaults: dict[str, Any] | None = None) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("invalid sampling parameter top_logprobs: needs logprobs=true")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(max_tokens, logprobs, self.stream, defaults or {})


class ChatResponseMessage(OpenAIModel):
    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None  # with --reasoning-parser: the model's thinking
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatTopLogprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatLogProbs(OpenAIModel):
    content: list[ChatTokenLogprob] | None = None


class ChatCompletionResponseChoice(OpenAIModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class DeltaMessage(OpenAIModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's deltas: index, id, type, function


class ChatCompletionStreamChoice(OpenAIModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


# ---- /v1/models -------------------------------------------------------------------------
class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "octavo"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model
    max_model_len: int | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


# ---- /tokenize and /detokenize (vLLM's shapes) -----------------------------------------
class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class TokenizeResponse(OpenAIModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(OpenAIModel):
    prompt: str
