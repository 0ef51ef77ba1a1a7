"""Model zoo: registry, parameter matching, exact invariance, input errors."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dgcnn_jax as dg
from dgcnn_jax import models
from dgcnn_jax.testing import assert_equivariant, equivariance_errors
from tests.conftest import RTOL, normal

G_MODELS = [n for n in models.available() if models.spec(n).group != "z2"]


def _eval_model(name, seed=0, **kwargs):
    model = models.create(name, num_classes=3, in_channels=1, rngs=nnx.Rngs(seed), **kwargs)
    model.eval()
    return model


def test_registry_names_are_stable():
    assert models.available()[:5] == ("cnn", "p4_gcnn", "p4m_gcnn", "p4_dgcnn", "p4m_dgcnn")
    assert {"densenet", "p4_densenet", "p4m_densenet", "p4m_ddensenet"} <= set(
        models.available())
    with pytest.raises(ValueError, match="unknown model 'resnet'.*cnn, p4_gcnn"):
        models.create("resnet", num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes: expected a positive int"):
        models.create("cnn", num_classes=0, rngs=nnx.Rngs(0))


def _abstract(name, **kwargs):
    """The model's structure and parameter shapes, without computing an initialisation."""
    return nnx.eval_shape(lambda: models.create(name, num_classes=2, rngs=nnx.Rngs(0),
                                                **kwargs))


def test_parameter_counts_match_within_ten_percent():
    small = ("cnn", "p4_gcnn", "p4m_gcnn", "p4_dgcnn", "p4m_dgcnn")
    counts = {n: models.count_params(_abstract(n)) for n in small}
    # the abstract model counts what the initialised one holds
    assert counts["p4m_dgcnn"] == models.count_params(
        models.create("p4m_dgcnn", num_classes=2, rngs=nnx.Rngs(0)))
    for name, count in counts.items():
        assert abs(count - counts["cnn"]) <= 0.10 * counts["cnn"], (name, count)
    # DenseNets (3-channel PCam patches): G-DenseNets within 10% of the p4m DenseNet
    dense = {n: models.count_params(_abstract(n, in_channels=3))
             for n in ("densenet", "p4_densenet", "p4m_densenet", "p4m_ddensenet")}
    for name, count in dense.items():
        assert 100_000 <= count <= 150_000, (name, count)
        assert abs(count - dense["p4m_densenet"]) <= 0.10 * dense["p4m_densenet"] or (
            name == "densenet"), (name, count)


@pytest.mark.parametrize("name", G_MODELS)
def test_logits_are_invariant_on_random_images(name):
    model = _eval_model(name)
    group = models.spec(name).group
    size = 28 if models.spec(name).input_size == 28 else 16  # DenseNets: small input
    x = normal(0, 2, size, size, 1)
    forward = nnx.jit(lambda m, x: m(x, tau=1.0))
    assert_equivariant(lambda v: forward(model, v), group, x, output_kind="invariant",
                       rtol=RTOL)


@pytest.mark.parametrize("name", [n for n in G_MODELS if models.spec(n).input_size == 28])
def test_logits_are_invariant_on_a_real_image(name, medmnist_dir):
    image = np.load(medmnist_dir / "breastmnist.npz")["test_images"][:2]
    x = (image[..., None].astype(np.float32) / 255.0 - 0.5) / 0.25
    model = _eval_model(name, seed=1)
    forward = nnx.jit(lambda m, x: m(x, tau=1.0))
    assert_equivariant(lambda v: forward(model, v), models.spec(name).group, x,
                       output_kind="invariant", rtol=RTOL)


def test_plain_cnn_is_not_invariant():
    model = _eval_model("cnn")
    x = normal(1, 2, 28, 28, 1)
    errors = equivariance_errors(lambda v: model(v), "p4m", x, output_kind="invariant")
    assert errors[0] == 0.0 and errors[1:].min() > 1e-3
    with pytest.raises(AssertionError):
        assert_equivariant(lambda v: model(v), "p4", x, output_kind="invariant")


def test_train_and_eval_modes_and_temperature():
    model = models.create("p4_dgcnn", num_classes=2, rngs=nnx.Rngs(0), dropout=0.5)
    x = jnp.asarray(normal(2, 4, 8, 8, 1))
    model.train()
    a = model(x, tau=1.0)
    model.eval()
    b1, b2 = model(x, tau=1.0), model(x, tau=1.0)
    chex.assert_trees_all_equal(b1, b2)  # eval is deterministic
    assert not np.allclose(a, b1)
    assert not np.allclose(model(x, tau=30.0), b1)  # the temperature changes the output
    chex.assert_shape(a, (4, 2))


@pytest.mark.parametrize("name,kwargs", [("p4_gcnn", {}), ("p4m_dgcnn", {}),
                                         ("p4m_dgcnn", {"attention": "equivariant"})])
def test_intermediates_match_the_forward_pass_and_are_equivariant(name, kwargs):
    model = _eval_model(name, **kwargs)
    group = models.spec(name).group
    order = dg.get_group(group).order
    x = jnp.asarray(normal(3, 2, 8, 8, 1))
    out = model.intermediates(x, tau=2.0)
    chex.assert_trees_all_close(out["logits"][0], model(x, tau=2.0), rtol=1e-6, atol=1e-6)
    width = model.head.in_features
    assert [f.shape for f in out["features"]] == [(2, 8, 8, width, order)] * 3 + \
        [(2, 4, 4, width, order)] * 3
    if models.spec(name).dynamic:
        per_example = (2, 4, order) if kwargs else (2, 4)
        assert [a.shape for a in out["attention"]] == [per_example] * 6
        for a in out["attention"]:
            np.testing.assert_allclose(np.sum(a, axis=1), 1.0, rtol=1e-6)
    else:
        assert out["attention"] == []
    for i in (0, 5):  # the lifting layer and the last group layer
        errors = equivariance_errors(
            lambda v, i=i: model.intermediates(v, tau=2.0)["features"][i], group, x)
        assert errors.max() <= RTOL, (i, errors)


def test_orientation_readout_sees_every_group_element():
    model = _eval_model("p4m_dgcnn", readout="orientation")
    width, order = 8, 8
    assert model.head.in_features == width * order
    x = jnp.asarray(normal(5, 2, 8, 8, 1))

    def pooled(v):  # what the head sees, as a 1x1 group feature map [B, 1, 1, width, |G|]
        return jnp.mean(model.intermediates(v)["features"][-1], axis=(1, 2), keepdims=True)

    # the head input is equivariant (the group permutes it) ...
    assert_equivariant(pooled, "p4m", x, rtol=RTOL)
    chex.assert_trees_all_close(model(x), model.head(pooled(x).reshape(2, -1)),
                                rtol=1e-6, atol=1e-6)
    # ... and the logits may use the orientation: not invariant (the default readout is)
    errors = equivariance_errors(lambda v: model(v), "p4m", x, output_kind="invariant")
    assert errors[0] == 0.0 and errors[1:].min() > 1e-3
    invariant = _eval_model("p4m_dgcnn")
    assert invariant.head.in_features == width
    with pytest.raises(ValueError, match="readout: expected one of 'invariant', 'orientation'"):
        _eval_model("p4m_gcnn", readout="max")


def test_input_errors_before_compute():
    model = models.create("p4m_gcnn", num_classes=2, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x: expected 3 channels"):
        model(jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="even height and width of at least 4"):
        model(jnp.zeros((1, 27, 27, 3)))
    with pytest.raises(ValueError, match="even height and width of at least 4"):
        model(jnp.zeros((1, 2, 2, 3)))
    dense = models.create("p4m_densenet", num_classes=2, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="multiples of 8 and at least 16, got 28x28"):
        dense(jnp.zeros((1, 28, 28, 3)))
    with pytest.raises(ValueError, match="x: expected 3 channels"):
        dense(jnp.zeros((1, 96, 96, 1)))


def test_analytic_flops_match_xla_cost_analysis():
    import jax

    model = _eval_model("p4m_dgcnn")
    analytic = models.forward_flops(model, (28, 28, 1))
    graph, state = nnx.split(model)
    compiled = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(
        state, jnp.zeros((1, 28, 28, 1))).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert abs(cost["flops"] / analytic - 1) < 0.10, (cost["flops"], analytic)


def test_plain_conv_flops_are_exact():
    from dgcnn_jax.models import jaxpr_flops
    import jax

    w = jnp.zeros((3, 3, 4, 8, 5))
    jaxpr = jax.make_jaxpr(lambda x: dg.group_conv(x, w, "p4m", padding="VALID"))(
        jnp.zeros((2, 10, 10, 4, 8)))
    assert jaxpr_flops(jaxpr) == 2 * (2 * 8 * 8 * 40) * (3 * 3 * 32)


def test_flops_of_a_map_count_every_iteration():
    from dgcnn_jax.execution import per_example_conv
    from dgcnn_jax.models import jaxpr_flops
    import jax

    w = jnp.zeros((6, 3, 3, 4, 5))  # one kernel per example
    pad = ((1, 1), (1, 1))
    x = jnp.zeros((6, 10, 10, 4))
    exact = 2 * (6 * 10 * 10 * 5) * (3 * 3 * 4)
    # one batch-1 convolution per example inside lax.map: 6 iterations counted
    assert jaxpr_flops(jax.make_jaxpr(lambda x: per_example_conv(x, w, pad, impl="fast"))(x)) == exact
    # the batched-matmul implementation also multiplies the padded columns
    patches = jax.make_jaxpr(lambda x: per_example_conv(x, w, pad, impl="patches"))(x)
    assert jaxpr_flops(patches) > exact


def test_wide_dynamic_models_match_static_width_and_flops():
    for dyn, static in (("p4_dgcnn_wide", "p4_gcnn"), ("p4m_dgcnn_wide", "p4m_gcnn")):
        a = _eval_model(dyn)
        b = _eval_model(static)
        assert a.convs[1].out_channels == b.convs[1].out_channels
        ratio = models.forward_flops(a, (28, 28, 1)) / models.forward_flops(b, (28, 28, 1))
        assert 1.0 < ratio < 1.15, (dyn, ratio)  # the attention branch
        assert models.count_params(a) > 3.5 * models.count_params(b)


def _conv_and_dot_precisions(model, precision, **sets):
    """The precision of every convolution and matrix product in a compiled training step
    (forward and backward, custom VJPs included), from the lowered StableHLO."""
    import re

    from experiments import training
    from experiments.configs import get_config, override

    config = override(get_config(), [f"model={model}", "batch_size=2", f"precision={precision}",
                                     *(f"{k}={v}" for k, v in sets.items())])
    mesh = training.make_mesh(config)
    state = training.create_train_state(config, 2, 1, 3, mesh)
    size = models.spec(model).input_size
    batch = {"image": jnp.ones((2, size, size, 1)), "label": jnp.zeros((2,), jnp.int32)}
    text = training.train_step.lower(state, batch, jnp.float32(2.0)).as_text()
    ops = [line for line in text.splitlines()
           if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
    found = []
    for line in ops:  # dot_general: precision = [A, B]; convolution: precision_config = [...]
        m = (re.search(r"precision = \[(\w+), (\w+)\]", line) or
             re.search(r"precision_config = \[#stablehlo<precision (\w+)>, "
                       r"#stablehlo<precision (\w+)>\]", line))
        found.append(m.groups() if m else ("DEFAULT", "DEFAULT"))  # absent: the default
    return found


@pytest.mark.slow
# every model class (SmallGCNN, DenseGNet), static and dynamic, each group, each attention
# and bank form
@pytest.mark.parametrize("name,sets", [*((n, {}) for n in ("cnn", "p4_gcnn", "p4m_gcnn",
                                                            "p4m_dgcnn", "densenet",
                                                            "p4m_ddensenet")),
                                       ("p4_dgcnn", {"attention": "equivariant"}),
                                       ("p4m_dgcnn", {"parameterization": "residual",
                                                      "descriptor": "mean_max"})])
def test_every_conv_and_matmul_runs_at_the_configured_precision(name, sets):
    """On GPUs and TPUs the default precision (TF32, bfloat16 passes) breaks exact
    equivariance; "highest" must reach every convolution and matrix product, the
    backward pass included. (The CPU computes the same for every setting, so this is
    checked on the compiled program, not on numbers.)"""
    highest = _conv_and_dot_precisions(name, "highest", **sets)
    assert len(highest) >= 7 and set(highest) == {("HIGHEST", "HIGHEST")}, set(highest)
    if name in ("cnn", "p4m_dgcnn"):  # the faster setting one option away
        fast = _conv_and_dot_precisions(name, "default", **sets)
        assert len(fast) == len(highest) and set(fast) == {("DEFAULT", "DEFAULT")}


@pytest.mark.slow
def test_exactness_script_on_real_images(medmnist_dir, tmp_path):
    """experiments.exactness (the accelerator check's second part): group models within the
    promise at each precision, the plain CNN far outside it (negative control)."""
    import json

    from experiments import exactness

    rows = exactness.main(["--data-dir", str(medmnist_dir), "--models", "cnn", "p4m_dgcnn",
                           "--precisions", "highest", "default", "--images", "4",
                           "--repeats", "1", "--output", str(tmp_path / "e.json")])
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("cnn", "highest"), ("cnn", "default"), ("p4m_dgcnn", "highest"),
        ("p4m_dgcnn", "default")]
    by = {(r["model"], r["precision"]): r for r in rows}
    assert by[("p4m_dgcnn", "highest")]["exact"] and by[("p4m_dgcnn", "highest")][
        "invariance_error"] <= RTOL
    assert by[("cnn", "highest")]["exact"] is None  # a control, not a claim
    assert by[("cnn", "highest")]["invariance_error"] > 1e-3
    assert all(r["fwd_bwd_ms"] > 0 for r in rows)
    assert json.loads((tmp_path / "e.json").read_text()) == rows
    # mixed precision in orbit execution: within the promise, and the tables render it
    orbit = exactness.main(["--data-dir", str(medmnist_dir), "--models", "p4m_dgcnn",
                            "--precisions", "highest", "--impls", "orbit", "--dtypes",
                            "bfloat16", "--images", "2", "--repeats", "1"])
    assert [(r["impl"], r["dtype"], r["exact"]) for r in orbit] == [
        ("orbit", "bfloat16", True)]
    table = exactness.markdown(rows + orbit)
    assert "highest orbit bfloat16 error" in table and table.count("| p4m_dgcnn |") == 1
    assert "| highest orbit bfloat16 |" in exactness.markdown_headline(rows + orbit)
