"""Continuous batching with chunked prefill, prefix caching and preemption (no torch)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from octavo.block_manager import BlockManager
from octavo.multimodal.encoder_budget import EncoderBudget
from octavo.request import Request, RequestStatus
from octavo.sampling_params import SamplingParams

if TYPE_CHECKING:
    from octavo.lora.request import LoRARequest

#: stands in `ScheduledRequest.token_ids` for a token that a launched step is still sampling;
#: the runner takes it from that step's output on the device
PENDING_TOKEN = -1


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step: compute `token_ids` at positions start_pos.."""

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_ids: list[int]
    sample: bool  # this chunk reaches the end of the request's tokens: sample the next one
    sampling_params: SamplingParams
    all_token_ids: list[int]  # prompt + output so far (read-only view, for penalties)
    num_prompt_tokens: int
    # output tokens sampled before this step but not yet in all_token_ids (0 unless the
    # step was scheduled while the one before it still ran)
    num_pending: int = 0
    # speculative decoding: proposed tokens, the last len(spec_token_ids) of token_ids; the
    # runner verifies them and returns how many stand (StepOutput.num_accepted)
    spec_token_ids: tuple[int, ...] = ()
    # the proposer's distributions they were drawn from (a device tensor [k, V], opaque here), or
    # None: drawn deterministically (q one-hot)
    spec_probs: Any = None
    # the request's images (octavo.multimodal.MultiModalItem) and those whose encoder runs
    # in this step (indices into mm_items; octavo.multimodal.encoder_budget)
    mm_items: tuple = ()
    encode: tuple[int, ...] = ()
    # the request's LoRA adapter (octavo.lora.LoRARequest; None: the base model)
    lora_request: LoRARequest | None = None


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_batched_tokens: int
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        chunked_prefill: bool = True,
        mixed_steps: bool = True,
        max_loras: int | None = None,
    ) -> None:
        self.bm = block_manager
        # LoRA: the most distinct adapters among running requests (the device's adapter slots)
        self.max_loras = max_loras
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        # the platform's policy (octavo.platform.scheduling): False/False suits compiled-graph
        # devices, which run a prompt in one step and keep prefill and decode programs apart
        self.chunked_prefill = chunked_prefill
        self.mixed_steps = mixed_steps
        self._last_phase: str | None = None
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # pipeline parallelism (octavo.pipeline): the steps in flight at once, one per stage. Above
        # 1, a request waits for the step that samples its token (sampled on the last stage, it
        # is embedded on the first: no step can be fed it), and a step takes at most 1/depth of
        # the requests, so that the stages get steps of their own to compute
        self.pipeline_depth = 1
        # image tokens the vision encoder may run per step, beside the token budget
        self.encoder = EncoderBudget(max_num_batched_tokens)

    # ---- queue management -------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req: Request, status: RequestStatus, stop_reason: int | str | None = None) -> None:
        """End a request: free its blocks at once and drop it from the queues."""
        if req.is_finished:
            return
        req.status = status
        req.stop_reason = stop_reason
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self.bm.free(req.block_ids)
        req.block_ids = []
        self.encoder.forget(req.request_id)
        self.requests.pop(req.request_id, None)

    def abort(self, request_ids: Iterable[str]) -> list[Request]:
        aborted = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is not None:
                self.finish(req, RequestStatus.FINISHED_ABORTED)
                aborted.append(req)
        return aborted

    # ---- scheduling -------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Give each request the tokens it still needs to compute, within the budget.

        One idea: every request has `num_computed_tokens` catching up with `num_tokens`.
        Running requests go first, in arrival order: a decode needs 1 token, an
        unfinished prefill the rest of its prompt (chunked to what the budget allows).
        If a running request cannot get a KV block, the most recently arrived running
        request is preempted (its blocks freed, recomputed later) until it can. Waiting
        requests are admitted FCFS while the budget, `max_num_seqs` and free blocks
        allow, after reusing whatever prefix of theirs is cached; none are admitted in
        a step that had to preempt.

        It may run while the previous step is still on the device (async scheduling): a
        request whose token that step is sampling (`num_pending`) is scheduled for the
        position of that token, which the runner feeds from the device. A request whose
        pending token is its last by length (max_tokens, max_model_len) is not scheduled.

        Without mixed steps a step is all prefills or all decodes: the two kinds alternate
        while both have work. Without chunked prefill a prompt is admitted only whole.

        Speculative decoding: a decoding request's proposed tokens (`spec_token_ids`) are
        scheduled after its last token, as tokens whose KV is written, while the budget and
        free blocks allow (they never preempt). `update` moves the computed tokens back past
        the rejected ones and frees the blocks only they used; they are never indexed in the
        prefix cache (indexing stops at the known tokens).
        """
        if self.mixed_steps:
            return self._schedule(None)
        phase = self._next_phase()
        out = self._schedule(phase)
        if out.is_empty:  # nothing of that kind could run: the other kind may
            phase = "decode" if phase == "prefill" else "prefill"
            out = self._schedule(phase)
        self._last_phase = phase if not out.is_empty else self._last_phase
        return out

    def _schedule(self, phase: str | None) -> SchedulerOutput:
        """One step of requests of `phase` ("prefill", "decode"; None: both)."""
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        self.encoder.new_step()

        # pipeline stages: this step's share of the requests (see pipeline_depth)
        most = -(-(len(self.running) + len(self.waiting)) // self.pipeline_depth)
        i = 0
        while i < len(self.running) and budget > 0 and len(scheduled) < most:
            req = self.running[i]
            waits = req.num_pending and (self.pipeline_depth > 1 or self._ends_by_length(req))
            if waits or (phase and self._phase_of(req) != phase):
                i += 1
                continue
            n = min(req.num_tokens + req.num_pending - req.num_computed_tokens, budget)
            if req.mm_items:
                n = self.encoder.fit(req.request_id, req.mm_items, req.num_computed_tokens, n)[0]
                if n == 0:  # an image it reaches waits for the next step's encoder budget
                    i += 1
                    continue
            if not self._reserve(req, n, preempted):
                break  # req itself was preempted; everything after it too
            drafts, probs = self._drafts(req, n, budget - n)
            scheduled.append(self._scheduled(req, n, drafts, probs))
            budget -= n + len(drafts)
            i += 1

        if not preempted and phase != "decode":
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and len(scheduled) < most:
                req = self.waiting[0]
                if req.num_pending:
                    break  # preempted while its token was being sampled: admit it once that arrived
                if not self._adapter_fits(req):
                    break  # every LoRA slot is held by running requests: wait for one to free
                n = self._admit(req, budget)
                if n == 0:
                    break
                self.waiting.popleft()
                req.status = RequestStatus.RUNNING
                self.running.append(req)
                scheduled.append(self._scheduled(req, n))
                budget -= n

        return SchedulerOutput(scheduled, self.max_num_batched_tokens - budget, preempted)

    @staticmethod
    def _phase_of(req: Request) -> str:
        """A running request's next work: "decode" (its one newest token) or "prefill"."""
        left = req.num_tokens + req.num_pending - req.num_computed_tokens
        return "decode" if req.num_computed_tokens > 0 and left == 1 else "prefill"

    def _next_phase(self) -> str:
        """Prefill when new or unfinished prompts wait, unless the last step was a prefill
        and decodes wait too (so neither kind starves)."""
        kinds = {self._phase_of(r) for r in self.running}
        prefill_waits = "prefill" in kinds or (self.waiting and len(self.running) < self.max_num_seqs)
        if prefill_waits and not (self._last_phase == "prefill" and "decode" in kinds):
            return "prefill"
        return "decode"

    def _ends_by_length(self, req: Request) -> bool:
        """The request's pending tokens reach its max_tokens or the context limit."""
        p = req.sampling_params
        n_out = req.num_output_tokens + req.num_pending
        return (
            p.max_tokens is not None and n_out >= p.max_tokens
        ) or req.num_tokens + req.num_pending >= self.max_model_len

    def _reserve(self, req: Request, n: int, preempted: list[str]) -> bool:
        """Make room for n more tokens of a running request, preempting from the back."""
        while not self.bm.allocate(req.block_ids, req.num_computed_tokens + n):
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is req:
                return False
        return True

    def _drafts(self, req: Request, n: int, room: int) -> tuple[list[int], Any]:
        """The proposed tokens to verify with a decode of `req` (n = 1): as many as the budget
        left, the free blocks, max_tokens and the context allow (the token drawn after them
        counts too); and the rows of their `spec_probs`."""
        drafts, req.spec_token_ids = req.spec_token_ids, []
        probs, req.spec_probs = req.spec_probs, None
        if not drafts or req.num_pending or n != 1 or req.num_computed_tokens + 1 != req.num_tokens:
            return [], None
        p = req.sampling_params
        left = self.max_model_len - req.num_tokens
        if p.max_tokens is not None:
            left = min(left, p.max_tokens - req.num_output_tokens)
        drafts = drafts[: max(0, min(room, left - 1))]
        if drafts and not self.bm.allocate(req.block_ids, req.num_computed_tokens + n + len(drafts)):
            return [], None
        return drafts, probs[: len(drafts)] if drafts and probs is not None else None

    def _adapter_fits(self, req: Request) -> bool:
        """A waiting request's LoRA adapter is running already, or a slot is left for it."""
        lora = req.lora_request
        if lora is None or self.max_loras is None:
            return True
        running = {r.lora_request.lora_int_id for r in self.running if r.lora_request is not None}
        return lora.lora_int_id in running or len(running) < self.max_loras

    def _admit(self, req: Request, budget: int) -> int:
        """Reserve blocks for a waiting request; return the tokens scheduled (0 = cannot)."""
        assert req.num_computed_tokens == 0 and not req.block_ids
        # the last token is always recomputed, to get its logits; prompt logprobs need the
        # logits of every prompt position, so those requests compute the whole prompt
        wants_prompt_logits = req.sampling_params.prompt_logprobs is not None and req.num_output_tokens == 0
        limit = 0 if wants_prompt_logits else req.num_tokens - 1
        hit_blocks, hit_keys = self.bm.find_cached_prefix(req.token_ids, limit, req.block_identity())
        num_hit = len(hit_blocks) * self.bm.block_size
        n = min(req.num_tokens - num_hit, budget)
        if req.mm_items:  # stop before an image past this step's encoder budget
            n = self.encoder.fit(req.request_id, req.mm_items, num_hit, n)[0]
            if n == 0:
                return 0
        if not self.chunked_prefill and n < req.num_tokens - num_hit:
            return 0  # the whole prompt or nothing
        total = num_hit + n
        # blocks the cache hits revive from the free queue are no longer free
        new_blocks = self.bm.blocks_needed(total) - len(hit_blocks)
        if new_blocks + self.bm.num_evictable_hits(hit_blocks) > self.bm.num_free_blocks:
            return 0
        if hit_blocks:
            self.bm.take_cached(hit_blocks)
            req.block_ids = list(hit_blocks)
            req.block_keys = list(hit_keys)
            req.num_computed_tokens = num_hit
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = num_hit
            self.bm.prefix_queries += req.num_prompt_tokens
            self.bm.prefix_hits += num_hit
        ok = self.bm.allocate(req.block_ids, total)
        assert ok
        return n

    def _preempt(self, req: Request) -> None:
        # a launched step may still write this request's KV into the freed blocks: the
        # device runs steps in order, so a later owner's writes land after it
        self.running.remove(req)
        self.bm.free(req.block_ids)
        req.block_ids = []
        req.block_keys = []
        req.num_computed_tokens = 0
        self.encoder.forget(req.request_id)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _scheduled(self, req: Request, n: int, drafts: list[int] | None = None, probs: Any = None) -> ScheduledRequest:
        start = req.num_computed_tokens
        known = req.num_tokens
        # Index the blocks this step fills as soon as it is scheduled: a request admitted
        # later in the same step may reuse them, because every layer writes the whole
        # batch's KV before any of the batch attends. Every scheduled token is computed
        # (a step, once scheduled, runs), so the index never points at KV that will not
        # exist. A block holding a pending token waits: its key needs the token's id.
        self.bm.register_full_blocks(
            req.token_ids, req.block_ids, req.block_keys, min(start + n, known), req.block_identity()
        )
        token_ids = req.token_ids[start : start + n]
        token_ids += [PENDING_TOKEN] * (n - len(token_ids))
        sample = start + n == known + req.num_pending
        pending_before = req.num_pending
        encode: tuple[int, ...] = ()
        if req.mm_items:
            encode = self.encoder.fit(req.request_id, req.mm_items, start, n)[1]
            self.encoder.commit(req.request_id, req.mm_items, encode, start + n)
        drafts = drafts or []
        token_ids += drafts
        req.num_computed_tokens = start + n + len(drafts)
        if sample:
            req.num_pending += 1
        return ScheduledRequest(
            request_id=req.request_id,
            token_ids=token_ids,
            start_pos=start,
            block_ids=req.block_ids,
            sample=sample,
            sampling_params=req.sampling_params,
            all_token_ids=req.token_ids,
            num_prompt_tokens=req.num_prompt_tokens,
            num_pending=pending_before,
            spec_token_ids=tuple(drafts),
            spec_probs=probs,
            mm_items=req.mm_items,
            encode=encode,
            lora_request=req.lora_request,
        )

    # ---- after the step ---------------------------------------------------------------
    def update(
        self,
        scheduler_output: SchedulerOutput,
        sampled: dict[str, int],
        num_accepted: dict[str, int] | None = None,
    ) -> list[Request]:
        """Append a finished step's sampled tokens and apply token-level stops.

        Returns the requests that received a new token (finished ones included). A
        request preempted since the step was scheduled still gets its token. A request
        that was given proposed tokens gets the first `num_accepted[request_id]` of them
        before its sampled token, each checked for stops in turn; the rest are rolled back.
        """
        changed: list[Request] = []
        for s in scheduler_output.scheduled:
            if not s.sample:
                continue
            req = self.requests.get(s.request_id)
            if req is None:  # finished or aborted since: its token is dropped
                continue
            req.num_pending -= 1
            token = sampled.get(s.request_id)
            accepted: tuple[int, ...] = ()
            if s.spec_token_ids:
                if token is not None:
                    accepted = s.spec_token_ids[: (num_accepted or {}).get(s.request_id, 0)]
                self._roll_back(req, s, len(s.spec_token_ids) - len(accepted))
            if token is None:
                continue
            for t in (*accepted, token):
                req.token_ids.append(t)
                self._check_stop(req, t)
                if req.is_finished:
                    break  # tokens after a stop are dropped
            changed.append(req)
        return changed

    def _roll_back(self, req: Request, s: ScheduledRequest, rejected: int) -> None:
        """Forget the KV of a request's `rejected` last proposed tokens: computed moves back,
        and the blocks past what its tokens need are freed (none of them holds a prefix-cache
        entry: indexing stops at the known tokens)."""
        if req.num_computed_tokens != s.start_pos + len(s.token_ids):
            return  # preempted since: nothing of that step is kept anyway
        req.num_computed_tokens -= rejected
        keep = self.bm.blocks_needed(req.num_computed_tokens + 1)  # + the token drawn after them
        assert len(req.block_keys) <= keep
        if len(req.block_ids) > keep:
            self.bm.free(req.block_ids[keep:])
            del req.block_ids[keep:]

    def _check_stop(self, req: Request, token: int) -> None:
        p = req.sampling_params
        n_out = req.num_output_tokens
        if n_out >= p.min_tokens:
            if not p.ignore_eos and token in p._eos_token_ids:
                self.finish(req, RequestStatus.FINISHED_STOPPED, None)
                return
            if p.stop_token_ids and token in p.stop_token_ids:
                self.finish(req, RequestStatus.FINISHED_STOPPED, token)
                return
        if (p.max_tokens is not None and n_out >= p.max_tokens) or req.num_tokens >= self.max_model_len:
            self.finish(req, RequestStatus.FINISHED_LENGTH)
