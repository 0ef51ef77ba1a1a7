"""The initialisers of ``dgcnn_jax._init`` draw JAX's own values, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgcnn_jax import _init, nn


@pytest.mark.parametrize("shape", [
    (3, 3, 1, 16),        # 144 values: below the smallest program size
    (4, 4, 8, 8),         # 1,024: exactly one program size
    (3, 3, 16, 8, 16),    # a p4m group kernel, 18,432: inside a power-of-two program
    (4, 3, 3, 5, 4, 7),   # a stack of 4 banks with odd sizes
])
def test_he_normal_equals_jax_bitwise(shape):
    key = jax.random.key(11)
    got = np.asarray(_init.he_normal()(key, shape, jnp.float32))
    want = np.asarray(jax.nn.initializers.he_normal()(key, shape, jnp.float32))
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(np.asarray(nn.default_kernel_init(key, shape)), got)


@pytest.mark.parametrize("shape", [(16, 2), (64, 12)])
def test_lecun_normal_equals_jax_bitwise(shape):
    key = jax.random.key(3)
    got = np.asarray(_init.lecun_normal()(key, shape, jnp.float32))
    want = np.asarray(jax.nn.initializers.lecun_normal()(key, shape, jnp.float32))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_other_dtypes_and_bad_shapes():
    key = jax.random.key(0)
    got = _init.he_normal()(key, (3, 5), jnp.bfloat16)  # JAX's own path
    want = jax.nn.initializers.he_normal()(key, (3, 5), jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    with pytest.raises(ValueError, match=r"at least 2 axes.*\(7,\)"):
        _init.he_normal()(key, (7,))


def test_inside_a_traced_program():
    shape = (3, 3, 2, 4)
    got = jax.jit(lambda k: _init.he_normal()(k, shape))(jax.random.key(5))
    want = jax.nn.initializers.he_normal()(jax.random.key(5), shape)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    assert jax.eval_shape(lambda k: _init.lecun_normal()(k, shape), jax.random.key(0)).shape \
        == shape
