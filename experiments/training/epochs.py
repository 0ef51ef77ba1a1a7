"""Training epochs of one run, or of several seeds trained together, and their records.

:class:`Trainer` holds what the epochs share: the data (the splits on the device for the
device pipeline), the mesh, the ``latest`` checkpoints and the runs it trains (one, or S
stacked seeds, each a :class:`Member` with its own folder, progress and best checkpoint).
It trains an epoch (:meth:`Trainer.train_epoch`), scores the validation split, saves and
resumes. The host pipeline (grain, mid-epoch checkpoints, several processes) trains one
run; the device pipeline one or many.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dgcnn_jax import data
from experiments import datasets
from experiments.checkpoints import Checkpoints
from experiments.configs import Config

from .parallel import batch_sharding, global_batch, replicate
from .state import Progress, TrainState, step_settings, temperature, unstack_state
from .steps import predict, predict_on_device, train_epoch_on_device, train_step
from .workdir import Workdir, WorkdirError, say

__all__ = ["TrainingError", "Member", "Trainer"]


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class Member:
    """One run of a :class:`Trainer`: its config (one seed), folder and best checkpoint,
    progress, and the initial state its bank changes are measured against."""

    config: Config
    workdir: Workdir
    checkpoints: Checkpoints
    progress: Progress
    initial: TrainState | None = None


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


@dataclasses.dataclass
class Trainer:
    """What the epochs of one run (``seeds`` ``None``) or of stacked seeds share."""

    config: Config
    workdir: Workdir
    dataset: datasets.Dataset
    steps_per_epoch: int
    mesh: jax.sharding.Mesh
    checkpoints: Checkpoints | None  # ``latest`` lives here (None: nothing is saved)
    pipeline: str = "host"  # "device": the uint8 splits below live on the device
    seeds: list[int] | None = None
    members: list[Member] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.settings = step_settings(self.config)
        self.val = self.dataset.split("val")
        self.on_device = {}
        if self.pipeline == "device":
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self.on_device = {"train": jax.device_put(self.dataset.split("train"), replicated),
                              "val": jax.device_put(self.val, replicated)}

    @property
    def stacked(self) -> bool:
        return self.seeds is not None

    def member_state(self, state: TrainState, index: int) -> TrainState:
        return unstack_state(state, index) if self.stacked else state

    def step(self, state: TrainState) -> int:
        """The state's step count (of the first seed: stacked seeds step together)."""
        return int(state.step[0] if self.stacked else state.step)

    def tau(self, state: TrainState):
        """The temperature at the state's step."""
        return temperature(self.settings, self.step(state) / self.steps_per_epoch)

    # ---------------------------------------------------------------- save and resume
    def save_latest(self, state: TrainState) -> None:
        progresses = [dataclasses.asdict(m.progress) for m in self.members]
        meta = ({"seeds": self.seeds, "progress": progresses} if self.stacked
                else progresses[0])
        Checkpoints.save(self.checkpoints.latest, self.step(state),
                         {"model": state.model_item(), "train": state.train_item()}, meta)

    def resume(self, state: TrainState) -> TrainState:
        """The state and progress of the ``latest`` checkpoint, if there is one."""
        if self.checkpoints.latest.latest_step() is None:
            return state
        items, meta = Checkpoints.restore(
            self.checkpoints.latest, {"model": state.model_item(), "train": state.train_item()})
        state = replicate(state.with_items(**items), self.mesh)
        if self.stacked:
            for member, progress in zip(self.members, meta["progress"]):
                member.progress = Progress(**progress)
            say(f"resuming {len(self.seeds)} seeds from epoch "
                f"{self.members[0].progress.epoch} in {self.workdir.path}")
            return state
        progress = Progress(**{"pipeline": "host", **meta})
        if progress.pipeline != self.pipeline:
            raise WorkdirError(f"{self.workdir.path} holds a run trained with the "
                               f"{progress.pipeline} pipeline, this one would use the "
                               f"{self.pipeline} pipeline (they draw different orders): resume "
                               f"it with --set pipeline={progress.pipeline}")
        self.members[0].progress = progress
        say(f"resuming from step {int(state.step)} (epoch {progress.epoch}, batch "
            f"{progress.batch}) in {self.workdir.path}")
        return state

    def drop_stopped_evaluations(self) -> None:
        """Delete the best checkpoints saved after the position training resumes from
        (the evaluation of a run stopped mid-epoch): the resumed run selects among its
        finished epochs, as an uninterrupted run does."""
        for member in self.members:
            best = member.checkpoints.best
            for step in best.all_steps():
                if step > member.progress.best_epoch:
                    best.delete(step)

    # ---------------------------------------------------------------- epochs
    def train_epoch(self, state: TrainState, epoch: int) -> TrainState | None:
        """Train the rest of ``epoch``; ``None`` when ``max_steps`` leaves no step."""
        if self.remaining_steps(state) == 0:
            return None
        if self.pipeline == "device":
            return self._device_epoch(state, epoch)
        return self._host_epoch(state, self.members[0].progress, epoch)

    def _host_epoch(self, state: TrainState, progress: Progress, epoch: int) -> TrainState:
        """From ``progress.batch`` to the end of the epoch, one step per batch from the
        grain pipeline, with mid-epoch checkpoints every ``checkpoint_every_steps``."""
        config, steps = self.config, self.steps_per_epoch
        processes = jax.process_count()  # each process reads its rows of every batch
        ds = self.dataset.train_epoch(
            batch_size=config.batch_size, epoch=epoch, seed=config.seed, augment=config.augment,
            shard=(jax.process_index(), processes) if processes > 1 else None)
        first = progress.batch
        it = data.epoch_iterator(ds, progress.iterator if first else None)
        if not first:  # a fresh epoch (a resumed one keeps its running sums)
            progress.start_epoch()
        sharding = batch_sharding(self.mesh)
        step = int(state.step)
        start = epoch_start = time.perf_counter()
        bar = _ProgressBar(config, epoch, steps, first)
        for batch_index in range(first, steps):
            batch = global_batch(next(it), sharding)
            state, step_metrics = train_step(state, batch, temperature(self.settings,
                                                                       step / steps))
            step_metrics = jax.device_get(step_metrics)
            loss = float(step_metrics["loss"])
            if not (math.isfinite(loss) and step_metrics["finite"]):
                raise self._non_finite(loss, epoch, step + 1)
            step += 1
            progress.batch = batch_index + 1
            progress.loss_sum += loss
            progress.accuracy_sum += float(step_metrics["accuracy"])
            progress.seen += 1
            bar.update(loss, (batch_index + 1 - first) * config.batch_size / max(
                time.perf_counter() - epoch_start, 1e-9))
            stop = bool(config.max_steps) and step >= config.max_steps
            every = config.checkpoint_every_steps
            # (the end of an epoch, or a stop, saves its own checkpoint at this step)
            if every and step % every == 0 and batch_index + 1 < steps and not stop:
                progress.train_seconds += time.perf_counter() - start
                start = time.perf_counter()
                progress.epoch, progress.iterator = epoch, it.get_state()
                self.save_latest(state)
            if stop:  # an exact position: the rest of the epoch is trained on resuming
                progress.iterator = it.get_state()
                break
        bar.close()
        progress.train_seconds += time.perf_counter() - start
        return state

    def remaining_steps(self, state: TrainState) -> int | None:
        """Steps ``max_steps`` still allows (``None``: no limit)."""
        if not self.config.max_steps:
            return None
        return max(self.config.max_steps - self.step(state), 0)

    def _device_epoch(self, state: TrainState, epoch: int) -> TrainState | None:
        """From ``progress.batch`` (a run stopped mid-epoch) to the end of the epoch, or
        to ``max_steps``, as one program or one per step."""
        config, steps = self.config, self.steps_per_epoch
        first = self.members[0].progress.batch
        length = steps - first
        if config.max_steps:
            length = min(length, self.remaining_steps(state))
        if length < 1:
            return None
        first_step = self.step(state)
        images, labels = self.on_device["train"]
        seeds = jnp.asarray(self.seeds, jnp.int32) if self.stacked else config.seed
        start = time.perf_counter()
        state, step_metrics = train_epoch_on_device(
            state, images, labels, self.dataset.mean, self.dataset.std, seeds, epoch,
            settings=self.settings, steps_per_epoch=steps, length=length, start=first,
            batch_sharding=batch_sharding(self.mesh))
        step_metrics = jax.device_get(step_metrics)
        seconds = time.perf_counter() - start
        for i, member in enumerate(self.members):
            one = {k: v[i] for k, v in step_metrics.items()} if self.stacked else step_metrics
            self._record_steps(member.progress, one, epoch, first_step, seconds)
            member.progress.batch = first + length
        return state

    def _record_steps(self, progress: Progress, step_metrics: dict, epoch: int,
                      first_step: int, seconds: float) -> None:
        """Add steps trained as one program (per-step metrics on the host) to the running
        sums of ``progress`` (a fresh epoch starts them at zero); a non-finite step stops
        the run (:class:`TrainingError`)."""
        loss = step_metrics["loss"]
        bad = np.flatnonzero(~(np.isfinite(loss) & (step_metrics["finite"] > 0)))
        if bad.size:
            raise self._non_finite(float(loss[bad[0]]), epoch, first_step + int(bad[0]) + 1)
        if progress.batch == 0:
            progress.start_epoch()
        progress.loss_sum += float(np.sum(loss, dtype=np.float64))
        progress.accuracy_sum += float(np.sum(step_metrics["accuracy"], dtype=np.float64))
        progress.seen += len(loss)
        progress.train_seconds += seconds

    def _non_finite(self, loss: float, epoch: int, step: int) -> TrainingError:
        saved = self.checkpoints.latest.latest_step() if self.checkpoints else None
        kept = (f"the last good checkpoint (step {saved}) is kept in "
                f"{self.workdir.checkpoint_dir('latest')}" if saved is not None
                else "no checkpoint had been saved yet")
        return TrainingError(f"non-finite training loss or parameters (loss {loss:.4g}) at "
                             f"epoch {epoch + 1}, step {step}: stopping; {kept} (try a lower "
                             f"learning_rate)")

    # ---------------------------------------------------------------- scoring
    def validation_probs(self, state: TrainState) -> list[np.ndarray]:
        """Class probabilities of the validation split, one array per member."""
        if not self.stacked:
            images = (self.on_device["val"] if self.pipeline == "device" else self.val)[0]
            return [self.predict(state, images, self.tau(state))]
        taus = jnp.full((len(self.seeds),), self.tau(state))
        return list(np.asarray(predict_on_device(
            state, self.on_device["val"][0], self.dataset.mean, self.dataset.std, taus,
            batch_size=self.config.eval_batch_size, batch_sharding=batch_sharding(self.mesh))))

    def predict(self, state: TrainState, images, tau) -> np.ndarray:
        """Class probabilities of uint8 images ``[N, H, W, C]`` by one (unstacked) state."""
        return predict(state, images, self.dataset.mean, self.dataset.std, tau,
                       batch_size=self.config.eval_batch_size, mesh=self.mesh)
