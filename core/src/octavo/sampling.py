"""Batched sampling on the device: logits of each request's last token -> next token.

All rows are processed together; the only per-request Python work is building the
parameter tensors and drawing one uniform number per sampled row. A seeded request
draws from its own generator, so its samples do not depend on the rest of the batch.

Sampling is by inverse CDF: one uniform u per row picks the first token whose
cumulative probability exceeds u. It needs one random number per row instead of one
per vocabulary entry (the exponential race drew 49k exponentials per row, about 2 ms
each on a CPU), and the draws are made on the host and copied once, so a GPU step
launches no kernel per seeded request. The weights stay unnormalized (u is scaled by each
row's total) and the cumulative sum is taken in two levels (`_inverse_cdf`). That draw is the
platform's `sample` hook (`inverse_cdf_sample` here is its default); everything before it
(temperature with truncation, top-k, top-p, min-p, bans, penalties) masks logits with -inf.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from octavo.platform.ops import apply_token_bitmask, inverse_cdf_sample
from octavo.sampling_params import SamplingParams
from octavo.transfer import copy_to_host_now, to_device

logger = logging.getLogger("octavo")


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # per row: (logprob of the sampled token, its rank, [(token id, logprob)] top-k) or None
    logprobs: list[tuple[float, int, list[tuple[int, float]]] | None]
    # rows whose sampling raised, with the error; their token_ids entry means nothing
    failed: dict[int, str] = field(default_factory=dict)


class SampleJob:
    """A batch's sampling, queued on the device. `token_ids` (device tensor, one per row)
    can feed the next step before the host has seen it; `result()` waits for this job's
    copies to the host only, not for device work queued after it."""

    def __init__(
        self,
        token_ids: torch.Tensor,
        lp_tensors: list[torch.Tensor] | None,
        params: Sequence[SamplingParams],
        copy_to_host: Callable[[list[torch.Tensor]], Callable[[], list[torch.Tensor]]],
    ) -> None:
        self.token_ids = token_ids
        self._params = params
        self._with_lp = lp_tensors is not None
        self._fetch = copy_to_host([token_ids] + (lp_tensors or []))

    def result(self) -> SamplerOutput:
        host = self._fetch()
        tokens = host[0].tolist()
        lps: list = [None] * len(self._params)
        if self._with_lp:
            lps = _logprob_rows(self._params, *host[1:])
        return SamplerOutput(tokens, lps)


class RowByRowJob:
    """A batch sampled one row at a time after the batched sampling raised: the rows that
    raise alone fail (their requests end with an error), the others go on. `token_ids`
    holds 0 for a failed row, so a step launched on it computes a token nobody keeps."""

    def __init__(self, jobs: list[SampleJob | None], failed: dict[int, str], device: torch.device) -> None:
        self._jobs = jobs
        self.failed = failed
        zero = torch.zeros(1, dtype=torch.long, device=device)
        self.token_ids = torch.cat([zero if j is None else j.token_ids.view(1) for j in jobs])

    def result(self) -> SamplerOutput:
        tokens: list[int] = []
        lps: list = []
        for job in self._jobs:
            out = SamplerOutput([0], [None]) if job is None else job.result()
            tokens += out.token_ids
            lps += out.logprobs
        return SamplerOutput(tokens, lps, dict(self.failed))


def _apply_penalties(logits, params: Sequence[SamplingParams], histories: Sequence[tuple[list[int], int]]):
    """Repetition (prompt + output), presence and frequency (output) penalties, batched."""
    rows = [i for i, p in enumerate(params) if p.penalized]
    if not rows:
        return logits
    dev = logits.device
    v = logits.shape[1]
    for i in rows:  # only penalized rows pay; the counts are one scatter each
        p = params[i]
        all_ids, n_prompt = histories[i]
        out_ids = to_device(all_ids[n_prompt:], torch.long, dev)
        seen = to_device(all_ids, torch.long, dev)
        row = logits[i]
        if p.repetition_penalty != 1.0:
            mask = torch.zeros(v, dtype=torch.bool, device=dev)
            mask[seen] = True
            row = torch.where(mask & (row > 0), row / p.repetition_penalty, row)
            row = torch.where(mask & (row <= 0), row * p.repetition_penalty, row)
        if out_ids.numel():
            counts = torch.zeros(v, dtype=logits.dtype, device=dev).scatter_add_(
                0, out_ids, torch.ones_like(out_ids, dtype=logits.dtype)
            )
            row = row - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
        logits[i] = row
    return logits


class Sampler:
    """`draw` is the platform's `FusedOps.sample` (default: `inverse_cdf_sample`, torch ops),
    `mask` its `FusedOps.apply_token_bitmask` (structured outputs' grammars)."""

    def __init__(
        self,
        device: torch.device,
        draw: Callable[..., torch.Tensor] | None = None,
        mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.device = device
        self.draw = draw if draw is not None else inverse_cdf_sample
        self.mask = mask if mask is not None else apply_token_bitmask
        self.generators: dict[str, random.Random] = {}
        #: names this sampler's seeded streams: a second sampler serving the same requests (a
        #: speculative draft's) sets its own, so its draws never repeat the target's uniforms
        self.stream = ""

    def forget(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def _generator(self, request_id: str, seed: int) -> random.Random:
        g = self.generators.get(request_id)
        if g is None:
            # str seeds hash with SHA-512 (not Python's salted hash): repeatable across runs
            g = random.Random(f"{self.stream}:{seed}" if self.stream else seed)
            self.generators[request_id] = g
        return g

    def uniform(self, request_id: str, params: SamplingParams) -> Callable[[], float]:
        """A request's source of U[0, 1) draws, the one `launch` uses: its seeded generator,
        or torch's global one."""
        if params.seed is not None and not params.greedy:
            return self._generator(request_id, params.seed).random
        return lambda: float(torch.rand((), dtype=torch.float64))

    def _uniforms(self, request_ids, params) -> torch.Tensor:
        """One U[0, 1) per row: seeded rows from their request's generator, the others from
        torch's global generator (so torch.manual_seed makes a whole run repeatable)."""
        u = torch.rand(len(params), dtype=torch.float64).tolist()
        for i, p in enumerate(params):
            if p.seed is not None and not p.greedy:
                u[i] = self._generator(request_ids[i], p.seed).random()
        return to_device(u, torch.float32, self.device)

    def __call__(
        self,
        logits: torch.Tensor,  # [S, V] float32
        request_ids: Sequence[str],
        params: Sequence[SamplingParams],
        histories: Sequence[tuple[list[int], int]],
        eos_masks: Sequence[bool] = (),
        bitmask: torch.Tensor | None = None,
    ) -> SamplerOutput:
        """`launch` and wait for the result."""
        return self.launch(logits, request_ids, params, histories, eos_masks, bitmask=bitmask).result()

    def launch(
        self,
        logits: torch.Tensor,
        request_ids: Sequence[str],
        params: Sequence[SamplingParams],
        histories: Sequence[tuple[list[int], int]],
        eos_masks: Sequence[bool] = (),
        copy_to_host: Callable[[list[torch.Tensor]], Callable[[], list[torch.Tensor]]] = copy_to_host_now,
        bitmask: torch.Tensor | None = None,
    ) -> SampleJob | RowByRowJob:
        """Queue the sampling of one token per row; nothing waits for the device.
        `copy_to_host` starts the copies of the results (the platform's, which on an
        asynchronous device does not wait for work queued later). `bitmask` (int32 [S, V / 32]
        on the device): the tokens each row's grammar allows; it bans the others before any
        other processing, while logprobs stay those of the model's logits (vLLM's default).

        One request's fault must not fail the batch: if the batched sampling raises, each
        row is sampled alone and only the rows that raise again fail (`SamplerOutput.failed`).
        `logits` is never changed in place once a row may be retried, so the retry sees the
        model's logits."""
        try:
            return self._launch(logits, request_ids, params, histories, eos_masks, copy_to_host, bitmask)
        except Exception:
            logger.exception("sampling a batch of %d rows failed; sampling its rows one by one", len(params))
        jobs: list[SampleJob | None] = []
        failed: dict[int, str] = {}
        for i in range(len(params)):
            try:
                mask = eos_masks[i : i + 1] if eos_masks else ()
                row = slice(i, i + 1)
                bits = None if bitmask is None else bitmask[row]
                jobs.append(
                    self._launch(logits[row], request_ids[row], params[row], histories[row], mask, copy_to_host, bits)
                )
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                logger.exception("sampling failed for request %s", request_ids[i])
                failed[i] = f"{type(e).__name__}: {e}"
                jobs.append(None)
        return RowByRowJob(jobs, failed, logits.device)

    def _launch(self, logits, request_ids, params, histories, eos_masks, copy_to_host, bitmask) -> SampleJob:
        raw = logits
        want_lp = any(p.logprobs is not None for p in params)
        logits = self._edited(logits, params, histories, eos_masks, bitmask, keep_raw=want_lp)

        if all(p.greedy for p in params):
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample(logits, request_ids, params)
        lp_tensors = self._logprobs(raw, tokens, params) if want_lp else None
        return SampleJob(tokens, lp_tensors, params, copy_to_host)

    def _edited(self, logits, params, histories, eos_masks, bitmask, keep_raw: bool) -> torch.Tensor:
        """Logit bias, allowed tokens, min_tokens (ban EOS / stop tokens), the grammar's bitmask
        and penalties: the edits that change the distribution before temperature. `logits` is
        cloned before any edit when `keep_raw` (logprobs read the raw logits)."""
        edit = [self._edits_row(p, bool(eos_masks and eos_masks[i])) for i, p in enumerate(params)]
        if keep_raw or any(edit) or bitmask is not None:  # the raw logits stay intact for logprobs and a retry
            logits = logits.clone()
        if bitmask is not None:
            logits = self.mask(logits, bitmask)
        for i, p in enumerate(params):
            if edit[i]:
                self._edit_row(logits, i, p, bool(eos_masks and eos_masks[i]))
        return _apply_penalties(logits, params, histories)

    def distribution(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        histories: Sequence[tuple[list[int], int]],
        eos_masks: Sequence[bool] = (),
    ) -> torch.Tensor:
        """Per row, the probabilities [S, V] float32 that `launch` draws that row's token from:
        the same edits, penalties, temperature and truncations; a greedy row is one-hot at the
        token `launch` would take. Speculative decoding's verification reads p from here, so
        its output follows the sampler's distribution exactly. `logits` is not changed."""
        edited = self._edited(logits, params, histories, eos_masks, None, keep_raw=True)
        shaped, tempers = self._truncated(edited, params)
        if tempers is not None:
            shaped = shaped / tempers.to(shaped.dtype).unsqueeze(1)
        probs = shaped.float().softmax(dim=-1)
        if any(p.greedy for p in params):
            one_hot = torch.zeros_like(probs).scatter_(1, edited.argmax(dim=-1, keepdim=True), 1.0)
            greedy = to_device([p.greedy for p in params], torch.bool, self.device)
            probs = torch.where(greedy.unsqueeze(1), one_hot, probs)
        return probs

    def logprobs(
        self, raw: torch.Tensor, tokens: torch.Tensor, params: Sequence[SamplingParams]
    ) -> list[tuple[float, int, list[tuple[int, float]]] | None]:
        """Per row of the model's logits `raw`, the logprobs of `tokens` (one per row) as `launch`
        returns them (None for rows that asked for none); waits for the device."""
        if all(p.logprobs is None for p in params):
            return [None] * len(params)
        return _logprob_rows(params, *copy_to_host_now(self._logprobs(raw, tokens, params))())

    @staticmethod
    def _edits_row(p: SamplingParams, ban_eos: bool) -> bool:
        return bool(p.logit_bias) or p.allowed_token_ids is not None or ban_eos or p.penalized

    def _edit_row(self, logits: torch.Tensor, i: int, p: SamplingParams, ban_eos: bool) -> None:
        """One row's masks and biases, in place (penalties follow, batched)."""
        dev = self.device
        if p.allowed_token_ids is not None:
            keep = to_device(p.allowed_token_ids, torch.long, dev)
            allowed = logits[i].index_select(0, keep)
            logits[i].fill_(float("-inf"))
            logits[i].index_copy_(0, keep, allowed)
        if p.logit_bias:
            ids = to_device(list(p.logit_bias.keys()), torch.long, dev)
            logits[i, ids] += to_device(list(p.logit_bias.values()), logits.dtype, dev)
        if ban_eos:
            ban = list(p._eos_token_ids) + list(p.stop_token_ids or ())
            logits[i, ban] = float("-inf")

    def _sample(self, logits, request_ids, params) -> torch.Tensor:
        raw = logits
        logits, tempers = self._truncated(logits, params)
        sampled = self.draw(logits, tempers, self._uniforms(request_ids, params))
        if not any(p.greedy for p in params):
            return sampled
        greedy = to_device([p.greedy for p in params], torch.bool, self.device)
        return torch.where(greedy, raw.argmax(dim=-1), sampled)

    def _truncated(self, logits, params) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Top-k, top-p and min-p applied; returns the logits and the temperatures the draw
        still divides by (None: already divided, or all 1)."""
        dev = self.device
        temps = [1.0 if p.greedy else p.temperature for p in params]
        # x / 1 is x: no temperatures, no pass over the logits
        tempers = to_device(temps, torch.float32, dev) if any(x != 1.0 for x in temps) else None
        top_k = [p.top_k for p in params]
        top_p = [p.top_p for p in params]
        min_p = [p.min_p for p in params]
        truncate = any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p)
        if truncate or any(m > 0 for m in min_p):
            # the truncations see the tempered distribution: divide first, then mask with -inf
            if tempers is not None:
                logits, tempers = logits / tempers.to(logits.dtype).unsqueeze(1), None
            if truncate:
                logits = _top_k_top_p(logits, top_k, top_p)
            if any(m > 0 for m in min_p):
                logits = _min_p(logits, to_device(min_p, logits.dtype, dev))
        return logits, tempers

    def _logprobs(self, raw, tokens, params) -> list[torch.Tensor]:
        """Device tensors: the sampled token's logprob and rank per row, and the top-k
        (k = the largest logprobs asked for; width 0 when none asked for alternatives)."""
        logp = raw.log_softmax(dim=-1)
        k = max(p.logprobs or 0 for p in params)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        ranks = (logp > chosen.unsqueeze(1)).sum(dim=1) + 1
        top_v, top_i = logp.topk(k, dim=-1)
        return [chosen, ranks, top_v, top_i]


def _logprob_rows(params, chosen, ranks, top_v, top_i):
    chosen, ranks, top_v, top_i = chosen.tolist(), ranks.tolist(), top_v.tolist(), top_i.tolist()
    out: list[tuple[float, int, list[tuple[int, float]]] | None] = []
    for i, p in enumerate(params):
        if p.logprobs is None:
            out.append(None)
            continue
        n = p.logprobs
        alts = list(zip(top_i[i][:n], top_v[i][:n])) if n else []
        out.append((chosen[i], ranks[i], alts))
    return out


def _min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Ban tokens whose probability is below min_p times the most likely one's: in logits,
    those more than -log(min_p) below the row's max (min_p 0 bans nothing)."""
    floor = logits.max(dim=-1, keepdim=True).values + torch.log(min_p).unsqueeze(1)
    return logits.masked_fill(logits < floor, float("-inf"))


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask logits outside each row's top-k and nucleus (top-p), batched over one sort."""
    v = logits.shape[1]
    dev = logits.device
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    # clamped on the host: a top_k past the vocabulary is "off", and may not fit an int64
    k = to_device([min(kk, v) if kk > 0 else v for kk in top_k], torch.long, dev)
    ranks = torch.arange(v, device=dev).unsqueeze(0)
    drop = ranks >= k.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    p = to_device(top_p, logits.dtype, dev).unsqueeze(1)
    probs = sorted_logits.softmax(dim=-1)
    # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
    before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, idx, sorted_logits)
