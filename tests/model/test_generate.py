# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Generation: sampling, stops, streaming, batching, context limits, the processor hook."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from model import ContextLengthError, LanguageModel, load
from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.transformer import CausalLM
from tests.model._io_fixtures import (  # noqa: F401 - fixtures used by name
    smollm2,
    smollm2_gguf,
    tiny_llama,
)


@pytest.fixture(scope="module")
def tiny(tiny_llama) -> LanguageModel:
    return load(tiny_llama[0])


class Script:
    """A logits processor that forces a fixed continuation, then the end token."""

    def __init__(self, ids: Sequence[int], end: int = 2) -> None:
        self.ids, self.end = list(ids), end

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        forced = self.ids[len(generated)] if len(generated) < len(self.ids) else self.end
        out = torch.full_like(logits, float("-inf"))
        out[forced] = 0.0
        return out


def test_seeded_sampling_is_reproducible(tiny):
    kw = dict(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95, stop_token_ids=[])
    a = tiny.generate("the", seed=7, **kw).token_ids
    b = tiny.generate("the", seed=7, **kw).token_ids
    c = tiny.generate("the", seed=8, **kw).token_ids
    assert a == b and len(a) == 24
    assert a != c
    assert "".join(tiny.stream("the", seed=7, **kw)) == tiny.tokenizer.decode(a)


def test_greedy_equals_top_k_1_and_tiny_top_p(tiny):
    greedy = tiny.generate("the é", max_new_tokens=12, stop_token_ids=[]).token_ids
    assert tiny.generate("the é", max_new_tokens=12, temperature=0.8, top_k=1, seed=1,
                         stop_token_ids=[]).token_ids == greedy
    assert tiny.generate("the é", max_new_tokens=12, temperature=0.8, top_p=1e-6, seed=2,
                         stop_token_ids=[]).token_ids == greedy


def test_repetition_penalty_changes_greedy_choice(tiny):
    plain = tiny.generate("the the the", max_new_tokens=16, stop_token_ids=[]).token_ids
    penalised = tiny.generate("the the the", max_new_tokens=16, repetition_penalty=5.0,
                              stop_token_ids=[]).token_ids
    assert plain != penalised
    assert len(set(penalised)) >= len(set(plain))


def test_stop_string_is_honoured_and_never_streamed_partially(tiny):
    text = "the cat STAR then STOP and more"
    script = Script(tiny.tokenizer.encode(text))
    pieces = list(tiny.stream("x", stop=["STOP"], max_new_tokens=60, logits_processor=script, result=(res := [])))
    assert "".join(pieces) == "the cat STAR then " == res[0].text
    assert res[0].finish_reason == "stop"
    assert not any("STO" in p for p in pieces)
    # "STAR" shares "ST" with the stop string: held back, then released with the "A"
    assert "STA" in pieces and "S" not in pieces
    full = tiny.generate("x", stop=["never"], max_new_tokens=60, logits_processor=Script(tiny.tokenizer.encode(text)))
    assert full.text == text and full.finish_reason == "stop"  # the end token after the script


def test_stop_token_is_not_emitted(tiny):
    ids = tiny.tokenizer.encode("the end")
    result = tiny.generate("x", max_new_tokens=30, logits_processor=Script(ids, end=2))
    assert result.finish_reason == "stop"
    assert result.token_ids == ids and result.text == "the end"
    assert result.usage.completion_tokens == len(ids) + 1 and result.usage.prompt_tokens == 1


def test_streaming_with_multibyte_characters_split_across_tokens(tiny):
    text = "héllo 日本語 🤖🎉 é"
    ids = tiny.tokenizer.encode(text)
    assert len(ids) > len(text)
    out: list = []
    pieces = list(tiny.stream("x", max_new_tokens=100, logits_processor=Script(ids), result=out))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == out[0].text == text


def test_max_new_tokens_gives_length(tiny):
    r = tiny.generate("the", max_new_tokens=5, stop_token_ids=[])
    assert r.finish_reason == "length" and len(r.token_ids) == 5 and r.usage.completion_tokens == 5
    zero = tiny.generate("the", max_new_tokens=0)
    assert zero.finish_reason == "length" and zero.token_ids == [] and zero.text == ""


def test_prompt_longer_than_context_raises(tiny):
    context = tiny.context_length
    with pytest.raises(ContextLengthError, match=str(context + 1)):
        tiny.generate([5] * (context + 1), max_new_tokens=1)
    # a prompt that fits but leaves little room: output is cut at the context end
    r = tiny.generate([5] * (context - 3), max_new_tokens=50, stop_token_ids=[])
    assert r.finish_reason == "length" and len(r.token_ids) == 3


def test_bad_parameters_are_rejected(tiny):
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=-1),
                dict(repetition_penalty=0)):
        with pytest.raises(ValueError):
            tiny.generate("the", **bad)
    with pytest.raises(TypeError):
        tiny.generate("the", stop="STOP")
    with pytest.raises(TypeError):
        tiny.generate_batch("not a list")
    with pytest.raises(ValueError, match="processors"):
        tiny.generate_batch(["a", "b"], logits_processors=[None])


def _batch_equals_alone(lm: LanguageModel, prompts: list, n: int) -> None:
    batch = lm.generate_batch(prompts, max_new_tokens=n, stop_token_ids=[])
    for prompt, got in zip(prompts, batch, strict=True):
        alone = lm.generate(prompt, max_new_tokens=n, stop_token_ids=[])
        assert got.token_ids == alone.token_ids, prompt
        assert got.text == alone.text


def test_batch_of_different_lengths_equals_each_alone_llama(tiny):
    _batch_equals_alone(tiny, ["the", "the é the cat sat on", "é é"], 10)


def test_batch_of_different_lengths_equals_each_alone_jamba(tiny_llama):
    torch.manual_seed(0)
    config = ModelConfig.jamba_tiny()
    net = CausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init: well-separated logits
        for p in net.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    tok = Tokenizer.from_gguf(tiny_llama[0])
    lm = LanguageModel(net, tok, name="jamba-tiny", path=tiny_llama[0])
    prompts = [[5, 9, 30], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7]]
    _batch_equals_alone(lm, prompts, 8)


@pytest.mark.slow
def test_smollm2_batch_equals_alone(smollm2):
    _batch_equals_alone(smollm2, ["The capital of France is", "Once upon a time, in a land far away, there"], 6)


def test_processor_that_masks_everything_is_a_clear_error(tiny):
    from model import ModelError

    def nothing(generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        return torch.full_like(logits, float("-inf"))

    with pytest.raises(ModelError, match="masked every token"):
        tiny.generate("the", max_new_tokens=3, logits_processor=nothing)


def test_streaming_does_not_leak_inference_mode(tiny):
    for _ in tiny.stream("the", max_new_tokens=3, stop_token_ids=[]):
        assert not torch.is_inference_mode_enabled()
    state = torch.random.get_rng_state()
    tiny.generate("the", max_new_tokens=3, temperature=1.0)  # unseeded sampling
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_cli_generate_and_chat_on_a_local_gguf(tiny_llama):
    from typer.testing import CliRunner

    from maestro.commands.model import app

    path = str(tiny_llama[0])
    runner = CliRunner()
    expected = load(path).generate("the", max_new_tokens=6, stop_token_ids=[]).text
    out = runner.invoke(app, ["generate", "--model", path, "--max-tokens", "6", "the"])
    assert out.exit_code == 0, out.output
    assert out.stdout == expected + "\n"  # the text only: progress goes to stderr
    bad = runner.invoke(app, ["generate", "--model", path, "--temperature", "-1", "the"])
    assert bad.exit_code != 0
    expected8 = load(path, quantize="int8").generate("the", max_new_tokens=6, stop_token_ids=[]).text
    q8 = runner.invoke(app, ["generate", "--model", path, "-n", "6", "--quantize", "int8", "the"])
    assert q8.exit_code == 0, q8.output
    assert q8.stdout == expected8 + "\n"
    expected16 = load(path, quantize="bf16").generate("the", max_new_tokens=6, stop_token_ids=[]).text
    q16 = runner.invoke(app, ["generate", "--model", path, "-n", "6", "-q", "bf16", "the"])
    assert q16.exit_code == 0, q16.output
    assert q16.stdout == expected16 + "\n"
    assert runner.invoke(app, ["generate", "--model", path, "-q", "int3", "the"]).exit_code == 2
    chat = runner.invoke(app, ["chat", "--model", path, "--max-tokens", "4"], input="hello\n/reset\nagain\n/exit\n")
    assert chat.exit_code == 0, chat.output
    assert "conversation cleared" in chat.output


def test_load_hf_directory_generates_like_the_gguf(tmp_path, tiny_llama):
    import json

    from safetensors.numpy import save_file

    path, config, tensors = tiny_llama
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    gguf_model = load(path)
    gguf_model.tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": gguf_model.tokenizer.chat_template}
    ))
    hf_model = load(tmp_path)
    messages = [{"role": "user", "content": "the cat"}]
    assert hf_model.render_chat(messages) == gguf_model.render_chat(messages)
    a = hf_model.chat(messages, max_new_tokens=8, stop_token_ids=[])
    b = gguf_model.chat(messages, max_new_tokens=8, stop_token_ids=[])
    assert a.token_ids == b.token_ids and a.text == b.text
