"""Filter banks: homomorphism T(g)T(h) = T(gh) and the stacking convention."""

import itertools

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import dgcnn_jax as dg
from tests.conftest import normal

GROUPS = [dg.P4, dg.P4M]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_group_kernel_transform_is_homomorphism(group, k):
    psi = jnp.asarray(normal(0, k, k, 2, group.order, 3))
    for g, h in itertools.product(range(group.order), repeat=2):
        lhs = dg.transform_group_kernel(dg.transform_group_kernel(psi, h, group), g, group)
        rhs = dg.transform_group_kernel(psi, group.multiply(g, h), group)
        chex.assert_trees_all_equal(lhs, rhs)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("k", [2, 3])
def test_group_bank_stacks_transformed_kernels(group, k):
    psi = jnp.asarray(normal(1, k, k, 2, group.order, 3))
    bank = dg.group_filter_bank(psi, group)
    chex.assert_shape(bank, (k, k, 2, group.order, 3, group.order))
    for g in range(group.order):
        chex.assert_trees_all_equal(bank[..., g], dg.transform_group_kernel(psi, g, group))
    chex.assert_trees_all_equal(bank[..., 0], psi)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("k", [2, 3])
def test_lifting_bank(group, k):
    psi = jnp.asarray(normal(2, k, k, 2, 3))
    bank = dg.lifting_filter_bank(psi, group)
    chex.assert_shape(bank, (k, k, 2, 3, group.order))
    for g, h in itertools.product(range(group.order), repeat=2):
        # L_g applied to the h-th copy is the (gh)-th copy.
        lhs = group.transform_image(bank[..., h], g, axes=(0, 1))
        chex.assert_trees_all_equal(lhs, bank[..., group.multiply(g, h)])


def test_bank_errors():
    with pytest.raises(ValueError, match=r"kernel: expected shape \[kh, kw, in_channels, 8"):
        dg.group_filter_bank(jnp.zeros((3, 3, 2, 8)), "p4m")
    with pytest.raises(ValueError, match="input group axis .* expected 4"):
        dg.group_filter_bank(jnp.zeros((3, 3, 2, 8, 1)), "p4")
    with pytest.raises(ValueError, match="square"):
        dg.lifting_filter_bank(jnp.zeros((3, 2, 1, 1)), "p4")
    with pytest.raises(ValueError, match="unknown group"):
        dg.lifting_filter_bank(jnp.zeros((3, 3, 1, 1)), "so2")


def test_banks_are_pure_functions_of_the_kernel():
    psi = jnp.asarray(normal(3, 3, 3, 1, 8, 2))
    a = dg.group_filter_bank(psi, "p4m")
    b = dg.group_filter_bank(psi, "p4m")
    chex.assert_trees_all_equal(a, b)
    assert np.asarray(psi).flags.c_contiguous  # input untouched
