"""The "ray" backend of the executor: ranks 1..world-1 as Ray actors, on one node or several.

`distributed_executor_backend="ray"` runs the same worker (`octavo.executor._worker_main`) as
the "mp" backend, in Ray actors instead of spawned processes; only its start and its pipe
differ. The actors are placed by a placement group of one bundle per worker (a CPU, and a
GPU on a GPU device), packed onto as few nodes as hold them, and take their ranks node by node,
rank 0's node first; rank 0 stays the engine's own process (on a GPU device the group holds a
bundle for its GPU too, on its node, so that no worker takes it). Each actor connects back to
rank 0 over TCP (multiprocessing's authenticated connection, so rank 0 speaks to it as to a
pipe), and the process group's rendezvous is rank 0's node address.

Which cluster: an engine process that is already connected to Ray (ray.is_initialized) keeps
its connection; otherwise `ray.init()`, which joins the cluster RAY_ADDRESS names, else the
one started on this node with `ray start`, else starts a local instance for this engine alone
(stopped with it). See docs/parallelism.md for two nodes.

No orphans: an actor belongs to the process that created it, and Ray kills it when that
process exits or is killed; shutdown kills the actors and removes the placement group.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from multiprocessing.connection import Client, Listener
from typing import Any

logger = logging.getLogger("octavo")

#: how long start-up waits for the cluster to grant the placement group
PLACEMENT_TIMEOUT_S = 120.0


class RayLauncher:
    """Starts workers as Ray actors in one placement group (executor.Launcher)."""

    def __init__(self, config, platform) -> None:
        import ray
        from ray.util.placement_group import placement_group, placement_group_table

        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init()
        self.host = ray.util.get_node_ip_address()
        workers = config.parallel.world_size - 1
        # CUDA and ROCm devices (torch calls both "cuda") are GPUs to Ray
        gpus = platform.device.torch_device().type == "cuda"
        bundle = {"CPU": 1.0, **({"GPU": 1.0} if gpus else {})}
        bundles = [dict(bundle) for _ in range(workers)]
        if gpus:  # rank 0, the engine's process on this node, is no actor, but its GPU must go to no worker
            bundles.insert(0, {"GPU": 1.0, f"node:{self.host}": 0.001})
        self._pg = placement_group(bundles, strategy="PACK")
        try:
            ray.get(self._pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"the Ray cluster did not grant {workers} x {bundle} for the workers within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s (it has {ray.available_resources()} available): add nodes, or ask "
                "for fewer ranks"
            ) from None
        # ranks follow the nodes: this node's bundles first (ranks 1.. share rank 0's last stage),
        # then each other node's together, so that a stage's ranks share a node where they fit
        nodes = placement_group_table(self._pg)["bundles_to_node_id"]
        here = ray.get_runtime_context().get_node_id()
        self._bundles = sorted(
            range(len(bundles) - workers, len(bundles)), key=lambda i: (nodes[i] != here, nodes[i], i)
        )
        self._authkey = secrets.token_bytes(32)
        self._listener = Listener((self.host, 0), authkey=self._authkey)
        self._actors: list[Any] = []

    def start(self, rank: int, args: tuple) -> tuple[RayWorker, Any]:
        """Start rank `rank`'s actor in its bundle and accept its connection."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        index = self._bundles[len(self._actors)]
        strategy = PlacementGroupSchedulingStrategy(placement_group=self._pg, placement_group_bundle_index=index)
        resources = self._pg.bundle_specs[index]
        actor_cls: Any = ray.remote(_RankActor).options(
            num_cpus=resources.get("CPU", 0),
            num_gpus=resources.get("GPU", 0),
            scheduling_strategy=strategy,
        )
        actor = actor_cls.remote()
        self._actors.append(actor)
        done = actor.run.remote(*args, self._listener.address, self._authkey)
        worker = RayWorker(actor, done)
        return worker, self._accept(worker, rank)

    def _accept(self, worker: RayWorker, rank: int):
        """The actor's connection, or an error when it dies (or never calls) first."""
        accepted: list[Any] = []
        thread = threading.Thread(target=lambda: accepted.append(self._listener.accept()), daemon=True)
        thread.start()
        deadline = time.monotonic() + PLACEMENT_TIMEOUT_S
        while thread.is_alive():
            thread.join(0.1)
            if thread.is_alive() and (not worker.is_alive() or time.monotonic() > deadline):
                why = worker.failure() or f"did not connect within {PLACEMENT_TIMEOUT_S:.0f} s"
                raise RuntimeError(f"Ray worker rank {rank} failed to start: {why}")
        return accepted[0]

    def close(self) -> None:
        """Remove the placement group (its actors go with it) and stop a Ray this engine started."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if not ray.is_initialized():
            return
        for actor in getattr(self, "_actors", []):
            ray.kill(actor, no_restart=True)
        listener = getattr(self, "_listener", None)
        if listener is not None:
            listener.close()
        remove_placement_group(self._pg)
        if self._started_ray:
            ray.shutdown()


class _RankActor:
    """A worker process of Ray's: runs the worker loop, connected back to rank 0."""

    def run(self, rank: int, init_method: str, config, source, address, authkey: bytes) -> None:
        from octavo.executor import _worker_main

        _worker_main(rank, init_method, config, source, Client(address, authkey=authkey))


class RayWorker:
    """A Ray actor as executor.WorkerHandle: alive while its `run` call has not returned."""

    def __init__(self, actor, done) -> None:
        self._actor = actor
        self._done = done

    def is_alive(self) -> bool:
        import ray

        ready, _ = ray.wait([self._done], timeout=0)
        return not ready

    def failure(self) -> str | None:
        """What ended the actor (None while it runs, or when it returned normally)."""
        import ray

        if self.is_alive():
            return None
        try:
            ray.get(self._done)
        except Exception as e:  # noqa: BLE001 - reported, whatever Ray raised
            return f"{type(e).__name__}: {e}"
        return None

    @property
    def exitcode(self) -> int | None:
        if self.is_alive():
            return None
        return 1 if self.failure() is not None else 0

    def kill(self) -> None:
        import ray

        ray.kill(self._actor, no_restart=True)

    def join(self, timeout: float | None = None) -> None:
        import ray

        ray.wait([self._done], timeout=timeout)
