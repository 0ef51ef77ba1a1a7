"""Train and evaluate a registered model on a MedMNIST dataset or PatchCamelyon.

    python -m experiments.train [--workdir runs/default] [--config pcam] [--set key=value ...]

The default configuration (``experiments/configs/default.py``) trains the dynamic p4m
G-CNN on BreastMNIST; ``--config pcam`` the P4M-DenseNet protocol on PatchCamelyon
(``experiments/configs/pcam.py``). The work directory receives ``config.json``,
``metrics.jsonl`` (one line per epoch), ``results.json``, ``learning_curves.png``,
``roc_test.png``, ``confusion_test.png``, ``test_probs.npy`` with ``test_labels.npy``, and orbax checkpoints
(:mod:`experiments.checkpoints`): ``checkpoints/latest`` (every epoch) and
``checkpoints/best`` (best validation AUC), kept apart. Starting the command again in
the same work directory resumes from the latest checkpoint. The best epoch is chosen on
validation data; the test split is read once, at the end, with the best checkpoint.

The pieces, as in the flax examples: a typed :class:`TrainState` and :class:`Progress`
record, the pure compiled steps :func:`train_step` and :func:`eval_step`, and
:func:`train_and_evaluate`, which sets up, runs the epochs, selects on validation and
tests once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from dgcnn_jax import data, dynamic, metrics, models
from dgcnn_jax.dynamic import linear_temperature
from experiments import datasets, plots
from experiments.checkpoints import CheckpointError, Checkpoints
from experiments.configs import (
    CONFIGS,
    DYNAMIC_FIELDS,
    Config,
    from_stored,
    get_config,
    model_kwargs,
    num_devices,
    override,
    pipeline,
    validate,
)

__all__ = ["TrainingError", "WorkdirError", "RESUMABLE_CHANGES", "config_differences",
           "TrainState", "Progress", "make_optimizer", "make_mesh",
           "create_train_state", "replicate", "train_step", "eval_step", "predict",
           "temperature",
           "train_epoch_on_device", "predict_on_device", "train_seeds_on_device",
           "predict_seeds_on_device", "stack_states", "unstack_state", "train_seeds",
           "seed_list", "stored_seeds",
           "dynamic_diagnostics", "dynamic_layer_names", "Run", "train_and_evaluate",
           "initialize_distributed",
           "default_workdir", "main"]

DIAGNOSTIC_IMAGES = 256  # validation images whose attention the per-epoch diagnostics use


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


class WorkdirError(RuntimeError):
    """The work directory cannot be used for this run (another config, another process)."""


# Config fields that do not change what a run computes: a resumed run may differ in them.
RESUMABLE_CHANGES = ("data_dir", "progress", "eval_batch_size", "checkpoint_every_steps",
                     "num_devices", "max_steps", "score_test")


def config_differences(stored: dict, config: Config) -> list[str]:
    """``"field stored -> new"`` for every field that changes the run (fields the stored
    config lacks take the values of the time it was written, ``configs.LEGACY_VALUES``)."""
    stored = from_stored(stored)
    new = dataclasses.asdict(config)
    return [f"{k} {stored.get(k, '(absent)')!r} -> {new[k]!r}" for k in new
            if k not in RESUMABLE_CHANGES and k not in _unused_fields(config)
            and stored.get(k, new[k]) != new[k]]


def _unused_fields(config: Config) -> set[str]:
    """Fields that do not reach ``config.model`` (a static model has no attention)."""
    spec = models.spec(config.model)
    if not spec.dynamic:
        return {*DYNAMIC_FIELDS, "tau_initial", "tau_final", "tau_anneal_epochs",
                "tau_anneal_fraction", "bank_weight_decay"}
    return set(DYNAMIC_FIELDS[2:]) if spec.input_size != 28 else set()


class _WorkdirLock:
    """An exclusive lock on ``<workdir>/.lock`` for as long as a run uses the folder."""

    def __init__(self, workdir: pathlib.Path):
        import fcntl

        self.path = workdir / ".lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            raise WorkdirError(f"{workdir} is in use by {owner}: wait for it to finish, or "
                               f"choose another --workdir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        self.file.close()  # closing releases the lock


# --------------------------------------------------------------------------- state

@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes, as one pytree.

    ``params`` (``nnx.Param``), ``model_state`` (batch statistics), ``rngs`` (the
    model's RNG streams, e.g. dropout), ``opt_state`` and the ``step`` count are arrays;
    ``graphdef`` (the model's structure) and ``tx`` (the optimizer) are static. An
    inference state (:func:`create_train_state` with ``steps_per_epoch=None``) has no
    optimizer: ``opt_state`` and ``tx`` are ``None``.
    """

    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    rngs: nnx.State
    opt_state: Any
    graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False)

    def model(self, *, training: bool = False) -> nnx.Module:
        """The model with these variables, in training or eval mode."""
        model = nnx.merge(self.graphdef, self.params, self.rngs, self.model_state)
        model.train() if training else model.eval()
        return model

    def model_item(self) -> dict:
        """What inference needs (the checkpoint item ``model``)."""
        return {"params": self.params, "model_state": self.model_state}

    def train_item(self) -> dict:
        """What resuming needs besides (the checkpoint item ``train``)."""
        return {"step": self.step, "rngs": self.rngs, "opt_state": self.opt_state}

    def with_items(self, model: dict, train: dict | None = None) -> TrainState:
        """This state with the arrays of restored checkpoint items."""
        state = self.replace(params=model["params"], model_state=model["model_state"])
        return state if train is None else state.replace(**train)


@dataclasses.dataclass
class Progress:
    """Where a run stands, saved as the ``meta`` of every ``latest`` checkpoint."""

    epoch: int = 0  # finished epochs
    batch: int = 0  # batches of epoch ``epoch`` already trained (mid-epoch checkpoints)
    iterator: dict | None = None  # grain iterator state after ``batch`` batches
    loss_sum: float = 0.0  # sums over the batches of the current epoch
    accuracy_sum: float = 0.0
    seen: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # one record per epoch
    best_auc: float = -1.0  # best validation AUC so far and its epoch
    best_epoch: int = -1
    train_seconds: float = 0.0
    pipeline: str = "host"  # the input pipeline of the run (checkpoints before it: host)

    def start_epoch(self) -> None:
        self.loss_sum, self.accuracy_sum, self.seen = 0.0, 0.0, 0


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW or SGD with momentum, warm-up then cosine decay, optional gradient clipping."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps=warmup, decay_steps=max(total, warmup + 1))
    if config.bank_weight_decay is None:
        decay = optax.add_decayed_weights(config.weight_decay)
    else:  # the dynamic layers' banks (parameters named "kernels") decay at their own rate
        decay = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=_bank_mask(False)),
            optax.add_decayed_weights(config.bank_weight_decay, mask=_bank_mask(True)))
    if config.optimizer == "adamw":
        if config.bank_weight_decay is None:
            opt = optax.adamw(schedule, weight_decay=config.weight_decay)
        else:  # optax.adamw's chain with the two decays (decoupled, times the rate)
            opt = optax.chain(optax.scale_by_adam(), decay,
                              optax.scale_by_learning_rate(schedule))
    else:
        opt = optax.chain(decay, optax.sgd(schedule, momentum=config.momentum))
    if config.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
    return opt


def _bank_mask(banks: bool):
    """A mask function: True for the dynamic layers' banks (``kernels``) when ``banks``,
    for every other parameter otherwise."""
    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(p, "key", None) == "kernels" for p in path) == banks,
            params)
    return mask


def make_mesh(config: Config) -> jax.sharding.Mesh:
    """A one-axis (``"data"``) mesh over the devices the run uses."""
    return jax.sharding.Mesh(np.array(jax.devices()[:num_devices(config)]), ("data",))


def replicate(tree, mesh: jax.sharding.Mesh):
    """``tree`` replicated over ``mesh`` (with several processes, from each process's own
    identical copy; arrays that are already global are kept)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl),
                           out_shardings=sharding)(one(jax.random.key_data(x)))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def create_train_state(config: Config, num_classes: int, in_channels: int,
                       steps_per_epoch: int | None, mesh: jax.sharding.Mesh) -> TrainState:
    """A freshly initialised state (seeded by ``config.seed``), replicated over ``mesh``.

    ``steps_per_epoch=None`` gives an inference state, without an optimizer.
    """
    model = models.create(config.model, num_classes=num_classes, in_channels=in_channels,
                          rngs=nnx.Rngs(config.seed), **model_kwargs(config))
    model.train()
    graphdef, params, rngs, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
    tx = None if steps_per_epoch is None else make_optimizer(config, steps_per_epoch)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                       rngs=rngs, opt_state=None if tx is None else tx.init(params),
                       graphdef=graphdef, tx=tx)
    return replicate(state, mesh)


def temperature(config: Config, epoch: float):
    """The attention temperature at a (fractional) epoch: linear from ``tau_initial`` to
    ``tau_final`` over ``tau_anneal_epochs``, or over ``tau_anneal_fraction`` of the
    epochs when that is set."""
    anneal = (config.tau_anneal_fraction * config.epochs if config.tau_anneal_fraction
              else config.tau_anneal_epochs)
    return linear_temperature(epoch, initial=config.tau_initial, final=config.tau_final,
                              anneal_epochs=anneal)


# --------------------------------------------------------------------------- steps

def train_step(state: TrainState, batch: dict, tau) -> tuple[TrainState, dict]:
    """One optimizer step on ``batch`` (``{"image", "label"}``) at attention temperature
    ``tau``: returns the new state and ``{"loss", "accuracy", "finite"}`` (``finite`` is
    1.0 when the loss and the updated parameters are finite). Compiled once per model and
    optimizer; the state passed in is donated."""
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


_train_step = train_step
train_step = jax.jit(train_step, donate_argnums=0)


@jax.jit
def eval_step(state: TrainState, images: jax.Array, tau) -> jax.Array:
    """Class probabilities ``[B, C]`` of ``images`` in eval mode (no state change)."""
    return jax.nn.softmax(state.model(training=False)(images, tau=tau), axis=-1)


def _epoch_plan(seed, epoch, num_examples: int, *, config: Config, steps_per_epoch: int,
                length: int) -> tuple[jax.Array, jax.Array]:
    """The batches (``int32 [length, batch_size]`` indices) and the augmentation key of
    the first ``length`` steps of epoch ``epoch``: the batches continue the passes over
    the split (one pass per epoch unless ``config.steps_per_epoch`` sets another length)."""
    augment_key = jax.random.split(data.epoch_key(seed, epoch))[1]
    order = data.step_batches(seed, epoch * steps_per_epoch, num_examples,
                              config.batch_size, length)
    return order, augment_key


def _step_on_device(state: TrainState, images, labels, mean, std, order, augment_key, i, *,
                    config: Config, steps_per_epoch: int, batch_sharding: NamedSharding):
    """Step ``i`` of an epoch whose batches are ``order``: gather, augment, normalise and
    train, all on the device."""
    x, y = images[order[i]], labels[order[i]]
    if config.augment:
        x = data.random_d4_batch(jax.random.fold_in(augment_key, i), x)
    batch = {"image": jax.lax.with_sharding_constraint(data.normalize(x, mean, std),
                                                       batch_sharding),
             "label": jax.lax.with_sharding_constraint(y.astype(jnp.int32), batch_sharding)}
    tau = temperature(config, state.step / steps_per_epoch)
    return _train_step(state, batch, tau)


def _epoch_on_device(state: TrainState, images: jax.Array, labels: jax.Array, mean, std,
                     seed, epoch, *, config: Config, steps_per_epoch: int, length: int,
                     batch_sharding: NamedSharding) -> tuple[TrainState, dict]:
    order, augment_key = _epoch_plan(seed, epoch, images.shape[0], config=config,
                                     steps_per_epoch=steps_per_epoch, length=length)

    def step(state, i):
        return _step_on_device(state, images, labels, mean, std, order, augment_key, i,
                               config=config, steps_per_epoch=steps_per_epoch,
                               batch_sharding=batch_sharding)

    return jax.lax.scan(step, state, jnp.arange(length))


_epoch_plan_jit = jax.jit(_epoch_plan, static_argnames=("num_examples", "config",
                                                         "steps_per_epoch", "length"))
_step_on_device_jit = jax.jit(_step_on_device, donate_argnums=0,
                              static_argnames=("config", "steps_per_epoch", "batch_sharding"))


def train_epoch_in_steps(state: TrainState, images: jax.Array, labels: jax.Array, mean, std,
                         seed, epoch, *, config: Config, steps_per_epoch: int, length: int,
                         batch_sharding: NamedSharding) -> tuple[TrainState, dict]:
    """:func:`train_epoch_on_device` as one compiled program per step instead of one per
    epoch: the same batches, augmentation and updates (the data stays on the device), with
    a dispatch per step. XLA's CPU backend runs some convolutions many times slower inside
    the loop of a scan (the p4m G-CNN's training step: 26 s against 1 s on one core,
    measured), so the CPU trains device-pipeline epochs this way (:data:`EPOCH_LOOPS`)."""
    order, augment_key = _epoch_plan_jit(seed, epoch, images.shape[0], config=config,
                                         steps_per_epoch=steps_per_epoch, length=length)
    return _loop(_step_on_device_jit, state, (images, labels, mean, std, order, augment_key),
                 length, 0, config=config, steps_per_epoch=steps_per_epoch,
                 batch_sharding=batch_sharding)


def _loop(step, state, args: tuple, length: int, axis: int, **static):
    """``length`` calls ``step(state, *args, i, **static)``; the per-step metrics stacked
    along ``axis``."""
    out = []
    for i in range(length):
        state, step_metrics = step(state, *args, jnp.int32(i), **static)
        out.append(step_metrics)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs, axis=axis), *out)


def _seeds_plan(seeds, epoch, num_examples, *, config, steps_per_epoch, length):
    return jax.vmap(lambda seed: _epoch_plan(seed, epoch, num_examples, config=config,
                                             steps_per_epoch=steps_per_epoch,
                                             length=length))(seeds)


def _seeds_step(states, images, labels, mean, std, orders, augment_keys, i, *, config,
                steps_per_epoch, batch_sharding):
    def one(state, order, key):
        return _step_on_device(state, images, labels, mean, std, order, key, i, config=config,
                               steps_per_epoch=steps_per_epoch, batch_sharding=batch_sharding)

    return jax.vmap(one)(states, orders, augment_keys)


_seeds_plan_jit = jax.jit(_seeds_plan, static_argnames=("num_examples", "config",
                                                         "steps_per_epoch", "length"))
_seeds_step_jit = jax.jit(_seeds_step, donate_argnums=0,
                          static_argnames=("config", "steps_per_epoch", "batch_sharding"))


def train_seeds_in_steps(states: TrainState, images: jax.Array, labels: jax.Array, mean, std,
                         seeds: jax.Array, epoch, *, config: Config, steps_per_epoch: int,
                         length: int, batch_sharding: NamedSharding
                         ) -> tuple[TrainState, dict]:
    """:func:`train_seeds_on_device` as one compiled (``vmap``-ped) program per step (see
    :func:`train_epoch_in_steps`); metrics ``[S, length]``."""
    orders, keys = _seeds_plan_jit(seeds, epoch, images.shape[0], config=config,
                                   steps_per_epoch=steps_per_epoch, length=length)
    return _loop(_seeds_step_jit, states, (images, labels, mean, std, orders, keys), length,
                 1, config=config, steps_per_epoch=steps_per_epoch,
                 batch_sharding=batch_sharding)


EPOCH_LOOPS = {"cpu": "steps"}
"""How a backend trains a device-pipeline epoch: ``"scan"`` (one program, the default) or
``"steps"`` (:func:`train_epoch_in_steps`)."""


def device_epoch_fn(seeds: bool = False):
    """The function that trains a device-pipeline epoch on the default backend
    (:data:`EPOCH_LOOPS`): :func:`train_epoch_on_device` or :func:`train_epoch_in_steps`,
    or for stacked seeds :func:`train_seeds_on_device` or :func:`train_seeds_in_steps`;
    all take the same arguments."""
    steps = EPOCH_LOOPS.get(jax.default_backend(), "scan") == "steps"
    if seeds:
        return train_seeds_in_steps if steps else train_seeds_on_device
    return train_epoch_in_steps if steps else train_epoch_on_device


_EPOCH_STATIC = ("config", "steps_per_epoch", "length", "batch_sharding")


@functools.partial(jax.jit, donate_argnums=0, static_argnames=_EPOCH_STATIC)
def train_epoch_on_device(state: TrainState, images: jax.Array, labels: jax.Array, mean,
                          std, seed, epoch, *, config: Config, steps_per_epoch: int,
                          length: int, batch_sharding: NamedSharding
                          ) -> tuple[TrainState, dict]:
    """``length`` training steps of epoch ``epoch`` as one program (``lax.scan``).

    ``images`` (uint8 ``[N, H, W, C]``) and ``labels`` are the training split on the
    device; the order and the D4 augmentation (``config.augment``) are drawn on the device
    from :func:`dgcnn_jax.data.epoch_key` ``(seed, epoch)``; each batch is normalised by
    ``mean``/``std`` and laid out by ``batch_sharding``. The temperature follows
    :func:`temperature` per step. Returns the state after the steps and the per-step
    ``{"loss", "accuracy", "finite"}`` (arrays ``[length]``).
    """
    return _epoch_on_device(state, images, labels, mean, std, seed, epoch, config=config,
                            steps_per_epoch=steps_per_epoch, length=length,
                            batch_sharding=batch_sharding)


@functools.partial(jax.jit, donate_argnums=0, static_argnames=_EPOCH_STATIC)
def train_seeds_on_device(states: TrainState, images: jax.Array, labels: jax.Array, mean,
                          std, seeds: jax.Array, epoch, *, config: Config,
                          steps_per_epoch: int, length: int, batch_sharding: NamedSharding
                          ) -> tuple[TrainState, dict]:
    """:func:`train_epoch_on_device` for S runs at once: ``states`` stacked along a leading
    axis (:func:`stack_states`) and ``seeds`` ``int [S]`` (each run's order and
    augmentation), ``vmap``-ped; metrics ``[S, length]``."""
    def one(state, seed):
        return _epoch_on_device(state, images, labels, mean, std, seed, epoch, config=config,
                                steps_per_epoch=steps_per_epoch, length=length,
                                batch_sharding=batch_sharding)

    return jax.vmap(one)(states, seeds)


def _predict_on_device(state, images, mean, std, tau, *, batch_size, batch_sharding):
    n = images.shape[0]
    batches = -(-n // batch_size)
    x = jnp.pad(images, ((0, batches * batch_size - n),) + ((0, 0),) * (images.ndim - 1))
    x = x.reshape(batches, batch_size, *images.shape[1:])

    def one(xb):
        xb = jax.lax.with_sharding_constraint(data.normalize(xb, mean, std), batch_sharding)
        return jax.nn.softmax(state.model(training=False)(xb, tau=tau), axis=-1)

    return jax.lax.map(one, x).reshape(batches * batch_size, -1)[:n]


@functools.partial(jax.jit, static_argnames=("batch_size", "batch_sharding"))
def predict_on_device(state: TrainState, images: jax.Array, mean, std, tau, *,
                      batch_size: int, batch_sharding: NamedSharding) -> jax.Array:
    """Class probabilities ``[N, C]`` of uint8 images already on the device (eval mode),
    in batches of ``batch_size`` (the last one padded) as one program."""
    return _predict_on_device(state, images, mean, std, tau, batch_size=batch_size,
                              batch_sharding=batch_sharding)


@functools.partial(jax.jit, static_argnames=("batch_size", "batch_sharding"))
def predict_seeds_on_device(states: TrainState, images: jax.Array, mean, std, taus, *,
                            batch_size: int, batch_sharding: NamedSharding) -> jax.Array:
    """:func:`predict_on_device` for stacked states and temperatures ``[S]``: ``[S, N, C]``."""
    return jax.vmap(lambda state, tau: _predict_on_device(
        state, images, mean, std, tau, batch_size=batch_size,
        batch_sharding=batch_sharding))(states, taus)


def stack_states(states: list[TrainState]) -> TrainState:
    """Train states of one config (other seeds) stacked along a new leading axis (the
    static parts, model structure and optimizer, are the first state's)."""
    leaves = [jax.tree.leaves(s) for s in states]
    return jax.tree.unflatten(jax.tree.structure(states[0]),
                              [jnp.stack(xs) for xs in zip(*leaves)])


def unstack_state(states: TrainState, index: int) -> TrainState:
    """Run ``index`` of stacked states."""
    return jax.tree.map(lambda x: x[index], states)


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
    """Per dynamic layer: its ``layer`` name, ``attention_entropy`` (mean over ``images``, nats),
    ``attention_spread`` (std over the images of the weights) and ``bank_common_share``
    (the share of the change since ``initial`` of the K banks, ``W_k`` or the residual
    form's ``dW_k``, that is common to all K); ``images`` are
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


def predict(state: TrainState, images: np.ndarray, mean, std, tau, *, batch_size: int,
            mesh: jax.sharding.Mesh) -> np.ndarray:
    """Class probabilities ``[N, C]`` of uint8 images (eval mode, every example).

    In one process the images go to the devices and are scored as one program
    (:func:`predict_on_device`; a no-op transfer for images already there); with several
    processes batch by batch, each gathered from every process.
    """
    if jax.process_count() == 1:
        images = jax.device_put(images, NamedSharding(mesh, PartitionSpec()))
        return np.asarray(predict_on_device(
            state, images, mean, std, tau, batch_size=batch_size,
            batch_sharding=NamedSharding(mesh, PartitionSpec("data"))))
    ds = data.epoch_dataset(images, np.zeros(len(images), np.int32), batch_size=batch_size,
                            mean=mean, std=std, shuffle=False, drop_remainder=False)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    out = []
    for batch in ds:
        x = batch["image"]
        n = len(x)
        if n % batch_size:  # pad the last batch to a full (shardable) one; no retrace
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        probs = eval_step(state, _from_host(x, sharding), tau)
        if jax.process_count() > 1:  # gather the batch shards of every process
            probs = multihost_utils.process_allgather(probs, tiled=True)
        out.append(np.asarray(probs)[:n])
    return np.concatenate(out)


def _global_batch(local: dict, sharding: NamedSharding) -> dict:
    """A batch sharded over the mesh from this process's rows (all of them in one process)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _from_host(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds whole."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


# --------------------------------------------------------------------------- outputs

def _primary() -> bool:
    """Whether this is the process that writes a run's files (process 0)."""
    return jax.process_index() == 0


def _write_json(path: pathlib.Path, obj) -> None:
    if not _primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def _print(*args) -> None:
    if _primary():
        print(*args, flush=True)


def _write_history(workdir: pathlib.Path, history: list[dict]) -> None:
    if not _primary():
        return
    tmp = workdir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
    tmp.replace(workdir / "metrics.jsonl")


class _ProgressBar:
    """A tqdm bar with loss and images/s (silent when ``config.progress`` is false)."""

    def __init__(self, config: Config, epoch: int, total: int, initial: int):
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm
            # disable=None: no bar where stderr is not a terminal (a file or a pipe would
            # get one line per update); the epoch lines still print
            self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}",
                            unit="step", leave=False, file=sys.stderr, disable=None)

    def update(self, loss: float, images_per_second: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Run:
    """What the epochs of one run share: its data (on the device for the device
    pipeline), mesh and checkpoints; trains an epoch, scores a split, saves and resumes."""

    config: Config
    workdir: pathlib.Path
    dataset: datasets.Dataset
    steps_per_epoch: int
    mesh: jax.sharding.Mesh
    checkpoints: Checkpoints
    pipeline: str = "host"  # "device": the uint8 splits below live on the device
    on_device: dict = dataclasses.field(default_factory=dict)  # split -> (images, labels)
    val: tuple | None = None  # the validation split on the host, read once

    def __post_init__(self):
        if self.val is None:
            self.val = self.dataset.split("val")
        self.val_labels = self.val[1]
        if self.pipeline == "device" and not self.on_device:
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self.on_device = {"train": jax.device_put(self.dataset.split("train"), replicated),
                              "val": jax.device_put(self.val, replicated)}

    def save_latest(self, state: TrainState, progress: Progress) -> None:
        Checkpoints.save(self.checkpoints.latest, int(state.step),
                         {"model": state.model_item(), "train": state.train_item()},
                         dataclasses.asdict(progress))

    def resume(self, state: TrainState) -> tuple[TrainState, Progress]:
        if self.checkpoints.latest.latest_step() is None:
            return state, Progress()
        items, meta = Checkpoints.restore(
            self.checkpoints.latest, {"model": state.model_item(), "train": state.train_item()})
        state = replicate(state.with_items(**items), self.mesh)
        progress = Progress(**{"pipeline": "host", **meta})
        if progress.pipeline != self.pipeline:
            raise WorkdirError(f"{self.workdir} holds a run trained with the {progress.pipeline} "
                               f"pipeline, this one would use the {self.pipeline} pipeline "
                               f"(they draw different orders): resume it with "
                               f"--set pipeline={progress.pipeline}")
        _print(f"resuming from step {int(state.step)} (epoch {progress.epoch}, batch "
               f"{progress.batch}) in {self.workdir}")
        return state, progress

    def train_epoch(self, state: TrainState, progress: Progress, epoch: int) -> TrainState:
        """Train the rest of ``epoch`` from ``progress.batch``; save mid-epoch checkpoints
        (host pipeline) or train the whole epoch as one program (device pipeline)."""
        if self.pipeline == "device":
            return self._train_epoch_on_device(state, progress, epoch)
        config, steps = self.config, self.steps_per_epoch
        processes = jax.process_count()  # each process reads its rows of every batch
        ds = self.dataset.train_epoch(
            batch_size=config.batch_size, epoch=epoch, seed=config.seed, augment=config.augment,
            shard=(jax.process_index(), processes) if processes > 1 else None)
        first = progress.batch
        it = data.epoch_iterator(ds, progress.iterator if first else None)
        if not first:  # a fresh epoch (a resumed one keeps its running sums)
            progress.start_epoch()
        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        step = int(state.step)
        start = epoch_start = time.perf_counter()
        bar = _ProgressBar(config, epoch, steps, first)
        for batch_index in range(first, steps):
            batch = _global_batch(next(it), sharding)
            state, step_metrics = train_step(state, batch, temperature(config, step / steps))
            step_metrics = jax.device_get(step_metrics)
            loss = float(step_metrics["loss"])
            if not (math.isfinite(loss) and step_metrics["finite"]):
                raise self._non_finite(loss, epoch, step + 1)
            step += 1
            progress.loss_sum += loss
            progress.accuracy_sum += float(step_metrics["accuracy"])
            progress.seen += 1
            rate = (batch_index + 1 - first) * config.batch_size / max(
                time.perf_counter() - epoch_start, 1e-9)
            bar.update(loss, rate)
            stop = bool(config.max_steps) and step >= config.max_steps
            every = config.checkpoint_every_steps
            # (the end of an epoch, or a stop, saves its own checkpoint at this step)
            if every and step % every == 0 and batch_index + 1 < steps and not stop:
                progress.train_seconds += time.perf_counter() - start
                start = time.perf_counter()
                progress.epoch, progress.batch, progress.iterator = epoch, batch_index + 1, \
                    it.get_state()
                self.save_latest(state, progress)
            if stop:
                break
        bar.close()
        progress.train_seconds += time.perf_counter() - start
        return state

    def _non_finite(self, loss: float, epoch: int, step: int) -> TrainingError:
        saved = self.checkpoints.latest.latest_step()
        kept = (f"the last good checkpoint (step {saved}) is kept in "
                f"{self.workdir / 'checkpoints' / 'latest'}" if saved is not None
                else "no checkpoint had been saved yet")
        return TrainingError(f"non-finite training loss or parameters (loss {loss:.4g}) at "
                             f"epoch {epoch + 1}, step {step}: stopping; {kept} (try a lower "
                             f"learning_rate)")

    def _train_epoch_on_device(self, state: TrainState, progress: Progress,
                               epoch: int) -> TrainState:
        config, steps = self.config, self.steps_per_epoch
        progress.start_epoch()
        length = steps if not config.max_steps else min(steps,
                                                        config.max_steps - int(state.step))
        if length < 1:
            return state
        first_step = int(state.step)
        images, labels = self.on_device["train"]
        start = time.perf_counter()
        state, step_metrics = device_epoch_fn()(
            state, images, labels, self.dataset.mean, self.dataset.std, config.seed, epoch,
            config=config,
            steps_per_epoch=steps, length=length,
            batch_sharding=NamedSharding(self.mesh, PartitionSpec("data")))
        step_metrics = jax.device_get(step_metrics)
        self.record_epoch(progress, step_metrics, epoch, first_step,
                          time.perf_counter() - start)
        return state

    def record_epoch(self, progress: Progress, step_metrics: dict, epoch: int,
                     first_step: int, seconds: float) -> None:
        """Add an epoch trained as one program (per-step metrics on the host) to
        ``progress``; a non-finite step stops the run (:class:`TrainingError`)."""
        loss = step_metrics["loss"]
        bad = np.flatnonzero(~(np.isfinite(loss) & (step_metrics["finite"] > 0)))
        if bad.size:
            raise self._non_finite(float(loss[bad[0]]), epoch, first_step + int(bad[0]) + 1)
        progress.loss_sum = float(np.sum(loss, dtype=np.float64))
        progress.accuracy_sum = float(np.sum(step_metrics["accuracy"], dtype=np.float64))
        progress.seen = len(loss)
        progress.train_seconds += seconds

    def predict(self, state: TrainState, split: str | np.ndarray, tau) -> np.ndarray:
        """Class probabilities of the ``"val"`` split (kept on the device between epochs by
        the device pipeline) or of uint8 images ``[N, H, W, C]``."""
        if not isinstance(split, str):
            images = split
        elif split != "val":
            raise ValueError(f"split: expected 'val' or images, got {split!r}")
        else:
            images = (self.on_device.get("val") if self.pipeline == "device"
                      else self.val)[0]
        return predict(state, images, self.dataset.mean, self.dataset.std, tau,
                       batch_size=self.config.eval_batch_size, mesh=self.mesh)


def train_and_evaluate(config: Config, workdir: str | pathlib.Path) -> dict:
    """Train ``config.model`` on ``config.dataset``; resume if ``workdir`` has a checkpoint.

    Returns the final results (also written to ``workdir/results.json``). With
    ``config.seeds`` set, trains those seeds together (:func:`train_seeds`) and returns
    ``{seed: results}``.
    """
    if config.seeds:
        return train_seeds(config, workdir)
    # Set up: data, model and optimizer state, checkpoints (resume where they are).
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # one run per work directory (its process 0 holds the lock)
    lock = _WorkdirLock(workdir) if _primary() else None
    try:
        return _train_and_evaluate(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def _open(config: Config) -> tuple[datasets.Dataset, int, jax.sharding.Mesh]:
    dataset = datasets.open_dataset(config.dataset, config.data_dir,
                                    train_fraction=config.train_fraction,
                                    data_seed=config.data_seed)
    steps = data.num_batches(dataset.num_train, config.batch_size, drop_remainder=True)
    if steps < 1:
        raise ValueError(f"batch_size: {config.batch_size} exceeds the {dataset.num_train} "
                         f"training examples")
    steps = config.steps_per_epoch or steps
    return dataset, steps, make_mesh(config)


def _check_stored_config(workdir: pathlib.Path, checkpoints: Checkpoints,
                         config: Config) -> None:
    stored = workdir / "config.json"
    if checkpoints.latest.latest_step() is not None and stored.is_file():
        changed = config_differences(json.loads(stored.read_text()), config)
        if changed:
            raise WorkdirError(f"{workdir} holds a run with another config ({'; '.join(changed)})"
                               f": resume it with the same settings, or use another --workdir")


def _initial_copy(state: TrainState) -> TrainState:
    """The seeded initialisation, what bank changes are measured against (copied: the
    training steps donate the state's buffers)."""
    return jax.tree.map(jnp.copy, state.replace(opt_state=None, tx=None))


def _diagnostic_images(run: Run) -> jax.Array:
    """The normalised validation images of the per-epoch diagnostics (on the device once,
    not every epoch)."""
    val_x, dataset = run.val[0], run.dataset
    return jnp.asarray((val_x[:DIAGNOSTIC_IMAGES].astype(np.float32) / 255.0 - dataset.mean)
                       / dataset.std, jnp.float32)


def _end_epoch(run: Run, state: TrainState, progress: Progress, epoch: int,
               val_probs: np.ndarray, initial: TrainState, probe: jax.Array,
               prefix: str = "") -> None:
    """Score ``epoch`` on validation, add its record to the history (``metrics.jsonl``)
    and save ``best`` when validation AUC improved (``latest`` is the caller's)."""
    config = run.config
    step = int(state.step)
    tau = temperature(config, step / run.steps_per_epoch)
    val = metrics.classification_metrics(val_probs, run.val_labels)
    seen = max(progress.seen, 1)
    record = {"epoch": epoch + 1, "step": step, "tau": float(tau),
              "train_loss": progress.loss_sum / seen,
              "train_accuracy": progress.accuracy_sum / seen,
              "val_auc": val["auc"], "val_accuracy": val["accuracy"], "val_nll": val["nll"],
              "val_balanced_accuracy": val["balanced_accuracy"]}
    diagnostics = dynamic_diagnostics(state, initial, probe, tau)
    if diagnostics:
        record["dynamic_layers"] = diagnostics
    progress.history.append(record)
    improved = val["auc"] > progress.best_auc
    if improved:
        progress.best_auc, progress.best_epoch = val["auc"], epoch + 1
    _write_history(run.workdir, progress.history)
    _print(f"{prefix}epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
           f"val AUC {val['auc']:.4f}  val acc {val['accuracy']:.4f}  tau {float(tau):.2f}"
           f"{'  (best)' if improved else ''}")
    if improved:
        # the temperature the checkpoint was selected with is the one it is tested with
        Checkpoints.save(run.checkpoints.best, epoch + 1, {"model": state.model_item()},
                         {"epoch": epoch + 1, "val": val, "tau": float(tau)})


def _train_and_evaluate(config: Config, workdir: pathlib.Path) -> dict:
    checkpoints = Checkpoints(workdir)
    _check_stored_config(workdir, checkpoints, config)
    dataset, steps, mesh = _open(config)
    state = create_train_state(config, dataset.num_classes, dataset.channels, steps, mesh)
    initial = _initial_copy(state)
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(state.params)))
    _write_json(workdir / "config.json", dataclasses.asdict(config))
    run = Run(config, workdir, dataset, steps, mesh, checkpoints, pipeline(config))
    state, progress = run.resume(state)
    progress.pipeline = run.pipeline
    _write_history(workdir, progress.history)
    probe = _diagnostic_images(run)

    # Epochs: train, score on validation, keep the best checkpoint.
    for epoch in range(progress.epoch, config.epochs):
        state = run.train_epoch(state, progress, epoch)
        tau = temperature(config, int(state.step) / steps)
        _end_epoch(run, state, progress, epoch, run.predict(state, "val", tau), initial, probe)
        progress.epoch, progress.batch, progress.iterator = epoch + 1, 0, None
        run.save_latest(state, progress)
        if config.max_steps and int(state.step) >= config.max_steps:
            break
    return _finish(run, state, progress, num_params)


def _finish(run: Run, state: TrainState, progress: Progress, num_params: int,
            together: int = 1) -> dict:
    """Test the best checkpoint once (unless ``score_test`` is false); write results.json,
    plots and the test probabilities. ``together``: runs trained in the same program."""
    config, workdir, mesh = run.config, run.workdir, run.mesh
    items, best = Checkpoints.restore(run.checkpoints.best, {"model": state.model_item()})
    results = {"model": config.model, "dataset": config.dataset, "seed": config.seed,
               "train_fraction": config.train_fraction, "data_seed": config.data_seed,
               "num_train": run.dataset.num_train, "num_params": num_params,
               "best_epoch": best["epoch"], "best_tau": best["tau"], "val": best["val"],
               "test": None, "epochs_run": len(progress.history), "steps": int(state.step),
               "train_seconds": progress.train_seconds, "pipeline": run.pipeline,
               "seeds_trained_together": together,
               "devices": num_devices(config), "backend": jax.default_backend()}
    if _primary():
        plots.learning_curves(progress.history, workdir / "learning_curves.png")
        if any("dynamic_layers" in h for h in progress.history):
            plots.dynamic_diagnostics(progress.history, workdir / "dynamic_diagnostics.png",
                                      f"{config.model} on {config.dataset}")
    if not config.score_test:  # selection runs: validation only, the test split unread
        _write_json(workdir / "results.json", results)
        _print(f"best val AUC {best['val']['auc']:.4f} at epoch {best['epoch']} (score_test="
               f"false: the test split was not read)")
        return results

    # Test once: the best checkpoint on the test split.
    best_state = replicate(state.with_items(items["model"]), mesh)
    test_x, test_y = run.dataset.split("test")
    eval_start = time.perf_counter()
    probs = run.predict(best_state, test_x, best["tau"])
    eval_seconds = time.perf_counter() - eval_start
    test = metrics.classification_metrics(probs, test_y)
    results.update({
        "test": test, "forward_flops": models.forward_flops(state.model(), test_x.shape[1:]),
        "train_images_per_second": int(state.step) * config.batch_size * together
        / max(progress.train_seconds, 1e-9),
        "eval_images_per_second": len(test_x) / max(eval_seconds, 1e-9)})
    _write_json(workdir / "results.json", results)
    if _primary():
        classes = datasets.class_names(config.dataset)
        plots.roc(probs, test_y, workdir / "roc_test.png",
                  f"{config.model} on {config.dataset} (test)", classes)
        plots.confusion(test["confusion_matrix"], workdir / "confusion_test.png",
                        f"{config.model} on {config.dataset} (test)", classes)
        np.save(workdir / "test_probs.npy", probs)
        np.save(workdir / "test_labels.npy", np.asarray(test_y))
    _print(f"test AUC {test['auc']:.4f}  acc {test['accuracy']:.4f}  (best epoch "
           f"{best['epoch']}; results in {workdir / 'results.json'})")
    return results


# --------------------------------------------------------------------------- several seeds

def seed_list(config: Config) -> list[int]:
    """The seeds of ``config.seeds`` (``"0,1,2"``), or ``[config.seed]`` when it is empty."""
    if not config.seeds:
        return [config.seed]
    return [int(x) for x in config.seeds.split(",")]


def stored_seeds(workdir: str | pathlib.Path) -> list[int] | None:
    """The seeds of the several-seed run whose stacked state ``workdir`` holds (``None``:
    none)."""
    workdir = pathlib.Path(workdir)
    latest = workdir / "checkpoints" / "latest"
    stored = workdir / "config.json"
    if not (stored.is_file() and latest.is_dir()
            and any(p.name.isdigit() for p in latest.iterdir())):
        return None
    seeds = json.loads(stored.read_text()).get("seeds", "")
    return seed_list(Config(seeds=seeds)) if seeds else None


def _trained(workdir: pathlib.Path, epochs: int) -> bool:
    """Whether the run in ``workdir`` has results after all ``epochs`` epochs."""
    results = workdir / "results.json"
    return results.is_file() and json.loads(results.read_text())["epochs_run"] >= epochs


def train_seeds(config: Config, workdir: str | pathlib.Path) -> dict[int, dict]:
    """Train ``config`` for every seed of ``config.seeds`` together, as one program per
    epoch (states stacked and ``vmap``-ped; the device pipeline), each seed selected on
    its own validation scores and tested once with its own best checkpoint.

    ``<workdir>/seed<N>`` receives what a single run with ``seed=N`` writes (its
    ``config.json``, ``metrics.jsonl``, ``checkpoints/best``, ``results.json``, plots);
    ``<workdir>/checkpoints/latest`` holds the stacked state for resuming at epoch
    boundaries (running the command again resumes, or tests again once finished). A
    different seed list may start in the same folder once every seed of the stored one
    has its results after all epochs (their stacked state is then deleted). Returns
    ``{seed: results}``.
    """
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = _WorkdirLock(workdir)
    try:
        return _train_seeds(config, workdir)
    finally:
        lock.release()


def _train_seeds(config: Config, workdir: pathlib.Path) -> dict[int, dict]:
    seeds = seed_list(config)
    singles = {s: dataclasses.replace(config, seed=s, seeds="") for s in seeds}
    stored = stored_seeds(workdir)
    other_seeds = stored is not None and stored != seeds
    if other_seeds:  # refused before any checkpoint manager (and its threads) exists
        epochs = json.loads((workdir / "config.json").read_text())["epochs"]
        if not all(_trained(workdir / f"seed{s}", epochs) for s in stored):
            raise WorkdirError(f"{workdir} holds an unfinished run of seeds "
                               f"{','.join(map(str, stored))}: resume it with --set seeds="
                               f"{','.join(map(str, stored))}, or use another --workdir")
    checkpoints = Checkpoints(workdir)
    if other_seeds:
        # every seed of the stored run has trained all its epochs: its stacked state is spent
        for step in checkpoints.latest.all_steps():
            checkpoints.latest.delete(step)
    _check_stored_config(workdir, checkpoints, config)
    dataset, steps, mesh = _open(config)
    states = [create_train_state(singles[s], dataset.num_classes, dataset.channels, steps,
                                 mesh) for s in seeds]
    initials = [_initial_copy(s) for s in states]
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(states[0].params)))
    state = jax.device_put(stack_states(states), NamedSharding(mesh, PartitionSpec()))
    del states
    _write_json(workdir / "config.json", dataclasses.asdict(config))
    shared = Run(config, workdir, dataset, steps, mesh, checkpoints, "device")
    runs = []
    for s in seeds:
        (workdir / f"seed{s}").mkdir(exist_ok=True)
        runs.append(Run(singles[s], workdir / f"seed{s}", dataset, steps, mesh,
                        Checkpoints(workdir / f"seed{s}"), "device", shared.on_device,
                        shared.val))
        _write_json(runs[-1].workdir / "config.json", dataclasses.asdict(singles[s]))
    progresses = [Progress(pipeline="device") for _ in seeds]
    if checkpoints.latest.latest_step() is not None:
        items, meta = Checkpoints.restore(
            checkpoints.latest, {"model": state.model_item(), "train": state.train_item()})
        state = jax.device_put(state.with_items(**items), NamedSharding(mesh, PartitionSpec()))
        progresses = [Progress(**p) for p in meta["progress"]]
        print(f"resuming {len(seeds)} seeds from epoch {progresses[0].epoch} in {workdir}",
              flush=True)
    for run, progress in zip(runs, progresses):
        _write_history(run.workdir, progress.history)
    probe = _diagnostic_images(shared)
    seeds_array = jnp.asarray(seeds, jnp.int32)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    images, labels = shared.on_device["train"]

    for epoch in range(progresses[0].epoch, config.epochs):
        step = int(state.step[0])
        length = steps if not config.max_steps else min(steps, config.max_steps - step)
        if length < 1:
            break
        start = time.perf_counter()
        state, step_metrics = device_epoch_fn(seeds=True)(
            state, images, labels, dataset.mean, dataset.std, seeds_array, epoch,
            config=config, steps_per_epoch=steps, length=length, batch_sharding=batch_sharding)
        step_metrics = jax.device_get(step_metrics)
        seconds = time.perf_counter() - start
        for i, (run, progress) in enumerate(zip(runs, progresses)):
            run.record_epoch(progress, {k: v[i] for k, v in step_metrics.items()}, epoch,
                             step, seconds)
        taus = jnp.full((len(seeds),), temperature(config, int(state.step[0]) / steps))
        val_probs = np.asarray(predict_seeds_on_device(
            state, shared.on_device["val"][0], dataset.mean, dataset.std, taus,
            batch_size=config.eval_batch_size, batch_sharding=batch_sharding))
        for i, (run, progress) in enumerate(zip(runs, progresses)):
            _end_epoch(run, unstack_state(state, i), progress, epoch, val_probs[i],
                       initials[i], probe, prefix=f"seed {seeds[i]}: ")
            progress.epoch = epoch + 1
        Checkpoints.save(checkpoints.latest, int(state.step[0]),
                         {"model": state.model_item(), "train": state.train_item()},
                         {"seeds": seeds, "progress": [dataclasses.asdict(p)
                                                      for p in progresses]})
        if config.max_steps and int(state.step[0]) >= config.max_steps:
            break

    results = {}
    for i, (run, progress) in enumerate(zip(runs, progresses)):
        results[seeds[i]] = _finish(run, unstack_state(state, i), progress, num_params,
                                   together=len(seeds))
    return results


def default_workdir(config: Config) -> str:
    """``runs/<model>-<dataset>-seed<seed>``: a run without ``--workdir`` does not land in
    another model's folder (other changes to one of these are refused on resume)."""
    if config.seeds:
        return f"runs/{config.model}-{config.dataset}-seeds{config.seeds.replace(',', '-')}"
    return f"runs/{config.model}-{config.dataset}-seed{config.seed}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None,
                        help="output and checkpoint folder (resumes if it has a checkpoint; "
                             "default runs/MODEL-DATASET-seedSEED)")
    parser.add_argument("--config", default="default", choices=sorted(CONFIGS),
                        help="base configuration (experiments/configs/<name>.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set epochs=5")
    parser.add_argument("--distributed", action="store_true",
                        help="several processes (hosts, or GPUs of one host): call "
                             "jax.distributed.initialize() first; the coordinator and process "
                             "ids come from the options below, else from the cluster "
                             "environment (SLURM, Open MPI, ...; JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                        help="with --distributed: process 0's address, the same for all")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--heartbeat-timeout", type=int, default=60, metavar="SECONDS",
                        help="with --distributed: a process that stops answering for this "
                             "long is taken for dead, and the others stop (default 60)")
    args = parser.parse_args(argv)
    if args.distributed:
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                               args.heartbeat_timeout)
    try:
        config = override(get_config(args.config), args.set)
        validate(config)
    except ValueError as err:
        parser.error(str(err))
    workdir = args.workdir or default_workdir(config)
    if args.workdir is None:
        print(f"work directory {workdir} (choose one with --workdir)", flush=True)
    try:
        return train_and_evaluate(config, workdir)
    except (TrainingError, WorkdirError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        _exit(1)
    except Exception as err:
        if jax.process_count() == 1:
            raise
        # a collective with a process that died fails here; leave at once rather than
        # wait in JAX's shutdown barrier for the process that will not come
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        print(f"error: process {jax.process_index()} of {jax.process_count()} stopped: "
              f"{type(err).__name__}: {first} (another process of this run may have died; "
              f"the last checkpoint is kept: launch every process again to resume)",
              file=sys.stderr, flush=True)
        _exit(1)


def _exit(code: int):
    if jax.process_count() > 1:  # skip the shutdown barrier with processes that are gone
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout: int = 60) -> None:
    """``jax.distributed.initialize`` for a run of several processes; values left ``None``
    come from the cluster environment. On CPUs the collectives run over gloo (TCP)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)


if __name__ == "__main__":
    main()
