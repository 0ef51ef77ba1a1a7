"""Class probabilities of a trained run for new image files.

    python -m experiments.predict --workdir RUN IMAGE_OR_FOLDER... [--out preds.csv] [--tta]

Reads every image file named (folders: their image files, recursively, in sorted
order; any format Pillow opens) and applies the run's own preprocessing, recorded in its
results.json: the dataset's image recipe (colour mode, required size, centre crop,
resize), the view the model saw (``input_size``) and the training split's
normalisation, so the data it was trained on is not needed. Prints one row per file
(and writes them to ``--out`` as CSV): the probability of each class and the predicted
class. A file that cannot be used (unreadable, not an image, the wrong size or number
of channels) is skipped with its reason, never stopping the others. ``--tta`` averages
the probabilities over the 8 rotations and mirrors of each image.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import sys

import numpy as np

from dgcnn_jax import P4M, data
from experiments import cli

__all__ = ["prepare_image", "image_files", "predict", "main"]

CHANNELS = {"RGB": 3, "L": 1}
# Pillow modes whose bands are the same kind as the run's (alpha is dropped)
COMPATIBLE = {"RGB": ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr"),
              "L": ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F")}


def prepare_image(raw: bytes, recipe: dict, input_size: int) -> np.ndarray | str:
    """The uint8 ``[input_size, input_size, C]`` image a run's model sees for a file's
    bytes, or the reason the file cannot be used."""
    from PIL import Image, UnidentifiedImageError

    mode = recipe["mode"]
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.mode not in COMPATIBLE[mode]:
                bands = len(im.getbands())
                return (f"has {bands} channel{'s' * (bands != 1)} ({im.mode}); this run's "
                        f"model takes {CHANNELS[mode]} ({mode})")
            im = im.convert(mode)
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"a damaged or unsupported image ({err})"
    need, crop = recipe.get("require_size"), recipe.get("crop")
    image = data.folder.shape_image(im, need, crop, recipe.get("size"))
    if isinstance(image, str):  # the builder's reason, said for this file
        w, h = im.size
        if image == data.folder.WRONG_SIZE:
            return f"is {h}x{w} (height x width); this run's images are {need[0]}x{need[1]}"
        return f"is {h}x{w}, smaller than this run's centre crop of {crop}"
    if image.shape[0] != image.shape[1]:
        return f"is {image.shape[0]}x{image.shape[1]}; this run's images are square"
    if image.shape[0] == input_size:
        return image
    try:
        return data.center_view(image[None], input_size)[0]
    except ValueError as err:
        return str(err)


def image_files(paths: list[str]) -> list[pathlib.Path]:
    """The files named, and the image files (by suffix) under the folders named."""
    found = []
    for name in paths:
        path = pathlib.Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.suffix.lower() in data.folder.IMAGE_EXTENSIONS)
        else:
            found.append(path)  # read (or reported unreadable) below
    return found


def predict(workdir, paths: list[str], *, tta: bool = False,
            out: str | os.PathLike | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """``(rows, skipped)``: a row per usable file (``file``, ``p_<class>``..., ``predicted``)
    and ``(file, reason)`` for each file skipped."""
    from experiments import evaluate

    folder_results = _finished_results(workdir)
    files = image_files(paths)
    if not files:
        raise ValueError(f"paths: no image file in {', '.join(paths)}")
    recipe, size = folder_results["image_recipe"], folder_results["input_size"]
    classes = folder_results["classes"]
    images, used, skipped = [], [], []
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as err:
            skipped.append((str(path), f"cannot be read ({err.strerror or err})"))
            continue
        image = prepare_image(raw, recipe, size)
        if isinstance(image, str):
            skipped.append((str(path), image))
        else:
            images.append(image)
            used.append(str(path))
    rows = []
    if images:
        run = evaluate.load_run(workdir, with_data=False)
        batch = np.stack(images)
        if tta:  # the 8 copies as one split
            copies = np.concatenate([P4M.transform_image(batch, g) for g in range(P4M.order)])
            probs = np.mean(np.split(run.predict(copies), P4M.order), axis=0)
        else:
            probs = run.predict(batch)
        for name, p in zip(used, probs):
            row = {"file": name}
            row.update({f"p_{c}": float(v) for c, v in zip(classes, p)})
            row["predicted"] = classes[int(np.argmax(p))]
            rows.append(row)
    if out is not None and rows:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows, skipped


def _finished_results(workdir) -> dict:
    from experiments import training

    folder = training.Workdir(workdir)
    if not folder.config_file.is_file():
        raise FileNotFoundError(f"workdir: {folder.config_file} not found: is {folder.path} a "
                                f"training work directory?")
    if not folder.has_results() or not folder.finished():
        raise ValueError(f"workdir: {folder.path} has not finished training: run the training "
                         f"command again to finish it, then predict")
    results = folder.results()
    if "image_recipe" not in results:
        raise ValueError(f"workdir: {folder.results_file} does not record the run's "
                         f"preprocessing (written by an older version): train it again")
    return results


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--workdir", required=True, help="a finished training run")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", default=None, help="write the rows to this CSV file")
    p.add_argument("--tta", action="store_true", help="average over the 8 D4 copies")
    args = p.parse_args(argv)
    if args.out is not None:
        parent = pathlib.Path(args.out).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ValueError(f"out: cannot write {args.out} (its folder is missing or "
                             f"read-only)")
    rows, skipped = predict(args.workdir, args.paths, tta=args.tta, out=args.out)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if rows:
        columns = list(rows[0])
        writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row.values()])
    print(f"{len(rows)} file{'s' * (len(rows) != 1)} predicted, {len(skipped)} skipped"
          + (f"; wrote {args.out}" if args.out and rows else ""), file=sys.stderr)
    if not rows:
        raise ValueError("paths: no file could be used (reasons above)")
    return rows, skipped


if __name__ == "__main__":
    cli.run(main, "experiments.predict")
