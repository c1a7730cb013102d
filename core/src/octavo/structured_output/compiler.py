"""Compiled grammars, cached by constraint for one tokenizer (xgrammar's compiler)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from octavo.sampling_params import StructuredOutputsParams

#: compiled grammars kept per engine: a server sees the same few schemas again and again
DEFAULT_CACHE_SIZE = 256
#: the most whitespace characters JSON may have between two tokens of its syntax: enough for
#: pretty-printing a few levels deep, while a small model sampled at temperature 1 cannot spend
#: its whole max_tokens on blank lines (with unbounded whitespace, SmolLM2 does)
JSON_MAX_WHITESPACE = 16


def _bad(what: str, error: object) -> ValueError:
    return ValueError(f"invalid sampling parameter structured_outputs: {what}: {error}")


def choice_grammar(choices: list[str]) -> str:
    """EBNF for "exactly one of these strings" (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def cache_key(so: StructuredOutputsParams) -> tuple[str, str, bool]:
    """(kind, canonical text, whitespace flag): equal constraints share one compiled grammar."""
    (kind,) = so.kinds()
    if kind == "json":
        spec = so.json
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise _bad("json is not valid JSON", e) from None
        if not isinstance(spec, dict):
            raise _bad("json must be a JSON schema object", type(spec).__name__)
        text = json.dumps(spec, sort_keys=True)
    elif kind == "choice":
        assert so.choice is not None  # kinds() said so
        text = json.dumps(so.choice)
    elif kind == "json_object":
        text = ""
    else:
        text = getattr(so, kind)
    return kind, text, so.disable_any_whitespace


class GrammarCache:
    """xgrammar's compiler for one tokenizer and vocabulary, and an LRU of what it compiled.

    The tokenizer's vocabulary is read (xgrammar's TokenizerInfo, about a second for 50k
    tokens) at the first compile, so an engine that never sees a constrained request never
    pays for it. Thread-safe: the server compiles a request's constraint in a worker thread
    (to answer 400 before submitting it) while the engine's thread looks grammars up; a
    compile runs outside the lock, so a lookup never waits for another constraint's."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...], size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.size = size
        self._compiler: Any = None
        self._grammars: OrderedDict[tuple[str, str, bool], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _get_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids or None
                )
                self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # the LRU below is the cache
            return self._compiler

    def compile(self, so: StructuredOutputsParams) -> Any:
        """The xgrammar CompiledGrammar of `so`; a ValueError that says what is wrong if it
        does not compile (an invalid schema, regex or grammar)."""
        key = cache_key(so)
        with self._lock:
            grammar = self._grammars.get(key)
            if grammar is not None:
                self.hits += 1
                self._grammars.move_to_end(key)
                return grammar
            self.misses += 1
        grammar = self._compile(*key)
        with self._lock:
            self._grammars[key] = grammar
            if len(self._grammars) > self.size:
                self._grammars.popitem(last=False)
        return grammar

    def _compile(self, kind: str, text: str, compact: bool) -> Any:
        compiler = self._get_compiler()
        what = {"json": "the JSON schema", "regex": "the regex", "grammar": "the grammar", "choice": "the choices"}
        try:
            spacing = {"any_whitespace": not compact, "max_whitespace_cnt": None if compact else JSON_MAX_WHITESPACE}
            if kind == "json":
                return compiler.compile_json_schema(text, **spacing)
            if kind == "json_object":  # any object: properties the schema does not name are allowed
                return compiler.compile_json_schema('{"type": "object"}', strict_mode=False, **spacing)
            if kind == "regex":
                return compiler.compile_regex(text)
            if kind == "choice":
                return compiler.compile_grammar(choice_grammar(json.loads(text)))
            return compiler.compile_grammar(text)
        except Exception as e:  # noqa: BLE001 - xgrammar's parse errors are RuntimeErrors and friends
            raise _bad(f"{what.get(kind, kind)} does not compile", _first_line(e)) from None


def _first_line(e: BaseException) -> str:
    """xgrammar's messages can carry a C++ stack after the first lines: keep the message."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("File ", "Stack trace"))]
    return " ".join(lines[:3]) if lines else type(e).__name__
