"""The training state, the progress record, the optimizer and the temperature schedule.

:class:`TrainState` is one pytree with everything a step reads and writes;
:class:`Progress` is where a run stands (saved with every ``latest`` checkpoint);
:class:`StepSettings` holds the few config fields a compiled step reads, so that the
jitted programs take a small static argument instead of the whole config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dgcnn_jax import models
from dgcnn_jax.dynamic import linear_temperature
from experiments.configs import Config, model_kwargs

from .parallel import replicate

__all__ = ["TrainState", "Progress", "StepSettings", "step_settings", "Optimizer",
           "make_optimizer",
           "create_train_state", "temperature", "stack_states", "unstack_state",
           "initial_copy", "count_params"]


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
    tx: Optimizer | None = flax.struct.field(pytree_node=False)

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


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a compiled training step reads of the config (hashable: a static argument)."""

    batch_size: int
    augment: bool
    tau_initial: float
    tau_final: float
    tau_anneal_epochs: float  # the annealing length in epochs, resolved


def step_settings(config: Config) -> StepSettings:
    """The :class:`StepSettings` of a config: ``tau_anneal_fraction`` of the epochs when
    set, else ``tau_anneal_epochs``."""
    anneal = (config.tau_anneal_fraction * config.epochs if config.tau_anneal_fraction
              else config.tau_anneal_epochs)
    return StepSettings(config.batch_size, config.augment, config.tau_initial,
                        config.tau_final, anneal)


def temperature(settings: StepSettings | Config, epoch):
    """The attention temperature at a (fractional) epoch: linear from ``tau_initial`` to
    ``tau_final`` over the annealing length (:func:`step_settings`)."""
    if isinstance(settings, Config):
        settings = step_settings(settings)
    return linear_temperature(epoch, initial=settings.tau_initial, final=settings.tau_final,
                              anneal_epochs=settings.tau_anneal_epochs)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax optimizer given by its settings: AdamW or SGD with momentum, warm-up then
    cosine decay, optional gradient clipping, and the dynamic layers' banks at their own
    decay. Equal settings make equal optimizers, so runs of one config (other seeds, a
    resumed run) share their compiled steps (the optimizer is a static part of
    :class:`TrainState`). ``init`` and ``update`` are optax's."""

    name: str  # "adamw" or "sgd"
    learning_rate: float
    warmup_steps: int
    decay_steps: int
    weight_decay: float
    bank_weight_decay: float | None
    momentum: float
    grad_clip_norm: float

    def transform(self) -> optax.GradientTransformation:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, self.learning_rate, warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps)
        if self.bank_weight_decay is None:
            decay = optax.add_decayed_weights(self.weight_decay)
        else:  # the dynamic layers' banks (parameters named "kernels") at their own rate
            decay = optax.chain(
                optax.add_decayed_weights(self.weight_decay, mask=_bank_mask(False)),
                optax.add_decayed_weights(self.bank_weight_decay, mask=_bank_mask(True)))
        if self.name == "adamw":
            if self.bank_weight_decay is None:
                opt = optax.adamw(schedule, weight_decay=self.weight_decay)
            else:  # optax.adamw's chain with the two decays (decoupled, times the rate)
                opt = optax.chain(optax.scale_by_adam(), decay,
                                  optax.scale_by_learning_rate(schedule))
        else:
            opt = optax.chain(decay, optax.sgd(schedule, momentum=self.momentum))
        if self.grad_clip_norm > 0:
            opt = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), opt)
        return opt

    def init(self, params):
        return self.transform().init(params)

    def update(self, updates, state, params=None):
        return self.transform().update(updates, state, params)


def make_optimizer(config: Config, steps_per_epoch: int) -> Optimizer:
    """The :class:`Optimizer` of a config for epochs of ``steps_per_epoch`` steps."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    return Optimizer(config.optimizer, config.learning_rate, warmup, max(total, warmup + 1),
                     config.weight_decay, config.bank_weight_decay, config.momentum,
                     config.grad_clip_norm)


def _bank_mask(banks: bool):
    """A mask function: True for the dynamic layers' banks (``kernels``) when ``banks``,
    for every other parameter otherwise."""
    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(p, "key", None) == "kernels" for p in path) == banks,
            params)
    return mask


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


def stack_states(states: list[TrainState]) -> TrainState:
    """Train states of one config (other seeds) stacked along a new leading axis (the
    static parts, model structure and optimizer, are the first state's)."""
    leaves = [jax.tree.leaves(s) for s in states]
    return jax.tree.unflatten(jax.tree.structure(states[0]),
                              [jnp.stack(xs) for xs in zip(*leaves)])


def unstack_state(states: TrainState, index: int) -> TrainState:
    """Run ``index`` of stacked states."""
    return jax.tree.map(lambda x: x[index], states)


def initial_copy(state: TrainState) -> TrainState:
    """The seeded initialisation, what bank changes are measured against (copied: the
    training steps donate the state's buffers)."""
    return jax.tree.map(jnp.copy, state.replace(opt_state=None, tx=None))


def count_params(state: TrainState) -> int:
    """Trainable parameters of one (unstacked) state."""
    return int(sum(np.size(x) for x in jax.tree.leaves(state.params)))
