"""`octavo serve`: the engine options (from EngineArgs, defined once) plus the server's own."""

from __future__ import annotations

import argparse

from octavo.async_engine import DEFAULT_MAX_WAITING_REQUESTS
from octavo.entrypoints.openai.limits import add_limit_args


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
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route except /health")
    g.add_argument(
        "--chat-template", default=None, help="Jinja chat template, or a file holding one (default: the model's own)"
    )
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        default=DEFAULT_MAX_WAITING_REQUESTS,
        help="requests allowed to wait for a batch slot; more get HTTP 503 (0 = unbounded)",
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
    g.add_argument("--disable-access-log", action="store_true", help="no per-request log lines")
    add_limit_args(parser)
    return parser


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `serve` (the lead's cli.py calls this)."""
    from octavo.engine_args import EngineArgs

    parser = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server",
        description="Serve a model over the OpenAI API (/v1/completions, /v1/chat/completions, ...).",
    )
    EngineArgs.add_cli_args(parser, model_positional=True)
    add_server_args(parser)
    parser.set_defaults(func=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from octavo.entrypoints.openai.api_server import run_server

    return run_server(args)
