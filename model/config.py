"""Model configuration: the layer stack described as data.

One dataclass covers both families the engine runs. A Jamba model is "attention every 8th layer
at offset 4, MoE every 2nd layer at offset 1, no positional encoding"; a Llama-family model is
"attention and MLP everywhere, RoPE". Each layer is a ``LayerSpec(mixer, ffn)``, so the blocks in
``model/transformer.py`` never branch on the model type, only on the spec of their layer.

Public API (others build on it):
    LayerSpec(mixer: "attention" | "mamba", ffn: "mlp" | "moe")
    ModelConfig(...)                  see the fields below
    ModelConfig.from_hf_config(d)     from a Hugging Face config.json dict
                                      (model_type jamba, llama, mistral, qwen2)
    ModelConfig.jamba_300m() / llama_300m() / jamba_tiny()   named presets
    cfg.to_dict() / ModelConfig.from_dict(d)                 round trip (JSON-safe)
    cfg.config_hash()                 stable hex digest; a stored cache snapshot carries it
    cfg.num_params()                  parameter count implied by the config
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from model.errors import UnsupportedArchitectureError

Mixer = Literal["attention", "mamba"]
Ffn = Literal["mlp", "moe"]

SUPPORTED_MODEL_TYPES = ("jamba", "llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer is made of: its token mixer and its feed-forward block."""

    mixer: Mixer
    ffn: Ffn

    def __post_init__(self) -> None:
        if self.mixer not in ("attention", "mamba"):
            raise ValueError(f"LayerSpec.mixer must be 'attention' or 'mamba', got {self.mixer!r}")
        if self.ffn not in ("mlp", "moe"):
            raise ValueError(f"LayerSpec.ffn must be 'mlp' or 'moe', got {self.ffn!r}")


def jamba_layers(n: int, attn_period: int, attn_offset: int,
                 expert_period: int, expert_offset: int, num_experts: int) -> tuple[LayerSpec, ...]:
    """The Jamba layer pattern (HF JambaConfig.layers_block_type / layers_num_experts)."""
    if attn_offset >= attn_period or expert_offset >= expert_period:
        raise ValueError("a layer offset must be smaller than its period")
    return tuple(
        LayerSpec(
            "attention" if i % attn_period == attn_offset else "mamba",
            "moe" if num_experts > 1 and i % expert_period == expert_offset else "mlp",
        )
        for i in range(n)
    )


@dataclass
class ModelConfig:
    """Everything needed to build a CausalLM, independent of the checkpoint format.

    Sizes: D = hidden_size, I = intermediate_size (dense MLP and every expert), ED =
    mamba_expand * D, N = mamba_d_state, R = mamba_dt_rank, K = mamba_d_conv.
    ``rope_theta=None`` means no positional encoding at all (Jamba).
    ``eos_token_ids`` is a tuple because many checkpoints list several end tokens.
    """

    layers: tuple[LayerSpec, ...]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "jamba"
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling minus rope_theta; None = default
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False       # bias on q/k/v projections (qwen2, some llamas)
    attention_out_bias: bool = False   # bias on o_proj (llama attention_bias=True)
    mlp_bias: bool = False
    sliding_window: int | None = None  # mistral/qwen2; None = full causal attention
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int = 0             # 0 = ceil(hidden_size / 16), resolved in __post_init__
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    num_experts: int = 1
    num_experts_per_tok: int = 1
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        self.layers = tuple(
            spec if isinstance(spec, LayerSpec) else LayerSpec(*spec) for spec in self.layers
        )
        self.eos_token_ids = tuple(int(t) for t in self.eos_token_ids)
        if self.mamba_dt_rank == 0:
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16)
        problems = []
        if not self.layers:
            problems.append("at least one layer is needed")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_key_value_heads > 0 and self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if any(s.ffn == "moe" for s in self.layers) and not (
            1 <= self.num_experts_per_tok <= self.num_experts
        ):
            problems.append(
                f"MoE needs 1 <= num_experts_per_tok ({self.num_experts_per_tok}) "
                f"<= num_experts ({self.num_experts})"
            )
        if self.rope_theta is not None and self.head_dim % 2:
            problems.append(f"RoPE needs an even head_dim, got {self.head_dim}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedArchitectureError(
                f"rope_type {rope_type!r}", SUPPORTED_ROPE_TYPES, "RoPE scaling"
            )
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    # ----------------------------------------------------------------- derived sizes
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def mamba_d_inner(self) -> int:
        """ED: the Mamba mixer's inner width."""
        return self.mamba_expand * self.hidden_size

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.layers) if s.mixer == "attention")

    @property
    def mamba_layers(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.layers) if s.mixer == "mamba")

    def num_params(self) -> int:
        """Parameters implied by the config (tied embeddings counted once)."""
        d, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        h, kv = self.num_attention_heads, self.num_key_value_heads
        ed, n, r, k = self.mamba_d_inner, self.mamba_d_state, self.mamba_dt_rank, self.mamba_d_conv
        attn = d * hd * (h + 2 * kv) + h * hd * d
        attn += (hd * (h + 2 * kv) if self.attention_bias else 0) + (d if self.attention_out_bias else 0)
        mamba = d * 2 * ed + ed * k + ed * (r + 2 * n) + r * ed + ed + ed * n + ed + ed * d
        mamba += (ed if self.mamba_conv_bias else 0) + (2 * ed + d if self.mamba_proj_bias else 0)
        mamba += r + 2 * n  # the dt/B/C RMSNorm weights
        mlp = 3 * d * i
        total = self.vocab_size * d * (1 if self.tie_word_embeddings else 2) + d
        for spec in self.layers:
            total += 2 * d + (attn if spec.mixer == "attention" else mamba)
            total += mlp * self.num_experts + d * self.num_experts if spec.ffn == "moe" else mlp
        return total

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (layers as [mixer, ffn] pairs); inverse of ``from_dict``."""
        d = dataclasses.asdict(self)
        d["layers"] = [[s.mixer, s.ffn] for s in self.layers]
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        kwargs = dict(d)
        kwargs["layers"] = tuple(LayerSpec(*s) for s in d["layers"])
        kwargs["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**kwargs)

    def config_hash(self) -> str:
        """Stable digest of everything that shapes the computation (token ids excluded).

        Used to refuse a stored cache snapshot produced by a different model.
        """
        d = self.to_dict()
        for key in ("bos_token_id", "eos_token_ids", "pad_token_id", "max_position_embeddings"):
            d.pop(key)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ----------------------------------------------------------------- Hugging Face
    @classmethod
    def from_hf_config(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Build from a Hugging Face ``config.json`` dict (also a hand-written one)."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            archs = d.get("architectures")
            raise UnsupportedArchitectureError(
                str(model_type), SUPPORTED_MODEL_TYPES,
                f"architectures {archs}" if archs else "config.json model_type",
            )
        try:
            return _from_hf(cls, model_type, d)
        except KeyError as exc:
            raise ValueError(f"config.json for {model_type!r} lacks the key {exc}") from exc

    # ----------------------------------------------------------------- presets
    @classmethod
    def jamba_300m(cls) -> ModelConfig:
        """~300M parameters with Jamba-v0.1's layer pattern (benchmarks, random init)."""
        return cls(
            layers=jamba_layers(16, 8, 4, 2, 1, num_experts=4),
            vocab_size=32000, hidden_size=768, intermediate_size=2048,
            num_attention_heads=12, num_key_value_heads=4, head_dim=64,
            model_type="jamba", num_experts=4, num_experts_per_tok=2,
            max_position_embeddings=262144, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0,
        )

    @classmethod
    def llama_300m(cls) -> ModelConfig:
        """A Llama of about the same parameter count as ``jamba_300m`` (benchmarks)."""
        return cls(
            layers=tuple(LayerSpec("attention", "mlp") for _ in range(20)),
            vocab_size=32000, hidden_size=1024, intermediate_size=2816,
            num_attention_heads=16, num_key_value_heads=4, head_dim=64,
            model_type="llama", rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=16384, bos_token_id=1, eos_token_ids=(2,),
        )

    @classmethod
    def jamba_tiny(cls) -> ModelConfig:
        """A few-hundred-thousand-parameter Jamba for fast tests."""
        return cls(
            layers=jamba_layers(4, 4, 2, 2, 1, num_experts=4),
            vocab_size=256, hidden_size=64, intermediate_size=96,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            model_type="jamba", num_experts=4, num_experts_per_tok=2, mamba_d_state=8,
            max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0,
        )


def _bool(value: Any) -> bool:
    """Booleans as hand-written configs spell them ("false" must not become True)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected a boolean, got {value!r}")
        return value.strip().lower() in ("true", "1")
    return bool(value)


_MIXER_NAMES = {"attention": "attention", "full_attention": "attention",
                "mamba": "mamba", "linear_attention": "mamba"}


def _jamba_stack(d: Mapping[str, Any], num_layers: int, num_experts: int) -> tuple[LayerSpec, ...]:
    """The layer stack from explicit per-layer lists when the config has them, else the periods."""
    pattern = jamba_layers(
        num_layers, int(d.get("attn_layer_period", 8)), int(d.get("attn_layer_offset", 4)),
        int(d.get("expert_layer_period", 2)), int(d.get("expert_layer_offset", 1)), num_experts,
    )
    kinds = d.get("layers_block_type") or d.get("layer_types")
    experts = d.get("layers_num_experts")
    if kinds is None and experts is None:
        return pattern
    for name, seq in (("layers_block_type/layer_types", kinds), ("layers_num_experts", experts)):
        if seq is not None and len(seq) != num_layers:
            raise ValueError(f"{name} lists {len(seq)} layers, num_hidden_layers is {num_layers}")
    if kinds is not None and any(k not in _MIXER_NAMES for k in kinds):
        raise ValueError(f"unknown layer kinds in {sorted(set(kinds) - set(_MIXER_NAMES))}")
    return tuple(
        LayerSpec(
            _MIXER_NAMES[kinds[i]] if kinds is not None else spec.mixer,  # type: ignore[arg-type]
            ("moe" if int(experts[i]) > 1 else "mlp") if experts is not None else spec.ffn,
        )
        for i, spec in enumerate(pattern)
    )


def _eos(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list | tuple) else (int(value),)


def _rope(d: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE theta and scaling from either the classic keys or transformers 5's rope_parameters."""
    params = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    theta = d.get("rope_theta", params.get("rope_theta", scaling.get("rope_theta", 10000.0)))
    merged = {**params, **scaling}
    merged.pop("rope_theta", None)
    if "type" in merged and "rope_type" not in merged:
        merged["rope_type"] = merged.pop("type")
    merged.pop("type", None)
    if merged.get("rope_type", "default") == "default":
        return float(theta), None
    return float(theta), merged


def _from_hf(cls: type[ModelConfig], model_type: str, d: Mapping[str, Any]) -> ModelConfig:
    hidden = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    kv_heads = int(d.get("num_key_value_heads") or heads)
    common: dict[str, Any] = dict(
        model_type=model_type,
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=int(d.get("head_dim") or hidden // heads),
        tie_word_embeddings=_bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=_eos(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"),
    )
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedArchitectureError(
            f"{model_type} with hidden_act={act!r}", SUPPORTED_MODEL_TYPES, "only SiLU is implemented"
        )
    if model_type == "jamba":
        num_layers = int(d.get("num_hidden_layers", 32))
        num_experts = int(d.get("num_experts", d.get("num_local_experts", 16)))
        dt_rank = d.get("mamba_dt_rank", "auto")
        return cls(
            layers=_jamba_stack(d, num_layers, num_experts),
            rope_theta=None,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            mamba_d_state=int(d.get("mamba_d_state", 16)),
            mamba_d_conv=int(d.get("mamba_d_conv", 4)),
            mamba_expand=int(d.get("mamba_expand", 2)),
            mamba_dt_rank=math.ceil(hidden / 16) if dt_rank in ("auto", None) else int(dt_rank),
            mamba_conv_bias=_bool(d.get("mamba_conv_bias", True)),
            mamba_proj_bias=_bool(d.get("mamba_proj_bias", False)),
            num_experts=num_experts,
            num_experts_per_tok=int(d.get("num_experts_per_tok", 2)),
            max_position_embeddings=int(d.get("max_position_embeddings", 262144)),
            **common,
        )
    theta, scaling = _rope(d)
    bias = _bool(d.get("attention_bias", False))
    window = d.get("sliding_window")
    if model_type == "qwen2" and not _bool(d.get("use_sliding_window", False)):
        window = None
    return cls(
        layers=tuple(LayerSpec("attention", "mlp") for _ in range(int(d["num_hidden_layers"]))),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        # qwen2 always has q/k/v biases and no o_proj bias; llama's flag covers all four.
        attention_bias=True if model_type == "qwen2" else bias,
        attention_out_bias=bias if model_type == "llama" else False,
        mlp_bias=_bool(d.get("mlp_bias", False)),
        sliding_window=int(window) if window else None,
        max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
        **common,
    )
