"""Evaluate a training run's best checkpoint on a split, optionally under D4 transforms.

    python -m experiments.evaluate --workdir runs/default [--split test] [--d4] [--tta]
        [--out FILE]

``--d4`` reports the metrics on all 8 D4-transformed copies of the split (robustness:
an invariant model scores identically on every copy); ``--tta`` averages the class
probabilities over the 8 copies (test-time augmentation). Prints a summary and writes
``eval_{split}.json`` into the work directory (or ``--out``: for a read-only work directory;
a folder that cannot be written is reported before anything is computed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dgcnn_jax import P4M, data, metrics
from experiments import cli, datasets, training
from experiments.checkpoints import Checkpoints
from experiments.configs import Config, from_stored, validate

__all__ = ["LoadedRun", "load_run", "evaluate", "main"]


@dataclasses.dataclass
class LoadedRun:
    """A finished (or stopped) training run, loaded for inference from its best checkpoint."""

    workdir: pathlib.Path
    config: Config
    state: training.TrainState  # an inference state: no optimizer
    dataset: datasets.Dataset | None  # None: loaded without its data (see load_run)
    best: dict  # the best checkpoint's meta: epoch, validation metrics, tau
    mesh: jax.sharding.Mesh
    mean: np.ndarray  # the training split's normalisation
    std: np.ndarray

    @property
    def tau(self) -> float:
        """The temperature the best checkpoint was selected (and is scored) with."""
        return self.best["tau"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` of uint8 images, at :attr:`tau`."""
        return training.predict(self.state, images, self.mean, self.std, self.tau,
                                batch_size=self.config.eval_batch_size, mesh=self.mesh)


def load_run(workdir: str | pathlib.Path, data_dir: str | None = None, *,
             with_data: bool = True) -> LoadedRun:
    """Read a work directory's config, open its dataset and restore the best checkpoint's
    model (parameters and batch statistics; no optimizer state). ``with_data=False``:
    the normalisation and classes come from results.json (runs that recorded them), and
    the dataset is not opened."""
    folder = training.Workdir(workdir)
    workdir = folder.path
    if not folder.config_file.is_file():
        raise FileNotFoundError(f"{folder.config_file} not found: is {workdir} a training "
                                f"work directory?")
    fields = folder.config()
    if fields.get("seeds") and not folder.has_checkpoint("best"):
        seeds = fields["seeds"].split(",")
        raise FileNotFoundError(f"{workdir} holds seeds {fields['seeds']} trained together: "
                                f"use one of them, e.g. {folder.seed(int(seeds[0])).path}")
    if data_dir is not None:
        fields["data_dir"] = data_dir
    config = Config(**from_stored(fields))
    recorded = folder.results().get("normalization") if folder.has_results() else None
    checkpoints = Checkpoints(workdir)
    if checkpoints.best.latest_step() is None:
        raise FileNotFoundError(f"no best checkpoint in {workdir / 'checkpoints' / 'best'}")
    if with_data or recorded is None:
        validate(config)
        dataset = datasets.open_dataset(config.dataset, config.data_dir,
                                        train_fraction=config.train_fraction,
                                        data_seed=config.data_seed,
                                        input_size=config.input_size)
        mean, std = dataset.mean, dataset.std
        num_classes, channels = dataset.num_classes, dataset.channels
    else:
        dataset = None
        mean = np.asarray(recorded["mean"], np.float32)
        std = np.asarray(recorded["std"], np.float32)
        num_classes, channels = len(folder.results()["classes"]), len(mean)
    mesh = training.make_mesh(config)
    state = training.create_train_state(config, num_classes, channels, None, mesh)
    items, best = Checkpoints.restore(checkpoints.best, {"model": state.model_item()})
    state = jax.device_put(state.with_items(items["model"]),
                           NamedSharding(mesh, PartitionSpec()))
    if not folder.finished() and with_data:
        done = sum(1 for h in folder.history() if not h.get("partial"))
        print(f"warning: {workdir} has not finished training ({done} of {config.epochs} "
              f"epochs done): scoring its best checkpoint so far (epoch {best['epoch']})",
              file=sys.stderr)
    if "tau" not in best:  # checkpoints written before the meta recorded it
        best["tau"] = next(h["tau"] for h in folder.history() if h["epoch"] == best["epoch"])
    return LoadedRun(workdir, config, state, dataset, best, mesh, mean, std)


def evaluate(workdir, split: str = "test", *, d4: bool = False, tta: bool = False,
             data_dir: str | None = None, out: str | os.PathLike | None = None) -> dict:
    """Score the best checkpoint of ``workdir`` on ``split``; write the JSON to ``out``
    (default ``<workdir>/eval_{split}.json``)."""
    run = load_run(workdir, data_dir)
    out = pathlib.Path(workdir) / f"eval_{split}.json" if out is None else pathlib.Path(out)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):  # before any compute
        raise ValueError(f"out: cannot write {out} (its folder is missing or read-only); "
                         f"pass --out with a writable path")
    config, best_meta = run.config, run.best
    images, labels = run.dataset.split(split)
    probs_of = run.predict

    result = {"workdir": str(workdir), "model": config.model, "dataset": config.dataset,
              "split": split, "best_epoch": best_meta["epoch"],
              "metrics": None}
    probs = probs_of(images)
    result["metrics"] = metrics.classification_metrics(probs, labels)
    groups = run.dataset.groups(split)
    if groups is not None:  # IDC: patients
        result["metrics"]["auc_per_group"] = metrics.grouped_auc(probs, labels, groups)
    if d4 or tta:
        # element 0 is the identity: its copy is the split itself, already scored; the
        # other 7 copies go through the model as one split (full batches, one program)
        moved = np.concatenate([P4M.transform_image(images, g) for g in range(1, P4M.order)])
        copies = [probs] + np.split(probs_of(moved), P4M.order - 1)
        if d4:
            per = [metrics.classification_metrics(p, labels) for p in copies]
            aucs = np.array([m["auc"] for m in per])
            accs = np.array([m["accuracy"] for m in per])
            result["d4"] = {"elements": list(P4M.element_names), "per_element": per,
                            "auc_min": float(aucs.min()), "auc_max": float(aucs.max()),
                            "accuracy_min": float(accs.min()),
                            "accuracy_max": float(accs.max()),
                            "max_prob_difference": float(max(
                                np.abs(p - copies[0]).max() for p in copies))}
        if tta:
            result["tta"] = metrics.classification_metrics(np.mean(copies, axis=0), labels)
    m = result["metrics"]
    print(f"{config.model} on {config.dataset}/{split}: AUC {m['auc']:.4f}  accuracy "
          f"{m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  F1 "
          f"{m['f1']:.4f}  NLL {m['nll']:.4f}"
          + (f"  per-group AUC {m['auc_per_group']:.4f}" if "auc_per_group" in m else "")
          + f"  (best epoch {best_meta['epoch']})")
    if d4:
        r = result["d4"]
        print(f"  D4 copies: AUC {r['auc_min']:.4f} .. {r['auc_max']:.4f}, accuracy "
              f"{r['accuracy_min']:.4f} .. {r['accuracy_max']:.4f}, max probability "
              f"difference {r['max_prob_difference']:.2e}")
    if tta:
        print(f"  D4 test-time augmentation: AUC {result['tta']['auc']:.4f}  accuracy "
              f"{result['tta']['accuracy']:.4f}")
    try:
        out.write_text(json.dumps(result, indent=2, sort_keys=True))
    except OSError as err:  # printed above: the numbers are not lost
        raise ValueError(f"out: cannot write {out} ({err.strerror}); the metrics are printed "
                         f"above; pass --out with a writable path") from None
    print(f"wrote {out}")
    return result


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test", choices=data.medmnist.SPLITS)
    p.add_argument("--d4", action="store_true", help="metrics on all 8 D4 copies")
    p.add_argument("--tta", action="store_true", help="D4 test-time augmentation")
    p.add_argument("--data-dir", default=None, help="override the run's data directory")
    p.add_argument("--out", default=None,
                   help="where to write the JSON (default: WORKDIR/eval_SPLIT.json)")
    args = p.parse_args(argv)
    return evaluate(args.workdir, args.split, d4=args.d4, tta=args.tta,
                    data_dir=args.data_dir, out=args.out)


if __name__ == "__main__":
    cli.run(main, "experiments.evaluate")
