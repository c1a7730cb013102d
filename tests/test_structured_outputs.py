"""Structured outputs on the default model (SmolLM2): sampled outputs that always fit their JSON
schema, regex, choice or grammar, mixed freely with unconstrained requests, with async scheduling
(the grammars' masks filled while the forward runs) and without; the bitmask op against the
kit's reference; the grammar cache; errors that say what is wrong."""

from __future__ import annotations

import json
import re

import pytest
import torch

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

from octavo import LLM, SamplingParams, StructuredOutputsParams  # noqa: E402
from octavo.platform.ops import apply_token_bitmask  # noqa: E402
from octavo.structured_output import StructuredOutputManager  # noqa: E402
from octavo.structured_output.manager import Accepted  # noqa: E402
from octavo_plugin_kit import reference  # noqa: E402

# nested objects, enums, arrays and required fields; bounded so sampled outputs stay short
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
        },
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 2},
        "active": {"type": "boolean"},
    },
    "required": ["name", "role", "address", "tags", "active"],
}
PROMPTS = [f"Describe person number {i} of the staff as JSON:" for i in range(50)]


@pytest.fixture(scope="module")
def llm():
    llm = LLM(model="smollm2", device="cpu", dtype="float32", max_model_len=512, kv_cache_memory="256MiB")
    yield llm
    llm.shutdown()


@pytest.fixture(params=[True, False], ids=["async", "sync"])
def scheduling(llm, request):
    """The engine's step loop with and without async scheduling (the engine reads the flag at
    every step, so one engine serves both)."""
    config = llm.llm_engine.config.scheduler
    saved, config.async_scheduling = config.async_scheduling, request.param
    yield llm
    config.async_scheduling = saved


def _params(so: StructuredOutputsParams, seed: int, max_tokens: int = 120, **kw) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, structured_outputs=so, **kw)


#: unconstrained requests mixed into the constrained batches (greedy: the mask is the only
#: thing that could change them)
FREE = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def alone(llm):
    """What the unconstrained requests generate in a batch of their own."""
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:4], FREE, use_tqdm=False)]


def _generate_mixed(llm, constrained: list[SamplingParams], alone: list[list[int]], prompts=None):
    """The constrained requests with the unconstrained ones interleaved, in one batch; checks that
    the unconstrained generate what they generate alone, returns the constrained outputs."""
    prompts = prompts or ["Answer:"] * len(constrained)
    free = list(zip(PROMPTS[:4], [FREE] * 4))
    batch = list(zip(prompts, constrained))
    for k, pair in enumerate(free):
        batch.insert(k * (len(batch) // 4 + 1), pair)
    outs = llm.generate([p for p, _ in batch], [sp for _, sp in batch], use_tqdm=False)
    free_outs = [o.outputs[0].token_ids for (_, sp), o in zip(batch, outs) if sp is FREE]
    assert free_outs == alone
    return [o for (_, sp), o in zip(batch, outs) if sp is not FREE]


@pytest.mark.parametrize("scheduling", [True], indirect=True, ids=["async"])
def test_fifty_sampled_json_outputs_validate(scheduling, alone):
    """Sampled at temperature 1, in one batch with unconstrained requests, with async scheduling:
    the grammars' masks of a step are filled after the step before it has been waited for,
    inside the launch (the path that must not serialize the steps)."""
    so = StructuredOutputsParams(json=PERSON, disable_any_whitespace=True)
    outs = _generate_mixed(scheduling, [_params(so, i) for i in range(len(PROMPTS))], alone, PROMPTS)
    assert len(outs) == 50
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", f"truncated: {c.text!r}"
        jsonschema.validate(json.loads(c.text), PERSON)


def test_regex_choice_and_grammar(scheduling, alone):
    regex = r"[A-Z][a-z]{2,8} [0-9]{3}"
    choices = ["red", "green", "blue", 'a "quoted" one']
    grammar = 'root ::= "yes" | "no" | ("maybe " [0-9] [0-9]?)'
    cases = [StructuredOutputsParams(regex=regex)] * 4
    cases += [StructuredOutputsParams(choice=choices)] * 4
    cases += [StructuredOutputsParams(grammar=grammar)] * 4
    outs = _generate_mixed(scheduling, [_params(so, i, 24) for i, so in enumerate(cases)], alone)
    for so, out in zip(cases, outs):
        text = out.outputs[0].text
        assert out.outputs[0].finish_reason == "stop", text
        if so.regex:
            assert re.fullmatch(regex, text), text
        elif so.choice:
            assert text in choices
        else:
            assert re.fullmatch(r"yes|no|maybe [0-9][0-9]?", text), text


def test_a_complete_grammar_ends_its_request(llm):
    """With ignore_eos the model could go on; the grammar cannot, so the request stops there."""
    so = StructuredOutputsParams(choice=["alpha", "beta"])
    (out,) = llm.generate(["Pick one:"], _params(so, 0, 32, ignore_eos=True), use_tqdm=False)
    assert out.outputs[0].text in ("alpha", "beta") and out.outputs[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "so,words",
    [
        (StructuredOutputsParams(json={"type": "objekt"}), "JSON schema"),
        (StructuredOutputsParams(json="{not json"), "not valid JSON"),
        (StructuredOutputsParams(regex="[a-"), "regex"),
        (StructuredOutputsParams(grammar="root ::= undefined_rule"), "grammar"),
    ],
)
def test_an_invalid_constraint_is_refused_saying_what_is_wrong(llm, so, words):
    with pytest.raises(ValueError, match=f"structured_outputs.*{words}"):
        llm.generate(["x"], _params(so, 0), use_tqdm=False)


def test_params_need_exactly_one_constraint():
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams(regex="a", choice=["a"])


def test_compiled_grammars_are_cached_by_constraint(llm):
    cache = llm.llm_engine.structured.cache
    a = cache.compile(StructuredOutputsParams(json={"type": "object", "properties": {"x": {"type": "integer"}}}))
    hits = cache.hits
    # the same schema written another way (key order, text) is the same grammar
    b = cache.compile(StructuredOutputsParams(json='{"properties": {"x": {"type": "integer"}}, "type": "object"}'))
    assert b is a and cache.hits == hits + 1


# ---- the bitmask op ---------------------------------------------------------------------------
@pytest.mark.parametrize("rows,vocab", [(1, 33), (4, 49152), (3, 1000)])
def test_bitmask_op_matches_the_reference(rows, vocab):
    """Core's definition against the kit's bit-by-bit reference (that xgrammar's masks mean what
    the op reads is checked by the grammar tests: their outputs parse)."""
    g = torch.Generator().manual_seed(rows * vocab)
    logits = torch.randn(rows, vocab, generator=g)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (rows, -(-vocab // 32)), generator=g, dtype=torch.int64)
    bitmask = bitmask.to(torch.int32)
    bitmask[0, 0] = -1  # a word that allows all of its 32 tokens
    want = reference.apply_token_bitmask(logits, bitmask)
    assert torch.equal(apply_token_bitmask(logits.clone(), bitmask), want)


# ---- reasoning: the grammar starts after `</think>` ------------------------------------------
def test_grammar_waits_for_the_end_of_reasoning(llm):
    """Unit check of the manager with a made-up end-of-thinking token: no mask while the
    request reasons, the grammar's mask once the end token was sampled."""
    engine = llm.llm_engine
    end, start = 7, 8
    manager = StructuredOutputManager(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, end, start)
    grammar = manager.compile(StructuredOutputsParams(choice=["yes"]))
    manager.add("thinking", grammar, prompt_ids=[1, 2, start])
    manager.add("answered", grammar, prompt_ids=[1, start, 5, end])  # the prompt closed the thinking
    assert manager.bitmask(["thinking"]) is None
    assert manager.bitmask(["answered"]) is not None
    assert manager.accept("thinking", 42) is Accepted.OK  # any token while thinking
    assert manager.accept("thinking", end) is Accepted.OK
    mask = manager.bitmask(["thinking", "nobody"])
    assert mask is not None and bool((mask[1] == -1).all())  # a row without a grammar allows all
    allowed = [t for t in range(engine.vocab_size) if (int(mask[0, t // 32]) >> (t % 32)) & 1]
    assert allowed and all("yes".startswith(engine.tokenizer.decode([t])) for t in allowed)
    banned = next(t for t in range(engine.vocab_size) if t not in set(allowed))
    assert manager.accept("thinking", banned) is Accepted.REJECTED
