"""Speculative decoding (octavo.spec_decode): proposals, exact verification, KV roll-back.

The references: greedy decoding without speculation (token for token, logprobs too), the target
distribution itself for sampled verification (chi-square at p = 1e-4, with a check that a rule
off by a little fails it), and the block manager's invariants.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from tiny_models import make_tiny_model

from octavo import LLM, SamplingParams
from octavo.block_manager import BlockManager
from octavo.request import Request, RequestStatus
from octavo.sampling import Sampler
from octavo.scheduler import Scheduler
from octavo.spec_decode import SpeculativeConfig, rejection
from octavo.spec_decode.ngram import NgramProposer
from octavo.spec_decode.rejection import rejection_sample

# ---- proposer and config (no model) ------------------------------------------------------


def test_ngram_proposes_what_followed_the_longest_latest_match():
    p = NgramProposer(3, prompt_lookup_max=3, prompt_lookup_min=1)
    # suffix [1, 2, 3] occurred at 0..2: propose what followed it
    assert p.propose([1, 2, 3, 4, 5, 6, 1, 2, 3]) == [4, 5, 6]
    # the longest match wins over a later shorter one: [7, 8] at 0 beats [8] at 4
    assert p.propose([7, 8, 20, 21, 8, 30, 7, 8]) == [20, 21, 8]
    # among equally long matches the latest: [5] at 2 (followed by 9) over [5] at 0
    assert p.propose([5, 6, 5, 9, 5]) == [9, 5]
    # fewer tokens than k when the match is near the end, none without a match or below min
    assert p.propose([1, 2, 1]) == [2, 1]
    assert p.propose([1, 2, 3]) == []
    assert NgramProposer(3, 3, 2).propose([4, 1, 9, 1]) == []


def test_speculative_config_parses_vllm_keys_and_names_mistakes():
    c = SpeculativeConfig.parse('{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}')
    assert (c.method, c.num_speculative_tokens, c.prompt_lookup_max, c.prompt_lookup_min) == ("ngram", 4, 3, 1)
    assert SpeculativeConfig.parse({"num_speculative_tokens": 2}).method == "ngram"
    assert SpeculativeConfig.parse(None) is None
    for bad, words in [
        ({"method": "medusa", "num_speculative_tokens": 2}, "method"),
        ({"method": "ngram"}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 3}, "min"),
        ({"method": "ngram", "num_speculative_tokens": 2, "typo": 1}, "unknown keys"),
        ({"method": "draft_model", "num_speculative_tokens": 2}, "model"),
        ("{not json", "JSON"),
    ]:
        with pytest.raises(ValueError, match=words):
            SpeculativeConfig.parse(bad)


# ---- scheduler: drafts scheduled, rejected KV rolled back, never indexed --------------------


def _decoding(bm: BlockManager, prompt: list[int], max_tokens: int = 10, eos: tuple[int, ...] = ()):
    s = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=32, max_model_len=256)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=not eos)
    params._eos_token_ids = eos
    r = Request("a", prompt, params)
    s.add_request(r)
    out = s.schedule()
    s.update(out, {"a": 50})
    return s, r


def test_rejected_drafts_are_rolled_back_and_never_enter_the_prefix_cache():
    bm = BlockManager(16, 4)
    prompt = list(range(3, 11))
    s, r = _decoding(bm, prompt)
    r.spec_token_ids = [60, 61, 62, 63, 64]
    out = s.schedule()
    (x,) = out.scheduled
    assert x.spec_token_ids == (60, 61, 62, 63, 64) and x.token_ids == [50, 60, 61, 62, 63, 64] and x.sample
    assert out.num_batched_tokens == 6 and r.num_computed_tokens == 14 and len(r.block_ids) == 4
    s.update(out, {"a": 70}, {"a": 1})  # 60 stands, 61.. are rejected, 70 drawn after 60
    assert r.output_token_ids == [50, 60, 70]
    assert r.num_computed_tokens == 10 and len(r.block_ids) == 3  # the 4th block held only rejected KV
    bm.check_invariants()
    assert bm.num_used_blocks == 3
    # the block [50, 60, 61, 62] was computed but never indexed; [50, 60, 70, x] will be
    hit, _ = bm.find_cached_prefix(prompt + [50, 60, 61, 62, 0], 12)
    assert len(hit) == 2
    for _ in range(3):
        out = s.schedule()
        s.update(out, {"a": 80})
    hit, _ = bm.find_cached_prefix(r.token_ids + [0], 12)
    assert len(hit) == 3
    while r.status == RequestStatus.RUNNING:
        out = s.schedule()
        s.update(out, {"a": 80})
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks


def test_accepted_drafts_stop_at_eos_and_max_tokens():
    bm = BlockManager(16, 4)
    s, r = _decoding(bm, list(range(3, 11)), eos=(2,))
    r.spec_token_ids = [60, 2, 61]
    out = s.schedule()
    s.update(out, {"a": 70}, {"a": 3})
    assert r.output_token_ids == [50, 60, 2] and r.status == RequestStatus.FINISHED_STOPPED
    assert bm.num_free_blocks == bm.num_blocks
    # max_tokens 4 with 1 out: at most 2 drafts, so that the drawn token is the 4th
    s, r = _decoding(BlockManager(16, 4), list(range(3, 11)), max_tokens=4)
    r.spec_token_ids = [60, 61, 62, 63]
    out = s.schedule()
    assert out.scheduled[0].spec_token_ids == (60, 61)
    s.update(out, {"a": 70}, {"a": 2})
    assert r.output_token_ids == [50, 60, 61, 70] and r.status == RequestStatus.FINISHED_LENGTH


def test_drafts_never_preempt_and_fit_the_budget():
    bm = BlockManager(3, 4)  # 12 slots: the 9 tokens plus 3 drafts at most
    s, r = _decoding(bm, list(range(3, 11)))
    r.spec_token_ids = [60, 61, 62, 63, 64]
    out = s.schedule()
    assert out.scheduled[0].spec_token_ids == () and not out.preempted_ids  # no free block for them
    s.update(out, {"a": 70})
    s.max_num_batched_tokens = 3
    r.spec_token_ids = [60, 61, 62, 63]
    out = s.schedule()
    assert out.scheduled[0].spec_token_ids == (60, 61) and out.num_batched_tokens == 3


# ---- the rejection sampler against the target distribution ---------------------------------

#: the chance that a correct sampler fails a chi-square test here
ALPHA = 1e-4


def _chi2_critical(df: int) -> float:
    """The chi-square quantile at 1 - ALPHA (Wilson-Hilferty; z(1 - 1e-4) = 3.719)."""
    z = 3.719
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: Counter, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic of the counts against probs, and its degrees of freedom."""
    n = sum(counts.values())
    assert all(probs[t] > 0 for t in counts), "a token of probability 0 was drawn"
    support = [t for t in range(len(probs)) if probs[t] > 0]
    stat = sum((counts.get(t, 0) - n * float(probs[t])) ** 2 / (n * float(probs[t])) for t in support)
    return stat, len(support) - 1


def _verify_many(p_rows: torch.Tensor, q_rows: torch.Tensor | None, n: int, seed: int):
    """n independent verifications of 2 proposals: drafts drawn from q (one-hot at a fixed
    token when q_rows is None), target rows p_rows [3, V] whatever the prefix. Returns the
    verdicts and the drafts."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    if q_rows is None:
        drafts = [[1, 2]] * n
        qs = None
    else:
        drafts = torch.multinomial(q_rows, n, replacement=True, generator=g).T.tolist()
        qs = [q_rows] * n
    probs = p_rows.repeat(n, 1)
    verdicts = rejection_sample(
        probs,
        [3 * i for i in range(n)],
        drafts,
        [rng.random] * n,
        lambda w, u: Sampler(torch.device("cpu")).draw(w.log(), None, u),
        qs,
    )
    return verdicts, drafts


P_ROWS = torch.tensor(
    [
        [0.30, 0.25, 0.20, 0.10, 0.10, 0.05],
        [0.05, 0.10, 0.40, 0.25, 0.00, 0.20],
        [0.10, 0.10, 0.10, 0.20, 0.20, 0.30],
    ]
)
Q_ROWS = torch.tensor(
    [
        [0.10, 0.40, 0.10, 0.10, 0.20, 0.10],
        [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
    ]
)


def _emitted(verdicts, drafts, position: int) -> Counter:
    """Counts of the token emitted at `position` (0 or 1) over the verifications that reach it."""
    c: Counter = Counter()
    for v, d in zip(verdicts, drafts):
        tokens = d[: v.num_accepted] + [v.token]
        if len(tokens) > position:
            c[tokens[position]] += 1
    return c


@pytest.mark.parametrize("q", [None, Q_ROWS], ids=["one-hot proposals", "draft distribution"])
def test_rejection_sampling_emits_the_target_distribution(q):
    verdicts, drafts = _verify_many(P_ROWS, q, 20000, seed=1)
    for pos in (0, 1):  # the second token: p's second row, the prefix being irrelevant here
        counts = _emitted(verdicts, drafts, pos)
        stat, df = _chi2(counts, P_ROWS[pos])
        assert stat < _chi2_critical(df), f"position {pos}: chi2 {stat:.1f} over {sum(counts.values())} draws"
    if q is None:  # draft 1 is accepted with probability p(1) = 0.25
        rate = sum(v.num_accepted > 0 for v in verdicts) / len(verdicts)
        assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(verdicts))


@pytest.mark.parametrize("q", [None, Q_ROWS], ids=["one-hot proposals", "draft distribution"])
def test_a_slightly_wrong_acceptance_rule_fails_the_test(q, monkeypatch):
    """The same check has the power to see an acceptance probability 10% too high."""
    monkeypatch.setattr(rejection, "_accepts", lambda u, p, qq: u * qq < p * 1.1)
    verdicts, drafts = _verify_many(P_ROWS, q, 20000, seed=1)
    stat, df = _chi2(_emitted(verdicts, drafts, 0), P_ROWS[0])
    assert stat > _chi2_critical(df)


def test_distribution_is_the_one_the_sampler_draws_from():
    """Verification reads p from Sampler.distribution: it must be exactly what `launch` draws
    from, under temperature, top-k, top-p, min-p, penalties and logit bias."""
    torch.manual_seed(0)
    s = Sampler(torch.device("cpu"))
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 3.0]])
    history = ([7, 7, 1, 3], 2)  # output so far: 1 and 3 (penalized), prompt 7 7 (repetition)
    cases = [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=0.9, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.1),
        SamplingParams(temperature=0.8, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.4),
        SamplingParams(temperature=1.0, logit_bias={4: 2.0}),
    ]
    n = 8000
    for params in cases:
        probs = s.distribution(logits, [params], [history])[0]
        assert torch.isclose(probs.sum(), torch.tensor(1.0))
        rows = logits.repeat(n, 1)
        drawn = s(rows, [f"r{i}" for i in range(n)], [params] * n, [history] * n).token_ids
        stat, df = _chi2(Counter(drawn), probs)
        assert stat < _chi2_critical(df), f"{params}: chi2 {stat:.1f}"
    greedy = s.distribution(logits, [SamplingParams(temperature=0, repetition_penalty=3.0)], [history])[0]
    assert greedy.tolist() == [1.0, 0, 0, 0, 0, 0, 0, 0]  # 7 is penalized below 0


# ---- end to end: greedy identical, logprobs identical, blocks accounted for ---------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("spec") / "llama"))


SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}


def _llm(path, spec: bool, **kw):
    kw = dict(device="cpu", dtype="float32", block_size=8, **kw)
    return LLM(model=path, speculative_config=SPEC if spec else None, **kw)


def _prompts(n: int, seed: int) -> list[list[int]]:
    """Prompts that repeat themselves, so that lookup proposes; a few tokens only, so that the
    random model's greedy output (restricted to them) repeats too and proposals stand."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        unit = [rng.randrange(10, 16) for _ in range(5 + i % 4)]
        out.append(unit * (3 + i % 3) + unit[:2])
    return out


def _generate(llm, prompts, **params):
    p = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, **params)
    return llm.generate([{"prompt_token_ids": x} for x in prompts], p, use_tqdm=False)


def _check_blocks(llm):
    bm = llm.llm_engine.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks, "blocks leaked"


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        # chunked prefill beside speculative decodes, and preemption (few blocks, several requests)
        dict(max_num_batched_tokens=16, num_gpu_blocks_override=10, max_num_seqs=4),
    ],
    ids=["plain", "chunked+preempted"],
)
def test_greedy_output_and_logprobs_identical_with_ngram(tiny_llama, kw):
    prompts = _prompts(4, seed=3)
    extra = dict(allowed_token_ids=list(range(10, 16)), logprobs=2)
    want = _generate(_llm(tiny_llama, False, **kw), prompts, **extra)
    llm = _llm(tiny_llama, True, **kw)
    for _ in range(1 if kw else 2):  # twice: the second round starts from prefix-cache hits
        got = _generate(llm, prompts, **extra)
        for w, g in zip(want, got):
            assert g.outputs[0].token_ids == w.outputs[0].token_ids
            for lw, lg in zip(w.outputs[0].logprobs, g.outputs[0].logprobs):
                assert list(lw) == list(lg)
                assert all(abs(lw[t].logprob - lg[t].logprob) < 1e-4 for t in lw)
                # a rank in the thousands may move by a float32 near-tie among the vocabulary
                assert all(abs(lw[t].rank - lg[t].rank) <= lw[t].rank // 1000 for t in lw)
        _check_blocks(llm)
    stats = llm.llm_engine.get_stats()
    spec = stats.spec_decode
    assert spec.num_accepted_tokens > 0 and spec.num_draft_tokens > spec.num_accepted_tokens
    if kw:
        assert stats.num_preemptions_total > 0
    else:
        assert stats.prefix_cache_hits > 0


def test_penalties_and_min_tokens_see_the_proposed_tokens(tiny_llama):
    """Row j of a verification counts the proposals before it in its penalties and min_tokens."""
    prompts = _prompts(2, seed=5)
    extra = dict(allowed_token_ids=list(range(10, 16)) + [2], repetition_penalty=1.2, presence_penalty=0.4)
    extra.update(min_tokens=10, frequency_penalty=0.3)
    p = SamplingParams(temperature=0, max_tokens=16, **extra)
    inputs = [{"prompt_token_ids": x} for x in prompts]
    want = _llm(tiny_llama, False).generate(inputs, p, use_tqdm=False)
    llm = _llm(tiny_llama, True)
    got = llm.generate(inputs, p, use_tqdm=False)
    assert [g.outputs[0].token_ids for g in got] == [w.outputs[0].token_ids for w in want]
    assert llm.llm_engine.get_stats().spec_decode.num_drafts > 0
    _check_blocks(llm)


def test_aborted_and_sampled_requests_return_their_blocks(tiny_llama):
    llm = _llm(tiny_llama, True, num_gpu_blocks_override=24)
    engine = llm.llm_engine
    prompts = _prompts(4, seed=7)
    p = SamplingParams(temperature=0.8, seed=11, max_tokens=20, allowed_token_ids=list(range(10, 16)))
    for i, x in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": x}, p)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        if steps == 6:
            engine.abort_request(["0", "2"])
    _check_blocks(llm)
    assert engine.get_stats().spec_decode.num_accepted_tokens > 0
    # a seeded sampled request gives the same tokens run after run
    again = [llm.generate([{"prompt_token_ids": prompts[1]}], p, use_tqdm=False)[0].outputs[0].token_ids for _ in "ab"]
    assert again[0] == again[1] and len(again[0]) == 20


# ---- draft model -----------------------------------------------------------------------------


@pytest.mark.parametrize("draft", ["self", "qwen2"])
def test_greedy_output_identical_with_a_draft_model(tiny_llama, tmp_path, draft):
    """The target as its own draft (every proposal stands) and another architecture on the same
    tokenizer (most are rejected); with preemption and prefix hits."""
    path = tiny_llama if draft == "self" else make_tiny_model(draft, str(tmp_path / draft))
    rng = random.Random(9)
    prompts = [[rng.randrange(3, 4000) for _ in range(12 + 5 * i)] for i in range(4)]
    prompts.append(prompts[0] + prompts[1])  # a prefix-cache hit on the target's side
    kw = dict(num_gpu_blocks_override=8, max_num_seqs=3)
    want = _generate(_llm(tiny_llama, False, **kw), prompts)
    config = {"method": "draft_model", "model": path, "num_speculative_tokens": 3}
    llm = LLM(model=tiny_llama, device="cpu", dtype="float32", block_size=8, speculative_config=config, **kw)
    got = _generate(llm, prompts)
    assert [g.outputs[0].token_ids for g in got] == [w.outputs[0].token_ids for w in want]
    _check_blocks(llm)
    draft_bm = llm.llm_engine.speculator.draft.bm
    draft_bm.check_invariants()
    assert draft_bm.num_free_blocks == draft_bm.num_blocks  # the draft's blocks came back too
    # again alone: the prompt's blocks are still cached from the round before
    assert _generate(llm, prompts[-1:])[0].outputs[0].token_ids == want[-1].outputs[0].token_ids
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions_total > 0 and stats.prefix_cache_hits > 0
    if draft == "self":
        assert stats.spec_decode.acceptance_rate == 1.0
    else:
        assert stats.spec_decode.num_drafts > 0


def test_metrics_under_vllms_names(tiny_llama):
    """/metrics with --metrics-prefix vllm: vLLM's spec_decode counters, equal to the engine's."""
    import asyncio

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from octavo.async_engine import AsyncLLMEngine
    from octavo.engine import LLMEngine
    from octavo.engine_args import EngineArgs
    from octavo.entrypoints.openai.api_server import ServerSettings, build_app

    args = EngineArgs(model=tiny_llama, device="cpu", dtype="float32", max_model_len=128, speculative_config=SPEC)
    args.kv_cache_memory = "16MiB"
    engine = AsyncLLMEngine(LLMEngine(args))
    app = build_app(engine, ServerSettings(served_model_names=["tiny"], metrics_prefix="vllm"))
    body = {"model": "tiny", "prompt": _prompts(1, seed=3)[0], "max_tokens": 16, "ignore_eos": True}
    body["allowed_token_ids"] = list(range(10, 16))

    async def main() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as client:
            try:
                r = await client.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                return (await client.get("/metrics")).text
            finally:
                await engine.shutdown()

    samples = {}
    for family in text_string_to_metric_families(asyncio.run(main())):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    spec = engine.engine.get_stats().spec_decode
    assert spec.num_accepted_tokens > 0
    for name, value in [
        ("vllm:spec_decode_num_drafts_total", spec.num_drafts),
        ("vllm:spec_decode_num_draft_tokens_total", spec.num_draft_tokens),
        ("vllm:spec_decode_num_accepted_tokens_total", spec.num_accepted_tokens),
    ]:
        (s,) = samples[name]
        assert s.labels == {"model_name": "tiny", "engine": "0"} and s.value == value
    per_pos = {s.labels["position"]: s.value for s in samples["vllm:spec_decode_num_accepted_tokens_per_pos_total"]}
    assert per_pos == {str(j): n for j, n in enumerate(spec.num_accepted_tokens_per_pos)}


def assert_second_token_follows(model: str, prompt: list[int], allowed: list[int], temp: float, outs) -> None:
    """The second output token of `outs` is distributed as the target's (transformers on the same
    weights): p(t2) = sum over t1 of p(t1) p(t2 | t1), restricted to `allowed` at `temp`
    (chi-square at p = 1e-4)."""
    from tiny_models import _load_hf

    hf = _load_hf(model, None)
    idx = torch.tensor(allowed)

    def restricted(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
        return (logits[idx] / temp).softmax(-1)

    p1 = restricted(prompt)
    p2 = sum(p1[i] * restricted(prompt + [t]) for i, t in enumerate(allowed))
    counts = Counter(allowed.index(o.outputs[0].token_ids[1]) for o in outs)
    stat, df = _chi2(counts, p2.float())
    assert stat < _chi2_critical(df), f"chi2 {stat:.1f}: {sorted(counts.items())} against {p2.tolist()}"


def test_sampled_output_with_a_draft_model_follows_the_target(tiny_llama, tmp_path):
    """Proposals drawn from a different draft's q (so many are rejected and replaced from the
    residual): the second token's distribution over 1500 seeded requests is the target's, computed
    by transformers on the same weights (chi-square at p = 1e-4). Seeded, so that a draft drawing
    with the target's own uniforms (the same seed, the same stream) shows as a biased law."""

    draft = make_tiny_model("qwen2", str(tmp_path / "qwen2"))
    allowed = list(range(10, 16))
    prompt = [3, 40, 41, 42, 43, 10, 11, 12, 13, 14]
    temp = 1.3
    config = {"method": "draft_model", "model": draft, "num_speculative_tokens": 2}
    llm = LLM(model=tiny_llama, device="cpu", dtype="float32", speculative_config=config)
    n = 1500
    params = [SamplingParams(temperature=temp, max_tokens=3, allowed_token_ids=allowed, seed=i) for i in range(n)]
    outs = llm.generate([{"prompt_token_ids": prompt}] * n, params, use_tqdm=False)
    stats = llm.llm_engine.get_stats().spec_decode
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # accepted and rejected both
    _check_blocks(llm)
    bm = llm.llm_engine.speculator.draft.bm
    assert bm.num_free_blocks == bm.num_blocks

    # the target's p(t2) = sum over t1 of p(t1) p(t2 | t1), restricted to `allowed` at `temp`
    assert_second_token_follows(tiny_llama, prompt, allowed, temp, outs)


def test_speculative_config_flag(tiny_llama):
    """`--speculative-config JSON` on the command line (octavo serve / generate / bench) reaches
    the engine's config; a bad value is refused naming the key."""
    import argparse

    from octavo.engine_args import EngineArgs

    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    flags = ["--model", tiny_llama, "--device", "cpu", "--speculative-config", '{"num_speculative_tokens": 2}']
    config, _, _ = EngineArgs.from_cli_args(parser.parse_args(flags)).create_config()
    assert config.speculative == SpeculativeConfig("ngram", 2)
    with pytest.raises(ValueError, match="prompt_lookup_max"):
        bad = flags[:-1] + ['{"num_speculative_tokens": 2, "prompt_lookup_max": 0}']
        EngineArgs.from_cli_args(parser.parse_args(bad)).create_config()
