"""Input pipelines on the device, for splits that fit its memory (28 px MedMNIST, PBC).

Pure functions of a key: the order of an epoch and its augmentation depend only on
``(seed, epoch)`` (:func:`epoch_key`), so an epoch compiled into one program (a
``lax.scan`` over its batches) is deterministic and a run resumed at an epoch boundary
sees exactly the batches it would have seen. The images stay uint8 on the device and
are normalised per batch like the host pipeline's: ``x / 255`` then ``(x - mean) / std``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..groups import P4M

__all__ = ["epoch_key", "epoch_batches", "pass_key", "step_batches", "random_d4_batch", "normalize"]


def epoch_key(seed, epoch) -> jax.Array:
    """The PRNG key of epoch ``epoch`` of a run seeded by ``seed`` (both may be traced)."""
    return jax.random.fold_in(jax.random.key(seed), epoch)


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """``int32 [num_examples // batch_size, batch_size]``: a permutation of the example
    indices keyed by ``key``, cut into full batches (the remainder is dropped)."""
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(f"batch_size: {batch_size} exceeds the {num_examples} examples")
    order = jax.random.permutation(key, num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def pass_key(seed, index) -> jax.Array:
    """The key of pass ``index`` over the training split (the order of its batches) in a
    run seeded by ``seed``; pass ``e`` of a run whose epochs are single passes is epoch
    ``e``'s order."""
    return jax.random.split(epoch_key(seed, index))[0]


def step_batches(seed, first_step, num_examples: int, batch_size: int,
                 length: int) -> jax.Array:
    """``int32 [length, batch_size]``: the batches of global steps ``first_step`` ...
    ``first_step + length - 1`` of a run seeded by ``seed`` that walks through the
    training split in passes, each pass a permutation (:func:`epoch_batches` keyed by
    :func:`pass_key`) cut into ``num_examples // batch_size`` full batches.

    Where an epoch is one pass (``first_step`` a multiple of the pass length and
    ``length`` at most one pass), these are the first batches of :func:`epoch_batches`
    with the key of pass ``first_step // pass length``; an epoch of more (or fewer) steps
    than a pass continues the passes where the previous epoch stopped. ``seed`` and
    ``first_step`` may be traced; ``length`` is static.
    """
    per_pass = num_examples // batch_size
    if per_pass < 1:
        raise ValueError(f"batch_size: {batch_size} exceeds the {num_examples} examples")
    first_pass, offset = first_step // per_pass, first_step % per_pass
    passes = -(-length // per_pass) + 1  # enough to cover ``length`` from any offset
    order = jnp.concatenate([
        epoch_batches(pass_key(seed, first_pass + j), num_examples, batch_size)
        for j in range(passes)])
    return jax.lax.dynamic_slice_in_dim(order, offset, length, axis=0)


def random_d4_batch(key: jax.Array, images: jax.Array) -> jax.Array:
    """A uniformly random element of p4m (D4) applied to each image of ``[B, H, W, C]``
    (square images: the rotations keep the shape)."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: expected square images [B, H, H, C], got shape "
                         f"{images.shape}")
    g = jax.random.randint(key, (images.shape[0],), 0, P4M.order)
    every = jnp.stack([P4M.transform_image(images, e) for e in range(P4M.order)])
    return jnp.take_along_axis(every, g[None, :, None, None, None], axis=0)[0]


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 (or float in [0, 255]) images to float32 ``(x / 255 - mean) / std``, as the
    host pipeline computes it (one multiply and one add per channel)."""
    std = jnp.asarray(std, jnp.float32)
    scale = 1.0 / (255.0 * std)
    offset = -jnp.asarray(mean, jnp.float32) / std
    return images.astype(jnp.float32) * scale + offset
