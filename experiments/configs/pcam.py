"""PatchCamelyon with the P4M-DenseNet (Veeling et al. 2018), for users with an accelerator.

    python -m experiments.prepare_data pcam --data-dir ~/tensorflow_datasets   # once
    python -m experiments.train --config pcam --workdir runs/pcam \\
        --set data_dir=$HOME/tensorflow_datasets [--set model=p4m_ddensenet]

Protocol as in the parameter-matched DenseNet comparisons on PCam (docs/results.md,
the results so far): the official 262,144 / 32,768 / 32,768 split, no augmentation (the
p4m models are invariant to the D4 transforms anyway), Adam with learning rate 1e-3 and
weight decay 1e-4 (decoupled, AdamW), batch 64, 100 epochs, the best epoch chosen on
validation AUC and the test split read once. Models: ``p4m_densenet`` (growth 9),
its dynamic variant ``p4m_ddensenet`` (K=3, parameter-matched) or ``p4m_ddensenet_wide``
(FLOP-matched), and ``densenet`` / ``p4_densenet`` for the baselines. Our learning-rate
schedule (one warm-up epoch, then cosine) is this project's, not the paper's.
"""

from __future__ import annotations

import dataclasses

from .default import Config


def get_config() -> Config:
    return dataclasses.replace(
        Config(), dataset="pcam", model="p4m_densenet", augment=False, epochs=100,
        batch_size=64, eval_batch_size=256, optimizer="adamw", learning_rate=1e-3,
        weight_decay=1e-4, tau_anneal_fraction=0.0)  # 10 epochs: not selected for PCam
