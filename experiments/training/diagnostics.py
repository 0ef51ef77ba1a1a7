"""Per-epoch diagnostics of the dynamic layers: attention entropy and spread, bank sharing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgcnn_jax import dynamic

from .state import TrainState

__all__ = ["DIAGNOSTIC_IMAGES", "dynamic_layer_names", "dynamic_diagnostics",
           "diagnostic_images"]

DIAGNOSTIC_IMAGES = 256  # validation images whose attention the per-epoch diagnostics use


def _dynamic_layers(model: nnx.Module, names: bool = False) -> list:
    found = [(path, node) for path, node in nnx.iter_graph(model)
             if hasattr(node, "banks") and hasattr(node, "attention_weights")]
    return ["/".join(map(str, path)) for path, _ in found] if names else [n for _, n in found]


def dynamic_layer_names(model: nnx.Module) -> list[str]:
    """Names (paths in the model, e.g. ``convs/1``) of the dynamic layers, in the order of
    :func:`dynamic_diagnostics` and of ``model.intermediates(...)["attention"]``."""
    return _dynamic_layers(model, names=True)


@jax.jit
def _attention(state: TrainState, images: jax.Array, tau) -> list:
    return state.model(training=False).intermediates(images, tau=tau)["attention"]


def dynamic_diagnostics(state: TrainState, initial: TrainState, images: jax.Array | None,
                        tau) -> list[dict]:
    """Per dynamic layer: its ``layer`` name, ``attention_entropy`` (mean over ``images``,
    nats), ``attention_spread`` (std over the images of the weights) and
    ``bank_common_share`` (the share of the change since ``initial`` of the K banks,
    ``W_k`` or the residual form's ``dW_k``, that is common to all K); ``images`` are
    normalised and ``None`` (or a model without ``intermediates``) leaves the attention
    out. Empty for static models."""
    model = state.model()
    layers = _dynamic_layers(model)
    if not layers:
        return []
    first = _dynamic_layers(initial.model())
    # the K banks proper: W_k, or the changes dW_k of the residual form (W_0 is shared)
    out = [{"layer": name,
            "bank_common_share": float(dynamic.bank_common_share(now.kernels[...],
                                                                 then.kernels[...]))}
           for name, now, then in zip(dynamic_layer_names(model), layers, first)]
    if images is not None and hasattr(model, "intermediates"):
        for record, w in zip(out, _attention(state, images, tau)):
            record["attention_entropy"] = float(dynamic.attention_entropy(w))
            record["attention_spread"] = float(dynamic.attention_spread(w))
    return out


def diagnostic_images(val_images: np.ndarray, mean, std) -> jax.Array:
    """The normalised validation images of the per-epoch diagnostics (on the device once,
    not every epoch)."""
    return jnp.asarray((val_images[:DIAGNOSTIC_IMAGES].astype(np.float32) / 255.0 - mean)
                       / std, jnp.float32)
