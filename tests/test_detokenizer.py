"""Incremental detokenization equals decoding the whole list; stop strings are cut."""

import random

import pytest
from tiny_models import smollm2_tokenizer

from octavo import SamplingParams
from octavo.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


TEXTS = [
    "Hello, world! Ünïcödé façade — naïve café. 日本語のテキスト、絵文字 🎉🚀 and more.",
    "def f(x):\n    return x ** 2  # square\n\n\tindent",
    "  leading spaces and trailing   ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_full_decode(tok, text):
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, tok.encode("Prompt:"), SamplingParams())
    streamed = ""
    for t in ids:
        assert d.add_token(t) is None
        streamed += d.delta(finished=False)
    streamed += d.delta(finished=True)
    assert streamed == d.text == tok.decode(ids)


def test_random_token_streams_equal_full_decode(tok):
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(tok)) for _ in range(40)]
        d = IncrementalDetokenizer(tok, [rng.randrange(len(tok)) for _ in range(3)], SamplingParams())
        for t in ids:
            d.add_token(t)
        d.flush()  # the engine flushes when a request ends
        assert d.text == tok.decode(ids, skip_special_tokens=True)


def test_stop_string_is_excluded_and_detected_across_tokens(tok):
    text = "The answer is 42.\n###\nignored afterwards"
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, [], SamplingParams(stop=["###"]))
    hit = None
    streamed = ""
    for t in ids:
        hit = d.add_token(t)
        streamed += d.delta(finished=hit is not None)
        if hit:
            break
    assert hit == "###"
    assert d.text == "The answer is 42.\n" == streamed


def test_include_stop_str_in_output(tok):
    d = IncrementalDetokenizer(tok, [], SamplingParams(stop=["END"], include_stop_str_in_output=True))
    for t in tok.encode("abc END def"):
        if d.add_token(t):
            break
    assert d.text == "abc END"
