"""The training state and steps: optimizer, temperature, config options that reach the
model, stored configs, and the epoch loops on the device."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

import dgcnn_jax as dg
from dgcnn_jax import models
from experiments import configs, training
from experiments.configs import Config, get_config, model_kwargs, override, validate


def test_dynamic_layer_options_in_the_config():
    base = override(get_config(), ["model=p4m_dgcnn"])
    for sets, match in ((["model=p4m_gcnn", "parameterization=residual"],
                         "parameterization: p4m_gcnn has no dynamic layers"),
                        (["model=cnn", "static_stem=false", "freeze_banks=true"],
                         "static_stem, freeze_banks: cnn has no dynamic layers"),
                        (["model=p4m_ddensenet", "descriptor=mean_std"],
                         "descriptor: only the 28 px models"),
                        (["parameterization=lora"], "parameterization: expected one of"),
                        (["descriptor=median"], "descriptor: expected one of"),
                        (["bank_init=zeros"], "bank_init: expected one of"),
                        (["delta_scale=-0.1"], "delta_scale: expected a finite value >= 0"),
                        (["bank_weight_decay=-1"], "bank_weight_decay: expected"),
                        (["tau_anneal_fraction=1.5"], "tau_anneal_fraction: expected")):
        with pytest.raises(ValueError, match=match):
            validate(override(base, sets))
    config = override(base, ["parameterization=residual", "delta_scale=0.1",
                             "descriptor=mean_std", "static_stem=true", "bank_weight_decay=none"])
    validate(config)
    kwargs = model_kwargs(config)
    assert kwargs == {"dropout": 0.1, "precision": "highest", "parameterization": "residual",
                      "delta_scale": 0.1, "descriptor": "mean_std", "static_stem": True,
                      "freeze_banks": False}
    model = models.create("p4m_dgcnn", num_classes=2, rngs=nnx.Rngs(0), **kwargs)
    assert isinstance(model.convs[0], dg.LiftingConv)  # static stem
    assert model.convs[1].parameterization == "residual"
    # the defaults chosen on validation data reach the model; static models get none
    chosen = models.create("p4m_dgcnn", num_classes=2, rngs=nnx.Rngs(0),
                           **model_kwargs(get_config()))
    assert isinstance(chosen.convs[0], dg.LiftingConv)
    assert {c.descriptor for c in chosen.convs[1:]} == {"mean_max"}
    assert model_kwargs(override(get_config(), ["model=p4m_gcnn"])) == {
        "dropout": 0.1, "precision": "highest"}
    # "" and a dynamic stem: the layer as it was before the selection
    before = model_kwargs(override(base, ["descriptor=", "static_stem=false"]))
    layer = models.create("p4m_dgcnn", num_classes=2, rngs=nnx.Rngs(0), **before).convs[0]
    assert isinstance(layer, dg.DynamicLiftingConv) and layer.descriptor == "mean"


def test_runs_stored_before_a_default_changed_keep_their_settings():
    """A config.json written before a field existed (or before its default changed) is read
    with the values of that time: resuming or evaluating such a run builds its model."""
    stored = {k: v for k, v in dataclasses.asdict(get_config()).items()
              if k not in ("descriptor", "static_stem", "tau_anneal_fraction", "precision",
                           "pipeline")}
    assert configs.from_stored(stored)["descriptor"] == ""
    assert configs.from_stored(stored)["static_stem"] is False
    old = Config(**configs.from_stored(stored))
    assert training.config_differences(stored, old) == []
    assert training.config_differences(stored, get_config()) == [
        "pipeline 'host' -> 'auto'", "descriptor '' -> 'mean_max'",
        "static_stem False -> True", "tau_anneal_fraction 0.0 -> 0.1"]
    # for a static model the dynamic fields do not matter; the input pipeline does (the
    # device one draws another order)
    stored["model"] = "p4m_gcnn"
    assert training.config_differences(stored, override(get_config(), ["model=p4m_gcnn"])) == [
        "pipeline 'host' -> 'auto'"]
    assert training.config_differences(
        stored, override(get_config(), ["model=p4m_gcnn", "pipeline=host"])) == []


def test_temperature_over_a_fraction_of_training():
    config = override(get_config(), ["epochs=20", "tau_anneal_fraction=0.25"])
    taus = [float(training.temperature(config, e)) for e in (0, 2.5, 5, 10)]
    np.testing.assert_allclose(taus, [30.0, 15.5, 1.0, 1.0], rtol=1e-6)
    default = get_config()  # 30 -> 1 over the first 10% of the 30 epochs
    assert float(training.temperature(default, 1.5)) == pytest.approx(15.5)
    assert float(training.temperature(default, 3)) == pytest.approx(1.0)
    by_epochs = override(get_config(), ["tau_anneal_fraction=0"])  # tau_anneal_epochs = 10
    assert float(training.temperature(by_epochs, 5)) == pytest.approx(15.5)


def test_bank_weight_decay_acts_on_the_banks_only():
    import jax
    import jax.numpy as jnp

    config = override(get_config(), ["model=p4_dgcnn", "bank_weight_decay=0.5",
                                     "weight_decay=0.01", "warmup_epochs=0",
                                     "grad_clip_norm=0"])
    state = training.create_train_state(config, 2, 1, 10, training.make_mesh(config))
    lr = float(optax_schedule_value(config, 10))
    zeros = jax.tree.map(jnp.zeros_like, state.params)  # Adam's step is 0: decay alone
    updates, _ = state.tx.update(zeros, state.opt_state, state.params)
    flat = jax.tree_util.tree_leaves_with_path(updates)
    params = dict(jax.tree_util.tree_leaves_with_path(state.params))
    seen = set()
    for path, update in flat:
        p = np.asarray(params[path])
        if not np.any(p):
            continue
        is_bank = any(getattr(k, "key", None) == "kernels" for k in path)
        rate = 0.5 if is_bank else 0.01
        np.testing.assert_allclose(np.asarray(update), -lr * rate * p, rtol=1e-5, atol=1e-12)
        seen.add(is_bank)
    assert seen == {True, False}


def optax_schedule_value(config, steps_per_epoch):
    """The learning rate of the first step (the schedule the optimizer uses)."""
    import optax

    total = config.epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup_steps=0,
                                              decay_steps=total)(0)


def test_steps_per_epoch_needs_the_device_pipeline():
    with pytest.raises(ValueError, match="steps_per_epoch: epochs of a set number of steps"):
        validate(dataclasses.replace(get_config(), steps_per_epoch=10, pipeline="host"))
    with pytest.raises(ValueError, match="steps_per_epoch: expected an int >= 0"):
        validate(dataclasses.replace(get_config(), steps_per_epoch=-1))
    validate(dataclasses.replace(get_config(), steps_per_epoch=10))


def test_epoch_in_steps_equals_the_epoch_as_one_scan():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    # (SGD: Adam's normalised steps would turn rounding in near-zero gradients into
    # parameter differences of the size of a step. The CNN: the epoch skeleton is the
    # same for every model, and its programs compile in a third of p4_gcnn's time.)
    config = override(get_config(), ["model=cnn", "batch_size=8", "augment=true",
                                      "optimizer=sgd", "progress=false"])
    mesh = training.make_mesh(config)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 8, 40))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    kw = dict(settings=training.step_settings(config), steps_per_epoch=3, length=3,
              batch_sharding=sharding)
    out = {}
    for loop in ("scan", "steps"):
        state = training.create_train_state(config, 8, 3, 3, mesh)
        for epoch in (2, 3):  # epochs 2 and 3 of seed 5
            state, m = training.train_epoch_on_device(state, images, labels, 0.5, 0.25, 5,
                                                      epoch, loop=loop, **kw)
        out[loop] = (jax.device_get(state.params), jax.device_get(m))
    assert out["steps"][1]["loss"].shape == (3,)
    # the same computation but for rounding (XLA fuses a step alone and inside a loop
    # differently; measured over these 6 steps: loss 1e-7, parameters 3e-8 relative
    # with the CNN, loss 4e-5 with p4_gcnn)
    np.testing.assert_allclose(out["steps"][1]["loss"], out["scan"][1]["loss"], rtol=2e-4)
    for a, b in zip(jax.tree.leaves(out["steps"][0]), jax.tree.leaves(out["scan"][0])):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))
    # the same skeleton trains stacked seeds: [S, length] metrics, each seed as alone
    states = training.stack_states([training.create_train_state(config, 8, 3, 3, mesh)
                                    for _ in range(2)])
    states, m = training.train_epoch_on_device(states, images, labels, 0.5, 0.25,
                                               jnp.asarray([5, 6]), 2, loop="steps", **kw)
    assert m["loss"].shape == (2, 3)
    alone = training.create_train_state(config, 8, 3, 3, mesh)
    _, m6 = training.train_epoch_on_device(alone, images, labels, 0.5, 0.25, 6, 2,
                                           loop="steps", **kw)
    np.testing.assert_allclose(m["loss"][1], m6["loss"], rtol=2e-4)
    # the CPU trains device-pipeline epochs step by step
    assert training.EPOCH_LOOPS.get("cpu") == "steps"
