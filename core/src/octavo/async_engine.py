"""The asyncio front of the engine: per-request async streams over one background step loop.

`LLMEngine` is synchronous and CPU/GPU-heavy, so one dedicated thread owns it and is the only
thread that ever touches it. Everything else talks to that thread through a command list:

    event loop                                  engine thread
    ----------                                  -------------
    generate() -> register stream, queue "add"  apply queued adds/aborts (between steps only)
               <- add accepted / ValueError     engine.step()
    stream.queue <- outputs (call_soon_threadsafe, one callback per step)
    abort()    -> drop stream, queue "abort"    engine.abort_request() frees the KV blocks

Requests added while others run join the next step: that is continuous batching, nothing
queues behind a running generation. (`n > 1` is the engine's: one request, n samples.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from octavo.kv_transfer import KVTransferStats
from octavo.lora.request import LoRARequest
from octavo.multimodal import MultiModalInputs
from octavo.outputs import CompletionOutput, RequestOutput
from octavo.sampling_params import RequestOutputKind, SamplingParams
from octavo.spec_decode.metrics import SpecDecodeStats

logger = logging.getLogger(__name__)

PromptType = str | dict | MultiModalInputs  # the last: a prompt with images, processed

DEFAULT_MAX_WAITING_REQUESTS = 1024


class QueueFullError(RuntimeError):
    """The bounded waiting queue is full: try again later (the server answers 503)."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped (crashed or shut down); no request can be served."""


class RequestFailedError(RuntimeError):
    """A fault in this request's own work ended it (finish_reason "error"); the engine and
    every other request went on."""


class StatLogger(Protocol):
    """Told about each finished request (on the event loop); the server's Prometheus metrics.

    A logger may also define `on_step(stats: EngineStatsSnapshot)`, called after each engine
    step with the stats as of its end."""

    def on_request_finished(self, output: RequestOutput, timing: RequestTiming) -> None: ...


@dataclass
class RequestTiming:
    """Wall-clock times seen by the async front (time.monotonic()), and the request's shape, for
    the metrics of a finished request."""

    arrival: float
    first_token: float | None = None
    last_token: float | None = None
    num_output_tokens: int = 0
    n: int = 1
    max_tokens: int | None = None
    sample_tokens: list[int] = dataclasses.field(default_factory=list)  # per sample; kept when n > 1


@dataclass
class EngineStatsSnapshot:
    """The engine's counters as of the end of the last step (read from any thread)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    num_preemptions_total: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    max_num_running_seen: int = 0  # high-water mark of num_running since start
    kv_slot_utilization: float = 1.0  # allocated KV slots holding tokens (refreshed every few steps)
    num_steps: int = 0  # loop iterations of the engine thread
    num_recompiles: int = 0  # compilations after warm-up (static-shape platforms)
    step_tokens: int = 0  # tokens the last step scheduled
    spec_decode: SpecDecodeStats | None = None  # speculative decoding's counters (None: off)
    kv_transfer: KVTransferStats | None = None  # disaggregated prefill/decode's counters (None: off)


_END = object()  # stream sentinel: no more outputs


class _Stream:
    """One request's outputs on its way from the engine thread to the consumer."""

    __slots__ = ("request_id", "queue", "params", "prompt", "prompt_token_ids", "last", "finished", "timing", "error")

    def __init__(self, request_id: str, params: SamplingParams, prompt: PromptType) -> None:
        self.request_id = request_id
        self.queue: asyncio.Queue = asyncio.Queue()
        self.params = params
        self.prompt = prompt if isinstance(prompt, str) else None
        self.prompt_token_ids: list[int] = (
            list(prompt.get("prompt_token_ids") or []) if isinstance(prompt, dict) else []
        )
        self.last: RequestOutput | None = None
        self.finished = False
        self.timing = RequestTiming(arrival=time.monotonic(), n=params.n, max_tokens=params.max_tokens)
        self.error: BaseException | None = None


class AsyncLLMEngine:
    """Async, thread-safe front of `LLMEngine` for servers and embedding applications.

    Create it inside or outside a running event loop; the step thread starts on first use and
    binds to the loop that first calls `generate()` / `start()`.
    """

    def __init__(
        self,
        engine: Any,
        *,
        max_waiting_requests: int = DEFAULT_MAX_WAITING_REQUESTS,
        stat_loggers: Iterable[StatLogger] = (),
        log_requests: bool = False,
        max_log_len: int | None = None,
    ) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests  # 0 = unbounded
        self.stat_loggers = list(stat_loggers)
        # one log line per request: its id, prompt (cut to max_log_len characters or ids), params
        self.log_requests = log_requests
        self.max_log_len = max_log_len
        self._streams: dict[str, _Stream] = {}
        self._pooled: dict[str, asyncio.Future] = {}  # pooling requests' results (`encode`)
        self._cv = threading.Condition()
        self._commands: list[tuple] = []  # guarded by _cv
        self._num_pending_adds = 0  # adds queued, not applied yet (guarded by _cv)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead: BaseException | None = None
        self._stats = EngineStatsSnapshot()
        #: called on the event loop, with the error, when the engine thread dies; the server
        #: stops there, so that a supervisor restarts it (an engine never comes back)
        self.dead_callbacks: list[Callable[[BaseException], None]] = []

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_engine_args(cls, engine_args: Any, pooling: bool = False, **kwargs: Any) -> AsyncLLMEngine:
        """The engine of `engine_args` (EngineArgs, or AsyncEngineArgs with its request logging);
        `pooling`: a pooling model's (embeddings, classifiers: `encode`)."""
        from octavo.engine import LLMEngine
        from octavo.pooling.engine import PoolingEngine

        kwargs.setdefault("log_requests", getattr(engine_args, "enable_log_requests", False))
        kwargs.setdefault("max_log_len", getattr(engine_args, "max_log_len", None))
        return cls(PoolingEngine(engine_args) if pooling else LLMEngine.from_engine_args(engine_args), **kwargs)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_config(self) -> Any:
        return self.engine.model_config

    @property
    def vocab_size(self) -> int:
        """Columns of the model's logits: token ids in requests must be below it."""
        return int(self.engine.vocab_size)

    @property
    def stats(self) -> EngineStatsSnapshot:
        return self._stats

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    @property
    def errored(self) -> bool:
        return self._dead is not None

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        """Start the step thread, bound to the running event loop (idempotent)."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine is not running: {self._dead}") from self._dead
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(self._loop,), name="octavo-engine", daemon=True)
        self._thread.start()

    # ---- requests ----------------------------------------------------------------------
    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs, shaped by `sampling_params.output_kind` (vLLM's rule).

        With `RequestOutputKind.DELTA` each output carries only the new tokens/text. Raises
        ValueError for bad input and QueueFullError when the waiting queue is full, before the
        first output. Leaving the loop early (break, cancellation, a dropped client) aborts the
        request and frees its KV blocks.
        """
        stream = await self.add_request(request_id, prompt, sampling_params, lora_request)
        async for out in stream:  # noqa: B007 - the last one is the result
            yield out

    async def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        sampling_params: SamplingParams,
        lora_request: LoRARequest | None = None,
    ) -> RequestStream:
        """Queue a request and wait until the engine accepted it; return its output stream.
        `lora_request`: the LoRA adapter it runs with (None: the base model).

        Splitting this from iteration lets a server answer 400/503 before it starts a stream.
        """
        self.start()
        stream = await self._add_one(request_id, prompt, sampling_params, lora_request)
        return RequestStream(self, stream)

    async def _add_one(
        self, request_id: str, prompt: PromptType, params: SamplingParams, lora_request: LoRARequest | None = None
    ) -> _Stream:
        if self._dead is not None:
            raise EngineDeadError(f"the engine is not running: {self._dead}")
        if self._stop:
            raise EngineDeadError("the engine is shutting down")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        # fast path of the queue bound; the engine thread checks it exactly
        if self.max_waiting_requests and (
            self._stats.num_waiting + self._num_pending_adds >= self.max_waiting_requests
        ):
            raise QueueFullError(self._queue_full_message())
        if self.log_requests:
            self._log_request(request_id, prompt, params)
        stream = _Stream(request_id, params, prompt)
        self._streams[request_id] = stream
        assert self._loop is not None  # add_request started the engine on this loop
        fut = self._loop.create_future()
        # an adapter rides as a sixth item, so that commands without one keep their shape
        self._send(("add", request_id, prompt, params, fut, *([lora_request] if lora_request is not None else [])))
        try:
            await fut
        except asyncio.CancelledError:
            self._abort_one(request_id)  # the add may still land: the abort follows it
            raise
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        return stream

    async def encode(self, request_id: str, prompt: PromptType, params: Any) -> Any:
        """Pool one prompt (a PoolingEngine's request; params: PoolingParams); its
        PoolingRequestOutput. ValueError for a bad input, as `add_request`."""
        self.start()
        if self._dead is not None or self._stop:
            raise EngineDeadError(f"the engine is not running: {self._dead or 'shutting down'}")
        if request_id in self._pooled:
            raise ValueError(f"request id {request_id!r} is already in use")
        assert self._loop is not None  # started above, on this loop
        added, result = self._loop.create_future(), self._loop.create_future()
        self._pooled[request_id] = result
        self._send(("add", request_id, prompt, params, added))
        try:
            await added
            return await result
        except asyncio.CancelledError:
            self._abort_one(request_id)
            raise
        finally:
            self._pooled.pop(request_id, None)

    async def beam_search(self, prompt_ids: list[int], params: Any, request_id: str) -> RequestOutput:
        """Beam search for one prompt: the beams' one-token steps run as ordinary requests
        (batched with everything else in flight), sharing KV blocks through the prefix cache.
        Returns one RequestOutput whose outputs are the beam_width best beams, best first."""
        from octavo.beam_search import BeamSearcher

        searcher = BeamSearcher([list(prompt_ids)], params, self.engine.eos_token_ids, self.tokenizer)
        step = 0
        while not searcher.done:
            streams = []
            try:
                for j, p in enumerate(searcher.pending()):
                    streams.append(await self.add_request(f"{request_id}-beam{step}-{j}", p, searcher.step_params))
                outs = await asyncio.gather(*(last_output(s) for s in streams))
            finally:
                for st in streams:  # no-op once finished; frees blocks if we were cancelled
                    st.abort()
            searcher.advance(outs)
            step += 1
        best = searcher.results()[0].sequences
        n = len(prompt_ids)
        return RequestOutput(
            request_id=request_id,
            prompt=None,
            prompt_token_ids=list(prompt_ids),
            finished=True,
            outputs=[
                CompletionOutput(
                    index=i,
                    text=b.text or "",
                    token_ids=b.tokens[n:],
                    cumulative_logprob=b.cum_logprob,
                    finish_reason=b.finish_reason,
                    stop_reason=b.stop_reason,
                )
                for i, b in enumerate(best)
            ],
        )

    def _log_request(self, request_id: str, prompt: PromptType, params: SamplingParams) -> None:
        shown: Any = prompt.get("prompt_token_ids", prompt) if isinstance(prompt, dict) else prompt
        if isinstance(prompt, MultiModalInputs):  # its token ids (the images' placeholders expanded)
            shown = prompt.prompt_token_ids
        if self.max_log_len is not None:
            shown = shown[: self.max_log_len]
        logger.info("received request %s: prompt %r, params %s", request_id, shown, params)

    def _queue_full_message(self) -> str:
        return (
            f"the server is overloaded: {self.max_waiting_requests} requests are already waiting "
            "(--max-waiting-requests); retry later"
        )

    def abort(self, request_id: str) -> None:
        """Stop a request now: its stream ends with finish_reason "abort" and the engine frees
        its KV blocks before the next step. Unknown or finished ids are ignored."""
        self._abort_one(request_id)

    def _abort_one(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        self._send(("abort", request_id))
        if stream is not None and not stream.finished:
            out = _aborted_output(stream)
            stream.finished = True
            stream.queue.put_nowait(out)
            stream.queue.put_nowait(_END)
            self._notify_finished(stream, out)

    async def get_stats(self) -> EngineStatsSnapshot:
        return self._stats

    async def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine thread died: {self._dead!r}")

    # ---- shutdown ----------------------------------------------------------------------
    async def shutdown(self, timeout: float = 30.0) -> None:
        """Abort every request in flight, stop the step thread and wait for it."""
        for rid in list(self._streams):
            self._abort_one(rid)
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)  # the thread shuts the engine down
        else:
            self.engine.shutdown()  # stops tensor-parallel workers

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (graceful drain); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self._streams

    async def drain(self, timeout: float) -> int:
        """Let the requests in flight finish for up to `timeout` seconds, then abort the rest
        (their streams end with finish_reason "abort", not a cut connection); how many were aborted."""
        if await self.wait_idle(timeout):
            return 0
        left = list(self._streams)
        for rid in left:
            self._abort_one(rid)
        return len(left)

    # ---- the engine thread ----------------------------------------------------------------
    def _send(self, cmd: tuple) -> None:
        with self._cv:
            if cmd[0] == "add":
                self._num_pending_adds += 1
            self._commands.append(cmd)
            self._cv.notify()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        engine = self.engine
        live: set[str] = set()  # ids the engine holds unfinished (only this thread touches it)
        commands: list[tuple] = []
        try:
            while True:
                with self._cv:
                    while not self._commands and not self._stop and not live:
                        self._cv.wait()
                    commands, self._commands = self._commands, []
                    self._num_pending_adds = 0
                    stop = self._stop
                self._apply(commands, live, loop)
                commands = []
                if stop:
                    if live:
                        engine.abort_request(list(live))
                    break
                outputs = engine.step() if live or engine.has_unfinished_requests() else []
                for out in outputs:
                    if out.finished:
                        live.discard(out.request_id)
                if not engine.has_unfinished_requests():
                    live.clear()
                stats = self._snapshot()
                loop.call_soon_threadsafe(self._deliver, outputs, stats)
        except BaseException as e:  # noqa: BLE001 - reported to every waiting request
            logger.exception("engine thread died")
            with self._cv:
                commands += self._commands
                self._commands = []
            futs = [c[-1] for c in commands if c[0] == "add"]
            try:
                loop.call_soon_threadsafe(self._on_dead, e, futs)
            except RuntimeError:  # the loop is closed: nobody left to tell
                pass
        finally:
            engine.shutdown()  # stopped or dead, it steps no more: stop tensor-parallel workers

    def _apply(self, commands: list[tuple], live: set[str], loop: asyncio.AbstractEventLoop) -> None:
        engine = self.engine
        aborts: list[str] = []
        for cmd in commands:
            if cmd[0] == "abort":
                if cmd[1] in live:
                    aborts.append(cmd[1])
                    live.discard(cmd[1])
                continue
            if aborts:  # keep the order: an abort may target an add queued before it
                engine.abort_request(aborts)
                aborts = []
            _, rid, prompt, params, fut, *lora = cmd
            try:
                if self.max_waiting_requests and self._num_waiting() >= self.max_waiting_requests:
                    raise QueueFullError(self._queue_full_message())
                if rid in self._pooled:  # `encode`: the futures dict is only added to before the command
                    engine.add_pooling_request(rid, prompt, params)
                elif lora:
                    engine.add_request(rid, prompt, params, arrival_time=time.monotonic(), lora_request=lora[0])
                else:
                    engine.add_request(rid, prompt, params, arrival_time=time.monotonic())
            except Exception as e:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(_set_exception, fut, e)
            else:
                live.add(rid)
                loop.call_soon_threadsafe(_set_result, fut)
        if aborts:
            engine.abort_request(aborts)

    def _num_waiting(self) -> int:
        return int(self.engine.get_stats().num_waiting)

    def _snapshot(self) -> EngineStatsSnapshot:
        prev = self._stats
        # the utilisation walks every block table: refresh it every 32 steps, not every step
        s = self.engine.get_stats(with_utilization=prev.num_steps % 32 == 0)
        return EngineStatsSnapshot(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_cache_usage=s.kv_cache_usage,
            prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=s.generation_tokens_total,
            num_preemptions_total=s.num_preemptions_total,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            max_num_running_seen=max(prev.max_num_running_seen, s.num_running),
            kv_slot_utilization=prev.kv_slot_utilization if s.kv_slot_utilization is None else s.kv_slot_utilization,
            num_steps=prev.num_steps + 1,
            num_recompiles=getattr(s, "num_recompiles", 0),
            step_tokens=getattr(s, "step_tokens", 0),
            spec_decode=getattr(s, "spec_decode", None),
            kv_transfer=getattr(s, "kv_transfer", None),
        )

    # ---- back on the event loop ------------------------------------------------------------
    def _deliver(self, outputs: list[RequestOutput], stats: EngineStatsSnapshot) -> None:
        self._stats = stats
        for sl in self.stat_loggers:
            on_step = getattr(sl, "on_step", None)
            if on_step is not None:
                try:
                    on_step(stats)
                except Exception:  # noqa: BLE001 - metrics must never break serving
                    logger.exception("stat logger failed")
        now = time.monotonic()
        for out in outputs:
            pooled = self._pooled.get(out.request_id)
            if pooled is not None:
                if not pooled.done():
                    pooled.set_result(out)
                continue
            stream = self._streams.get(out.request_id)
            if stream is None or stream.finished:
                continue  # aborted while the step ran
            if stream.prompt_token_ids == [] and out.prompt_token_ids:
                stream.prompt_token_ids = list(out.prompt_token_ids)
            t = stream.timing
            delta = stream.params.output_kind == RequestOutputKind.DELTA
            new_tokens = sum(len(c.token_ids) for c in out.outputs)
            if not delta:
                new_tokens -= t.num_output_tokens
            if t.n > 1:
                _count_samples(t, out, delta)
            if new_tokens > 0:
                if t.first_token is None:
                    t.first_token = now
                t.last_token = now
                t.num_output_tokens += new_tokens
            stream.last = out
            if out.error is not None:  # failed alone: the consumer gets the error, not the output
                stream.error = RequestFailedError(f"request {out.request_id} failed: {out.error}")
                stream.finished = True
                stream.queue.put_nowait(_END)
                del self._streams[out.request_id]
                self._notify_finished(stream, out)
                continue
            stream.queue.put_nowait(out)
            if out.finished:
                stream.finished = True
                stream.queue.put_nowait(_END)
                del self._streams[out.request_id]
                self._notify_finished(stream, out)

    def _notify_finished(self, stream: _Stream, out: RequestOutput) -> None:
        for sl in self.stat_loggers:
            try:
                sl.on_request_finished(out, stream.timing)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                logger.exception("stat logger failed")

    def _on_dead(self, error: BaseException, futs: list[asyncio.Future]) -> None:
        self._dead = error
        for fut in futs + list(self._pooled.values()):
            _set_exception(fut, EngineDeadError(f"the engine thread died: {error!r}"))
        for stream in list(self._streams.values()):
            stream.error = EngineDeadError(f"the engine thread died: {error!r}")
            stream.error.__cause__ = error
            stream.finished = True
            stream.queue.put_nowait(_END)
        self._streams.clear()
        for callback in self.dead_callbacks:
            try:
                callback(error)
            except Exception:  # noqa: BLE001 - one callback must not keep the others from running
                logger.exception("engine-dead callback failed")


class RequestStream:
    """Async iterator over one request's outputs. Closing it early (or cancelling the task that
    iterates it) aborts the request."""

    def __init__(self, engine: AsyncLLMEngine, stream: _Stream) -> None:
        self.engine = engine
        self.request_id = stream.request_id
        self._stream = stream

    @property
    def finished(self) -> bool:
        return self._stream.finished

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        done = False
        try:
            async for out in _drain(self._stream):
                yield out
            done = True
        finally:
            if not done:
                self.abort()

    def abort(self) -> None:
        if not self._stream.finished:
            self.engine._abort_one(self.request_id)


async def _drain(stream: _Stream) -> AsyncIterator[RequestOutput]:
    while True:
        item = await stream.queue.get()
        if item is _END:
            if stream.error is not None:
                raise stream.error
            return
        yield item


def _count_samples(t: RequestTiming, out: RequestOutput, delta: bool) -> None:
    """Each sample's generated tokens so far (a delta output carries only the new ones)."""
    for c in out.outputs:
        while len(t.sample_tokens) <= c.index:
            t.sample_tokens.append(0)
        t.sample_tokens[c.index] = t.sample_tokens[c.index] + len(c.token_ids) if delta else len(c.token_ids)


def _aborted_output(stream: _Stream) -> RequestOutput:
    """The last output of an aborted request: nothing new, finish_reason "abort"."""
    if stream.last is not None and stream.params.output_kind == RequestOutputKind.CUMULATIVE:
        outs = [dataclasses.replace(c, finish_reason="abort") for c in stream.last.outputs]
    else:
        outs = [CompletionOutput(index=i, text="", token_ids=[], finish_reason="abort") for i in range(stream.params.n)]
    return RequestOutput(
        request_id=stream.request_id,
        prompt=stream.prompt,
        prompt_token_ids=stream.prompt_token_ids,
        outputs=outs,
        finished=True,
    )


def _set_result(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exception(fut: asyncio.Future, e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)


async def last_output(stream: RequestStream) -> RequestOutput:
    """The final output of a stream (drains it)."""
    out = None
    async for out in stream:  # noqa: B007 - the last one is the result
        pass
    assert out is not None, "a request ended without any output"
    return out
