"""Omni-dimensional invariant attention (banks, kernel positions, input and output
fields): exact equivariance for every element of p4 and p4m, with negative controls."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgcnn_jax import dynamic, execution, testing
from dgcnn_jax.dynamic import omni_attention, omni_conv, omni_param_shapes

from .conftest import RTOL, normal

CIN, COUT, K, KSIZE = 3, 4, 3, 3
ALL = ("banks", "positions", "in_fields", "out_fields")


def _setup(group, lifting, targets, num_kernels=K, descriptor="mean_max", seed=0):
    order = {"p4": 4, "p4m": 8}[group]
    kshape = (num_kernels, KSIZE, KSIZE, CIN, *(() if lifting else (order,)), COUT)
    kernels = jnp.asarray(normal(seed, *kshape))
    biases = jnp.asarray(normal(seed + 1, num_kernels, COUT))
    size = CIN * len(dynamic.DESCRIPTORS[descriptor])
    shapes = omni_param_shapes(targets, size, 8, num_kernels, KSIZE, CIN, COUT)
    params = {name: jnp.asarray(normal(seed + 2 + i, *shape))
              for i, (name, shape) in enumerate(sorted(shapes.items()))}
    x = jnp.asarray(normal(seed + 99, 2, 10, 10, CIN, *(() if lifting else (order,))))
    return kernels, biases, params, x


def _layer(group, kernels, biases, params, targets, *, bank_mix="softmax", impl="auto",
           descriptor="mean_max"):
    def fn(x):
        att = omni_attention(x, params, targets, 2.0, kernel_size=KSIZE,
                             descriptor=descriptor, bank_mix=bank_mix,
                             num_kernels=kernels.shape[0])
        return omni_conv(x, kernels, biases, att, group, impl=impl)
    return fn


# every non-empty set of targets; with one kernel, the sets without banks too; the
# per-field bank mixture with the others
TARGET_SETS = [t for n in range(1, 5) for t in itertools.combinations(ALL, n)] + [
    ("field_banks",), ("field_banks", "positions", "in_fields", "out_fields")]


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("targets", TARGET_SETS, ids="+".join)
def test_every_combination_is_exactly_equivariant(group, lifting, targets):
    num_kernels = K if "banks" in targets or "field_banks" in targets else 1
    kernels, biases, params, x = _setup(group, lifting, targets, num_kernels)
    fn = jax.jit(_layer(group, kernels, biases, params, targets))
    errors = testing.assert_equivariant(fn, group, x, input_kind="image" if lifting else
                                        "group", rtol=RTOL)
    assert errors.shape == ({"p4": 4, "p4m": 8}[group],)


@pytest.mark.parametrize("impl", ["xla", "fast", "patches"])
@pytest.mark.parametrize("bank_mix", ["softmax", "signed"])
def test_every_per_example_impl_and_bank_mix(impl, bank_mix):
    kernels, biases, params, x = _setup("p4m", False, ALL)
    fn = _layer("p4m", kernels, biases, params, ALL, bank_mix=bank_mix, impl=impl)
    testing.assert_equivariant(fn, "p4m", x, input_kind="group", rtol=RTOL)
    # with gradients: the gradient of an invariant loss is equivariant in x
    grad = jax.jit(jax.grad(lambda v: jnp.sum(fn(v) ** 2)))
    testing.assert_equivariant(grad, "p4m", x, input_kind="group", output_kind="group",
                               rtol=RTOL)
    # every impl computes the same layer
    ref = _layer("p4m", kernels, biases, params, ALL, bank_mix=bank_mix, impl="xla")(x)
    np.testing.assert_allclose(fn(x), ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def test_the_modulated_kernel_by_hand():
    kernels, biases, params, x = _setup("p4", True, ALL)
    att = omni_attention(x, params, ALL, 2.0, kernel_size=KSIZE, descriptor="mean_max")
    assert att["banks"].shape == (2, K) and att["positions"].shape == (2, KSIZE, KSIZE)
    assert att["in_fields"].shape == (2, CIN) and att["out_fields"].shape == (2, COUT)
    np.testing.assert_allclose(att["banks"].sum(axis=1), 1.0, rtol=1e-6)
    for name in ("positions", "in_fields", "out_fields"):
        assert bool(jnp.all((att[name] > 0) & (att[name] < 1)))
    w = dynamic.modulated_kernels(kernels, att)
    b = 1  # the second example, every entry by the formula
    want = np.einsum("k,kuvio->uvio", np.asarray(att["banks"][b]), np.asarray(kernels))
    want = (want * np.asarray(att["positions"][b])[:, :, None, None]
            * np.asarray(att["in_fields"][b])[None, None, :, None]
            * np.asarray(att["out_fields"][b])[None, None, None, :])
    np.testing.assert_allclose(w[b], want, rtol=1e-5, atol=1e-6)
    # signed mixing: L1-normalised, negative weights allowed
    signed = omni_attention(x, params, ("banks",), 2.0, kernel_size=KSIZE,
                            descriptor="mean_max", bank_mix="signed")["banks"]
    np.testing.assert_allclose(jnp.abs(signed).sum(axis=1), 1.0, rtol=1e-5)


def test_banks_mixed_per_output_field_and_the_assignment_start():
    kernels, biases, params, x = _setup("p4m", False, ("field_banks",))
    att = omni_attention(x, params, ("field_banks",), 2.0, kernel_size=KSIZE,
                         descriptor="mean_max", num_kernels=K)
    assert att["field_banks"].shape == (2, K, COUT)
    np.testing.assert_allclose(att["field_banks"].sum(axis=1), 1.0, rtol=1e-6)
    w = dynamic.modulated_kernels(kernels, att)
    want = np.einsum("ko,kuvigo->uvigo", np.asarray(att["field_banks"][1]),
                     np.asarray(kernels))
    np.testing.assert_allclose(w[1], want, rtol=1e-5, atol=1e-6)
    # the assignment: field o on bank o mod K
    a = np.asarray(dynamic.bank_assignment(3, 7))
    assert a.shape == (3, 7) and (a.sum(axis=0) == 1).all()
    assert [int(a[:, o].argmax()) for o in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    from flax import nnx

    import dgcnn_jax as dg

    layer = dg.DynamicGroupConv(4, 6, group="p4m", num_kernels=3, targets=("field_banks",),
                                bank_mix="signed", bank_start="assignment",
                                rngs=nnx.Rngs(0))
    v = jnp.asarray(normal(7, 4, 8, 8, 4, 8))
    start = np.asarray(layer.attention_weights(v, 1.0))  # [B, K, C_out]
    assert start.shape == (4, 3, 6)
    for o in range(6):  # each field starts mostly on its own bank
        assert (start[:, o % 3, o] > 0.6).all(), start[:, :, o]
    testing.assert_equivariant(lambda v: layer(v, tau=1.0), "p4m", v, input_kind="group",
                               rtol=RTOL)
    with pytest.raises(ValueError, match="it needs the 'field_banks' target"):
        dg.DynamicGroupConv(4, 6, bank_start="assignment", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'banks' and 'field_banks' are two ways"):
        dg.DynamicGroupConv(4, 6, targets=("banks", "field_banks"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'banks' and 'field_banks' are two ways"):
        omni_param_shapes(("banks", "field_banks"), 6, 8, K, KSIZE, CIN, COUT)
    with pytest.raises(ValueError, match="num_kernels: needed"):
        omni_attention(x, params, ("field_banks",), 2.0, kernel_size=KSIZE,
                       descriptor="mean_max")


def test_bank_attention_alone_equals_the_published_dynamic_layer():
    kernels, biases, params, x = _setup("p4m", False, ("banks",), descriptor="mean")
    att = omni_attention(x, params, ("banks",), 2.0, kernel_size=KSIZE, descriptor="mean")
    weights = dynamic.invariant_attention(x, params["w1"], params["b1"], params["w_banks"],
                                          params["b_banks"], 2.0, "mean")
    np.testing.assert_allclose(att["banks"], weights, rtol=1e-6)
    want = dynamic.dynamic_conv(x, kernels, biases, weights, "p4m")
    got = omni_conv(x, kernels, biases, att, "p4m")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_negative_controls_fail_the_same_check():
    kernels, biases, params, x = _setup("p4m", False, ALL)

    def position_after_the_bank(v):  # the position attention applied to the rotated
        att = omni_attention(v, params, ALL, 2.0, kernel_size=KSIZE, descriptor="mean_max")
        w = dynamic.modulated_kernels(kernels, {"banks": att["banks"]})  # filters: wrong
        from dgcnn_jax.filters import group_filter_bank

        bank = jax.vmap(lambda k: group_filter_bank(k, "p4m"))(w)  # [B, k, k, C, G, O, G]
        bank = bank * att["positions"][:, :, :, None, None, None, None]
        mats = bank.reshape(bank.shape[0], KSIZE, KSIZE, -1, bank.shape[-2] * 8)
        pad = ((1, 1), (1, 1))
        y = execution.per_example_conv(v.reshape(*v.shape[:3], -1), mats, pad)
        return y.reshape(*y.shape[:3], COUT, 8)

    with pytest.raises(AssertionError, match="not p4m-equivariant"):
        testing.assert_equivariant(position_after_the_bank, "p4m", x, input_kind="group",
                                   rtol=RTOL)

    def attention_from_a_corner(v):  # a descriptor that is not invariant
        att = omni_attention(v[:, :3, :3], params, ALL, 2.0, kernel_size=KSIZE,
                             descriptor="mean_max")
        return omni_conv(v, kernels, biases, att, "p4m")

    with pytest.raises(AssertionError, match="not p4m-equivariant"):
        testing.assert_equivariant(attention_from_a_corner, "p4m", x, input_kind="group",
                                   rtol=RTOL)


def test_clear_errors():
    kernels, biases, params, x = _setup("p4m", False, ALL)
    att = omni_attention(x, params, ALL, 2.0, kernel_size=KSIZE, descriptor="mean_max")
    with pytest.raises(ValueError, match="targets: expected"):
        omni_param_shapes(("banks", "banks"), 6, 8, K, KSIZE, CIN, COUT)
    with pytest.raises(ValueError, match="targets"):
        omni_param_shapes(("channels",), 6, 8, K, KSIZE, CIN, COUT)
    with pytest.raises(ValueError, match="bank_mix"):
        omni_attention(x, params, ALL, 2.0, kernel_size=KSIZE, descriptor="mean_max",
                       bank_mix="l2")
    with pytest.raises(ValueError, match="3 kernel banks need attention over 'banks'"):
        omni_conv(x, kernels, biases, {"positions": att["positions"]}, "p4m")
    with pytest.raises(ValueError, match="impl: 'linear' mixes K banks"):
        omni_conv(x, kernels, biases, att, "p4m", impl="linear")
    with pytest.raises(ValueError, match="attention\\['banks'\\]: expected 2 rows"):
        omni_conv(x, kernels, biases, {**att, "banks": att["banks"][:1]}, "p4m")
    with pytest.raises(ValueError, match="tau"):
        omni_attention(x, params, ALL, 0.0, kernel_size=KSIZE, descriptor="mean_max")


LAYER_SETS = [("banks", "positions", "in_fields", "out_fields"), ("positions",),
              ("banks", "out_fields"), ("in_fields", "out_fields")]


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("targets", LAYER_SETS, ids="+".join)
def test_layers_with_every_kind_of_target_are_exactly_equivariant(group, targets):
    from flax import nnx

    import dgcnn_jax as dg

    k = 3 if "banks" in targets else 1
    lift = dg.DynamicLiftingConv(2, 4, group=group, num_kernels=k, targets=targets,
                                 descriptor="mean_max", rngs=nnx.Rngs(0))
    conv = dg.DynamicGroupConv(4, 4, group=group, num_kernels=k, targets=targets,
                               bank_mix="signed" if "banks" in targets else "softmax",
                               rngs=nnx.Rngs(1))
    for name in targets:
        if name != "banks":
            assert getattr(conv, f"att_w_{name}")[...].shape[1] == {
                "positions": 9, "in_fields": 4, "out_fields": 4}[name]
    assert (conv.att_w2 is not None) == ("banks" in targets)
    x = jnp.asarray(normal(5, 2, 8, 8, 2))
    fn = nnx.jit(lambda v: conv(jax.nn.relu(lift(v, tau=3.0)), tau=3.0))
    testing.assert_equivariant(fn, group, x, rtol=RTOL)
    weights = conv.attention_weights(lift(x), 1.0)
    assert weights.shape == (2, k)
    if k == 1:  # one kernel: weight 1, no uncertainty to report
        assert float(dynamic.attention_entropy(weights)) == 0.0


def test_layer_option_errors():
    from flax import nnx

    import dgcnn_jax as dg

    with pytest.raises(ValueError, match="4 kernel banks need attention over 'banks'"):
        dg.DynamicGroupConv(4, 4, targets=("positions",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="invariant attention only"):
        dg.DynamicGroupConv(4, 4, targets="banks,positions", attention="equivariant",
                            rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="take the 'banks' parameterization"):
        dg.DynamicGroupConv(4, 4, bank_mix="signed", parameterization="residual",
                            rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="impl: 'linear' mixes K responses"):
        dg.DynamicGroupConv(4, 4, targets=("banks", "out_fields"), impl="linear",
                            rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="targets"):
        dg.DynamicGroupConv(4, 4, targets=("banks", "pixels"), rngs=nnx.Rngs(0))
    # the published layer is unchanged: its parameters and names
    plain = dg.DynamicGroupConv(4, 4, rngs=nnx.Rngs(0))
    assert plain.targets == ("banks",) and not plain.omni
    names = {"/".join(map(str, path)) for path, _ in nnx.iter_graph(plain)
             if isinstance(_, nnx.Param)}
    assert names == {"kernels", "biases", "att_w1", "att_b1", "att_w2", "att_b2"}


@pytest.mark.slow
def test_the_registered_third_form_trains_and_reports_its_attention(tmp_path, medmnist_dir):
    import json

    from .training_helpers import FAST, run_train

    model = "p4m_odgcnn"  # (its one-kernel form: the layer tests above)
    sets = FAST + [f"model={model}", "epochs=1", "max_steps=2", "bank_mix=signed",
                   "attention_targets=field_banks,positions,in_fields,out_fields",
                   "bank_start=assignment"]  # the sweep's p4m_odgcnn_assign
    done = run_train(tmp_path / "run", medmnist_dir, sets)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    layers = record["dynamic_layers"]
    assert [d["layer"] for d in layers] == [f"convs/{i}" for i in range(1, 6)]  # static stem
    for d in layers:  # signed weights: entropy is not defined for them, spread is
        assert np.isfinite(d["attention_spread"]) and 0 < d["bank_common_share"] <= 1
    from experiments.configs import get_config, model_kwargs, override

    kwargs = model_kwargs(override(get_config(), [f"model={model}",
                                                  "attention_targets=banks,out_fields"]))
    assert kwargs["targets"] == "banks,out_fields" and "attention_targets" not in kwargs
