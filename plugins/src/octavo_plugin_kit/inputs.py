"""Random inputs for kernel tests: paged batches and rotary tables.

The conformance suite and the unit tests build every attention batch here, so a
batch always obeys the contract in `octavo.platform.attention` (`_cpu` lists filled,
slots derived from the block tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from octavo.platform import ForwardBatch


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def make_forward_batch(
    seq_lens: Sequence[int],
    query_lens: Sequence[int],
    block_size: int,
    num_blocks: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    pad_tokens: int = 0,
    pad_reqs: int = 0,
) -> ForwardBatch:
    """A flat batch whose request i has `query_lens[i]` new tokens at the end of
    `seq_lens[i]` tokens of context (token ids 0: attention kernels do not read them).

    Blocks are drawn from a random permutation of `0..num_blocks-1`, so block tables
    are neither contiguous nor ordered: a kernel that assumes either gets wrong
    numbers. Unused table entries are 0, as the runner pads them. Requests come in the
    caller's order (decodes need not come first). `pad_tokens` / `pad_reqs` pad the
    step as a static-shape runner does (see `paged_batch`).
    """
    seq_lens, query_lens = [int(s) for s in seq_lens], [int(q) for q in query_lens]
    if len(seq_lens) != len(query_lens) or not seq_lens:
        raise ValueError(f"need one query length per sequence, got {query_lens} for {seq_lens}")
    for s, q in zip(seq_lens, query_lens):
        if not 1 <= q <= s:
            raise ValueError(f"query length {q} must be in [1, seq_len={s}]")
    blocks_per_seq = [_cdiv(s, block_size) for s in seq_lens]
    if sum(blocks_per_seq) > num_blocks:
        raise ValueError(f"the batch needs {sum(blocks_per_seq)} blocks of {block_size}, only {num_blocks} exist")

    perm = torch.randperm(num_blocks, generator=generator).tolist()
    tables, taken = [], 0
    for nb in blocks_per_seq:
        tables.append(perm[taken : taken + nb])
        taken += nb
    return paged_batch(seq_lens, query_lens, tables, block_size, device, pad_tokens, pad_reqs)


def paged_batch(
    seq_lens: Sequence[int],
    query_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    device: torch.device | str = "cpu",
    pad_tokens: int = 0,
    pad_reqs: int = 0,
) -> ForwardBatch:
    """The batch whose request i owns blocks `block_tables[i]` (in order) and has
    `query_lens[i]` new tokens at the end of `seq_lens[i]` tokens of context.

    Padding follows core's static-shape runner: `pad_reqs` requests with q_len 0 and
    seq_len 0 after the real ones, then `pad_tokens` tokens past the last request's,
    with slot -1 and position 0. The maxima and the `_t` counts are the real requests'.
    """
    seq_lens, query_lens = [int(s) for s in seq_lens], [int(q) for q in query_lens]
    width = max(max((len(t) for t in block_tables), default=1), 1)
    tables = torch.zeros(len(seq_lens) + pad_reqs, width, dtype=torch.int32)
    slots: list[int] = []
    for i, (s, q, blocks) in enumerate(zip(seq_lens, query_lens, block_tables)):
        if len(blocks) < _cdiv(s, block_size):
            raise ValueError(f"request {i} has {s} tokens but only {len(blocks)} blocks of {block_size}")
        tables[i, : len(blocks)] = torch.tensor(list(blocks), dtype=torch.int32)
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(s - q, s)]
    num_tokens = len(slots)
    query_start_loc = [0]
    for q in query_lens:
        query_start_loc.append(query_start_loc[-1] + q)
    query_start_loc += [num_tokens] * pad_reqs
    positions = [p for s, q in zip(seq_lens, query_lens) for p in range(s - q, s)] + [0] * pad_tokens
    slots += [-1] * pad_tokens
    counts = torch.tensor([num_tokens, len(seq_lens)], dtype=torch.int32, device=device)
    return ForwardBatch(
        input_ids=torch.zeros(len(slots), dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens + [0] * pad_reqs, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        query_start_loc_cpu=query_start_loc,
        seq_lens_cpu=seq_lens + [0] * pad_reqs,
        num_tokens_t=counts[0],
        num_reqs_t=counts[1],
    )


def history_batch(batch: ForwardBatch, block_size: int) -> ForwardBatch | None:
    """The step that wrote the context before `batch`'s queries: each request with earlier
    tokens, as one prefill of them over the same blocks (None: no request has any)."""
    tables = batch.block_tables.cpu().tolist()
    past = [(s - q, tables[i]) for i, (s, q) in enumerate(zip(batch.seq_lens_cpu, query_lens_of(batch))) if s - q > 0]
    if not past:
        return None
    lens = [n for n, _ in past]
    return paged_batch(lens, lens, [t for _, t in past], block_size, batch.slot_mapping.device)


def every_slot_batch(num_blocks: int, block_size: int, device: torch.device | str = "cpu") -> ForwardBatch:
    """A batch that writes every slot of the cache once: request b fills block b."""
    full = [block_size] * num_blocks
    return paged_batch(full, full, [[b] for b in range(num_blocks)], block_size, device)


def query_lens_of(meta: ForwardBatch) -> list[int]:
    qsl = meta.query_start_loc_cpu
    return [qsl[i + 1] - qsl[i] for i in range(meta.num_reqs)]


def context_slot_mapping(meta: ForwardBatch, block_size: int) -> torch.Tensor:
    """Slots of every context position of every request, request by request, position
    by position (int64, on the CPU). Its entries for the last q_len_i positions of each
    request equal `meta.slot_mapping`'s real (unpadded) tokens; the others hold the KV of
    earlier steps."""
    tables = meta.block_tables.cpu().tolist()
    slots = [
        tables[i][p // block_size] * block_size + p % block_size
        for i, s in enumerate(meta.seq_lens_cpu)
        for p in range(s)
    ]
    return torch.tensor(slots, dtype=torch.int64)


def new_token_mask(meta: ForwardBatch) -> torch.Tensor:
    """Over the rows of `context_slot_mapping`: True for this step's query tokens."""
    mask = [p >= s - q for s, q in zip(meta.seq_lens_cpu, query_lens_of(meta)) for p in range(s)]
    return torch.tensor(mask, dtype=torch.bool)


def make_cos_sin_cache(rot_dim: int, max_positions: int, base: float = 10000.0) -> torch.Tensor:
    """[max_positions, rot_dim] float32: cat(cos, sin) of each frequency, the table
    layout `FusedOps.rotary` takes (the default "rope_type")."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float()
