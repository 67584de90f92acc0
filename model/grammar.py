"""Grammar-constrained decoding: a token mask from a grammar, applied before sampling.

Small models fail at agent work mostly by emitting malformed JSON. Rather than parse, fail and
retry, the engine never lets them: at each decoding step a grammar matcher says which tokens
may come next, every other logit is set to -inf, and the chosen token advances the matcher.

The grammar engine is llguidance (a maintained Rust library with no Python dependencies; it
compiles JSON schemas, regular expressions, choice lists and Lark grammars lazily, so masks are
cheap even for large vocabularies). This module is the bridge:

- ``Grammar``: what to constrain to — ``Grammar.json_schema(schema)``, ``Grammar.regex(p)``,
  ``Grammar.choice([...])``, ``Grammar.lark(text)``. A schema may be a dict or any object
  with ``model_json_schema()`` (a pydantic model class), so ``model/`` needs no pydantic import.
- ``GrammarTokenizer``: the checkpoint's real vocabulary as llguidance sees it, built from the
  same ``tokenizers`` JSON the engine tokenizes with (byte-level BPE and byte-fallback
  SentencePiece both work, since llguidance reads the token bytes from that JSON). Built once
  per tokenizer (about a second) and cached.
- ``GrammarMatcher``: one sequence's state. ``mask_(logits)`` masks a (V,) or (1, V) row in
  place; ``advance(token)`` consumes the sampled token. In a batch, each sequence has its own.

A grammar that cannot be completed within the token budget is not this module's concern: the
generate loop stops at ``max_new_tokens`` and reports ``finish_reason="length"``, and
``GrammarMatcher.is_accepting()`` says whether the output is complete.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import llguidance
import llguidance.torch as llg_torch
import torch

from model.errors import ModelError

__all__ = ["Grammar", "GrammarError", "GrammarMatcher", "GrammarProcessor", "GrammarTokenizer"]


# JSON written the way ``json.dumps`` writes it, the form models saw most in training; no free
# whitespace (a small model under a loose grammar pads with newlines and tabs). Keywords the
# compiler does not implement (``format``, ...) are ignored rather than refused, since tool
# schemas come from everywhere.
_JSON_STYLE: dict[str, Any] = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    "lenient": True,
}


class GrammarError(ModelError):
    """A grammar that does not compile, or a token the grammar does not allow."""


@dataclass(frozen=True)
class Grammar:
    """A compiled-on-demand grammar definition (llguidance's serialised form)."""

    definition: str
    description: str

    @classmethod
    def json_schema(cls, schema: Any) -> Grammar:
        """JSON matching ``schema`` (a dict, a JSON string, or a pydantic model class)."""
        if hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return cls._build(
            lambda: llguidance.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_STYLE), "json_schema"
        )

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """Text matching the regular expression ``pattern`` (Rust regex syntax), whole."""
        return cls._build(lambda: llguidance.LLMatcher.grammar_from_regex(pattern), "regex")

    @classmethod
    def choice(cls, options: Sequence[str]) -> Grammar:
        """Exactly one of ``options``."""
        if not options:
            raise GrammarError("a choice grammar needs at least one option")
        return cls._build(lambda: llguidance.grammar_from("choice", json.dumps(list(options))), "choice")

    @classmethod
    def lark(cls, text: str) -> Grammar:
        """A Lark grammar in llguidance's dialect (which can embed ``%json{...}`` schemas)."""
        return cls._build(lambda: llguidance.LLMatcher.grammar_from_lark(text), "lark")

    @classmethod
    def _build(cls, make: Any, kind: str) -> Grammar:
        try:
            definition = make()
        except (ValueError, RuntimeError) as exc:
            raise GrammarError(f"invalid {kind} grammar: {exc}") from exc
        message = llguidance.LLMatcher.validate_grammar(definition)
        if message and not message.startswith("WARNING"):
            raise GrammarError(f"invalid {kind} grammar: {message}")
        return cls(definition=definition, description=kind)


class GrammarTokenizer:
    """The checkpoint vocabulary in llguidance's form, shared by every matcher of a model."""

    _cache: ClassVar[weakref.WeakKeyDictionary[Any, GrammarTokenizer]] = weakref.WeakKeyDictionary()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, tokenizer_json: str, *, eos_token_ids: Sequence[int], vocab_size: int) -> None:
        if not eos_token_ids:
            raise GrammarError("grammar-constrained decoding needs at least one stop token id")
        self.ll = llguidance.LLTokenizer(tokenizer_json, eos_token=list(eos_token_ids))
        # The model's output layer may have more rows than the tokenizer has tokens (padding);
        # those rows are never allowed.
        self.vocab_size = max(vocab_size, self.ll.vocab_size)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None) -> GrammarTokenizer:
        """The (cached) bridge for one of the engine's ``model.tokenizer.Tokenizer`` objects."""
        with cls._lock:
            cached = cls._cache.get(tokenizer)
            if cached is not None and (vocab_size is None or cached.vocab_size >= vocab_size):
                return cached
            stops = sorted(tokenizer.stop_token_ids)
            built = cls(
                tokenizer.backend.to_str(),
                eos_token_ids=stops,
                vocab_size=vocab_size or tokenizer.vocab_size,
            )
            cls._cache[tokenizer] = built
            return built


class GrammarMatcher:
    """One sequence's progress through a grammar."""

    def __init__(self, tokenizer: GrammarTokenizer, grammar: Grammar) -> None:
        self.tokenizer = tokenizer
        self.grammar = grammar
        self._matcher = llguidance.LLMatcher(tokenizer.ll, grammar.definition)
        if self._matcher.is_error():
            raise GrammarError(f"grammar rejected: {self._matcher.get_error()}")
        self._bitmask = llg_torch.allocate_token_bitmask(1, tokenizer.ll.vocab_size)

    def allowed(self) -> torch.Tensor:
        """A (V,) bool tensor: True where the token may come next."""
        llg_torch.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        self._raise_if_error()
        words = self._bitmask[0]
        bits = (words.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1  # (W, 32)
        allowed = bits.reshape(-1).bool()[: self.tokenizer.ll.vocab_size]
        if allowed.numel() < self.tokenizer.vocab_size:
            pad = torch.zeros(self.tokenizer.vocab_size - allowed.numel(), dtype=torch.bool)
            allowed = torch.cat([allowed, pad])
        return allowed

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """Set the logits of disallowed tokens to -inf in place; ``logits`` is (V,) or (1, V)."""
        row = logits.view(-1)
        allowed = self.allowed()
        vocab = row.shape[0]
        if allowed.shape[0] < vocab:
            allowed = torch.cat([allowed, torch.zeros(vocab - allowed.shape[0], dtype=torch.bool)])
        row.masked_fill_(~allowed[:vocab].to(row.device), float("-inf"))
        return logits

    def advance(self, token_id: int) -> None:
        """Consume the sampled token (it must be allowed)."""
        if not self._matcher.consume_token(int(token_id)):
            raise GrammarError(f"token {token_id} is not allowed here: {self._matcher.get_error()}")

    def is_accepting(self) -> bool:
        """True when the text so far is a complete sentence of the grammar."""
        return bool(self._matcher.is_accepting())

    def is_stopped(self) -> bool:
        """True when nothing but a stop token may follow (the output is complete)."""
        return bool(self._matcher.is_stopped())

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (a fast path: no model call needed to choose them)."""
        return list(self._matcher.compute_ff_tokens())

    def _raise_if_error(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"grammar matcher failed: {self._matcher.get_error()}")


class GrammarProcessor:
    """A ``model.generate.LogitsProcessor`` for one sequence: catch the matcher up with the
    tokens sampled since the last call, then mask. ``matcher`` stays readable afterwards
    (``is_accepting()`` says whether the output is complete)."""

    def __init__(self, matcher: GrammarMatcher) -> None:
        self.matcher = matcher
        self._seen = 0

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, grammar: Grammar, vocab_size: int | None = None) -> GrammarProcessor:
        return cls(GrammarMatcher(GrammarTokenizer.for_tokenizer(tokenizer, vocab_size), grammar))

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for token in generated[self._seen :]:
            self.matcher.advance(token)
        self._seen = len(generated)
        return self.matcher.mask_(logits)
