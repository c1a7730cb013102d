"""generation_config.json: its EOS ids stop generation and its sampling fields are the defaults of
requests that set none, offline and over the API, as transformers' generate() reads the same file."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import shutil

import httpx
import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.async_engine import AsyncLLMEngine
from octavo.entrypoints.openai.api_server import ServerSettings, build_app
from octavo.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest

CANDIDATES = [[5, 17, 300, 42, 9, 77, 5, 17], [1000, 3, 3, 250, 3, 3], [7, 7, 7, 7], [12, 400, 12, 400, 12]]
CANDIDATES += [[t, t + 1, t + 2] for t in range(100, 4100, 500)]
MAX_NEW = 20
PENALTY = 1.8
SMALL = dict(device="cpu", dtype="float32", max_model_len=64, kv_cache_memory="16MiB")


@functools.lru_cache(maxsize=1)
def _hf_model(folder: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.inference_mode()
def hf_generate(folder: str, prompts: list[list[int]], **overrides) -> list[list[int]]:
    """transformers' generate() with the folder's generation_config.json (and `overrides`)."""
    from transformers import GenerationConfig

    model = _hf_model(folder)
    config = GenerationConfig.from_pretrained(folder, **overrides)
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        y = model.generate(x, attention_mask=torch.ones_like(x), generation_config=config, pad_token_id=0)
        outs.append(y[0, len(ids) :].tolist())
    return outs


def write_generation_config(folder, config: dict) -> None:
    with open(folder / "generation_config.json", "w") as f:
        json.dump(config, f)


@pytest.fixture(scope="module")
def model(tiny_model_dirs, tmp_path_factory):
    """The tiny Qwen3 (whose greedy output tends to repeat itself) with a generation_config.json
    asking for greedy decoding with a repetition penalty, at most MAX_NEW tokens, and an extra EOS
    id that the first prompt's output reaches early; and two prompts whose output the penalty changes."""
    folder = tmp_path_factory.mktemp("genconfig") / "qwen3"
    shutil.copytree(tiny_model_dirs["qwen3"], folder)
    base = {"do_sample": False, "repetition_penalty": PENALTY, "max_new_tokens": MAX_NEW, "eos_token_id": [2]}
    write_generation_config(folder, base)
    changed = (
        p for p in CANDIDATES if hf_generate(str(folder), [p]) != hf_generate(str(folder), [p], repetition_penalty=1.0)
    )
    prompts = list(itertools.islice(changed, 2))
    assert len(prompts) == 2, "the penalty changes no greedy output of this random model: add candidates"
    free_run = hf_generate(str(folder), prompts[:1])[0]
    # the first token not seen before position 4: generation must stop right there
    stop = next(t for i, t in enumerate(free_run) if i >= 4 and t not in free_run[:i] and t not in prompts[0])
    write_generation_config(folder, {**base, "eos_token_id": [2, stop]})
    return str(folder), stop, prompts


def test_the_reference_is_sensitive_to_every_field(model):
    folder, stop, prompts = model
    ref = hf_generate(folder, prompts)
    assert ref[0][-1] == stop and len(ref[0]) < MAX_NEW  # the extra EOS ends it early
    assert hf_generate(folder, prompts, repetition_penalty=1.0) != ref  # the penalty changes the tokens
    assert hf_generate(folder, prompts[:1], eos_token_id=[2]) != ref[:1]  # so does the extra EOS


@pytest.fixture(scope="module")
def llm(model):
    return LLM(model=model[0], **SMALL)


def test_offline_defaults_and_eos_equal_transformers(model, llm):
    folder, _, prompts = model
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)  # no sampling params
    assert [list(o.outputs[0].token_ids) for o in outs] == hf_generate(folder, prompts)


def test_default_sampling_params_are_the_files(model, llm):
    from transformers import GenerationConfig

    ref = GenerationConfig.from_pretrained(model[0])
    p = llm.get_default_sampling_params()
    assert (p.repetition_penalty, p.max_tokens, p.temperature) == (ref.repetition_penalty, ref.max_new_tokens, 0.0)


def test_vllm_mode_keeps_octavos_defaults_but_not_the_eos(model):
    folder, _, prompts = model
    plain = LLM(model=folder, generation_config="vllm", **SMALL)
    assert plain.get_default_sampling_params() == SamplingParams()
    params = SamplingParams(temperature=0, repetition_penalty=PENALTY, max_tokens=MAX_NEW)
    (out,) = plain.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)
    assert list(out.outputs[0].token_ids) == hf_generate(folder, prompts[:1])[0]  # stopped at the file's EOS


def test_a_generation_config_folder_and_overrides(model, tmp_path):
    folder = model[0]
    elsewhere = tmp_path / "sampling"
    elsewhere.mkdir()
    write_generation_config(elsewhere, {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.05})
    llm = LLM(model=folder, generation_config=str(elsewhere), override_generation_config={"top_k": 5}, **SMALL)
    p = llm.get_default_sampling_params()
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (0.7, 0.8, 5, 0.05, 1.0)
    with pytest.raises(ValueError, match="top_p"):
        LLM(model=folder, override_generation_config={"top_p": 0}, **SMALL)


def test_requests_tell_unset_from_set_to_the_default():
    defaults = {"temperature": 0.3, "top_k": 7, "repetition_penalty": 1.2}
    unset = CompletionRequest(prompt="x").to_sampling_params(16, defaults)
    assert (unset.temperature, unset.top_k, unset.repetition_penalty, unset.top_p) == (0.3, 7, 1.2, 1.0)
    explicit = CompletionRequest(prompt="x", temperature=1.0, top_k=0, repetition_penalty=1.0)
    p = explicit.to_sampling_params(16, defaults)
    assert (p.temperature, p.top_k, p.repetition_penalty) == (1.0, 0, 1.0)
    null = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "temperature": None})
    assert null.to_sampling_params(16, defaults).temperature == 0.3


def test_the_server_applies_them_to_fields_a_request_leaves_unset(model, llm):
    folder, _, prompts = model
    ref = hf_generate(folder, prompts)
    plain_ref = hf_generate(folder, prompts, repetition_penalty=1.0)
    engine = AsyncLLMEngine(llm.llm_engine)
    app = build_app(engine, ServerSettings(served_model_names=["m"]))

    def tokens(resp: httpx.Response) -> list[str]:
        assert resp.status_code == 200, resp.text
        return resp.json()["choices"][0]["logprobs"]["tokens"]

    def strings(ids: list[int]) -> list[str]:
        return [llm.get_tokenizer().decode([t]) for t in ids]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as client:
            try:
                for i, prompt in enumerate(prompts):
                    body = {"prompt": prompt, "max_tokens": 40, "logprobs": 0}  # capped at max_new_tokens
                    r = await client.post("/v1/completions", json=body)
                    assert tokens(r) == strings(ref[i])
                    assert r.json()["choices"][0]["finish_reason"] == ("stop" if len(ref[i]) < MAX_NEW else "length")
                    # a field set to OpenAI's default is the request's, not the file's
                    r = await client.post("/v1/completions", json={**body, "repetition_penalty": 1.0})
                    assert tokens(r) == strings(plain_ref[i])
            finally:
                await engine.shutdown()

    asyncio.run(main())
