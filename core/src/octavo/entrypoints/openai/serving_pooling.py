"""Pooling routes (a server started with --runner pooling): `/v1/embeddings` (OpenAI's
shape), `/pooling`, `/classify`, `/score`, `/rerank` and `/v1/rerank` (vLLM's shapes).

Every input of a request is its own engine request, so they batch with each other and
with other clients' under the scheduler; a bad input refuses the whole request with an
OpenAI-style 400 before any runs.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any, Literal

import torch
import torch.nn.functional as F
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from octavo.async_engine import AsyncLLMEngine
from octavo.entrypoints.openai.errors import BadRequestError
from octavo.entrypoints.openai.limits import RequestLimits
from octavo.entrypoints.openai.serving_engine import OpenAIServing
from octavo.pooling.outputs import PoolingRequestOutput
from octavo.pooling.pairs import pair_token_ids
from octavo.pooling_params import PoolingParams

Input = str | list[str] | list[int] | list[list[int]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use (user)
    model: str | None = None
    truncate_prompt_tokens: int | None = None


class EmbeddingRequest(_Body):
    input: Input
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    normalize: bool | None = None


class PoolingRequest(EmbeddingRequest):
    # vLLM's: "token_embed" / "token_classify" return one row per prompt token; None: "encode"
    task: str | None = None


class ClassificationRequest(_Body):
    input: Input


class ScoreRequest(_Body):
    text_1: str | list[str]
    text_2: str | list[str]


class RerankRequest(_Body):
    query: str
    documents: list[str]
    top_n: int | None = None


class OpenAIServingPooling(OpenAIServing):
    def __init__(self, engine: AsyncLLMEngine, served_model_names: list[str], limits: RequestLimits) -> None:
        super().__init__(engine, served_model_names, None, limits)
        self.classifier = engine.engine.classifier  # a PoolingEngine's (None: an embedder)

    # ---- inputs -------------------------------------------------------------------------------
    def prompts(self, value: Input, param: str = "input") -> list[dict]:
        """OpenAI's input forms (a text, texts, token ids, lists of token ids) as engine prompts."""
        items: list = [value] if isinstance(value, str) else list(value)
        if not items:
            raise BadRequestError(f"'{param}' is empty; give at least one text or token list", param=param)
        if all(isinstance(v, int) for v in items):
            items = [items]  # one list of token ids
        texts = [v for v in items if isinstance(v, str)]
        self.check_prompt_bytes(texts, param)
        prompts = []
        for v in items:
            if isinstance(v, str):
                prompts.append({"prompt_token_ids": self.encode(v, add_special_tokens=True)})
            elif isinstance(v, list) and v and all(isinstance(t, int) for t in v):
                prompts.append({"prompt_token_ids": v})
            else:
                raise BadRequestError(f"'{param}' must be texts or non-empty lists of token ids", param=param)
        return prompts

    async def run(self, prompts: list[dict], params: PoolingParams) -> list[PoolingRequestOutput]:
        base = f"pool-{uuid.uuid4().hex[:12]}"
        try:
            return await asyncio.gather(*(self.engine.encode(f"{base}-{i}", p, params) for i, p in enumerate(prompts)))
        except ValueError as e:  # the engine's check of one input (length, dimensions, task)
            param = "dimensions" if "dimensions" in str(e) else "task" if "task" in str(e) else "input"
            raise BadRequestError(str(e), param=param) from e

    def _params(self, body: _Body, task: str, **kw: Any) -> PoolingParams:
        try:
            return PoolingParams(truncate_prompt_tokens=body.truncate_prompt_tokens, task=task, **kw)
        except ValueError as e:
            raise BadRequestError(str(e)) from e

    @staticmethod
    def _usage(outs: list[PoolingRequestOutput]) -> dict[str, int]:
        n = sum(len(o.prompt_token_ids) for o in outs)
        return {"prompt_tokens": n, "total_tokens": n}

    def _head(self, body: _Body, kind: str) -> dict[str, Any]:
        return {
            "id": f"{kind}-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": self.model_name(body.model),
        }

    # ---- routes -------------------------------------------------------------------------------
    async def embeddings(self, body: EmbeddingRequest) -> dict:
        head = self._head(body, "embd")
        params = self._params(body, "embed", dimensions=body.dimensions, normalize=body.normalize)
        outs = await self.run(self.prompts(body.input), params)
        data = []
        for i, o in enumerate(outs):
            vec = o.outputs.data.float()
            if body.encoding_format == "base64":  # OpenAI's: little-endian float32 bytes
                emb: Any = base64.b64encode(vec.numpy().astype("<f4").tobytes()).decode()
            else:
                emb = vec.tolist()
            data.append({"object": "embedding", "embedding": emb, "index": i})
        return {**head, "data": data, "usage": self._usage(outs)}

    async def pooling(self, body: PoolingRequest) -> dict:
        head = self._head(body, "pool")
        params = self._params(body, body.task or "encode", dimensions=body.dimensions, normalize=body.normalize)
        outs = await self.run(self.prompts(body.input), params)
        data = [{"object": "pooling", "data": o.outputs.data.tolist(), "index": i} for i, o in enumerate(outs)]
        return {**head, "data": data, "usage": self._usage(outs)}

    async def classify(self, body: ClassificationRequest) -> dict:
        head = self._head(body, "classify")
        outs = await self.run(self.prompts(body.input), self._params(body, "classify"))
        labels = getattr(self.engine.model_config.hf_config, "id2label", None) or {}
        data = []
        for i, o in enumerate(outs):
            probs = o.outputs.data.tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": labels.get(best, str(best)), "probs": probs, "num_classes": len(probs)})
        return {**head, "data": data, "usage": self._usage(outs)}

    async def _scores(self, body: _Body, firsts: list[str], seconds: list[str]) -> tuple[list[float], dict]:
        """data_2's scores against data_1 (one text, or one per text of data_2), as LLM.score."""
        if not seconds:
            raise BadRequestError("there is nothing to score: the second list is empty", param="text_2")
        if len(firsts) not in (1, len(seconds)):
            raise BadRequestError(f"give one first text or {len(seconds)}, got {len(firsts)}", param="text_1")
        firsts = firsts * len(seconds) if len(firsts) == 1 else firsts
        if self.classifier is not None:  # a cross-encoder: each pair tokenized together
            if self.classifier.out_features != 1:
                raise BadRequestError("this model is a classifier with several labels; scores need one label")
            self.check_prompt_bytes(firsts + seconds, "text_2")
            hf_config = self.engine.model_config.hf_config
            pairs = [
                {"prompt_token_ids": pair_token_ids(self.tokenizer, hf_config, a, b)} for a, b in zip(firsts, seconds)
            ]
            outs = await self.run(pairs, self._params(body, "score"))
            return [float(o.outputs.data[0]) for o in outs], self._usage(outs)
        outs = await self.run(self.prompts(firsts + seconds), self._params(body, "embed"))
        a = torch.stack([o.outputs.data for o in outs[: len(firsts)]])
        b = torch.stack([o.outputs.data for o in outs[len(firsts) :]])
        return F.cosine_similarity(a, b, dim=-1).tolist(), self._usage(outs)

    async def score(self, body: ScoreRequest) -> dict:
        head = self._head(body, "score")
        t1 = [body.text_1] if isinstance(body.text_1, str) else body.text_1
        t2 = [body.text_2] if isinstance(body.text_2, str) else body.text_2
        scores, usage = await self._scores(body, t1, t2)
        return {
            **head,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": usage,
        }

    async def rerank(self, body: RerankRequest) -> dict:
        head = self._head(body, "rerank")
        scores, usage = await self._scores(body, [body.query], body.documents)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n or None]
        results = [{"index": i, "document": {"text": body.documents[i]}, "relevance_score": scores[i]} for i in order]
        return {
            "id": head["id"],
            "model": head["model"],
            "usage": {"total_tokens": usage["total_tokens"]},
            "results": results,
        }


def add_pooling_routes(
    app: FastAPI, engine: AsyncLLMEngine, served_model_names: list[str], limits: RequestLimits, responses: dict
) -> None:
    serving = OpenAIServingPooling(engine, served_model_names, limits)
    app.post("/v1/embeddings", responses=responses)(serving.embeddings)
    app.post("/pooling", responses=responses)(serving.pooling)
    app.post("/classify", responses=responses)(serving.classify)
    app.post("/score", responses=responses)(serving.score)
    app.post("/v1/score", responses=responses)(serving.score)
    app.post("/rerank", responses=responses)(serving.rerank)
    app.post("/v1/rerank", responses=responses)(serving.rerank)
