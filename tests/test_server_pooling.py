"""`octavo serve --runner pooling`: the official openai client's `embeddings.create` (float
and base64, batches, token ids, dimensions) equals transformers' mean-pooled, normalized
hidden states; /score, /rerank and /pooling; bad inputs get OpenAI-style 400s."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F
from served import octavo_serve
from test_pooling import _hf_hidden, _save, _sentence_transformers_files
from tiny_models import random_prompts, smollm2_tokenizer, tiny_config

MIN_COS = 0.9999
TEXTS = ["The capital of France is Paris.", "Embeddings map text to vectors.", "ok"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaModel

    torch.manual_seed(30)
    path = _save(LlamaModel(tiny_config("llama")).float(), str(tmp_path_factory.mktemp("serve") / "embedder"))
    _sentence_transformers_files(path, "MEAN", normalize=True)
    return path


@pytest.fixture(scope="module")
def base(model_dir):
    argv = ["serve", model_dir, "--runner", "pooling", "--device", "cpu", "--dtype", "float32"]
    argv += ["--max-model-len", "64", "--kv-cache-memory", "16MiB", "--disable-access-log"]
    with octavo_serve(argv, timeout=120) as s:
        yield s.base


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)


def _want(model_dir: str, ids: list[int], dims: int | None = None) -> torch.Tensor:
    return F.normalize(_hf_hidden(model_dir, ids).mean(0)[:dims], dim=0)


def _check(got, want: torch.Tensor, what: str) -> None:
    got = torch.tensor(got, dtype=torch.float32)
    assert got.shape == want.shape, what
    assert float(F.cosine_similarity(got, want, dim=0)) >= MIN_COS, what


def test_embeddings_create(client, model_dir):
    tok = smollm2_tokenizer()
    res = client.embeddings.create(model=model_dir, input=TEXTS)
    assert [d.index for d in res.data] == [0, 1, 2]
    ids = [tok.encode(t) for t in TEXTS]
    for d, i in zip(res.data, ids):
        _check(d.embedding, _want(model_dir, i), "float")
    assert res.usage.prompt_tokens == sum(map(len, ids))
    # asked for explicitly, the client hands back OpenAI's base64 of little-endian float32s
    b64 = client.embeddings.create(model=model_dir, input=TEXTS[0], encoding_format="base64")
    raw = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    _check(raw.tolist(), _want(model_dir, ids[0]), "base64")
    tokens = random_prompts(2, [9, 40], len(tok), seed=30)
    res = client.embeddings.create(model=model_dir, input=tokens, dimensions=16)
    for d, i in zip(res.data, tokens):
        _check(d.embedding, _want(model_dir, i, 16), "token ids, dimensions=16")
    one = client.embeddings.create(model=model_dir, input=tokens[0])
    _check(one.data[0].embedding, _want(model_dir, tokens[0]), "one token list")


def test_bad_inputs_get_openai_errors(client, base, model_dir):
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model=model_dir, input=[])
    r = httpx.post(f"{base}/v1/embeddings", json={"input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="truncate_prompt_tokens"):
        client.embeddings.create(model=model_dir, input=[list(range(3, 100))])
    r = httpx.post(f"{base}/v1/embeddings", json={"input": [list(range(3, 100))], "truncate_prompt_tokens": 10})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 10
    r = httpx.post(f"{base}/v1/embeddings", json={"input": "x", "encoding_format": "int8"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "encoding_format" in r.json()["error"]["message"] + str(r.json()["error"].get("param"))
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=model_dir, input="x", dimensions=1000)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


def test_score_rerank_and_pooling(base, model_dir):
    tok = smollm2_tokenizer()
    vec = [_want(model_dir, tok.encode(t)) for t in TEXTS]
    r = httpx.post(f"{base}/score", json={"text_1": TEXTS[0], "text_2": TEXTS[1:]}).json()
    for d, v in zip(r["data"], vec[1:]):
        assert abs(d["score"] - float(vec[0] @ v)) < 1e-4
    r = httpx.post(f"{base}/v1/rerank", json={"query": TEXTS[0], "documents": TEXTS[1:], "top_n": 1}).json()
    best = max((1, 2), key=lambda i: float(vec[0] @ vec[i]))
    assert [x["index"] for x in r["results"]] == [best - 1]
    assert httpx.post(f"{base}/rerank", json={"query": "q", "documents": []}).status_code == 400
    r = httpx.post(f"{base}/pooling", json={"input": TEXTS[2]}).json()
    _check(r["data"][0]["data"], vec[2], "/pooling")
    # vLLM's per-token task: one normalized row per prompt token; a classifier's task is refused
    ids = tok.encode(TEXTS[0])
    r = httpx.post(f"{base}/pooling", json={"input": TEXTS[0], "task": "token_embed"}).json()
    rows, want = torch.tensor(r["data"][0]["data"]), F.normalize(_hf_hidden(model_dir, ids), dim=-1)
    assert rows.shape == want.shape and float(F.cosine_similarity(rows, want, dim=-1).min()) >= MIN_COS
    r = httpx.post(f"{base}/pooling", json={"input": TEXTS[0], "task": "token_classify"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "task", r.text
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("num_labels", [1, 3])
def test_classify_and_cross_encoder_routes(num_labels, tmp_path):
    """/classify and a cross-encoder's /score and /rerank (in process: the app `octavo serve`
    builds), against transformers' logits on the same classifier."""
    from fastapi.testclient import TestClient
    from transformers import AutoModelForSequenceClassification

    from octavo.async_engine import AsyncLLMEngine
    from octavo.engine_args import EngineArgs
    from octavo.entrypoints.openai.api_server import ServerSettings, build_app

    cfg = tiny_config("qwen3")
    cfg.num_labels, cfg.architectures = num_labels, None
    torch.manual_seed(32)
    hf = AutoModelForSequenceClassification.from_config(cfg).float().eval()
    path = _save(hf, str(tmp_path / "clf"))
    args = EngineArgs(model=path, device="cpu", dtype="float32", max_model_len=64, kv_cache_memory="16MiB")
    app = build_app(AsyncLLMEngine.from_engine_args(args, pooling=True), ServerSettings(served_model_names=["m"]))
    tok = smollm2_tokenizer()
    with TestClient(app) as http, torch.inference_mode():
        r = http.post("/classify", json={"model": "m", "input": TEXTS}).json()
        for d, t in zip(r["data"], TEXTS):
            logits = hf(torch.tensor([tok.encode(t)])).logits[0]
            want = logits.sigmoid() if num_labels == 1 else logits.softmax(-1)
            torch.testing.assert_close(torch.tensor(d["probs"]), want, rtol=1e-4, atol=1e-5)
            assert d["num_classes"] == num_labels and d["label"] == hf.config.id2label[int(want.argmax())]
        r = http.post("/pooling", json={"input": TEXTS[0], "task": "token_classify"}).json()
        logits = hf.score(hf.model(torch.tensor([tok.encode(TEXTS[0])])).last_hidden_state)[0]
        want = logits.sigmoid() if num_labels == 1 else logits.softmax(-1)
        torch.testing.assert_close(torch.tensor(r["data"][0]["data"]), want, rtol=1e-4, atol=1e-5)
        r = http.post("/score", json={"text_1": TEXTS[0], "text_2": TEXTS[1:]})
        if num_labels != 1:
            assert r.status_code == 400 and "one label" in r.json()["error"]["message"]
            return
        want = [
            float(hf(torch.tensor([tok(TEXTS[0], text_pair=t)["input_ids"]])).logits[0, 0].sigmoid()) for t in TEXTS[1:]
        ]
        got = [d["score"] for d in r.json()["data"]]
        assert len(got) == len(want) and all(abs(g - w) < 1e-5 for g, w in zip(got, want)), (got, want)
        r = http.post("/rerank", json={"query": TEXTS[0], "documents": TEXTS[1:]}).json()
        assert [x["index"] for x in r["results"]] == sorted((0, 1), key=lambda i: -want[i])
        assert http.post("/v1/embeddings", json={"input": "x"}).status_code == 400  # a classifier, not an embedder


# Qwen3-Reranker's prompt template (its model card, vLLM's example): the query's part, then the document's
RERANK_QUERY = "<|im_start|>system\nJudge whether the Document meets the requirements.<|im_end|>\n<|im_start|>user\n"
RERANK_QUERY += "<Instruct>: Given a web search query, retrieve relevant passages\n<Query>: {}\n"
RERANK_DOC = "<Document>: {}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_reranker_routes_from_yes_no_tokens(tmp_path):
    """A causal LM served as Qwen3-Reranker (vLLM's hf_overrides): /score and /rerank give
    p("yes") against p("no") at the last token of the query's and document's prompts joined,
    from transformers' causal LM logits."""
    from fastapi.testclient import TestClient
    from tiny_models import _load_hf, make_tiny_model

    from octavo.async_engine import AsyncLLMEngine
    from octavo.engine_args import EngineArgs
    from octavo.entrypoints.openai.api_server import ServerSettings, build_app

    path = make_tiny_model("qwen3", str(tmp_path / "qwen3"))
    over = {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
    }
    args = EngineArgs(
        model=path, device="cpu", dtype="float32", max_model_len=128, kv_cache_memory="16MiB", hf_overrides=over
    )
    app = build_app(AsyncLLMEngine.from_engine_args(args, pooling=True), ServerSettings(served_model_names=["m"]))
    tok, hf = smollm2_tokenizer(), _load_hf(path, None)
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    query, docs = RERANK_QUERY.format(TEXTS[0]), [RERANK_DOC.format(t) for t in TEXTS]
    with TestClient(app) as http, torch.inference_mode():
        want = []
        for d in docs:
            logits = hf(torch.tensor([tok(query + d)["input_ids"]])).logits[0, -1]
            want.append(float(logits[[no, yes]].softmax(-1)[1]))
        r = http.post("/score", json={"text_1": query, "text_2": docs})
        assert r.status_code == 200, r.text
        got = [d["score"] for d in r.json()["data"]]
        assert got == pytest.approx(want, abs=1e-5)
        r = http.post("/v1/rerank", json={"query": query, "documents": docs, "top_n": 2}).json()
        assert [x["index"] for x in r["results"]] == sorted(range(len(docs)), key=lambda i: -want[i])[:2]
        assert [x["relevance_score"] for x in r["results"]] == pytest.approx(sorted(want, reverse=True)[:2], abs=1e-5)
