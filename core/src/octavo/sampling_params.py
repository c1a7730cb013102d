"""User-facing sampling options, validated once with errors that name the field (no torch)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TypeGuard

#: most top alternatives `logprobs` / `prompt_logprobs` may ask for
MAX_LOGPROBS = 20


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


class RequestOutputKind(enum.Enum):
    """What each RequestOutput of a request carries (vLLM's names)."""

    CUMULATIVE = 0  # everything so far
    DELTA = 1  # only what is new since the last output
    FINAL_ONLY = 2  # one output, at the end


@dataclass
class StructuredOutputsParams:
    """Constrain a request's output to a format (vLLM's name and fields): set exactly one of
    `json` (a JSON schema, as a dict or its text), `json_object` (any JSON object), `regex`,
    `choice` (one of these strings) or `grammar` (EBNF, GBNF-style as xgrammar reads it).
    Compiled and enforced by `octavo.structured_output`; a schema or grammar that does not
    compile is refused when the request is added (ValueError naming the field)."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    # JSON only: no whitespace beyond what the separators need (shorter outputs)
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        kinds = self.kinds()
        if len(kinds) != 1:
            raise ValueError(
                "invalid sampling parameter structured_outputs: set exactly one of json, json_object, regex, choice, "
                f"grammar (got {', '.join(kinds) or 'none'})"
            )
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(
                "invalid sampling parameter structured_outputs: json must be a JSON schema (object or text)"
            )
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"invalid sampling parameter structured_outputs: {name} must be a non-empty string")
        if self.choice is not None:
            if not isinstance(self.choice, list) or not self.choice or not all(isinstance(c, str) for c in self.choice):
                raise ValueError(
                    "invalid sampling parameter structured_outputs: choice must be a non-empty list of strings"
                )
        if self.json_object is not None and self.json_object is not True:
            raise ValueError("invalid sampling parameter structured_outputs: json_object must be true when set")

    def kinds(self) -> list[str]:
        """The constraints set (valid params set exactly one)."""
        set_ = {
            "json": self.json is not None,
            "json_object": bool(self.json_object),
            "regex": self.regex is not None,
            "choice": self.choice is not None,
            "grammar": self.grammar is not None,
        }
        return [k for k, on in set_.items() if on]


@dataclass
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    # sample only among these tokens (vLLM's name); None = every token
    allowed_token_ids: list[int] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # constrain the output to a JSON schema, regex, choice or grammar (vLLM's name)
    structured_outputs: StructuredOutputsParams | None = None
    # filled by the engine: the model's end-of-sequence ids
    _eos_token_ids: tuple[int, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.top_k is None or self.top_k == -1:
            self.top_k = 0
        if self.best_of is None:
            self.best_of = self.n
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, value: object, want: str) -> ValueError:
            return ValueError(f"invalid sampling parameter {name}={value!r}: {want}")

        def real(name: str, lo: float, hi: float, want: str, lo_open: bool = False) -> None:
            # bools are ints in Python, and NaN / inf compare in surprising ways: refuse them all
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (lo < v if lo_open else lo <= v) or not v <= hi:
                raise bad(name, v, want)

        if not _is_int(self.n) or self.n < 1:
            raise bad("n", self.n, "must be an integer >= 1")
        if not _is_int(self.best_of) or self.best_of < self.n:
            raise bad("best_of", self.best_of, f"must be an integer >= n ({self.n})")
        real("presence_penalty", -2.0, 2.0, "must be in [-2, 2]")
        real("frequency_penalty", -2.0, 2.0, "must be in [-2, 2]")
        real("repetition_penalty", 0.0, math.inf, "must be a finite number > 0", lo_open=True)
        real("temperature", 0.0, math.inf, "must be a finite number >= 0 (0 = greedy)")
        real("top_p", 0.0, 1.0, "must be in (0, 1]", lo_open=True)
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", self.top_k, "must be an integer >= 0 (0 or -1 disables it)")
        real("min_p", 0.0, 1.0, "must be in [0, 1]")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", self.seed, "must be an integer or None")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", self.max_tokens, "must be an integer >= 1 or None")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", self.min_tokens, "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", self.min_tokens, f"must be <= max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_LOGPROBS):
                raise bad(name, v, f"must be an integer in [0, {MAX_LOGPROBS}]")
        assert isinstance(self.stop, list)  # __post_init__ made it one
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise bad("stop", self.stop, "must be non-empty strings")
        for name in ("stop_token_ids", "allowed_token_ids"):
            ids = getattr(self, name)
            if ids is not None and not all(_is_int(t) and t >= 0 for t in ids):
                raise bad(name, ids, "must be token ids (integers >= 0)")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise bad("allowed_token_ids", self.allowed_token_ids, "must not be empty (omit it to allow every token)")
        if self.logit_bias is not None and not isinstance(self.logit_bias, dict):
            raise bad("logit_bias", self.logit_bias, "must be a mapping of token id to bias")
        for k, v in (self.logit_bias or {}).items():
            finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not _is_int(k) or k < 0 or not finite or not -100.0 <= v <= 100.0:
                raise bad("logit_bias", {k: v}, "keys must be token ids (integers >= 0), values in [-100, 100]")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise bad("structured_outputs", self.structured_outputs, "must be a StructuredOutputsParams")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise bad("output_kind", self.output_kind, "must be a RequestOutputKind")

    def verify_token_ids(self, vocab_size: int) -> None:
        """Refuse token ids the model does not have (logits have `vocab_size` columns): a
        ValueError naming the field and the first bad id, before the request reaches a step."""
        fields = {
            "logit_bias": list(self.logit_bias or ()),
            "stop_token_ids": self.stop_token_ids or (),
            "allowed_token_ids": self.allowed_token_ids or (),
        }
        for name, ids in fields.items():
            for t in ids:
                if t >= vocab_size:
                    raise ValueError(
                        f"invalid sampling parameter {name}: token id {t} is outside the vocabulary [0, {vocab_size})"
                    )

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def penalized(self) -> bool:
        """Repetition, presence or frequency penalties: sampling reads the token history."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def clone(self) -> SamplingParams:
        import copy

        return copy.deepcopy(self)
