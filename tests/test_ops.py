"""Exact equivariance of every functional op, for every element of p4 and p4m."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import dgcnn_jax as dg
from dgcnn_jax.testing import assert_equivariant, equivariance_errors
from tests.conftest import RTOL, normal

CONV_CASES = [
    dict(group=g, size=s, k=k, padding=p)
    for g in ("p4", "p4m") for s in (7, 8) for k in (3, 5) for p in ("SAME", "VALID")
]


def _name(case):
    return f"{case['group']}_n{case['size']}_k{case['k']}_{case['padding']}"


class ConvEquivarianceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(_name(c), c) for c in CONV_CASES])
    def test_lifting_conv(self, case):
        group = dg.get_group(case["group"])
        x = normal(0, 2, case["size"], case["size"], 3)
        w = jnp.asarray(normal(1, case["k"], case["k"], 3, 4))
        fn = self.variant(functools.partial(dg.lifting_conv, kernel=w, group=group,
                                            padding=case["padding"]))
        errors = assert_equivariant(fn, group, x, input_kind="image", output_kind="group",
                                    rtol=RTOL)
        self.assertEqual(errors.shape, (group.order,))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(_name(c), c) for c in CONV_CASES])
    def test_group_conv(self, case):
        group = dg.get_group(case["group"])
        x = normal(2, 2, case["size"], case["size"], 3, group.order)
        w = jnp.asarray(normal(3, case["k"], case["k"], 3, group.order, 4))
        fn = self.variant(functools.partial(dg.group_conv, kernel=w, group=group,
                                            padding=case["padding"]))
        assert_equivariant(fn, group, x, input_kind="group", output_kind="group", rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("p4", "p4"), ("p4m", "p4m"))
    def test_even_kernel_valid_and_int_padding_dilation(self, name):
        group = dg.get_group(name)
        x = normal(4, 1, 9, 9, 2, group.order)
        for k, padding, dilation in ((2, "VALID", 1), (4, 1, 1), (3, "SAME", 2), (2, 2, 3)):
            w = jnp.asarray(normal(5, k, k, 2, group.order, 3))
            fn = self.variant(functools.partial(dg.group_conv, kernel=w, group=group,
                                                padding=padding, dilation=dilation))
            assert_equivariant(fn, group, x, input_kind="group", rtol=RTOL)


class StackInvarianceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("p4", "p4"), ("p4m", "p4m"))
    def test_lifting_three_group_layers_and_pooling_is_invariant(self, name):
        group = dg.get_group(name)
        n = group.order
        ws = [jnp.asarray(normal(10, 3, 3, 2, 4))] + [
            jnp.asarray(normal(11 + i, 3, 3, 4, n, 4)) for i in range(3)]

        def net(x):
            y = jax.nn.relu(dg.lifting_conv(x, ws[0], group))
            for i, w in enumerate(ws[1:]):
                y = jax.nn.relu(dg.group_conv(y, w, group))
                if i == 0:
                    y = dg.spatial_pool(y, 2)
            return dg.global_pool(y)

        x = normal(9, 2, 10, 10, 2)
        assert_equivariant(self.variant(net), group, x, output_kind="invariant", rtol=RTOL)
        # and the per-pixel pooled map before the global pooling is equivariant as an image
        pooled = self.variant(lambda x: dg.orientation_pool(dg.lifting_conv(x, ws[0], group)))
        assert_equivariant(pooled, group, x, output_kind="image", rtol=RTOL)


class PoolingTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(group=("p4", "p4m"), kind=("max", "mean"))
    def test_pooling_ops(self, group, kind):
        group = dg.get_group(group)
        xg = normal(20, 2, 8, 8, 3, group.order)
        orient = self.variant(functools.partial(dg.orientation_pool, kind=kind))
        assert_equivariant(orient, group, xg, input_kind="group", output_kind="image", rtol=RTOL)
        spatial = self.variant(functools.partial(dg.spatial_pool, window=2, kind=kind))
        assert_equivariant(spatial, group, xg, input_kind="group", rtol=RTOL)
        spatial3 = self.variant(functools.partial(dg.spatial_pool, window=3, stride=1, kind=kind))
        assert_equivariant(spatial3, group, xg, input_kind="group", rtol=RTOL)
        glob = self.variant(functools.partial(dg.global_pool, kind=kind))
        assert_equivariant(glob, group, xg, input_kind="group", output_kind="invariant",
                           rtol=RTOL)
        x_img = normal(21, 2, 9, 9, 3)
        assert_equivariant(self.variant(functools.partial(dg.global_pool, kind=kind)), group,
                           x_img, input_kind="image", output_kind="invariant", rtol=RTOL)

    def test_pool_values(self):
        x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        np.testing.assert_array_equal(dg.spatial_pool(x, 2)[0, :, :, 0], [[5, 7], [13, 15]])
        np.testing.assert_array_equal(dg.spatial_pool(x, 2, kind="mean")[0, :, :, 0],
                                      [[2.5, 4.5], [10.5, 12.5]])
        xg = jnp.arange(8.0).reshape(1, 1, 1, 1, 8)
        assert float(dg.orientation_pool(xg)[0, 0, 0, 0]) == 7.0
        assert float(dg.global_pool(xg, "mean")[0, 0]) == 3.5

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("max", "mean")
    def test_pooling_gradients(self, kind):
        x = jnp.arange(16.0).reshape(1, 4, 4, 1, 1)
        grad = self.variant(jax.grad(lambda v: jnp.sum(dg.spatial_pool(v, 2, kind=kind))))(x)
        expected = np.zeros((4, 4))
        if kind == "max":
            expected[1::2, 1::2] = 1.0  # the maximum of each window gets the gradient
        else:
            expected[:] = 0.25
        np.testing.assert_array_equal(grad[0, :, :, 0, 0], expected)

    def test_inexact_pooling_is_refused(self):
        with pytest.raises(ValueError, match="height 7 cannot be pooled exactly"):
            dg.spatial_pool(jnp.zeros((1, 7, 7, 1)), 2)
        with pytest.raises(ValueError, match="width 5"):
            dg.spatial_pool(jnp.zeros((1, 6, 5, 1, 4)), 2)


class NegativeControlTest(chex.TestCase):
    def test_plain_convolution_fails(self):
        x = normal(30, 2, 9, 9, 3)
        w = jnp.asarray(normal(31, 3, 3, 3, 4))

        def plain(x):
            return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        for group in (dg.P4, dg.P4M):
            with pytest.raises(AssertionError, match="not .*-equivariant"):
                assert_equivariant(plain, group, x, input_kind="image", output_kind="image")
            errors = equivariance_errors(plain, group, x, output_kind="image")
            self.assertEqual(errors[0], 0.0)  # the identity always passes
            self.assertGreater(errors[1:].min(), 0.1)

    def test_group_conv_without_group_permutation_fails(self):
        # Rotating the kernel spatially but not permuting its input group axis is the
        # classic implementation error; the check must catch it.
        group = dg.P4M
        x = normal(32, 2, 7, 7, 2, group.order)
        w = jnp.asarray(normal(33, 3, 3, 2, group.order, 3))

        def wrong(x):
            bank = jnp.stack([group.transform_image(w, g, axes=(0, 1))
                              for g in range(group.order)], axis=-1)
            y = jax.lax.conv_general_dilated(
                x.reshape(2, 7, 7, -1), bank.reshape(3, 3, 2 * group.order, -1), (1, 1),
                "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return y.reshape(2, 7, 7, 3, group.order)

        with pytest.raises(AssertionError):
            assert_equivariant(wrong, group, x, input_kind="group")

    def test_even_kernel_same_padding_is_refused(self):
        with pytest.raises(ValueError, match="'SAME' with an even kernel size"):
            dg.lifting_conv(jnp.zeros((1, 8, 8, 1)), jnp.zeros((2, 2, 1, 1)), "p4")


class ConvValueTest(chex.TestCase):
    def test_identity_slice_is_plain_correlation(self):
        x = normal(40, 2, 6, 6, 3)
        w = jnp.asarray(normal(41, 3, 3, 3, 4))
        y = dg.lifting_conv(x, w, "p4m")
        ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        chex.assert_trees_all_close(y[..., 0], ref, atol=1e-5)
        chex.assert_shape(y, (2, 6, 6, 4, 8))

    def test_group_conv_matches_direct_sum(self):
        # y(x, g) = sum_{y, h, c} F(y, c, h) psi(g^-1 (y - x), c, g^-1 h), evaluated naively.
        group = dg.P4M
        n, k = 5, 3
        f = normal(42, 1, n, n, 2, group.order).astype(np.float64)
        psi = normal(43, k, k, 2, group.order, 3).astype(np.float64)
        y = np.asarray(dg.group_conv(jnp.asarray(f, jnp.float32), jnp.asarray(psi, jnp.float32),
                                     group, padding="VALID"))
        for g in range(group.order):
            bank = group.transform_feature_map(psi, g, spatial_axes=(0, 1), group_axis=3)
            for i in range(n - k + 1):
                for j in range(n - k + 1):
                    patch = f[0, i:i + k, j:j + k]  # [k, k, C, G]
                    ref = np.einsum("abch,abcho->o", patch, bank)
                    np.testing.assert_allclose(y[0, i, j, :, g], ref, rtol=1e-4, atol=1e-4)


class TraceTest(chex.TestCase):
    def test_jitted_group_conv_does_not_retrace(self):
        w = jnp.asarray(normal(50, 3, 3, 2, 8, 2))

        @jax.jit
        @chex.assert_max_traces(n=1)
        def layer(x, w):
            return dg.group_conv(x, w, "p4m")

        x = jnp.asarray(normal(51, 1, 6, 6, 2, 8))
        layer(x, w)
        layer(x + 1.0, w * 2.0)  # same shapes: no new trace
        chex.clear_trace_counter()


class ErrorTest(chex.TestCase):
    def test_bad_inputs_name_argument_and_shape(self):
        w = jnp.zeros((3, 3, 2, 8, 4))
        with pytest.raises(ValueError, match=r"x: expected a p4m feature map of shape "
                                             r"\[batch, height, width, 2, 8\] \(rank 5\)"):
            dg.group_conv(jnp.zeros((1, 6, 6, 2)), w, "p4m")
        with pytest.raises(ValueError, match=r"x: expected 2 channels"):
            dg.group_conv(jnp.zeros((1, 6, 6, 3, 8)), w, "p4m")
        with pytest.raises(ValueError, match=r"x: group axis \(last\) has size 4, expected 8"):
            dg.group_conv(jnp.zeros((1, 6, 6, 2, 4)), w, "p4m")
        with pytest.raises(ValueError, match="unknown group 'p6'"):
            dg.group_conv(jnp.zeros((1, 6, 6, 2, 8)), w, "p6")
        with pytest.raises(ValueError, match=r"x: expected an image batch .* \(rank 4\)"):
            dg.lifting_conv(jnp.zeros((6, 6, 2)), jnp.zeros((3, 3, 2, 4)), "p4")
        with pytest.raises(ValueError, match="x: expected 2 channels"):
            dg.lifting_conv(jnp.zeros((1, 6, 6, 1)), jnp.zeros((3, 3, 2, 4)), "p4")
        with pytest.raises(ValueError, match="kernel: expected shape"):
            dg.lifting_conv(jnp.zeros((1, 6, 6, 2)), jnp.zeros((3, 3, 2)), "p4")
        with pytest.raises(ValueError, match="too small"):
            dg.lifting_conv(jnp.zeros((1, 2, 2, 2)), jnp.zeros((5, 5, 2, 1)), "p4",
                            padding="VALID")
        with pytest.raises(ValueError, match="padding: expected"):
            dg.lifting_conv(jnp.zeros((1, 6, 6, 2)), jnp.zeros((3, 3, 2, 1)), "p4",
                            padding="FULL")
        with pytest.raises(ValueError, match="bias: expected shape"):
            dg.add_bias(jnp.zeros((1, 2, 2, 3, 4)), jnp.zeros((4,)))
        with pytest.raises(ValueError, match="kind: expected one of"):
            dg.orientation_pool(jnp.zeros((1, 2, 2, 3, 4)), "min")
