"""Functional batch norm."""

import chex
import jax.numpy as jnp
import pytest

import dgcnn_jax as dg
from tests.conftest import normal


def test_moments_and_normalisation():
    x = jnp.asarray(normal(0, 4, 3, 3, 2, 4)) * 2.0 + 5.0
    mean, var = dg.batch_moments(x)
    chex.assert_trees_all_close(mean, jnp.mean(x, axis=(0, 1, 2, 4)), atol=1e-5)
    chex.assert_trees_all_close(var, jnp.var(x, axis=(0, 1, 2, 4)), atol=1e-4)
    y = dg.batch_norm(x, mean, var, jnp.array([2.0, 1.0]), jnp.array([1.0, 0.0]), 0.0)
    chex.assert_trees_all_close(jnp.mean(y, axis=(0, 1, 2, 4)), jnp.array([1.0, 0.0]),
                                atol=1e-5)
    chex.assert_trees_all_close(jnp.std(y, axis=(0, 1, 2, 4)), jnp.array([2.0, 1.0]),
                                atol=1e-4)
    img = jnp.asarray(normal(1, 4, 3, 3, 2))
    m, _ = dg.batch_moments(img)
    chex.assert_shape(m, (2,))


def test_norm_errors():
    with pytest.raises(ValueError, match=r"scale: expected shape \(2,\)"):
        dg.batch_norm(jnp.zeros((1, 2, 2, 2, 4)), jnp.zeros(2), jnp.ones(2), jnp.ones(3), None)
    with pytest.raises(ValueError, match="x: expected"):
        dg.batch_moments(jnp.zeros((2, 2)))


def test_apply_batch_norm_returns_updated_statistics():
    x = jnp.asarray(normal(2, 4, 3, 3, 2, 4)) * 3.0 - 1.0
    run_mean, run_var = jnp.array([0.5, -0.5]), jnp.array([2.0, 0.5])
    scale, bias = jnp.array([2.0, 1.0]), jnp.array([1.0, 0.0])
    y, new_mean, new_var = dg.apply_batch_norm(x, run_mean, run_var, scale, bias,
                                               use_running_average=False, momentum=0.8)
    mean, var = dg.batch_moments(x)
    chex.assert_trees_all_close(y, dg.batch_norm(x, mean, var, scale, bias), atol=1e-6)
    chex.assert_trees_all_close(new_mean, 0.8 * run_mean + 0.2 * mean, atol=1e-6)
    chex.assert_trees_all_close(new_var, 0.8 * run_var + 0.2 * var, atol=1e-6)
    # evaluation: the running statistics normalise and come back unchanged
    y, same_mean, same_var = dg.apply_batch_norm(x, run_mean, run_var, scale, bias,
                                                 use_running_average=True)
    chex.assert_trees_all_close(y, dg.batch_norm(x, run_mean, run_var, scale, bias), atol=1e-6)
    assert same_mean is run_mean and same_var is run_var
    with pytest.raises(ValueError, match="momentum: expected a value in"):
        dg.apply_batch_norm(x, run_mean, run_var, None, None, use_running_average=False,
                            momentum=1.0)
