"""Multi-vector outputs (issue 26): vLLM's `token_embed` and `token_classify` pooling tasks
return one row per prompt token. References: transformers' last hidden states of the same
checkpoint (normalized per row, as sentence-transformers' Normalize does for a vector), and
transformers' own classification head applied to every position's hidden state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_pooling import LENGTHS, _hf_hidden, _llm, _save
from tiny_models import random_prompts, smollm2_tokenizer, tiny_config, tiny_encoder_config

from octavo.pooling_params import PoolingParams

MIN_COS = 0.9999


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(len(LENGTHS), LENGTHS, len(smollm2_tokenizer()), seed=36)


def _assert_rows_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    cos = F.cosine_similarity(got, want, dim=-1)
    assert float(cos.min()) >= MIN_COS, f"{what}: row {int(cos.argmin())} cosine {float(cos.min()):.6f} < {MIN_COS}"


def test_decoder_token_embed_matches_transformers(prompts, tmp_path):
    """Every prompt position's row, computed in chunks (a step budget of 32 tokens), batched
    with single-vector requests; a repeated prompt hits the prefix cache and must still
    return every position's row; dimensions and normalize apply per row."""
    from transformers import LlamaModel

    torch.manual_seed(36)
    path = _save(LlamaModel(tiny_config("llama")).float(), str(tmp_path / "llama"))
    llm = _llm(path, max_num_batched_tokens=32, max_model_len=128, enable_prefix_caching=True)
    batch = [{"prompt_token_ids": p} for p in prompts]
    outs = llm.encode(batch, use_tqdm=False, pooling_task="token_embed")
    for p, out in zip(prompts, outs):
        assert out.prompt_token_ids == p
        _assert_rows_close(out.outputs.data, F.normalize(_hf_hidden(path, p), dim=-1), f"{len(p)} tokens")
        assert torch.allclose(out.outputs.data.norm(dim=-1), torch.ones(len(p)), atol=1e-5)
    # the same prompt again, its blocks now cached: every row must still be computed
    again = llm.encode(batch[3:4], use_tqdm=False, pooling_task="token_embed")[0]
    torch.testing.assert_close(again.outputs.data, outs[3].outputs.data)
    # a prompt sharing the cached prompt's first blocks: its rows past the shared prefix too
    longer = prompts[3][:48] + prompts[1]
    got = llm.encode([{"prompt_token_ids": longer}], PoolingParams(normalize=False), False, pooling_task="token_embed")
    _assert_rows_close(got[0].outputs.data, _hf_hidden(path, longer), "after a prefix-cache hit, unnormalized")
    mixed = llm.encode(batch[:2], [PoolingParams(dimensions=16), PoolingParams()], False, pooling_task="token_embed")
    _assert_rows_close(mixed[0].outputs.data, F.normalize(_hf_hidden(path, prompts[0])[:, :16], dim=-1), "dims=16")
    one = llm.embed(batch[1:2], use_tqdm=False)[0]  # the single-vector task is unchanged: the last row
    _assert_rows_close(torch.tensor(one.outputs.embedding), mixed[1].outputs.data[-1], "embed = last row")
    engine = llm.llm_engine
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks, "KV kept"
    with pytest.raises(ValueError, match="no classifier"):
        llm.encode(batch[:1], use_tqdm=False, pooling_task="token_classify")
    with pytest.raises(ValueError, match=r"serves the .embed. task \(embed, token_embed, encode\), not .tokens."):
        llm.encode(batch[:1], use_tqdm=False, pooling_task="tokens")


def test_encoder_token_embed_matches_transformers(prompts, tmp_path):
    """BERT: every token's row of one bidirectional pass (each prompt whole in one step)."""
    from transformers import AutoModel

    torch.manual_seed(37)
    model = AutoModel.from_config(tiny_encoder_config("bert"), add_pooling_layer=False).float()
    path = _save(model, str(tmp_path / "bert"))
    outs = _llm(path, max_model_len=128).encode(
        [{"prompt_token_ids": p} for p in prompts], PoolingParams(normalize=False), False, pooling_task="token_embed"
    )
    for p, out in zip(prompts, outs):
        _assert_rows_close(out.outputs.data, _hf_hidden(path, p), f"bert, {len(p)} tokens")


@pytest.mark.parametrize("arch,num_labels", [("qwen3", 3), ("qwen3", 1), ("bert", 2)])
def test_token_classify_matches_transformers(arch, num_labels, prompts, tmp_path):
    """Per-token class probabilities: transformers' classification head over every position's
    last hidden state (softmax over labels, sigmoid for one; BERT's head is its pooler's
    dense + tanh, then the labels), chunked where causal; the pooled classify alongside."""
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_config(arch) if arch == "qwen3" else tiny_encoder_config(arch, num_labels=num_labels)
    cfg.num_labels, cfg.architectures = num_labels, None
    torch.manual_seed(38)
    hf = AutoModelForSequenceClassification.from_config(cfg).float().eval()
    path = _save(hf, str(tmp_path / "clf"))
    llm = _llm(path, max_num_batched_tokens=32 if arch == "qwen3" else 128, max_model_len=128)
    batch = [{"prompt_token_ids": p} for p in prompts]
    outs = llm.encode(batch, use_tqdm=False, pooling_task="token_classify")
    pooled = llm.classify(batch, use_tqdm=False)
    raw = llm.encode(batch[:1], PoolingParams(use_activation=False), False, pooling_task="token_classify")[0]
    pooled_row = -1 if arch == "qwen3" else 0  # last token, or BERT's [CLS]
    with torch.inference_mode():
        for i, (p, out) in enumerate(zip(prompts, outs)):
            ids = torch.tensor([p])
            if arch == "qwen3":
                logits = hf.score(hf.model(ids).last_hidden_state)[0]
            else:
                pooler = hf.bert.pooler
                logits = hf.classifier(pooler.activation(pooler.dense(hf.bert(ids).last_hidden_state)))[0]
            want = logits.sigmoid() if num_labels == 1 else logits.softmax(-1)
            torch.testing.assert_close(out.outputs.data, want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.tensor(pooled[i].outputs.probs), want[pooled_row], rtol=1e-4, atol=1e-5)
            if i == 0:
                torch.testing.assert_close(raw.outputs.data, logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="classification head"):
        llm.encode(batch[:1], use_tqdm=False, pooling_task="token_embed")
