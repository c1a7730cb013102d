"""KV transfer between a prefill instance (producer) and a decode instance (consumer).

Pull over ZeroMQ (TCP, so one host or several): when a request finishes on the producer,
the KV of its prompt's full blocks is copied out of the cache into a bounded host store,
keyed by those tokens. When the consumer gets a request, before scheduling it, it asks the
producer for the KV of the same tokens, writes the blocks into free blocks of its own cache
and registers them in its prefix cache exactly as computed blocks are: the scheduler then
finds them as a prefix hit and computes only the prompt's tail (the tokens after its last
full block, at least the last token, whose logits start the decode). Anything that goes
wrong (no answer within the timeout, the producer no longer has the KV, no free blocks, a
layout that differs) leaves the request to recompute its prompt: slower, never wrong.

The attention back end owns the cache layout, so blocks are read and written through its
`read_blocks` / `write_blocks`; both ends must run the same model on the same back end
(checked: the layers' shapes and dtypes travel with the data).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import torch
import zmq

from octavo.block_manager import BlockManager
from octavo.kv_transfer.config import KVTransferConfig

logger = logging.getLogger("octavo")


@dataclass
class KVTransferStats:
    """Counters (tokens and requests) for logs and metrics."""

    sent_tokens: int = 0  # producer: prompt tokens whose KV it handed out
    received_tokens: int = 0  # consumer: prompt tokens whose KV came from the producer
    failed_requests: int = 0  # consumer: requests that recomputed their prompt instead

    def copy(self) -> KVTransferStats:
        return KVTransferStats(self.sent_tokens, self.received_tokens, self.failed_requests)

    def add(self, other: KVTransferStats) -> None:
        self.sent_tokens += other.sent_tokens
        self.received_tokens += other.received_tokens
        self.failed_requests += other.failed_requests


class _Header(msgspec.Struct):
    num_blocks: int
    block_size: int
    layers: list[tuple[str, list[int]]]  # per layer: dtype name, shape of its blocks' tensor


#: after a producer missed its timeout, transfers pause for this many timeouts
PAUSE_TIMEOUTS = 10

_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int8)}


class KVConnector:
    """One instance's end of the transfer; the engine calls it from its own thread only."""

    def __init__(self, config: KVTransferConfig, runner: Any, attention: Any, block_manager: BlockManager) -> None:
        if not block_manager.enable_prefix_caching:
            raise ValueError(
                "--kv-transfer-config needs prefix caching: received KV enters the cache as prefix blocks; "
                "drop --no-enable-prefix-caching"
            )
        if getattr(runner, "workers", None) is not None or not hasattr(runner, "kv_caches"):
            raise ValueError(
                "--kv-transfer-config: KV transfer reads the cache of core's single-process runner; tensor and "
                "pipeline parallelism and platforms with their own step runner are not supported yet"
            )
        probe = torch.zeros(1, dtype=torch.int64)
        for cache, spec in zip(runner.kv_caches, runner.specs):  # the layout is known now, not at a transfer
            try:
                attention.read_blocks(cache, probe.to(cache.device), spec)
            except NotImplementedError as e:
                raise ValueError(f"--kv-transfer-config: {e}") from None
        self.config = config
        self.runner = runner
        self.attention = attention
        self.block_manager = block_manager
        self.stats = KVTransferStats()
        # a producer that did not answer is not asked again before this time (monotonic): the
        # pull holds the engine's thread, so a dead producer must not cost every request a timeout
        self._paused_until = 0.0
        self._ctx = zmq.Context()
        if config.is_producer:
            self._store = _Store(int(config.buffer_gb * 2**30))
            self._server = _Server(self._ctx, config.address, self._store, self.stats, block_manager.block_size)

    def _full_tokens(self, prompt_ids: Sequence[int]) -> int:
        """Prompt tokens in full blocks the prefix cache may serve (never the last token)."""
        bs = self.block_manager.block_size
        return (len(prompt_ids) - 1) // bs * bs

    # ---- producer ---------------------------------------------------------------------------
    def save(self, prompt_ids: Sequence[int]) -> None:
        """Keep the KV of a finished request's prompt (its cached full blocks) for a consumer."""
        blocks, _ = self.block_manager.find_cached_prefix(prompt_ids, self._full_tokens(prompt_ids))
        if not blocks:
            return
        ids = torch.tensor(blocks, dtype=torch.int64, device=self.runner.kv_caches[0].device)
        header = _Header(len(blocks), self.block_manager.block_size, [])
        frames: list[bytes] = []
        with torch.no_grad():
            for cache, spec in zip(self.runner.kv_caches, self.runner.specs):
                data = self.attention.read_blocks(cache, ids, spec).cpu()
                header.layers.append((str(data.dtype), list(data.shape)))
                frames.append(data.view(torch.uint8).numpy().tobytes())
        self._store.put(tuple(prompt_ids[: len(blocks) * header.block_size]), msgspec.msgpack.encode(header), frames)

    # ---- consumer ---------------------------------------------------------------------------
    def load(self, request_id: str, prompt_ids: Sequence[int]) -> int:
        """Bring the prompt's full blocks from the producer into the prefix cache; returns the
        tokens received (0: the request computes its prompt itself)."""
        want = self._full_tokens(prompt_ids)
        if want == 0:
            return 0
        local, _ = self.block_manager.find_cached_prefix(prompt_ids, want)
        if len(local) * self.block_manager.block_size == want:
            return 0  # all of it is cached here already
        if time.monotonic() < self._paused_until:
            self.stats.failed_requests += 1
            return 0
        try:
            tokens = self._receive(prompt_ids[:want])
        except _TransferError as e:
            self.stats.failed_requests += 1
            logger.warning("KV transfer for request %s failed (%s): its prompt is recomputed", request_id, e)
            return 0
        except _Unreachable as e:
            self.stats.failed_requests += 1
            pause = PAUSE_TIMEOUTS * self.config.timeout_s
            self._paused_until = time.monotonic() + pause
            logger.warning(
                "KV transfer for request %s failed (%s): its prompt is recomputed, and so are the prompts of the "
                "next %.1f s (transfers paused)",
                request_id,
                e,
                pause,
            )
            return 0
        self.stats.received_tokens += tokens
        return tokens

    def _receive(self, tokens: Sequence[int]) -> int:
        sock = self._ctx.socket(zmq.REQ)
        timeout_ms = int(self.config.timeout_s * 1000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        try:
            sock.connect(self.config.address)
            sock.send(msgspec.msgpack.encode(list(tokens)))
            reply = sock.recv_multipart(copy=False)
        except zmq.Again:
            raise _Unreachable(
                f"no answer from the producer at {self.config.address} in {self.config.timeout_s} s"
            ) from None
        finally:
            sock.close()
        header = msgspec.msgpack.decode(reply[0].bytes, type=_Header)
        if header.num_blocks == 0:
            raise _TransferError("the producer holds no KV for this prompt (not prefilled there, or dropped)")
        if header.block_size != self.block_manager.block_size or len(header.layers) != len(self.runner.kv_caches):
            raise _TransferError(
                f"the producer's cache differs (block size {header.block_size}, {len(header.layers)} layers; here "
                f"{self.block_manager.block_size}, {len(self.runner.kv_caches)}): the same model and --block-size "
                "must run on both"
            )
        return self._write(header, reply[1:], tokens)

    def _write(self, header: _Header, frames: list, tokens: Sequence[int]) -> int:
        bm = self.block_manager
        blocks: list[int] = []
        if not bm.allocate(blocks, header.num_blocks * bm.block_size):
            raise _TransferError("no free KV blocks to receive into")
        try:
            ids = torch.tensor(blocks, dtype=torch.int64, device=self.runner.kv_caches[0].device)
            with torch.no_grad():
                for cache, spec, (dtype, shape), frame in zip(
                    self.runner.kv_caches, self.runner.specs, header.layers, frames
                ):
                    if dtype not in _DTYPES:
                        raise _TransferError(f"a layer of dtype {dtype} cannot be received")
                    data = torch.frombuffer(bytearray(frame.buffer), dtype=torch.uint8).view(_DTYPES[dtype])
                    expected = self.attention.read_blocks(cache, ids[:1], spec).shape[1:]
                    if tuple(shape[1:]) != tuple(expected) or shape[0] != len(blocks):
                        raise _TransferError(f"a layer's blocks are {shape}, here [{len(blocks)}, {list(expected)}]")
                    self.attention.write_blocks(cache, ids, data.reshape(shape).to(cache.device), spec)
            # registered exactly as computed blocks: the scheduler's prefix lookup finds them
            received = header.num_blocks * bm.block_size
            bm.register_full_blocks(tokens, blocks, [], received)
        finally:
            bm.free(blocks)  # kept by the prefix cache until evicted
        return received

    def shutdown(self) -> None:
        if self.config.is_producer:
            self._server.stop()
        self._ctx.term()


class _TransferError(Exception):
    """This request's KV cannot be received (the next request's may)."""


class _Unreachable(Exception):
    """The producer did not answer: transfers pause for a while."""


class _Store:
    """Finished prompts' KV in host memory, at most `capacity` bytes, oldest dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bytes = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[int, ...], tuple[bytes, list[bytes]]] = OrderedDict()

    def put(self, tokens: tuple[int, ...], header: bytes, frames: list[bytes]) -> None:
        size = sum(len(f) for f in frames)
        with self._lock:
            old = self._items.pop(tokens, None)
            if old is not None:
                self.bytes -= sum(len(f) for f in old[1])
            while self._items and self.bytes + size > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= sum(len(f) for f in dropped)
            if size <= self.capacity:
                self._items[tokens] = (header, frames)
                self.bytes += size

    def get(self, tokens: tuple[int, ...], block_size: int) -> tuple[bytes, list[bytes]] | None:
        """The longest stored block-aligned prefix of `tokens` (whole blocks of a prompt)."""
        with self._lock:
            for n in range(len(tokens) // block_size * block_size, 0, -block_size):
                item = self._items.get(tokens[:n])
                if item is not None:
                    return item
        return None


class _Server:
    """The producer's answering thread: token ids in, header + one frame per layer out."""

    _EMPTY = msgspec.msgpack.encode(_Header(0, 0, []))

    def __init__(self, ctx: zmq.Context, address: str, store: _Store, stats: KVTransferStats, block_size: int) -> None:
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(address)
        except zmq.ZMQError as e:
            self._sock.close()
            raise ValueError(f"--kv-transfer-config: cannot listen on {address} ({e}); pick another kv_port") from None
        self._store, self._stats, self._block_size = store, stats, block_size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="octavo-kv-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            tokens = tuple(msgspec.msgpack.decode(self._sock.recv()))
            item = self._store.get(tokens, self._block_size)
            if item is None:
                self._sock.send(self._EMPTY)
                continue
            header, frames = item
            head = msgspec.msgpack.decode(header, type=_Header)
            self._stats.sent_tokens += head.num_blocks * head.block_size
            self._sock.send_multipart([header, *frames], copy=False)
        self._sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
