"""``impl="orbit"``: lifting and group convolutions that are equivariant bit for bit, in
float32 and bfloat16, and equal to the filter-bank execution to 1e-5 in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dgcnn_jax as dg
from dgcnn_jax import execution

GROUPS = ("p4", "p4m")
DTYPES = (jnp.float32, jnp.bfloat16)


def _inputs(group, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n = group.order
    return (jnp.asarray(rng.standard_normal((2, 7, 7, 3)), dtype),
            jnp.asarray(rng.standard_normal((3, 3, 3, 4)), dtype),
            jnp.asarray(rng.standard_normal((2, 7, 7, 3, n)), dtype),
            jnp.asarray(rng.standard_normal((3, 3, 3, n, 4)), dtype))


def _assert_bitwise_equivariant(fn, x, group, move):
    """``fn(L_g x)`` equals ``L_g fn(x)`` exactly (``array_equal``) for every ``g``."""
    y = np.asarray(fn(x))
    for g in range(group.order):
        moved = np.asarray(fn(move(x, g)))
        want = np.asarray(group.transform_feature_map(y, g))
        assert moved.dtype == want.dtype and np.array_equal(moved, want), (group.name, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", GROUPS)
def test_orbit_convolutions_are_equivariant_bit_for_bit(name, dtype):
    group = dg.get_group(name)
    x, k, f, kg = _inputs(group, dtype)
    lift = jax.jit(lambda x: dg.lifting_conv(x, k, group, impl="orbit"))
    conv = jax.jit(lambda f: dg.group_conv(f, kg, group, impl="orbit"))
    _assert_bitwise_equivariant(lift, x, group, group.transform_image)
    _assert_bitwise_equivariant(conv, f, group, group.transform_feature_map)
    assert lift(x).dtype == dtype and conv(f).dtype == dtype
    # the output of a differentiated program too (the copies rematerialised for the VJP)
    primal = jax.jit(lambda f: jax.vjp(lambda f: dg.group_conv(f, kg, group, impl="orbit"),
                                       f)[0])
    _assert_bitwise_equivariant(primal, f, group, group.transform_feature_map)


@pytest.mark.parametrize("name", GROUPS)
def test_the_filter_bank_execution_is_not_bitwise_equivariant(name):
    """Negative control: the same check fails for the filter bank (``impl="xla"``) in
    float32 on random inputs, for some element: the bitwise test has teeth."""
    group = dg.get_group(name)
    _, _, f, kg = _inputs(group, jnp.float32, seed=3)
    conv = jax.jit(lambda f: dg.group_conv(f, kg, group, impl="xla"))
    y = np.asarray(conv(f))
    assert any(not np.array_equal(np.asarray(conv(group.transform_feature_map(f, g))),
                                  np.asarray(group.transform_feature_map(y, g)))
               for g in range(group.order))


@pytest.mark.parametrize("name", GROUPS)
def test_orbit_equals_the_filter_bank_values_and_gradients(name):
    group = dg.get_group(name)
    x, k, f, kg = _inputs(group, jnp.float32, seed=1)

    def loss(op, impl):
        return lambda a, b: jnp.sum(jnp.sin(op(a, b, group, impl=impl)))

    for op, a, b in ((dg.lifting_conv, x, k), (dg.group_conv, f, kg)):
        orbit, bank = op(a, b, group, impl="orbit"), op(a, b, group, impl="xla")
        scale = float(jnp.abs(bank).max())
        np.testing.assert_allclose(orbit, bank, atol=1e-5 * scale, rtol=0)
        got = jax.grad(loss(op, "orbit"), argnums=(0, 1))(a, b)
        want = jax.grad(loss(op, "xla"), argnums=(0, 1))(a, b)
        for u, v in zip(got, want):
            np.testing.assert_allclose(u, v, atol=1e-5 * float(jnp.abs(v).max()), rtol=0)


def test_orbit_layers_and_refusals():
    group = dg.get_group("p4m")
    layer = dg.GroupConv(3, 4, 3, group, impl="orbit", rngs=nnx.Rngs(0))
    _, _, f, _ = _inputs(group, jnp.float32)
    _assert_bitwise_equivariant(jax.jit(layer), f, group, group.transform_feature_map)
    np.testing.assert_allclose(layer(f), dg.GroupConv(3, 4, 3, group, rngs=nnx.Rngs(0))(f),
                               atol=1e-5 * float(jnp.abs(layer(f)).max()), rtol=0)
    with pytest.raises(ValueError, match="'orbit' executes lifting and group convolutions"):
        execution.conv2d(f[..., 0], jnp.ones((3, 3, 3, 2)), [(1, 1), (1, 1)], impl="orbit")
    assert execution.resolve("orbit", "dynamic") == "orbit"


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32],
                         ids=["float16", "bfloat16", "float32"])
def test_every_floating_dtype_is_accepted_and_integers_are_not(dtype):
    group = dg.get_group("p4")
    x, k, f, kg = _inputs(group, jnp.float32)
    assert dg.lifting_conv(x.astype(dtype), k.astype(dtype), group).dtype == dtype
    assert dg.group_conv(f.astype(dtype), kg.astype(dtype), group).dtype == dtype
    # a reduced-precision input with float32 weights computes in float32 (JAX promotion)
    assert dg.group_conv(f.astype(dtype), kg, group).dtype == jnp.float32
    with pytest.raises(ValueError, match="expected a floating-point array, got dtype int32"):
        dg.group_conv(f.astype(jnp.int32), kg, group)


FORMS = {"published": {}, "mean_std": {"descriptor": "mean_std"},
         "third_form": {"targets": ("banks", "positions", "in_fields", "out_fields")},
         "assignment": {"targets": ("field_banks", "positions"), "bank_mix": "signed",
                        "bank_start": "assignment"}}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name", GROUPS)
def test_dynamic_orbit_layers_are_equivariant_bit_for_bit(name, form):
    """Invariant attention from a descriptor reduced in sorted order (equal bit for bit
    on a transformed input), each example's mixed kernel through the orbit."""
    group = dg.get_group(name)
    rng = np.random.default_rng(2)
    for cls, shape in ((dg.DynamicLiftingConv, (2, 7, 7, 3)),
                       (dg.DynamicGroupConv, (2, 7, 7, 3, group.order))):
        move = group.transform_image if len(shape) == 4 else group.transform_feature_map
        layer = cls(3, 4, 3, group, num_kernels=4, impl="orbit", rngs=nnx.Rngs(0),
                    **FORMS[form])
        fn = jax.jit(lambda x: layer(x, tau=1.0))
        for dtype in DTYPES:
            x = jnp.asarray(rng.standard_normal(shape), dtype)
            _assert_bitwise_equivariant(fn, x, group, move)
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        reference = cls(3, 4, 3, group, num_kernels=4, rngs=nnx.Rngs(0), **FORMS[form])
        want = reference(x, tau=1.0)
        np.testing.assert_allclose(fn(x), want, atol=1e-5 * float(jnp.abs(want).max()), rtol=0)
        if form == "published" and cls is dg.DynamicGroupConv:  # negative control
            plain = jax.jit(lambda x: reference(x, tau=1.0))
            y = np.asarray(plain(x))
            assert any(not np.array_equal(np.asarray(plain(move(x, g))),
                                          np.asarray(group.transform_feature_map(y, g)))
                       for g in range(group.order))


def test_dynamic_orbit_function_and_refusals():
    group = dg.get_group("p4m")
    rng = np.random.default_rng(4)
    f = jnp.asarray(rng.standard_normal((3, 7, 7, 2, 8)), jnp.float32)
    kernels = jnp.asarray(rng.standard_normal((4, 3, 3, 2, 8, 5)), jnp.float32)
    biases = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
    weights = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, 4)), jnp.float32))

    def loss(impl):
        return lambda k: jnp.sum(jnp.sin(dg.dynamic.dynamic_conv(f, k, biases, weights, group,
                                                                 impl=impl)))

    got, want = (dg.dynamic.dynamic_conv(f, kernels, biases, weights, group, impl=i)
                 for i in ("orbit", "fast"))
    np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.abs(want).max()), rtol=0)
    g1, g2 = jax.grad(loss("orbit"))(kernels), jax.grad(loss("fast"))(kernels)
    np.testing.assert_allclose(g1, g2, atol=1e-5 * float(jnp.abs(g2).max()), rtol=0)
    with pytest.raises(ValueError, match="impl: 'orbit' does not apply to equivariant"):
        dg.DynamicGroupConv(2, 2, 3, group, attention="equivariant", impl="orbit",
                            rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'orbit' moves the input of lifting and group"):
        execution.per_example_conv(f[..., 0], jnp.ones((3, 3, 3, 2, 2)), [(1, 1), (1, 1)],
                                   impl="orbit")


@pytest.mark.slow
def test_the_trainer_runs_a_model_in_orbit_execution(tmp_path, medmnist_dir):
    from dgcnn_jax import models
    from experiments.configs import get_config, override, validate

    from .training_helpers import FAST, run_train

    # a registered model in orbit execution: the same logits as the default execution
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 28, 28, 1)), jnp.float32)
    orbit = models.create("p4m_dgcnn", num_classes=2, impl="orbit", rngs=nnx.Rngs(0))
    plain = models.create("p4m_dgcnn", num_classes=2, rngs=nnx.Rngs(0))
    orbit.eval(), plain.eval()
    want = plain(x, tau=1.0)
    np.testing.assert_allclose(orbit(x, tau=1.0), want,
                               atol=1e-5 * float(jnp.abs(want).max()), rtol=0)
    with pytest.raises(ValueError, match="impl: expected one of"):
        validate(override(get_config(), ["impl=winograd"]))
    with pytest.raises(ValueError, match="dtype: expected one of float32, bfloat16, float16"):
        validate(override(get_config(), ["dtype=float64"]))
    # mixed precision: bfloat16 convolutions, float32 parameters and optimizer state
    out = run_train(tmp_path / "run", medmnist_dir, FAST + ["impl=orbit", "dtype=bfloat16",
                                                            "epochs=1", "max_steps=2"])
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["impl"], results["dtype"], results["steps"]) == ("orbit", "bfloat16", 2)
    stored = _checkpoint_dtypes(tmp_path / "run")
    assert stored == {"float32"}, stored


def _checkpoint_dtypes(workdir) -> set[str]:
    """The dtypes of the floating arrays in the run's latest checkpoint (parameters, batch
    statistics and optimizer state), restored as stored."""
    import orbax.checkpoint as ocp

    from experiments.checkpoints import Checkpoints

    manager = Checkpoints(workdir).latest
    raw = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        model=ocp.args.StandardRestore(), train=ocp.args.StandardRestore()))
    leaves = jax.tree.leaves({"model": raw["model"], "train": raw["train"]})
    assert len(leaves) > 10
    dtypes = {str(np.asarray(v).dtype) for v in leaves}
    return {d for d in dtypes if "float" in d}  # bfloat16 is no numpy floating subtype


@pytest.mark.parametrize("form", ["published", "third_form"])
def test_bfloat16_layers_in_orbit_execution_are_equivariant_bit_for_bit(form):
    """Mixed precision (float32 parameters, bfloat16 convolutions, float32 attention): the
    orbit layers stay equivariant bit for bit, under jit and in a differentiated program;
    the filter bank in bfloat16 does not (negative control)."""
    group = dg.get_group("p4m")
    rng = np.random.default_rng(8)
    f = jnp.asarray(rng.standard_normal((2, 7, 7, 3, group.order)), jnp.float32)
    for impl in ("orbit", "auto"):
        layer = dg.DynamicGroupConv(3, 4, 3, group, num_kernels=4, impl=impl,
                                    dtype=jnp.bfloat16, rngs=nnx.Rngs(0), **FORMS[form])
        static = dg.GroupConv(3, 4, 3, group, impl=impl, dtype=jnp.bfloat16,
                              rngs=nnx.Rngs(0))
        for module in (layer, static):
            fn = jax.jit(lambda x, m=module: m(x))
            primal = jax.jit(lambda x, m=module: jax.vjp(lambda v: m(v), x)[0])
            assert fn(f).dtype == jnp.bfloat16
            if impl == "orbit":
                _assert_bitwise_equivariant(fn, f, group, group.transform_feature_map)
                _assert_bitwise_equivariant(primal, f, group, group.transform_feature_map)
            else:
                y = np.asarray(fn(f), np.float32)
                assert any(not np.array_equal(
                    np.asarray(fn(group.transform_feature_map(f, g)), np.float32),
                    np.asarray(group.transform_feature_map(y, g))) for g in range(8))


def test_a_bfloat16_model_in_orbit_execution_is_invariant():
    """A registered model computing in bfloat16: float32 logits and parameters; in orbit
    execution its logits are invariant within the float32 promise (what is left is the
    float32 global mean's summation order), the filter bank's are not."""
    from dgcnn_jax import models
    from dgcnn_jax.testing import equivariance_errors

    x = jnp.asarray(np.random.default_rng(6).standard_normal((4, 28, 28, 1)), jnp.float32)
    errors = {}
    for impl in ("orbit", "auto"):
        model = models.create("p4m_dgcnn", num_classes=2, impl=impl, dtype="bfloat16",
                              rngs=nnx.Rngs(0))
        model.eval()
        params = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
        assert model(x).dtype == jnp.float32
        errors[impl] = float(equivariance_errors(jax.jit(lambda v, m=model: m(v)),
                                                 dg.get_group("p4m"), x, input_kind="image",
                                                 output_kind="invariant").max())
    assert errors["orbit"] <= 1e-5 < errors["auto"], errors


@pytest.mark.parametrize("conv_impl", ["fast", "xla"])
def test_the_orbit_is_bitwise_equivariant_on_every_convolution_path(conv_impl):
    """The orbit's one correlation takes the path ``"auto"`` picks by size (large inputs:
    the custom-VJP path, per example from 32 channels): each path is bitwise equivariant
    here at a small size, 32 channels in and out, and the paths agree to 1e-5."""
    from dgcnn_jax import ops

    group = dg.get_group("p4m")
    rng = np.random.default_rng(9)
    f = jnp.asarray(rng.standard_normal((2, 6, 6, 4, 8)), jnp.float32)
    kg = jnp.asarray(rng.standard_normal((3, 3, 4, 8, 32)), jnp.float32)
    pad = [(1, 1), (1, 1)]
    fn = jax.jit(lambda v: ops._orbit(v, kg, group, pad, 1, "highest", conv_impl))
    _assert_bitwise_equivariant(fn, f, group, group.transform_feature_map)
    primal = jax.jit(lambda v: jax.vjp(lambda u: ops._orbit(u, kg, group, pad, 1, "highest",
                                                            conv_impl), v)[0])
    _assert_bitwise_equivariant(primal, f, group, group.transform_feature_map)
    want = dg.group_conv(f, kg, group, impl="xla")
    np.testing.assert_allclose(fn(f), want, atol=1e-5 * float(jnp.abs(want).max()), rtol=0)
