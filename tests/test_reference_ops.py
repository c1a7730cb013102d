"""The reference ops, and the definitions of the fused ops, against independent implementations.

The conformance suite trusts octavo_plugin_kit.reference and the definitions in
octavo.platform.ops (the kit re-exports them; they are also FusedOps' defaults), so each
op is checked here against math written another way: attention token by token in
float64 straight from the k/v that went into the cache (so write_kv, block tables and
slots are checked too), rotary and RMSNorm against Hugging Face transformers' Llama
code, sampling against a float64 CDF, and the batch builders against the layout core's
runner produces.
"""

from __future__ import annotations

import math

import pytest
import torch

from octavo.layers.linear import Linear
from octavo.platform import FusedOps, LinearMethod
from octavo.platform import ops as definitions
from octavo.platform.ops import inverse_cdf_sample
from octavo_plugin_kit import reference
from octavo_plugin_kit.inputs import (
    context_slot_mapping,
    every_slot_batch,
    history_batch,
    make_cos_sin_cache,
    make_forward_batch,
    new_token_mask,
)


def _dense_attention(q, k_ctx, v_ctx, q_lens, seq_lens, scale, window, causal=True):
    """Per request, per query token, per head: explicit softmax over the visible keys."""
    q, k_ctx, v_ctx = q.double(), k_ctx.double(), v_ctx.double()
    num_heads, num_kv_heads = q.shape[1], k_ctx.shape[1]
    out = torch.zeros_like(q)
    q_row = ctx_row = 0
    for q_len, seq_len in zip(q_lens, seq_lens):
        for j in range(q_len):
            pos = seq_len - q_len + j
            first = 0 if window is None else max(0, pos - window + 1)
            last = pos if causal else seq_len - 1
            for h in range(num_heads):
                kv_head = h * num_kv_heads // num_heads
                keys = k_ctx[ctx_row + first : ctx_row + last + 1, kv_head]
                values = v_ctx[ctx_row + first : ctx_row + last + 1, kv_head]
                logits = keys @ q[q_row + j, h] * scale
                weights = torch.exp(logits - logits.max())
                out[q_row + j, h] = (weights / weights.sum()) @ values
        q_row += q_len
        ctx_row += seq_len
    return out


@pytest.mark.parametrize(
    "q_lens,seq_lens,block_size,num_heads,num_kv_heads,head_dim,window,causal",
    [
        ((1, 1, 7, 5), (1, 33, 7, 40), 8, 8, 2, 32, None, True),  # decodes, a prompt, a chunk
        ((7, 1, 5, 1), (7, 33, 40, 1), 8, 8, 2, 32, None, True),  # the same, decodes not first
        ((3, 16), (50, 16), 16, 4, 4, 64, None, True),  # multi-head, no GQA
        ((1, 12), (40, 30), 4, 6, 1, 16, 5, True),  # multi-query, sliding window
        ((9,), (9,), 32, 2, 2, 80, 1, True),  # window 1: each token sees only itself
        ((5, 16, 1), (20, 16, 9), 8, 4, 2, 32, None, False),  # not causal: the whole context
    ],
)
def test_attend_matches_dense_softmax(q_lens, seq_lens, block_size, num_heads, num_kv_heads, head_dim, window, causal):
    g = torch.Generator().manual_seed(0)
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + 3
    meta = make_forward_batch(seq_lens, q_lens, block_size, num_blocks, "cpu", g)
    k_ctx = torch.randn(sum(seq_lens), num_kv_heads, head_dim, generator=g)
    v_ctx = torch.randn(sum(seq_lens), num_kv_heads, head_dim, generator=g)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=g)
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)  # stale garbage
    reference.write_kv(k_ctx, v_ctx, cache, context_slot_mapping(meta, block_size))
    scale = 1 / math.sqrt(head_dim)

    out = reference.attend(q, cache, meta, scale, window, causal)
    want = _dense_attention(q, k_ctx, v_ctx, q_lens, seq_lens, scale, window, causal)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)


def test_attend_ignores_padding_requests_and_tokens():
    """A static-shape step: q_len-0 requests and slot -1 tokens past the last request leave
    the real rows as they are, and the padding rows zero."""
    g = torch.Generator().manual_seed(7)
    q_lens, seq_lens, bs = (3, 1), (10, 21), 8
    meta = make_forward_batch(seq_lens, q_lens, bs, 8, "cpu", g, pad_tokens=4, pad_reqs=2)
    k_ctx = torch.randn(sum(seq_lens), 2, 16, generator=g)
    v_ctx = torch.randn(sum(seq_lens), 2, 16, generator=g)
    q = torch.randn(sum(q_lens) + 4, 4, 16, generator=g)
    cache = torch.randn(2, 8, bs, 2, 16, generator=g)
    reference.write_kv(k_ctx, v_ctx, cache, context_slot_mapping(meta, bs))
    out = reference.attend(q, cache, meta, 0.25)
    want = _dense_attention(q[:4], k_ctx, v_ctx, q_lens, seq_lens, 0.25, None)
    torch.testing.assert_close(out[:4].double(), want, atol=1e-5, rtol=1e-5)
    assert not out[4:].any()


def test_attend_keeps_dtype_and_computes_in_float32():
    g = torch.Generator().manual_seed(1)
    meta = make_forward_batch([20], [20], 8, 4, "cpu", g)
    cache = torch.randn(2, 4, 8, 2, 16, generator=g).bfloat16()
    q = torch.randn(20, 4, 16, generator=g).bfloat16()
    out = reference.attend(q, cache, meta, 0.25)
    assert out.dtype == torch.bfloat16
    exact = reference.attend(q.float(), cache.float(), meta, 0.25)
    assert (out.float() - exact).abs().max() <= 0.01  # one rounding, not bf16 arithmetic


def test_write_kv_skips_padding_and_touches_nothing_else():
    cache = torch.zeros(2, 3, 4, 1, 2)
    k = torch.arange(6.0).reshape(3, 1, 2) + 1
    v = -k
    reference.write_kv(k, v, cache, torch.tensor([5, -1, 0]))
    assert torch.equal(cache[0, 1, 1, 0], k[0, 0]) and torch.equal(cache[1, 1, 1, 0], v[0, 0])
    assert torch.equal(cache[0, 0, 0, 0], k[2, 0]) and torch.equal(cache[1, 0, 0, 0], v[2, 0])
    assert int((cache != 0).any(-1).sum()) == 4  # two slots, keys and values


def test_make_forward_batch_follows_the_contract():
    g = torch.Generator().manual_seed(3)
    q_lens, seq_lens, bs = [10, 1, 1, 4], [10, 17, 3, 20], 4
    meta = make_forward_batch(seq_lens, q_lens, bs, 64, "cpu", g)
    # requests stay in the caller's order: a prompt, two decodes, a chunk
    assert meta.query_start_loc_cpu == [0, 10, 11, 12, 16] == meta.query_start_loc.tolist()
    assert meta.seq_lens_cpu == seq_lens == meta.seq_lens.tolist()
    assert (meta.max_query_len, meta.max_seq_len, meta.num_reqs) == (10, 20, 4)
    assert (int(meta.num_tokens_t), int(meta.num_reqs_t)) == (16, 4)
    assert meta.positions.tolist() == list(range(10)) + [16, 2] + list(range(16, 20))
    assert meta.block_tables.dtype == torch.int32 and meta.slot_mapping.dtype == torch.int64
    owned = [meta.block_tables[i, : -(-s // bs)].tolist() for i, s in enumerate(seq_lens)]
    flat = [b for blocks in owned for b in blocks]
    assert len(set(flat)) == len(flat), "requests must not share blocks"
    assert flat != sorted(flat), "block tables should be scattered, not contiguous"
    # slot of request 3's first new token: position 16 -> its 5th block, offset 0
    assert int(meta.slot_mapping[12]) == owned[3][4] * bs
    slots = context_slot_mapping(meta, bs)
    assert torch.equal(slots[new_token_mask(meta)], meta.slot_mapping)


@pytest.mark.parametrize(
    "seq_lens,q_lens,num_blocks,match",
    [
        ([4], [5], 8, "query length"),
        ([4], [0], 8, "query length"),
        ([40], [1], 4, "needs 10 blocks"),
        ([4, 4], [1], 8, "one query length per sequence"),
    ],
)
def test_make_forward_batch_rejects_bad_batches(seq_lens, q_lens, num_blocks, match):
    with pytest.raises(ValueError, match=match):
        make_forward_batch(seq_lens, q_lens, 4, num_blocks)


def test_padding_is_laid_out_as_core_s_static_shape_runner_pads():
    """octavo.model_runner's module doc: padding tokens carry slot -1 and position 0 past the
    last request's; padding requests have q_len 0 and seq_len 0; the counts are the real ones."""
    g = torch.Generator().manual_seed(4)
    meta = make_forward_batch([9, 5], [2, 5], 4, 8, "cpu", g, pad_tokens=3, pad_reqs=2)
    assert meta.slot_mapping.shape == meta.positions.shape == meta.input_ids.shape == (10,)
    assert meta.slot_mapping[7:].tolist() == [-1] * 3 and meta.positions[7:].tolist() == [0] * 3
    assert (meta.slot_mapping[:7] >= 0).all()
    assert meta.query_start_loc_cpu == [0, 2, 7, 7, 7] and meta.seq_lens_cpu == [9, 5, 0, 0]
    assert meta.block_tables.shape == (4, 3) and not meta.block_tables[2:].any()
    assert (meta.num_reqs, int(meta.num_reqs_t), int(meta.num_tokens_t)) == (4, 2, 7)
    assert (meta.max_query_len, meta.max_seq_len) == (5, 9)


def test_history_batch_writes_exactly_the_context_before_the_step():
    g = torch.Generator().manual_seed(5)
    bs = 4
    meta = make_forward_batch([10, 1, 7], [1, 1, 7], bs, 16, "cpu", g)
    past = history_batch(meta, bs)
    slots, new = context_slot_mapping(meta, bs), new_token_mask(meta)
    assert torch.equal(past.slot_mapping, slots[~new])  # request 0's 9 earlier tokens; the others have none
    assert past.seq_lens_cpu == [9] and past.query_start_loc_cpu == [0, 9]
    assert torch.equal(past.block_tables[0, :3], meta.block_tables[0, :3])
    assert history_batch(make_forward_batch([3, 1], [3, 1], bs, 4, "cpu", g), bs) is None


def test_every_slot_batch_covers_every_slot_once():
    batch = every_slot_batch(5, 4)
    assert sorted(batch.slot_mapping.tolist()) == list(range(20))
    assert batch.seq_lens_cpu == [4] * 5 and batch.block_tables.view(-1).tolist() == list(range(5))


def _transformers_llama():
    return pytest.importorskip("transformers.models.llama.modeling_llama")


@pytest.mark.parametrize("head_dim,rot_dim", [(64, 64), (80, 80), (128, 64)])
def test_rotary_matches_transformers(head_dim, rot_dim):
    llama = _transformers_llama()
    g = torch.Generator().manual_seed(4)
    tokens, max_pos = 11, 2048
    q = torch.randn(tokens, 8, head_dim, generator=g)
    k = torch.randn(tokens, 2, head_dim, generator=g)
    positions = torch.randint(0, max_pos, (tokens,), generator=g)
    table = make_cos_sin_cache(rot_dim, max_pos, base=10000.0)
    got_q, got_k = reference.rotary(q, k, positions, table)

    # transformers' layout: [batch, heads, seq, dim], cos/sin repeated over both halves
    # (its LlamaRotaryEmbedding computes the same angles); partial rotary applies it
    # to the first rot_dim features, as Phi/GLM/NeoX do
    cos, sin = table[positions].chunk(2, dim=-1)
    cos, sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
    want_q, want_k = llama.apply_rotary_pos_emb(
        q[..., :rot_dim].transpose(0, 1)[None], k[..., :rot_dim].transpose(0, 1)[None], cos, sin
    )
    want_q = torch.cat((want_q[0].transpose(0, 1), q[..., rot_dim:]), -1)
    want_k = torch.cat((want_k[0].transpose(0, 1), k[..., rot_dim:]), -1)
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)


def test_rotary_table_matches_transformers_rotary_embedding():
    llama = _transformers_llama()
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=512)
    emb = llama.LlamaRotaryEmbedding(config)
    positions = torch.arange(0, 512, 7)[None]
    cos, sin = emb(torch.zeros(1, dtype=torch.float32), positions)
    table = make_cos_sin_cache(64, 512, base=config.rope_parameters["rope_theta"])[positions[0]]
    # transformers forms the angles in float32, the kit in float64: ~pos * 1e-7 apart
    torch.testing.assert_close(table, torch.cat((cos[0, :, :32], sin[0, :, :32]), -1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 32)])
def test_rms_norm_matches_transformers(shape):
    llama = _transformers_llama()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=g) * 3
    residual = torch.randn(*shape, generator=g)
    norm = llama.LlamaRMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(shape[-1], generator=g))
        torch.testing.assert_close(reference.rms_norm(x, norm.weight, 1e-5), norm(x))
        normed, new_residual = reference.rms_norm(x, norm.weight, 1e-5, residual)
        torch.testing.assert_close(new_residual, x + residual)
        torch.testing.assert_close(normed, norm(x + residual))


def test_rms_norm_rounds_as_transformers_in_bf16():
    """The definition rounds the normalized value to x's dtype before the weight multiplies
    it, as Llama does: in bf16 the two agree bit for bit (greedy equality depends on it)."""
    llama = _transformers_llama()
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(6, 96, generator=g) * 3).bfloat16()
    norm = llama.LlamaRMSNorm(96, eps=1e-6).bfloat16()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(96, generator=g))
        assert torch.equal(reference.rms_norm(x, norm.weight, 1e-6), norm(x))


def test_silu_and_mul_and_linear_match_torch_functional():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 2 * 24, generator=g)
    torch.testing.assert_close(reference.silu_and_mul(x), torch.nn.functional.silu(x[:, :24]) * x[:, 24:])
    w, b = torch.randn(10, 48, generator=g), torch.randn(10, generator=g)
    torch.testing.assert_close(reference.linear(x, w, b), x @ w.T + b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reference.linear(x, w), x @ w.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_inverse_cdf_sample_draws_the_float64_cdf_s_token(temperature):
    """The definition of `FusedOps.sample` against the CDF computed in float64 the plain way:
    the drawn token k has cdf[k - 1] <= u < cdf[k], and never a -inf logit."""
    g = torch.Generator().manual_seed(9)
    rows, vocab = 32, 1000  # not a multiple of the two-level scan's block
    logits = torch.randn(rows, vocab, generator=g) * 3
    logits[:, ::3] = float("-inf")
    temps = None if temperature is None else torch.full((rows,), temperature)
    u = torch.rand(rows, generator=g)
    u[0], u[1] = 0.0, 1.0 - 2.0**-24
    tokens = inverse_cdf_sample(logits, temps, u)
    x = logits.double() / (1.0 if temps is None else temps.double().unsqueeze(1))
    cdf = torch.softmax(x, dim=-1).cumsum(dim=-1)
    for i, k in enumerate(tokens.tolist()):
        assert logits[i, k] != float("-inf"), (i, k)
        lo = float(cdf[i, k - 1]) if k > 0 else 0.0
        assert lo - 1e-6 <= float(u[i]) < float(cdf[i, k]) + 1e-6, (i, k, float(u[i]), lo, float(cdf[i, k]))


def test_reference_linear_method_through_a_linear_layer():
    g = torch.Generator().manual_seed(10)
    method = reference.ReferenceLinearMethod(reference.ReferencePlatform.device_cls())
    layer = Linear(48, 10, method, bias=True)
    w, b, x = torch.randn(10, 48, generator=g), torch.randn(10, generator=g), torch.randn(3, 48, generator=g)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    method.process_weights_after_loading(layer)
    torch.testing.assert_close(layer(x), x @ w.T + b, atol=1e-5, rtol=1e-5)


def test_reference_platform_routes_every_kernel_to_the_reference():
    platform = reference.ReferencePlatform()
    assert platform.name == "reference" and platform.availability().score == 1
    assert isinstance(platform.attention, reference.ReferenceAttention)
    assert isinstance(platform.linear, reference.ReferenceLinearMethod)
    assert type(platform.linear).apply is not LinearMethod.apply, "linear uses the core default"
    # the fused ops are core's definitions, which the kit re-exports: one definition each
    assert type(platform.ops) is FusedOps
    for op in ("rms_norm", "rotary", "silu_and_mul"):
        assert getattr(reference, op) is getattr(definitions, op)
    x = torch.randn(3, 16).bfloat16()
    w = torch.ones(16).bfloat16()
    assert platform.ops.rms_norm(x, w, 1e-6).dtype == torch.bfloat16
    assert torch.equal(platform.ops.silu_and_mul(x), reference.silu_and_mul(x))
