"""The disaggregation proxy, as vLLM's example: each completion request goes to the prefill
instance with max_tokens=1 (which computes the prompt's KV and keeps it for the decode
instance), then unchanged to the decode instance, whose answer (a stream or not) the client gets.

    python -m octavo.kv_transfer.proxy --prefill http://HOST:8100 --decode http://HOST:8200 --port 8000

A prefill instance that fails or cannot be reached does not fail the request: the decode
instance then computes the prompt itself (its KV transfer finds nothing, and says so).
"""

from __future__ import annotations

import argparse
import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

logger = logging.getLogger("octavo")

ROUTES = ("/v1/completions", "/v1/chat/completions")


def build_proxy(prefill: str, decode: str, timeout: float = 600.0) -> FastAPI:
    client = httpx.AsyncClient(timeout=timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    async def route(request: Request) -> Response:
        body = await request.json()
        path = request.url.path
        # the prompt's KV only: one token, no stream (vLLM's proxy does the same)
        first = {**body, "max_tokens": 1, "stream": False}
        first.pop("stream_options", None)
        if "max_completion_tokens" in first:
            first["max_completion_tokens"] = 1
        try:
            r = await client.post(prefill + path, json=first)
            if r.status_code != 200:
                logger.warning(
                    "prefill instance answered %d (%s): the decode instance recomputes", r.status_code, r.text
                )
        except httpx.HTTPError as e:
            logger.warning("prefill instance unreachable (%s): the decode instance recomputes", e)
        if not body.get("stream"):
            r = await client.post(decode + path, json=body)
            return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
        upstream = await client.send(client.build_request("POST", decode + path, json=body), stream=True)

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(
            relay(), status_code=upstream.status_code, media_type=upstream.headers.get("content-type")
        )

    for path in ROUTES:
        app.add_api_route(path, route, methods=["POST"])

    @app.get("/health")
    async def health() -> Response:
        for base in (prefill, decode):
            try:
                if (await client.get(base + "/health")).status_code != 200:
                    return Response(status_code=503)
            except httpx.HTTPError:
                return Response(status_code=503)
        return Response(status_code=200)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="route each request through a prefill and a decode instance")
    parser.add_argument("--prefill", required=True, help="base URL of the kv_producer server, e.g. http://HOST:8100")
    parser.add_argument("--decode", required=True, help="base URL of the kv_consumer server, e.g. http://HOST:8200")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    app = build_proxy(args.prefill.rstrip("/"), args.decode.rstrip("/"))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
