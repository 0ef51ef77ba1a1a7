"""Default configuration: the dynamic p4m G-CNN on BreastMNIST, sized for 2 CPU cores.

Override any field from the command line: ``--set epochs=5 --set model=p4m_gcnn``.
"""

from __future__ import annotations

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    # data
    dataset: str = "breastmnist"
    # None: for MedMNIST $DGCNN_DATA_DIR, else ~/.cache/dgcnn_jax/medmnist; for TFDS
    # sources (pcam) the TFDS default, ~/tensorflow_datasets
    data_dir: str | None = None
    augment: bool = False  # random D4 transforms of training images
    # < 1: train on a class-stratified subset of the training split, drawn with data_seed
    # (the same images for every model and run seed; validation and test untouched)
    train_fraction: float = 1.0
    data_seed: int = 0
    # the image size models see (dgcnn_jax.data.center_view: a centred crop averaged over
    # blocks); 0: the dataset's default view (IDC: 24, its centre 48 crop averaged 2x2;
    # the 28 px datasets: 28); 48 for IDC's full-resolution centre crop
    input_size: int = 0
    # "device": the training split on the device and one compiled program per epoch
    # (shuffling and augmentation there too); "host": a grain pipeline feeding one step at
    # a time (needed for pcam and for mid-epoch checkpoints); "auto": "device" where the
    # split is in memory (28 px datasets), the run is one process and
    # checkpoint_every_steps is 0, else "host". The two draw different (seeded) orders.
    pipeline: str = "auto"
    # model
    model: str = "p4m_dgcnn"
    dropout: float = 0.1
    # of every convolution and matrix product (dgcnn_jax.execution.PRECISIONS): "highest"
    # keeps exact equivariance on GPUs and TPUs; "default" lets them use TF32 / bfloat16
    # passes (faster, equivariant only to about 1e-3); the CPU computes the same for all
    precision: str = "highest"
    # how every lifting and group convolution runs (dgcnn_jax.execution.IMPLS): "auto"
    # (the measured default), or "orbit": exactly equivariant at any precision
    impl: str = "auto"
    # of the convolutions: "float32", or "bfloat16" / "float16" for mixed precision
    # (float32 parameters, optimizer state, batch-norm statistics, attention and loss)
    dtype: str = "float32"
    # 28 px models: "" or "invariant" (logits invariant under the group) or "orientation"
    # (the head sees every group element: equivariant layers, orientation-aware logits)
    readout: str = ""
    # dynamic models only (ablations): 0 / "" keep the registered model's choice
    num_kernels: int = 0  # K kernel banks per layer
    attention: str = ""  # "invariant" or "equivariant"
    parameterization: str = ""  # "banks" (K independent kernels) or "residual" (W0 + dW_k)
    bank_init: str = ""  # banks form: "per_bank" (He each) or "mixture" (He uniform mixture)
    delta_scale: float = 0.0  # residual form: dW_k start at this times He (0: static start)
    # invariant attention's statistics: "mean", "mean_max" or "mean_std" ("": the layer's
    # own default, "mean"); mean_max and a static stem were chosen on validation data
    # (docs/dynamic.md, "Options of the dynamic layers"); 28 px models only
    descriptor: str = "mean_max"
    static_stem: bool = True  # keep the first (lifting) convolution static
    freeze_banks: bool = False  # control: the banks keep their initial (random) values
    # what the invariant attention acts on, comma-separated from banks, positions,
    # in_fields, out_fields ("": the model's; dgcnn_jax.dynamic.TARGETS), and how the
    # banks are mixed, "softmax" or "signed" ("": the model's)
    attention_targets: str = ""
    bank_mix: str = ""
    # "assignment" (with the field_banks target): output field o starts on bank o mod K,
    # so that the banks separate; "" or "random": the head's usual start
    bank_start: str = ""
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    # 0: an epoch is one pass over the training split; > 0: an epoch is this many steps
    # (validation, checkpoints and the schedules count these epochs), the batches walking
    # through the split in successive passes (device pipeline): gives runs on training
    # subsets of different sizes the same steps and validations
    steps_per_epoch: int = 0
    eval_batch_size: int = 256
    optimizer: str = "adamw"  # "adamw" or "sgd" (with momentum)
    learning_rate: float = 3e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    # decay of the dynamic layers' banks (None: weight_decay); decoupled as in AdamW:
    # each step subtracts learning_rate(step) * decay * parameter
    bank_weight_decay: float | None = None
    momentum: float = 0.9
    grad_clip_norm: float = 1.0
    # dynamic layers: attention temperature, linear from tau_initial to tau_final
    tau_initial: float = 30.0
    tau_final: float = 1.0
    tau_anneal_epochs: float = 10.0
    # > 0: anneal over this fraction of the epochs instead (0.1: chosen on validation data)
    tau_anneal_fraction: float = 0.1
    # run
    seed: int = 0
    # "0,1,2,3,4": train these seeds together as one program per epoch (the device
    # pipeline), each into <workdir>/seed<N> as if run alone with seed=N; "": seed alone
    seeds: str = ""
    num_devices: int = 0  # 0: all local devices
    checkpoint_every_steps: int = 0  # 0: at the end of every epoch only
    max_steps: int = 0  # > 0: stop after this many steps (smoke tests)
    progress: bool = True
    # false: no figures (learning curves, ROC, confusion matrix, dynamic diagnostics):
    # for sweeps of many runs and tests; the numbers are the same
    plots: bool = True
    # false: stop after the epochs without reading the test split (option selection on
    # validation data; results.json then has no test metrics)
    score_test: bool = True


def get_config() -> Config:
    return Config()


# What the run did for fields that a stored config.json lacks (written before the field
# existed or before its default changed): the behaviour of that time, not today's default.
LEGACY_VALUES = {"descriptor": "", "static_stem": False, "tau_anneal_fraction": 0.0,
                 "pipeline": "host"}


def from_stored(fields: dict) -> dict:
    """The fields of a stored ``config.json`` with :data:`LEGACY_VALUES` for absent ones."""
    return {**LEGACY_VALUES, **fields}


def _convert(text: str, kind):
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _convert(text, args[0])
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return kind(text)


def override(config: Config, assignments: list[str]) -> Config:
    """Apply ``key=value`` strings to a config (types follow the field annotations)."""
    hints = typing.get_type_hints(type(config))
    changes = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        if key not in hints:
            raise ValueError(f"--set {key}: unknown config field; fields: {', '.join(hints)}")
        try:
            changes[key] = _convert(value, hints[key])
        except ValueError as err:
            raise ValueError(f"--set {key}={value}: {err}") from None
    return dataclasses.replace(config, **changes)
