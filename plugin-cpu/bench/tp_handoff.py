"""Per-step cost of handing one step's inputs from rank 0 to a tensor-parallel worker.

Compares what octavo.executor does (StepInputs pickled over a multiprocessing pipe) with the
alternative of two gloo broadcasts (a fixed header, then the variable payload). Each timed
iteration ends with a 1-element gloo all_reduce, as a forward would, so the figures include
the worker's receive and tensor rebuild; the "all_reduce alone" line is that floor.

    python plugin-cpu/bench/tp_handoff.py
"""

import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from octavo.executor import StepInputs
from octavo.platform import ForwardBatch


def _batch(ids, pos, slots, qsl, sl, bt, mq, ms) -> ForwardBatch:
    counts = torch.tensor([ids.numel(), sl.numel()], dtype=torch.int32)
    return ForwardBatch(ids, pos, slots, qsl, sl, bt, mq, ms, qsl.tolist(), sl.tolist(), counts[0], counts[1])


def make(T, B, nb):
    qsl = torch.from_numpy(np.linspace(0, T, B + 1).astype(np.int32))
    sl = torch.full((B,), 100, dtype=torch.int32)
    return _batch(
        torch.arange(T), torch.arange(T), torch.arange(T), qsl, sl, torch.zeros(B, nb, dtype=torch.int32), 1, 100
    )


def pack(b: ForwardBatch):
    B, nb = b.block_tables.shape
    T = b.input_ids.numel()
    hdr = torch.tensor([T, B, nb, b.max_query_len, b.max_seq_len], dtype=torch.int64)
    body = torch.cat(
        [
            b.input_ids,
            b.positions,
            b.slot_mapping,
            b.query_start_loc.long(),
            b.seq_lens.long(),
            b.block_tables.long().flatten(),
        ]
    )
    return hdr, body


def unpack(hdr, body) -> ForwardBatch:
    T, B, nb, mq, ms = hdr.tolist()
    ids, pos, slots, qsl, sl, bt = body.split([T, T, T, B + 1, B, B * nb])
    return _batch(ids, pos, slots, qsl.int(), sl.int(), bt.int().view(B, nb), mq, ms)


N = 300
CASES = {"decode 16 seqs": (16, 16, 16), "prefill 2048 tok": (2048, 16, 16)}


def run(rank, conn, port):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    x = torch.zeros(1)
    for name, (T, B, nb) in CASES.items():
        batch = make(T, B, nb)
        res = {}
        for mode in ("sync only", "pipe", "broadcast"):
            dist.barrier()
            t = time.perf_counter()
            for _ in range(N):
                if mode == "pipe":
                    if rank == 0:
                        conn.send(StepInputs.from_batch(batch))
                    else:
                        conn.recv().to_batch(torch.device("cpu"))
                elif mode == "broadcast":
                    if rank == 0:
                        hdr, body = pack(batch)
                        dist.broadcast(hdr, 0)
                        dist.broadcast(body, 0)
                    else:
                        hdr = torch.empty(5, dtype=torch.int64)
                        dist.broadcast(hdr, 0)
                        T_, B_, nb_ = hdr[:3].tolist()
                        body = torch.empty(3 * T_ + 2 * B_ + 1 + B_ * nb_, dtype=torch.int64)
                        dist.broadcast(body, 0)
                        unpack(hdr, body)
                dist.all_reduce(x)
            res[mode] = (time.perf_counter() - t) / N * 1e6
        if rank == 0:
            base = res["sync only"]
            print(
                f"{name}: all_reduce alone {base:.0f} us; + pipe {res['pipe'] - base:.0f} us; "
                f"+ 2 gloo broadcasts {res['broadcast'] - base:.0f} us"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=run, args=(1, b, port))
    p.start()
    run(0, a, port)
    p.join()
