"""The run: set up, train the epochs, select on validation, test once.

:func:`train_and_evaluate` trains one run, or with ``config.seeds`` several seeds
together (one program per step or epoch, states stacked), each into ``<workdir>/seed<N>``
as if run alone. Both go through the same skeleton: lock and check the work directory,
open the data, create the states, resume, then per epoch train
(:class:`~experiments.training.epochs.Trainer`), score validation, keep the best
checkpoint and save the latest; at the end test each run's best checkpoint once
(:mod:`experiments.training.finish`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
from jax.sharding import NamedSharding, PartitionSpec

from dgcnn_jax import data
from experiments import datasets
from experiments.checkpoints import Checkpoints
from experiments.configs import Config, pipeline, validate

from .diagnostics import diagnostic_images
from .epochs import Member, Trainer
from .finish import end_epoch, finish, prefix_of
from .parallel import make_mesh
from .state import Progress, count_params, create_train_state, initial_copy, stack_states
from .workdir import Workdir, WorkdirError, seed_list

__all__ = ["train_and_evaluate", "open_data"]


def open_data(config: Config) -> tuple[datasets.Dataset, int, jax.sharding.Mesh]:
    """The dataset of ``config``, the steps of an epoch and the mesh."""
    dataset = datasets.open_dataset(config.dataset, config.data_dir,
                                    train_fraction=config.train_fraction,
                                    data_seed=config.data_seed,
                                    input_size=config.input_size)
    steps = data.num_batches(dataset.num_train, config.batch_size, drop_remainder=True)
    if steps < 1:
        raise ValueError(f"batch_size: {config.batch_size} exceeds the {dataset.num_train} "
                         f"training examples")
    return dataset, config.steps_per_epoch or steps, make_mesh(config)


def train_and_evaluate(config: Config, workdir: str | pathlib.Path) -> dict:
    """Train ``config.model`` on ``config.dataset``; resume if ``workdir`` has a checkpoint.

    Returns the final results (also written to ``workdir/results.json``). With
    ``config.seeds`` set, trains those seeds together, each into ``<workdir>/seed<N>``
    (what a single run with ``seed=N`` writes; the stacked state for resuming at epoch
    boundaries stays in ``<workdir>/checkpoints/latest``), and returns ``{seed: results}``.
    A different seed list may start in the same folder once every seed of the stored one
    has its results (their stacked state is then deleted).
    """
    validate(config)
    with Workdir(workdir).locked() as folder:
        if config.seeds:
            _refuse_other_seeds(folder, seed_list(config))
        return _run(config, folder)


def _refuse_other_seeds(folder: Workdir, seeds: list[int]) -> None:
    """An unfinished stacked run of other seeds (a seed without its results after all its
    epochs) is refused before any checkpoint manager (and its threads) exists; a finished
    one's spent stacked state is deleted."""
    stored = folder.stored_seeds()
    if stored is None or stored == seeds:
        return
    if not all(folder.seed(s).finished() for s in stored):
        listed = ",".join(map(str, stored))
        raise WorkdirError(f"{folder.path} holds an unfinished run of seeds {listed}: "
                           f"resume it with --set seeds={listed}, or use another --workdir")
    latest = Checkpoints(folder.path).latest
    for step in latest.all_steps():
        latest.delete(step)


def _members(config: Config, folder: Workdir, checkpoints: Checkpoints, kind: str
             ) -> list[Member]:
    if not config.seeds:
        return [Member(config, folder, checkpoints, Progress(pipeline=kind))]
    members = []
    for seed in seed_list(config):
        single = dataclasses.replace(config, seed=seed, seeds="")
        sub = folder.seed(seed)
        sub.path.mkdir(exist_ok=True)
        sub.write_config(single)
        members.append(Member(single, sub, Checkpoints(sub.path), Progress(pipeline=kind)))
    return members


def _validate(trainer: Trainer, state, epoch: int, probe, *, partial: bool) -> None:
    """Score every member on validation after ``epoch`` (``partial``: where a stopped run
    stands inside it)."""
    for i, (member, probs) in enumerate(zip(trainer.members, trainer.validation_probs(state))):
        end_epoch(trainer, member, trainer.member_state(state, i), epoch, probs, probe,
                  prefix_of(trainer, member), partial=partial)


def _run(config: Config, folder: Workdir) -> dict:
    folder.check_config(config, folder.has_checkpoint("latest"))
    dataset, steps, mesh = open_data(config)  # before any checkpoint manager (its threads)
    checkpoints = Checkpoints(folder.path)
    kind = "device" if config.seeds else pipeline(config)
    members = _members(config, folder, checkpoints, kind)
    states = [create_train_state(m.config, dataset.num_classes, dataset.channels, steps, mesh)
              for m in members]
    for member, state in zip(members, states):
        member.initial = initial_copy(state)
    num_params = count_params(states[0])
    if config.seeds:
        state = jax.device_put(stack_states(states), NamedSharding(mesh, PartitionSpec()))
    else:
        state = states[0]
    del states
    folder.write_config(config)
    trainer = Trainer(config, folder, dataset, steps, mesh, checkpoints, kind,
                      seed_list(config) if config.seeds else None, members)
    state = trainer.resume(state)
    for member in members:
        member.progress.pipeline = kind
        member.workdir.write_history(member.progress.history)
    probe = diagnostic_images(trainer.val[0], dataset.mean, dataset.std)
    if members[0].progress.epoch < config.epochs and trainer.remaining_steps(state) != 0:
        trainer.drop_stopped_evaluations()  # training goes on from where it stopped

    for epoch in range(members[0].progress.epoch, config.epochs):
        trained = trainer.train_epoch(state, epoch)
        if trained is None:  # max_steps reached before this epoch
            break
        state = trained
        complete = members[0].progress.batch >= steps
        if not complete:  # stopped mid-epoch: the exact position, then where it stands
            for member in members:
                member.progress.epoch = epoch
            trainer.save_latest(state)
        _validate(trainer, state, epoch, probe, partial=not complete)
        if complete:
            for member in members:
                member.progress.epoch, member.progress.batch = epoch + 1, 0
                member.progress.iterator = None
            trainer.save_latest(state)
        if not complete or (config.max_steps and trainer.step(state) >= config.max_steps):
            break
    results = {m.config.seed: finish(trainer, m, trainer.member_state(state, i), num_params)
               for i, m in enumerate(members)}
    return results if config.seeds else results[config.seed]
