"""Multi-LoRA serving (issue 25) against transformers + PEFT on a tiny Llama.

Adapters are made with PEFT on the tiny base model (random A and B, so each one changes the
greedy tokens), saved in PEFT's format, and served by the engine; the reference runs the same
adapter through `PeftModel` (unmerged) on the same weights.
"""

from __future__ import annotations

import json
import os

import pytest
from lora_adapters import ALL_TARGETS, make_adapter, peft_greedy, peft_log_softmax
from tiny_models import assert_greedy_matches, make_tiny_model, random_prompts, tiny_config

from octavo import LLM, SamplingParams
from octavo.lora import LoRAError
from octavo.lora.request import LoRARequest

PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return make_tiny_model("llama", str(tmp_path_factory.mktemp("lora") / "base"))


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        # every projection, rank 8
        "all": make_adapter(base, str(root / "all"), 1, ALL_TARGETS, r=8, lora_alpha=16),
        # attention only, rsLoRA scaling, a smaller rank and a per-module alpha
        "attn": make_adapter(
            base,
            str(root / "attn"),
            2,
            ["q_proj", "v_proj"],
            r=4,
            lora_alpha=8,
            use_rslora=True,
            alpha_pattern={"v_proj": 3},
        ),  # fmt: skip
        # MLP only
        "mlp": make_adapter(base, str(root / "mlp"), 3, ["gate_proj", "up_proj", "down_proj"], r=8, lora_alpha=4),
    }


def make_llm(base: str, **kwargs) -> LLM:
    opts = dict(device="cpu", dtype="float32", enable_lora=True, max_lora_rank=8, max_model_len=256)
    return LLM(base, kv_cache_memory="16MiB", **{**opts, **kwargs})


def tokens(outs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


def test_lora_request_is_vllms():
    req = LoRARequest("sql", 3, "/adapters/sql")
    assert (req.lora_name, req.lora_int_id, req.lora_path) == ("sql", 3, "/adapters/sql")
    assert (req.name, req.adapter_id, req.path) == ("sql", 3, "/adapters/sql")
    with pytest.raises(ValueError, match="lora_int_id must be an integer >= 1"):
        LoRARequest("sql", 0, "/adapters/sql")


def test_mixed_batch_matches_peft(base, adapters):
    """Base, adapter and other-adapter requests in the same steps each get PEFT's tokens."""
    prompts = random_prompts(6, [7, 23, 40], tiny_config("llama").vocab_size, seed=5)
    names = [None, "all", "attn", "mlp", "all", None]
    llm = make_llm(base, max_loras=3)
    reqs = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}
    got = tokens(llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, False, [reqs.get(n) for n in names]))
    for name in (None, *adapters):
        rows = [i for i, n in enumerate(names) if n == name]
        want = peft_greedy(base, adapters.get(name) if name else None, [prompts[i] for i in rows], PARAMS.max_tokens)
        for i, w in zip(rows, want):
            assert_greedy_matches(base, prompts[i], got[i], w, f"prompt {i} with adapter {name}")
    # each adapter changes the tokens (else the comparisons above would not test it)
    base_want = peft_greedy(base, None, [prompts[1], prompts[2], prompts[3]], PARAMS.max_tokens)
    assert all(got[i] != w for i, w in zip((1, 2, 3), base_want)), "an adapter left the base model's tokens"


def test_eviction_with_more_adapters_than_slots(base, adapters):
    """One device slot and one host entry for three adapters: the scheduler runs them in turn,
    each evicting the last, and every request still gets its own adapter's tokens."""
    llm = make_llm(base, max_loras=1, max_cpu_loras=1)
    prompt = random_prompts(1, [19], tiny_config("llama").vocab_size, seed=9)[0]
    names = ["all", "attn", "mlp", "all"]
    reqs = [LoRARequest(n, i + 1, adapters[n]) for i, n in enumerate(["all", "attn", "mlp"])]
    by_name = {r.lora_name: r for r in reqs}
    got = tokens(llm.generate([{"prompt_token_ids": prompt}] * 4, PARAMS, False, [by_name[n] for n in names]))
    for name, g in zip(names, got):
        assert_greedy_matches(base, prompt, g, peft_greedy(base, adapters[name], [prompt], 8)[0], name)
    manager = llm.llm_engine.runner.lora_manager
    assert manager.loads >= 3 and len(manager.slot_of) == 1 and len(manager.host) == 1


def test_prefix_cache_isolation(base, adapters):
    """A prompt run with adapter A, then with B and the base model: B and the base model must
    not reuse A's cached blocks (their KV differs). A second run with A does reuse them."""
    llm = make_llm(base, max_loras=2)
    prompt = random_prompts(1, [70], tiny_config("llama").vocab_size, seed=11)[0]
    a, b = LoRARequest("all", 1, adapters["all"]), LoRARequest("attn", 2, adapters["attn"])
    engine = llm.llm_engine

    def run(lora):
        hits = engine.block_manager.prefix_hits
        out = tokens(llm.generate([{"prompt_token_ids": prompt}], PARAMS, False, lora))[0]
        return out, engine.block_manager.prefix_hits - hits

    first_a, _ = run(a)
    got_b, hits_b = run(b)
    got_base, hits_base = run(None)
    again_a, hits_a = run(a)
    assert hits_b == 0 and hits_base == 0, "blocks computed with one adapter were reused under another"
    assert hits_a >= 64 and again_a == first_a, "the same adapter should hit its own cached blocks"
    assert_greedy_matches(base, prompt, got_b, peft_greedy(base, adapters["attn"], [prompt], 8)[0], "attn after all")
    assert_greedy_matches(base, prompt, got_base, peft_greedy(base, None, [prompt], 8)[0], "base after all")


def test_embedding_and_lm_head_adapters_match_peft(base, adapters, tmp_path):
    """Adapters on embed_tokens (PEFT's lora_embedding_A/B) and lm_head, in one batch with the
    base model and a projections-only adapter: each request gets PEFT's tokens, at prefill and
    decode (the lm_head's rows are the sampled ones, in another order than the batch's tokens)."""
    vocab = tiny_config("llama").vocab_size
    heads = {
        "embed_head": make_adapter(base, str(tmp_path / "eh"), 6, ["embed_tokens", "lm_head", "q_proj"], r=8),
        "embed": make_adapter(base, str(tmp_path / "e"), 7, ["embed_tokens"], r=4, lora_alpha=16),
        "attn": adapters["attn"],
    }
    reqs = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(heads.items())}
    prompts = random_prompts(6, [9, 31, 17], vocab, seed=13)
    # rows of one adapter at different places: the sampled rows' slots are not the batch's first
    names = ["embed_head", None, "embed", "attn", "embed", "embed_head"]
    llm = make_llm(base, max_loras=3)
    got = tokens(llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, False, [reqs.get(n) for n in names]))
    base_want = peft_greedy(base, None, prompts, PARAMS.max_tokens)
    for name in heads:
        rows = [i for i, n in enumerate(names) if n == name]
        want = peft_greedy(base, heads[name], [prompts[i] for i in rows], PARAMS.max_tokens)
        for i, w in zip(rows, want):
            assert_greedy_matches(base, prompts[i], got[i], w, f"prompt {i} with adapter {name}")
            if name != "attn":
                assert got[i] != base_want[i], f"adapter {name} left the base model's tokens"
    assert_greedy_matches(base, prompts[1], got[1], base_want[1], "prompt 1 without an adapter")
    # prompt logprobs run the lm_head on every prompt row of a request: PEFT's log-softmax there
    lp = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    order = ["embed_head", None, "embed"]
    outs = llm.generate([{"prompt_token_ids": prompts[1]}] * 3, lp, False, [reqs.get(n) for n in order])
    for name, out in zip(order, outs):
        ref = peft_log_softmax(base, heads[name] if name else None, prompts[1])
        for i in range(1, len(prompts[1])):
            tok = prompts[1][i]
            assert out.prompt_logprobs[i][tok].logprob == pytest.approx(ref[i - 1, tok].item(), abs=1e-4), (name, i)


def _broken_copy(src: str, dst: str, **config) -> str:
    """A copy of adapter `src` with its config changed."""
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    cfg_path = os.path.join(dst, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(config)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return dst


def test_adapters_that_do_not_fit_are_refused_by_name(base, adapters, tmp_path):
    llm = make_llm(base, max_lora_rank=4)
    engine = llm.llm_engine
    prompt = [{"prompt_token_ids": [5, 6, 7]}]
    with pytest.raises(LoRAError, match=r"rank 8 \(layers\.0\..*over --max-lora-rank 4"):
        llm.generate(prompt, PARAMS, False, LoRARequest("all", 1, adapters["all"]))
    assert not engine.has_unfinished_requests()
    # an adapter made for another shape of the model
    other = make_tiny_model("llama", str(tmp_path / "wide"), tiny_config("llama").__class__(
        **{**tiny_config("llama").to_dict(), "hidden_size": 32, "head_dim": 8}))  # fmt: skip
    wide = make_adapter(other, str(tmp_path / "wide-adapter"), 4, ["q_proj"], r=4)
    with pytest.raises(LoRAError, match=r"does not fit the base model: layers\.0\.self_attn\.q_proj takes 64"):
        llm.generate(prompt, PARAMS, False, LoRARequest("wide", 2, wide))
    # trained added tokens are not served (as vLLM: no vocabulary beyond the base model's)
    tokens_cfg = _broken_copy(adapters["attn"], str(tmp_path / "tokens"), trainable_token_indices=[5, 6])
    with pytest.raises(LoRAError, match="trainable_token_indices"):
        llm.generate(prompt, PARAMS, False, LoRARequest("tokens", 3, tokens_cfg))
    saves = _broken_copy(adapters["attn"], str(tmp_path / "saves"), modules_to_save=["lm_head"])
    with pytest.raises(LoRAError, match="modules_to_save"):
        llm.generate(prompt, PARAMS, False, LoRARequest("saves", 4, saves))
    with pytest.raises(LoRAError, match="no adapter_config.json"):
        llm.generate(prompt, PARAMS, False, LoRARequest("missing", 5, str(tmp_path / "nowhere")))
    # the engine still serves after the refusals
    assert tokens(llm.generate(prompt, PARAMS, False)) == peft_greedy(base, None, [[5, 6, 7]], 8)


def test_lora_not_enabled_is_refused(base, adapters):
    llm = LLM(base, device="cpu", dtype="float32", kv_cache_memory="16MiB", max_model_len=64)
    with pytest.raises(LoRAError, match="not enabled.*enable_lora=True"):
        llm.generate([{"prompt_token_ids": [5, 6]}], PARAMS, False, LoRARequest("all", 1, adapters["all"]))
