"""A model's whole decode step as one call: ``new_decode_plan(dim)``.

The C++ backend's ``DecodePlan`` (``cpu/kernels.cpp``) takes a model's layers once, in order,
each as the arguments of one of the fused sublayer ops, then runs a decode step over all of
them, the final norm and the LM head in one call::

    plan = new_decode_plan(dim)                # None without the C++ kernels
    plan.add_mamba_mixer(norm, eps, in_proj, conv_weight, conv_bias, x_proj_weight,
                         dt_proj_weight, dt_proj_bias, A_log, D, dt_norm, b_norm, c_norm, out_proj)
    plan.add_attention_layer(attn_norm, ffn_norm, eps, qkv, o, gate_up, down, kv_heads, head_dim)
    plan.add_moe(norm, eps, router, top_k, gate, up, down)
    plan.add_mlp(norm, eps, gate_up, down)
    plan.set_head(norm, eps, lm_head)
    logits = plan.run(h, states, start, cos, sin)  # h (B, 1, D) fp32 embedded -> (B, 1, V)

Each ``add_*`` takes what the matching op takes (``mamba_mixer_decode``, ``decoder_layer_decode``,
``moe_decode``, ``mlp_decode``) less h and the states, except that a Mamba mixer gets ``A_log``:
the plan keeps ``A = -exp(A_log)`` and recomputes it when ``A_log`` is written in place.
``states`` lists each Mamba layer's conv and ssm states and each attention layer's k and v
caches, in layer order; they are checked before anything is written. The weights are held, not
copied: in-place writes to them (``load_state_dict``) are seen; replacing them needs a new plan.

Why: between the per-layer ops, Python ran the model's layer loop on caches the weights had
just streamed through, ~1.2 ms a token on the 300M Jamba (4.5% of its fp32 decode step),
where the same Python costs 0.26 ms warm. The reference has no plan (None): callers then run
the layers one by one, which is the specification.
"""

from __future__ import annotations

from typing import Any

from model.kernels.dispatch import implementation, register_reference


def _no_plan(dim: int) -> None:
    return None


register_reference("new_decode_plan", _no_plan)


def new_decode_plan(dim: int) -> Any | None:
    """An empty decode plan for hidden size ``dim`` on the CPU backend, or None (reference)."""
    return implementation("new_decode_plan", "cpu")(dim)
