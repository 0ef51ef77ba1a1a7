"""Analytic FLOP counts of a forward pass, from the shapes in its jaxpr.

Counts the multiply-adds of convolutions and matrix products (2 FLOPs each), the work
that dominates these networks; elementwise operations (batch norm, ReLU, softmax) are
not counted. The body of a ``lax.scan`` (``lax.map``) counts once per iteration.
``forward_flops(model, input_shape)`` gives the FLOPs per image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core

__all__ = ["jaxpr_flops", "forward_flops"]


def _conv_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    rhs_spec = dn.rhs_spec  # (out feature, in feature, spatial...)
    kernel_spatial = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    in_per_group = rhs.shape[rhs_spec[1]]
    return 2 * math.prod(out.shape) * kernel_spatial * in_per_group


def _dot_flops(eqn) -> int:
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def jaxpr_flops(jaxpr) -> int:
    """FLOPs of the convolutions and dot products in a (closed) jaxpr, recursively."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        repeats = eqn.params["length"] if name == "scan" else 1  # lax.scan / lax.map
        for sub in core.jaxprs_in_params(eqn.params):
            total += repeats * jaxpr_flops(sub)
    return total


def forward_flops(model: nnx.Module, input_shape: tuple[int, int, int], tau=1.0) -> int:
    """FLOPs per image of ``model(x, tau=tau)`` in eval mode, for ``x`` ``[1, *input_shape]``."""
    graph, state = nnx.split(model)

    def forward(state, x):
        m = nnx.merge(graph, state)
        m.eval()
        return m(x, tau=tau)

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jaxpr_flops(jax.make_jaxpr(forward)(state, x))
