"""`octavo chat` and `octavo complete`: interactive clients of a running OpenAI-compatible server
(Octavo's or vLLM's), as vLLM's `vllm chat` / `vllm complete`.

Each line read from stdin is one message (chat, which keeps the conversation) or one prompt
(complete); the answer streams to stdout. End of input ends the session; `--quick TEXT` sends one
message and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

DEFAULT_URL = "http://localhost:8000/v1"


def _client(args: argparse.Namespace) -> Any:
    try:
        import httpx
    except ImportError:
        raise RuntimeError("the clients need httpx; install it with: pip install 'octavo[serve]'") from None
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=httpx.Timeout(600.0, connect=30.0))


def _model(client: Any, requested: str | None) -> str:
    if requested:
        return requested
    resp = client.get("/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


def _stream(client: Any, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of a streamed response; an error chunk or status raises RuntimeError."""
    with client.stream("POST", path, json={**body, "stream": True}) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"the server answered {resp.status_code}: {resp.text[:500]}")
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"the server failed the request: {chunk['error'].get('message')}")
            yield chunk


def _lines(quick: str | None) -> Iterator[str]:
    if quick is not None:
        yield quick
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            print()
            return


def chat(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = _model(client, args.model_name)
        print(f"Using model: {model}", file=sys.stderr)
        conversation: list[dict[str, str]] = []
        if args.system_prompt:
            conversation.append({"role": "system", "content": args.system_prompt})
        for line in _lines(args.quick):
            conversation.append({"role": "user", "content": line})
            body: dict[str, Any] = {"model": model, "messages": conversation}
            if args.max_tokens is not None:
                body["max_tokens"] = args.max_tokens
            reply = []
            for chunk in _stream(client, "/chat/completions", body):
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content") or ""
                    reply.append(piece)
                    print(piece, end="", flush=True)
            print()
            conversation.append({"role": "assistant", "content": "".join(reply)})
    return 0


def complete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = _model(client, args.model_name)
        print(f"Using model: {model}", file=sys.stderr)
        for line in _lines(args.quick):
            body: dict[str, Any] = {"model": model, "prompt": line}
            if args.max_tokens is not None:
                body["max_tokens"] = args.max_tokens
            for chunk in _stream(client, "/completions", body):
                for choice in chunk.get("choices", []):
                    print(choice.get("text") or "", end="", flush=True)
            print()
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    for name, func, what in (("chat", chat, "messages"), ("complete", complete, "prompts")):
        p = subparsers.add_parser(name, help=f"send {what} read from stdin to a running server, print the answers")
        p.add_argument("--url", default=DEFAULT_URL, help=f"the server's OpenAI API base (default {DEFAULT_URL})")
        p.add_argument("--model-name", default=None, help="the model to ask (default: the server's first)")
        p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
        p.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default: the server's)")
        p.add_argument("-q", "--quick", default=None, metavar="TEXT", help="send this one message, print, exit")
        if name == "chat":
            p.add_argument("--system-prompt", default=None, help="a system message opening the conversation")
        p.set_defaults(func=func)
