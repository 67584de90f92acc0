"""Tokenizers built from a Hugging Face directory or from GGUF metadata, and streaming decode.

A Hugging Face checkpoint ships ``tokenizer.json``: we load it with the ``tokenizers`` library as
is. A GGUF file has no ``tokenizer.json``; it stores the vocabulary, the merges, token types and
special ids as metadata under llama.cpp's keys (``tokenizer.ggml.*``). We rebuild an equivalent
``tokenizers.Tokenizer`` from those:

- ``tokenizer.ggml.model == "gpt2"``: byte-level BPE. Tokens are already spelled in the GPT-2
  byte alphabet. The pre-tokenizer depends on ``tokenizer.ggml.pre`` (how the merges were
  learned); SmolLM's splits digits one by one, as its original ``tokenizer.json`` does.
- ``tokenizer.ggml.model == "llama"``: SentencePiece-style BPE with byte fallback (Jamba-v0.1's
  tokenizer); merges come from the file or are derived from the token scores.

Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
tokens, so they are matched whole in text instead of being cut into pieces.

``StreamDecoder`` turns a growing list of ids into text increments that never split a UTF-8
character and that concatenate to exactly ``decode(all_ids)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from model.chat_template import render_chat_template
from model.errors import CheckpointError

__all__ = ["StreamDecoder", "Tokenizer", "TokenizerError"]


class TokenizerError(CheckpointError):
    """The tokenizer files or metadata are missing or describe something we cannot build."""


_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer split patterns for byte-level vocabularies, keyed by GGUF ``tokenizer.ggml.pre``.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_BY_PRE = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Vocabularies whose pre-tokenizer is GPT-2's regex, optionally after isolating single digits.
_GPT2_STYLE_PRE = {"default", "gpt2", "gpt-2", "starcoder", "refact", "smollm"}
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact"}


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre in _SPLIT_BY_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_BY_PRE[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre is not None and pre not in _GPT2_STYLE_PRE:
        supported = sorted(_GPT2_STYLE_PRE | set(_SPLIT_BY_PRE))
        raise TokenizerError(
            f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(supported)})"
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    return byte_level


def _derived_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: each token split into two vocab tokens.

    Ranked by the score of the merged token (higher first), then by the left part's rank, which
    reproduces SentencePiece's greedy highest-score-first merging.
    """
    rank = {token: i for i, token in enumerate(tokens)}
    merges: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=True):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in rank and right in rank:
                merges.append((-score, rank[left], rank[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


class Tokenizer:
    """Text <-> token ids for one checkpoint, with its special tokens and chat template."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        extra_stop_token_ids: Iterable[int] = (),
        chat_template: str | None = None,
        add_bos_token: bool = False,
    ) -> None:
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token
        stops = {i for i in extra_stop_token_ids}
        if eos_token_id is not None:
            stops.add(eos_token_id)
        self.stop_token_ids: frozenset[int] = frozenset(stops)

    # ----------------------------------------------------------------------------- constructors

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, ``generation_config.json``)."""
        root = Path(path)
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise TokenizerError(f"{tok_file}: missing; a Hugging Face checkpoint needs tokenizer.json")
        try:
            backend = BackendTokenizer.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"{tok_file}: cannot be read: {exc}") from exc
        cfg = _read_json(root / "tokenizer_config.json")
        gen = _read_json(root / "generation_config.json")
        model_cfg = _read_json(root / "config.json")
        template = cfg.get("chat_template")
        jinja_file = root / "chat_template.jinja"
        if jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # several named templates: use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)

        def token_id(key: str) -> int | None:
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return backend.token_to_id(value)
            fallback = model_cfg.get(f"{key}_id")
            return fallback if isinstance(fallback, int) else None

        eos_id = token_id("eos_token")
        stops: list[int] = []
        for source in (gen.get("eos_token_id"), model_cfg.get("eos_token_id")):
            if isinstance(source, int):
                stops.append(source)
            elif isinstance(source, list):
                stops.extend(i for i in source if isinstance(i, int))
        if eos_id is None and stops:
            eos_id = stops[0]
        return cls(
            backend,
            bos_token_id=token_id("bos_token"),
            eos_token_id=eos_id,
            pad_token_id=token_id("pad_token"),
            unk_token_id=token_id("unk_token"),
            extra_stop_token_ids=stops,
            chat_template=template if isinstance(template, str) else None,
            add_bos_token=bool(cfg.get("add_bos_token", False)),
        )

    @classmethod
    def from_gguf(cls, source: str | Path | Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF file path, or from its already-read metadata mapping."""
        if isinstance(source, Mapping):
            meta, where = source, "GGUF metadata"
        else:
            from model.gguf import read_metadata

            meta, where = read_metadata(source), str(source)
        kind = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not kind or not tokens:
            raise TokenizerError(f"{where}: has no tokenizer (tokenizer.ggml.model/tokens missing)")
        tokens = list(tokens)
        types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        if kind == "gpt2":
            backend = _gguf_byte_level(meta, tokens, where)
            default_add_bos = False
        elif kind == "llama":
            backend = _gguf_sentencepiece(meta, tokens, types, where)
            default_add_bos = True
        else:
            raise TokenizerError(
                f"{where}: tokenizer model {kind!r} is not supported (supported: gpt2, llama)"
            )
        specials = [
            AddedToken(t, normalized=False, special=True)
            for t, kind_id in zip(tokens, types, strict=False)
            if kind_id == _TOKEN_TYPE_CONTROL
        ]
        backend.add_special_tokens(specials)
        user = [
            AddedToken(t, normalized=False, special=False)
            for t, kind_id in zip(tokens, types, strict=False)
            if kind_id == _TOKEN_TYPE_USER_DEFINED
        ]
        if user:
            backend.add_tokens(user)

        def get_id(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}")
            return int(value) if value is not None else None

        bos, eos = get_id("bos_token_id"), get_id("eos_token_id")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos))
        add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        if (add_bos and bos is not None) or (add_eos and eos is not None):
            single = ([f"{tokens[bos]}:0"] if add_bos and bos is not None else []) + ["$A:0"]
            pair = [*single, "$B:1"]
            if add_eos and eos is not None:
                single.append(f"{tokens[eos]}:0")
                pair.append(f"{tokens[eos]}:1")
            special_ids = [(tokens[i], i) for i in {bos, eos} if i is not None]
            backend.post_processor = processors.TemplateProcessing(
                single=" ".join(single), pair=" ".join(pair), special_tokens=special_ids
            )
        extra = [i for i in (get_id("eot_token_id"), get_id("eom_token_id")) if i is not None]
        return cls(
            backend,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=get_id("padding_token_id"),
            unk_token_id=get_id("unknown_token_id"),
            extra_stop_token_ids=extra,
            chat_template=meta.get("tokenizer.chat_template"),
            add_bos_token=add_bos,
        )

    # ------------------------------------------------------------------------------- encoding

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (including added tokens)."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text``; ``add_special_tokens`` adds BOS/EOS as the checkpoint asks."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text for ``ids``; bytes of an unfinished UTF-8 character decode to U+FFFD."""
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry (``None`` when absent)."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary spelling of one id (``None`` when out of range)."""
        return self.backend.id_to_token(token_id)

    def stream_decoder(self, *, skip_special_tokens: bool = False) -> StreamDecoder:
        """A fresh incremental detokenizer for one generated sequence."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """``bos_token``/``eos_token``/``pad_token``/``unk_token`` strings, as templates see them."""

        def spell(i: int | None) -> str | None:
            return self.backend.id_to_token(i) if i is not None else None

        return {
            "bos_token": spell(self.bos_token_id),
            "eos_token": spell(self.eos_token_id),
            "pad_token": spell(self.pad_token_id),
            "unk_token": spell(self.unk_token_id),
        }

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render the conversation with the checkpoint's own template (see ``chat_template``)."""
        return render_chat_template(
            self.chat_template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
            **extra,
        )


class StreamDecoder:
    """Incremental detokenization: ``push(id)`` returns the newly completed text.

    Decoding token by token is wrong twice over: a multi-byte character can be split across two
    byte-level tokens, and SentencePiece decoders change a token's text depending on what
    precedes it. So we decode a short window (``_prefix``..end) and emit only what extends the
    previously decoded window, holding text back while it ends in an incomplete character
    (U+FFFD). The increments concatenate to ``decode(all ids)`` (``flush()`` emits the rest).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: text before it has been emitted for good
        self._read = 0  # ids up to here are represented in emitted text

    def _text(self, start: int, end: int) -> str:
        return self._tok.decode(self.ids[start:end], skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        self.ids.append(int(token_id))
        before = self._text(self._prefix, self._read)
        now = self._text(self._prefix, len(self.ids))
        # A UTF-8 character spans at most 4 bytes, hence at most 4 pending tokens: a U+FFFD
        # still there after that is a genuinely invalid sequence, not an unfinished one.
        unfinished = now.endswith("\ufffd") and len(self.ids) - self._read < 4
        if len(now) > len(before) and not unfinished and now.startswith(before):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        """The remaining text (including a trailing incomplete character as U+FFFD)."""
        before = self._text(self._prefix, self._read)
        now = self._text(self._prefix, len(self.ids))
        self._prefix = self._read = len(self.ids)
        return now[len(before) :] if now.startswith(before) else ""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _gguf_byte_level(meta: Mapping[str, Any], tokens: list[str], where: str) -> BackendTokenizer:
    merges_raw = meta.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise TokenizerError(f"{where}: byte-level BPE vocabulary without tokenizer.ggml.merges")
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = BackendTokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    return backend


def _gguf_sentencepiece(
    meta: Mapping[str, Any], tokens: list[str], types: list[int], where: str
) -> BackendTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    if meta.get("tokenizer.ggml.merges"):
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if not scores:
            raise TokenizerError(f"{where}: SentencePiece vocabulary without merges or scores")
        merges = _derived_merges(tokens, list(scores))
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    backend = BackendTokenizer(
        BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    # Spaces become "▁"; the dummy prefix goes before the first piece only, and not when the
    # text already starts with a space (transformers' non-legacy Llama tokenizer does the same).
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps: list[decoders.Decoder] = [
        decoders.Replace("\u2581", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if add_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend
