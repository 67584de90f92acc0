"""The Hugging Face loader: sharded checkpoints, both MoE spellings, and a typed error naming the
file and the tensor for every broken checkpoint a user can hand us."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.errors import CheckpointError, UnsupportedArchitectureError
from model.hf import build_model, load_hf_dir, read_safetensors


@pytest.fixture
def ckpt_dir(checkpoint_factory, tmp_path) -> Path:
    """A private copy of the 'awkward' tiny Jamba checkpoint, free to break."""
    src = checkpoint_factory("awkward").path
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _logits(model, vocab: int) -> torch.Tensor:
    ids = torch.arange(3, 23)[None] % vocab
    with torch.no_grad():
        return model(ids)


def test_sharded_checkpoint_loads_and_matches(checkpoint_factory, tmp_path, kernel_backend):
    ckpt = checkpoint_factory("awkward")
    sharded = tmp_path / "sharded"
    ckpt.reference.save_pretrained(sharded, max_shard_size="40KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").exists()
    got = _logits(load_hf_dir(sharded), 101)
    want = _logits(load_hf_dir(ckpt.path), 101)
    assert torch.equal(got, want)


def test_missing_config_json(ckpt_dir):
    (ckpt_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json") as info:
        load_hf_dir(ckpt_dir)
    assert info.value.file == str(ckpt_dir / "config.json")


def test_missing_shard_names_file_and_tensor(checkpoint_factory, tmp_path):
    sharded = tmp_path / "sharded"
    checkpoint_factory("awkward").reference.save_pretrained(sharded, max_shard_size="40KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (sharded / victim).unlink()
    with pytest.raises(CheckpointError, match="shard") as info:
        load_hf_dir(sharded)
    assert info.value.file == str(sharded / victim)
    assert index["weight_map"][info.value.tensor] == victim
    assert victim in str(info.value) and info.value.tensor in str(info.value)


def test_truncated_safetensors_names_file_and_tensor(ckpt_dir):
    path = ckpt_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_hf_dir(ckpt_dir)
    assert info.value.file == str(path) and info.value.tensor is not None
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(path)
    path.write_bytes(data[:100])  # cut inside the JSON header
    with pytest.raises(CheckpointError, match=r"truncated|corrupt"):
        read_safetensors(path)


def test_shape_mismatch_names_file_and_tensor(ckpt_dir):
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    cfg["intermediate_size"] += 8
    (ckpt_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape") as info:
        load_hf_dir(ckpt_dir)
    assert info.value.file == str(ckpt_dir / "model.safetensors")
    assert "proj" in info.value.tensor


def test_unsupported_architecture_lists_supported(ckpt_dir):
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="gpt2") as info:
        load_hf_dir(ckpt_dir)
    for name in ("jamba", "llama", "mistral", "qwen2"):
        assert name in str(info.value)


def test_missing_and_extra_tensors_are_named(ckpt_dir):
    path = ckpt_dir / "model.safetensors"
    original = load_file(path)
    gone = "model.layers.0.mamba.dt_proj.bias"
    save_file({k: v for k, v in original.items() if k != gone}, path)
    with pytest.raises(CheckpointError, match="missing") as info:
        load_hf_dir(ckpt_dir)
    assert info.value.tensor == gone and info.value.file == str(path)

    save_file({**original, "model.layers.0.mamba.surprise": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="unexpected") as info:
        load_hf_dir(ckpt_dir)
    assert info.value.tensor == "model.layers.0.mamba.surprise"
    assert info.value.file == str(path)


def test_moe_spelling_and_fused_experts_load_the_same(checkpoint_factory, kernel_backend):
    ckpt = checkpoint_factory("v01_pattern")
    tensors = load_file(ckpt.path / "model.safetensors")
    config = ModelConfig.from_hf_config(json.loads((ckpt.path / "config.json").read_text()))
    want = _logits(build_model(config, tensors), config.vocab_size)

    moe_spelling = {k.replace(".feed_forward.", ".moe."): v for k, v in tensors.items()
                    if ".experts." in k or ".router." in k}
    moe_spelling.update({k: v for k, v in tensors.items() if not (".experts." in k or ".router." in k)})
    assert any(".moe.experts.0." in k for k in moe_spelling)
    assert torch.equal(_logits(build_model(config, moe_spelling), config.vocab_size), want)

    fused: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if ".experts." not in k:
            fused[k] = v
    for i, spec in enumerate(config.layers):
        if spec.ffn != "moe":
            continue
        p = f"model.layers.{i}.feed_forward.experts"
        e = range(config.num_experts)
        fused[f"{p}.gate_up_proj"] = torch.stack(
            [torch.cat([tensors[f"{p}.{j}.gate_proj.weight"], tensors[f"{p}.{j}.up_proj.weight"]]) for j in e])
        fused[f"{p}.down_proj"] = torch.stack([tensors[f"{p}.{j}.down_proj.weight"] for j in e])
    assert torch.equal(_logits(build_model(config, fused), config.vocab_size), want)
    stacked = {k: v for k, v in fused.items() if not k.endswith("gate_up_proj")}
    for k, v in fused.items():
        if k.endswith("gate_up_proj"):  # GGUF layout: gate and up stacked separately
            gate, up = v.chunk(2, dim=1)
            stacked[k.replace("gate_up_proj", "gate_proj")] = gate
            stacked[k.replace("gate_up_proj", "up_proj")] = up
    assert torch.equal(_logits(build_model(config, stacked), config.vocab_size), want)
    # transformers 5 keeps fused experts in memory: its state_dict() loads directly too.
    in_memory = build_model(config, ckpt.reference.state_dict())
    assert torch.equal(_logits(in_memory, config.vocab_size), want)


def test_missing_expert_is_named(checkpoint_factory):
    ckpt = checkpoint_factory("v01_pattern")
    tensors = load_file(ckpt.path / "model.safetensors")
    del tensors["model.layers.3.feed_forward.experts.2.up_proj.weight"]
    config = ModelConfig.from_hf_config(json.loads((ckpt.path / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=r"experts \[2\] missing") as info:
        build_model(config, tensors, source="weights.gguf")
    assert info.value.tensor == "model.layers.3.feed_forward.experts.2.up_proj.weight"
    assert "weights.gguf" in str(info.value)


def _expert_tensors(checkpoint_factory):
    ckpt = checkpoint_factory("v01_pattern")
    config = ModelConfig.from_hf_config(json.loads((ckpt.path / "config.json").read_text()))
    return config, list(load_file(ckpt.path / "model.safetensors").items())


def test_an_expert_given_twice_or_both_stacked_and_one_by_one_is_named(checkpoint_factory):
    """A stack is put in place as soon as its last expert arrives, so the errors for experts
    given twice cannot wait for the end: they are raised at the tensor that repeats."""
    config, items = _expert_tensors(checkpoint_factory)
    name = "model.layers.3.feed_forward.experts.2.up_proj.weight"
    tensor = dict(items)[name]
    with pytest.raises(CheckpointError, match="tensor given twice") as info:
        build_model(config, [*items, (name, tensor)], source="weights.safetensors")
    assert info.value.tensor == name and "weights.safetensors" in str(info.value)

    stack_name = "model.layers.3.feed_forward.experts.up_proj"
    stack = torch.stack([dict(items)[name.replace(".2.", f".{e}.")] for e in range(4)])
    for order in ([*items, (stack_name, stack)], [(stack_name, stack), *items]):
        with pytest.raises(CheckpointError, match="both stacked and one by one"):
            build_model(config, order)
    partial = [(k, v) for k, v in items if k != name]  # three experts, then the stack
    with pytest.raises(CheckpointError, match="both stacked and one by one"):
        build_model(config, [*partial, (stack_name, stack)])


@pytest.mark.parametrize("mode", ["int8", "int4", "bf16"])
@pytest.mark.parametrize("name", ["awkward", "v01_pattern", "llama", "qwen2"])
def test_quantising_while_loading_equals_quantising_after(checkpoint_factory, name, mode):
    """``load_hf_dir(quantize=...)`` quantises each projection as its tensors arrive (MoE
    stacks when their last expert does, a tied lm_head at the end): the same modules and the
    same numbers as loading in fp32 and calling ``quantize_`` on the whole model."""
    from model.quant import quantize_

    path = checkpoint_factory(name).path
    during = load_hf_dir(path, quantize=mode)
    after = quantize_(load_hf_dir(path), mode)
    assert [type(m) for m in during.modules()] == [type(m) for m in after.modules()]
    want, got = after.state_dict(), during.state_dict()
    assert got.keys() == want.keys()
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
    vocab = during.config.vocab_size
    assert torch.equal(_logits(during, vocab), _logits(after, vocab))


def test_not_a_directory_and_no_weights(tmp_path, ckpt_dir):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_hf_dir(tmp_path / "nowhere")
    (ckpt_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors") as info:
        load_hf_dir(ckpt_dir)
    assert info.value.file == str(ckpt_dir / "model.safetensors")


_RSS_PROBE = """
import json, sys, torch
torch.set_num_threads(1)
from model.hf import load_hf_dir
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
dtype, quantize = getattr(torch, sys.argv[2]), sys.argv[3]
load_hf_dir(sys.argv[4], dtype=dtype, quantize=quantize)  # once-per-process imports, set-ups
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
base = status("VmRSS")
model = load_hf_dir(sys.argv[1], dtype=dtype, quantize=quantize)
tensors = [*model.parameters(), *model.buffers()]
touched = [float(t.max()) for t in tensors if t.numel()]  # fault every page in (no temporaries)
weights = sum(t.nbytes for t in tensors)
print(json.dumps({"growth": status("VmHWM") - base, "weights": weights}))
"""


@pytest.mark.parametrize(
    ("dtype", "quantize"),
    [("float32", "none"), ("bfloat16", "none"), ("float32", "int8"), ("float32", "int4"),
     ("float32", "bf16")],
)
def test_peak_rss_of_loading_stays_near_the_weight_bytes(tmp_path, dtype, quantize):
    """Meta-device build + mmap: loading never holds a second copy of the weights; quantised,
    never the whole float model either, only the float tensors of the projections being
    filled (one MoE layer's expert stacks at most)."""
    import subprocess
    import sys

    import transformers

    cfg = transformers.JambaConfig(
        vocab_size=4000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_period=4, attn_layer_offset=2,
        num_experts=4,
    )
    transformers.JambaForCausalLM(cfg).save_pretrained(tmp_path / "big")
    tiny = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                num_key_value_heads=1)
    transformers.JambaForCausalLM(transformers.JambaConfig(**{**cfg.to_dict(), **tiny})).save_pretrained(
        tmp_path / "tiny")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(tmp_path / "big"), dtype, quantize, str(tmp_path / "tiny")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2],
        # Freed blocks go back to the OS at once, as they do at real sizes: glibc otherwise keeps
        # those it raised its mmap threshold past (up to 32 MiB), and VmHWM would count them.
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = result["growth"] / result["weights"]
    float_bytes = (tmp_path / "big" / "model.safetensors").stat().st_size  # the fp32 model
    transient = (result["growth"] - result["weights"]) / float_bytes
    print(f"{dtype}/{quantize}: weights {result['weights'] / 2**20:.1f} MiB, peak RSS growth "
          f"{result['growth'] / 2**20:.1f} MiB, ratio {ratio:.2f}, above the weights "
          f"{transient:.2f} of the fp32 model")
    if quantize == "none":
        assert ratio < 1.5
    else:  # one layer's float projections at a time; 0.8-0.9 when the float model came first
        assert transient < 0.3
