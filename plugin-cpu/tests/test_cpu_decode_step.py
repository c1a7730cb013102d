"""octavo-cpu's one-call decode step (`octavo_cpu.decode_forward`, run by `CpuModelRunner`)
against the op-by-op path.

Both run the same native kernels with the same arguments, so the logprobs of every generated
token must be bit-identical, for every architecture the native step covers, in fp32 and bf16,
at batch sizes it takes and one it leaves to the op-by-op path. The op-by-op path itself is
checked against transformers in test_equivalence.py.
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("octavo_cpu")
from octavo_cpu import _native, decode_forward  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.available(), reason="octavo-cpu's native kernels did not build")

_RUN_DECODE = decode_forward.run_decode  # before any test patches it


def _generate(model_dir, dtype, prompts, native_step: bool, monkeypatch):
    from octavo import LLM, SamplingParams

    calls = {"native": 0}

    def counting(*args):
        out = _RUN_DECODE(*args) if native_step else None
        calls["native"] += int(out is not None)
        return out

    monkeypatch.setattr(decode_forward, "run_decode", counting)
    llm = LLM(model=model_dir, device="cpu", dtype=dtype, max_num_seqs=16, enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    result = [
        (o.outputs[0].token_ids, [{k: v.logprob for k, v in lp.items()} for lp in o.outputs[0].logprobs]) for o in outs
    ]
    return result, calls["native"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_native_decode_step_equals_op_by_op(arch, dtype, tiny_model_dirs, monkeypatch):
    """llama: llama3 rope, GQA; qwen2: qkv bias; mistral: a 48-token window under 60-token prompts."""
    from octavo_cpu import gemm

    rng = random.Random(7)
    # packed weights (bf16 at every ISA level): the packed GEMM at every batch size, as the
    # op-by-op path; fp32: the GEMV up to 8 rows, and steps past it go op by op in both runs
    for batch in (1, 3, 8, 11):
        prompts = [[rng.randrange(3, 4000) for _ in range(rng.choice((5, 17, 60)))] for _ in range(batch)]
        native, n_native = _generate(tiny_model_dirs[arch], dtype, prompts, True, monkeypatch)
        ops, n_ops = _generate(tiny_model_dirs[arch], dtype, prompts, False, monkeypatch)
        assert n_ops == 0
        if batch <= 8 or gemm.packs(getattr(torch, dtype)):
            assert n_native >= 10, "the native decode step did not run"
        else:
            assert n_native == 0, "the native decode step ran a batch it does not cover"
        assert native == ops, f"batch {batch}: native decode step differs from the op-by-op path"


def test_models_it_does_not_cover_fall_back(tiny_model_dirs, monkeypatch):
    """qwen3's per-head q/k norms are not in the native step: it must decline, not guess."""
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 4000) for _ in range(9)] for _ in range(2)]
    _, n_native = _generate(tiny_model_dirs["qwen3"], "float32", prompts, True, monkeypatch)
    assert n_native == 0


def test_engine_start_packs_the_gemm_weights(tiny_model_dirs):
    """Loading packs every layer's weights for the GEMM (process_weights_after_loading) before
    the first request, not during it, and start-up builds the decode step's plan on them."""
    from octavo import LLM
    from octavo.layers.linear import Linear
    from octavo_cpu import gemm

    if not gemm.packs(torch.bfloat16):
        pytest.skip("the packed GEMM needs the native kernels")
    llm = LLM(model=tiny_model_dirs["llama"], device="cpu", dtype="bfloat16")
    runner = llm.llm_engine.runner
    linears = [m for m in runner.model.modules() if isinstance(m, Linear)]
    assert len(linears) == 4 * len(runner.model.layers) + 1  # qkv, o, gate_up, down; lm_head
    for w in linears:
        assert w.packed_weight is not None, "a weight was left to pack in the first request"
        assert w.weight is None, "the unpacked weight stayed resident beside its packed copy"
    plan = runner._decode_plan
    assert plan is not None and plan.packed, "start-up built no decode plan on the packed weights"
