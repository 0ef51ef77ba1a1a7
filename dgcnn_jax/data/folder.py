"""One builder for folders of labelled images: ``ROOT/<class>/<file>`` or
``ROOT/<group>/<class>/<file>`` -> an archive in the MedMNIST layout.

:func:`build` reads every accepted file once, decodes it with Pillow (any format Pillow
opens), applies the :class:`Recipe` (centre crop, resize, a required size), resolves
byte-identical duplicates, splits and writes ``<name>.npz`` with keys, per split,
``{split}_images`` uint8 ``[N, H, W, C]``, ``{split}_labels`` uint8 ``[N, 1]``,
``{split}_<group_key>`` (when there are groups: int32 ids where every id is a number,
else strings) and ``{split}_files`` (the path of each image relative to the root), then
``classes``. Beside it, ``<name>.report.json`` says what was kept and what was dropped
and why, with the archive's MD5 (:func:`dgcnn_jax.data.info` reads it for datasets
that are not built in).

The recipe, step by step:

1. Classes: the class folder names in sorted order (``class_names`` gives them display
   names). Groups (``layout="group/class"``): the group folders, numeric names in
   numeric order; or ``group_pattern``, a regular expression searched in the relative
   path whose first capture group is the group key.
2. A file is accepted by its suffix (``extensions``, case-insensitive; empty: every
   file); accepted files must start with ``signature`` (if given) and match
   ``name_pattern`` (if given; its named groups ``class`` and ``group`` must equal the
   file's folders).
3. Byte-identical files (SHA-256): the first copy (by group, class, name) is kept when
   every copy has the same label; every copy is dropped when the labels differ.
4. Each file is decoded as ``mode`` (RGB or L); images of another size than
   ``require_size`` are dropped; then the centre ``crop`` (offset ``(size - crop) //
   2``; smaller images are dropped) and the resize to ``size`` with Pillow's BOX
   (area) filter. Images that do not decode are dropped. The kept images must all have
   one size.
5. Split with ``numpy.random.default_rng(seed)``: with groups, by group, never by
   image: a permutation of the sorted group ids, the first ``round(f_train n)`` groups
   train, the next ``round(f_val n)`` validation, the rest test; without groups,
   stratified: each class permuted in label order and split ``round(f_train n_c)`` /
   ``round(f_val n_c)`` / rest. Within a split, rows are ordered by group, class, name.
6. ``numpy.savez_compressed`` to a temporary file in the output folder, then renamed
   into place: an interrupted build leaves no partial archive.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Callable

import numpy as np

__all__ = ["Recipe", "BuildReport", "build", "read_report", "shape_image", "IMAGE_EXTENSIONS",
           "PNG_SIGNATURE", "LAYOUTS", "SPLITS", "REASONS", "NOT_IMAGE", "BAD_SIGNATURE",
           "BAD_NAME", "NAME_DISAGREES", "NO_GROUP", "WRONG_SIZE", "TOO_SMALL", "CONFLICT",
           "COPY"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYOUTS = ("class", "group/class")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How :func:`build` turns a folder into an archive (see the module docstring)."""

    name: str
    # "class": ROOT/<class>/<file>; "group/class": ROOT/<group>/<class>/<file>
    layout: str = "class"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS  # accepted suffixes; (): every file
    signature: bytes = b""  # accepted files must start with these bytes
    name_pattern: str | None = None  # file names must match (fullmatch)
    group_pattern: str | None = None  # group key: first capture group in the relative path
    mode: str = "RGB"  # "RGB" (3 channels) or "L" (1)
    require_size: tuple[int, int] | None = None  # keep only images of this (height, width)
    crop: int | None = None  # centre crop to crop x crop
    size: int | None = None  # then resize to size x size (BOX filter)
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test
    seed: int = 0
    class_names: tuple[str, ...] = ()  # display names by label (default: folder names)
    group_key: str = "groups"  # archive key {split}_<group_key>
    classes_first: bool = False  # "classes" as the archive's first key (pbc28.npz)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"name: expected letters, digits, '_', '.' or '-', got "
                             f"{self.name!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got "
                             f"{self.layout!r}")
        if self.mode not in ("RGB", "L"):
            raise ValueError(f"mode: expected 'RGB' or 'L', got {self.mode!r}")
        if len(self.fractions) != 3 or min(self.fractions) < 0 or not np.isclose(
                sum(self.fractions), 1.0) or self.fractions[0] == 0:
            raise ValueError(f"fractions: expected three fractions (train, val, test) >= 0 "
                             f"that sum to 1 with train > 0, got {self.fractions}")
        for field in ("crop", "size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{field}: expected a positive int or None, got {value!r}")
        for field in ("name_pattern", "group_pattern"):
            pattern = getattr(self, field)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{field}: not a regular expression ({err}): "
                                     f"{pattern!r}") from None
        if self.group_pattern is not None and re.compile(self.group_pattern).groups < 1:
            raise ValueError(f"group_pattern: needs a capture group (the group key), got "
                             f"{self.group_pattern!r}")

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What :func:`build` kept and dropped; ``dropped`` maps a reason to the relative
    paths it applies to, ``skipped`` lists files not accepted by suffix."""

    path: pathlib.Path  # the archive written
    report_path: pathlib.Path
    md5: str
    classes: tuple[str, ...]
    kept: int
    split_sizes: tuple[int, int, int]
    split_groups: tuple[int, int, int]  # groups per split (0 without groups)
    image_shape: tuple[int, int, int]
    dropped: dict[str, tuple[str, ...]]
    skipped: tuple[str, ...]

    def count(self, reason: str) -> int:
        return len(self.dropped.get(reason, ()))


# reasons, as the report writes them
NOT_IMAGE = "does not decode as an image"
BAD_SIGNATURE = "does not start with the expected signature"
BAD_NAME = "name does not match name_pattern"
NAME_DISAGREES = "name disagrees with its folders"
NO_GROUP = "no group key (group_pattern does not match)"
WRONG_SIZE = "not the required size"
TOO_SMALL = "smaller than the crop"
CONFLICT = "byte-identical copies with different labels (every copy dropped)"
COPY = "byte-identical copy of a kept file (same label)"
REASONS = (NOT_IMAGE, BAD_SIGNATURE, BAD_NAME, NAME_DISAGREES, NO_GROUP, WRONG_SIZE,
           TOO_SMALL, CONFLICT, COPY)
"""Why a file is dropped, as :class:`BuildReport` and the written report say it."""


def _natural(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _folders(path: pathlib.Path) -> list[pathlib.Path]:
    try:
        found = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as err:
        raise OSError(f"{path}: cannot list ({err.strerror or err})") from err
    return sorted(found, key=lambda p: _natural(p.name))


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise OSError(f"{folder}: cannot list ({err.strerror or err})") from err
    files = []
    for path in entries:
        try:
            if path.is_dir():
                continue
            path.resolve(strict=True)  # a broken link or a link loop raises here
        except (OSError, RuntimeError) as err:
            raise OSError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err}); "
                          f"a broken symbolic link or a link loop?") from err
        files.append(path)
    return files


def _listing(root: pathlib.Path, recipe: Recipe):
    """``(classes, [(group or None, class name, relative path, path)])`` in recipe order."""
    if not root.is_dir():
        raise FileNotFoundError(f"root: {root} is not a folder")
    example = "<group>/<class>/<file>" if recipe.layout == "group/class" else "<class>/<file>"
    if recipe.layout == "class":
        tops = [(None, root)]
    else:
        tops = [(g.name, g) for g in _folders(root)]
    entries = []
    classes = set()
    for group, top in tops:
        for folder in sorted(_folders(top), key=lambda p: p.name):
            classes.add(folder.name)
            for path in _files(folder):
                rel = path.relative_to(root).as_posix()
                entries.append((group, folder.name, rel, path))
    if not classes:
        raise FileNotFoundError(f"root: {root} has no class folders (expected the layout "
                                f"{example})")
    return sorted(classes), entries


def _read(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise OSError(f"{path}: cannot be read ({err.strerror or err})") from err


def _decode(data: bytes, recipe: Recipe) -> np.ndarray | str:
    """The recipe's image of a file's bytes, or the reason it is dropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert(recipe.mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError):
        return NOT_IMAGE
    return shape_image(im, recipe.require_size, recipe.crop, recipe.size)


def shape_image(im, require_size=None, crop=None, size=None) -> np.ndarray | str:
    """A decoded PIL image through a recipe's geometry (required ``(height, width)``,
    centre ``crop``, BOX resize to ``size``): uint8 ``[H, W, C]``, or the reason
    (:data:`WRONG_SIZE`, :data:`TOO_SMALL`) it does not fit. The builder and
    ``experiments.predict`` share it, so a new file is made as the archive's were."""
    from PIL import Image

    w, h = im.size
    if require_size is not None and (h, w) != tuple(require_size):
        return WRONG_SIZE
    if crop is not None:
        if min(w, h) < crop:
            return TOO_SMALL
        left, top = (w - crop) // 2, (h - crop) // 2
        im = im.crop((left, top, left + crop, top + crop))
    if size is not None:
        im = im.resize((size, size), Image.BOX)
    image = np.asarray(im, np.uint8)
    return image if image.ndim == 3 else image[..., None]


def _check_name(recipe: Recipe, group, cls: str, rel: str) -> str | None:
    if recipe.name_pattern is None:
        return None
    match = re.fullmatch(recipe.name_pattern, rel.rsplit("/", 1)[-1])
    if match is None:
        return BAD_NAME
    parts = match.groupdict()
    if parts.get("class") is not None and parts["class"] != cls:
        return NAME_DISAGREES
    if parts.get("group") is not None and group is not None and parts["group"] != group:
        return NAME_DISAGREES
    return None


def _split(recipe: Recipe, labels: np.ndarray, groups: list | None) -> dict[str, np.ndarray]:
    """Row indices of each split (rows are in group, class, name order already)."""
    rng = np.random.default_rng(recipe.seed)
    f_train, f_val, _ = recipe.fractions
    if groups is not None:
        ids = sorted(set(groups), key=_natural)
        perm = [ids[i] for i in rng.permutation(len(ids))]
        n_train, n_val = int(round(f_train * len(ids))), int(round(f_val * len(ids)))
        which = {g: 0 for g in perm[:n_train]}
        which.update({g: 1 for g in perm[n_train:n_train + n_val]})
        which.update({g: 2 for g in perm[n_train + n_val:]})
        part = np.array([which[g] for g in groups])
        return {s: np.flatnonzero(part == i) for i, s in enumerate(SPLITS)}
    parts = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        perm = members[rng.permutation(len(members))]
        n_train = int(round(f_train * len(members)))
        n_val = int(round(f_val * len(members)))
        parts["train"].append(perm[:n_train])
        parts["val"].append(perm[n_train:n_train + n_val])
        parts["test"].append(perm[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def _write_atomic(target: pathlib.Path, write: Callable) -> None:
    """``write(file)`` into a temporary file beside ``target``, then rename it into place
    (mode as the umask gives any other output); stale temporary files are removed."""
    for stale in target.parent.glob(f".{target.name}.*.part"):  # left by a killed build
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, target)  # atomic within one folder
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def _md5(path: pathlib.Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(root: str | os.PathLike, out_dir: str | os.PathLike, recipe: Recipe, *,
          progress: Callable[[int, int], None] | None = None) -> BuildReport:
    """Build ``<recipe.name>.npz`` and its report in ``out_dir`` from the folder ``root``.

    ``progress(done, total)`` is called as files are read. Errors name the path: a root
    without class folders, a file that cannot be read (a broken link, a link loop), no
    image kept, kept images of different sizes.
    """
    root, out_dir = pathlib.Path(root), pathlib.Path(out_dir)
    folder_names, entries = _listing(root, recipe)
    if recipe.class_names and len(recipe.class_names) != len(folder_names):
        raise ValueError(f"class_names: {len(recipe.class_names)} names for the "
                         f"{len(folder_names)} class folders {', '.join(folder_names)}")
    label_of = {name: i for i, name in enumerate(folder_names)}
    dropped = collections.defaultdict(list)
    skipped, rows = [], []  # rows: (group, label, rel, digest, image)
    suffixes = tuple(s.lower() for s in recipe.extensions)
    pattern = re.compile(recipe.group_pattern) if recipe.group_pattern else None
    for i, (group, cls, rel, path) in enumerate(entries):
        if progress is not None:
            progress(i, len(entries))
        if suffixes and not rel.lower().endswith(suffixes):
            skipped.append(rel)
            continue
        if pattern is not None:
            match = pattern.search(rel)
            if match is None:
                dropped[NO_GROUP].append(rel)
                continue
            group = match.group(1)
        reason = _check_name(recipe, group, cls, rel)
        data = _read(path)
        if reason is None and recipe.signature and not data.startswith(recipe.signature):
            reason = BAD_SIGNATURE
        if reason is not None:
            dropped[reason].append(rel)
            continue
        rows.append((group, label_of[cls], rel, hashlib.sha256(data).hexdigest(),
                     _decode(data, recipe)))
    if progress is not None:
        progress(len(entries), len(entries))
    if pattern is not None:  # group, class, name order (the folders gave class, name)
        rows.sort(key=lambda r: (_natural(r[0]), r[1], r[2].rsplit("/", 1)[-1]))
    copies = collections.defaultdict(list)
    for row in rows:
        copies[row[3]].append(row)
    kept = []
    for row in rows:
        same = copies[row[3]]
        if len({r[1] for r in same}) > 1:
            dropped[CONFLICT].append(row[2])
        elif same[0] is not row:
            dropped[COPY].append(row[2])
        elif isinstance(row[4], str):
            dropped[row[4]].append(row[2])
        else:
            kept.append(row)
    if not kept:
        raise ValueError(f"root: no image of {root} was kept ({len(entries)} files; "
                         f"{len(skipped)} skipped by suffix, "
                         f"{sum(map(len, dropped.values()))} dropped)")
    common = collections.Counter(r[4].shape for r in kept).most_common(1)[0][0]
    for row in kept:
        if row[4].shape != common:
            raise ValueError(f"{root / row[2]}: image of shape {row[4].shape}, most others "
                             f"{common}: give a crop and size, or a required size")
    has_groups = recipe.layout == "group/class" or pattern is not None
    labels = np.array([r[1] for r in kept], np.int64)
    groups = [r[0] for r in kept] if has_groups else None
    index = _split(recipe, labels, groups)
    images = np.stack([r[4] for r in kept])
    files = np.asarray([r[2] for r in kept])
    group_array = None
    if groups is not None:
        group_array = (np.asarray([int(g) for g in groups], np.int32)
                       if all(g.isdigit() for g in groups) else np.asarray(groups))
    classes = np.asarray(recipe.class_names or folder_names)
    arrays = {"classes": classes} if recipe.classes_first else {}
    for split in SPLITS:
        rows_of = index[split]
        arrays[f"{split}_images"] = images[rows_of]
        arrays[f"{split}_labels"] = labels[rows_of].astype(np.uint8)[:, None]
        if group_array is not None:
            arrays[f"{split}_{recipe.group_key}"] = group_array[rows_of]
        arrays[f"{split}_files"] = files[rows_of]
    arrays["classes"] = classes  # (moves nothing when it is first already)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{recipe.name}.npz"
    _write_atomic(target, lambda f: np.savez_compressed(f, **arrays))
    md5 = _md5(target)
    sizes = tuple(len(index[s]) for s in SPLITS)
    split_groups = tuple(len(set(group_array[index[s]].tolist())) if group_array is not None
                         else 0 for s in SPLITS)
    report = BuildReport(target, out_dir / f"{recipe.name}.report.json", md5,
                         tuple(map(str, classes)), len(kept), sizes, split_groups,
                         tuple(images.shape[1:]), {k: tuple(v) for k, v in dropped.items()},
                         tuple(skipped))
    record = {"name": recipe.name, "archive": target.name, "md5": md5, "root": str(root),
              "recipe": _recipe_record(recipe), "classes": list(report.classes),
              "image_shape": list(report.image_shape), "kept": report.kept,
              "split_sizes": dict(zip(SPLITS, sizes)),
              "split_groups": dict(zip(SPLITS, split_groups)) if has_groups else None,
              "per_class": {s: np.bincount(labels[index[s]], minlength=len(classes)).tolist()
                            for s in SPLITS},
              "dropped": {k: list(v) for k, v in report.dropped.items()},
              "skipped": list(skipped)}
    text = json.dumps(record, indent=1) + "\n"
    _write_atomic(report.report_path, lambda f: f.write(text.encode()))
    return report


def _recipe_record(recipe: Recipe) -> dict:
    fields = dataclasses.asdict(recipe)
    fields["signature"] = recipe.signature.hex()
    return fields


def read_report(path: str | os.PathLike) -> dict:
    """The report of a built archive (``<name>.report.json``); ``ValueError`` naming the
    file if it is not one."""
    path = pathlib.Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise OSError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a build report (invalid JSON: {err})") from None
    need = {"name", "md5", "classes", "image_shape", "split_sizes"}
    if not isinstance(record, dict) or not need <= record.keys():
        raise ValueError(f"{path}: not a build report (expected the keys "
                         f"{', '.join(sorted(need))})")
    return record
