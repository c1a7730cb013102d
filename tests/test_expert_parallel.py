"""Mixture-of-experts models over 2 ranks on the CPU (gloo): with --enable-expert-parallel (whole
experts per rank, tokens dispatched and combined by all_to_all) and without it (every expert's
features split over the ranks), greedy tokens equal one rank's; the switch is
refused, before any worker starts, for a model without experts and for an expert count the
ranks cannot share."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from tiny_models import make_tiny_model, random_prompts, smollm2_tokenizer
from tiny_moe import tiny_moe_config

from octavo import LLM, SamplingParams
from octavo.layers.moe import FusedMoE

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

NEW_TOKENS = 8


def _greedy(llm, prompts):
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]


def _llm(path, tp, ep=False, **kw):
    return LLM(
        model=path,
        device="cpu",
        dtype="float32",
        kv_cache_memory="16MiB",
        max_model_len=256,
        tensor_parallel_size=tp,
        enable_expert_parallel=ep,
        **kw,
    )


@pytest.mark.parametrize(
    "arch,ep",
    [("qwen2_moe", True), ("mixtral", False)],
    ids=["qwen2_moe-expert-parallel", "mixtral-tensor-parallel-experts"],
)
def test_two_ranks_match_one(arch, ep, tmp_path):
    """qwen2_moe: 6 experts, 3 per rank, a gated shared expert and a dense layer beside them;
    prompts of 1 token (one rank's slice is empty) to 120 (chunks of 48: steps of decodes and
    prefills). One rank equals transformers on these models (test_moe_models)."""
    path = make_tiny_model(arch, str(tmp_path / arch), tiny_moe_config(arch))
    prompts = random_prompts(4, [1, 17, 60, 120], vocab=len(smollm2_tokenizer()), seed=3)
    one = _greedy(_llm(path, 1), prompts)
    llm = _llm(path, 2, ep, max_num_batched_tokens=48)
    layers = [m for m in llm.llm_engine.runner.model.modules() if isinstance(m, FusedMoE)]
    assert layers and all(m.expert_parallel == ep for m in layers)
    if ep:
        assert {(m.num_local, m.expert_start) for m in layers} == {(3, 0)}  # rank 0's half of the experts
    two = _greedy(llm, prompts)
    llm.shutdown()
    for i, (a, b) in enumerate(zip(two, one)):
        assert a == b, f"{arch} prompt {i} ({len(prompts[i])} tokens): 2 ranks {a} != 1 rank {b}"


def test_expert_parallel_is_refused_where_it_cannot_run(tiny_model_dirs, tmp_path):
    with pytest.raises(ValueError, match="LlamaForCausalLM has none"):
        _llm(tiny_model_dirs["llama"], 2, ep=True)
    cfg = tiny_moe_config("qwen2_moe")
    cfg.num_experts = 5
    path = make_tiny_model("qwen2_moe", str(tmp_path / "five"), cfg)
    with pytest.raises(
        ValueError, match=r"cannot split the model's 5 experts evenly; use a tensor_parallel_size in \[1, 5\]"
    ):
        _llm(path, 2, ep=True)
    assert not dist.is_initialized()  # refused before any process group or worker
