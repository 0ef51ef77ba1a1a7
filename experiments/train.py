"""Train and evaluate a registered model: the command line of :mod:`experiments.training`.

    python -m experiments.train [--workdir runs/default] [--config pcam] [--set key=value ...]

The default configuration (``experiments/configs/default.py``) trains the dynamic p4m
G-CNN on BreastMNIST; ``--config pcam`` the P4M-DenseNet protocol on PatchCamelyon
(``experiments/configs/pcam.py``). The work directory receives ``config.json``,
``metrics.jsonl`` (one line per epoch), ``results.json``, ``learning_curves.png``,
``roc_test.png``, ``confusion_test.png``, ``test_probs.npy`` with ``test_labels.npy``,
and orbax checkpoints (:mod:`experiments.checkpoints`): ``checkpoints/latest`` (every
epoch) and ``checkpoints/best`` (best validation AUC), kept apart. Starting the command
again in the same work directory resumes from the latest checkpoint. The best epoch is
chosen on validation data; the test split is read once, at the end, with the best
checkpoint. ``--set seeds=0,1,2`` trains several seeds together, each into ``seed<N>``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from experiments import cli
from experiments.configs import CONFIGS, Config, get_config, override, validate
from experiments.training import initialize_distributed, train_and_evaluate

__all__ = ["default_workdir", "main"]


def default_workdir(config: Config) -> str:
    """``runs/<model>-<dataset>-seed<seed>``: a run without ``--workdir`` does not land in
    another model's folder (other changes to one of these are refused on resume)."""
    if config.seeds:
        return f"runs/{config.model}-{config.dataset}-seeds{config.seeds.replace(',', '-')}"
    return f"runs/{config.model}-{config.dataset}-seed{config.seed}"


def _parser() -> argparse.ArgumentParser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--workdir", default=None,
                        help="output and checkpoint folder (resumes if it has a checkpoint; "
                             "default runs/MODEL-DATASET-seedSEED)")
    parser.add_argument("--config", default="default", choices=sorted(CONFIGS),
                        help="base configuration (experiments/configs/<name>.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set epochs=5")
    parser.add_argument("--distributed", action="store_true",
                        help="several processes (hosts, or GPUs of one host): call "
                             "jax.distributed.initialize() first; the coordinator and process "
                             "ids come from the options below, else from the cluster "
                             "environment (SLURM, Open MPI, ...; JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                        help="with --distributed: process 0's address, the same for all")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--heartbeat-timeout", type=int, default=60, metavar="SECONDS",
                        help="with --distributed: a process that stops answering for this "
                             "long is taken for dead, and the others stop (default 60)")
    return parser


def main(argv=None) -> dict:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.distributed:
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                               args.heartbeat_timeout)
    try:
        config = override(get_config(args.config), args.set)
        validate(config)
    except ValueError as err:
        parser.error(str(err))
    workdir = args.workdir or default_workdir(config)
    if args.workdir is None:
        print(f"work directory {workdir} (choose one with --workdir)", flush=True)
    try:
        return train_and_evaluate(config, workdir)
    except Exception as err:
        if jax.process_count() == 1:
            raise  # experiments.cli ends it: one line for a user error or a failed run
        # a collective with a process that died fails here; leave at once rather than
        # wait in JAX's shutdown barrier for the process that will not come
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        print(f"error: process {jax.process_index()} of {jax.process_count()} stopped: "
              f"{type(err).__name__}: {first} (another process of this run may have died; "
              f"the last checkpoint is kept: launch every process again to resume)",
              file=sys.stderr, flush=True)
        _exit(1)


def _exit(code: int):
    if jax.process_count() > 1:  # skip the shutdown barrier with processes that are gone
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    cli.run(main, "experiments.train")
