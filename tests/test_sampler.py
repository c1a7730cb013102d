"""The batched sampler against straightforward references."""

import pytest
import torch

from octavo import SamplingParams
from octavo.sampling import Sampler, _top_k_top_p


def _reference_filter(logits, k, p):
    """One row at a time, the textbook way."""
    out = torch.full_like(logits, float("-inf"))
    for i in range(logits.shape[0]):
        row = logits[i]
        order = torch.argsort(row, descending=True)
        keep = order[: k[i]] if k[i] > 0 else order
        probs = torch.softmax(row[keep], dim=0)
        mass, kept = 0.0, []
        for j, tok in enumerate(keep.tolist()):
            if mass >= p[i]:
                break
            kept.append(tok)
            mass += probs[j].item()
        out[i, kept] = row[kept]
    return out


def test_top_k_top_p_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    k = [0, 5, 1, 0, 20, 3]
    p = [1.0, 1.0, 1.0, 0.5, 0.9, 0.3]
    torch.testing.assert_close(_top_k_top_p(logits, k, p), _reference_filter(logits, k, p))


def test_sampling_frequencies_follow_the_distribution():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    s = Sampler(torch.device("cpu"))
    n = 4000
    params = [SamplingParams(temperature=1.0, top_k=3)] * n
    out = s(logits.expand(n, -1).clone(), [str(i) for i in range(n)], params, [([], 0)] * n)
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=4).float() / n
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    # 4000 draws: a standard error of about 0.008, so 0.04 is a 5-sigma band
    assert (counts - expected).abs().max() < 0.04, counts
    assert counts[3] == 0


def test_seeded_row_is_independent_of_the_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 100, generator=g)
    seeded = SamplingParams(temperature=0.8, seed=1234)
    alone = []
    s1 = Sampler(torch.device("cpu"))
    for _ in range(5):
        alone.append(s1(logits[2:3].clone(), ["r"], [seeded], [([], 0)]).token_ids[0])
    s2 = Sampler(torch.device("cpu"))
    batched = []
    others = SamplingParams(temperature=1.0)
    for _ in range(5):
        out = s2(logits.clone(), ["a", "b", "r", "c", "d"], [others, others, seeded, others, others], [([], 0)] * 5)
        batched.append(out.token_ids[2])
    assert alone == batched


def test_greedy_rows_in_a_mixed_batch_take_the_argmax():
    logits = torch.randn(3, 30)
    s = Sampler(torch.device("cpu"))
    out = s(
        logits.clone(),
        ["a", "b", "c"],
        [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=0)],
        [([], 0)] * 3,
    )
    assert out.token_ids[0] == logits[0].argmax().item() and out.token_ids[2] == logits[2].argmax().item()


@pytest.mark.parametrize("seed", [0, 7])
def test_seeded_generation_is_reproducible_end_to_end(seed, tiny_model_dirs):
    from octavo import LLM

    llm = LLM(model=tiny_model_dirs["qwen2"], device="cpu", dtype="float32", kv_cache_memory="16MiB")
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_tokens=12, ignore_eos=True)
    alone = llm.generate([{"prompt_token_ids": [5, 6, 7]}], p, use_tqdm=False)[0].outputs[0].token_ids
    mixed = (
        llm.generate(
            [{"prompt_token_ids": [9] * 20}, {"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [11, 12]}],
            [SamplingParams(temperature=1.0, max_tokens=12), p, SamplingParams(temperature=0.5, max_tokens=5)],
            use_tqdm=False,
        )[1]
        .outputs[0]
        .token_ids
    )
    assert alone == mixed


def _reference_processed(logits, p: SamplingParams, prompt, output):
    """Penalties, temperature, top-k, top-p and min-p applied the textbook way, one row."""
    row = logits.clone().double()
    for t in set(prompt + output):  # repetition: divide positive logits, multiply negative ones
        row[t] = row[t] / p.repetition_penalty if row[t] > 0 else row[t] * p.repetition_penalty
    for t in set(output):
        row[t] -= p.frequency_penalty * output.count(t) + p.presence_penalty
    probs = torch.softmax(row / p.temperature, dim=0)
    order = torch.argsort(probs, descending=True).tolist()
    keep, mass = [], 0.0
    for rank, t in enumerate(order):
        if (p.top_k and rank >= p.top_k) or mass >= p.top_p:
            break
        keep.append(t)
        mass += probs[t].item()
    kept = torch.zeros_like(probs)
    kept[keep] = probs[keep]
    kept /= kept.sum()
    kept[kept < p.min_p * kept.max()] = 0.0
    return kept / kept.sum()


def test_penalties_min_p_top_k_top_p_distribution_matches_reference():
    torch.manual_seed(3)
    v = 12
    logits = torch.randn(1, v) * 2
    prompt, output = [1, 2, 2, 5], [5, 5, 7, 1]
    p = SamplingParams(
        temperature=0.7,
        top_k=8,
        top_p=0.9,
        min_p=0.1,
        repetition_penalty=1.3,
        presence_penalty=0.4,
        frequency_penalty=0.3,
    )
    expected = _reference_processed(logits[0], p, prompt, output)
    n = 6000
    s = Sampler(torch.device("cpu"))
    out = s(logits.expand(n, -1).clone(), [str(i) for i in range(n)], [p] * n, [(prompt + output, len(prompt))] * n)
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=v).double() / n
    # tokens the reference removes must never appear; the others within 5 standard errors
    assert (freq[expected == 0] == 0).all(), (freq, expected)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-3).all(), (freq, expected)


def test_logit_bias_and_min_tokens_ban():
    logits = torch.zeros(2, 10)
    s = Sampler(torch.device("cpu"))
    p = SamplingParams(temperature=0, logit_bias={7: 50.0})
    banned = SamplingParams(temperature=0, stop_token_ids=[3])
    banned._eos_token_ids = (2,)
    logits[1, 2] = 9.0
    logits[1, 3] = 8.0
    logits[1, 4] = 1.0
    out = s(logits, ["a", "b"], [p, banned], [([], 0), ([], 0)], [False, True])
    assert out.token_ids == [7, 4]  # min_tokens pending: EOS (2) and stop token (3) are banned


@pytest.mark.parametrize("v", [7, 256, 1000, 49152])
def test_inverse_cdf_matches_a_full_scan_and_skips_zero_weights(v):
    """The two-level inverse CDF against one cumulative sum over the whole row, in float64
    (where both agree exactly), with zero-weight runs inside and across blocks and the
    extreme uniforms 0 and 1 - 2^-53."""
    from octavo.platform.ops import _inverse_cdf

    g = torch.Generator().manual_seed(v)
    rows = 64
    w = torch.rand(rows, v, generator=g, dtype=torch.float64)
    w[torch.rand(rows, v, generator=g) < 0.7] = 0.0  # scattered zeros
    w[torch.arange(rows), torch.randint(0, v, (rows,), generator=g)] = 0.5  # no row all zero
    w[1, : v // 2] = 0.0  # a long zero run, then mass
    w[2, v // 2 + 1 :] = 0.0  # mass, then zeros to the end
    w[3] = 0.0
    w[3, v - 1] = 1.0  # only the last token
    w[4] = 0.0
    w[4, 0] = 1.0  # only the first token
    u = torch.rand(rows, generator=g, dtype=torch.float64)
    u[5], u[6] = 0.0, 1.0 - 2.0**-53
    got = _inverse_cdf(w, u)
    cdf = w.cumsum(dim=-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1).clamp(max=v - 1)
    assert (w.gather(1, got.unsqueeze(1)) > 0).all(), "a zero-weight token was drawn"
    assert torch.equal(got, want)
    assert got[3] == v - 1 and got[4] == 0


def test_sampling_frequencies_over_a_large_vocabulary():
    """Top-k over a 49,152-token vocabulary whose kept tokens sit in different blocks."""
    torch.manual_seed(4)
    v, n = 49152, 3000
    logits = torch.full((1, v), -5.0)
    kept = [3, 700, 20000, 49151]
    logits[0, kept] = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1])) + 10
    s = Sampler(torch.device("cpu"))
    params = [SamplingParams(temperature=1.0, top_k=4)] * n
    out = s(logits.expand(n, -1).clone(), [str(i) for i in range(n)], params, [([], 0)] * n)
    ids = torch.tensor(out.token_ids)
    assert set(ids.tolist()) <= set(kept)
    freq = torch.tensor([(ids == t).float().mean().item() for t in kept])
    assert (freq - torch.tensor([0.4, 0.3, 0.2, 0.1])).abs().max() < 0.045, freq
