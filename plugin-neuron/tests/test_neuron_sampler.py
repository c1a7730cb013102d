"""The on-device sampler against core's sampler on the same logits and uniform draws, the
placement of each kind of request, and the top-k limit's refusal."""

from __future__ import annotations

import random

import pytest
import torch

from octavo.platform import FusedOps
from octavo.sampling import Sampler
from octavo.sampling_params import SamplingParams
from octavo_neuron.sampler import TOP_K_LIMIT, Placement, SamplingInputs, placement, refusal, sample

VOCAB = 1000
ON_DEVICE = {
    "greedy": SamplingParams(temperature=0.0),
    "whole-vocabulary": SamplingParams(temperature=0.9),
    "whole-vocabulary-min-p": SamplingParams(temperature=1.3, min_p=0.05),
    "top-k": SamplingParams(temperature=0.8, top_k=20),
    "top-k-1": SamplingParams(temperature=0.8, top_k=1),
    "top-k-at-the-limit-top-p": SamplingParams(temperature=1.0, top_k=TOP_K_LIMIT, top_p=0.9),
    "top-k-top-p-min-p": SamplingParams(temperature=0.7, top_k=50, top_p=0.8, min_p=0.02),
}


def _seeded(params: SamplingParams, seed: int) -> SamplingParams:
    p = params.clone()
    p.seed = seed
    return p


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_device_sampling_draws_core_samplers_tokens(compiled):
    """Every kind the device samples, mixed in one batch with padding rows, over many draws:
    the tokens core's sampler draws from the same logits with the same seeded uniforms."""
    g = torch.Generator().manual_seed(0)
    names = list(ON_DEVICE)
    draws = 8
    rows = len(names) + 2  # two padding rows, as a request bucket has
    run = torch.compile(sample, fullgraph=True, dynamic=False, backend="aot_eager") if compiled else sample
    ops = FusedOps(None)
    for d in range(draws):
        # peaked rows (a few likely tokens, as a model gives) and flat ones
        scale = torch.tensor([4.0 if i % 2 else 1.0 for i in range(len(names))]).unsqueeze(1)
        logits = torch.randn(len(names), VOCAB, generator=g) * scale
        params = [_seeded(ON_DEVICE[n], 100 * d + i) for i, n in enumerate(names)]
        uniforms = [0.0 if p.greedy else random.Random(p.seed).random() for p in params]
        inputs = SamplingInputs.build(params, uniforms, rows, torch.device("cpu"))
        padded = torch.cat([logits, torch.randn(rows - len(names), VOCAB, generator=g)])
        got = run(padded, inputs, ops)
        want = Sampler(torch.device("cpu"))(logits, names, params, [([], 0)] * len(names)).token_ids
        assert got.shape == (rows,) and got.dtype == torch.int64
        assert got[: len(names)].tolist() == want, dict(zip(names, zip(got.tolist(), want)))
        assert torch.equal(got[len(names) :], padded[len(names) :].argmax(dim=-1)), "padding rows are greedy"


@pytest.mark.parametrize(
    ("params", "pending", "where"),
    [
        (SamplingParams(temperature=0.0), False, Placement.DEVICE),
        (SamplingParams(temperature=0.0, top_k=5000), False, Placement.DEVICE),  # greedy: top_k changes nothing
        (SamplingParams(temperature=1.0, top_k=TOP_K_LIMIT, top_p=0.5), False, Placement.DEVICE),
        (SamplingParams(temperature=1.0, min_p=0.1), False, Placement.DEVICE),
        (SamplingParams(temperature=1.0, top_p=0.9), False, Placement.EAGER),  # the nucleus may pass the top 256
        (SamplingParams(temperature=0.0, logprobs=2), False, Placement.EAGER),
        (SamplingParams(temperature=0.0, logit_bias={5: 3.0}), False, Placement.EAGER),
        (SamplingParams(temperature=1.0, top_k=10, allowed_token_ids=[3, 4]), False, Placement.EAGER),
        (SamplingParams(temperature=1.0, top_k=10, repetition_penalty=1.2), False, Placement.EAGER),
        (SamplingParams(temperature=1.0, top_k=10, min_tokens=4), True, Placement.EAGER),  # EOS banned for now
        (SamplingParams(temperature=1.0, top_k=10, min_tokens=4), False, Placement.DEVICE),
    ],
)
def test_placement(params, pending, where):
    assert refusal(params) is None
    assert placement(params, pending) is where


def test_a_top_k_past_the_limit_is_refused_with_the_limit_and_the_fix():
    assert refusal(SamplingParams(temperature=1.0, top_k=TOP_K_LIMIT)) is None
    why = refusal(SamplingParams(temperature=0.7, top_k=TOP_K_LIMIT + 1))
    assert why == (
        "top_k=257 exceeds the Neuron device's sampling limit of 256 candidates: set top_k to at most 256, "
        "or to 0 (off) to sample from the whole vocabulary"
    )
