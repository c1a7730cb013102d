"""The OpenAI-compatible HTTP server: a FastAPI app over an AsyncLLMEngine, run by uvicorn.

    octavo serve [MODEL] --device D --host H --port P [engine options] [server options]

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /version, GET /metrics, POST /tokenize, POST /detokenize, and SageMaker's GET/POST /ping
and POST /invocations. With --api-key every route but /health and /ping wants
`Authorization: Bearer <key>`. Every error has OpenAI's body shape.

`python -m octavo.entrypoints.openai.api_server [options]` runs `octavo serve [options]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from octavo import vllm_options
from octavo.async_engine import AsyncLLMEngine, EngineDeadError, RequestFailedError
from octavo.engine_args import AsyncEngineArgs
from octavo.entrypoints.openai.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    error_response,
    validation_message,
)
from octavo.entrypoints.openai.limits import RequestLimits
from octavo.entrypoints.openai.metrics import CONTENT_TYPE, DEFAULT_PREFIX, ServerMetrics
from octavo.entrypoints.openai.openapi import install_openapi
from octavo.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from octavo.entrypoints.openai.serving_chat import OpenAIServingChat, load_chat_template
from octavo.entrypoints.openai.serving_completion import OpenAIServingCompletion
from octavo.entrypoints.openai.serving_engine import ClientDisconnected
from octavo.entrypoints.openai.serving_lora import add_lora_routes, lora_model_cards, lora_modules
from octavo.entrypoints.openai.serving_pooling import add_pooling_routes
from octavo.multimodal.media import UrlFetch
from octavo.pooling.engine import PoolingEngine

logger = logging.getLogger("octavo.server")

PUBLIC_PATHS = frozenset({"/health", "/ping"})


def octavo_version() -> str:
    try:
        return metadata.version("octavo")
    except metadata.PackageNotFoundError:
        import octavo

        return octavo.__version__


@dataclass
class ServerSettings:
    served_model_names: list[str]
    api_key: str | list[str] | None = None  # one key or several (any of them is accepted)
    chat_template: str | None = None  # the template text (already read from its file)
    model_root: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    limits: RequestLimits = field(default_factory=RequestLimits)
    metrics_prefix: str = DEFAULT_PREFIX
    # CORS: off (no browser page of another origin may call this server) unless origins are named;
    # then any method and header, no credentials, as vLLM does
    allowed_origins: list[str] = field(default_factory=list)
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    fastapi_docs: bool = True  # /docs, /redoc, /openapi.json
    # tool_choice "auto": the parser of the model's tool-call format (--tool-call-parser)
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    # vision-language models: fetch http(s) image URLs of chat messages (off: data: URLs only)
    allow_image_urls: bool = False
    # LoRA adapters served from the start: --lora-modules' values (name=path or JSON)
    lora_modules: list[str] | None = None

    @property
    def api_keys(self) -> list[str]:
        """Every key accepted: --api-key repeated, several after one flag, or a comma list."""
        given = [self.api_key] if isinstance(self.api_key, str) else self.api_key or []
        return [key for value in given for key in value.split(",") if key]


class APIKeyMiddleware:
    """Pure ASGI: refuse any HTTP request but /health and /ping without a right bearer token."""

    def __init__(self, app: Any, api_keys: list[str]) -> None:
        self.app = app
        self.expected = [self._digest(f"Bearer {key}".encode()) for key in api_keys]

    @staticmethod
    def _digest(value: bytes) -> bytes:
        # compared as fixed-length digests: compare_digest's time then depends on neither the
        # keys' contents nor their lengths
        return hashlib.sha256(value).digest()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers") or ()).get(b"authorization", b"")
        # every key is compared, so the time taken tells nothing about which one nearly matched
        digest = self._digest(auth)
        if sum(hmac.compare_digest(digest, key) for key in self.expected):
            return await self.app(scope, receive, send)
        err = (
            AuthenticationError()
            if auth
            else AuthenticationError("Missing API key: pass it as 'Authorization: Bearer <key>'.")
        )
        return await err.to_response()(scope, receive, send)


class BodySizeLimitMiddleware:
    """Pure ASGI: refuse a request body over `max_bytes` with 413 before anything parses it.

    A declared Content-Length is checked at once; a chunked body is read up to the limit and
    handed on whole (the JSON routes read it whole anyway), so no route sees a partial body."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:  # then wait for the client to go away, as the real receive would
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        err = APIError(
            f"the request body is larger than this server accepts ({self.max_bytes} bytes, --max-request-body-bytes)",
            status=413,
            code="request_too_large",
        )
        await err.to_response()(scope, receive, send)


def _cache_info(engine: AsyncLLMEngine) -> dict[str, Any] | None:
    """The engine's cache config as vLLM's cache_config_info labels (None for an engine without one)."""
    inner = engine.engine
    config = getattr(inner, "config", None)
    if config is None:
        return None
    cache = config.cache
    return {
        "block_size": cache.block_size,
        "cache_dtype": "auto",  # the KV cache takes the model's dtype
        "enable_prefix_caching": cache.enable_prefix_caching,
        "gpu_memory_utilization": cache.gpu_memory_utilization,
        "num_gpu_blocks": inner.block_manager.num_blocks,
        "num_cpu_blocks": 0,
    }


def build_app(engine: AsyncLLMEngine, settings: ServerSettings) -> FastAPI:
    metrics = ServerMetrics(
        engine, settings.served_model_names[0], prefix=settings.metrics_prefix, cache_info=_cache_info(engine)
    )
    engine.stat_loggers.append(metrics)
    names, limits = settings.served_model_names, settings.limits
    completions = OpenAIServingCompletion(engine, names, metrics, limits)
    chat = OpenAIServingChat(
        engine,
        names,
        metrics,
        limits,
        chat_template=settings.chat_template,
        tool_call_parser=settings.tool_call_parser,
        enable_auto_tool_choice=settings.enable_auto_tool_choice,
        reasoning_parser=getattr(engine.engine, "reasoning_parser", None),
        image_fetch=UrlFetch() if settings.allow_image_urls else None,
    )
    # LoRA adapters, chosen by a request's model name (serving_lora.py)
    loras = lora_modules(engine, names, settings.lora_modules)
    completions.loras = chat.loras = loras

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        logger.info("serving %s", ", ".join(settings.served_model_names))
        yield
        # uvicorn has let in-flight requests finish (or cancelled them after
        # --shutdown-timeout); abort whatever is left and stop the engine thread
        await engine.shutdown()
        logger.info("engine stopped")

    docs: dict[str, Any] = {} if settings.fastapi_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Octavo OpenAI-compatible server", version=octavo_version(), lifespan=lifespan, **docs)
    install_openapi(app, authenticated=bool(settings.api_keys), public_paths=PUBLIC_PATHS)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.settings = settings
    # the last added runs first: CORS (when configured) answers preflights and marks every
    # response (errors too), a client without the key is refused before its body is read, and an
    # oversized body before any route parses it
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=settings.api_keys)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_credentials=settings.allow_credentials,
            allow_methods=settings.allowed_methods,
            allow_headers=settings.allowed_headers,
        )

    # ---- errors: one body shape for all --------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return e.to_response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return BadRequestError(message, param=param).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(message, status=e.status_code, type=kind)

    @app.exception_handler(RequestFailedError)
    async def _request_failed(request: Request, e: RequestFailedError) -> JSONResponse:
        return error_response(str(e), status=500, type="server_error")

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(request: Request, e: EngineDeadError) -> JSONResponse:
        return error_response(f"{e}; the server is shutting down", status=503, type="server_error")

    @app.exception_handler(ClientDisconnected)
    async def _disconnected(request: Request, e: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(f"internal error: {type(e).__name__}: {e}", status=500, type="server_error")

    # ---- routes -----------------------------------------------------------------------------
    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 500, 503)}

    @app.post("/v1/completions", responses=errors)
    async def create_completion(body: CompletionRequest, request: Request):
        return await completions.create_completion(body, request)

    @app.post("/v1/chat/completions", responses=errors)
    async def create_chat_completion(body: ChatCompletionRequest, request: Request):
        return await chat.create_chat_completion(body, request)

    if isinstance(engine.engine, PoolingEngine):
        add_pooling_routes(app, engine, names, limits, errors)
    add_lora_routes(app, engine, loras, errors)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [
            ModelCard(
                id=name,
                created=settings.created,
                root=settings.model_root or name,
                max_model_len=completions.max_model_len,
            )
            for name in settings.served_model_names
        ]
        cards += lora_model_cards(loras, names[0], settings.created, completions.max_model_len)
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/v1/models/{model_id:path}", responses={404: {"model": ErrorResponse}})
    async def retrieve_model(model_id: str) -> JSONResponse:
        completions.model_name(model_id)  # 404 if unknown
        adapters = lora_model_cards(loras, names[0], settings.created, completions.max_model_len)
        card = next((c for c in adapters if c.id == model_id), None) or ModelCard(
            id=model_id,
            created=settings.created,
            root=settings.model_root or model_id,
            max_model_len=completions.max_model_len,
        )
        return JSONResponse(card.model_dump())

    # no body when healthy; 503 in OpenAI's shape when the engine died
    health_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "The engine runs", "content": None},
        503: {"model": ErrorResponse},
    }

    @app.get("/health", response_class=Response, responses=health_responses)
    async def health() -> Response:
        if engine.errored:
            return error_response("the engine is not running", status=503, type="server_error")
        return Response(status_code=200)

    # SageMaker's container contract: GET/POST /ping is the health check, POST /invocations
    # takes a chat or a completion request, told apart by its fields
    for method in ("GET", "POST"):
        app.add_api_route(
            "/ping",
            health,
            methods=[method],
            operation_id=f"ping_{method.lower()}",
            response_class=Response,
            responses=health_responses,
        )

    # the body is read by hand (a chat or a completion request): the schema says which it may be
    invocation_body = {
        "oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (ChatCompletionRequest, CompletionRequest)]
    }

    @app.post(
        "/invocations",
        responses=errors,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": invocation_body}}}},
    )
    async def invocations(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise BadRequestError("the body is not valid JSON") from None
        if not isinstance(body, dict) or ("messages" in body) == ("prompt" in body):
            raise BadRequestError(
                "an invocation is a chat request (with messages) or a completion request (with prompt)"
            )
        try:
            if "messages" in body:
                return await chat.create_chat_completion(ChatCompletionRequest.model_validate(body), request)
            return await completions.create_completion(CompletionRequest.model_validate(body), request)
        except ValidationError as e:
            message, param = validation_message([dict(err) for err in e.errors()])
            raise BadRequestError(message, param=param) from None

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": octavo_version()})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize", responses=errors)
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        completions.model_name(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise BadRequestError("give exactly one of prompt or messages", param="prompt")
        completions.check_chat_template(body.chat_template)
        if body.prompt is not None:
            add_special = True if body.add_special_tokens is None else body.add_special_tokens
            completions.check_prompt_bytes([body.prompt], "prompt")
            ids = completions.encode(body.prompt, add_special)
        else:
            assert body.messages is not None  # exactly one of the two, checked above
            text = chat.render_checked(
                body.messages,
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
                chat_template=body.chat_template,
                chat_template_kwargs=body.chat_template_kwargs,
            )
            ids = chat.encode(text, bool(body.add_special_tokens))
        resp = TokenizeResponse(count=len(ids), max_model_len=completions.max_model_len, tokens=ids)
        if body.return_token_strs:
            resp.token_strs = list(completions.tokenizer.convert_ids_to_tokens(ids))
        return JSONResponse(resp.model_dump(exclude_none=True))

    @app.post("/detokenize", responses=errors)
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        completions.model_name(body.model)
        completions.check_token_ids(body.tokens, "tokens")
        return JSONResponse(DetokenizeResponse(prompt=completions.tokenizer.decode(body.tokens)).model_dump())

    return app


# ---- the `octavo serve` command ------------------------------------------------------------
def serve_options(args: argparse.Namespace) -> tuple[AsyncEngineArgs, ServerSettings]:
    """The engine's and the server's options of an `octavo serve` command line, checked: everything
    short of loading the model (vLLM options Octavo refuses raise here)."""
    vllm_options.check(vars(args), vllm_options.SERVER_OPTIONS)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    settings = ServerSettings(
        served_model_names=args.served_model_name or [engine_args.model],
        api_key=args.api_key,
        chat_template=load_chat_template(args.chat_template),
        model_root=engine_args.model,
        limits=RequestLimits.from_cli_args(args),
        metrics_prefix=args.metrics_prefix,
        allowed_origins=args.allowed_origins,
        allowed_methods=args.allowed_methods,
        allowed_headers=args.allowed_headers,
        allow_credentials=args.allow_credentials,
        fastapi_docs=not args.disable_fastapi_docs,
        tool_call_parser=args.tool_call_parser,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        allow_image_urls=args.allow_image_urls,
        lora_modules=args.lora_modules,
    )
    if settings.enable_auto_tool_choice and settings.tool_call_parser is None:
        raise ValueError(
            "--enable-auto-tool-choice needs --tool-call-parser: the parser of the model's tool-call format"
        )
    return engine_args, settings


def _make_engine(args: argparse.Namespace, engine_args: AsyncEngineArgs, pooling: bool) -> AsyncLLMEngine:
    """The engine in a thread of this process, or in engine core processes (octavo.engine.core_client)
    with --engine-core-process or --data-parallel-size above 1."""
    if args.api_server_count != 1:
        raise ValueError(
            "--api-server-count above 1 is not implemented yet: one API server process talks to the engine core(s)"
        )
    if args.engine_core_process or engine_args.data_parallel_size > 1:
        # LoRA requests do not cross to engine core processes yet
        if pooling or engine_args.enable_lora:
            raise ValueError(
                "pooling models and --enable-lora run the engine in the server's process: leave out "
                "--engine-core-process and --data-parallel-size"
            )
        from octavo.engine.core_client import MPAsyncEngine

        return MPAsyncEngine.from_engine_args(engine_args, max_waiting_requests=args.max_waiting_requests)
    return AsyncLLMEngine.from_engine_args(engine_args, pooling=pooling, max_waiting_requests=args.max_waiting_requests)


def run_server(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit status 0) or until the engine dies (status 1: a
    supervisor should restart the process; an engine never comes back)."""
    engine_args, settings = serve_options(args)
    t0 = time.perf_counter()
    pooling = getattr(args, "runner", None) == "pooling" or getattr(args, "convert", None) in ("embed", "classify")
    engine = _make_engine(args, engine_args, pooling)
    logger.info("model %s loaded in %.1f s", engine_args.model, time.perf_counter() - t0)
    app = build_app(engine, settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path or "",
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_access_log,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=args.shutdown_timeout,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs,
    )
    server = _DrainingServer(config, engine)
    died: list[BaseException] = []

    def on_engine_dead(error: BaseException) -> None:
        # the requests in flight have had their errors; stop serving, as after SIGTERM
        logger.critical("the engine died (%r): the server stops and exits with status 1", error)
        died.append(error)
        server.should_exit = True

    engine.dead_callbacks.append(on_engine_dead)
    # uvicorn installs SIGINT/SIGTERM handlers: stop accepting, let requests in flight finish for
    # up to --shutdown-timeout seconds, cancel the rest; the lifespan then stops the engine
    asyncio.run(server.serve())
    return 1 if died else 0


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, except that on shutdown the requests still running shortly before
    --shutdown-timeout expires are aborted in the engine, so each stream ends with finish_reason
    "abort" and [DONE] (and a non-streaming request with its partial answer) instead of uvicorn
    cancelling its task and cutting the connection."""

    def __init__(self, config: uvicorn.Config, engine: Any) -> None:
        super().__init__(config)
        self._engine = engine

    async def shutdown(self, sockets: list | None = None) -> None:
        timeout = self.config.timeout_graceful_shutdown
        drain = None
        if timeout is not None and hasattr(self._engine, "drain"):
            # abort a little before uvicorn's deadline: the streams need a moment to write their end
            drain = asyncio.create_task(self._engine.drain(max(0.0, timeout - min(0.5, timeout / 2))))
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if drain is not None:
                drain.cancel()


if __name__ == "__main__":  # vLLM's older entry point: `python -m vllm.entrypoints.openai.api_server --model M`
    import sys

    from octavo.entrypoints.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
