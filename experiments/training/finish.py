"""The end of an epoch (validation record, best checkpoint) and the end of a run (test
once, results.json, plots, test probabilities)."""

from __future__ import annotations

import time

import jax
import numpy as np

from dgcnn_jax import metrics, models
from experiments import datasets, plots
from experiments.checkpoints import Checkpoints
from experiments.configs import num_devices

from .diagnostics import dynamic_diagnostics
from .epochs import Member, Trainer
from .parallel import primary, replicate
from .state import TrainState, temperature
from .workdir import say

__all__ = ["end_epoch", "finish"]


def end_epoch(trainer: Trainer, member: Member, state: TrainState, epoch: int,
              val_probs: np.ndarray, probe: jax.Array, prefix: str = "", *,
              partial: bool = False) -> None:
    """Score ``epoch`` on validation, add its record to the history (``metrics.jsonl``)
    and save ``best`` when validation AUC improved (``latest`` is the trainer's).
    ``partial``: a run stopped inside the epoch (``max_steps``); the record says where
    (``"partial": true`` and the batches trained), and a resumed run drops it."""
    config, progress = member.config, member.progress
    step = int(state.step)
    tau = temperature(trainer.settings, step / trainer.steps_per_epoch)
    val = metrics.classification_metrics(val_probs, trainer.val[1])
    seen = max(progress.seen, 1)
    record = {"epoch": epoch + 1, "step": step, "tau": float(tau),
              "train_loss": progress.loss_sum / seen,
              "train_accuracy": progress.accuracy_sum / seen,
              "val_auc": val["auc"], "val_accuracy": val["accuracy"], "val_nll": val["nll"],
              "val_balanced_accuracy": val["balanced_accuracy"]}
    if partial:
        record.update({"partial": True, "batch": progress.batch})
    diagnostics = dynamic_diagnostics(state, member.initial, probe, tau)
    if diagnostics:
        record["dynamic_layers"] = diagnostics
    progress.history.append(record)
    # the first evaluation is always kept: a validation split of one class has no AUC
    improved = val["auc"] > progress.best_auc or progress.best_epoch < 0
    if np.isnan(val["auc"]) and progress.best_epoch < 0:
        say(f"{prefix}warning: validation AUC is undefined (the validation split has one "
            f"class): the first epoch's checkpoint stays the best")
    if improved:
        progress.best_auc, progress.best_epoch = val["auc"], epoch + 1
    member.workdir.write_history(progress.history)
    where = f" (stopped at batch {progress.batch})" if partial else ""
    say(f"{prefix}epoch {epoch + 1}/{config.epochs}{where}  loss {record['train_loss']:.4f}  "
        f"val AUC {val['auc']:.4f}  val acc {val['accuracy']:.4f}  tau {float(tau):.2f}"
        f"{'  (best)' if improved else ''}")
    if improved:
        # the temperature the checkpoint was selected with is the one it is tested with
        Checkpoints.save(member.checkpoints.best, epoch + 1, {"model": state.model_item()},
                         {"epoch": epoch + 1, "val": val, "tau": float(tau)})


def prefix_of(trainer: Trainer, member: Member) -> str:
    """``"seed N: "`` for a member of stacked seeds."""
    return f"seed {member.config.seed}: " if trainer.stacked else ""


def preprocessing(dataset, config) -> dict:
    """What a model of the run sees, for prediction on new images without the data:
    the view, the training split's normalisation and the class names."""
    return {"input_size": dataset.input_size,
            "normalization": {"mean": [float(v) for v in dataset.mean],
                              "std": [float(v) for v in dataset.std]},
            "classes": list(datasets.class_names(config.dataset, config.data_dir)),
            "image_recipe": datasets.image_recipe(config.dataset, config.data_dir)}


def _image_shape(dataset) -> tuple[int, int, int]:
    """``(height, width, channels)`` of the images a model of the run sees."""
    return (dataset.input_size, dataset.input_size, dataset.channels)


def finish(trainer: Trainer, member: Member, state: TrainState, num_params: int) -> dict:
    """Test the best checkpoint once (unless ``score_test`` is false); write results.json,
    plots and the test probabilities."""
    config, workdir, progress = member.config, member.workdir, member.progress
    if member.checkpoints.best.latest_step() is None:
        raise FileNotFoundError(f"{workdir.checkpoint_dir('best')} holds no checkpoint "
                                f"(deleted?): the run cannot be tested; delete "
                                f"{workdir.path} to train it again")
    items, best = Checkpoints.restore(member.checkpoints.best, {"model": state.model_item()})
    together = len(trainer.members)
    results = {"model": config.model, "dataset": config.dataset, "seed": config.seed,
               "train_fraction": config.train_fraction, "data_seed": config.data_seed,
               "num_train": trainer.dataset.num_train, "num_params": num_params,
               "best_epoch": best["epoch"], "best_tau": best["tau"], "val": best["val"],
               "test": None, "epochs_run": progress.epoch, "steps": int(state.step),
               "finished": progress.epoch >= config.epochs,
               "train_seconds": progress.train_seconds, "pipeline": trainer.pipeline,
               "train_images_per_second": int(state.step) * config.batch_size * together
               / max(progress.train_seconds, 1e-9),
               "impl": config.impl, "dtype": config.dtype,
               "seeds_trained_together": together,
               "devices": num_devices(config), "backend": jax.default_backend(),
               **preprocessing(trainer.dataset, config),
               "forward_flops": models.forward_flops(state.model(),
                                                     _image_shape(trainer.dataset))}
    if not results["finished"]:
        results["position"] = {"epoch": progress.epoch, "batch": progress.batch}
        say(f"{prefix_of(trainer, member)}stopped at step {int(state.step)} (max_steps), "
            f"{progress.epoch} of {config.epochs} epochs and {progress.batch} batches "
            f"done: run the command again without max_steps to finish it")
    title = f"{config.model} on {config.dataset}"
    if primary() and config.plots:
        plots.learning_curves(progress.history, workdir.path / "learning_curves.png")
        if any("dynamic_layers" in h for h in progress.history):
            plots.dynamic_diagnostics(progress.history,
                                      workdir.path / "dynamic_diagnostics.png", title)
    if not config.score_test:  # selection runs: validation only, the test split unread
        workdir.write_results(results)
        say(f"best val AUC {best['val']['auc']:.4f} at epoch {best['epoch']} (score_test="
            f"false: the test split was not read)")
        return results

    # Test once: the best checkpoint on the test split.
    best_state = replicate(state.with_items(items["model"]), trainer.mesh)
    test_x, test_y = trainer.dataset.split("test")
    eval_start = time.perf_counter()
    probs = trainer.predict(best_state, test_x, best["tau"])
    eval_seconds = time.perf_counter() - eval_start
    test = metrics.classification_metrics(probs, test_y)
    groups = trainer.dataset.groups("test")
    if groups is not None:  # IDC: patients
        test["auc_per_group"] = metrics.grouped_auc(probs, test_y, groups)
    results.update({
        "test": test, "eval_images_per_second": len(test_x) / max(eval_seconds, 1e-9)})
    workdir.write_results(results)
    if primary():
        np.save(workdir.path / "test_probs.npy", probs)
        np.save(workdir.path / "test_labels.npy", np.asarray(test_y))
    if primary() and config.plots:
        classes = datasets.class_names(config.dataset, config.data_dir)
        plots.roc(probs, test_y, workdir.path / "roc_test.png", f"{title} (test)", classes)
        plots.confusion(test["confusion_matrix"], workdir.path / "confusion_test.png",
                        f"{title} (test)", classes)
    say(f"test AUC {test['auc']:.4f}  acc {test['accuracy']:.4f}  (best epoch "
        f"{best['epoch']}; results in {workdir.results_file})")
    return results
