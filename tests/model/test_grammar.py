"""Grammar-constrained decoding through llguidance, on real tokenizer vocabularies.

A "model" that emits random logits is the harshest user of a grammar: whatever it prefers,
the mask must leave only continuations that end in valid output.
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from model.grammar import Grammar, GrammarError, GrammarMatcher, GrammarTokenizer

CORPUS = [
    '{"name": "calculator", "arguments": {"expression": "2 + 2"}}',
    '{"city": "Paris", "population": 2148000, "capital": true}',
    "The quick brown fox jumps over the lazy dog. 0123456789 [] {} : , \" '",
    "yes no maybe Paris London Tokyo é ü 東京 🙂",
] * 20
EOS = "<|endoftext|>"


def _byte_level_bpe() -> BackendTokenizer:
    tok = BackendTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _byte_fallback_bpe() -> BackendTokenizer:
    """A SentencePiece-style vocabulary (Jamba's kind): '▁' for spaces, <0xNN> byte tokens."""
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["<unk>", "<s>", EOS, *byte_tokens, "▁", "a", "e", "i", "o", "P", "r", "s", "▁P", "ar", "is"]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [("▁", "P"), ("a", "r"), ("i", "s")]
    tok = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([EOS])
    return tok


@pytest.fixture(scope="module", params=["byte_level", "byte_fallback"])
def vocab(request: pytest.FixtureRequest) -> tuple[BackendTokenizer, GrammarTokenizer]:
    backend = _byte_level_bpe() if request.param == "byte_level" else _byte_fallback_bpe()
    eos = backend.token_to_id(EOS)
    # An output layer wider than the vocabulary (padding rows), as real checkpoints often have.
    bridge = GrammarTokenizer(backend.to_str(), eos_token_ids=[eos], vocab_size=backend.get_vocab_size() + 7)
    return backend, bridge


def _random_walk(backend: BackendTokenizer, bridge: GrammarTokenizer, grammar: Grammar, seed: int,
                 max_tokens: int = 200) -> tuple[str, bool]:
    """Sample from random logits under the grammar; returns (text, finished with a stop token)."""
    gen = torch.Generator().manual_seed(seed)
    matcher = GrammarMatcher(bridge, grammar)
    eos = backend.token_to_id(EOS)
    ids: list[int] = []
    for _ in range(max_tokens):
        logits = torch.randn(bridge.vocab_size, generator=gen)
        logits[eos] -= 3.0  # a model that would rather keep talking
        matcher.mask_(logits)
        assert torch.isfinite(logits).any(), "the grammar left no token allowed"
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        assert token < backend.get_vocab_size(), "a padding row of the output layer was allowed"
        matcher.advance(token)
        if token == eos:
            return backend.decode(ids), True
        ids.append(token)
    return backend.decode(ids), False


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["calculator", "search"]},
        "arguments": {
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": 12}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


def test_random_logits_under_a_json_schema_always_give_valid_json(vocab) -> None:
    backend, bridge = vocab
    grammar = Grammar.json_schema(SCHEMA)
    finished = 0
    for seed in range(12):
        text, done = _random_walk(backend, bridge, grammar, seed)
        if not done:
            continue  # ran out of tokens mid-string: the caller reports finish_reason="length"
        finished += 1
        value = json.loads(text)
        assert not set(text) & set("\n\r\t"), "JSON is written on one line, as json.dumps does"
        assert value["name"] in ("calculator", "search")
        assert set(value) == {"name", "arguments"}
        assert set(value["arguments"]) == {"expression"}
        assert len(value["arguments"]["expression"]) <= 12
    assert finished >= 6, f"only {finished}/12 random walks completed within 200 tokens"


def test_choice_and_regex(vocab) -> None:
    backend, bridge = vocab
    options = ["Paris", "London", "Tokyo"] if bridge.ll.vocab_size > 300 else ["Paris", "aris", "is"]
    for seed in range(5):
        text, done = _random_walk(backend, bridge, Grammar.choice(options), seed)
        assert done and text in options
        text, done = _random_walk(backend, bridge, Grammar.regex(r"[0-9]{3}-[0-9]{2}"), seed)
        assert done
        assert len(text) == 6 and text[3] == "-" and text.replace("-", "").isdigit()


def test_pydantic_model_classes_are_accepted_as_schemas(vocab) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Answer(pydantic.BaseModel):
        score: float
        reason: str = pydantic.Field(max_length=20)

    backend, bridge = vocab
    text, done = _random_walk(backend, bridge, Grammar.json_schema(Answer), seed=3, max_tokens=400)
    if done:
        Answer.model_validate_json(text)


def test_bad_grammars_and_disallowed_tokens_raise_clear_errors(vocab) -> None:
    backend, bridge = vocab
    with pytest.raises(GrammarError, match="regex"):
        Grammar.regex("([unclosed")
    with pytest.raises(GrammarError, match="choice"):
        Grammar.choice([])
    matcher = GrammarMatcher(bridge, Grammar.choice(["Paris"] if bridge.ll.vocab_size > 300 else ["is"]))
    bad = backend.token_to_id(EOS)  # the answer cannot end before it starts
    with pytest.raises(GrammarError, match="not allowed"):
        matcher.advance(bad)


def test_the_matcher_reports_completion(vocab) -> None:
    backend, bridge = vocab
    word = "Paris" if bridge.ll.vocab_size > 300 else "is"
    matcher = GrammarMatcher(bridge, Grammar.choice([word]))
    assert not matcher.is_accepting()
    # A SentencePiece-style tokenizer would encode a leading "▁" (a space); spell the word alone.
    single = backend.token_to_id(word)
    ids = [single] if single is not None else backend.encode(word, add_special_tokens=False).ids
    for token in ids:
        matcher.advance(token)
    assert matcher.is_accepting()
