"""Beam search equals transformers' generate(num_beams=..., do_sample=False) on the same weights."""

import pytest
import torch
from tiny_models import _load_hf, random_prompts, smollm2_tokenizer

from octavo import LLM, BeamSearchParams


@pytest.fixture(scope="module")
def setup(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    return path, LLM(model=path, device="cpu", dtype="float32", kv_cache_memory="32MiB", block_size=8)


@pytest.mark.parametrize("width", [2, 3, 5])
def test_beam_search_matches_transformers(width, setup):
    path, llm = setup
    prompts = random_prompts(3, [4, 19, 33], vocab=len(smollm2_tokenizer()), seed=width)
    new = 10
    ours = llm.beam_search(
        [{"prompt_token_ids": p} for p in prompts], BeamSearchParams(beam_width=width, max_tokens=new)
    )
    hf = _load_hf(path, None)
    for p, out in zip(prompts, ours):
        with torch.inference_mode():
            ref = hf.generate(
                torch.tensor([p]),
                num_beams=width,
                num_return_sequences=width,
                do_sample=False,
                max_new_tokens=new,
                early_stopping=False,
                length_penalty=1.0,
                eos_token_id=None,
                pad_token_id=0,
                output_scores=True,
                return_dict_in_generate=True,
            )
        ours_scores = [s.cum_logprob / new for s in out.sequences]
        # the beams' scores always agree; the token sequences must too, unless two candidates
        # tie to float32 noise, where GEMMs of different batch shapes may order them differently
        assert ours_scores == pytest.approx(ref.sequences_scores.tolist(), abs=1e-4)
        if [s.tokens for s in out.sequences] != ref.sequences.tolist():
            gaps = [abs(a - b) for a, b in zip(ours_scores, ref.sequences_scores.tolist())]
            assert max(gaps) < 1e-5, f"beams differ beyond a float tie: {gaps}"


def test_beams_share_prefix_blocks(setup):
    _, llm = setup
    engine = llm.llm_engine
    before = engine.get_stats()
    llm.beam_search([{"prompt_token_ids": list(range(100, 164))}], BeamSearchParams(beam_width=3, max_tokens=6))
    after = engine.get_stats()
    queried = after.prefix_cache_queries - before.prefix_cache_queries
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    # every step after the first reuses the 64-token prompt's 8 blocks for every beam
    assert hits >= 5 * 3 * 64 * 0.9 and hits / queried > 0.8
    bm = engine.block_manager
    bm.check_invariants()
    assert bm.num_free_blocks == bm.num_blocks


def test_bad_beam_width():
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(beam_width=0, max_tokens=4)
