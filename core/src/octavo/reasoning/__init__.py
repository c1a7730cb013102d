"""Reasoning parsers (`--reasoning-parser`): a thinking model's output split into its
reasoning (`reasoning_content` in chat completions) and the answer (`content`).

A parser works on text, whole or streamed (`ReasoningStream`: the deltas add up to the whole
split). The engine uses the token ids of its markers: a request's structured-output grammar
starts after the end-of-thinking token (`octavo.structured_output`).
"""

from __future__ import annotations

from typing import Any

from octavo.reasoning.think import DeepSeekR1ReasoningParser, Qwen3ReasoningParser, ReasoningParser, ReasoningStream

#: --reasoning-parser NAME -> its parser
REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    "deepseek_r1": DeepSeekR1ReasoningParser,
    "qwen3": Qwen3ReasoningParser,
}

__all__ = ["REASONING_PARSERS", "ReasoningParser", "ReasoningStream", "get_reasoning_parser", "reasoning_token_ids"]


def get_reasoning_parser(name: str) -> ReasoningParser:
    cls = REASONING_PARSERS.get(name)
    if cls is None:
        raise ValueError(f"unknown reasoning parser {name!r}; choose one of {', '.join(sorted(REASONING_PARSERS))}")
    return cls()


def reasoning_token_ids(name: str | None, tokenizer: Any) -> tuple[int | None, int | None]:
    """(start, end) token ids of the parser's thinking markers (None, None without a parser).
    The end marker must be one token of the vocabulary: grammars start at that token."""
    if name is None:
        return None, None
    parser = get_reasoning_parser(name)
    vocab = tokenizer.get_vocab()
    end = vocab.get(parser.end)
    if end is None:
        raise ValueError(
            f"--reasoning-parser {name}: this tokenizer has no {parser.end!r} token, so the model does not think in "
            f"{parser.start}...{parser.end}; leave the option out"
        )
    return vocab.get(parser.start), end
