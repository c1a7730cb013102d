"""PoolingEngine: embeddings and classifier scores under the same scheduler as generation.

A pooling request is a prompt that is computed and never extended: the scheduler batches
its prompt (chunked or whole) with the other requests' as for any prefill; the step's
hidden states are pooled per request (octavo.pooling.pooler) instead of sampled, and the
request ends, its KV blocks freed, when its last prompt chunk ran. No decode step runs.
"""

from __future__ import annotations

import os
import time

import torch

from octavo.engine import LLMEngine, PromptType
from octavo.engine_args import EngineArgs
from octavo.model_runner import ModelRunner
from octavo.pooling.config import read_pooler_config
from octavo.pooling.outputs import PoolingOutput, PoolingRequestOutput
from octavo.pooling.pooler import ALL, PoolingState, activate, embed
from octavo.pooling_params import CLASSIFY_TASKS, EMBED_TASKS, PoolingParams
from octavo.request import Request, RequestStatus
from octavo.sampling_params import SamplingParams
from octavo.scheduler import Scheduler, SchedulerOutput


class _Pooling:
    __slots__ = ("req", "params", "state")

    def __init__(self, req: Request, params: PoolingParams, state: PoolingState) -> None:
        self.req, self.params, self.state = req, params, state


class PoolingEngine(LLMEngine):
    def __init__(self, args: EngineArgs, pooling_type: str | None = None) -> None:
        super().__init__(args)
        if not isinstance(self.runner, ModelRunner):
            self.shutdown()
            raise ValueError(
                f"pooling models need core's step runner; platform {self.platform.name!r} brings its own "
                f"({type(self.runner).__name__}); use --device cpu or cuda"
            )
        model = self.runner.model
        path = self.model_config.weights_path
        directory = path if path is None or os.path.isdir(path) else os.path.dirname(path)
        self.pooler = read_pooler_config(directory, self.model_config.hf_config, pooling_type)
        #: the classifier over the pooled state (`*ForSequenceClassification`), or None: an embedder
        self.classifier = getattr(model, "score", None)
        self.hidden_size = self.model_config.hf_config.hidden_size
        embeddings = getattr(model, "embeddings", None)
        if embeddings is not None and hasattr(embeddings, "sep_token_id"):  # BERT: sentence pairs' token types
            embeddings.sep_token_id = self.tokenizer.sep_token_id
        bidirectional = any(not spec.causal for spec in self.runner.specs)
        # Pooling every position (MEAN, CLS) needs every position computed, and a bidirectional
        # layer's KV of a prefix depends on the tokens after it: neither may reuse cached blocks
        self._compute_whole_prompt = bidirectional or self.pooler.pooling_type != "LAST"
        if bidirectional:
            # A bidirectional layer's block is never reusable, so it stays out of the prefix
            # cache: a freed block then goes back to the front of the free queue and is reused
            # at once, rather than new blocks being taken (first writes to never-used blocks
            # of the CPU's lazily committed cache cost a page fault per 4 KiB: BERT-small, 100
            # inputs, one thread: write_kv 2.6 s of an 18.3 s embed before this)
            self.block_manager.enable_prefix_caching = False
            # a bidirectional layer must see the whole prompt in one step: no chunks
            sc = self.config.scheduler
            self.scheduler = Scheduler(
                self.block_manager,
                sc.max_num_seqs,
                sc.max_num_batched_tokens,
                self.model_config.max_model_len,
                chunked_prefill=False,
                mixed_steps=sc.mixed_steps,
            )
        self.pooling: dict[str, _Pooling] = {}

    @property
    def task(self) -> str:
        return "classify" if self.classifier is not None else "embed"

    # ---- requests -------------------------------------------------------------------------
    def add_pooling_request(self, request_id: str, prompt: PromptType, params: PoolingParams) -> list[int]:
        """Queue a prompt to pool; returns its token ids (after truncation)."""
        if request_id in self.pooling:
            raise ValueError(f"request id {request_id!r} is already in use")
        task = params.task or self.task
        tasks = EMBED_TASKS if self.classifier is None else CLASSIFY_TASKS
        if task not in tasks:
            raise ValueError(
                f"this model serves the {self.task!r} task ({', '.join(tasks)}), not {task!r}"
                + (" (it has a classification head)" if self.classifier is not None else " (it has no classifier)")
            )
        per_token = task.startswith("token_")
        if params.dimensions is not None and (self.classifier is not None or params.dimensions > self.hidden_size):
            raise ValueError(
                f"dimensions={params.dimensions} is not supported: this model's embeddings have "
                f"{self.hidden_size} features" + (" (and it is a classifier)" if self.classifier is not None else "")
            )
        _, ids = self._tokenize(prompt)
        if not ids:
            raise ValueError("the input is empty; give at least one token")
        max_len = self.model_config.max_model_len
        keep = params.truncate_prompt_tokens
        if keep is not None:
            keep = max_len if keep == -1 else keep
            if keep > max_len:
                raise ValueError(f"truncate_prompt_tokens={keep} exceeds this model's context of {max_len} tokens")
            ids = ids[-keep:]
        if len(ids) > max_len:
            raise ValueError(
                f"the input has {len(ids)} tokens, but this model's context (max_model_len) is {max_len} tokens; "
                "shorten it or set truncate_prompt_tokens"
            )
        if not self.scheduler.chunked_prefill and len(ids) > self.config.scheduler.max_num_batched_tokens:
            raise ValueError(
                f"the input has {len(ids)} tokens, more than one step computes (max_num_batched_tokens="
                f"{self.config.scheduler.max_num_batched_tokens}), and this model's attention needs it whole; "
                "raise --max-num-batched-tokens"
            )
        # max_tokens=1: the prompt's last chunk ends it. Asking for prompt logits makes the
        # scheduler compute the whole prompt, past any prefix-cache hit (Scheduler._admit); the
        # runner never computes those logits here. A token_* task needs every position's row
        whole = self._compute_whole_prompt or per_token
        sampling = SamplingParams(max_tokens=1, prompt_logprobs=0 if whole else None)
        req = Request(request_id, ids, sampling, time.monotonic())
        self.pooling[request_id] = _Pooling(req, params, PoolingState(ALL if per_token else self.pooler.pooling_type))
        self.scheduler.add_request(req)
        return ids

    def add_request(self, request_id, prompt, params, arrival_time=None, lora_request=None) -> None:
        raise ValueError(
            "this engine runs a pooling model, which does not generate text; use its pooling requests "
            "(LLM.embed / classify / score, the server's /v1/embeddings, /classify, /score, /rerank)"
        )

    def abort_request(self, request_ids) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        self.scheduler.abort([r for r in request_ids if self.pooling.pop(r, None) is not None])
        super().abort_request(request_ids)

    def has_unfinished_requests(self) -> bool:
        return bool(self.pooling) or super().has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.pooling) + super().get_num_unfinished_requests()

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[PoolingRequestOutput]:  # type: ignore[override]
        """Compute one step of prompts; return the requests whose prompt is now complete."""
        sched_out = self._schedule()
        if sched_out.is_empty:
            return []
        runner = self.runner
        assert isinstance(runner, ModelRunner)  # checked in __init__
        with torch.inference_mode():
            batch, _ = runner._prepare(sched_out, [])
            if runner.workers is not None:
                runner.workers.send_step(batch)
            hidden = runner.forward(batch)
            return self._pool(sched_out, hidden, batch.query_start_loc_cpu)

    def _pool(self, sched_out: SchedulerOutput, hidden: torch.Tensor, qsl: list[int]) -> list[PoolingRequestOutput]:
        done: list[_Pooling] = []
        for i, s in enumerate(sched_out.scheduled):
            p = self.pooling[s.request_id]
            p.state.add(hidden[qsl[i] : qsl[i + 1]], s.start_pos)
            if s.sample:  # the prompt's last chunk
                done.append(p)
        if not done:
            return []
        # one row per request, or for the token_* tasks one per prompt token: all in one batch
        results = [p.state.result() for p in done]
        matrices = [torch.atleast_2d(r) for r in results]
        pooled = torch.cat(matrices)
        if self.classifier is not None:
            pooled = self.classifier(pooled.to(self.model_config.dtype)).float()
        outputs = []
        for p, r, row in zip(done, results, pooled.split([len(m) for m in matrices])):
            row = row if r.dim() == 2 else row[0]
            if self.classifier is None:
                data = embed(row, p.params, self.pooler.normalize)
            else:
                data = activate(row, p.params)
            self.scheduler.finish(p.req, RequestStatus.FINISHED_STOPPED)  # frees its KV blocks
            del self.pooling[p.req.request_id]
            outputs.append(PoolingRequestOutput(p.req.request_id, PoolingOutput(data.cpu()), p.req.prompt_token_ids))
        return outputs
