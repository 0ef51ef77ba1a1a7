"""flax.nnx modules: exact equivariance, modes, initialisation and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dgcnn_jax as dg
from dgcnn_jax import models
from dgcnn_jax.testing import assert_equivariant
from tests.conftest import RTOL, normal


def _call(module, jit):
    if jit:
        f = nnx.jit(lambda m, x: m(x))
        return lambda x: f(module, x)
    return module


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("k,size", [(3, 7), (5, 8)])
def test_conv_modules_are_equivariant(group, k, size, jit):
    order = dg.get_group(group).order
    lift = dg.LiftingConv(3, 4, k, group, rngs=nnx.Rngs(0))
    gconv = dg.GroupConv(4, 5, k, group, rngs=nnx.Rngs(1))
    lift.bias[...] = jnp.arange(4.0)
    gconv.bias[...] = jnp.arange(5.0)
    assert_equivariant(_call(lift, jit), group, normal(0, 2, size, size, 3), rtol=RTOL)
    assert_equivariant(_call(gconv, jit), group, normal(1, 2, size, size, 4, order),
                       input_kind="group", rtol=RTOL)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_batch_norm_and_pool_modules_are_equivariant(group, jit):
    order = dg.get_group(group).order
    x = normal(2, 4, 6, 6, 3, order) * 3.0 + 1.0
    bn = dg.GroupBatchNorm(3, rngs=nnx.Rngs(0))
    bn.scale[...] = jnp.array([1.0, 2.0, 0.5])
    bn.bias[...] = jnp.array([0.1, -0.2, 0.3])
    assert_equivariant(_call(bn, jit), group, x, input_kind="group", rtol=RTOL)  # train mode
    bn.eval()
    assert_equivariant(_call(bn, jit), group, x, input_kind="group", rtol=RTOL)
    pool = dg.GroupPool("max")
    assert_equivariant(_call(pool, jit), group, x, input_kind="group", output_kind="image",
                       rtol=RTOL)


def test_batch_norm_statistics_shared_over_group_axis():
    x = jnp.asarray(normal(3, 8, 5, 5, 2, 8)) * jnp.array([1.0, 4.0])[:, None] + 2.0
    bn = dg.GroupBatchNorm(2, momentum=0.0, rngs=nnx.Rngs(0))
    y = bn(x)
    chex.assert_trees_all_close(jnp.mean(y, axis=(0, 1, 2, 4)), jnp.zeros(2), atol=1e-5)
    chex.assert_trees_all_close(jnp.var(y, axis=(0, 1, 2, 4)), jnp.ones(2), atol=1e-3)
    # momentum 0: running statistics equal the last batch's
    chex.assert_trees_all_close(bn.mean[...], jnp.mean(x, axis=(0, 1, 2, 4)), atol=1e-5)
    chex.assert_trees_all_close(bn.var[...], jnp.var(x, axis=(0, 1, 2, 4)), atol=1e-4)


def test_train_and_eval_modes():
    model = nnx.Sequential(dg.GroupConv(2, 2, 3, "p4", rngs=nnx.Rngs(0)),
                           dg.GroupBatchNorm(2, rngs=nnx.Rngs(0)))
    x = jnp.asarray(normal(4, 2, 5, 5, 2, 4)) + 3.0
    model.eval()
    bn = model.layers[1]
    before = bn.mean[...]
    y_eval = model(x)
    chex.assert_trees_all_equal(bn.mean[...], before)  # eval: statistics untouched
    model.train()
    y_train = model(x)
    assert not np.allclose(bn.mean[...], before)
    assert not np.allclose(y_eval, y_train)


def test_module_under_nnx_jit_does_not_retrace():
    layer = dg.GroupConv(2, 3, 3, "p4m", rngs=nnx.Rngs(0))

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def step(m, x):
        return m(x)

    step(layer, jnp.ones((1, 6, 6, 2, 8)))
    step(layer, jnp.zeros((1, 6, 6, 2, 8)))
    chex.clear_trace_counter()


def test_he_initialisation_uses_group_fan_in():
    k, cin, cout = 3, 16, 64
    gconv = dg.GroupConv(cin, cout, k, "p4m", rngs=nnx.Rngs(0))
    fan_in = k * k * cin * 8
    np.testing.assert_allclose(np.std(gconv.kernel[...]), np.sqrt(2.0 / fan_in), rtol=0.03)
    lift = dg.LiftingConv(cin, cout, k, "p4m", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.std(lift.kernel[...]), np.sqrt(2.0 / (k * k * cin)), rtol=0.03)
    chex.assert_shape(gconv.kernel[...], (k, k, cin, 8, cout))
    chex.assert_trees_all_equal(gconv.bias[...], jnp.zeros(cout))


def test_gradients_reach_parameters():
    layer = dg.GroupConv(2, 3, 3, "p4", rngs=nnx.Rngs(0))
    x = jnp.asarray(normal(5, 2, 5, 5, 2, 4))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert float(jnp.abs(grads["kernel"][...]).sum()) > 0
    assert float(jnp.abs(grads["bias"][...]).sum()) > 0


def test_module_errors():
    with pytest.raises(ValueError, match="in_channels: expected a positive int"):
        dg.GroupConv(0, 3, 3, "p4", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown group"):
        dg.LiftingConv(1, 3, 3, "c4", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="padding: 'SAME' with an even kernel size"):
        dg.LiftingConv(1, 3, 4, "p4", rngs=nnx.Rngs(0))
    layer = dg.GroupConv(2, 3, 3, "p4", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x: group axis \(last\) has size 8, expected 4"):
        layer(jnp.zeros((1, 5, 5, 2, 8)))
    with pytest.raises(ValueError, match=r"x: expected \[batch, height, width, 3"):
        dg.GroupBatchNorm(3, rngs=nnx.Rngs(0))(jnp.zeros((1, 5, 5, 2, 8)))
    with pytest.raises(ValueError, match="kind"):
        dg.GroupPool("median")


def test_numpy_integers_empty_batches_and_integer_images():
    layer = dg.DynamicGroupConv(np.int64(2), np.int64(3), np.int64(3), "p4",
                                num_kernels=np.int64(2), rngs=nnx.Rngs(0))
    assert type(layer.in_channels) is int and layer.num_kernels == 2
    model = models.create("cnn", num_classes=np.int64(8), in_channels=np.int64(3),
                             rngs=nnx.Rngs(0))
    assert model.num_classes == 8
    with pytest.raises(ValueError, match=r"x: the batch is empty \(shape \(0, 5, 5, 2, 4\)\)"):
        layer(jnp.zeros((0, 5, 5, 2, 4)))
    with pytest.raises(ValueError, match="x: expected a floating-point array, got dtype uint8"):
        dg.LiftingConv(1, 2, 3, "p4", rngs=nnx.Rngs(0))(jnp.zeros((1, 5, 5, 1), jnp.uint8))
    with pytest.raises(ValueError, match="in_channels: expected a positive int, got True"):
        dg.GroupConv(True, 2, 3, "p4", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32],
                         ids=["float16", "bfloat16", "float32"])
def test_layers_compute_in_dtype_and_keep_float32_parameters_and_statistics(dtype):
    """flax's ``dtype`` (computation) and ``param_dtype`` (storage): float32 parameters,
    the convolutions in ``dtype``, batch-norm statistics and attention in float32."""
    x = jnp.asarray(normal(4, 2, 6, 6, 3))
    layers = [dg.LiftingConv(3, 4, 3, "p4", dtype=dtype, rngs=nnx.Rngs(0)),
              dg.GroupConv(4, 2, 3, "p4", dtype=dtype, rngs=nnx.Rngs(0)),
              dg.DynamicLiftingConv(3, 4, 3, "p4", num_kernels=2, dtype=dtype,
                                    rngs=nnx.Rngs(0)),
              dg.DynamicGroupConv(4, 2, 3, "p4", num_kernels=2, dtype=dtype,
                                  targets=("banks", "positions"), rngs=nnx.Rngs(0))]
    f = None
    for layer in layers:
        params = nnx.state(layer, nnx.Param)
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
        inp = x if isinstance(layer, (dg.LiftingConv, dg.DynamicLiftingConv)) else f
        y = layer(inp)  # a float32 input is cast to dtype
        assert y.dtype == dtype, type(layer).__name__
        f = y.astype(jnp.float32)
        if isinstance(layer, dg.DynamicGroupConv):
            assert layer.attention_weights(inp).dtype == jnp.float32
    norm = dg.GroupBatchNorm(2, dtype=dtype, rngs=nnx.Rngs(0))
    out = norm(y)
    assert out.dtype == dtype and norm.mean[...].dtype == norm.var[...].dtype == jnp.float32
    # the statistics of a reduced-precision input are those of its float32 copy
    ref = dg.GroupBatchNorm(2, rngs=nnx.Rngs(0))
    ref(y.astype(jnp.float32))
    np.testing.assert_array_equal(norm.mean[...], ref.mean[...])
    with pytest.raises(ValueError, match="dtype: expected a floating dtype, got int32"):
        dg.GroupConv(4, 2, 3, "p4", dtype=jnp.int32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="param_dtype: expected a floating dtype, got 'f4x'"):
        dg.GroupBatchNorm(2, param_dtype="f4x")
