"""`speculative_config` under vLLM's names, validated once (no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

#: proposers this engine has, and what each needs
METHODS = {
    "ngram": "prompt lookup: the tokens that followed the latest earlier match of the context's last n-gram",
    "draft_model": "a smaller model with the same tokenizer ('model': its path), run k times per step",
    "eagle": "an EAGLE-1/2 head ('model': its directory) over the target's last hidden state",
    "eagle3": "an EAGLE-3 head ('model': its directory) over three of the target's layers",
}


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    # ngram: the longest and shortest suffix n-grams looked up in the context
    prompt_lookup_max: int = 5
    prompt_lookup_min: int = 1
    # draft_model: the draft's model directory or file (same forms as the target's `model`);
    # eagle / eagle3: the head's directory (config.json and its weights)
    model: str | None = None

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict | str | None) -> SpeculativeConfig | None:
        """From `LLM(speculative_config=...)` / `--speculative-config JSON`; None stays None.
        Errors name the key and say what it takes."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON ({e}): {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict (or its JSON), got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {unknown}; this engine reads {sorted(known)}")
        if "method" not in value:
            # vLLM infers the method from the model; here a model means a draft model, none n-gram
            value = {**value, "method": "draft_model" if value.get("model") else "ngram"}
        if "num_speculative_tokens" not in value:
            raise ValueError("speculative_config needs num_speculative_tokens (the tokens proposed per step)")
        config = cls(**value)
        config._validate()
        return config

    def _validate(self) -> None:
        def bad(key: str, want: str) -> ValueError:
            return ValueError(f"speculative_config {key}={getattr(self, key)!r}: {want}")

        if self.method not in METHODS:
            raise bad("method", "choose one of " + "; ".join(f"{m!r} ({why})" for m, why in METHODS.items()))
        for key in ("num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"):
            v: Any = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(key, "must be an integer >= 1")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise bad("prompt_lookup_min", f"must be <= prompt_lookup_max ({self.prompt_lookup_max})")
        if self.method == "draft_model" and not self.model:
            raise bad("model", "method 'draft_model' needs the draft's model (a directory or .gguf file)")
        if self.method in ("eagle", "eagle3") and not self.model:
            raise bad("model", f"method {self.method!r} needs the head's directory (config.json and weights)")
        if self.method == "ngram" and self.model is not None:
            raise bad("model", "method 'ngram' uses no model; drop 'model' or set method 'draft_model'")
