"""The C++ CPU kernels against the fp32 references (always run; the first run compiles them).

Tolerance (flash-attention's rule): with inputs in a lower precision, the fast op's error
against the fp32 reference on the original fp32 inputs must be at most about twice the error of
the reference itself run in that precision. In fp32, the two must agree to ~1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch

from model import kernels
from model.kernels import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    mamba_decode_step_ref,
    selective_scan_ref,
    selective_state_update_ref,
)


@pytest.fixture(scope="module", autouse=True)
def cpp_backend():
    try:
        kernels.dispatch._registry["cpp"].load()
    except kernels.BackendUnavailable as exc:  # pragma: no cover - machines without a compiler
        pytest.skip(f"C++ kernels unavailable here: {exc}")
    with kernels.use("cpp"):
        yield


def _report(name: str, fast: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    err = (fast.double() - ref.double()).abs()
    mx, mean = err.max().item(), err.mean().item()
    print(f"{name}: max err {mx:.3g}, mean err {mean:.3g}")
    return mx, mean


def _assert_fp32(name: str, fast: torch.Tensor, ref: torch.Tensor, tol: float = 2e-5) -> None:
    mx, _ = _report(name, fast, ref)
    scale = ref.abs().max().item() + 1.0
    assert mx <= tol * scale, f"{name}: max error {mx} above {tol * scale}"


def _assert_low_precision(name: str, fast: torch.Tensor, ref_low: torch.Tensor,
                          ref32: torch.Tensor) -> None:
    """fast and ref_low ran on the rounded inputs; ref32 on the fp32 originals."""
    fast_err, _ = _report(f"{name} fast-vs-fp32", fast, ref32)
    ref_err, _ = _report(f"{name} ref-lowp-vs-fp32", ref_low, ref32)
    assert fast_err <= 2 * ref_err + 1e-6, f"{name}: {fast_err} > 2 x {ref_err}"


def _scan_inputs(batch, channels, n_state, length, seed, with_state=True, with_z=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    return dict(
        u=r(batch, channels, length),
        delta=r(batch, channels, length, scale=0.5),
        A=-torch.exp(r(channels, n_state, scale=0.5)),
        B=r(batch, n_state, length),
        C=r(batch, n_state, length),
        D=r(channels),
        z=r(batch, channels, length) if with_z else None,
        delta_bias=r(channels, scale=0.1),
        delta_softplus=True,
        initial_state=r(batch, channels, n_state) if with_state else None,
    )


@pytest.mark.parametrize(
    ("batch", "channels", "n_state", "length", "with_state", "with_z"),
    [
        (2, 40, 16, 300, True, True),  # channels not a multiple of 16, L not of the chunk
        (1, 16, 8, 1, False, True),
        (3, 5, 4, 129, True, False),
    ],
)
def test_selective_scan_fp32(batch, channels, n_state, length, with_state, with_z):
    inputs = _scan_inputs(batch, channels, n_state, length, 0, with_state, with_z)
    y_ref, h_ref = selective_scan_ref(**inputs)
    y, h = kernels.selective_scan(**inputs)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    _assert_fp32("scan y", y, y_ref)
    _assert_fp32("scan state", h, h_ref)


def test_selective_scan_without_softplus_and_bias():
    inputs = _scan_inputs(2, 20, 16, 70, 5)
    inputs.update(delta=inputs["delta"].abs(), delta_softplus=False, delta_bias=None, D=None)
    y_ref, h_ref = selective_scan_ref(**inputs)
    y, h = kernels.selective_scan(**inputs)
    _assert_fp32("scan y (no softplus)", y, y_ref)
    _assert_fp32("scan state (no softplus)", h, h_ref)


def test_selective_scan_bf16():
    inputs = _scan_inputs(2, 48, 16, 200, 1)
    y32, h32 = selective_scan_ref(**inputs)
    low = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v)
           for k, v in inputs.items()}
    y_low, h_low = selective_scan_ref(**low)
    y, h = kernels.selective_scan(**low)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    _assert_low_precision("scan bf16 y", y, y_low, y32)
    _assert_low_precision("scan bf16 state", h, h_low, h32)


def test_selective_scan_channel_last_strided_input():
    """The in_proj output (Bt, L, 2ED) split and transposed: non-contiguous, channel stride 1."""
    inputs = _scan_inputs(2, 24, 16, 50, 2)
    xz = torch.randn(2, 50, 48)
    u = xz[..., :24].transpose(1, 2)
    z = xz[..., 24:].transpose(1, 2)
    delta = torch.randn(2, 50, 24).transpose(1, 2)
    inputs.update(u=u, z=z, delta=delta)
    y_ref, h_ref = selective_scan_ref(**inputs)
    y, h = kernels.selective_scan(**inputs)
    _assert_fp32("scan strided y", y, y_ref)
    _assert_fp32("scan strided state", h, h_ref)


def test_selective_scan_chunks_chain_through_state():
    inputs = _scan_inputs(1, 32, 16, 260, 3)
    y_full, h_full = kernels.selective_scan(**inputs)
    seq = ("u", "delta", "B", "C", "z")
    first = {k: (v[..., :131] if k in seq else v) for k, v in inputs.items()}
    y1, h1 = kernels.selective_scan(**first)
    second = {k: (v[..., 131:] if k in seq else v) for k, v in inputs.items()}
    second["initial_state"] = h1
    y2, h2 = kernels.selective_scan(**second)
    _assert_fp32("chained scan y", torch.cat([y1, y2], -1), y_full, tol=1e-6)
    _assert_fp32("chained scan state", h2, h_full, tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("length", "with_state", "activation"),
                         [(37, True, "silu"), (2, True, None), (64, False, "silu")])
def test_causal_conv1d(dtype, length, with_state, activation):
    g = torch.Generator().manual_seed(4)
    x32 = torch.randn(2, 20, length, generator=g)
    w, b = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    init32 = torch.randn(2, 20, 3, generator=g) if with_state else None
    y32, _ = causal_conv1d_ref(x32, w, b, init32, activation)
    x = x32.to(dtype)
    init = init32.to(dtype) if init32 is not None else None
    y, final = kernels.causal_conv1d(x, w, b, init, activation)
    assert y.dtype == dtype and final.dtype == dtype
    y_low, f_low = causal_conv1d_ref(x, w, b, init, activation)
    if dtype == torch.float32:
        _assert_fp32("conv y", y, y32)
    else:
        _assert_low_precision("conv bf16 y", y, y_low, y32)
    assert torch.equal(final, f_low)


def test_causal_conv1d_update_and_hf_width_state():
    g = torch.Generator().manual_seed(5)
    for size in (3, 4):  # K-1 (ours) and K (Hugging Face's layout)
        x = torch.randn(3, 33, generator=g)
        w, b = torch.randn(33, 4, generator=g), torch.randn(33, generator=g)
        state = torch.randn(3, 33, size, generator=g)
        state_ref = state.clone()
        y = kernels.causal_conv1d_update(x, state, w, b, "silu")
        y_ref = causal_conv1d_update_ref(x, state_ref, w, b, "silu")
        _assert_fp32(f"conv update (S={size})", y, y_ref)
        assert torch.equal(state, state_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_state_update(dtype):
    g = torch.Generator().manual_seed(6)
    batch, channels, n_state = 2, 37, 16
    x32, dt32, z32 = (torch.randn(batch, channels, generator=g) for _ in range(3))
    A = -torch.exp(torch.randn(channels, n_state, generator=g))
    B, C = torch.randn(batch, n_state, generator=g), torch.randn(batch, n_state, generator=g)
    D, bias = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
    state0 = torch.randn(batch, channels, n_state, generator=g)
    s_ref32 = state0.clone()
    y32 = selective_state_update_ref(s_ref32, x32, dt32, A, B, C, D, z32, bias, True)
    x, dt, z = (t.to(dtype) for t in (x32, dt32, z32))
    s_low, s_fast = state0.clone(), state0.clone()
    y_low = selective_state_update_ref(s_low, x, dt, A, B, C, D, z, bias, True)
    y = kernels.selective_state_update(s_fast, x, dt, A, B, C, D, z, bias, True)
    assert y.dtype == dtype
    if dtype == torch.float32:
        _assert_fp32("state update y", y, y32)
        _assert_fp32("state update state", s_fast, s_ref32)
    else:
        _assert_low_precision("state update bf16 y", y, y_low, y32)
        _assert_low_precision("state update bf16 state", s_fast, s_low, s_ref32)


def _mixer_weights(channels, n_state, rank, width, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    return dict(
        conv_weight=r(channels, width), conv_bias=r(channels),
        x_proj_weight=r(rank + 2 * n_state, channels, scale=channels**-0.5),
        dt_proj_weight=r(channels, rank, scale=rank**-0.5), dt_proj_bias=r(channels, scale=0.5),
        A=-torch.exp(torch.randn(channels, n_state, generator=g)), D=r(channels),
        dt_norm_weight=r(rank), b_norm_weight=r(n_state), c_norm_weight=r(n_state),
    )


@pytest.mark.parametrize(
    ("with_norms", "channels", "width", "size", "n_state"),
    [
        (True, 72, 4, 3, 16),
        (False, 72, 4, 3, 16),
        (True, 600, 4, 3, 16),  # Mamba's width-4 conv loop, on both threads (1200 rows)
        (True, 600, 4, 4, 16),  # ... with Hugging Face's K-entry conv state
        (True, 600, 3, 2, 12),  # the general conv loop and scan step
    ],
)
def test_mamba_decode_step_fp32(with_norms, channels, width, size, n_state):
    batch, rank = 2, 6
    weights = _mixer_weights(channels, n_state, rank, width, 7)
    if not with_norms:
        weights.update(dt_norm_weight=None, b_norm_weight=None, c_norm_weight=None)
    g = torch.Generator().manual_seed(8)
    conv0 = torch.randn(batch, channels, size, generator=g)
    ssm0 = torch.randn(batch, channels, n_state, generator=g)
    conv_f, ssm_f, conv_r, ssm_r = conv0.clone(), ssm0.clone(), conv0.clone(), ssm0.clone()
    for step in range(3):  # several steps: the states carry over
        x, z = torch.randn(batch, channels, generator=g), torch.randn(batch, channels, generator=g)
        y = kernels.mamba_decode_step(x, z, conv_f, ssm_f, **weights)
        y_ref = mamba_decode_step_ref(x, z, conv_r, ssm_r, **weights)
        _assert_fp32(f"fused step {step} y", y, y_ref, tol=5e-5)
    _assert_fp32("fused ssm state", ssm_f, ssm_r, tol=5e-5)
    assert torch.equal(conv_f, conv_r)


def test_mamba_decode_step_bf16():
    batch, channels, n_state, rank, width = 2, 40, 16, 4, 4
    w32 = _mixer_weights(channels, n_state, rank, width, 9)
    w16 = {k: (v.bfloat16() if k != "A" and v is not None else v) for k, v in w32.items()}
    g = torch.Generator().manual_seed(10)
    x32, z32 = torch.randn(batch, channels, generator=g), torch.randn(batch, channels, generator=g)
    conv0 = torch.randn(batch, channels, width - 1, generator=g)
    ssm0 = torch.randn(batch, channels, n_state, generator=g)
    y32 = mamba_decode_step_ref(x32, z32, conv0.clone(), ssm0.clone(), **w32)
    x, z = x32.bfloat16(), z32.bfloat16()
    y_low = mamba_decode_step_ref(x, z, conv0.bfloat16(), ssm0.clone(), **w16)
    y = kernels.mamba_decode_step(x, z, conv0.bfloat16(), ssm0.clone(), **w16)
    assert y.dtype == torch.bfloat16
    _assert_low_precision("fused step bf16 y", y, y_low, y32)


def test_ops_trace_under_torch_compile():
    """The custom ops have fake implementations: torch.compile traces them in one graph."""
    inputs = _scan_inputs(1, 16, 16, 9, 11)
    seq_args = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

    def mixer(conv_state, u, delta, A, B, C, D, z, delta_bias, w):
        xc, _ = kernels.causal_conv1d(u, w, None, None, "silu")
        y, h = kernels.selective_scan(xc, delta, A, B, C, D, z, delta_bias, True, None)
        step = kernels.causal_conv1d_update(u[..., 0], conv_state, w, None, "silu")
        return y, h, step

    w = torch.randn(16, 4)
    args = [inputs[k] for k in seq_args]
    eager = mixer(torch.zeros(1, 16, 3), *args, w)
    compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True)
    state = torch.zeros(1, 16, 3)
    traced = compiled(state, *args, w)
    for a, b in zip(eager, traced, strict=True):
        torch.testing.assert_close(a, b)
    assert state.abs().sum() > 0  # the in-place state update survived functionalisation


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 20])  # the matvec kernel, and dequantise + matmul
# K = 96: block-quantised activations (integer dot products); K = 100: float activations
@pytest.mark.parametrize("k_in", [96, 100])
def test_int8_linear(dtype, rows, k_in):
    g = torch.Generator().manual_seed(12)
    n_out = 37  # not a multiple of the int8 (8) or int4 (4) row block
    weight = torch.randint(-127, 128, (n_out, k_in), dtype=torch.int8, generator=g)
    scale = torch.rand(n_out, generator=g) * 0.02
    bias = torch.randn(n_out, generator=g)
    x32 = torch.randn(2, rows, k_in, generator=g)
    y32 = kernels.int8_linear_ref(x32, weight, scale, bias)
    x = x32.to(dtype)
    y = kernels.int8_linear(x, weight, scale, bias)
    assert y.shape == (2, rows, n_out) and y.dtype == dtype
    if dtype == torch.float32:
        _assert_fp32(f"int8 linear rows={rows}", y, y32)
    else:
        y_low = kernels.int8_linear_ref(x, weight, scale, bias)
        _assert_low_precision(f"int8 linear bf16 rows={rows}", y, y_low, y32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 20])
def test_int4_linear(dtype, rows):
    g = torch.Generator().manual_seed(13)
    n_out, k_in = 37, 96
    q = torch.randint(0, 16, (n_out, k_in), generator=g)
    packed = kernels.pack_int4(q)
    assert torch.equal(kernels.unpack_int4(packed), q.to(torch.uint8))
    scale = torch.rand(n_out, k_in // 32, generator=g) * 0.05
    minimum = -torch.rand(n_out, k_in // 32, generator=g) * 0.4
    bias = torch.randn(n_out, generator=g)
    x32 = torch.randn(2, rows, k_in, generator=g)
    y32 = kernels.int4_linear_ref(x32, packed, scale, minimum, bias)
    x = x32.to(dtype)
    y = kernels.int4_linear(x, packed, scale, minimum, bias)
    assert y.shape == (2, rows, n_out) and y.dtype == dtype
    if dtype == torch.float32:
        _assert_fp32(f"int4 linear rows={rows}", y, y32)
    else:
        y_low = kernels.int4_linear_ref(x, packed, scale, minimum, bias)
        _assert_low_precision(f"int4 linear bf16 rows={rows}", y, y_low, y32)


@pytest.mark.parametrize("rows", [1, 20])
def test_quantised_linears_compute_with_block_quantised_activations(rows):
    """The kernels use x rounded to int8 per block of 32, like the references: their result is
    that of the rounded x (to float precision), measurably not that of x itself."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(rows, 64, generator=g) * torch.logspace(-2, 1, 64)  # wide range per block
    x_hat = kernels.quant_linear.quantize_activations(x)
    blocks = (x - x_hat).abs().reshape(rows, 2, 32)
    assert 0 < blocks.max() <= (x.abs().reshape(rows, 2, 32).amax(-1, keepdim=True) / 254 * 1.0001).max()
    weight = torch.randint(-127, 128, (8, 64), dtype=torch.int8, generator=g)
    scale = torch.rand(8, generator=g) * 0.02
    w = weight.float() * scale[:, None]
    y = kernels.int8_linear(x, weight, scale)
    _assert_fp32("int8 linear on x-hat", y, x_hat @ w.t())
    assert (y - x @ w.t()).abs().max() > 100 * (y - x_hat @ w.t()).abs().max()
    packed = kernels.pack_int4(torch.randint(0, 16, (8, 64), generator=g))
    s4, m4 = torch.rand(8, 2, generator=g) * 0.05, -torch.rand(8, 2, generator=g) * 0.4
    w4 = kernels.dequantize_int4(packed, s4, m4)
    y4 = kernels.int4_linear(x, packed, s4, m4)
    _assert_fp32("int4 linear on x-hat", y4, x_hat @ w4.t())
    assert (y4 - x @ w4.t()).abs().max() > 100 * (y4 - x_hat @ w4.t()).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_activations_is_the_reference_bit_for_bit(dtype):
    """The prefill path of the quantised linears rounds x with the C++ op; decode's matvec and
    the references round it the same way, so the op must match the reference exactly:
    wide-ranged blocks, an all-zero block, a block whose scale underflows, strided inputs,
    among them (B, L, K) views of a (B, K, L) tensor (the Mamba out_proj's input, which the op
    reads in tiles of 8 steps, here with and without a tail of L % 8 steps)."""
    g = torch.Generator().manual_seed(16)
    x = torch.randn(3, 40, 128, generator=g) * torch.logspace(-3, 2, 128)
    x[0, 0, :32] = 0.0
    x[0, 1, 32:64] = 1e-40  # denormal: max / 127 rounds to zero
    x = x.to(dtype)

    def time_major(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).contiguous().transpose(1, 2)

    for inp in (x, x[:, ::2, :], time_major(x), time_major(x[:, :37])):
        got = kernels.quantize_activations(inp)
        want = kernels.quantize_activations_ref(inp)
        assert got.dtype == torch.float32 and got.shape == inp.shape
        assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.quantize_activations(torch.randn(2, 48))


def test_dequantize_ops_are_the_references_bit_for_bit():
    """One pass each in C++ instead of PyTorch's 2 (int8) and ~8 (4-bit) passes; the 4-bit
    product must be rounded before the sum, as the reference does (no FMA contraction)."""
    from model.quant import quantize_int4, quantize_int8

    g = torch.Generator().manual_seed(17)
    w = torch.randn(300, 160, generator=g) * torch.rand(300, 1, generator=g)
    w8, s8 = quantize_int8(w)
    assert torch.equal(kernels.dequantize_int8(w8, s8), kernels.dequantize_int8_ref(w8, s8))
    p4, s4, m4 = quantize_int4(w)
    assert torch.equal(kernels.dequantize_int4(p4, s4, m4), kernels.dequantize_int4_ref(p4, s4, m4))
    with pytest.raises(RuntimeError, match="one value per row"):
        kernels.dequantize_int8(w8, s8[:-1])
    with pytest.raises(RuntimeError, match=r"\(N, K/32\)"):
        kernels.dequantize_int4(p4, s4[:, :-1], m4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 37, 64), (3, 7)])
def test_rms_norm(dtype, shape):
    g = torch.Generator().manual_seed(15)
    x32 = torch.randn(*shape, generator=g) * 3
    w32 = 1 + 0.2 * torch.randn(shape[-1], generator=g)
    x, w = x32.to(dtype), w32.to(dtype)
    y = kernels.rms_norm(x, w, 1e-5)
    assert y.shape == x.shape and y.dtype == dtype
    if dtype == torch.float32:
        _assert_fp32(f"rms_norm {shape}", y, kernels.rms_norm_ref(x, w, 1e-5), tol=1e-6)
    else:
        _assert_low_precision(f"rms_norm bf16 {shape}", y, kernels.rms_norm_ref(x, w, 1e-5),
                              kernels.rms_norm_ref(x32, w32, 1e-5))
    # a strided view (the Mamba mixer normalises slices of x_proj's output)
    wide = torch.randn(4, 2 * shape[-1], generator=g).to(dtype)
    view = wide[:, shape[-1]:]
    torch.testing.assert_close(kernels.rms_norm(view, w, 1e-5), kernels.rms_norm_ref(view, w, 1e-5))


@pytest.mark.parametrize("rows", [1, 3, 20])  # the matvec kernel up to 8 rows, then BLAS
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(rows, with_bias):
    g = torch.Generator().manual_seed(16)
    weight = torch.randn(37, 100, generator=g)  # N not a multiple of 4, K not of 8
    bias = torch.randn(37, generator=g) if with_bias else None
    x = torch.randn(2, rows, 100, generator=g)
    y = kernels.linear(x, weight, bias)
    assert y.shape == (2, rows, 37)
    _assert_fp32(f"linear rows={rows}", y, kernels.linear_ref(x, weight, bias))
    # bf16 and strided weights take the BLAS path, with the reference's numbers
    torch.testing.assert_close(kernels.linear(x.bfloat16(), weight.bfloat16()),
                               kernels.linear_ref(x.bfloat16(), weight.bfloat16()))
    wt = torch.randn(100, 37, generator=g).t()
    torch.testing.assert_close(kernels.linear(x, wt), kernels.linear_ref(x, wt))


@pytest.mark.parametrize("rows", [1, 8, 9, 20])  # the bf16 matvec up to 8 rows, then BLAS
@pytest.mark.parametrize("shape", [(37, 100), (64, 256), (9, 7)])  # K % 8 != 0: the scalar tail
def test_linear_with_bf16_weights_computes_in_fp32(rows, shape):
    """bf16 weights under fp32 activations (model.quant's "bf16"): the product is the fp32 one
    on the weight widened exactly, not a bf16 matmul (which rounds the activations too)."""
    g = torch.Generator().manual_seed(26)
    weight = torch.randn(*shape, generator=g).bfloat16()
    bias = torch.randn(shape[0], generator=g)
    x = torch.randn(2, rows, shape[1], generator=g)
    y = kernels.linear(x, weight, bias)
    assert y.dtype == torch.float32 and y.shape == (2, rows, shape[0])
    _assert_fp32(f"bf16-weight linear rows={rows}", y, x @ weight.float().t() + bias)
    _assert_fp32(f"bf16-weight linear rows={rows} (reference)", y,
                 kernels.linear_ref(x, weight, bias))


@pytest.mark.parametrize("shape", [(1, 1, 9, 64), (2, 37, 3, 64), (1, 5, 2, 6)])
def test_rope(shape):
    g = torch.Generator().manual_seed(17)
    b, length, heads, hd = shape
    x = torch.randn(*shape, generator=g)
    angles = torch.rand(b, length, hd // 2, generator=g) * 10
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    y = kernels.rope(x, cos, sin)
    assert y.shape == x.shape
    _assert_fp32(f"rope {shape}", y, kernels.rope_ref(x, cos, sin), tol=1e-6)
    # a strided view (q as a view of the projection output) and bf16 (the reference path)
    wide = torch.randn(b, length, heads, 2 * hd, generator=g)[..., :hd]
    _assert_fp32("rope strided", kernels.rope(wide, cos, sin), kernels.rope_ref(wide, cos, sin), tol=1e-6)
    torch.testing.assert_close(kernels.rope(x.bfloat16(), cos.bfloat16(), sin.bfloat16()),
                               kernels.rope_ref(x.bfloat16(), cos.bfloat16(), sin.bfloat16()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(dtype):
    g = torch.Generator().manual_seed(18)
    x32 = torch.randn(2, 3, 2 * 77, generator=g) * 4
    y = kernels.silu_mul(x32.to(dtype))
    assert y.shape == (2, 3, 77) and y.dtype == dtype
    if dtype == torch.float32:
        _assert_fp32("silu_mul", y, kernels.silu_mul_ref(x32), tol=1e-6)
    else:
        torch.testing.assert_close(y, kernels.silu_mul_ref(x32.to(dtype)))


def _cache_pair(g, batch, kv_heads, slots, hd):
    k = torch.randn(batch, kv_heads, slots, hd, generator=g)
    v = torch.randn(batch, kv_heads, slots, hd, generator=g)
    return (k, v), (k.clone(), v.clone())


def _rope_tables(g, batch, hd):
    angles = torch.rand(batch, 1, hd // 2, generator=g) * 10
    both = torch.cat([angles, angles], -1)
    return both.cos(), both.sin()


# (batch, heads, kv_heads, hd, slots, start, rope): GQA groups of 3 and 4, plain MHA, a head
# size that is not a multiple of 8 (the scalar loops), one key only, and enough keys that the
# op splits them into slices and merges the partial softmaxes.
ATTENTION_SHAPES = [
    (1, 9, 3, 64, 600, 555, True),
    (2, 4, 4, 32, 20, 0, False),
    (1, 8, 2, 16, 10, 9, True),
    (2, 6, 3, 72, 1200, 1100, True),
    (1, 4, 2, 12, 700, 650, False),
]


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "hd", "slots", "start", "rope"),
                         ATTENTION_SHAPES)
def test_attention_decode(batch, heads, kv_heads, hd, slots, start, rope):
    g = torch.Generator().manual_seed(19)
    q = torch.randn(batch, 1, heads * hd, generator=g)
    k = torch.randn(batch, 1, kv_heads * hd, generator=g)
    v = torch.randn(batch, 1, kv_heads * hd, generator=g)
    cos, sin = _rope_tables(g, batch, hd) if rope else (None, None)
    (kc, vc), (kc_ref, vc_ref) = _cache_pair(g, batch, kv_heads, slots, hd)
    y = kernels.attention_decode(q, k, v, kc, vc, start, cos, sin)
    y_ref = kernels.attention_decode_ref(q, k, v, kc_ref, vc_ref, start, cos, sin)
    assert y.shape == (batch, 1, heads * hd)
    _assert_fp32(f"attention_decode {heads}/{kv_heads}x{hd} at {start}", y, y_ref, tol=1e-5)
    _assert_fp32("attention_decode k cache", kc, kc_ref, tol=1e-6)
    torch.testing.assert_close(vc, vc_ref, rtol=0, atol=0)
    # strided q/k/v (views of one fused projection) give the same
    qkv = torch.cat([q, k, v], -1)
    q2, k2, v2 = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
    torch.testing.assert_close(kernels.attention_decode(q2, k2, v2, kc, vc, start, cos, sin), y)


# (batch, heads, kv_heads, hd, start, length): SmolLM2's 9/3 heads, Jamba's 12/4, plain MHA,
# a first chunk (start 0), a chunk shorter and one longer than its prefix, a single query.
CAUSAL_SHAPES = [
    (1, 9, 3, 64, 200, 64),
    (2, 12, 4, 64, 37, 100),
    (1, 4, 4, 32, 0, 50),
    (2, 6, 2, 16, 1, 7),
    (1, 8, 2, 24, 300, 1),
]


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "hd", "start", "length"), CAUSAL_SHAPES)
def test_causal_attention(batch, heads, kv_heads, hd, start, length):
    """The split prefix/causal-block op against SDPA with the explicit mask, on keys read from a
    longer cache buffer (strided views, as the attention layer passes them)."""
    g = torch.Generator().manual_seed(23)
    total = start + length
    q = torch.randn(batch, length, heads, hd, generator=g).transpose(1, 2)  # (B, H, L, hd) view
    cache_k = torch.randn(batch, kv_heads, total + 40, hd, generator=g)
    cache_v = torch.randn(batch, kv_heads, total + 40, hd, generator=g)
    k, v = cache_k[:, :, :total], cache_v[:, :, :total]
    y = kernels.causal_attention(q, k, v)
    y_ref = kernels.causal_attention_ref(q, k, v)
    assert y.shape == (batch, heads, length, hd)
    _assert_fp32(f"causal_attention {heads}/{kv_heads}x{hd} {start}+{length}", y, y_ref, tol=1e-5)
    # by hand: softmax over keys 0..start+i of query i
    rep = heads // kv_heads
    scores = q @ k.repeat_interleave(rep, 1).transpose(-1, -2) / hd**0.5  # (B, H, L, T)
    allowed = torch.arange(total)[None, :] <= torch.arange(start, total)[:, None]
    by_hand = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.repeat_interleave(rep, 1)
    _assert_fp32("causal_attention by hand", y, by_hand, tol=1e-5)


def test_causal_attention_bf16():
    g = torch.Generator().manual_seed(24)
    q = torch.randn(1, 9, 48, 64, generator=g)
    k, v = torch.randn(1, 3, 160, 64, generator=g), torch.randn(1, 3, 160, 64, generator=g)
    ref32 = kernels.causal_attention_ref(q, k, v)
    low = [t.bfloat16() for t in (q, k, v)]
    y = kernels.causal_attention(*low)
    assert y.dtype == torch.bfloat16
    _assert_low_precision("causal_attention bf16", y, kernels.causal_attention_ref(*low), ref32)


def _projection(g, kind: str, n_out: int, k_in: int, bias: bool) -> list:
    from model.quant import quantize_int4, quantize_int8

    w = torch.randn(n_out, k_in, generator=g) / k_in**0.5
    b = torch.randn(n_out, generator=g) * 0.1 if bias else None
    if kind == "int8":
        return [*quantize_int8(w), None, b]
    if kind == "int4":
        packed, scale, minimum = quantize_int4(w)
        return [packed, scale, minimum, b]
    return [w, None, None, b]


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
@pytest.mark.parametrize(("batch", "rope", "bias"), [(1, True, False), (2, False, True)])
def test_decoder_layer_decode(kind, batch, rope, bias):
    """The whole-layer op against the composition of the references, for every weight format."""
    g = torch.Generator().manual_seed(20)
    dim, heads, kv_heads, hd, inter, slots, start = 64, 4, 2, 16, 96, 300, 290
    h = torch.randn(batch, 1, dim, generator=g)
    norms = (1 + 0.1 * torch.randn(dim, generator=g), 1 + 0.1 * torch.randn(dim, generator=g))
    projections = [
        _projection(g, kind, (heads + 2 * kv_heads) * hd, dim, bias),
        _projection(g, kind, dim, heads * hd, bias),
        _projection(g, kind, 2 * inter, dim, bias),
        _projection(g, kind, dim, inter, bias),
    ]
    cos, sin = _rope_tables(g, batch, hd) if rope else (None, None)
    (kc, vc), (kc_ref, vc_ref) = _cache_pair(g, batch, kv_heads, slots, hd)
    y = kernels.decoder_layer_decode(h, *norms, 1e-5, *projections, kc, vc, start, cos, sin)
    y_ref = kernels.decoder_layer_decode_ref(h, *norms, 1e-5, *projections, kc_ref, vc_ref, start,
                                             cos, sin)
    assert y.shape == h.shape
    _assert_fp32(f"decoder layer {kind}", y, y_ref, tol=1e-5)
    _assert_fp32("decoder layer k cache", kc, kc_ref, tol=1e-5)
    _assert_fp32("decoder layer v cache", vc, vc_ref, tol=1e-5)


def test_decoder_layer_decode_refuses_mismatched_projections():
    g = torch.Generator().manual_seed(21)
    dim, hd = 64, 16
    h = torch.randn(1, 1, dim, generator=g)
    norms = (torch.ones(dim), torch.ones(dim))
    good = [
        _projection(g, "fp32", 8 * hd, dim, False),
        _projection(g, "fp32", dim, 4 * hd, False),
        _projection(g, "fp32", 96, dim, False),
        _projection(g, "fp32", dim, 48, False),
    ]
    kc, vc = torch.zeros(1, 2, 8, hd), torch.zeros(1, 2, 8, hd)
    kernels.decoder_layer_decode(h, *norms, 1e-5, *good, kc, vc, 0)
    bad = [good[0], _projection(g, "fp32", dim, 3 * hd, False), *good[2:]]
    with pytest.raises(RuntimeError, match="o takes 48 inputs"):
        kernels.decoder_layer_decode(h, *norms, 1e-5, *bad, kc, vc, 1)
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernels.decoder_layer_decode(h, *norms, 1e-5, *good, kc, vc, 8)


def test_new_decode_ops_pass_opcheck():
    """Schemas (which arguments are mutated), fake implementations and dispatch are consistent
    (torch.library.opcheck), so torch.compile can trace a decode step through them."""
    g = torch.Generator().manual_seed(22)
    ops = torch.ops.model_kernels
    q, k, v = (torch.randn(1, 1, n, generator=g) for n in (4 * 16, 2 * 16, 2 * 16))
    kc, vc = torch.randn(1, 2, 8, 16, generator=g), torch.randn(1, 2, 8, 16, generator=g)
    cos, sin = _rope_tables(g, 1, 16)
    torch.library.opcheck(ops.attention_decode, (q, k, v, kc, vc, 5, cos, sin))
    torch.library.opcheck(ops.silu_mul, (torch.randn(3, 10, generator=g),))
    projections = [
        _projection(g, "int8", 8 * 16, 64, True),
        _projection(g, "fp32", 64, 4 * 16, False),
        _projection(g, "int4", 192, 64, False),
        _projection(g, "fp32", 64, 96, False),
    ]
    h = torch.randn(1, 1, 64, generator=g)
    torch.library.opcheck(
        ops.decoder_layer_decode,
        (h, torch.ones(64), torch.ones(64), 1e-5, *projections, kc, vc, 6, cos, sin),
    )


def _mamba_mixer_args(g, kind: str, batch: int, bias: bool) -> tuple:
    """Arguments of mamba_mixer_decode at a small Jamba-like size (D 64, ED 128, N 16, R 8)."""
    dim, channels, n_state, rank, width = 64, 128, 16, 8, 4
    h = torch.randn(batch, 1, dim, generator=g)
    norm = 1 + 0.1 * torch.randn(dim, generator=g)
    conv_state = torch.randn(batch, channels, width - 1, generator=g)
    ssm_state = torch.randn(batch, channels, n_state, generator=g)
    mixer = (
        torch.randn(channels, width, generator=g) * 0.3, torch.randn(channels, generator=g) * 0.1,
        torch.randn(rank + 2 * n_state, channels, generator=g) / channels**0.5,
        torch.randn(channels, rank, generator=g) / rank**0.5, torch.randn(channels, generator=g),
        -torch.rand(channels, n_state, generator=g) * 4, torch.randn(channels, generator=g),
        1 + 0.1 * torch.randn(rank, generator=g), 1 + 0.1 * torch.randn(n_state, generator=g),
        1 + 0.1 * torch.randn(n_state, generator=g),
    )
    in_proj = _projection(g, kind, 2 * channels, dim, bias)
    out_proj = _projection(g, kind, dim, channels, bias)
    return h, norm, 1e-6, in_proj, conv_state, ssm_state, *mixer, out_proj


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
@pytest.mark.parametrize(("batch", "bias"), [(1, False), (3, True)])
def test_mamba_mixer_decode(kind, batch, bias):
    """The Mamba sublayer op against the composition of the references, states included.

    fp32 runs three steps, the states carrying over. Quantised, one: the activations are
    block-quantised to int8 before each integer matvec, so a 1e-6 difference in a carried
    state can round an activation the other way, a 1e-2 difference that is not a fault."""
    args = _mamba_mixer_args(torch.Generator().manual_seed(23), kind, batch, bias)
    ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    for step in range(3 if kind == "fp32" else 1):
        y = kernels.mamba_mixer_decode(*args)
        y_ref = kernels.mamba_mixer_decode_ref(*ref_args)
        assert y.shape == args[0].shape
        _assert_fp32(f"mamba mixer {kind} step {step}", y, y_ref, tol=1e-5)
        _assert_fp32("mamba mixer conv state", args[4], ref_args[4], tol=1e-5)
        _assert_fp32("mamba mixer ssm state", args[5], ref_args[5], tol=1e-5)
        args, ref_args = (y, *args[1:]), (y_ref, *ref_args[1:])


def _moe_args(g, kind: str, batch: int, experts: int = 5, top_k: int = 2) -> tuple:
    dim, inter = 64, 96
    h = torch.randn(batch, 1, dim, generator=g)
    norm = 1 + 0.1 * torch.randn(dim, generator=g)
    router = torch.randn(experts, dim, generator=g)
    stacks = [
        [t for _ in range(experts) for t in _projection(g, kind, n_out, k_in, False)]
        for n_out, k_in in ((inter, dim), (inter, dim), (dim, inter))
    ]
    return h, norm, 1e-6, router, top_k, *stacks


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
@pytest.mark.parametrize(("batch", "top_k"), [(1, 2), (4, 2), (2, 1), (1, 5)])
def test_moe_decode(kind, batch, top_k):
    """The MoE sublayer op against its reference: routing, every weight format, several rows
    (each routed on its own), top-1 and all experts."""
    args = _moe_args(torch.Generator().manual_seed(24), kind, batch, top_k=top_k)
    y = kernels.moe_decode(*args)
    assert y.shape == args[0].shape
    _assert_fp32(f"moe {kind}", y, kernels.moe_decode_ref(*args), tol=1e-5)


def _mlp_args(g, kind: str, batch: int, bias: bool) -> tuple:
    dim, inter = 64, 96
    h = torch.randn(batch, 1, dim, generator=g)
    norm = 1 + 0.1 * torch.randn(dim, generator=g)
    gate_up = _projection(g, kind, 2 * inter, dim, bias)
    return h, norm, 1e-6, gate_up, _projection(g, kind, dim, inter, bias)


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
@pytest.mark.parametrize(("batch", "bias"), [(1, False), (3, True)])
def test_mlp_decode(kind, batch, bias):
    """The dense MLP sublayer op against its reference, for every weight format; h is left as
    it was (the op returns a new h)."""
    args = _mlp_args(torch.Generator().manual_seed(28), kind, batch, bias)
    h = args[0].clone()
    y = kernels.mlp_decode(*args)
    assert y.shape == h.shape
    torch.testing.assert_close(args[0], h, rtol=0, atol=0)
    _assert_fp32(f"mlp {kind}", y, kernels.mlp_decode_ref(*args), tol=1e-5)


def test_jamba_sublayer_ops_refuse_bad_arguments():
    g = torch.Generator().manual_seed(25)
    args = list(_mamba_mixer_args(g, "fp32", 1, False))
    args[-1] = _projection(g, "fp32", 64, 100, False)  # out_proj for the wrong ED
    with pytest.raises(RuntimeError, match="out_proj takes 100 inputs"):
        kernels.mamba_mixer_decode(*args)
    args = list(_mamba_mixer_args(g, "fp32", 1, False))
    args[12] = torch.randn(100)  # D for the wrong ED: refused, not read past its end
    with pytest.raises(RuntimeError, match="D must have ED entries"):
        kernels.mamba_mixer_decode(*args)
    moe = list(_moe_args(g, "fp32", 1))
    moe[5] = moe[5][:-4]  # one expert short
    with pytest.raises(RuntimeError, match=r"gate must hold .* for each of the 5 experts"):
        kernels.moe_decode(*moe)
    moe = list(_moe_args(g, "fp32", 1))
    moe[4] = 6
    with pytest.raises(RuntimeError, match=r"top_k must be in \[1, E\]"):
        kernels.moe_decode(*moe)
    mlp = list(_mlp_args(g, "fp32", 1, False))
    mlp[4] = _projection(g, "fp32", 64, 100, False)  # down for the wrong I
    with pytest.raises(RuntimeError, match="down takes 100 inputs"):
        kernels.mlp_decode(*mlp)
    mlp = list(_mlp_args(g, "fp32", 1, False))
    mlp[3] = _projection(g, "fp32", 191, 64, False)  # an odd gate|up
    with pytest.raises(RuntimeError, match="gate_up must have 2I outputs"):
        kernels.mlp_decode(*mlp)


def test_jamba_sublayer_ops_pass_opcheck():
    """As test_new_decode_ops_pass_opcheck, for the Mamba mixer and MoE ops."""
    g = torch.Generator().manual_seed(26)
    ops = torch.ops.model_kernels
    torch.library.opcheck(ops.mamba_mixer_decode, _mamba_mixer_args(g, "int8", 2, True))
    torch.library.opcheck(ops.moe_decode, _moe_args(g, "int4", 2))
    torch.library.opcheck(ops.mlp_decode, _mlp_args(g, "fp32", 2, True))


@pytest.mark.parametrize("layer", [False, True])
def test_decode_ops_read_a_half_precision_kv_cache(layer):
    """With an fp16 KV cache, attention_decode and decoder_layer_decode widen the keys and values
    as they read them and write the new token rounded to fp16: equal to the reference on the
    same cache, and close to the fp32-cache result."""
    g = torch.Generator().manual_seed(27)
    batch, heads, kv_heads, hd, slots, start = 2, 6, 2, 64, 700, 650  # key slices are merged
    dim, inter = 64, 96
    (kc32, vc32), _ = _cache_pair(g, batch, kv_heads, slots, hd)
    cos, sin = _rope_tables(g, batch, hd)
    if layer:
        h = torch.randn(batch, 1, dim, generator=g)
        norms = (1 + 0.1 * torch.randn(dim, generator=g), 1 + 0.1 * torch.randn(dim, generator=g))
        projections = [
            _projection(g, "int8", (heads + 2 * kv_heads) * hd, dim, False),
            _projection(g, "int8", dim, heads * hd, False),
            _projection(g, "int8", 2 * inter, dim, False),
            _projection(g, "int8", dim, inter, False),
        ]

        def run(op, kc, vc):
            return op(h, *norms, 1e-5, *projections, kc, vc, start, cos, sin)

        ops = (kernels.decoder_layer_decode, kernels.decoder_layer_decode_ref)
    else:
        q, k, v = (torch.randn(batch, 1, n * hd, generator=g) for n in (heads, kv_heads, kv_heads))

        def run(op, kc, vc):
            return op(q, k, v, kc, vc, start, cos, sin)

        ops = (kernels.attention_decode, kernels.attention_decode_ref)
    caches = [(kc32.half(), vc32.half()) for _ in range(2)]
    y = run(ops[0], *caches[0])
    _assert_fp32("half cache vs reference", y, run(ops[1], *caches[1]), tol=1e-5)
    for fast, ref in zip(caches[0], caches[1], strict=True):
        assert fast.dtype == torch.float16
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)  # the same fp16 writes
    y32 = run(ops[0], kc32, vc32)
    _assert_fp32("half cache vs fp32 cache", y, y32, tol=5e-3)
