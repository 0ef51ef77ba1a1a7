"""Evaluate a training run's best checkpoint on a split, optionally under D4 transforms.

    python -m experiments.evaluate --workdir runs/default [--split test] [--d4] [--tta]

``--d4`` reports the metrics on all 8 D4-transformed copies of the split (robustness:
an invariant model scores identically on every copy); ``--tta`` averages the class
probabilities over the 8 copies (test-time augmentation). Writes
``eval_{split}.json`` into the work directory and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np

from dgcnn_jax import P4M, data, metrics
from experiments import datasets, train
from experiments.configs import Config


def load_run(workdir: str | pathlib.Path, data_dir: str | None = None):
    """The run's config, trainer, best state, opened dataset (see
    :func:`experiments.datasets.open_dataset`) and best-checkpoint meta."""
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training work "
                                f"directory?")
    fields = json.loads(config_path.read_text())
    if data_dir is not None:
        fields["data_dir"] = data_dir
    config = Config(**fields)
    train.validate(config)
    dataset = datasets.open_dataset(config.dataset, config.data_dir)
    steps = data.num_batches(dataset.num_train, config.batch_size, drop_remainder=True)
    trainer, params, rest, opt_state = train.setup(config, dataset.num_classes,
                                                   dataset.channels, steps)
    _, best = train._managers(workdir)
    if best.latest_step() is None:
        raise FileNotFoundError(f"no best checkpoint in {workdir / 'checkpoints' / 'best'}")
    state, best_meta = train._restore(best, {"params": params, "rest": rest,
                                             "opt_state": opt_state})
    state = jax.device_put(state, trainer.replicated)
    if "tau" not in best_meta:  # checkpoints written before the meta recorded it
        history = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
        best_meta["tau"] = next(h["tau"] for h in history if h["epoch"] == best_meta["epoch"])
    return config, trainer, state, dataset, best_meta


def evaluate(workdir, split: str = "test", *, d4: bool = False, tta: bool = False,
             data_dir: str | None = None) -> dict:
    config, trainer, state, dataset, best_meta = load_run(workdir, data_dir)
    images, labels = dataset.split(split)
    mean, std = dataset.mean, dataset.std
    tau = best_meta["tau"]  # the temperature the best checkpoint was selected with

    def probs_of(x):
        return trainer.predict(state["params"], state["rest"], x, mean, std, tau)

    result = {"workdir": str(workdir), "model": config.model, "dataset": config.dataset,
              "split": split, "best_epoch": best_meta["epoch"],
              "metrics": metrics.classification_metrics(probs_of(images), labels)}
    if d4 or tta:
        copies = [probs_of(np.ascontiguousarray(P4M.transform_image(images, g)))
                  for g in range(P4M.order)]
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
    out = pathlib.Path(workdir) / f"eval_{split}.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True))
    m = result["metrics"]
    print(f"{config.model} on {config.dataset}/{split}: AUC {m['auc']:.4f}  accuracy "
          f"{m['accuracy']:.4f}  (best epoch {best_meta['epoch']})")
    if d4:
        r = result["d4"]
        print(f"  D4 copies: AUC {r['auc_min']:.4f} .. {r['auc_max']:.4f}, accuracy "
              f"{r['accuracy_min']:.4f} .. {r['accuracy_max']:.4f}, max probability "
              f"difference {r['max_prob_difference']:.2e}")
    if tta:
        print(f"  D4 test-time augmentation: AUC {result['tta']['auc']:.4f}  accuracy "
              f"{result['tta']['accuracy']:.4f}")
    print(f"wrote {out}")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test", choices=data.medmnist.SPLITS)
    p.add_argument("--d4", action="store_true", help="metrics on all 8 D4 copies")
    p.add_argument("--tta", action="store_true", help="D4 test-time augmentation")
    p.add_argument("--data-dir", default=None, help="override the run's data directory")
    args = p.parse_args(argv)
    try:
        return evaluate(args.workdir, args.split, d4=args.d4, tta=args.tta,
                        data_dir=args.data_dir)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))


if __name__ == "__main__":
    main()
