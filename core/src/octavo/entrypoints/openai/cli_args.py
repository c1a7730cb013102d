"""`octavo serve`: the engine options (from EngineArgs, defined once) plus the server's own,
named as vLLM's `vllm serve` names them."""

from __future__ import annotations

import argparse
import json

from octavo import vllm_options
from octavo.async_engine import DEFAULT_MAX_WAITING_REQUESTS
from octavo.entrypoints.openai.limits import add_limit_args
from octavo.entrypoints.openai.metrics import DEFAULT_PREFIX


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("server")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    g.add_argument("--port", type=int, default=8000)
    g.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="model name(s) clients use in 'model' (default: the MODEL argument); "
        "responses carry the name the request used",
    )
    g.add_argument(
        "--api-key",
        nargs="+",
        action="extend",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every route but /health and /ping; several keys: "
        "repeat the flag, list them after it, or separate them with commas (any one is accepted)",
    )
    g.add_argument(
        "--chat-template", default=None, help="Jinja chat template, or a file holding one (default: the model's own)"
    )
    from octavo.tool_parsers import TOOL_PARSERS

    g.add_argument(
        "--tool-call-parser",
        default=None,
        choices=sorted(TOOL_PARSERS),
        help="the model's tool-call format, for tool_choice 'auto': hermes (Hermes, Qwen), llama3_json, "
        "mistral, or json (a plain JSON object or list of calls)",
    )
    g.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help="let the model decide when to call tools (tool_choice 'auto'; needs --tool-call-parser)",
    )
    g.add_argument(
        "--lora-modules",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME=PATH",
        help="LoRA adapters (PEFT folders) served as models of these names (needs --enable-lora; vLLM's JSON "
        'form {"name": ..., "path": ...} too); runtime loading: docs/lora.md',
    )
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        default=DEFAULT_MAX_WAITING_REQUESTS,
        help="requests allowed to wait for a batch slot; more get HTTP 503 (0 = unbounded)",
    )
    g.add_argument(
        "--engine-core-process",
        action="store_true",
        help="run the engine in an engine core process of its own (HTTP, tokenization and detokenization stay "
        "here), as --data-parallel-size does; default: a thread of this process (not for pooling models)",
    )
    g.add_argument(
        "--api-server-count",
        type=int,
        default=1,
        help="API server processes (only 1 so far: one API server talks to the engine core processes)",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds SIGINT/SIGTERM lets requests in flight finish before aborting them",
    )
    g.add_argument(
        "--uvicorn-log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"]
    )
    g.add_argument(
        "--disable-uvicorn-access-log",
        "--disable-access-log",
        dest="disable_access_log",
        action="store_true",
        help="no access log line per HTTP request",
    )
    g.add_argument("--root-path", default=None, help="the path prefix a proxy serves this server under")
    g.add_argument(
        "--allow-image-urls",
        action="store_true",
        help="vision-language models: fetch the http(s) image URLs of chat messages (at most 20 MiB each, 10 s "
        "timeout); off by default, so that the server fetches no address a client names (data: URLs always work)",
    )
    g.add_argument("--disable-fastapi-docs", action="store_true", help="no /docs, /redoc and /openapi.json")
    g.add_argument(
        "--metrics-prefix",
        default=DEFAULT_PREFIX,
        help="the prefix of /metrics names: 'vllm' serves dashboards built for vLLM unchanged",
    )
    cors = parser.add_argument_group("CORS", "off unless --allowed-origins names origins (vLLM allows any by default)")
    cors.add_argument(
        "--allowed-origins",
        type=json.loads,
        default=[],
        metavar="JSON",
        help="e.g. '[\"https://ui.example\"]' or '[\"*\"]'",
    )
    cors.add_argument("--allowed-methods", type=json.loads, default=["*"], metavar="JSON")
    cors.add_argument("--allowed-headers", type=json.loads, default=["*"], metavar="JSON")
    cors.add_argument("--allow-credentials", action="store_true")
    ssl = parser.add_argument_group("TLS")
    ssl.add_argument("--ssl-keyfile", default=None, help="serve HTTPS with this private key")
    ssl.add_argument("--ssl-certfile", default=None, help="... and this certificate")
    ssl.add_argument("--ssl-ca-certs", default=None, help="CA certificates to check client certificates with")
    ssl.add_argument("--ssl-cert-reqs", type=int, default=0, help="client certificates: 0 none, 1 optional, 2 required")
    add_limit_args(parser)
    vllm_options.add_to_parser(parser, vllm_options.SERVER_OPTIONS, "server options of vLLM")
    return parser


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `serve` (the lead's cli.py calls this)."""
    from octavo.engine_args import AsyncEngineArgs

    parser = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server",
        description="Serve a model over the OpenAI API (/v1/completions, /v1/chat/completions, ...).",
    )
    AsyncEngineArgs.add_cli_args(parser, model_positional=True)
    add_server_args(parser)
    parser.set_defaults(func=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from octavo.entrypoints.openai.api_server import run_server

    return run_server(args)
