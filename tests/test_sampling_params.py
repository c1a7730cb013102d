"""SamplingParams validation: every bad value gets an error naming the field."""

import pytest

from octavo import SamplingParams


@pytest.mark.parametrize(
    "field,value",
    [
        ("n", 0),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -3),
        ("min_p", 1.5),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0.0),
        ("logprobs", 21),
        ("prompt_logprobs", -1),
        ("stop_token_ids", [-1]),
        ("stop", [""]),
        ("seed", "abc"),
        ("logit_bias", {5: 200.0}),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_normalisation():
    p = SamplingParams(stop="###", top_k=-1)
    assert p.stop == ["###"] and p.top_k == 0 and p.best_of == 1
    assert SamplingParams(temperature=0).greedy
