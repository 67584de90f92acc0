# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""GGUF loading: config and tensor translation, dequantisation, typed errors, parity."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from model.errors import CheckpointError, UnsupportedArchitectureError
from model.gguf import GGUFFile, hf_config_from_gguf, load_gguf
from tests.model._io_fixtures import (  # noqa: F401 - fixtures used by name
    smollm2,
    smollm2_gguf,
    tiny_llama,
    tiny_llama_hf_weights,
    write_tiny_llama_gguf,
)


def _hf_llama(config: dict, tensors: dict[str, np.ndarray]) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    ref = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    missing, unexpected = ref.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    return ref


def test_tiny_llama_gguf_matches_transformers_on_original_weights(tiny_llama):
    """The q/k rows are written permuted like llama.cpp's converter; we must undo that."""
    path, config, tensors = tiny_llama
    ours, _ = load_gguf(path)
    ref = _hf_llama(config, tensors)
    ids = torch.randint(0, config["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids), ref(ids).logits
    err = (a - b).abs()
    print(f"tiny llama GGUF vs transformers: max {err.max():.2e} mean {err.mean():.2e}")
    assert err.max() <= 1e-4
    q = ours.layers[0].mixer.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(q, tensors["model.layers.0.self_attn.q_proj.weight"])


def test_config_from_gguf_metadata(tiny_llama):
    path, config, _ = tiny_llama
    hf = hf_config_from_gguf(GGUFFile(path))
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert hf[key] == config[key], key
    assert hf["tie_word_embeddings"] is False and hf["rope_theta"] == config["rope_theta"]


def _random_kquant_bytes(qtype: gguf.GGMLQuantizationType, rows: int, cols: int) -> np.ndarray:
    """Valid random K-quant blocks (gguf-py cannot quantise these): random bytes with the
    fp16 scale fields set to small finite values."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.02, size=(rows, cols // block, 2)).astype(np.float16).view(np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        data[..., size - 2 :] = scales[..., 0:2]  # d is the last field
    else:
        data[..., 0:4] = scales  # d, dmin are the first two fields
    return data.reshape(rows, -1)


QTYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("qname", QTYPES)
def test_dequantisation_of_each_supported_type(tmp_path, qname):
    qtype = gguf.GGMLQuantizationType[qname]
    config, tensors = tiny_llama_hf_weights(seed=3, hidden=64, inter=256)
    name = "blk.0.ffn_down.weight"  # HF (64, 256): rows of 256 fit every block size
    original = tensors["model.layers.0.mlp.down_proj.weight"]
    if qname.endswith("_K"):
        raw = _random_kquant_bytes(qtype, *original.shape)
        path = write_tiny_llama_gguf(tmp_path / "q.gguf", config, tensors, qtypes={name: qtype}, raw={name: raw})
    else:
        raw = gguf.quants.quantize(original, qtype)
        path = write_tiny_llama_gguf(tmp_path / "q.gguf", config, tensors, qtypes={name: qtype})
    gf = GGUFFile(path)
    assert gf.tensor_type(name) == qname
    expected = gguf.quants.dequantize(raw, qtype).reshape(original.shape).astype(np.float32)
    model, _ = load_gguf(path)
    loaded = model.layers[0].ffn.down_proj.weight.detach().numpy()
    err = np.abs(loaded - expected)
    print(f"{qname}: max {err.max():.2e} vs gguf.quants.dequantize")
    np.testing.assert_array_equal(loaded, expected)
    assert np.isfinite(loaded).all()
    if not qname.endswith("_K"):  # and the values are the weights, within the type's precision
        tolerance = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.01, "Q4_0": 0.1, "Q4_1": 0.1}[qname]
        assert np.abs(loaded - original).max() <= tolerance * np.abs(original).max()


def test_bf16_load_dtype(tiny_llama):
    path, _, _ = tiny_llama
    model, _ = load_gguf(path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model(torch.tensor([[5, 6, 7]])).dtype == torch.float32


@pytest.mark.parametrize("mode", ["int8", "int4", "bf16"])
def test_quantising_while_loading_equals_quantising_after(tiny_llama, mode):
    """The GGUF loader hands ``quantize`` to ``build_model``, which quantises each projection
    as it is dequantised: the same tensors as quantising the whole float model after."""
    from model.quant import quantize_

    path, _, _ = tiny_llama
    during, _ = load_gguf(path, quantize=mode)
    after = quantize_(load_gguf(path)[0], mode)
    want, got = after.state_dict(), during.state_dict()
    assert got.keys() == want.keys() and any(t.dtype != torch.float32 for t in got.values())
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


def test_corrupted_header_is_a_checkpoint_error(tmp_path, tiny_llama):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + bytes(range(200)))
    with pytest.raises(CheckpointError, match=r"bad\.gguf") as info:
        load_gguf(bad)
    assert info.value.file == str(bad)
    good = tiny_llama[0].read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good[:100])
    with pytest.raises(CheckpointError, match=r"truncated\.gguf"):
        GGUFFile(truncated)
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        GGUFFile(tmp_path / "absent.gguf")


def _assert_metadata_equals_reader(path: Path) -> gguf.GGUFReader:
    """Every key as gguf-py's own reader gives it (the reference for our parser)."""
    reader = gguf.GGUFReader(path)
    ours = GGUFFile(path).metadata
    ref = {key: field.contents() for key, field in reader.fields.items()}
    assert list(ours) == list(ref)
    for key, value in ref.items():
        assert type(ours[key]) is type(value) and ours[key] == value, key
        if isinstance(value, list):  # element types too: int stays int, float stays float
            assert [type(x) for x in ours[key]] == [type(x) for x in value], key
    return reader


def test_metadata_equals_gguf_reader_on_tiny_files(tmp_path, tiny_llama):
    """Strings, ints, floats, bools, arrays of strings / ints / floats (both vocabularies)."""
    _assert_metadata_equals_reader(tiny_llama[0])
    config, tensors = tiny_llama_hf_weights()
    sp = write_tiny_llama_gguf(tmp_path / "sp.gguf", config, tensors, sentencepiece=True)
    _assert_metadata_equals_reader(sp)
    meta = GGUFFile(sp).metadata
    assert isinstance(meta["tokenizer.ggml.scores"][-1], float) and meta["tokenizer.ggml.add_bos_token"] is True


def test_metadata_equals_gguf_reader_on_the_default_model():
    from model.registry import DEFAULT_MODEL, REGISTRY

    source = REGISTRY[DEFAULT_MODEL]
    if not source.is_cached:
        pytest.skip(f"{DEFAULT_MODEL} is not in the model cache (maestro model pull {DEFAULT_MODEL})")
    reader = _assert_metadata_equals_reader(source.cached_path)
    gf = GGUFFile(source.cached_path)
    assert len(gf.metadata["tokenizer.ggml.tokens"]) == 49152 and len(gf.metadata["tokenizer.ggml.merges"]) == 48900
    assert gf.tensor_names == [t.name for t in reader.tensors]
    assert [gf.tensor_type(t.name) for t in reader.tensors] == [t.tensor_type.name for t in reader.tensors]


def _malformed(tmp_path: Path, name: str, data: bytes) -> CheckpointError:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        GGUFFile(path)
    assert info.value.file == str(path) and str(path) in str(info.value)
    return info.value


def test_malformed_headers_are_clear_checkpoint_errors(tmp_path, tiny_llama):
    good = tiny_llama[0].read_bytes()
    error = _malformed(tmp_path, "v7.gguf", good[:4] + (7).to_bytes(4, "little") + good[8:])
    assert "GGUF version 7 is not supported (supported: 2, 3)" in str(error)
    error = _malformed(tmp_path, "bigendian.gguf", good[:4] + (3).to_bytes(4, "big") + good[8:])
    assert "big-endian" in str(error)
    tokens_at = good.index(b"tokenizer.ggml.tokens")
    error = _malformed(tmp_path, "cut.gguf", good[: tokens_at + 200])
    assert "truncated header" in str(error) and "'tokenizer.ggml.tokens'" in str(error)
    error = _malformed(tmp_path, "cut-key.gguf", good[: tokens_at + 5])
    assert "truncated header" in str(error)
    arch_type_at = good.index(b"general.architecture") + len(b"general.architecture")
    patched = good[:arch_type_at] + (99).to_bytes(4, "little") + good[arch_type_at + 4 :]
    error = _malformed(tmp_path, "type99.gguf", patched)
    assert "'general.architecture' has unknown value type 99" in str(error)
    assert "empty" in str(_malformed(tmp_path, "empty.gguf", b""))
    assert "truncated header" in str(_malformed(tmp_path, "magic-only.gguf", b"GGUF"))


def test_tensor_data_past_the_end_of_the_file_names_the_tensor(tmp_path, tiny_llama):
    good = tiny_llama[0].read_bytes()
    last = GGUFFile(tiny_llama[0]).tensor_names[-1]
    error = _malformed(tmp_path, "short.gguf", good[:-4])
    assert error.tensor == last and "runs past the end of the file" in str(error)
    assert "the file is truncated" in str(error)


def test_corrupted_bytes_never_escape_as_foreign_errors(tmp_path, tiny_llama):
    """Every cut of the header and random byte flips: a CheckpointError or a readable file."""
    good = tiny_llama[0].read_bytes()
    header_end = good.index(b"blk.")  # somewhere inside the tensor infos
    path = tmp_path / "fuzz.gguf"
    for cut in [*range(64), *range(64, header_end + 64, 13)]:
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointError):
            GGUFFile(path)
    rng = np.random.default_rng(0)
    for _ in range(200):
        data = bytearray(good)
        for at in rng.integers(0, header_end + 64, size=3):
            data[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        with contextlib.suppress(CheckpointError):
            GGUFFile(path).close()


def test_close_keeps_metadata_and_live_tensor_views(tiny_llama):
    gf = GGUFFile(tiny_llama[0])
    view = gf.tensor("output_norm.weight")  # F32: a read-only view of the mapping
    expected = tiny_llama[2]["model.norm.weight"]
    gf.close()
    np.testing.assert_array_equal(view, expected)
    assert gf.metadata["general.architecture"] == "llama" and gf.tensor_names == []
    with pytest.raises(CheckpointError, match="tensor missing"):
        gf.tensor("output_norm.weight")


def test_unknown_architecture_lists_supported(tmp_path):
    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="rwkv6") as info:
        load_gguf(path)
    assert "jamba" in str(info.value) and "llama" in str(info.value)


def test_llama3_rope_factors_are_refused_not_ignored(tmp_path):
    config, tensors = tiny_llama_hf_weights()
    path = write_tiny_llama_gguf(tmp_path / "l3.gguf", config, tensors)
    writer_path = tmp_path / "l3-freqs.gguf"
    writer = gguf.GGUFWriter(str(writer_path), "llama")
    source = GGUFFile(path)
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count"):
        writer.add_uint32(f"llama.{key}", int(source.metadata[f"llama.{key}"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_tensor("rope_freqs.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="rope_freqs"):
        load_gguf(writer_path)


def test_missing_tensor_names_file_and_tensor(tmp_path):
    config, tensors = tiny_llama_hf_weights()
    del tensors["model.layers.1.mlp.up_proj.weight"]
    path = write_tiny_llama_gguf(tmp_path / "holes.gguf", config, tensors)
    with pytest.raises(CheckpointError) as info:
        load_gguf(path)
    assert info.value.file == str(path)
    assert info.value.tensor == "model.layers.1.mlp.up_proj.weight"


@pytest.mark.slow
def test_smollm2_logits_and_greedy_match_transformers(smollm2, smollm2_gguf):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    text = ("The history of the Roman Empire spans many centuries, from the founding of the city "
            "to the fall of Constantinople. Historians divide it into periods, each with its own "
            "emperors, wars, reforms and cultural achievements that shaped Europe. Its roads, laws, "
            "languages and buildings still influence the modern world in many surprising ways, "
            "and scholars continue to study them closely.")
    ids = smollm2.tokenizer.encode(text)[:64]
    assert len(ids) == 64
    x = torch.tensor([ids])
    with torch.no_grad():
        err = (smollm2.model(x) - ref(x).logits.float()).abs()
    print(f"SmolLM2 Q4_1 logits vs transformers: max {err.max():.3e} mean {err.mean():.3e}")
    assert err.max() <= 1e-3
    ours = smollm2.generate(ids, max_new_tokens=32, stop_token_ids=[]).token_ids
    theirs = ref.generate(x, max_new_tokens=32, do_sample=False, eos_token_id=None)[0, 64:].tolist()
    assert ours == theirs


@pytest.mark.slow
def test_smollm2_fp32_load_peak_rss_under_twice_the_weights(smollm2_gguf):
    """Measured in a fresh process: peak RSS growth during load vs final parameter bytes."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from this (large) process.
    script = f"""
import json, torch
from model.gguf import load_gguf

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

torch.ones(1)  # settle torch's own allocations before the baseline
before = status("VmRSS")
model, gf = load_gguf({str(smollm2_gguf)!r}, torch.float32)
peak = status("VmHWM")
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({{"before": before, "peak": peak, "weights": weights}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    growth = stats["peak"] - stats["before"]
    print(f"load peak RSS growth {growth / 2**20:.0f} MiB, weights {stats['weights'] / 2**20:.0f} MiB, "
          f"ratio {growth / stats['weights']:.2f}")
    assert growth < 2 * stats["weights"]


_JAMBA_GGUF = {
    "input_layernorm.weight": "attn_norm.weight", "pre_ff_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mamba.in_proj.weight": "ssm_in.weight", "mamba.conv1d.bias": "ssm_conv1d.bias",
    "mamba.x_proj.weight": "ssm_x.weight", "mamba.dt_proj.weight": "ssm_dt.weight",
    "mamba.dt_proj.bias": "ssm_dt.bias", "mamba.D": "ssm_d", "mamba.out_proj.weight": "ssm_out.weight",
    "mamba.dt_layernorm.weight": "ssm_dt_norm.weight", "mamba.b_layernorm.weight": "ssm_b_norm.weight",
    "mamba.c_layernorm.weight": "ssm_c_norm.weight", "feed_forward.router.weight": "ffn_gate_inp.weight",
    "feed_forward.gate_proj.weight": "ffn_gate.weight", "feed_forward.up_proj.weight": "ffn_up.weight",
    "feed_forward.down_proj.weight": "ffn_down.weight",
}


def _write_jamba_gguf(path: Path, hf_cfg: dict, state: dict[str, torch.Tensor]) -> None:
    """A Jamba GGUF laid out as llama.cpp's converter writes one: A = -exp(A_log), conv weight
    squeezed to (ED, K), experts stacked, per-layer KV head counts (0 = Mamba layer)."""
    from tests.model._io_fixtures import tiny_vocab

    n = hf_cfg["num_hidden_layers"]
    writer = gguf.GGUFWriter(str(path), "jamba")
    writer.add_block_count(n)
    writer.add_context_length(hf_cfg["max_position_embeddings"])
    writer.add_embedding_length(hf_cfg["hidden_size"])
    writer.add_feed_forward_length(hf_cfg["intermediate_size"])
    writer.add_head_count(hf_cfg["num_attention_heads"])
    period, offset = hf_cfg["attn_layer_period"], hf_cfg["attn_layer_offset"]
    writer.add_head_count_kv([hf_cfg["num_key_value_heads"] if i % period == offset else 0 for i in range(n)])
    writer.add_ssm_conv_kernel(hf_cfg["mamba_d_conv"])
    writer.add_ssm_inner_size(hf_cfg["mamba_expand"] * hf_cfg["hidden_size"])
    writer.add_ssm_state_size(hf_cfg["mamba_d_state"])
    writer.add_ssm_time_step_rank(state["model.layers.0.mamba.dt_proj.weight"].shape[1])
    writer.add_layer_norm_rms_eps(hf_cfg.get("rms_norm_eps", 1e-6))
    writer.add_expert_count(hf_cfg["num_experts"])
    writer.add_expert_used_count(hf_cfg["num_experts_per_tok"])
    tokens, types, merges = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    top = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
           "model.final_layernorm.weight": "output_norm.weight"}
    for name, tensor in state.items():
        array = tensor.detach().float().numpy()
        if name in top:
            writer.add_tensor(top[name], np.ascontiguousarray(array))
            continue
        layer, local = name.removeprefix("model.layers.").split(".", 1)
        blk = f"blk.{layer}."
        if local == "mamba.A_log":
            writer.add_tensor(blk + "ssm_a", -np.exp(array))
        elif local == "mamba.conv1d.weight":
            writer.add_tensor(blk + "ssm_conv1d.weight", np.ascontiguousarray(array[:, 0, :]))
        elif local == "feed_forward.experts.gate_up_proj":  # (E, 2I, D): gate rows, then up rows
            inter = array.shape[1] // 2
            writer.add_tensor(blk + "ffn_gate_exps.weight", np.ascontiguousarray(array[:, :inter]))
            writer.add_tensor(blk + "ffn_up_exps.weight", np.ascontiguousarray(array[:, inter:]))
        elif local == "feed_forward.experts.down_proj":
            writer.add_tensor(blk + "ffn_down_exps.weight", np.ascontiguousarray(array))
        else:
            writer.add_tensor(blk + _JAMBA_GGUF[local], np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_jamba_gguf_matches_transformers(tmp_path):
    from transformers import JambaConfig, JambaForCausalLM

    from tests.model._io_fixtures import tiny_vocab

    hf_cfg = {
        "vocab_size": len(tiny_vocab()[0]), "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
        "attn_layer_period": 4, "attn_layer_offset": 2, "expert_layer_period": 2,
        "expert_layer_offset": 1, "num_experts": 4, "num_experts_per_tok": 2, "mamba_d_state": 8,
        "mamba_d_conv": 4, "mamba_expand": 2, "max_position_embeddings": 512,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
    }
    torch.manual_seed(0)
    ref = JambaForCausalLM(JambaConfig(**hf_cfg)).eval()
    path = tmp_path / "jamba.gguf"
    _write_jamba_gguf(path, hf_cfg, ref.state_dict())
    ours, _ = load_gguf(path)
    assert [s.mixer for s in ours.config.layers].count("attention") == 2
    assert [s.ffn for s in ours.config.layers].count("moe") == 4
    ids = torch.randint(0, hf_cfg["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = (ours(ids) - ref(ids).logits).abs()
    print(f"tiny Jamba GGUF vs transformers: max {err.max():.2e} mean {err.mean():.2e}")
    assert err.max() <= 1e-4
