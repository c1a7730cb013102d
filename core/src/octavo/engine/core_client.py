"""The API server's side of engine core processes: `MPAsyncEngine`, an AsyncLLMEngine whose
engine runs in other processes (`octavo.engine.core_proc`), one per data-parallel replica.

It keeps AsyncLLMEngine's whole front (request streams, output kinds, aborts, metrics, beam
search) and replaces the engine thread with the sockets: an add goes to a replica picked by
load, its outputs come back per step, and an abort or a dropped client is sent to the replica
that holds the request, which frees its KV blocks before its next step.

A replica's death is seen at once, without timeouts: ZeroMQ's socket monitor reports the
connection closed when the process exits (killed, crashed), and a core whose engine raised says
`Dead` first. Its requests fail with EngineDeadError (503, or an error event that ends a
stream); the other replicas keep serving. When no replica is left, the engine is dead as an
in-process engine whose thread died: /health fails and the server exits with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import struct
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from octavo.async_engine import _END, AsyncLLMEngine, EngineDeadError, PromptType
from octavo.engine import wire
from octavo.engine.core_proc import engine_core_main
from octavo.engine.llm_engine import EngineStats, eos_token_ids
from octavo.kv_transfer import KVTransferStats

logger = logging.getLogger("octavo.engine_core")

#: a prompt goes to the replica that served its first blocks before (its prefix cache holds
#: them) unless that replica has this many more requests than the least loaded one
AFFINITY_SLACK = 4
#: prompt tokens (whole blocks, at most this many) whose hash picks a replica for affinity
AFFINITY_TOKENS = 64
STARTUP_TIMEOUT_S = 900.0  # a large checkpoint on a slow disk loads for minutes


@dataclass
class CoreReplica:
    """One engine core process as an API server sees it."""

    index: int
    address: str
    socket: zmq.Socket  # DEALER, for the start-up handshake
    monitor: zmq.Socket  # PAIR: the DEALER's connection events
    process: Any = None  # multiprocessing.Process where this API server started it
    # the DEALER once serving, on the event loop: every send and receive goes through it, since
    # ZeroMQ signals readiness on edges and a send through the plain socket can swallow the edge
    # an asyncio receive waits for
    stream: Any = None
    num_kv_blocks: int = 0
    alive: bool = True
    stats: EngineStats | None = None
    unseen_adds: int = 0  # adds sent since the last counters came back
    num_routed: int = 0  # requests sent here since start

    @property
    def load(self) -> int:
        s = self.stats
        return (s.num_waiting + s.num_running if s is not None else 0) + self.unseen_adds


@dataclass
class _Blocks:
    num_blocks: int


@dataclass
class EngineInfo:
    """What the API server reads of the engine (`AsyncLLMEngine.engine`) when the engine runs
    elsewhere: its config and tokenizer (loaded here as well), and the replicas' counters."""

    config: Any
    tokenizer: Any
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    reasoning_parser: str | None
    structured: Any  # StructuredOutputManager: the server compiles grammars to refuse bad ones early
    block_manager: _Blocks  # blocks of one replica (each replica holds as many)
    replicas: list[CoreReplica] = field(default_factory=list)

    @property
    def model_config(self) -> Any:
        return self.config.model

    def get_stats(self, with_utilization: bool = False) -> EngineStats:
        """The replicas' counters summed (KV usage: their mean; dead replicas count no more)."""
        seen = [r.stats for r in self.replicas if r.alive and r.stats is not None]
        total = EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0)
        if not seen:
            return total
        for s in seen:
            for name in ("num_running", "num_waiting", "prompt_tokens_total", "generation_tokens_total"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.num_preemptions_total += s.num_preemptions_total
            total.prefix_cache_queries += s.prefix_cache_queries
            total.prefix_cache_hits += s.prefix_cache_hits
            total.num_recompiles += s.num_recompiles
            total.step_tokens += s.step_tokens
            if s.kv_transfer is not None:
                total.kv_transfer = total.kv_transfer or KVTransferStats()
                total.kv_transfer.add(s.kv_transfer)
        total.kv_cache_usage = sum(s.kv_cache_usage for s in seen) / len(seen)
        utils = [s.kv_slot_utilization for s in seen if s.kv_slot_utilization is not None]
        total.kv_slot_utilization = sum(utils) / len(utils) if utils else None
        return total


def launch_engine_cores(engine_args: Any, count: int, max_waiting_requests: int) -> tuple[list[Any], list[str], str]:
    """Fork `count` engine core processes; (processes, their ipc addresses, the folder of the sockets).

    Call it before this process touches a device or starts threads: the cores are forked (fast,
    and what was set up in this process, such as a test's patches, holds in them)."""
    import dataclasses

    folder = tempfile.mkdtemp(prefix="octavo-cores-")
    ctx = multiprocessing.get_context("fork")
    procs, addresses = [], []
    args = dataclasses.replace(engine_args, data_parallel_size=1) if count > 1 else engine_args
    for i in range(count):
        address = f"ipc://{folder}/core-{i}"
        proc = ctx.Process(
            target=engine_core_main,
            args=(args, address, max_waiting_requests, os.getpid()),
            name=f"octavo-engine-core-{i}",
        )
        proc.start()
        procs.append(proc)
        addresses.append(address)
    return procs, addresses, folder


class MPAsyncEngine(AsyncLLMEngine):
    """AsyncLLMEngine over engine core processes (see the module's docstring)."""

    def __init__(self, info: EngineInfo, *, socket_folder: str | None = None, **kwargs: Any) -> None:
        super().__init__(info, **kwargs)
        self.replicas = info.replicas
        self._codec = wire.Codec()
        self._owner: dict[str, CoreReplica] = {}  # request id -> the replica holding it
        self._adds: dict[str, asyncio.Future] = {}  # adds sent, not answered yet
        self._tasks: list[asyncio.Task] = []
        self._socket_folder = socket_folder  # removed at shutdown where this process made it

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_engine_args(cls, engine_args: Any, pooling: bool = False, **kwargs: Any) -> MPAsyncEngine:
        """Start `engine_args.data_parallel_size` engine cores and connect to them."""
        if pooling:
            raise ValueError("pooling models run in the API server's process (--disable-frontend-multiprocessing)")
        max_waiting = kwargs.get("max_waiting_requests", 0)
        procs, addresses, folder = launch_engine_cores(
            engine_args, getattr(engine_args, "data_parallel_size", 1), max_waiting
        )
        try:
            return cls.connect(engine_args, addresses, processes=procs, socket_folder=folder, **kwargs)
        except BaseException:
            for p in procs:
                p.kill()
                p.join()
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @classmethod
    def connect(
        cls,
        engine_args: Any,
        addresses: list[str],
        *,
        processes: list[Any] | None = None,
        socket_folder: str | None = None,
        **kwargs: Any,
    ) -> MPAsyncEngine:
        """Connect to running engine cores (started here or by a launcher of several API
        servers) and wait until each has built its engine."""
        from octavo.loader.source import load_tokenizer
        from octavo.reasoning import reasoning_token_ids
        from octavo.structured_output import StructuredOutputManager

        kwargs.setdefault("log_requests", getattr(engine_args, "enable_log_requests", False))
        kwargs.setdefault("max_log_len", getattr(engine_args, "max_log_len", None))
        ctx: Any = zmq.Context.instance()
        replicas = []
        for i, address in enumerate(addresses):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, f"{os.getpid()}-{uuid.uuid4().hex[:8]}".encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sock.connect(address)
            proc = processes[i] if processes else None
            replicas.append(CoreReplica(i, address, sock, monitor, proc))
        config, _, source = engine_args.create_config()
        tokenizer = load_tokenizer(source)
        codec = wire.Codec()
        for r in replicas:
            r.num_kv_blocks = _handshake(r, codec)
        eos = eos_token_ids(config.model, tokenizer)
        vocab = config.model.hf_config.get_text_config().vocab_size
        start, end = reasoning_token_ids(engine_args.reasoning_parser, tokenizer)
        info = EngineInfo(
            config=config,
            tokenizer=tokenizer,
            vocab_size=vocab,
            eos_token_ids=eos,
            reasoning_parser=engine_args.reasoning_parser,
            structured=StructuredOutputManager(tokenizer, vocab, eos, end, start),
            block_manager=_Blocks(replicas[0].num_kv_blocks),
            replicas=replicas,
        )
        logger.info("connected to %d engine core(s) at %s", len(replicas), ", ".join(addresses))
        return cls(info, socket_folder=socket_folder, **kwargs)

    # ---- AsyncLLMEngine's engine thread, replaced ------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._loop is not None and not self._stop and self._dead is None

    def start(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine is not running: {self._dead}") from self._dead
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for r in self.replicas:
            r.stream = zmq.asyncio.Socket.shadow(r.socket.underlying)
            self._tasks.append(self._loop.create_task(self._listen(r)))
            self._tasks.append(self._loop.create_task(self._watch(r)))

    def _send(self, cmd: tuple) -> None:
        """AsyncLLMEngine's commands, on the event loop: an add to a replica, an abort to its holder."""
        if cmd[0] == "abort":
            r = self._owner.pop(cmd[1], None)
            if r is not None and r.alive:
                self._post(r, wire.Abort(request_ids=[cmd[1]]))
            return
        _, rid, prompt, params, fut = cmd
        alive = [r for r in self.replicas if r.alive]
        if not alive:
            fut.set_exception(EngineDeadError("no engine core is running"))
            return
        r = pick_replica(alive, prompt, self.engine.config.cache.block_size)
        self._owner[rid] = r
        self._adds[rid] = fut
        r.unseen_adds += 1
        r.num_routed += 1
        wired = prompt if isinstance(prompt, str) else wire.pickled(prompt)
        self._post(r, wire.Add(rid, wired, wire.pickled(params), time.monotonic()))

    def _post(self, r: CoreReplica, msg: Any) -> None:
        # queued without waiting (no high-water mark); a message to a core that is gone waits
        # unsent until the socket closes, and its requests fail when the monitor says so
        if r.stream is not None:
            r.stream.send(self._codec.encode(msg))
            return
        with contextlib.suppress(zmq.Again):  # shut down before serving: a core that is gone needs nothing
            r.socket.send(self._codec.encode(msg), zmq.NOBLOCK)

    async def _listen(self, r: CoreReplica) -> None:
        codec = wire.Codec()
        while r.alive:
            msg = codec.to_server(await r.stream.recv())
            if isinstance(msg, wire.Outputs):
                r.stats = msg.stats
                r.unseen_adds = 0
                for out in msg.outputs:
                    if out.finished:
                        self._owner.pop(out.request_id, None)
                self._deliver(msg.outputs, self._snapshot())
            elif isinstance(msg, wire.Accepted):
                for rid, error in msg.results:
                    fut = self._adds.pop(rid, None)
                    if error is not None:
                        self._owner.pop(rid, None)
                    if fut is None or fut.done():
                        continue
                    if error is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(error)
            elif isinstance(msg, wire.Dead):
                self._replica_died(r, f"its engine failed: {msg.error}")

    async def _watch(self, r: CoreReplica) -> None:
        monitor = zmq.asyncio.Socket.shadow(r.monitor.underlying)
        while r.alive:
            frames = await monitor.recv_multipart()
            event = struct.unpack("=hi", frames[0][:6])[0]
            if event == zmq.EVENT_DISCONNECTED:
                code = r.process.exitcode if r.process is not None else None
                await asyncio.sleep(0.05)  # a Dead sent just before the exit says more: let it land
                self._replica_died(r, "its process exited" + (f" with status {code}" if code is not None else ""))

    def _replica_died(self, r: CoreReplica, reason: str) -> None:
        if not r.alive:
            return
        r.alive = False
        if self._stop:  # shut down by this process
            return
        message = f"engine core {r.index} died ({reason})"
        logger.error("%s: its requests fail", message)
        error = EngineDeadError(message)
        for rid in [rid for rid, owner in self._owner.items() if owner is r]:
            del self._owner[rid]
            fut = self._adds.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(EngineDeadError(message))
            stream = self._streams.pop(rid, None)
            if stream is not None and not stream.finished:
                stream.error = error
                stream.finished = True
                stream.queue.put_nowait(_END)
        left = sum(x.alive for x in self.replicas)
        if left:
            logger.error("%d engine core(s) keep serving", left)
        elif self._dead is None:
            self._on_dead(RuntimeError(message), [])

    # ---- shutdown ----------------------------------------------------------------------
    async def shutdown(self, timeout: float = 30.0) -> None:
        """Abort every request in flight, stop the engine cores this process started, close the sockets."""
        for rid in list(self._streams):
            self._abort_one(rid)
        self._stop = True
        for r in self.replicas:
            if r.alive and r.process is not None:
                self._post(r, wire.Shutdown())
        for r in self.replicas:
            if r.process is not None:
                await asyncio.to_thread(r.process.join, timeout)
                if r.process.is_alive():
                    r.process.kill()
                    await asyncio.to_thread(r.process.join)
            r.alive = False
        for t in self._tasks:
            t.cancel()
        for r in self.replicas:
            r.monitor.close(0)
            r.socket.close(0)
        if self._socket_folder is not None:
            shutil.rmtree(self._socket_folder, ignore_errors=True)


def pick_replica(alive: list[CoreReplica], prompt: PromptType, block_size: int) -> CoreReplica:
    """The least loaded replica (waiting + running + adds it has not counted yet), or the one
    whose prefix cache likely holds this prompt's first blocks while it is not much busier."""
    least = min(alive, key=lambda r: (r.load, r.index))
    key = _prefix_key(prompt, block_size)
    if key is None or len(alive) == 1:
        return least
    preferred = alive[zlib.crc32(key) % len(alive)]
    return preferred if preferred.load <= least.load + AFFINITY_SLACK else least


def _prefix_key(prompt: PromptType, block_size: int) -> bytes | None:
    """Bytes naming the prompt's first whole blocks (token ids), or its first characters; None
    when shorter than a block (nothing a prefix cache could share)."""
    if isinstance(prompt, dict) and prompt.get("prompt_token_ids"):
        ids = prompt["prompt_token_ids"]
        whole = min(len(ids) // block_size * block_size, AFFINITY_TOKENS)
        return struct.pack(f"{whole}i", *ids[:whole]) if whole else None
    text = prompt if isinstance(prompt, str) else prompt.get("prompt") if isinstance(prompt, dict) else None
    if not isinstance(text, str) or len(text) < 4 * block_size:  # ~4 characters a token
        return None
    return text[: 4 * AFFINITY_TOKENS].encode()


def _handshake(r: CoreReplica, codec: wire.Codec) -> int:
    """Say Hello and wait for Ready; the core's number of KV blocks. Fails with the core's exit
    status if it dies while building its engine."""
    r.socket.send(codec.encode(wire.Hello()))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not r.socket.poll(200):
        if r.process is not None and not r.process.is_alive():
            raise RuntimeError(
                f"engine core {r.index} exited with status {r.process.exitcode} while building its engine "
                "(its log above says why)"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"engine core {r.index} at {r.address} not ready after {STARTUP_TIMEOUT_S:.0f} s")
    msg = codec.to_server(r.socket.recv())
    if not isinstance(msg, wire.Ready):
        raise RuntimeError(f"engine core {r.index} answered {type(msg).__name__} to Hello")
    return msg.num_kv_blocks
