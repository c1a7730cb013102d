"""The engine core process: LLMEngine's step loop behind a ZeroMQ socket.

One process per data-parallel replica. It owns the engine (scheduler, KV cache, the workers of
tensor parallelism) and nothing else: HTTP, tokenization of chat messages, JSON and SSE stay in
the API server processes, so they never hold the step loop's GIL.

    API server (DEALER) --Add/Abort/Shutdown--> ROUTER  engine core
                        <--Accepted/Outputs/Dead--       drain the socket, step, send outputs

Between two steps the core drains every message queued on its socket: adds and aborts land in
the order each API server sent them, and an abort frees the request's KV blocks before the next
step. Each step's outputs go to the API server that added the request; every API server gets the
counters (waiting, running, KV usage) after each step, which is what data parallelism balances on.

The core exits with status 0 on Shutdown, and with status 1 after telling every API server
`Dead` when the engine raises. It ignores SIGINT (Ctrl-C reaches the whole process group: the API
server drains, then shuts the core down) and exits if the process that started it is gone.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
from typing import Any

import zmq

from octavo.engine import wire

logger = logging.getLogger("octavo.engine_core")

_IDLE_POLL_MS = 500  # an idle core checks this often that the process that started it still lives


class EngineCore:
    """The loop of one engine core process over an engine and its ROUTER socket."""

    def __init__(self, engine: Any, sock: zmq.Socket, max_waiting_requests: int = 0) -> None:
        self.engine = engine
        self.sock = sock
        self.max_waiting_requests = max_waiting_requests  # 0 = unbounded
        self.codec = wire.Codec()
        self.servers: list[bytes] = []  # identities of the API servers that said Hello
        self.owner: dict[str, bytes] = {}  # request id -> the API server that added it
        self.num_steps = 0

    def run(self, parent_pid: int) -> int:
        """Serve until Shutdown (0), an engine failure (1) or the parent's exit (0)."""
        engine = self.engine
        while True:
            busy = engine.has_unfinished_requests()
            if not self.sock.poll(0 if busy else _IDLE_POLL_MS) and not busy:
                if os.getppid() != parent_pid:
                    logger.warning("the process that started this engine core is gone: exiting")
                    return 0
                continue
            try:
                applied = self._drain()
            except _ShutdownRequested:
                if engine.has_unfinished_requests():
                    engine.abort_request(list(self.owner))
                return 0
            if engine.has_unfinished_requests():
                try:
                    outputs = engine.step()
                except Exception as e:  # noqa: BLE001 - the API servers fail their requests and exit
                    logger.exception("the engine core died")
                    self._broadcast(wire.Dead(error=f"{type(e).__name__}: {e}"))
                    return 1
                self.num_steps += 1
                self._send_outputs(outputs)
            elif applied:  # aborts freed blocks with no step to follow: the counters say so
                self._send_outputs([])

    def _drain(self) -> bool:
        """Apply every message waiting on the socket; True if any was applied."""
        accepted: dict[bytes, list[tuple[str, Any]]] = {}
        waiting = self.engine.get_stats().num_waiting if self.max_waiting_requests else 0
        applied = False
        while self.sock.poll(0):
            ident, data = self.sock.recv_multipart(copy=False)
            msg = self.codec.to_core(data.bytes)
            applied = True
            if isinstance(msg, wire.Add):
                error = self._add(msg, waiting)
                if error is None:
                    self.owner[msg.request_id] = ident.bytes
                    waiting += 1
                accepted.setdefault(ident.bytes, []).append((msg.request_id, error))
            elif isinstance(msg, wire.Abort):
                self.engine.abort_request(msg.request_ids)
                for rid in msg.request_ids:
                    self.owner.pop(rid, None)
            elif isinstance(msg, wire.Hello):
                if ident.bytes not in self.servers:
                    self.servers.append(ident.bytes)
                self._send(ident.bytes, wire.Ready(num_kv_blocks=self.engine.block_manager.num_blocks))
            else:
                raise _ShutdownRequested
        for owner, results in accepted.items():
            self._send(owner, wire.Accepted(results=results))
        return applied

    def _add(self, msg: wire.Add, waiting: int) -> Any:
        """Add one request; None, or the error to hand back (pickled) to its API server."""
        from octavo.async_engine import QueueFullError

        try:
            if self.max_waiting_requests and waiting >= self.max_waiting_requests:
                raise QueueFullError(
                    f"the server is overloaded: {self.max_waiting_requests} requests are already waiting "
                    "(--max-waiting-requests); retry later"
                )
            self.engine.add_request(msg.request_id, msg.prompt, msg.params, arrival_time=msg.arrival_time)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            return wire.pickled(_picklable(e))
        return None

    def _send_outputs(self, outputs: list) -> None:
        # the slot utilisation walks every block table: every 32 steps, as the in-process engine
        stats = self.engine.get_stats(with_utilization=self.num_steps % 32 == 0)
        mine: dict[bytes, list] = {ident: [] for ident in self.servers}
        for out in outputs:
            ident = self.owner.get(out.request_id)
            if ident is None:
                continue  # aborted while the step ran
            if out.finished:
                del self.owner[out.request_id]
            mine.setdefault(ident, []).append(out)
        for ident, outs in mine.items():
            self._send(ident, wire.Outputs(outputs=outs, stats=stats))

    def _broadcast(self, msg: Any) -> None:
        for ident in self.servers:
            self._send(ident, msg)

    def _send(self, ident: bytes, msg: Any) -> None:
        self.sock.send_multipart([ident, self.codec.encode(msg)], copy=False)


class _ShutdownRequested(Exception):
    pass


def _picklable(e: Exception) -> Exception:
    """`e` if it survives pickling (ValueError, QueueFullError, ...), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001 - any exception type may fail to pickle in its own way
        return RuntimeError(f"{type(e).__name__}: {e}")
    return e


def engine_core_main(engine_args: Any, address: str, max_waiting_requests: int, parent_pid: int) -> None:
    """The engine core process's entry point (started by `octavo.engine.core_client`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from octavo.engine import LLMEngine

    t0 = time.perf_counter()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 2000)  # the last Dead/Outputs reach the API servers before exit
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(address)
    try:
        engine = LLMEngine.from_engine_args(engine_args)
    except BaseException:
        logger.exception("the engine core could not build its engine")
        sock.close(0)
        sys.exit(1)
    logger.info("engine core %d ready at %s in %.1f s", os.getpid(), address, time.perf_counter() - t0)
    status = 1
    try:
        status = EngineCore(engine, sock, max_waiting_requests).run(parent_pid)
    finally:
        engine.shutdown()
        sock.close()
        ctx.term()
    sys.exit(status)
