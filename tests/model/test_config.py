"""ModelConfig: the layer stack as data, built from Hugging Face config.json dicts."""

from __future__ import annotations

import pytest

from model.config import LayerSpec, ModelConfig, jamba_layers
from model.errors import UnsupportedArchitectureError

HAND_WRITTEN_JAMBA = {
    # What a user would write for a Reasoning-3B-like model: only the keys that matter.
    "model_type": "jamba",
    "vocab_size": 65536,
    "hidden_size": 2560,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 20,
    "num_key_value_heads": 1,
    "attn_layer_period": 14,
    "attn_layer_offset": 7,
    "num_experts": 1,
    "eos_token_id": [2, 518],
}


def test_hand_written_jamba_config():
    cfg = ModelConfig.from_hf_config(HAND_WRITTEN_JAMBA)
    assert cfg.num_layers == 28
    assert cfg.attention_layers == (7, 21)
    assert all(spec.ffn == "mlp" for spec in cfg.layers)  # num_experts 1: dense everywhere
    assert cfg.head_dim == 128 and cfg.rope_theta is None
    assert cfg.mamba_dt_rank == 160  # "auto" = ceil(2560 / 16)
    assert cfg.mamba_d_state == 16 and cfg.mamba_d_conv == 4 and cfg.mamba_expand == 2
    assert cfg.eos_token_ids == (2, 518)
    assert cfg.max_position_embeddings == 262144


def test_explicit_layer_lists_and_string_booleans():
    cfg = ModelConfig.from_hf_config({
        **HAND_WRITTEN_JAMBA, "num_hidden_layers": 4, "num_experts": 4,
        "layers_block_type": ["mamba", "attention", "mamba", "attention"],
        "layers_num_experts": [1, 4, 4, 1], "mamba_conv_bias": "false", "mamba_proj_bias": "true",
    })
    assert [(s.mixer, s.ffn) for s in cfg.layers] == [
        ("mamba", "mlp"), ("attention", "moe"), ("mamba", "moe"), ("attention", "mlp")]
    assert cfg.mamba_conv_bias is False and cfg.mamba_proj_bias is True
    v5_names = ModelConfig.from_hf_config({
        **HAND_WRITTEN_JAMBA, "num_hidden_layers": 2,
        "layer_types": ["linear_attention", "full_attention"]})
    assert [s.mixer for s in v5_names.layers] == ["mamba", "attention"]
    with pytest.raises(ValueError, match="lists 3 layers"):
        ModelConfig.from_hf_config({**HAND_WRITTEN_JAMBA, "num_hidden_layers": 2,
                                    "layers_block_type": ["mamba"] * 3})


def test_jamba_v01_pattern():
    layers = jamba_layers(32, 8, 4, 2, 1, num_experts=16)
    assert [i for i, s in enumerate(layers) if s.mixer == "attention"] == [4, 12, 20, 28]
    assert [i for i, s in enumerate(layers) if s.ffn == "moe"] == list(range(1, 32, 2))
    with pytest.raises(ValueError, match="offset"):
        jamba_layers(8, 4, 4, 2, 1, num_experts=4)


def test_presets_have_the_promised_shape():
    jamba, llama = ModelConfig.jamba_300m(), ModelConfig.llama_300m()
    assert jamba.attention_layers == (4, 12)
    assert [i for i, s in enumerate(jamba.layers) if s.ffn == "moe"] == list(range(1, 16, 2))
    for cfg in (jamba, llama):
        assert 250e6 < cfg.num_params() < 350e6
    assert llama.rope_theta is not None
    assert all(s == LayerSpec("attention", "mlp") for s in llama.layers)


def test_llama_family_keys():
    base = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    llama3 = ModelConfig.from_hf_config({
        **base, "model_type": "llama", "rope_theta": 500000.0, "attention_bias": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    })
    assert llama3.rope_theta == 500000.0 and llama3.rope_scaling["rope_type"] == "llama3"
    assert llama3.attention_bias and llama3.attention_out_bias
    legacy = ModelConfig.from_hf_config(
        {**base, "model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert legacy.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    v5 = ModelConfig.from_hf_config(
        {**base, "model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert v5.rope_theta == 1e4 and v5.rope_scaling is None
    qwen = ModelConfig.from_hf_config(
        {**base, "model_type": "qwen2", "sliding_window": 32, "use_sliding_window": False})
    assert qwen.attention_bias and not qwen.attention_out_bias and qwen.sliding_window is None
    mistral = ModelConfig.from_hf_config({**base, "model_type": "mistral", "sliding_window": 32})
    assert mistral.sliding_window == 32
    with pytest.raises(UnsupportedArchitectureError, match="yarn"):
        ModelConfig.from_hf_config(
            {**base, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedArchitectureError, match="hidden_act"):
        ModelConfig.from_hf_config({**base, "model_type": "llama", "hidden_act": "gelu"})


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as info:
        ModelConfig.from_hf_config({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    message = str(info.value)
    assert "gpt2" in message and "GPT2LMHeadModel" in message
    assert info.value.supported == ("jamba", "llama", "mistral", "qwen2")
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig.from_hf_config({"model_type": "llama"})


def test_round_trip_and_hash():
    cfg = ModelConfig.from_hf_config(HAND_WRITTEN_JAMBA)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    other_eos = ModelConfig.from_hf_config({**HAND_WRITTEN_JAMBA, "eos_token_id": 2})
    assert other_eos.config_hash() == cfg.config_hash()  # token ids do not shape the computation
    other_layers = ModelConfig.from_hf_config({**HAND_WRITTEN_JAMBA, "attn_layer_offset": 6})
    assert other_layers.config_hash() != cfg.config_hash()
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "surprise": 1})


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        ModelConfig(layers=(LayerSpec("attention", "mlp"),), vocab_size=10, hidden_size=8,
                    intermediate_size=8, num_attention_heads=3, num_key_value_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelConfig(layers=(LayerSpec("mamba", "moe"),), vocab_size=10, hidden_size=8,
                    intermediate_size=8, num_attention_heads=2, num_key_value_heads=2, head_dim=4,
                    num_experts=2, num_experts_per_tok=3)
    with pytest.raises(ValueError, match="mixer"):
        LayerSpec("conv", "mlp")  # type: ignore[arg-type]
