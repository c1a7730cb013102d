"""Bounds on what one request may ask of the server, checked at the door with a clear 400/413.

Each bound keeps one client from occupying the engine or the event loop for everyone: a
request with n=10000 holds the engine for a minute, a 20 MB prompt is tokenized for seconds
(on the event loop, while every stream waits) before the context check could refuse it.
Every limit is a server flag (`octavo serve --help`, group "request limits").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    #: HTTP request bodies above this many bytes are refused with 413 before they are parsed
    max_body_bytes: int = 16 * MiB
    #: prompt text above this many UTF-8 bytes is refused before tokenization; None: the most
    #: that can fit the context, max_model_len x the longest token's bytes (`prompt_byte_bound`)
    max_prompt_bytes: int | None = None
    #: the largest n, best_of and beam width (OpenAI caps n at 128)
    max_n: int = 128
    #: the most stop strings, and separately the most stop token ids, of one request
    max_stop: int = 64
    #: the most logit_bias entries of one request
    max_logit_bias: int = 1024
    #: whether a request may bring its own chat template (a Jinja program run by the server)
    trust_request_chat_template: bool = False

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> RequestLimits:
        return cls(
            max_body_bytes=args.max_request_body_bytes,
            max_prompt_bytes=args.max_prompt_bytes,
            max_n=args.max_n,
            max_stop=args.max_stop,
            max_logit_bias=args.max_logit_bias,
            trust_request_chat_template=args.trust_request_chat_template,
        )


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    d = RequestLimits()
    g = parser.add_argument_group("request limits", "what one request may ask; more gets HTTP 400 (body: 413)")
    g.add_argument("--max-request-body-bytes", type=int, default=d.max_body_bytes, metavar="BYTES")
    g.add_argument(
        "--max-prompt-bytes",
        type=int,
        default=d.max_prompt_bytes,
        metavar="BYTES",
        help="prompt text refused before tokenization (default: max-model-len x the longest token's bytes, "
        "the most that can fit the context)",
    )
    g.add_argument("--max-n", type=int, default=d.max_n, help="the largest n / best_of / beam width")
    g.add_argument("--max-stop", type=int, default=d.max_stop, help="the most stop strings (and stop token ids)")
    g.add_argument("--max-logit-bias", type=int, default=d.max_logit_bias, help="the most logit_bias entries")
    g.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="let requests bring their own chat_template (a Jinja program the server runs)",
    )


def prompt_byte_bound(tokenizer: Any, max_model_len: int) -> int:
    """The most UTF-8 bytes of text that can tokenize to at most max_model_len tokens.

    Every token stands for at most as many bytes of text as its vocabulary entry has (a
    byte-level entry writes each byte as one or two characters, a SentencePiece "▁" is three
    bytes for one space, a byte-fallback "<0x0A>" six for one), so text longer than the
    longest entry times max_model_len cannot fit the context: refusing it before tokenization
    never refuses a prompt that would have fit.
    """
    longest = 1
    for piece in tokenizer.get_vocab():
        longest = max(longest, len(piece.encode("utf-8", errors="replace")))
    return longest * max_model_len
