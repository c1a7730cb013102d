"""Request state as the scheduler sees it: token ids and counters (no torch).

Invariant: `num_computed_tokens <= num_tokens + num_pending`, except while a step that
verifies proposed tokens runs (speculative decoding: they count as computed until the
scheduler's update rolls back the rejected ones); the KV of tokens
[0, num_computed_tokens) is in `block_ids` once the steps scheduled so far have run. A
prefill, a prefill chunk, a prefix-cache hit and a decode are all "computed catches up
with tokens". `num_pending` counts tokens sampled by steps already launched whose ids
the host does not know yet (async scheduling schedules the next step meanwhile).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from octavo.block_manager import BlockIdentity
from octavo.sampling_params import SamplingParams

if TYPE_CHECKING:
    from octavo.lora.request import LoRARequest


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"  # a fault while serving this request alone (the engine went on)

    @property
    def finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


class RequestFailure(Exception):
    """Work for one request raised: that request fails, the step goes on without it."""

    def __init__(self, request_id: str, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.request_id = request_id


class Request:
    __slots__ = (
        "request_id",
        "prompt_token_ids",
        "sampling_params",
        "arrival_time",
        "status",
        "token_ids",
        "num_computed_tokens",
        "block_ids",
        "block_keys",
        "num_cached_tokens",
        "stop_reason",
        "num_preemptions",
        "num_pending",
        "cache_salt",
        "identity_spans",
        "lora_request",
        "spec_token_ids",
        "spec_probs",
        "mm_items",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        arrival_time: float | None = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r}: the prompt must have at least one token")
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = RequestStatus.WAITING
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt + output
        self.num_computed_tokens = 0  # advanced when a step is scheduled
        self.num_pending = 0  # sampled by launched steps, not yet in token_ids
        self.block_ids: list[int] = []
        self.block_keys: list[int] = []  # prefix-cache keys of the full blocks registered so far
        self.num_cached_tokens = -1  # prompt tokens found in the prefix cache at first schedule
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        # What the KV depends on besides token ids, so the prefix cache never shares it
        # across a difference: `cache_salt` covers every block (a LoRA adapter, a tenant's
        # salt); each `identity_spans` entry (start, end, identity) covers the blocks that
        # overlap token range [start, end) (an image's placeholder tokens and its content hash).
        self.cache_salt: Hashable | None = None
        self.identity_spans: list[tuple[int, int, Hashable]] = []
        # the LoRA adapter the request runs with (octavo.lora.LoRARequest; None: the base model)
        self.lora_request: LoRARequest | None = None
        # speculative decoding: tokens proposed to follow token_ids, verified by the next step
        # that decodes this request (the scheduler takes them; octavo.spec_decode fills them)
        self.spec_token_ids: list[int] = []
        # the proposer's distributions they were drawn from (opaque: a device tensor), or None
        self.spec_probs: Any = None
        # the prompt's images (octavo.multimodal.MultiModalItem), in prompt order: the
        # scheduler plans their encoder runs (octavo.multimodal.encoder_budget)
        self.mm_items: tuple = ()

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    def block_identity(self) -> BlockIdentity | None:
        """The prefix cache's identity of a block of this request (None: token ids alone)."""
        if self.cache_salt is None and not self.identity_spans:
            return None
        salt, spans = self.cache_salt, self.identity_spans

        def identity(start: int, end: int) -> Hashable:
            overlapping = tuple(ident for s, e, ident in spans if s < end and start < e)
            # None where nothing but the token ids matters, as for requests without identity
            return (salt, overlapping) if salt is not None or overlapping else None

        return identity

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.finished else None

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_ids)})"
        )
