"""Paged KV-cache allocator with reference counts and automatic prefix caching.

Integers only (no torch). Invariants, checked by `check_invariants()` in tests:
  * every block is either referenced (ref_count > 0) or in `free_queue`, never both;
  * a block in `_cached` (prefix-cache index) holds exactly the tokens of its key;
  * the free queue is in LRU order: allocation takes from the front, and a freed
    request's cached blocks go to the back tail-first, so a shared prefix outlives its
    suffixes; freed blocks that hold no cache entry go to the front (reused first).

Prefix-cache keys are exact, so no collision can hand one request another's KV: a
full block's key is `(parent_key, tuple(tokens), identity)` interned into a fresh integer
id (the dict compares the token tuples for equality). Ids are never reused, so a key
whose parent was evicted can never be matched again by mistake.

`identity` is what else, besides the token ids, the block's KV depends on: the request's
`block_identity(start, end)` (a LoRA adapter, the content of an image whose placeholder
tokens fall in the block, a cache salt). Equal token ids under different identities are
different KV, so they never share a block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

NO_PARENT = -1

#: (start, end) token range of a block -> what its KV depends on besides the token ids
BlockIdentity = Callable[[int, int], Hashable]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # free blocks, least recently used first (value unused)
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        # prefix cache: (parent_key, tokens, identity) -> key id; key id -> block id; block id -> key id
        self._key_ids: dict[tuple[int, tuple[int, ...], Hashable], int] = {}
        self._cached: dict[int, int] = {}
        self._block_key: dict[int, int] = {}
        self._key_of_id: dict[int, tuple[int, tuple[int, ...], Hashable]] = {}
        self._next_key = 0
        # counters for metrics (tokens)
        self.prefix_queries = 0
        self.prefix_hits = 0

    # ---- capacity ------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache ----------------------------------------------------------------
    def _key(
        self, parent: int, token_ids: Sequence[int], i: int, identity: BlockIdentity | None
    ) -> tuple[int, tuple[int, ...], Hashable]:
        start, end = i * self.block_size, (i + 1) * self.block_size
        return (parent, tuple(token_ids[start:end]), identity(start, end) if identity is not None else None)

    def _intern_key(self, k: tuple[int, tuple[int, ...], Hashable]) -> int:
        kid = self._key_ids.get(k)
        if kid is None:
            kid = self._next_key
            self._next_key += 1
            self._key_ids[k] = kid
            self._key_of_id[kid] = k
        return kid

    def find_cached_prefix(
        self, token_ids: Sequence[int], max_tokens: int, identity: BlockIdentity | None = None
    ) -> tuple[list[int], list[int]]:
        """Longest chain of cached full blocks covering at most `max_tokens` of `token_ids`.

        Returns (block ids, their keys). Does not take references: call `take_cached`.
        """
        blocks: list[int] = []
        keys: list[int] = []
        if not self.enable_prefix_caching:
            return blocks, keys
        parent = NO_PARENT
        for i in range(max_tokens // self.block_size):
            kid = self._key_ids.get(self._key(parent, token_ids, i, identity))
            if kid is None or kid not in self._cached:
                break
            blocks.append(self._cached[kid])
            keys.append(kid)
            parent = kid
        return blocks, keys

    def take_cached(self, block_ids: Sequence[int]) -> None:
        """Take a reference on cache-hit blocks (reviving them from the free queue)."""
        for b in block_ids:
            if self.ref_counts[b] == 0:
                del self.free_queue[b]
            self.ref_counts[b] += 1

    def num_evictable_hits(self, block_ids: Sequence[int]) -> int:
        """How many of these hit blocks currently sit in the free queue."""
        return sum(1 for b in block_ids if self.ref_counts[b] == 0)

    def register_full_blocks(
        self,
        token_ids: Sequence[int],
        block_ids: Sequence[int],
        block_keys: list[int],
        num_computed_tokens: int,
        identity: BlockIdentity | None = None,
    ) -> None:
        """Index the request's newly completed full blocks (their KV is now computed).

        `block_keys` is the request's list of keys so far; it is extended in place.
        """
        if not self.enable_prefix_caching:
            return
        parent = block_keys[-1] if block_keys else NO_PARENT
        for i in range(len(block_keys), num_computed_tokens // self.block_size):
            kid = self._intern_key(self._key(parent, token_ids, i, identity))
            block_keys.append(kid)
            b = block_ids[i]
            if kid not in self._cached and b not in self._block_key:
                self._cached[kid] = b
                self._block_key[b] = kid
            parent = kid

    # ---- allocation ------------------------------------------------------------------
    def _pop_free(self) -> int:
        b, _ = self.free_queue.popitem(last=False)
        kid = self._block_key.pop(b, None)
        if kid is not None:  # evict: the block is about to hold other tokens
            del self._cached[kid]
            # forget the key too, so the index stays as small as the cache
            del self._key_ids[self._key_of_id.pop(kid)]
        self.ref_counts[b] = 1
        return b

    def allocate(self, block_ids: list[int], num_tokens: int) -> bool:
        """Grow `block_ids` in place to hold `num_tokens` slots. False (and no change)
        if there are not enough free blocks."""
        need = self.blocks_needed(num_tokens) - len(block_ids)
        if need <= 0:
            return True
        if need > len(self.free_queue):
            return False
        for _ in range(need):
            block_ids.append(self._pop_free())
        return True

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference on each block; unreferenced blocks become free, tail first.

        A block that holds a prefix-cache entry goes to the back of the free queue (evicted
        last, least recently used first); one that holds none (a partial block, or any block
        with prefix caching off) goes to the front, to be reused first: its KV is worth
        nothing, and reusing it keeps the cache's touched memory small. On the CPU, whose KV
        cache is committed page by page as blocks are first written, allocating never-used
        blocks while used ones sit idle grows resident memory toward the whole cache's size.
        """
        for b in reversed(block_ids):
            rc = self.ref_counts[b]
            assert rc > 0, f"block {b} freed twice"
            self.ref_counts[b] = rc - 1
            if rc == 1:
                self.free_queue[b] = None
                if b not in self._block_key:
                    self.free_queue.move_to_end(b, last=False)

    def check_invariants(self) -> None:
        for b in range(self.num_blocks):
            in_free = b in self.free_queue
            assert (self.ref_counts[b] == 0) == in_free, f"block {b}: ref {self.ref_counts[b]}, free={in_free}"
        for kid, b in self._cached.items():
            assert self._block_key[b] == kid
        assert len(self._cached) == len(self._block_key)
