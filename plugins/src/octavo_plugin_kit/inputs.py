"""Random inputs for kernel tests: paged batches and rotary tables.

The conformance suite and the unit tests build every attention batch here, so a
batch always obeys the contract in `octavo.platform.interface` (decodes first,
`_cpu` lists filled, slots derived from the block tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from octavo.platform import AttentionMetadata


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def make_attention_metadata(
    seq_lens: Sequence[int],
    query_lens: Sequence[int],
    block_size: int,
    num_blocks: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> AttentionMetadata:
    """A flat batch whose request i has `query_lens[i]` new tokens at the end of
    `seq_lens[i]` tokens of context.

    Blocks are drawn from a random permutation of `0..num_blocks-1`, so block tables
    are neither contiguous nor ordered: a kernel that assumes either gets wrong
    numbers. Unused table entries are 0, as the runner pads them. The caller orders
    decodes (q_len 1) first, as the runner does; `num_decodes` counts them.
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
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    slots: list[int] = []
    taken = 0
    for i, (s, q, nb) in enumerate(zip(seq_lens, query_lens, blocks_per_seq)):
        blocks = perm[taken : taken + nb]
        taken += nb
        tables[i, :nb] = torch.tensor(blocks, dtype=torch.int32)
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(s - q, s)]

    query_start_loc = [0]
    for q in query_lens:
        query_start_loc.append(query_start_loc[-1] + q)
    num_decodes = 0
    while num_decodes < len(query_lens) and query_lens[num_decodes] == 1:
        num_decodes += 1
    return AttentionMetadata(
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=query_start_loc,
        seq_lens_cpu=seq_lens,
        num_decodes=num_decodes,
    )


def query_lens_of(meta: AttentionMetadata) -> list[int]:
    qsl = meta.query_start_loc_cpu
    return [qsl[i + 1] - qsl[i] for i in range(meta.num_seqs)]


def context_slot_mapping(meta: AttentionMetadata, block_size: int) -> torch.Tensor:
    """Slots of every context position of every request, request by request, position
    by position (int64, on the CPU). Its entries for the last q_len_i positions of each
    request equal `meta.slot_mapping`; the others hold the KV of earlier steps."""
    tables = meta.block_tables.cpu().tolist()
    slots = [
        tables[i][p // block_size] * block_size + p % block_size
        for i, s in enumerate(meta.seq_lens_cpu)
        for p in range(s)
    ]
    return torch.tensor(slots, dtype=torch.int64)


def new_token_mask(meta: AttentionMetadata) -> torch.Tensor:
    """Over the rows of `context_slot_mapping`: True for this step's query tokens."""
    mask = [p >= s - q for s, q in zip(meta.seq_lens_cpu, query_lens_of(meta)) for p in range(s)]
    return torch.tensor(mask, dtype=torch.bool)


def make_cos_sin_cache(rot_dim: int, max_positions: int, base: float = 10000.0) -> torch.Tensor:
    """[max_positions, rot_dim] float32: cat(cos, sin) of each frequency, the table
    layout `Platform.rotary` takes (the default "rope_type")."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float()
