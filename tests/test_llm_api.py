"""The offline API's shapes: input order, token-id prompts, per-prompt params, stop conditions."""

import pytest

from octavo import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm():
    return LLM(model="smollm2", device="cpu", dtype="float32", max_model_len=512, kv_cache_memory="256MiB")


def test_outputs_in_input_order_with_fields(llm):
    tok = llm.get_tokenizer()
    prompts = ["The capital of France is", {"prompt_token_ids": tok.encode("Hello, my name is")}, "1, 2, 3,"]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 5, 7)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5, 7]
    assert outs[0].prompt == "The capital of France is"
    assert outs[0].prompt_token_ids == tok.encode("The capital of France is")
    assert outs[1].prompt_token_ids == tok.encode("Hello, my name is")
    for o in outs:
        c = o.outputs[0]
        assert o.finished and c.finish_reason == "length"
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


def test_stop_string_excluded_and_reason(llm):
    out = llm.generate(
        "Count: 1, 2, 3, 4, 5,", SamplingParams(temperature=0, max_tokens=20, stop=[" 8"]), use_tqdm=False
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == " 8"
    assert " 8" not in out.text and out.text.startswith(" 6, 7,")


def test_stop_token_ids_and_eos(llm):
    tok = llm.get_tokenizer()
    comma = tok.encode(",")[0]
    out = llm.generate(
        "Count: 1, 2, 3", SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[comma]), use_tqdm=False
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == comma and out.token_ids[-1] == comma
    chat = llm.chat(
        [{"role": "user", "content": "Say hi."}], SamplingParams(temperature=0, max_tokens=64), use_tqdm=False
    )[0].outputs[0]
    assert chat.finish_reason == "stop" and chat.token_ids[-1] == tok.eos_token_id
    ignored = llm.chat(
        [{"role": "user", "content": "Say hi."}],
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert len(ignored.token_ids) == 40 and ignored.finish_reason == "length"


def test_n_samples(llm):
    out = llm.generate("Tell me a story", SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=6), use_tqdm=False)
    assert [c.index for c in out[0].outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 6 for c in out[0].outputs)


def test_best_of_returns_the_n_highest_cumulative_logprobs(llm):
    p = SamplingParams(n=2, best_of=5, temperature=1.0, seed=11, max_tokens=5, ignore_eos=True)
    out = llm.generate("Once upon a time", p, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1]
    assert out.outputs[0].logprobs is None  # ranked internally, not asked for by the user
    # the same five samples, all returned: the two best must be the top of them
    all5 = llm.generate(
        "Once upon a time",
        SamplingParams(n=5, temperature=1.0, seed=11, max_tokens=5, ignore_eos=True, logprobs=0),
        use_tqdm=False,
    )[0]
    ranked = sorted(all5.outputs, key=lambda c: c.cumulative_logprob, reverse=True)
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in ranked[:2]]
