"""The training package: state, compiled steps, epochs, parallelism, the work directory
and the loop. :mod:`experiments.train` is its command line.

======================  ===================================================================
module                  what
======================  ===================================================================
``state``               :class:`TrainState`, :class:`Progress`, optimizer, temperature
``steps``               the compiled step, epochs on the device (one seed or many), predict
``parallel``            mesh, replication, global batches, distributed start-up
``workdir``             :class:`Workdir`: lock, config check, the files of a run
``diagnostics``         the dynamic layers' per-epoch diagnostics
``epochs``              :class:`Trainer`: the epochs of one run or of stacked seeds
``finish``              end of an epoch (validation, best) and of a run (test once)
``loop``                :func:`train_and_evaluate`
======================  ===================================================================
"""

from .diagnostics import DIAGNOSTIC_IMAGES, dynamic_diagnostics, dynamic_layer_names
from .epochs import Member, Trainer, TrainingError
from .loop import open_data, train_and_evaluate
from .parallel import (
    batch_sharding,
    from_host,
    global_batch,
    initialize_distributed,
    make_mesh,
    primary,
    replicate,
)
from .state import (
    Optimizer,
    Progress,
    StepSettings,
    TrainState,
    count_params,
    create_train_state,
    initial_copy,
    make_optimizer,
    stack_states,
    step_settings,
    temperature,
    unstack_state,
)
from .steps import (
    EPOCH_LOOPS,
    eval_step,
    predict,
    predict_on_device,
    train_epoch_on_device,
    train_step,
)
from .workdir import RESUMABLE_CHANGES, Workdir, WorkdirError, config_differences, seed_list

__all__ = [
    "DIAGNOSTIC_IMAGES", "EPOCH_LOOPS", "Member", "Optimizer", "Progress", "RESUMABLE_CHANGES",
    "StepSettings", "TrainState", "Trainer", "TrainingError", "Workdir", "WorkdirError",
    "batch_sharding", "config_differences", "count_params", "create_train_state",
    "dynamic_diagnostics", "dynamic_layer_names", "eval_step", "from_host", "global_batch",
    "initial_copy", "initialize_distributed", "make_mesh", "make_optimizer", "open_data",
    "predict", "predict_on_device", "primary", "replicate", "seed_list", "stack_states",
    "step_settings", "temperature", "train_and_evaluate", "train_epoch_on_device",
    "train_step", "unstack_state",
]
