"""Group axioms, checked directly on the tables and on the actions."""

import itertools

import numpy as np
import pytest

import dgcnn_jax as dg
from tests.conftest import normal

GROUPS = [dg.P4, dg.P4M]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
class TestAxioms:
    def test_order_and_names(self, group):
        assert group.order == {"p4": 4, "p4m": 8}[group.name]
        assert len(set(group.element_names)) == group.order
        assert group.element_names[0] == "e"

    def test_closure(self, group):
        table = group.cayley_table
        assert table.shape == (group.order, group.order)
        assert table.min() >= 0 and table.max() < group.order
        # Latin square: every row and column is a permutation.
        for row in table:
            assert sorted(row) == list(range(group.order))
        for col in table.T:
            assert sorted(col) == list(range(group.order))

    def test_identity(self, group):
        e = group.identity
        for g in range(group.order):
            assert group.multiply(e, g) == g
            assert group.multiply(g, e) == g

    def test_inverse(self, group):
        for g in range(group.order):
            gi = group.invert(g)
            assert group.multiply(g, gi) == group.identity
            assert group.multiply(gi, g) == group.identity

    def test_associativity(self, group):
        n = group.order
        for a, b, c in itertools.product(range(n), repeat=3):
            assert group.multiply(group.multiply(a, b), c) == group.multiply(
                a, group.multiply(b, c))

    def test_image_action_is_homomorphism(self, group):
        x = normal(0, 2, 5, 5, 3)
        for g, h in itertools.product(range(group.order), repeat=2):
            lhs = group.transform_image(group.transform_image(x, h), g)
            rhs = group.transform_image(x, group.multiply(g, h))
            np.testing.assert_array_equal(lhs, rhs)

    def test_feature_map_action_is_homomorphism(self, group):
        x = normal(1, 2, 4, 4, 3, group.order)
        for g, h in itertools.product(range(group.order), repeat=2):
            lhs = group.transform_feature_map(group.transform_feature_map(x, h), g)
            rhs = group.transform_feature_map(x, group.multiply(g, h))
            np.testing.assert_array_equal(lhs, rhs)

    def test_actions_are_faithful(self, group):
        x = normal(2, 1, 5, 5, 1)
        images = [group.transform_image(x, g) for g in range(group.order)]
        for a, b in itertools.combinations(range(group.order), 2):
            assert not np.array_equal(images[a], images[b])

    def test_tables_read_only(self, group):
        with pytest.raises(ValueError):
            group.cayley_table[0, 0] = 1
        with pytest.raises(ValueError):
            group.inverse_table[0] = 1


def test_p4_is_subgroup_of_p4m():
    for g, h in itertools.product(range(4), repeat=2):
        assert dg.P4.multiply(g, h) == dg.P4M.multiply(g, h)


def test_convention_rotation_is_counter_clockwise_rot90():
    x = np.arange(4).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(dg.P4.transform_image(x, 1), np.rot90(x, 1, axes=(1, 2)))
    # element 4 of p4m is the left-right mirror
    np.testing.assert_array_equal(dg.P4M.transform_image(x, 4), x[:, :, ::-1])
    # "mr" = mirror after rotation
    np.testing.assert_array_equal(dg.P4M.transform_image(x, 5),
                                  np.rot90(x, 1, axes=(1, 2))[:, :, ::-1])


def test_groups_are_immutable_and_hashable():
    with pytest.raises(AttributeError):
        dg.P4.name = "x"
    assert hash(dg.P4) != hash(dg.P4M)
    assert {dg.P4: 1}[dg.get_group("p4")] == 1


def test_get_group():
    assert dg.get_group("P4M") is dg.P4M
    assert dg.get_group(dg.P4) is dg.P4
    with pytest.raises(ValueError, match="unknown group 'c8'.*z2, p4, p4m"):
        dg.get_group("c8")
    assert dg.available_groups() == ("z2", "p4", "p4m")


def test_trivial_group():
    assert dg.Z2.order == 1 and dg.Z2.cayley == ((0,),) and dg.Z2.inverse == (0,)
    x = normal(3, 1, 4, 4, 2, 1)
    np.testing.assert_array_equal(dg.Z2.transform_feature_map(x, 0), x)


def test_bad_element():
    with pytest.raises(ValueError, match="out of range"):
        dg.P4.transform_image(np.zeros((1, 2, 2, 1)), 4)
    with pytest.raises(ValueError, match="element index"):
        dg.P4.multiply(1.0, 0)
    with pytest.raises(ValueError, match="group axis .* expected 8"):
        dg.P4M.transform_feature_map(np.zeros((1, 2, 2, 1, 4)), 1)
