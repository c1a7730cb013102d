"""Static-shape mode end to end on the CPU, through the kit's "static-reference" platform
(torch.compile with static shapes standing in for XLA / Neuron): its attention against the
reference, greedy tokens against transformers, the recompile counter, padding that never
writes KV, and the scheduler's no-chunked-prefill / no-mixed-steps knobs."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_prompts, smollm2_tokenizer

from octavo import LLM, SamplingParams
from octavo.block_manager import BlockManager
from octavo.platform import AttentionSpec, ForwardBatch, StaticShapes, check_platform, discover_platforms
from octavo.request import Request
from octavo.scheduler import ScheduledRequest, Scheduler, SchedulerOutput
from octavo_plugin_kit import reference
from octavo_plugin_kit.inputs import context_slot_mapping, make_forward_batch, paged_batch, query_lens_of
from octavo_plugin_kit.static_platform import StaticAttention, StaticReferencePlatform

NEW_TOKENS = 12
# 3 to 200 tokens: every token bucket (16, 64, 256); 14 + 12 and 60 + 12 cross block boundaries
LENGTHS = [3, 14, 40, 200, 60, 9]
# within a 64-token context (6 programs to compile instead of 12); 50 + 12 crosses Mistral's window of 48
SHORT_LENGTHS = [3, 14, 40, 50, 9]


def _greedy(n: int = NEW_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def _generate(llm, prompts, params=None) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params or _greedy(), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' ops are too small to split: a second thread only waits for the first,
    and on a busy machine those waits cost ten times the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engines(tiny_model_dirs):
    """One engine per architecture and context, built (and its buckets compiled) on first use."""
    built: dict[tuple[str, int], LLM] = {}

    def get(arch: str, max_model_len: int) -> LLM:
        key = (arch, max_model_len)
        if key not in built:
            built[key] = LLM(
                model=tiny_model_dirs[arch],
                device="static-reference",
                dtype="float32",
                kv_cache_memory="16MiB",
                max_model_len=max_model_len,
            )
        return built[key]

    return get


@pytest.fixture(scope="module")
def small_llm(engines):
    """Contexts of at most 64 tokens: 6 shapes to compile (tokens 16/64/256 x requests 1/4 x 4 blocks)."""
    return engines("llama", 64)


# ---- the platform ------------------------------------------------------------------------


def test_platform_keeps_the_contract_and_is_discovered_last():
    assert check_platform(StaticReferencePlatform) == []
    infos = {i.name: i for i in discover_platforms()}
    mine = infos["static-reference"]
    assert mine.usable and mine.platform_cls is StaticReferencePlatform, mine
    # the lowest usable score: device="auto" takes any other usable platform first
    assert mine.score == 1


# ---- attention against the reference ----------------------------------------------------


def _padded(batch: ForwardBatch, tokens: int, reqs: int, width: int, block_size: int) -> ForwardBatch:
    """`batch` padded to a bucket as core's runner pads a static-shape step (`paged_batch`),
    its block tables zero-filled to `width`."""
    tables = [row + [0] * (width - len(row)) for row in batch.block_tables.tolist()]
    pad_tokens, pad_reqs = tokens - len(batch.slot_mapping), reqs - batch.num_reqs
    return paged_batch(batch.seq_lens_cpu, query_lens_of(batch), tables, block_size, "cpu", pad_tokens, pad_reqs)


ATTENTION_CASES = {
    # (q_lens, seq_lens), padded to (tokens, requests, block width), query heads per KV head
    "decodes": (((1, 1, 1), (9, 64, 33)), (16, 4, 8), 4),
    "prefills": (((17, 5, 30), (17, 5, 30)), (64, 4, 4), 1),
    "mixed-with-cached-context": (((1, 20, 7), (1, 52, 100)), (32, 8, 8), 4),
    "unpadded": (((3, 13), (40, 13)), (16, 2, 3), 2),
}


@pytest.mark.parametrize(("causal", "window"), [(True, None), (True, 7), (False, None)])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_matches_reference_and_padding_is_inert(case, causal, window):
    (q_lens, seq_lens), (tokens, reqs, width), gqa = ATTENTION_CASES[case]
    block_size, num_blocks, kv_heads, head_dim = 16, 24, 2, 32
    g = torch.Generator().manual_seed(len(case))
    layer = AttentionSpec(kv_heads * gqa, kv_heads, head_dim, head_dim**-0.5, window, causal)
    backend = StaticAttention(StaticReferencePlatform.device_cls())
    cache = backend.allocate(layer, backend.kv_cache_spec(layer, torch.float32, block_size), num_blocks)
    batch = make_forward_batch(seq_lens, q_lens, block_size, num_blocks, generator=g)
    # the context of earlier steps is real data; every other slot (block 0 that padded tables
    # point at, the spare block, slots past a context) is NaN, which a read would spread
    cache.fill_(float("nan"))
    context = context_slot_mapping(batch, block_size)
    flat = cache.view(2, -1, kv_heads, head_dim)
    flat[:, context] = torch.randn(2, len(context), kv_heads, head_dim, generator=g)
    want_cache = cache.clone()

    t = len(batch.slot_mapping)
    q = torch.randn(tokens, layer.num_heads, head_dim, generator=g)
    k, v = torch.randn(2, tokens, kv_heads, head_dim, generator=g)
    reference.write_kv(k[:t], v[:t], want_cache, batch.slot_mapping)
    want = reference.attend(q[:t], want_cache, batch, layer.scale, window, causal)

    def step(q, k, v, cache, batch):
        meta = backend.build_metadata(batch)
        backend.write_kv(k, v, cache, meta)
        return backend.attend(q, cache, meta, layer)

    if case == "mixed-with-cached-context":
        # no host sync, no data-dependent shape: it traces whole, every shape static (once
        # per mask kind: tracing costs ~0.5 s; the engine tests trace the causal kinds too)
        step = torch.compile(step, fullgraph=True, dynamic=False, backend="aot_eager")
    got = step(q, k, v, cache, _padded(batch, tokens, reqs, width, block_size))
    torch.testing.assert_close(got[:t], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[t:], torch.zeros_like(got[t:])), "padding tokens must attend to nothing"
    # padding stored nothing outside the spare block: the cache is the reference's, NaNs included
    torch.testing.assert_close(cache[:, :num_blocks], want_cache[:, :num_blocks], equal_nan=True, rtol=0, atol=0)


# ---- end to end -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "max_model_len", "lengths"),
    [
        ("llama", 256, LENGTHS),
        ("qwen3", 64, SHORT_LENGTHS),
        ("qwen2", 64, SHORT_LENGTHS),
        ("mistral", 64, SHORT_LENGTHS),
    ],
)
def test_greedy_matches_transformers_without_recompiles(
    arch, max_model_len, lengths, engines, tiny_model_dirs, hf_reference
):
    llm = engines(arch, max_model_len)
    prompts = random_prompts(len(lengths), lengths, vocab=len(smollm2_tokenizer()), seed=3)
    ours = _generate(llm, prompts)
    ref = hf_reference(tiny_model_dirs[arch], prompts, NEW_TOKENS)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, f"{arch} prompt {i} ({len(prompts[i])} tokens): octavo {a} != transformers {b}"
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_mixed_workload_compiles_nothing_after_warm_up(engines):
    """Every bucket is reached (tokens 16/64/256, requests 1 and 4, block widths 4 and 16),
    through n > 1, concurrent requests and decodes that cross block boundaries."""
    llm = engines("llama", 256)
    runner = llm.llm_engine.runner
    seen = set()
    prepare = runner._prepare

    def spy(out, rows):
        batch, last = prepare(out, rows)
        seen.add((len(batch.slot_mapping), batch.num_reqs, batch.block_tables.shape[1]))
        return batch, last

    runner._prepare = spy
    try:
        vocab = len(smollm2_tokenizer())
        for seed, (lengths, params) in enumerate(
            [
                ([5], _greedy(3)),
                ([50], _greedy(20)),  # its decodes cross 64 tokens: the block-table bucket goes from 4 to 16
                ([15, 70, 2], _greedy(6)),
                ([120], SamplingParams(n=2, temperature=0.8, seed=1, max_tokens=6, ignore_eos=True)),
                ([230], _greedy(3)),
            ]
        ):
            _generate(llm, random_prompts(len(lengths), lengths, vocab, seed=seed), params)
    finally:
        del runner._prepare
    for dim, buckets in enumerate([(16, 64, 256), (1, 4), (4, 16)]):
        assert {shape[dim] for shape in seen} == set(buckets), seen
    assert llm.llm_engine.get_stats().num_recompiles == 0


def test_recompile_counter_counts_an_unseen_shape(small_llm):
    llm, runner = small_llm, small_llm.llm_engine.runner
    _generate(llm, [[5, 6, 7]], _greedy(2))
    assert llm.llm_engine.get_stats().num_recompiles == 0
    # a token bucket warm-up never compiled: a 20-token prompt now pads to 32
    runner.static = StaticShapes((16, 32, 64), runner.static.request_buckets, runner.static.block_buckets)
    try:
        _generate(llm, [list(range(3, 23))], _greedy(1))
        assert llm.llm_engine.get_stats().num_recompiles == 1
        _generate(llm, [list(range(5, 25))], _greedy(1))  # compiled once, then reused
        assert llm.llm_engine.get_stats().num_recompiles == 1
    finally:
        runner.static = StaticReferencePlatform.scheduling.static_shapes


def test_padding_never_writes_kv(small_llm, tiny_model_dirs, hf_reference):
    """One padded step (25 real tokens of 2 requests -> 64 tokens, 4 requests, 4 blocks wide)
    over a cache that is NaN everywhere: afterwards only the real tokens' slots (and the spare
    block) hold numbers, and the sampled tokens are transformers' (nothing read was NaN)."""
    runner = small_llm.llm_engine.runner
    num_blocks, bs = small_llm.llm_engine.block_manager.num_blocks, runner.block_size
    kept = [cache.clone() for cache in runner.kv_caches]  # the prefix cache's blocks, for later tests
    for cache in runner.kv_caches:
        cache.fill_(float("nan"))
    prompts = random_prompts(2, [5, 20], vocab=len(smollm2_tokenizer()), seed=5)
    blocks = {"a": [3], "b": [7, 2]}  # out of order, and block 0 (padded tables' entries) unused
    scheduled = [ScheduledRequest(rid, p, 0, blocks[rid], True, _greedy(1), p, len(p)) for rid, p in zip("ab", prompts)]
    out = runner.execute(SchedulerOutput(scheduled, 25), {})
    assert [out.sampled["a"], out.sampled["b"]] == [r[0] for r in hf_reference(tiny_model_dirs["llama"], prompts, 1)]
    written = torch.zeros(num_blocks, bs, dtype=torch.bool)
    for rid, p in zip("ab", prompts):
        for pos in range(len(p)):
            written[blocks[rid][pos // bs], pos % bs] = True
    for cache in runner.kv_caches:
        nan = cache[:, :num_blocks].isnan().all(dim=-1).all(dim=-1)  # [2, blocks, slots]
        assert torch.equal(nan, ~written.expand_as(nan)), "a padding token (or a real one) wrote a wrong slot"
        assert not cache[:, num_blocks].isnan().all(), "padding tokens should have written the spare block"
    for cache, before in zip(runner.kv_caches, kept):
        cache.copy_(before)


def test_prompt_past_the_budget_is_refused(small_llm, tiny_model_dirs):
    # a step's budget holds any context (start-up checks it), so the context limit refuses first
    assert small_llm.llm_engine.config.scheduler.max_num_batched_tokens >= 64
    with pytest.raises(ValueError, match="max_model_len.* is 64 tokens"):
        small_llm.llm_engine.add_request("long", {"prompt_token_ids": list(range(3, 83))}, _greedy(1))
    # a context longer than the largest step: refused at start-up, with the fix that works here
    with pytest.raises(ValueError, match=r"runs each prompt in one step.*lower --max-model-len \(the device compiles"):
        LLM(model=tiny_model_dirs["llama"], device="static-reference", max_model_len=512)


# ---- the scheduler's knobs (no torch) ---------------------------------------------------


def _scheduler(budget=32, max_num_seqs=8, chunked_prefill=False, mixed_steps=False) -> Scheduler:
    bm = BlockManager(64, 4, True)
    return Scheduler(bm, max_num_seqs, budget, 256, chunked_prefill=chunked_prefill, mixed_steps=mixed_steps)


def _request(rid: str, n_prompt: int, max_tokens: int = 4, base: int = 0) -> Request:
    return Request(
        rid, [base + i % 50 + 3 for i in range(n_prompt)], SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    )


def _step(s: Scheduler) -> list[tuple[str, str, int]]:
    """One step: (request, "prefill" | "decode", tokens) per scheduled request."""
    out = s.schedule()
    s.update(out, {x.request_id: 7 for x in out.scheduled if x.sample})
    return [
        (x.request_id, "prefill" if x.start_pos < x.num_prompt_tokens else "decode", len(x.token_ids))
        for x in out.scheduled
    ]


@pytest.mark.parametrize("chunked", [True, False])
def test_without_chunked_prefill_a_prompt_runs_whole(chunked):
    s = _scheduler(budget=32, chunked_prefill=chunked, mixed_steps=True)
    s.add_request(_request("a", 30))
    s.add_request(_request("b", 10, base=10))
    first = _step(s)
    if chunked:  # b takes what is left of the budget
        assert first == [("a", "prefill", 30), ("b", "prefill", 2)]
    else:  # b waits for a step with room for all of it
        assert first == [("a", "prefill", 30)]
        assert _step(s) == [("a", "decode", 1), ("b", "prefill", 10)]


def test_without_mixed_steps_prefills_and_decodes_alternate():
    s = _scheduler(budget=12)
    s.add_request(_request("a", 8, max_tokens=10))
    assert _step(s) == [("a", "prefill", 8)]
    for i, rid in enumerate("bcd"):
        s.add_request(_request(rid, 8, max_tokens=10, base=10 * (i + 1)))
    steps = [_step(s) for _ in range(8)]
    kinds = [{kind for _, kind, _ in step} for step in steps]
    assert all(len(k) == 1 for k in kinds), f"a step mixed prefills and decodes: {steps}"
    # one prompt fits the budget per step; each prefill step is followed by the decodes
    assert [k.pop() for k in kinds] == ["decode", "prefill"] * 3 + ["decode", "decode"], steps
    assert steps[-1] == [(r, "decode", 1) for r in "abcd"]


@pytest.mark.parametrize(
    ("shapes", "largest"),
    [
        (StaticShapes((16, 64, 256), (1, 4), (4, 16)), (256, 4, 16)),
        (StaticShapes((16, 64, 256), (1, 4), (4, 16)), (64, 4, 4)),  # a 64-token context
        (StaticShapes((3, 8), (2, 4), (1, 2)), (8, 4, 2)),  # 3 requests of 1 token: request bucket 4 > token bucket 3
        (StaticShapes((4, 8, 12), (1, 3, 6), (2,)), (10, 5, 1)),  # limits between buckets
    ],
)
def test_warm_up_shapes_are_exactly_the_reachable_ones(shapes, largest):
    """What warm-up compiles = the padded shape of every step the engine can schedule, by brute force."""
    most_tokens, most_reqs, widest = largest
    reachable = {
        shapes.pad(t, r, w)
        for t in range(1, most_tokens + 1)
        for r in range(1, min(t, most_reqs) + 1)
        for w in range(1, widest + 1)
    }
    assert sorted(shapes.shapes(largest)) == sorted(reachable)
