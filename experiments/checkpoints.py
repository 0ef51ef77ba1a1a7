"""Checkpoints of a training work directory (orbax): save, restore, restore for inference.

Two managers per work directory, one checkpoint kept in each:

* ``<workdir>/checkpoints/latest``: written at the end of every epoch (and every
  ``checkpoint_every_steps`` steps); resuming starts from it.
* ``<workdir>/checkpoints/best``: written when the validation score improves; the test
  split is scored with the newest. The two newest are kept: a run stopped mid-epoch
  (``max_steps``) validates where it stopped, and its resumption returns to the best of
  the finished epochs.

Each checkpoint holds three items, so that inference reads only what it needs:

* ``model``: ``{"params", "model_state"}`` (parameters and batch statistics);
* ``train``: ``{"step", "rngs", "opt_state"}`` (what resuming training needs besides);
* ``meta``: JSON (the trainer's progress record, or the best epoch's metrics).

PRNG keys are stored as their raw key data and wrapped again on restore.

Kill safety: orbax writes each checkpoint into a temporary folder and renames it when
complete; temporary folders left by a killed process are removed when the managers are
opened, and a step that already exists (a ``best`` checkpoint saved just before a kill,
then saved again by the resumed run) is replaced, not refused. A checkpoint that cannot
be read raises :class:`CheckpointError`, one line naming the folder. So does one whose
arrays do not match the SHA-256 digests saved with them in ``meta`` (damaged bytes in a
data file that would otherwise load as wrong numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpoints", "CheckpointError", "ITEMS"]

ITEMS = ("model", "train")
"""The array items of a checkpoint (besides the JSON ``meta``)."""


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (damaged or of another layout)."""


_DIGESTS = "_sha256"  # meta key: item name -> digest of its arrays


def _digest(tree) -> str | None:
    """SHA-256 over the dtype, shape and bytes of every leaf (``None``: a leaf is split
    over processes; a replicated one is read from this process's copy)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                return None
            leaf = leaf.addressable_data(0)
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _keys_to_data(tree):
    return jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        else x, tree)


def _data_to_keys(tree, like):
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
        if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key) else x, tree, like)


@dataclasses.dataclass
class Checkpoints:
    """The ``latest`` and ``best`` checkpoints of one work directory."""

    workdir: pathlib.Path
    latest: ocp.CheckpointManager = dataclasses.field(init=False)
    best: ocp.CheckpointManager = dataclasses.field(init=False)

    def __post_init__(self):
        self.workdir = pathlib.Path(self.workdir).absolute()  # orbax needs absolute paths
        opts = dict(create=True, enable_async_checkpointing=False,
                    cleanup_tmp_directories=True)
        root = self.workdir / "checkpoints"
        self.latest = ocp.CheckpointManager(
            root / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
        # two: a run stopped mid-epoch saves the evaluation of where it stopped as its
        # best and keeps the best of its finished epochs, which a resumed run goes back to
        self.best = ocp.CheckpointManager(
            root / "best", options=ocp.CheckpointManagerOptions(max_to_keep=2, **opts))

    @staticmethod
    def save(manager: ocp.CheckpointManager, step: int, items: dict[str, Any],
             meta: dict) -> None:
        """Save ``items`` (pytrees named in :data:`ITEMS`) and ``meta`` as checkpoint ``step``."""
        unknown = set(items) - set(ITEMS)
        if unknown:
            raise ValueError(f"items: expected names among {ITEMS}, got {sorted(unknown)}")
        trees = {name: _keys_to_data(tree) for name, tree in items.items()}
        digests = {name: _digest(tree) for name, tree in trees.items()}
        meta = {**meta, _DIGESTS: {k: v for k, v in digests.items() if v is not None}}
        args = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        if step in manager.all_steps():  # saved before a kill, and again after the resume
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args),
                     force=True)
        manager.wait_until_finished()

    @staticmethod
    def restore(manager: ocp.CheckpointManager, like: dict[str, Any],
                step: int | None = None) -> tuple[dict[str, Any], dict]:
        """Restore the items named in ``like`` (structures to restore into) and the meta.

        ``step`` defaults to the newest. Only the named items are read: ``{"model": ...}``
        restores a model for inference without the optimizer state.
        """
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        args = {name: ocp.args.StandardRestore(_keys_to_data(tree))
                for name, tree in like.items()}
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(), **args))
        except Exception as err:  # orbax raises many kinds for a damaged folder
            message = str(err).splitlines()[0][:300] if str(err) else ""
            raise CheckpointError(
                f"{manager.directory / str(step)}: the checkpoint cannot be restored "
                f"({type(err).__name__}: {message}); delete that folder to start again from "
                f"the previous checkpoint, or the work directory to start afresh") from None
        if not isinstance(restored["meta"], dict):
            raise CheckpointError(f"{manager.directory / str(step)}: the checkpoint has no "
                                  f"metadata; delete that folder")
        meta = dict(restored["meta"])
        digests = meta.pop(_DIGESTS, {})
        for name in like:
            if name in digests and _digest(restored[name]) not in (None, digests[name]):
                raise CheckpointError(
                    f"{manager.directory / str(step)}: the arrays of item {name!r} do not match "
                    f"the digest saved with them (damaged data files); delete that folder to "
                    f"start again from the previous checkpoint, or the work directory to start "
                    f"afresh")
        items = {name: _data_to_keys(restored[name], tree) for name, tree in like.items()}
        return items, meta
