"""Text generation: prefill, decode loop, sampling, stop handling and streaming.

The loop follows gpt-fast's shape (a prefill, then one token per step) over the engine's one
model call ``model(input_ids, cache, pad_mask)``:

1. prompts are left-padded into one batch (``pad_mask`` True = real token) and prefilled in
   chunks, so an 8k-token prompt never materialises 8k rows of vocabulary logits at once;
2. each step takes the last logits of every sequence through, in order: repetition penalty,
   the caller's per-sequence ``LogitsProcessor`` (the hook a grammar mask plugs into),
   temperature, top-k, top-p, then argmax (temperature 0) or a draw from a seeded
   ``torch.Generator`` (the same seed gives the same tokens);
3. a sequence finishes on a stop token id (not emitted), on a stop string (the text is cut
   before it, and streaming never shows a partial stop string), or after ``max_new_tokens``.

Context: a prompt longer than the model's context raises ``ContextLengthError``. If prompt plus
``max_new_tokens`` exceed it, generation stops at the context end with finish reason
"length" (documented truncation of the *output*, never of the prompt).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from model.errors import ContextLengthError, ModelError

if TYPE_CHECKING:
    from model.prefix_cache import PrefixCache
    from model.tokenizer import StreamDecoder, Tokenizer
    from model.transformer import CausalLM

__all__ = [
    "FinishReason",
    "GenerationResult",
    "LogitsProcessor",
    "SamplingParams",
    "Usage",
    "generate_batch",
    "generate_stream",
    "sample_next",
]

FinishReason = Literal["stop", "length"]
PREFILL_CHUNK = 1024  # tokens in one prefill call on the CPU, all rows together
GPU_PREFILL_TOKENS = 8192  # tokens in one prefill call on a GPU, all rows together
CPU_MIN_CHUNK, GPU_MIN_CHUNK = 128, 512  # tokens per row in one call, however large the batch


def prefill_chunk(device: torch.device, batch: int = 1) -> int:
    """Tokens per row in one prefill call: bounds the activations a call holds.

    On the CPU 1024 tokens a call across the batch. A prefill there is bound by the matmuls,
    and longer calls give the BLAS taller products (the MoE's experts get ~250 rows each from
    512 tokens) and attention longer query blocks. Against 512, interleaved in one process on the 2-core EPYC: the 300M Jamba
    prefilled 2048 tokens 4% faster (421 against 405 tok/s, 9 pairs) and 8192 4.5% faster;
    SmolLM2 2048 tokens 9% and 8168 12% faster. One call of 2048 was slower than two of 1024.
    On a GPU a call of a small model is bound by launching its kernels from the host, so
    prefill takes fewer, longer calls: 8192 tokens a call across the batch. The 300M Jamba
    prefilled 2048 tokens on an H100 in 130 ms as four calls of 512, in 28 ms as one.
    """
    if device.type == "cpu":
        return max(CPU_MIN_CHUNK, PREFILL_CHUNK // max(batch, 1))
    return max(GPU_MIN_CHUNK, GPU_PREFILL_TOKENS // max(batch, 1))


class LogitsProcessor(Protocol):
    """Edits one sequence's next-token logits in place or returns new ones.

    ``generated`` holds the ids sampled so far for this sequence (not the prompt), so a
    stateful processor (a grammar matcher) can advance itself by the tokens it has not seen.
    Masking a token means setting its logit to ``-inf``.
    """

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy; the other knobs then only matter
    through ``repetition_penalty`` and the processors."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already seen
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] | None = None  # None: the tokenizer's end tokens

    def validate(self) -> None:
        """Reject nonsense early, with the field's name."""
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            raise TypeError("stop must be a sequence of strings, e.g. stop=['\\n\\n']")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens restored from the prefix cache, not prefilled

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationResult:
    """One finished sequence.

    ``token_ids`` are the sampled ids, without a final stop token id; when a stop *string*
    ended the sequence they include the tokens that spelled it (the text does not).
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage


# ----------------------------------------------------------------------------------- sampling


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """CTRL-style penalty on ids in ``seen``: positive logits divided, negative multiplied."""
    picked = logits.gather(-1, seen)
    logits.scatter_(-1, seen, torch.where(picked > 0, picked / penalty, picked * penalty))


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, V) fp32 logits -> (B,) token ids after temperature / top-k / top-p."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------- per-sequence state


@dataclass
class _Sequence:
    prompt_len: int
    decoder: StreamDecoder
    stop: Sequence[str]
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far, possibly containing a stop string not yet detected
    emitted: int = 0  # characters of ``text`` already handed to the caller
    finish_reason: FinishReason | None = None
    steps: int = 0  # tokens sampled, including a final stop token
    cached: int = 0  # prompt tokens restored from the prefix cache

    def _held_back(self) -> int:
        """Characters at the end of ``text`` that could start a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def add_text(self, piece: str) -> str:
        """Append decoded text; return what is now safe to show (stop strings cut)."""
        if not piece:
            return ""
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += piece
        hits = [i for s in self.stop if (i := self.text.find(s, search_from)) != -1]
        if hits:
            self.text = self.text[: min(hits)]
            self.finish_reason = "stop"
            return self.release()
        safe = len(self.text) - self._held_back()
        out = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return out

    def release(self) -> str:
        """Everything not yet shown (at the end of the sequence)."""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out


# ------------------------------------------------------------------------------------ the loop


def _prefill(
    model: CausalLM, prompts: Sequence[Sequence[int]], max_len: int, pad_id: int
) -> tuple[torch.Tensor, object]:
    """Left-pad and run the prompts; returns the last logits (B, V) and the cache."""
    device = model.device
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt) :] = True
    ids, mask = ids.to(device), mask.to(device)
    padded = not bool(mask.all())
    cache = model.new_cache(len(prompts), max_len)
    logits = None
    step = prefill_chunk(device, len(prompts))
    for start in range(0, longest, step):
        chunk = slice(start, start + step)
        # Only the last position's logits are used: skip the LM head for the rest (a batch of
        # 50 rows x 128 tokens would otherwise build a 1.2 GB fp32 tensor on a 49k vocabulary).
        out = model(ids[:, chunk], cache=cache, pad_mask=mask[:, chunk] if padded else None,
                    logits_to_keep=1)
        logits = out[:, -1, :]
        del out
    assert logits is not None
    return logits, cache


def _run(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    processors: Sequence[LogitsProcessor | None] | None,
    prefix_cache: PrefixCache | None = None,
    boundaries: Sequence[int] = (),
) -> Iterator[tuple[list[str], list[_Sequence]]]:
    """Yields, after every step, each sequence's new visible text and the sequence states.

    With a ``prefix_cache``, a single prompt resumes from its longest cached prefix and records
    new snapshots (at block boundaries, at ``boundaries`` and at its end); batches skip it.
    """
    params.validate()
    if not prompts:
        raise ValueError("no prompts given")
    if processors is not None and len(processors) != len(prompts):
        raise ValueError(f"{len(processors)} logits processors for {len(prompts)} prompts")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; encode at least one token (e.g. BOS)")
    context = model.config.max_position_embeddings
    longest = max(len(p) for p in prompts)
    if longest > context:
        raise ContextLengthError(longest, context, "the model's context window")
    budget = min(params.max_new_tokens, context - longest)
    stop_ids = set(tokenizer.stop_token_ids if params.stop_token_ids is None else params.stop_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [
        _Sequence(prompt_len=len(p), decoder=tokenizer.stream_decoder(), stop=list(params.stop))
        for p in prompts
    ]
    if budget == 0:  # nothing asked for, or the prompt fills the context
        for seq in seqs:
            seq.finish_reason = "length"
        yield ["" for _ in seqs], seqs
        return
    generator = None
    if params.temperature > 0:
        generator = torch.Generator(device=model.device)
        # Without a seed, draw one from the OS: never reseed torch's global generator.
        generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    history = [list(p) for p in prompts] if params.repetition_penalty != 1.0 else None

    # inference_mode only around tensor work: a generator suspended at ``yield`` must not
    # leave the caller's own code running in inference mode.
    with torch.inference_mode():
        if prefix_cache is not None and len(prompts) == 1:
            logits, cache, seqs[0].cached = prefix_cache.prefill(
                model, prompts[0], longest + budget, boundaries
            )
        else:
            logits, cache = _prefill(model, prompts, longest + budget, pad_id)
    for step in range(budget):
        with torch.inference_mode():
            tokens = _pick(logits.float(), seqs, params, processors, history, generator)
        deltas: list[str] = []
        for row, seq in enumerate(seqs):
            if seq.finish_reason is not None:
                deltas.append("")
                continue
            token = tokens[row]
            seq.steps += 1
            if token in stop_ids:
                seq.finish_reason = "stop"
                deltas.append(seq.add_text(seq.decoder.flush()) + seq.release())
                continue
            seq.ids.append(token)
            if history is not None:
                history[row].append(token)
            delta = seq.add_text(seq.decoder.push(token))
            if seq.finish_reason is None and step == budget - 1:
                seq.finish_reason = "length"
                delta += seq.add_text(seq.decoder.flush())
                delta += seq.release()
            deltas.append(delta)
        yield deltas, seqs
        if all(seq.finish_reason is not None for seq in seqs) or step == budget - 1:
            break
        # Finished rows still ride along in the batch (fed padding); their output is ignored.
        feed = [t if seq.finish_reason is None else pad_id for t, seq in zip(tokens, seqs, strict=True)]
        with torch.inference_mode():
            step_ids = torch.tensor(feed, dtype=torch.long, device=model.device)[:, None]  # (B, 1)
            logits = model(step_ids, cache=cache)[:, -1, :]


def _pick(
    logits: torch.Tensor,
    seqs: list[_Sequence],
    params: SamplingParams,
    processors: Sequence[LogitsProcessor | None] | None,
    history: list[list[int]] | None,
    generator: torch.Generator | None,
) -> list[int]:
    """The next token of every sequence from its (B, V) logits."""
    for row, seq in enumerate(seqs):
        if seq.finish_reason is not None:
            continue
        if history is not None:
            seen = torch.tensor(sorted(set(history[row])), device=logits.device)
            _apply_repetition_penalty(logits[row], seen, params.repetition_penalty)
        proc = processors[row] if processors is not None else None
        if proc is not None:
            logits[row] = proc(seq.ids, logits[row])
            if not bool(torch.isfinite(logits[row]).any()):
                raise ModelError(
                    f"the logits processor of sequence {row} masked every token "
                    f"(after {len(seq.ids)} generated tokens); it must leave at least one"
                )
    return [int(t) for t in sample_next(logits, params, generator).tolist()]


def _result(seq: _Sequence) -> GenerationResult:
    assert seq.finish_reason is not None
    return GenerationResult(
        text=seq.text,
        token_ids=list(seq.ids),
        finish_reason=seq.finish_reason,
        usage=Usage(
            prompt_tokens=seq.prompt_len, completion_tokens=seq.steps, cached_tokens=seq.cached
        ),
    )


def generate_batch(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    processors: Sequence[LogitsProcessor | None] | None = None,
    prefix_cache: PrefixCache | None = None,
    boundaries: Sequence[int] = (),
) -> list[GenerationResult]:
    """Generate for several tokenised prompts at once (different lengths are fine).

    ``prefix_cache`` (single prompts only) reuses and records prompt-prefix states."""
    seqs: list[_Sequence] = []
    for _, states in _run(model, tokenizer, prompts, params, processors, prefix_cache, boundaries):
        seqs = states
    return [_result(s) for s in seqs]


def generate_stream(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    params: SamplingParams,
    processor: LogitsProcessor | None = None,
    result: list[GenerationResult] | None = None,
    prefix_cache: PrefixCache | None = None,
    boundaries: Sequence[int] = (),
) -> Iterator[str]:
    """Yield text increments for one prompt; they concatenate to the final text.

    Pass an empty list as ``result`` to receive the ``GenerationResult`` when the stream ends.
    """
    seqs: list[_Sequence] = []
    for deltas, states in _run(
        model, tokenizer, [prompt], params, [processor], prefix_cache, boundaries
    ):
        seqs = states
        if deltas[0]:
            yield deltas[0]
    if result is not None and seqs:
        result.append(_result(seqs[0]))
