"""The compiled programs: a training step, an epoch on the device, prediction.

:func:`train_step` is the pure step on one batch. A device-pipeline epoch
(:func:`train_epoch_on_device`) draws its batches and augmentation on the device from
``(seed, epoch)`` and runs the steps either as one program (``lax.scan``) or as one
program per step (:data:`EPOCH_LOOPS`); the same skeleton trains one run or S runs
stacked along a leading axis (``seeds`` of shape ``[S]``, ``vmap``-ped). The programs
take :class:`~experiments.training.state.StepSettings`, not the whole config.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from dgcnn_jax import data

from .parallel import batch_sharding as _batch_sharding
from .parallel import from_host
from .state import StepSettings, TrainState, temperature

__all__ = ["train_step", "eval_step", "train_epoch_on_device", "EPOCH_LOOPS",
           "predict_on_device", "predict"]


def _train_step(state: TrainState, batch: dict, tau) -> tuple[TrainState, dict]:
    model = nnx.merge(state.graphdef, state.params, state.rngs, state.model_state)

    def loss_fn(model):
        logits = model(batch["image"], tau=tau)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, logits

    # nnx.value_and_grad differentiates the Params and carries the batch statistics and
    # RNG updates out of the trace.
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, _, rngs, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    # 1.0 when the loss and the updated parameters are finite
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))
    state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                          rngs=rngs, opt_state=opt_state)
    return state, {"loss": loss, "accuracy": accuracy, "finite": finite.astype(jnp.float32)}


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = """One optimizer step on ``batch`` (``{"image", "label"}``) at attention
temperature ``tau``: returns the new state and ``{"loss", "accuracy", "finite"}``
(``finite`` is 1.0 when the loss and the updated parameters are finite). Compiled once per
model and optimizer; the state passed in is donated."""


@jax.jit
def eval_step(state: TrainState, images: jax.Array, tau) -> jax.Array:
    """Class probabilities ``[B, C]`` of ``images`` in eval mode (no state change)."""
    return jax.nn.softmax(state.model(training=False)(images, tau=tau), axis=-1)


# --------------------------------------------------------------------------- epochs

def _plan(seeds, epoch, start, num_examples: int, *, settings: StepSettings,
          steps_per_epoch: int, length: int):
    """The batches and the augmentation key of steps ``start`` to ``start + length`` of
    epoch ``epoch``: for one seed, indices ``int32 [length, batch_size]`` and a key; for
    seeds ``[S]``, indices ``[length, S, batch_size]`` (step first: a step reads one row)
    and keys ``[S, ...]``. The batches continue the passes over the split."""
    def one(seed):
        augment_key = jax.random.split(data.epoch_key(seed, epoch))[1]
        order = data.step_batches(seed, epoch * steps_per_epoch + start, num_examples,
                                  settings.batch_size, length)
        return order, augment_key

    return jax.vmap(one, out_axes=(1, 0))(seeds) if jnp.ndim(seeds) else one(seeds)


def _step(states, train_data: tuple, order, augment_key, index, *, settings: StepSettings,
          steps_per_epoch: int, batch_sharding: NamedSharding, stacked: bool):
    """Step ``index`` of its epoch on the batch ``order`` (indices ``[batch_size]``, or
    ``[S, batch_size]`` for stacked runs): gather, augment, normalise and train, all on the
    device. The program does not depend on how many steps the epoch has, so a partial
    epoch (a resumed run, a step limit) reuses it."""
    images, labels, mean, std = train_data

    def one(state, order, augment_key):
        x, y = images[order], labels[order]
        if settings.augment:
            x = data.random_d4_batch(jax.random.fold_in(augment_key, index), x)
        batch = {"image": jax.lax.with_sharding_constraint(data.normalize(x, mean, std),
                                                           batch_sharding),
                 "label": jax.lax.with_sharding_constraint(y.astype(jnp.int32),
                                                           batch_sharding)}
        tau = temperature(settings, state.step / steps_per_epoch)
        return _train_step(state, batch, tau)

    return (jax.vmap(one) if stacked else one)(states, order, augment_key)


_STATIC = ("settings", "steps_per_epoch", "batch_sharding", "stacked")
_plan_jit = jax.jit(_plan, static_argnames=("num_examples", "settings", "steps_per_epoch",
                                            "length"))
_step_jit = jax.jit(_step, donate_argnums=0, static_argnames=_STATIC)


@functools.partial(jax.jit, donate_argnums=0, static_argnames=(*_STATIC, "length"))
def _scan_epoch(states, train_data, seeds, epoch, start, *, settings, steps_per_epoch,
                length, batch_sharding, stacked):
    orders, augment_key = _plan(seeds, epoch, start, train_data[0].shape[0],
                                settings=settings, steps_per_epoch=steps_per_epoch,
                                length=length)

    def step(states, xs):
        order, i = xs
        return _step(states, train_data, order, augment_key, start + i, settings=settings,
                     steps_per_epoch=steps_per_epoch, batch_sharding=batch_sharding,
                     stacked=stacked)

    states, metrics = jax.lax.scan(step, states, (orders, jnp.arange(length)))
    return states, (jax.tree.map(lambda m: jnp.moveaxis(m, 0, 1), metrics) if stacked
                    else metrics)


EPOCH_LOOPS = {"cpu": "steps"}
"""How a backend trains a device-pipeline epoch: ``"scan"`` (one program, the default) or
``"steps"`` (one program per step, the data still on the device). XLA's CPU backend runs
some convolutions many times slower inside the loop of a scan (the p4m G-CNN's training
step: 26 s against 1 s on one core, measured), so the CPU trains step by step."""


def train_epoch_on_device(states: TrainState, images: jax.Array, labels: jax.Array, mean,
                          std, seeds, epoch, *, settings: StepSettings, steps_per_epoch: int,
                          length: int, batch_sharding: NamedSharding, start: int = 0,
                          loop: str | None = None) -> tuple[TrainState, dict]:
    """``length`` training steps of epoch ``epoch`` on the device, from its step ``start``
    (a run resumed where it stopped mid-epoch).

    ``images`` (uint8 ``[N, H, W, C]``) and ``labels`` are the training split on the
    device; the order and the D4 augmentation (``settings.augment``) are drawn from
    :func:`dgcnn_jax.data.epoch_key` ``(seed, epoch)``; each batch is normalised by
    ``mean``/``std`` and laid out by ``batch_sharding``; the temperature follows
    :func:`~experiments.training.state.temperature` per step. One run: a state and an int
    ``seed``, metrics ``[length]``; S runs: states stacked along a leading axis and
    ``seeds`` ``int [S]``, metrics ``[S, length]``. ``loop``: ``"scan"`` or ``"steps"``
    (default: :data:`EPOCH_LOOPS` of the default backend); both give the same updates.
    Returns the states after the steps and ``{"loss", "accuracy", "finite"}``.
    """
    stacked = jnp.ndim(seeds) == 1
    loop = loop or EPOCH_LOOPS.get(jax.default_backend(), "scan")
    static = {"settings": settings, "steps_per_epoch": steps_per_epoch,
              "batch_sharding": batch_sharding}
    train_data = (images, labels, mean, std)
    first, start = int(start), jnp.int32(start)
    if loop == "scan":
        return _scan_epoch(states, train_data, seeds, epoch, start, length=length,
                           stacked=stacked, **static)
    orders, augment_key = _plan_jit(seeds, epoch, start, images.shape[0],
                                    settings=settings, steps_per_epoch=steps_per_epoch,
                                    length=length)
    out = []
    for i in range(length):
        states, step_metrics = _step_jit(states, train_data, orders[i], augment_key,
                                         np.int32(first + i), stacked=stacked, **static)
        out.append(step_metrics)
    return states, jax.tree.map(lambda *xs: jnp.stack(xs, axis=int(stacked)), *out)


# --------------------------------------------------------------------------- prediction

def predict_on_device(states: TrainState, images: jax.Array, mean, std, tau, *,
                      batch_size: int, batch_sharding: NamedSharding) -> jax.Array:
    """Class probabilities ``[N, C]`` of uint8 images already on the device (eval mode),
    in batches of ``batch_size`` (the last one padded) as one program; for stacked states
    and temperatures ``[S]``, ``[S, N, C]``. The padding happens outside the program, so
    that every split of the same number of batches shares one compiled program."""
    n = images.shape[0]
    batches = -(-n // batch_size)
    if batches * batch_size != n:
        pad = ((0, batches * batch_size - n),) + ((0, 0),) * (images.ndim - 1)
        images = jnp.pad(images, pad)
    tau = jnp.asarray(tau, jnp.float32)  # a Python float and a float32 share a program
    probs = _predict_batches(states, images, mean, std, tau, batch_size=batch_size,
                             batch_sharding=batch_sharding)
    return probs[..., :n, :]


@functools.partial(jax.jit, static_argnames=("batch_size", "batch_sharding"))
def _predict_batches(states: TrainState, images: jax.Array, mean, std, tau, *,
                     batch_size: int, batch_sharding: NamedSharding) -> jax.Array:
    """:func:`predict_on_device` of images ``[B * batch_size, H, W, C]``."""
    x = images.reshape(-1, batch_size, *images.shape[1:])

    def one(state, tau):
        def batch(xb):
            xb = jax.lax.with_sharding_constraint(data.normalize(xb, mean, std),
                                                  batch_sharding)
            return jax.nn.softmax(state.model(training=False)(xb, tau=tau), axis=-1)

        return jax.lax.map(batch, x).reshape(images.shape[0], -1)

    return jax.vmap(one)(states, tau) if jnp.ndim(tau) else one(states, tau)


def predict(state: TrainState, images: np.ndarray, mean, std, tau, *, batch_size: int,
            mesh: jax.sharding.Mesh) -> np.ndarray:
    """Class probabilities ``[N, C]`` of uint8 images (eval mode, every example).

    In one process the images go to the devices and are scored as one program
    (:func:`predict_on_device`; a no-op transfer for images already there); with several
    processes batch by batch, each gathered from every process.
    """
    sharding = _batch_sharding(mesh)
    if jax.process_count() == 1:
        images = jax.device_put(images, NamedSharding(mesh, PartitionSpec()))
        return np.asarray(predict_on_device(state, images, mean, std, tau,
                                            batch_size=batch_size, batch_sharding=sharding))
    ds = data.epoch_dataset(images, np.zeros(len(images), np.int32), batch_size=batch_size,
                            mean=mean, std=std, shuffle=False, drop_remainder=False)
    out = []
    for batch in ds:
        x = batch["image"]
        n = len(x)
        if n % batch_size:  # pad the last batch to a full (shardable) one; no retrace
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        probs = multihost_utils.process_allgather(eval_step(state, from_host(x, sharding),
                                                            tau), tiled=True)
        out.append(np.asarray(probs)[:n])
    return np.concatenate(out)
