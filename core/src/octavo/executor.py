"""Worker processes for ranks 1..world-1 of a tensor- and pipeline-parallel run, driven by rank 0.

Rank 0 is the engine's own process: it schedules, prepares each step's inputs, samples and
detokenizes. Every other rank is a process started here that builds the same `ModelRunner` over
its shard of the weights (its pipeline stage's layers, its kv heads of them: octavo.pipeline)
and its own KV cache, then loops:

    rank 0                                   worker (rank r)
    ModelRunner._prepare(SchedulerOutput)
    send StepInputs over the rank's pipe  -> recv StepInputs, rebuild the tensors
    ModelRunner.forward  <-- all_reduce over the process group -->  ModelRunner.forward
    sample (rank 0 only)                     (its hidden states are dropped)

With pipeline stages a worker's loop body is `ModelRunner.run_stage` instead (activations in
from the previous stage, out to the next, over the communicator's send/recv), and rank 0 hands
the steps to the workers from a thread of its own: it keeps several steps in flight, and a
write to a worker's pipe must not block rank 0 while that worker waits on rank 0's stage.

How the workers start is the backend's business, not the worker loop's: "mp" spawns them with
torch.multiprocessing on this host (`_MpLauncher`); "ray" runs the same `_worker_main` in Ray
actors placed by a placement group, possibly on other nodes, its pipe a TCP connection to
rank 0 (octavo.ray_executor).

Why a pipe and not a broadcast over the process group: a worker waits for the next step
for as long as the engine is idle (a server may idle for hours), and a collective would
time out; a pipe blocks without a deadline, its end-of-file tells a worker that rank 0 is
gone, and it was the cheaper of the two on a 2-core host (median ~0.25 ms a step against
~1.1 ms for two gloo broadcasts, decode and 2048-token prefill alike; plugin-cpu/bench/
tp_handoff.py, figures in docs/architecture.md). The collectives inside the forward keep the process
group's timeout (`Platform.dist_timeout_s`), so a hung rank raises instead of hanging.

Failure handling, the invariant being "no orphans, no silent hangs":
* a worker exits when its pipe reports end-of-file or multiprocessing's parent sentinel
  fires (rank 0 exited or was killed), and is a daemon process (reaped at normal exit); a
  Ray actor dies with its owner, rank 0's process (Ray's fate sharing), and on end-of-file;
* a worker's exception is sent back over its pipe before it exits; rank 0 checks the
  workers after any failed step (a dead peer makes the all_reduce raise) and raises
  `WorkerError` with the worker's traceback; the engine is unusable from then on;
* start-up waits for each worker with a deadline and watches that it is still alive.

A user script that creates an engine with several ranks on the "mp" backend must guard its
entry point with `if __name__ == "__main__":`: spawn re-imports the main module in each worker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from octavo.platform import ForwardBatch

logger = logging.getLogger("octavo")

#: how long start-up waits for a worker to load its shard and allocate its KV cache
STARTUP_TIMEOUT_S = 600.0
#: how long shutdown waits for a worker to exit before killing it
SHUTDOWN_TIMEOUT_S = 10.0


class WorkerError(RuntimeError):
    """A worker (tensor- or pipeline-parallel rank) failed or exited; the engine cannot go on."""


@dataclass(frozen=True)
class StepInputs:
    """Rank 0 -> workers: one step's ForwardBatch on the host (what `ModelRunner._prepare`
    built), as numpy arrays that pickle cheaply."""

    input_ids: np.ndarray  # int64 [T]
    positions: np.ndarray  # int64 [T]
    slot_mapping: np.ndarray  # int64 [T]
    query_start_loc: np.ndarray  # int32 [B + 1]
    seq_lens: np.ndarray  # int32 [B]
    block_tables: np.ndarray  # int32 [B, max_blocks]
    counts: np.ndarray  # int32 [2]: real tokens, real requests
    max_query_len: int
    max_seq_len: int

    @classmethod
    def from_batch(cls, batch: ForwardBatch) -> StepInputs:
        def host(t: torch.Tensor) -> np.ndarray:
            return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()

        assert batch.num_tokens_t is not None and batch.num_reqs_t is not None  # ModelRunner._batch sets them
        counts = np.array([int(batch.num_tokens_t), int(batch.num_reqs_t)], dtype=np.int32)
        return cls(
            host(batch.input_ids),
            host(batch.positions),
            host(batch.slot_mapping),
            host(batch.query_start_loc),
            host(batch.seq_lens),
            host(batch.block_tables),
            counts,
            batch.max_query_len,
            batch.max_seq_len,
        )

    def to_batch(self, device: torch.device) -> ForwardBatch:
        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device)

        counts = dev(self.counts)
        return ForwardBatch(
            input_ids=dev(self.input_ids),
            positions=dev(self.positions),
            slot_mapping=dev(self.slot_mapping),
            query_start_loc=dev(self.query_start_loc),
            seq_lens=dev(self.seq_lens),
            block_tables=dev(self.block_tables),
            max_query_len=self.max_query_len,
            max_seq_len=self.max_seq_len,
            query_start_loc_cpu=self.query_start_loc.tolist(),
            seq_lens_cpu=self.seq_lens.tolist(),
            num_tokens_t=counts[0],
            num_reqs_t=counts[1],
        )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class WorkerHandle(Protocol):
    """A started worker, whatever started it: what rank 0 watches and stops
    (multiprocessing's Process has this shape; octavo.ray_executor adapts a Ray actor to it)."""

    @property
    def exitcode(self) -> int | None: ...  # None while it runs

    def is_alive(self) -> bool: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class Launcher(Protocol):
    """A backend that starts workers: each runs `_worker_main(rank, init_method, config,
    source, conn)`, conn being the other end of the connection returned with its handle."""

    #: the address other ranks reach this process at (the process group's rendezvous)
    host: str

    def start(self, rank: int, args: tuple) -> tuple[WorkerHandle, Any]: ...

    def close(self) -> None: ...  # release the backend's resources, once the workers are stopped


class _MpLauncher:
    """Processes spawned on this host (torch.multiprocessing), each with a pipe to rank 0."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self._ctx = torch.multiprocessing.get_context("spawn")

    def start(self, rank: int, args: tuple) -> tuple[WorkerHandle, Any]:
        here, there = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, name=f"octavo-rank{rank}", daemon=True, args=(*args, there))
        proc.start()
        there.close()  # the worker holds that end: its exit makes our reads hit EOF
        return proc, here

    def close(self) -> None:
        pass


def _launcher(config, platform) -> Launcher:
    backend = config.parallel.distributed_executor_backend
    if backend == "ray":
        from octavo.ray_executor import RayLauncher

        return RayLauncher(config, platform)
    assert backend == "mp", backend  # engine_config refuses the others
    return _MpLauncher()


def start_workers(config, platform, source) -> Workers | None:
    """Start ranks 1..world-1 and join the run with them as rank 0; None when the run has one
    rank. Call before building rank 0's ModelRunner: the workers load their shards meanwhile."""
    if config.parallel.world_size == 1:
        return None
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is already initialized in this process (another tensor-parallel engine, or "
            "the caller's own process group); shut the other engine down first (LLM.shutdown()), or run this "
            "one in its own process"
        )
    workers = Workers(platform, config.parallel)
    try:
        workers.start(config, source)
    except BaseException:
        workers.shutdown()
        raise
    return workers


class Workers:
    """Rank 0's handle on the worker processes: start, hand out steps, check, stop."""

    def __init__(self, platform, parallel) -> None:
        self.world_size = parallel.world_size
        self._parallel = parallel
        self._platform = platform
        self._error: WorkerError | None = None
        self._procs: list[WorkerHandle] = []
        self._conns: list[Any] = []
        self._closers: list[Callable[[], None]] = []  # the backend's, called once the workers are stopped
        # pipeline stages: steps go out from a thread (see the module doc), which records its failures here
        self._outbox: queue.SimpleQueue | None = queue.SimpleQueue() if parallel.pipeline_parallel_size > 1 else None
        self._send_errors: list[BaseException] = []
        self._bytes_per_block: int | None = None
        if self._outbox is not None:
            args = (self._outbox, self._conns, self._send_errors)
            threading.Thread(target=_send_loop, args=args, name="octavo-step-sender", daemon=True).start()
        # whatever happens to this object (shutdown, garbage collection, interpreter exit), the
        # workers and the process group go with it; the finalizer holds no reference to self
        self._finalizer = weakref.finalize(self, _stop_workers, self._procs, self._conns, self._outbox, self._closers)

    def start(self, config, source) -> None:
        """Start the workers and join the run with them."""
        launcher = _launcher(config, self._platform)
        self._closers.append(launcher.close)
        init_method = f"tcp://{launcher.host}:{_free_port(launcher.host)}"
        for rank in range(1, self.world_size):
            rank_config = config.replace(parallel=dataclasses.replace(config.parallel, rank=rank))
            proc, conn = launcher.start(rank, (rank, init_method, rank_config, source))
            self._procs.append(proc)
            self._conns.append(conn)
        self._wait_all("joining")  # each worker is about to join: now rank 0 may block in init
        from octavo.pipeline import join_run

        p = self._parallel
        join_run(self._platform, p.tensor_parallel_size, p.pipeline_parallel_size, 0, init_method)

    def kv_cache_bytes_per_block(self) -> int:
        """The most one block costs on a worker, once each has loaded its share of the model
        (a pipeline stage may hold more layers than rank 0's)."""
        if self._bytes_per_block is None:
            self._bytes_per_block = max(self._wait_all("loaded"))
        return self._bytes_per_block

    def allocate_kv_cache(self, num_blocks: int, allocate_here: Callable[[int], None]) -> None:
        """Size every rank's KV cache alike and wait until the workers are ready to step.
        Rank 0 allocates (`allocate_here`) while the workers do: start-up warm-up and graph
        capture run forwards whose all-reduces need every rank."""
        self.kv_cache_bytes_per_block()  # their "loaded" first
        for conn in self._conns:
            conn.send(("kv", num_blocks))
        allocate_here(num_blocks)
        self._wait_all("ready")
        p = self._parallel
        logger.info(
            "%d ranks ready (tensor parallel %d x pipeline parallel %d, %s backend)",
            self.world_size,
            p.tensor_parallel_size,
            p.pipeline_parallel_size,
            p.distributed_executor_backend,
        )

    def _wait_all(self, expected: str) -> list[Any]:
        """Each worker's next start-up message, which must be `expected`: their payloads."""
        payloads = []
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for rank, (proc, conn) in enumerate(zip(self._procs, self._conns), start=1):
            while not conn.poll(0.1):
                if not proc.is_alive():
                    self._fail(f"worker rank {rank} {_exit_status(proc.exitcode)} during start-up")
                if time.monotonic() > deadline:
                    self._fail(f"worker rank {rank} did not report {expected!r} within {STARTUP_TIMEOUT_S:.0f} s")
            try:
                kind, payload = conn.recv()
            except EOFError:
                proc.join(1.0)
                self._fail(f"worker rank {rank} {_exit_status(proc.exitcode)} during start-up")
            if kind == "error":
                self._fail(f"worker rank {rank} failed during start-up:\n{payload}")
            assert kind == expected, (kind, expected)
            payloads.append(payload)
        return payloads

    # ---- per step ---------------------------------------------------------------------------
    def send_step(self, batch: ForwardBatch) -> None:
        """Hand this step's inputs to every worker (ModelRunner calls it before its forward)."""
        if self._error is not None:
            raise self._error
        msg = StepInputs.from_batch(batch)
        if self._outbox is not None:
            if self._send_errors:
                self.step_failed(self._send_errors[0])
                raise self._send_errors[0]
            self._outbox.put(msg)
            return
        try:
            for conn in self._conns:
                conn.send(msg)
        except OSError as e:  # BrokenPipeError: the worker is gone
            self.step_failed(e)
            raise

    def step_failed(self, cause: BaseException) -> None:
        """A step raised on rank 0 (`cause`). A dead or failing worker makes rank 0's
        collectives raise, so look for one (its traceback comes over its pipe) and raise
        WorkerError naming it. Either way the ranks may now be at different points of the
        forward, so the engine cannot step again: the workers are stopped and later steps
        raise. Returns (for the caller to re-raise `cause`) when no worker failed."""
        if self._error is not None:
            raise self._error from cause
        # a crashing worker sends its traceback, then exits: give it a moment (not after ^C)
        deadline = time.monotonic() + (2.0 if isinstance(cause, Exception) else 0.0)
        while True:
            reasons = []
            for rank, (proc, conn) in enumerate(zip(self._procs, self._conns), start=1):
                detail = None
                try:
                    if conn.poll(0):
                        kind, payload = conn.recv()
                        detail = payload if kind == "error" else None
                except (EOFError, OSError):
                    pass
                if detail is not None or not proc.is_alive():
                    proc.join(1.0)
                    reasons.append(f"rank {rank} ({_exit_status(proc.exitcode)})" + (f":\n{detail}" if detail else ""))
            if reasons or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if reasons:
            self._fail("a worker failed, the engine cannot continue; restart it. Worker " + "; ".join(reasons), cause)
        self._error = WorkerError(
            f"an earlier step failed on rank 0 ({cause!r}) and left the ranks out of step; restart the engine"
        )
        self._kill()

    def _fail(self, message: str, cause: BaseException | None = None) -> None:
        self._error = WorkerError(message)
        self._kill()
        raise self._error from cause

    def _kill(self) -> None:
        """Stop the workers without asking: after a failure they may be waiting in a
        collective for a rank that will never join it, and would not read a stop message."""
        self.shutdown(now=True)

    def shutdown(self, now: bool = False) -> None:
        """Stop the workers and leave the process group (idempotent); `now`: without asking
        them (they may be in the middle of a step)."""
        if now:
            for proc in self._procs:
                if proc.is_alive():
                    proc.kill()
        self._finalizer()


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still exiting"
    if code < 0:  # SIGKILL without a traceback is most often the kernel's out-of-memory killer
        return f"killed by signal {-code}" + (", perhaps out of memory" if code == -9 else "")
    return f"exited with code {code}"


def _send_loop(outbox: queue.SimpleQueue, conns: list, errors: list[BaseException]) -> None:
    """Rank 0's step sender with pipeline stages: each message to every worker, in order; the
    stop message (None) ends it."""
    while True:
        msg = outbox.get()
        try:
            for conn in conns:
                conn.send(msg)
        except (OSError, ValueError) as e:  # a worker is gone, or its connection was closed
            errors.append(e)
            return
        if msg is None:
            return


def _stop_workers(procs: list, conns: list, outbox: queue.SimpleQueue | None, closers: list) -> None:
    if outbox is not None:
        outbox.put(None)  # the stop message, behind any step still queued for the sender
    else:
        for conn in conns:
            try:
                conn.send(None)  # the stop message
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    for conn in conns:
        conn.close()
    import torch.distributed as dist

    if dist.is_initialized():  # the group of these workers: one multi-rank engine per process
        dist.destroy_process_group()
    for close in closers:
        close()


# ---- the worker process ------------------------------------------------------------------------
def _exit_with_parent() -> None:
    """Exit this worker as soon as rank 0's process is gone, even mid-collective (where a
    pipe's end-of-file would go unseen). Only for processes multiprocessing started."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="octavo-parent-watch", daemon=True).start()


def _worker_main(rank: int, init_method: str, config, source, conn) -> None:
    """A worker's whole life, however it was started: join the run, load this rank's share of
    the model, allocate its KV cache, then run each step rank 0 sends until told to stop."""
    if threading.current_thread() is threading.main_thread():
        # ^C in a terminal reaches every process of the group; rank 0 alone decides what it means
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    try:
        from octavo.model_runner import ModelRunner
        from octavo.pipeline import join_run
        from octavo.platform import resolve_platform

        platform = resolve_platform(config.device)
        platform.check_and_update_config(config)
        conn.send(("joining", None))
        p = config.parallel
        join_run(platform, p.tensor_parallel_size, p.pipeline_parallel_size, rank, init_method)
        runner = platform.make_runner(config, source)
        # only ModelRunners start workers (engine_config refuses other runners without spmd)
        assert isinstance(runner, ModelRunner), type(runner)
        conn.send(("loaded", runner.kv_cache_bytes_per_block()))
        kind, num_blocks = conn.recv()
        assert kind == "kv", kind
        runner.initialize_kv_cache(num_blocks)
        conn.send(("ready", None))
        step = runner.run_stage if runner.stage.size > 1 else runner.forward
        with torch.inference_mode():
            while True:
                msg = conn.recv()
                if msg is None:
                    break
                step(msg.to_batch(runner.device))
    except EOFError:
        pass  # rank 0 is gone
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        raise SystemExit(1) from None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
