"""The public assert_equivariant helper itself."""

import jax.numpy as jnp
import numpy as np
import pytest

import dgcnn_jax as dg
from dgcnn_jax.testing import assert_equivariant, equivariance_errors, transform
from tests.conftest import normal


def test_identity_map_is_equivariant_for_each_kind():
    x = normal(0, 1, 5, 5, 2)
    assert np.all(assert_equivariant(lambda v: v, "p4m", x, output_kind="image") == 0)
    xg = normal(1, 1, 4, 4, 2, 8)
    assert np.all(assert_equivariant(lambda v: v, "p4m", xg, input_kind="group",
                                     output_kind="group") == 0)


def test_reports_every_failing_element_by_name():
    x = normal(2, 1, 5, 5, 1)
    # Mirror-covariant but not rotation-equivariant map: transposes the image.
    with pytest.raises(AssertionError) as info:
        assert_equivariant(lambda v: jnp.swapaxes(v, 1, 2), "p4m", x, output_kind="image")
    message = str(info.value)
    assert "p4m-equivariant" in message and "r: " in message and "rtol=1e-05" in message


def test_small_perturbation_is_caught_at_default_tolerance():
    x = normal(3, 1, 6, 6, 1)
    noise = 1e-4 * normal(4, 1, 6, 6, 1)
    errors = equivariance_errors(lambda v: v + noise, "p4", x, output_kind="image")
    assert errors[0] == 0 and errors[1:].min() > 1e-5
    with pytest.raises(AssertionError):
        assert_equivariant(lambda v: v + noise, "p4", x, output_kind="image")


def test_invariant_output_and_shape_mismatch():
    x = normal(5, 2, 6, 6, 1)
    assert_equivariant(lambda v: jnp.sum(v, axis=(1, 2, 3)), "p4m", x, output_kind="invariant")
    with pytest.raises(AssertionError, match="shape"):
        assert_equivariant(lambda v: v[:, :3], "p4", normal(6, 1, 6, 5, 1), output_kind="image")


def test_bad_kinds():
    with pytest.raises(ValueError, match="input_kind"):
        assert_equivariant(lambda v: v, "p4", normal(7, 1, 4, 4, 1), input_kind="invariant")
    with pytest.raises(ValueError, match="output_kind"):
        assert_equivariant(lambda v: v, "p4", normal(7, 1, 4, 4, 1), output_kind="vector")
    with pytest.raises(ValueError, match="'group' feature map"):
        transform(np.zeros((4, 4, 8)), 1, "p4m", "group")
    assert transform(np.ones(3), 5, dg.P4M, "invariant").shape == (3,)
