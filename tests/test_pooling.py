"""Pooling models (issue 26): embeddings and classifier probabilities equal transformers' on
tiny random-weight checkpoints, with the pooling written from sentence-transformers'
definitions (Pooling: CLS / mean over the attention mask / last token; Normalize: L2)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from tiny_models import ENCODER_ARCHS, random_prompts, smollm2_tokenizer, tiny_config, tiny_encoder_config

from octavo import LLM
from octavo.pooling_params import PoolingParams

MIN_COS = 0.9999
LENGTHS = [5, 37, 3, 70, 18]  # mixed lengths in one batch, two longer than the step budget below


def _save(model, path: str) -> str:
    with torch.no_grad():  # norms with spread, so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path, safe_serialization=True)
    smollm2_tokenizer().save_pretrained(path)
    return path


def _sentence_transformers_files(path: str, mode: str, normalize: bool) -> None:
    """A sentence-transformers layout: modules.json naming a Pooling module (and Normalize)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(modules, f)
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    keys = {"CLS": "pooling_mode_cls_token", "MEAN": "pooling_mode_mean_tokens", "LAST": "pooling_mode_lasttoken"}
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 64, **{k: k == keys[mode] for k in keys.values()}}, f)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    from transformers import LlamaModel

    torch.manual_seed(26)
    return _save(LlamaModel(tiny_config("llama")).float(), str(tmp_path_factory.mktemp("embed") / "llama"))


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(len(LENGTHS), LENGTHS, len(smollm2_tokenizer()), seed=26)


@torch.inference_mode()
def _hf_hidden(path: str, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return model(torch.tensor([ids])).last_hidden_state[0]


def _st_pool(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    # sentence-transformers' Pooling on one unpadded sequence (every mask entry 1)
    return {"CLS": hidden[0], "MEAN": hidden.mean(dim=0), "LAST": hidden[-1]}[mode]


def _llm(path: str, **kw) -> LLM:
    return LLM(path, runner="pooling", device="cpu", dtype="float32", kv_cache_memory="16MiB", **kw)


def _assert_close(got: list[float], want: torch.Tensor, what: str) -> None:
    got_t = torch.tensor(got)
    assert got_t.shape == want.shape, f"{what}: shape {tuple(got_t.shape)} != {tuple(want.shape)}"
    cos = float(F.cosine_similarity(got_t, want, dim=0))
    assert cos >= MIN_COS, f"{what}: cosine {cos:.6f} < {MIN_COS}"
    torch.testing.assert_close(got_t.norm(), want.norm(), rtol=1e-3, atol=1e-4, msg=what)


@pytest.mark.parametrize("mode", ["MEAN", "LAST", "CLS"])
def test_decoder_embeddings_match_transformers(mode, decoder_dir, prompts, tmp_path):
    """Every pooling mode, read from sentence-transformers' files, over a batch of mixed
    lengths computed in chunks (a step budget of 32 tokens), normalized by its Normalize."""
    path = str(tmp_path / "model")  # the same weights with their own sentence-transformers files
    os.makedirs(path)
    for name in os.listdir(decoder_dir):
        os.symlink(os.path.join(decoder_dir, name), os.path.join(path, name))
    _sentence_transformers_files(path, mode, normalize=True)
    llm = _llm(path, max_num_batched_tokens=32, max_model_len=128, enable_prefix_caching=True)
    outs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    for p, out in zip(prompts, outs):
        want = F.normalize(_st_pool(_hf_hidden(decoder_dir, p), mode), dim=0)
        _assert_close(out.outputs.embedding, want, f"{mode} pooling of {len(p)} tokens")
        assert out.prompt_token_ids == p
    # a repeated prompt hits the prefix cache: mean pooling must still see every position
    again = llm.embed([{"prompt_token_ids": prompts[3]}], use_tqdm=False)[0]
    torch.testing.assert_close(torch.tensor(again.outputs.embedding), torch.tensor(outs[3].outputs.embedding))
    assert llm.llm_engine.block_manager.num_free_blocks == llm.llm_engine.block_manager.num_blocks, "KV kept"


def test_dimensions_normalize_and_truncation(decoder_dir, prompts):
    """Matryoshka dimensions (first n features, then normalized), normalize=False, and
    truncate_prompt_tokens keeping the last tokens; too long a prompt without it is refused."""
    llm = _llm(decoder_dir, max_model_len=64)  # no sentence-transformers files: last token, normalized
    p = prompts[1]
    hidden = _hf_hidden(decoder_dir, p)
    out = llm.embed([{"prompt_token_ids": p}], PoolingParams(dimensions=16), use_tqdm=False)[0]
    _assert_close(out.outputs.embedding, F.normalize(hidden[-1][:16], dim=0), "dimensions=16")
    raw = llm.embed([{"prompt_token_ids": p}], PoolingParams(normalize=False), use_tqdm=False)[0]
    _assert_close(raw.outputs.embedding, hidden[-1], "normalize=False")
    long = prompts[3]  # 70 tokens > max_model_len 64
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        llm.embed([{"prompt_token_ids": long}], use_tqdm=False)
    cut = llm.embed([{"prompt_token_ids": long}], truncate_prompt_tokens=20, use_tqdm=False)[0]
    assert cut.prompt_token_ids == long[-20:]
    _assert_close(cut.outputs.embedding, F.normalize(_hf_hidden(decoder_dir, long[-20:])[-1], dim=0), "truncated")
    with pytest.raises(ValueError, match="dimensions"):
        llm.embed(["x"], PoolingParams(dimensions=65), use_tqdm=False)
    scores = llm.score({"prompt_token_ids": p}, [{"prompt_token_ids": q} for q in prompts[:3]], use_tqdm=False)
    for q, s in zip(prompts[:3], scores):
        want = F.cosine_similarity(hidden[-1], _hf_hidden(decoder_dir, q)[-1], dim=0)
        assert abs(s.outputs.score - float(want)) < 1e-4


@pytest.mark.parametrize("arch,num_labels", [("llama", 3), ("qwen3", 1)])
def test_sequence_classification_matches_transformers(arch, num_labels, prompts, tmp_path):
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_config(arch)
    cfg.num_labels = num_labels
    cfg.architectures = None
    torch.manual_seed(27)
    hf = AutoModelForSequenceClassification.from_config(cfg).float().eval()
    path = _save(hf, str(tmp_path / arch))
    llm = _llm(path, max_num_batched_tokens=32, max_model_len=128)
    outs = llm.classify([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    with torch.inference_mode():
        for p, out in zip(prompts, outs):
            logits = hf(torch.tensor([p])).logits[0]
            want = logits.sigmoid() if num_labels == 1 else logits.softmax(-1)
            torch.testing.assert_close(torch.tensor(out.outputs.probs), want, rtol=1e-4, atol=1e-5)
            raw = llm.classify([{"prompt_token_ids": p}], PoolingParams(use_activation=False), use_tqdm=False)[0]
            torch.testing.assert_close(torch.tensor(raw.outputs.probs), logits, rtol=1e-4, atol=1e-4)
    if num_labels == 1:  # a cross-encoder: score = the pair's probability, tokenized together
        tok = smollm2_tokenizer()
        got = llm.score("a query", ["one document", "another"], use_tqdm=False)
        with torch.inference_mode():
            for doc, s in zip(["one document", "another"], got):
                ids = tok("a query", text_pair=doc)["input_ids"]
                assert abs(s.outputs.score - float(hf(torch.tensor([ids])).logits[0, 0].sigmoid())) < 1e-5


RERANKER = {"architectures": None, "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}


@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])  # a separate lm_head, and one tied to the embedding
def test_reranker_from_yes_no_tokens_matches_transformers(arch, prompts, tmp_path):
    """Qwen3-Reranker as vLLM serves it: a causal LM with hf_overrides naming a
    sequence-classification architecture and classifier_from_token ["no", "yes"]; its score is
    p(yes) against p(no) at the last token, computed here from transformers' causal LM logits."""
    from tiny_models import _load_hf, make_tiny_model

    path = make_tiny_model(arch, str(tmp_path / arch))
    tok = smollm2_tokenizer()
    no, yes = (tok.encode(t, add_special_tokens=False)[0] for t in ("no", "yes"))
    cls = {"qwen3": "Qwen3ForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification"}[arch]
    llm = _llm(path, max_model_len=128, hf_overrides={**RERANKER, "architectures": [cls]})
    outs = llm.classify([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    hf = _load_hf(path, None)
    with torch.inference_mode():
        for p, out in zip(prompts, outs):
            logits = hf(torch.tensor([p])).logits[0, -1]
            want = logits[[no, yes]].softmax(-1)[1]
            assert out.outputs.probs == pytest.approx([float(want)], abs=1e-5)
    # scoring a query against documents: as vLLM scores an LLM turned reranker, the two texts
    # joined into one string and tokenized together (a query ending in a space: the join merges)
    query, docs = "<Query>: a query ", ["one document", "another"]
    assert any(tok(query + d)["input_ids"] != tok(query, text_pair=d)["input_ids"] for d in docs)
    got = llm.score(query, docs, use_tqdm=False)
    with torch.inference_mode():
        for doc, s in zip(docs, got):
            logits = hf(torch.tensor([tok(query + doc)["input_ids"]])).logits[0, -1]
            assert s.outputs.score == pytest.approx(float(logits[[no, yes]].softmax(-1)[1]), abs=1e-5)


def test_classifier_from_token_methods_match_transformers(prompts, tmp_path):
    """vLLM's other `method`, no_post_processing: one label per token, the head's logits of
    those tokens as they are (softmax over several, sigmoid for one); tokens are looked up as
    spelled in the vocabulary ('Ġyes' is the token of ' yes')."""
    from tiny_models import _load_hf, make_tiny_model

    path = make_tiny_model("qwen3", str(tmp_path / "qwen3"))
    vocab = smollm2_tokenizer().get_vocab()
    hf = _load_hf(path, None)
    batch = [{"prompt_token_ids": p} for p in prompts[:3]]
    for tokens in (["no", "yes"], ["Ġyes"]):
        over = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": tokens}
        outs = _llm(path, max_model_len=128, hf_overrides={**over, "method": "no_post_processing"}).classify(
            batch, use_tqdm=False
        )
        with torch.inference_mode():
            for p, out in zip(prompts, outs):
                logits = hf(torch.tensor([p])).logits[0, -1, [vocab[t] for t in tokens]]
                want = logits.sigmoid() if len(tokens) == 1 else logits.softmax(-1)
                assert out.outputs.probs == pytest.approx(want.tolist(), abs=1e-5), tokens


def test_reranker_overrides_are_checked(tmp_path):
    from tiny_models import make_tiny_model

    from octavo.entrypoints.cli import build_parser

    path = make_tiny_model("qwen3", str(tmp_path / "qwen3"))
    over = {"architectures": ["Qwen3ForSequenceClassification"]}
    with pytest.raises(ValueError, match="takes two tokens"):
        _llm(path, hf_overrides={**over, "classifier_from_token": ["yes"], "method": "from_2_way_softmax"})
    with pytest.raises(ValueError, match="not in this model's vocabulary"):
        _llm(path, hf_overrides={**over, "classifier_from_token": ["no", "a whole sentence of tokens"]})
    with pytest.raises(ValueError, match="method must be"):
        _llm(path, hf_overrides={**over, "classifier_from_token": ["no", "yes"], "method": "softmax"})
    with pytest.raises(ValueError, match="JSON object"):
        _llm(path, hf_overrides=["architectures"])
    # vLLM's docs spell the flag with an underscore: `vllm serve ... --hf_overrides '{...}'`
    for flag in ("--hf-overrides", "--hf_overrides"):
        args = build_parser().parse_args(["serve", path, flag, '{"classifier_from_token": ["no", "yes"]}'])
        assert args.hf_overrides == {"classifier_from_token": ["no", "yes"]}


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_encoder_embeddings_match_transformers(arch, prompts, tmp_path):
    """BERT / XLM-R: bidirectional attention through the platform's back end, absolute
    positions, token type 0; [CLS] pooling by default and mean from sentence-transformers'
    files; a batch of mixed lengths (each prompt whole in one step: no chunks)."""
    from transformers import AutoModel

    torch.manual_seed(28)
    path = _save(
        AutoModel.from_config(tiny_encoder_config(arch), add_pooling_layer=False).float(), str(tmp_path / arch)
    )
    batch = [{"prompt_token_ids": p} for p in prompts]
    outs = _llm(path, max_model_len=128).embed(batch, use_tqdm=False)
    for p, out in zip(prompts, outs):
        _assert_close(out.outputs.embedding, F.normalize(_hf_hidden(path, p)[0], dim=0), f"{arch} CLS, {len(p)} tokens")
    _sentence_transformers_files(path, "MEAN", normalize=False)
    outs = _llm(path, max_model_len=128).embed(batch, use_tqdm=False)
    for p, out in zip(prompts, outs):
        _assert_close(out.outputs.embedding, _hf_hidden(path, p).mean(0), f"{arch} mean, {len(p)} tokens")
    # a prompt that shares whole blocks with one before it: an encoder's KV of those blocks
    # depends on what follows them, so the prefix cache must not serve them
    llm = _llm(path, max_model_len=128, pooling_type="LAST", enable_prefix_caching=True)
    first = prompts[3][:48]
    llm.embed([{"prompt_token_ids": first}], use_tqdm=False)
    second = first + prompts[1][:5]
    out = llm.embed([{"prompt_token_ids": second}], PoolingParams(normalize=False), use_tqdm=False)[0]
    _assert_close(out.outputs.embedding, _hf_hidden(path, second)[-1], f"{arch} after a shared prefix")
    llm.llm_engine.runner.profile_run()  # the activation-peak forward of GPUs: no logits, no sampler


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_encoder_classification_matches_transformers(arch, prompts, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(29)
    hf = AutoModelForSequenceClassification.from_config(tiny_encoder_config(arch, num_labels=3)).float().eval()
    path = _save(hf, str(tmp_path / arch))
    outs = _llm(path, max_model_len=128).classify([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    with torch.inference_mode():
        for p, out in zip(prompts, outs):
            want = hf(torch.tensor([p])).logits[0].softmax(-1)
            torch.testing.assert_close(torch.tensor(out.outputs.probs), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,mode", [("bert", "MEAN"), ("llama", "LAST")])
def test_sentence_transformers_encode(arch, mode, tmp_path):
    """sentence-transformers itself, on texts, over the same checkpoint and its files."""
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel, LlamaModel

    torch.manual_seed(31)
    if arch == "bert":
        model = AutoModel.from_config(tiny_encoder_config(arch), add_pooling_layer=False)
    else:
        model = LlamaModel(tiny_config(arch))
    path = _save(model.float(), str(tmp_path / arch))
    _sentence_transformers_files(path, mode, normalize=True)
    texts = ["The capital of France is Paris.", "a", "Embeddings of texts of different lengths, batched. " * 4]
    want = st.SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True, batch_size=3)
    outs = _llm(path, max_model_len=128).embed(texts, use_tqdm=False)
    for t, out, w in zip(texts, outs, want):
        _assert_close(out.outputs.embedding, w.float(), f"{arch} {mode}: {t[:20]!r}")


def test_bert_cross_encoder_scores_sentence_pairs(tmp_path):
    """A BERT cross-encoder (one label): each pair tokenized together, its second part token
    type 1 as transformers' token_type_ids, scored like transformers (and batched with others)."""
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    words = "the a capital of france is paris moon far how query document one two three".split()
    path = str(tmp_path / "cross")
    os.makedirs(path)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(os.path.join(path, "vocab.txt"))
    torch.manual_seed(33)
    hf = AutoModelForSequenceClassification.from_config(tiny_encoder_config("bert", num_labels=1)).float().eval()
    hf.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    query, docs = "how far is the moon", ["the moon is far", "paris is the capital of france", "one two three"]
    got = _llm(path, max_model_len=128).score(query, docs, use_tqdm=False)
    with torch.inference_mode():
        for doc, s in zip(docs, got):
            enc = tok(query, doc, return_tensors="pt")
            assert enc["token_type_ids"].max() == 1  # the reference does use the second type
            want = float(hf(**enc).logits[0, 0].sigmoid())
            assert abs(s.outputs.score - want) < 1e-5, (doc, s.outputs.score, want)
