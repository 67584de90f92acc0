# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Tokenizers from GGUF metadata and HF directories, and streaming detokenisation."""

from __future__ import annotations

import json

import pytest

from model.gguf import read_metadata
from model.tokenizer import Tokenizer, TokenizerError
from tests.model._io_fixtures import (  # noqa: F401 - fixtures used by name
    hf_smollm2_tokenizer,
    smollm2,
    smollm2_gguf,
    tiny_llama,
)

SAMPLES = [
    "Hello, world! This is a plain ASCII sentence.",
    "Crème brûlée, naïve façade, Zoë and Ångström",
    "日本語のテキストと中文字符，한국어도",
    "emoji 🤖🎉👍🏽 and flags 🇫🇷 mixed in",
    "   leading spaces\t\ttabs\n\n\nnewlines   and trailing   ",
    "<|im_start|>user\nspecial tokens stay whole<|im_end|>",
    "digits 1234567890 and 3.14159",
]


@pytest.mark.slow
def test_ids_identical_to_transformers_for_the_default_model(smollm2, hf_smollm2_tokenizer):
    for text in SAMPLES:
        ours = smollm2.tokenizer.encode(text)
        theirs = hf_smollm2_tokenizer.encode(text)
        assert ours == theirs, text
        assert smollm2.tokenizer.decode(ours) == hf_smollm2_tokenizer.decode(theirs) == text


def test_gguf_tokenizer_specials_and_roundtrip(tiny_llama):
    tok = Tokenizer.from_gguf(tiny_llama[0])
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.encode("<|im_start|>") == [1]  # control tokens matched whole
    ids = tok.encode(" the é")
    # the merges " the" and "é" applied; " é" is one pre-token, spelled "Ġ" + "é"
    assert ids == [tok.token_to_id(t) for t in ("\u0120the", "\u0120", "\u00c3\u00a9")]
    assert tok.decode(ids) == " the é"
    assert tok.decode([1, *ids, 2], skip_special_tokens=True) == " the é"
    assert 2 in tok.stop_token_ids


def test_stream_decoder_never_splits_characters(tiny_llama):
    tok = Tokenizer.from_gguf(tiny_llama[0])
    text = "naïve 日本 🤖🎉 done é"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # multi-byte characters span several byte tokens
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == text
    assert sum(1 for p in pieces if p == "") >= 3  # held back mid-character


def test_stream_decoder_flush_keeps_an_incomplete_tail(tiny_llama):
    tok = Tokenizer.from_gguf(tiny_llama[0])
    ids = tok.encode("ok 🤖")[:-1]  # cut inside the emoji
    decoder = tok.stream_decoder()
    streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert streamed == tok.decode(ids) and streamed.endswith("\ufffd")


def test_hf_directory_tokenizer(tmp_path, tiny_llama):
    gguf_tok = Tokenizer.from_gguf(tiny_llama[0])
    gguf_tok.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}",
    }))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert tok.encode("the é café") == gguf_tok.encode("the é café")
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.stop_token_ids == {0, 2}
    assert tok.chat_template == "{{ messages[0]['content'] }}"


def test_tokenizer_errors(tmp_path, tiny_llama):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        Tokenizer.from_hf_dir(tmp_path)
    meta = dict(read_metadata(tiny_llama[0]))
    meta["tokenizer.ggml.model"] = "bert"
    with pytest.raises(TokenizerError, match="bert"):
        Tokenizer.from_gguf(meta)
    meta["tokenizer.ggml.model"] = "gpt2"
    meta["tokenizer.ggml.pre"] = "made-up"
    with pytest.raises(TokenizerError, match="made-up"):
        Tokenizer.from_gguf(meta)
    with pytest.raises(TypeError):
        Tokenizer.from_gguf(tiny_llama[0]).encode(b"bytes")  # type: ignore[arg-type]


def test_stream_decoder_does_not_stall_on_invalid_utf8(tiny_llama):
    tok = Tokenizer.from_gguf(tiny_llama[0])
    invalid = 3 + 0xFF  # the byte 0xFF token: never valid UTF-8
    decoder = tok.stream_decoder()
    pieces = [decoder.push(invalid) for _ in range(6)]
    assert "".join(pieces), "text must flow once 4 tokens cannot complete a character"
    assert "".join(pieces) + decoder.flush() == tok.decode([invalid] * 6)


def test_sentencepiece_gguf_tokenizer_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    from tests.model._io_fixtures import (
        tiny_llama_hf_weights,
        tiny_sentencepiece_vocab,
        write_tiny_llama_gguf,
    )

    config, tensors = tiny_llama_hf_weights(vocab=len(tiny_sentencepiece_vocab()[0]))
    path = write_tiny_llama_gguf(tmp_path / "spm.gguf", config, tensors, sentencepiece=True)
    ours = Tokenizer.from_gguf(path)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["abc", " a b c", "cab  abc", "abcabc ca", "ñ and 日本", "a\nb"]:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == theirs.decode(
            theirs.encode(text), skip_special_tokens=True
        ), text
    assert ours.encode("abc")[0] == 1  # add_bos_token
    decoder = ours.stream_decoder(skip_special_tokens=True)
    ids = ours.encode("abc ñ ca")
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == ours.decode(ids, skip_special_tokens=True)
