"""Train and evaluate a registered model on a MedMNIST dataset or PatchCamelyon.

    python -m experiments.train --workdir runs/default [--config pcam] [--set key=value ...]

The default configuration (``experiments/configs/default.py``) trains the dynamic p4m
G-CNN on BreastMNIST; ``--config pcam`` the P4M-DenseNet protocol on PatchCamelyon
(``experiments/configs/pcam.py``). The work directory receives ``config.json``, ``metrics.jsonl``
(one line per epoch), ``results.json``, ``learning_curves.png``, ``roc_test.png`` and
orbax checkpoints: ``checkpoints/latest`` (every epoch) and ``checkpoints/best`` (best
validation AUC), kept apart. Starting the command again in the same work directory
resumes from the latest checkpoint. The best epoch is chosen on validation data; the
test split is read once, at the end, with the best checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from dgcnn_jax import data, metrics, models
from dgcnn_jax.dynamic import linear_temperature
from experiments import datasets
from experiments.configs import CONFIGS, Config, get_config, override


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


# --------------------------------------------------------------------------- config

def validate(config: Config) -> None:
    """Raise ``ValueError`` for a bad configuration, before any data or compute."""
    if config.model not in models.available():
        raise ValueError(f"model: unknown model {config.model!r}; known models: "
                         f"{', '.join(models.available())}")
    datasets.dataset_facts(config.dataset)  # raises for unknown names, listing known ones
    positive = ("epochs", "batch_size", "eval_batch_size")
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    for name in ("learning_rate",):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name}: expected a value > 0, got {getattr(config, name)!r}")
    for name in ("weight_decay", "warmup_epochs", "grad_clip_norm", "tau_anneal_epochs"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: expected a value >= 0, got {getattr(config, name)!r}")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {config.dropout!r}")
    if config.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {config.optimizer!r}")
    if config.num_kernels or config.attention:
        if not models.spec(config.model).dynamic:
            raise ValueError(f"num_kernels, attention: {config.model} has no dynamic layers; "
                             f"leave them at 0 and ''")
        if isinstance(config.num_kernels, bool) or not isinstance(config.num_kernels, int) \
                or config.num_kernels < 0:
            raise ValueError(f"num_kernels: expected an int >= 1 (0: the model's default), "
                             f"got {config.num_kernels!r}")
        if config.attention not in ("", "invariant", "equivariant"):
            raise ValueError(f"attention: expected 'invariant' or 'equivariant' ('': the "
                             f"model's default), got {config.attention!r}")
    if config.readout:
        if models.spec(config.model).input_size != 28:
            raise ValueError(f"readout: only the 28 px models have a readout choice, not "
                             f"{config.model}; leave it at ''")
        if config.readout not in models.READOUTS:
            raise ValueError(f"readout: expected one of {', '.join(models.READOUTS)} ('': the "
                             f"model's default), got {config.readout!r}")
    if config.tau_initial <= 0 or config.tau_final <= 0:
        raise ValueError("tau_initial, tau_final: temperatures must be > 0")
    devices = num_devices(config)
    if config.batch_size % devices:
        raise ValueError(f"batch_size: {config.batch_size} is not divisible by the number of "
                         f"devices ({devices})")
    if config.eval_batch_size % devices:
        raise ValueError(f"eval_batch_size: {config.eval_batch_size} is not divisible by the "
                         f"number of devices ({devices})")


def num_devices(config: Config) -> int:
    available = jax.device_count()  # all processes' devices after jax.distributed
    if config.num_devices < 0 or config.num_devices > available:
        raise ValueError(f"num_devices: expected 0 (all) to {available}, got "
                         f"{config.num_devices}")
    return config.num_devices or available


# --------------------------------------------------------------------------- state

def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps=warmup, decay_steps=max(total, warmup + 1))
    if config.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        opt = optax.chain(optax.add_decayed_weights(config.weight_decay),
                          optax.sgd(schedule, momentum=config.momentum))
    if config.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
    return opt


def _keys_to_data(tree):
    return jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        else x, tree)


def _data_to_keys(tree, like):
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
        if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key) else x, tree, like)


@dataclasses.dataclass
class Trainer:
    """Compiled steps and the model's split state (pure functions under ``jax.jit``)."""

    config: Config
    train_graph: nnx.GraphDef
    eval_graph: nnx.GraphDef
    optimizer: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    steps_per_epoch: int

    @functools.cached_property
    def data_sharding(self):
        return NamedSharding(self.mesh, PartitionSpec("data"))

    @functools.cached_property
    def replicated(self):
        return NamedSharding(self.mesh, PartitionSpec())

    @functools.cached_property
    def train_step(self):
        graph, optimizer = self.train_graph, self.optimizer

        def step(params, rest, opt_state, images, labels, tau):
            model = nnx.merge(graph, params, rest)

            def loss_fn(model):
                logits = model(images, tau=tau)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                return loss, logits

            # nnx.value_and_grad differentiates the Params and carries the batch
            # statistics and dropout RNG updates out of the trace.
            (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
            new_rest = nnx.state(model, nnx.Not(nnx.Param))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
            # 1.0 when the loss and the updated parameters are finite
            finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))
            return params, new_rest, opt_state, {"loss": loss, "accuracy": accuracy,
                                                 "finite": finite.astype(jnp.float32)}

        return jax.jit(step, donate_argnums=(0, 1, 2))

    @functools.cached_property
    def predict_step(self):
        graph = self.eval_graph

        def step(params, rest, images, tau):
            return jax.nn.softmax(nnx.merge(graph, params, rest)(images, tau=tau), axis=-1)

        return jax.jit(step)

    def tau(self, epoch_float: float):
        c = self.config
        return linear_temperature(epoch_float, initial=c.tau_initial, final=c.tau_final,
                                  anneal_epochs=c.tau_anneal_epochs)

    def predict(self, params, rest, images: np.ndarray, mean, std, tau) -> np.ndarray:
        """Class probabilities ``[N, C]`` for uint8 images (eval mode, all examples)."""
        bs = self.config.eval_batch_size
        ds = data.epoch_dataset(images, np.zeros(len(images), np.int32), batch_size=bs,
                                mean=mean, std=std, shuffle=False, drop_remainder=False)
        out = []
        for batch in ds:
            x = batch["image"]
            n = len(x)
            if n % bs:  # pad the last batch to a full (shardable) one; no retrace
                x = np.concatenate([x, np.zeros((bs - n, *x.shape[1:]), x.dtype)])
            x = jax.device_put(x, self.data_sharding)
            probs = self.predict_step(params, rest, x, tau)
            if jax.process_count() > 1:  # gather the batch shards of every process
                probs = multihost_utils.process_allgather(probs, tiled=True)
            out.append(np.asarray(probs)[:n])
        return np.concatenate(out)


# --------------------------------------------------------------------------- checkpoints

def _managers(workdir: pathlib.Path):
    workdir = pathlib.Path(workdir).absolute()  # orbax needs absolute paths
    opts = dict(create=True, enable_async_checkpointing=False)
    latest = ocp.CheckpointManager(workdir / "checkpoints" / "latest",
                                   options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
    best = ocp.CheckpointManager(workdir / "checkpoints" / "best",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
    return latest, best


def _save(manager, step: int, tree, meta: dict) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(tree)),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def _restore(manager, like):
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_keys_to_data(like)), meta=ocp.args.JsonRestore()))
    return _data_to_keys(restored["state"], like), restored["meta"]


# --------------------------------------------------------------------------- outputs

def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def _write_history(workdir: pathlib.Path, history: list[dict]) -> None:
    tmp = workdir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
    tmp.replace(workdir / "metrics.jsonl")


def plot_learning_curves(history: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h["val_nll"] for h in history], label="validation")
    axes[0].set(xlabel="epoch", ylabel="loss (NLL)")
    axes[1].plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy")
    axes[1].plot(epochs, [h["val_accuracy"] for h in history], label="val accuracy")
    axes[1].plot(epochs, [h["val_auc"] for h in history], label="val AUC")
    axes[1].set(xlabel="epoch", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(probs: np.ndarray, labels: np.ndarray, path: pathlib.Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for c in classes:
        fpr, tpr = metrics.roc_curve(probs[:, c], labels == c)
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, label=f"class {c} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- main loop

def model_kwargs(config: Config) -> dict:
    """Keyword arguments for ``models.create`` from the config (dropout, ablation fields)."""
    kwargs = {"dropout": config.dropout}
    if config.num_kernels:
        kwargs["num_kernels"] = config.num_kernels
    if config.attention:
        kwargs["attention"] = config.attention
    if config.readout:
        kwargs["readout"] = config.readout
    return kwargs


def setup(config: Config, num_classes: int, in_channels: int, steps_per_epoch: int):
    """Model, optimizer and compiled steps; returns ``(trainer, params, rest, opt_state)``."""
    model = models.create(config.model, num_classes=num_classes, in_channels=in_channels,
                          rngs=nnx.Rngs(config.seed), **model_kwargs(config))
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    train_graph, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(config, steps_per_epoch)
    devices = np.array(jax.devices()[:num_devices(config)])
    mesh = jax.sharding.Mesh(devices, ("data",))
    trainer = Trainer(config, train_graph, eval_graph, optimizer, mesh, steps_per_epoch)
    params, rest = jax.device_put((params, rest), trainer.replicated)
    opt_state = jax.device_put(optimizer.init(params), trainer.replicated)
    return trainer, params, rest, opt_state


def train_and_evaluate(config: Config, workdir: str | pathlib.Path) -> dict:
    """Train ``config.model`` on ``config.dataset``; resume if ``workdir`` has a checkpoint.

    Returns the final results (also written to ``workdir/results.json``).
    """
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = datasets.open_dataset(config.dataset, config.data_dir)
    val_x, val_y = dataset.split("val")
    mean, std = dataset.mean, dataset.std
    steps_per_epoch = data.num_batches(dataset.num_train, config.batch_size,
                                       drop_remainder=True)
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size: {config.batch_size} exceeds the {dataset.num_train} "
                         f"training examples")
    trainer, params, rest, opt_state = setup(config, dataset.num_classes, dataset.channels,
                                             steps_per_epoch)
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    _write_json(workdir / "config.json", dataclasses.asdict(config))

    latest, best = _managers(workdir)
    state = {"params": params, "rest": rest, "opt_state": opt_state}
    progress = {"epoch": 0, "batch": 0, "step": 0, "history": [], "best_auc": -1.0,
                "best_epoch": -1, "train_seconds": 0.0, "iterator": None,
                "sums": {"loss": 0.0, "accuracy": 0.0}, "seen": 0}
    if latest.latest_step() is not None:
        state, progress = _restore(latest, state)
        state = jax.device_put(state, trainer.replicated)
        print(f"resuming from step {progress['step']} (epoch {progress['epoch']}, batch "
              f"{progress['batch']}) in {workdir}", flush=True)
    _write_history(workdir, progress["history"])

    def checkpoint(epoch, batch, iterator_state):
        progress.update(epoch=epoch, batch=batch, iterator=iterator_state)
        _save(latest, progress["step"], state, progress)

    for epoch in range(progress["epoch"], config.epochs):
        ds = dataset.train_epoch(batch_size=config.batch_size, epoch=epoch, seed=config.seed,
                                 augment=config.augment)
        it = data.epoch_iterator(ds, progress["iterator"] if progress["batch"] else None)
        first_batch = progress["batch"]
        if not first_batch:  # a fresh epoch (a resumed one keeps its running sums)
            progress["sums"], progress["seen"] = {"loss": 0.0, "accuracy": 0.0}, 0
        start = epoch_start = time.perf_counter()
        sums = progress["sums"]
        bar = _progress_bar(config, epoch, steps_per_epoch, first_batch)
        for batch_index in range(first_batch, steps_per_epoch):
            batch = next(it)
            tau = trainer.tau(progress["step"] / steps_per_epoch)
            images = jax.device_put(batch["image"], trainer.data_sharding)
            labels = jax.device_put(batch["label"], trainer.data_sharding)
            new = trainer.train_step(state["params"], state["rest"], state["opt_state"],
                                     images, labels, tau)
            step_metrics = jax.device_get(new[3])
            if not (math.isfinite(float(step_metrics["loss"])) and step_metrics["finite"]):
                raise TrainingError(
                    f"non-finite training loss {float(step_metrics['loss'])} at epoch {epoch}, "
                    f"step {progress['step']}: stopping; the last good checkpoint is kept in "
                    f"{workdir / 'checkpoints' / 'latest'} (try a lower learning_rate)")
            state = {"params": new[0], "rest": new[1], "opt_state": new[2]}
            progress["step"] += 1
            for k in sums:
                sums[k] += float(step_metrics[k])
            progress["seen"] += 1
            rate = (batch_index + 1 - first_batch) * config.batch_size / max(
                time.perf_counter() - epoch_start, 1e-9)
            bar.update(float(step_metrics["loss"]), rate)
            every = config.checkpoint_every_steps
            if every and progress["step"] % every == 0 and batch_index + 1 < steps_per_epoch:
                progress["train_seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                checkpoint(epoch, batch_index + 1, it.get_state())
            if config.max_steps and progress["step"] >= config.max_steps:
                break
        bar.close()
        progress["train_seconds"] += time.perf_counter() - start
        tau = trainer.tau(progress["step"] / steps_per_epoch)
        val = metrics.classification_metrics(
            trainer.predict(state["params"], state["rest"], val_x, mean, std, tau), val_y)
        record = {"epoch": epoch + 1, "step": progress["step"], "tau": float(tau),
                  "train_loss": sums["loss"] / max(progress["seen"], 1),
                  "train_accuracy": sums["accuracy"] / max(progress["seen"], 1),
                  "val_auc": val["auc"], "val_accuracy": val["accuracy"], "val_nll": val["nll"],
                  "val_balanced_accuracy": val["balanced_accuracy"]}
        progress["history"].append(record)
        improved = val["auc"] > progress["best_auc"]
        if improved:
            progress["best_auc"], progress["best_epoch"] = val["auc"], epoch + 1
        _write_history(workdir, progress["history"])
        print(f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
              f"val AUC {val['auc']:.4f}  val acc {val['accuracy']:.4f}  tau {float(tau):.2f}"
              f"{'  (best)' if improved else ''}", flush=True)
        if improved:
            # the temperature the checkpoint was selected with is the one it is tested with
            _save(best, epoch + 1, state, {"epoch": epoch + 1, "val": val, "tau": float(tau)})
        checkpoint(epoch + 1, 0, None)
        if config.max_steps and progress["step"] >= config.max_steps:
            break

    # The test split is read once, here, with the best checkpoint.
    best_state, best_meta = _restore(best, state)
    best_state = jax.device_put(best_state, trainer.replicated)
    test_x, test_y = dataset.split("test")
    tau = best_meta["tau"]
    eval_start = time.perf_counter()
    probs = trainer.predict(best_state["params"], best_state["rest"], test_x, mean, std, tau)
    eval_seconds = time.perf_counter() - eval_start
    test = metrics.classification_metrics(probs, test_y)
    results = {
        "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "num_params": num_params, "best_epoch": best_meta["epoch"], "best_tau": tau,
        "val": best_meta["val"], "test": test, "epochs_run": len(progress["history"]),
        "steps": progress["step"], "train_seconds": progress["train_seconds"],
        "train_images_per_second": progress["step"] * config.batch_size
        / max(progress["train_seconds"], 1e-9),
        "eval_images_per_second": len(test_x) / max(eval_seconds, 1e-9),
        "devices": num_devices(config), "backend": jax.default_backend(),
    }
    _write_json(workdir / "results.json", results)
    plot_learning_curves(progress["history"], workdir / "learning_curves.png")
    plot_roc(probs, test_y, workdir / "roc_test.png",
             f"{config.model} on {config.dataset} (test)")
    np.save(workdir / "test_probs.npy", probs)
    print(f"test AUC {test['auc']:.4f}  acc {test['accuracy']:.4f}  (best epoch "
          f"{best_meta['epoch']}; results in {workdir / 'results.json'})", flush=True)
    return results


class _progress_bar:
    """A tqdm bar with loss and images/s (silent when ``config.progress`` is false)."""

    def __init__(self, config: Config, epoch: int, total: int, initial: int):
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}",
                            unit="step", leave=False, file=sys.stderr)

    def update(self, loss: float, images_per_second: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/default",
                        help="output and checkpoint folder (resumes if it has a checkpoint)")
    parser.add_argument("--config", default="default", choices=sorted(CONFIGS),
                        help="base configuration (experiments/configs/<name>.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set epochs=5")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first (it reads "
                             "the coordinator and process ids from the cluster environment)")
    args = parser.parse_args(argv)
    if args.distributed:
        jax.distributed.initialize()
    try:
        config = override(get_config(args.config), args.set)
        validate(config)
    except ValueError as err:
        parser.error(str(err))
    try:
        return train_and_evaluate(config, args.workdir)
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
