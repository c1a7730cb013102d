"""Scheduler: token budget, chunked prefill, FCFS, max_num_seqs, preemption (no torch)."""

from octavo.block_manager import BlockManager
from octavo.request import Request, RequestStatus
from octavo.sampling_params import SamplingParams
from octavo.scheduler import Scheduler


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, max_len=256, caching=True):
    bm = BlockManager(num_blocks, block_size, caching)
    return Scheduler(bm, max_num_seqs, budget, max_len)


def req(rid, n_prompt, max_tokens=4, base=0):
    p = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(rid, [base + i % 50 + 3 for i in range(n_prompt)], p)


def step(s, token=7):
    out = s.schedule()
    sampled = {x.request_id: token for x in out.scheduled if x.sample}
    s.update(out, sampled)
    return out


def test_chunked_prefill_under_budget_then_decode():
    s = make(budget=10)
    s.add_request(req("a", 25))
    sizes = []
    for _ in range(3):
        out = step(s)
        sizes.append([(x.request_id, len(x.token_ids), x.sample) for x in out.scheduled])
    assert sizes == [[("a", 10, False)], [("a", 10, False)], [("a", 5, True)]]
    out = step(s)
    assert [(x.start_pos, len(x.token_ids)) for x in out.scheduled] == [(25, 1)]


def test_decodes_and_prefill_share_a_step_fcfs():
    s = make(budget=16)
    s.add_request(req("a", 8))
    step(s)  # a prefilled, now decoding
    s.add_request(req("b", 30))
    s.add_request(req("c", 3))
    out = s.schedule()
    got = [(x.request_id, len(x.token_ids)) for x in out.scheduled]
    # a's decode first, then b takes the rest of the budget; c waits (FCFS, no overtaking)
    assert got == [("a", 1), ("b", 15)]
    assert out.num_batched_tokens == 16


def test_max_num_seqs_caps_running():
    s = make(max_num_seqs=2, budget=100)
    for r in "abc":
        s.add_request(req(r, 4))
    out = s.schedule()
    assert [x.request_id for x in out.scheduled] == ["a", "b"]
    assert [r.request_id for r in s.waiting] == ["c"]


def test_requests_finish_at_max_tokens_and_free_blocks():
    s = make()
    s.add_request(req("a", 5, max_tokens=3))
    while s.has_unfinished():
        step(s)
    assert s.bm.num_free_blocks == s.bm.num_blocks
    s.bm.check_invariants()


def test_preemption_frees_latest_request_and_resumes_it():
    # 6 blocks of 4 = 24 slots; two requests of 8 prompt + 8 output need 32 slots
    s = make(num_blocks=6, block_size=4, budget=64, caching=False)
    a, b = req("a", 8, max_tokens=8), req("b", 8, max_tokens=8, base=10)
    s.add_request(a)
    s.add_request(b)
    preempted = []
    steps = 0
    while s.has_unfinished():
        out = step(s)
        preempted += out.preempted_ids
        steps += 1
        assert steps < 100
    assert preempted and set(preempted) == {"b"}, preempted  # the later arrival is the victim
    assert a.status == b.status == RequestStatus.FINISHED_LENGTH
    assert a.num_output_tokens == b.num_output_tokens == 8
    assert b.num_preemptions >= 1
    assert s.bm.num_free_blocks == 6


def test_preempted_request_recomputes_prompt_and_outputs():
    s = make(num_blocks=5, block_size=4, budget=64, caching=False)
    a, b = req("a", 8, max_tokens=8), req("b", 8, max_tokens=8, base=10)
    s.add_request(a)
    s.add_request(b)
    while b.num_preemptions == 0:
        step(s)
    # when b is scheduled again it recomputes everything it had, outputs included
    while True:
        out = s.schedule()
        mine = [x for x in out.scheduled if x.request_id == "b"]
        if mine:
            assert mine[0].start_pos == 0 and len(mine[0].token_ids) == b.num_tokens
            break
        s.update(out, {x.request_id: 7 for x in out.scheduled if x.sample})


def test_prefix_cache_hit_skips_computed_tokens_but_not_the_last():
    s = make(block_size=4, budget=100)
    s.add_request(req("a", 12, max_tokens=1))
    while s.has_unfinished():
        step(s)
    s.add_request(req("b", 12, max_tokens=1))  # identical prompt
    out = s.schedule()
    (x,) = out.scheduled
    # 12 tokens = 3 full blocks, but the last token is recomputed: 2 blocks hit
    assert x.start_pos == 8 and len(x.token_ids) == 4
    assert s.requests["b"].num_cached_tokens == 8


def test_abort_frees_blocks_immediately():
    s = make()
    s.add_request(req("a", 20))
    step(s)
    assert s.bm.num_used_blocks > 0
    s.abort(["a"])
    assert s.bm.num_used_blocks == 0 and not s.has_unfinished()


def test_stop_token_ids_and_min_tokens():
    s = make()
    p = SamplingParams(max_tokens=10, stop_token_ids=[7], min_tokens=2)
    r = Request("a", [3, 4, 5], p)
    s.add_request(r)
    step(s)  # 1 output token, below min_tokens: keeps going
    assert not r.is_finished
    step(s)
    assert r.status == RequestStatus.FINISHED_STOPPED and r.stop_reason == 7
