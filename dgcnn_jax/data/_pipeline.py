"""Input pipelines on grain: seeded shuffling, batching, normalisation, D4 augmentation.

One epoch is one ``grain.MapDataset``: its order depends only on ``(seed, epoch)``,
so a run resumed at epoch ``e`` and batch ``n`` sees exactly the batches it would
have seen. Iterators from :func:`epoch_iterator` expose grain's ``get_state()`` /
``set_state()`` for saving the position inside an epoch.

Batches are dicts ``{"image": float32 [B, H, W, C], "label": int32 [B]}`` with images
scaled to ``[0, 1]`` and then normalised by ``(x - mean) / std``.
"""

from __future__ import annotations

import grain
import numpy as np

from ..groups import P4M

__all__ = ["normalization_stats", "epoch_dataset", "source_dataset", "epoch_iterator",
           "random_d4", "num_batches", "stratified_subset"]


def normalization_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images ``[N, H, W, C]`` scaled to ``[0, 1]``."""
    x = np.asarray(images, np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified ``fraction`` of ``labels`` (``int [N]``).

    Each class keeps ``max(1, round(fraction * count))`` examples: the first ones of a
    permutation seeded by ``(seed, class)``. So the subset depends only on
    ``(labels, fraction, seed)`` (the same for every model), and for one seed a smaller
    fraction is contained in a larger one. ``fraction=1`` returns every index.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: expected int [N] (single-label), got shape {labels.shape}")
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.random.default_rng([int(seed), int(c)]).permutation(len(members))
        keep.append(members[order[:max(1, round(fraction * len(members)))]])
    return np.sort(np.concatenate(keep))


def random_d4(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a uniformly random element of p4m (D4) to one ``[H, W, C]`` image."""
    return np.ascontiguousarray(P4M.transform_image(image, int(rng.integers(P4M.order)),
                                                    axes=(0, 1)))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int, mean, std,
                  epoch: int = 0, seed: int = 0, shuffle: bool = True,
                  drop_remainder: bool = True, augment: bool = False,
                  shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """The batches of one epoch of in-memory arrays as a ``grain.MapDataset``.

    Args:
      images: uint8 ``[N, H, W, C]``; labels: ``[N]`` (or ``[N, L]``).
      batch_size: examples per batch; ``drop_remainder`` drops a last partial batch
        (use it for training, not for evaluation).
      mean, std: per-channel normalisation (see :func:`normalization_stats`).
      epoch, seed: the shuffle order and augmentation depend on these only.
      augment: a random D4 transform per example (for non-equivariant baselines).
      shard: ``(index, count)``: only rows ``[index * b, (index + 1) * b)`` of every batch,
        ``b = batch_size / count`` (one process's part of a global batch: the same
        examples, order and augmentation as the whole batch has there). Needs
        ``drop_remainder``.
    """
    if images.ndim != 4:
        raise ValueError(f"images: expected [N, H, W, C], got shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"labels: expected {len(images)} labels, got {len(labels)}")
    source = grain.MapDataset.range(len(images)).map(
        lambda i: {"image": images[i], "label": labels[i]})
    return _batches(source, batch_size=batch_size, mean=mean, std=std, epoch=epoch, seed=seed,
                    shuffle=shuffle, drop_remainder=drop_remainder, augment=augment,
                    shard=shard)


def source_dataset(source, *, batch_size: int, mean, std, epoch: int = 0, seed: int = 0,
                   shuffle: bool = True, drop_remainder: bool = True,
                   augment: bool = False,
                   shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """Like :func:`epoch_dataset` for a random-access source of ``{"image", "label"}``
    records, e.g. ``tfds.data_source(...)`` (PatchCamelyon): with ``shard`` only this
    process's records are read."""
    return _batches(grain.MapDataset.source(source), batch_size=batch_size, mean=mean,
                    std=std, epoch=epoch, seed=seed, shuffle=shuffle,
                    drop_remainder=drop_remainder, augment=augment, shard=shard)


def _batches(ds: grain.MapDataset, *, batch_size, mean, std, epoch, seed, shuffle,
             drop_remainder, augment, shard=None) -> grain.MapDataset:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if shard is not None:
        index, count = shard
        if not 0 <= index < count or batch_size % count or not drop_remainder:
            raise ValueError(f"shard: expected (index, count) with 0 <= index < count, count "
                             f"dividing batch_size ({batch_size}) and drop_remainder, got "
                             f"{shard!r}")
    mean = np.asarray(mean, np.float32)
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
    offset = (-mean / np.asarray(std, np.float32)).astype(np.float32)
    epoch_seed = _epoch_seed(seed, epoch)
    if shuffle:
        ds = ds.shuffle(seed=epoch_seed)
    ds = ds.map(lambda ex: {"image": np.asarray(ex["image"]), "label": ex["label"]})
    if augment:
        ds = ds.seed(epoch_seed).random_map(
            lambda ex, rng: {"image": random_d4(ex["image"], rng), "label": ex["label"]})
    if shard is not None:  # this shard's rows of every batch, read by random access
        examples, local, whole = ds, batch_size // count, batch_size
        ds = grain.MapDataset.range(len(examples) // whole * local).map(
            lambda j: examples[j // local * whole + index * local + j % local])
        batch_size = local
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda b: {"image": b["image"].astype(np.float32) * scale + offset,
                             "label": np.asarray(b["label"], np.int32)})


def epoch_iterator(dataset: grain.MapDataset, state: dict | None = None):
    """An iterator over ``dataset``; ``state`` (from ``it.get_state()``) restores a position."""
    it = iter(dataset.to_iter_dataset())
    if state is not None:
        it.set_state(state)
    return it
