"""The OpenAI server on a real socket, in a thread of the test process: uvicorn over the real
engine, so tests reach it over HTTP as clients do and still read the engine's state (KV blocks,
requests in flight) directly."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from octavo.async_engine import AsyncLLMEngine
from octavo.engine import LLMEngine
from octavo.engine_args import EngineArgs
from octavo.entrypoints.openai.api_server import ServerSettings, build_app

MODEL = "tiny"


class LiveServer:
    """`with LiveServer(model_dir) as s:` serves on `s.base_url` until the block ends."""

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 128,
        kv_cache_memory: str = "8MiB",
        max_waiting_requests: int = 64,
        engine: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        args = EngineArgs(
            model=model,
            device="cpu",
            dtype="float32",
            max_model_len=max_model_len,
            kv_cache_memory=kv_cache_memory,
            **(engine or {}),
        )
        self.engine = AsyncLLMEngine(LLMEngine(args), max_waiting_requests=max_waiting_requests)
        self.app = build_app(self.engine, ServerSettings(served_model_names=[MODEL], **settings))
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()

    @property
    def blocks_in_use(self) -> int:
        bm = self.engine.engine.block_manager
        return bm.num_blocks - bm.num_free_blocks

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until no request is in the engine or its front (a request still finishing is
        not a leak); then every KV block must be free."""
        deadline = time.monotonic() + timeout
        while self.engine.num_in_flight or self.engine.engine.has_unfinished_requests():
            assert time.monotonic() < deadline, f"{self.engine.num_in_flight} requests stuck"
            time.sleep(0.05)
