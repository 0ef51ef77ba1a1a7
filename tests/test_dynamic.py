"""Dynamic group convolution: exact equivariance, attention properties, implementations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

import dgcnn_jax as dg
from dgcnn_jax import dynamic
from dgcnn_jax.testing import assert_equivariant
from tests.conftest import RTOL, normal


def _assert_close_to_scale(actual, expected):
    """Equal to the library's promise: max error at most RTOL of the expected scale (the
    same tolerance as every equivariance check, on every backend)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert error <= RTOL, f"relative error {error:.3g} > {RTOL:g}"


DYNAMIC_IMPLS = ("xla", "fast", "patches", "linear")  # every concrete dynamic impl


def _layers(group, attention, impl="auto", num_kernels=4, seed=0):
    lift = dg.DynamicLiftingConv(3, 4, 3, group, attention=attention, impl=impl,
                                 num_kernels=num_kernels, rngs=nnx.Rngs(seed))
    gconv = dg.DynamicGroupConv(4, 5, 3, group, attention=attention, impl=impl,
                                num_kernels=num_kernels, rngs=nnx.Rngs(seed + 1))
    # non-zero biases and a sharper attention so that the mixing matters
    for layer in (lift, gconv):
        layer.biases[...] = jnp.asarray(normal(seed + 2, *layer.biases[...].shape))
        layer.att_w2[...] = layer.att_w2[...] * 20.0
    return lift, gconv


class EquivarianceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(group=("p4", "p4m"), attention=("invariant", "equivariant"),
                           size=(7, 8))
    def test_dynamic_layers_are_equivariant(self, group, attention, size):
        order = dg.get_group(group).order
        lift, gconv = _layers(group, attention)
        f_lift = self.variant(lambda x: lift(x, tau=0.5))
        f_group = self.variant(lambda x: gconv(x, tau=0.5))
        assert_equivariant(f_lift, group, normal(1, 2, size, size, 3), rtol=RTOL)
        assert_equivariant(f_group, group, normal(2, 2, size, size, 4, order),
                           input_kind="group", rtol=RTOL)

    @parameterized.parameters("xla", "linear", "patches")
    def test_every_impl_is_equivariant(self, impl):
        lift, gconv = _layers("p4m", "invariant", impl)
        assert_equivariant(lambda x: lift(x, tau=0.5), "p4m", normal(3, 2, 7, 7, 3), rtol=RTOL)
        assert_equivariant(lambda x: gconv(x, tau=0.5), "p4m", normal(4, 2, 7, 7, 4, 8),
                           input_kind="group", rtol=RTOL)

    @parameterized.parameters("p4", "p4m")
    def test_invariant_weights_are_invariant(self, group):
        g = dg.get_group(group)
        _, gconv = _layers(group, "invariant")
        x = normal(5, 3, 8, 8, 4, g.order)
        w = np.asarray(gconv.attention_weights(x, tau=0.3))
        assert w.std() > 1e-3  # weights are not trivially uniform
        for h in range(g.order):
            _assert_close_to_scale(gconv.attention_weights(g.transform_feature_map(x, h),
                                                           tau=0.3), w)

    @parameterized.product(group=("p4", "p4m"), lifting=(True, False))
    def test_equivariant_weights_permute_with_the_group(self, group, lifting):
        g = dg.get_group(group)
        lift, gconv = _layers(group, "equivariant")
        layer = lift if lifting else gconv
        x = normal(6, 2, 8, 8, 3) if lifting else normal(6, 2, 8, 8, 4, g.order)
        w = np.asarray(layer.attention_weights(x, tau=0.3))  # [B, K, G]
        assert w.shape == (2, 4, g.order)
        for h in range(g.order):
            xh = g.transform_image(x, h) if lifting else g.transform_feature_map(x, h)
            # pi(L_h x, k) = pi(x, h^-1 k)
            expected = w[..., np.asarray(g.permutation(h))]
            _assert_close_to_scale(layer.attention_weights(xh, tau=0.3), expected)
            if h:
                assert not np.allclose(w, w[..., np.asarray(g.permutation(h))], atol=1e-4)


class BehaviourTest(chex.TestCase):
    @parameterized.product(group=("p4", "p4m"), lifting=(True, False))
    def test_single_kernel_equals_static_layer(self, group, lifting):
        order = dg.get_group(group).order
        if lifting:
            dyn = dg.DynamicLiftingConv(3, 4, 3, group, num_kernels=1, rngs=nnx.Rngs(0))
            static = dg.LiftingConv(3, 4, 3, group, rngs=nnx.Rngs(1))
            x = normal(7, 2, 7, 7, 3)
        else:
            dyn = dg.DynamicGroupConv(3, 4, 3, group, num_kernels=1, rngs=nnx.Rngs(0))
            static = dg.GroupConv(3, 4, 3, group, rngs=nnx.Rngs(1))
            x = normal(7, 2, 7, 7, 3, order)
        dyn.biases[...] = jnp.arange(4.0)[None]
        static.kernel[...] = dyn.kernels[...][0]
        static.bias[...] = jnp.arange(4.0)
        y_static = static(x)
        scale = float(jnp.max(jnp.abs(y_static)))
        for impl in DYNAMIC_IMPLS:
            dyn.impl = impl
            error = float(jnp.max(jnp.abs(dyn(x, tau=0.7) - y_static))) / scale
            assert error <= 1e-6, f"{impl}: relative error {error:.3g}"


    @parameterized.parameters("p4", "p4m")
    def test_gradients_of_every_impl_equal_the_reference(self, group):
        # "linear" runs XLA's convolution and its autodiff: the reference path
        lift, gconv = _layers(group, "invariant")
        x = normal(9, 2, 7, 7, 3)

        def grads(impl):
            lift.impl = gconv.impl = impl
            return nnx.grad(lambda m: jnp.sum(jnp.sin(m[1](m[0](x, tau=0.8), tau=0.8))))(
                (lift, gconv))

        ref = jax.tree.leaves(grads("linear"))
        for impl in ("auto", *DYNAMIC_IMPLS):
            for a, b in zip(jax.tree.leaves(grads(impl)), ref):
                error = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                assert error <= 1e-5, f"{impl}: relative gradient error {error:.3g}"

    def test_large_temperature_gives_uniform_weights(self):
        for attention in ("invariant", "equivariant"):
            _, gconv = _layers("p4m", attention)
            w = gconv.attention_weights(normal(8, 2, 6, 6, 4, 8), tau=1e7)
            chex.assert_trees_all_close(w, jnp.full_like(w, 0.25), atol=1e-5)
        # and small temperature sharpens
        _, gconv = _layers("p4m", "invariant")
        w = gconv.attention_weights(normal(8, 2, 6, 6, 4, 8), tau=1e-3)
        assert float(jnp.max(w)) > 0.99

    @parameterized.product(group=("p4", "p4m"), lifting=(True, False))
    def test_impls_agree(self, group, lifting):
        g = dg.get_group(group)
        k = 3
        kernels = jnp.asarray(normal(9, 4, k, k, 3, 5) if lifting else
                              normal(9, 4, k, k, 3, g.order, 5))
        biases = jnp.asarray(normal(10, 4, 5))
        x = normal(11, 3, 9, 9, 3) if lifting else normal(11, 3, 9, 9, 3, g.order)
        weights = jax.nn.softmax(jnp.asarray(normal(12, 3, 4)) * 3)
        for padding, dilation in (("SAME", 1), ("VALID", 2), (1, 1)):
            outs = [dynamic.dynamic_conv(x, kernels, biases, weights, g, padding=padding,
                                         dilation=dilation, impl=s)
                    for s in DYNAMIC_IMPLS]
            scale = float(jnp.max(jnp.abs(outs[0])))
            for out in outs[1:]:
                assert float(jnp.max(jnp.abs(out - outs[0]))) <= 1e-5 * scale
            # and the per-example reference
            conv = dg.lifting_conv if lifting else dg.group_conv
            ref = jnp.stack([conv(x[i:i + 1], jnp.tensordot(weights[i], kernels, 1), g,
                                  padding=padding, dilation=dilation)[0]
                             + (weights[i] @ biases)[:, None] for i in range(3)])
            assert float(jnp.max(jnp.abs(outs[0] - ref))) <= 1e-5 * scale

    @parameterized.product(attention=("invariant", "equivariant"), lifting=(True, False))
    def test_gradients_reach_every_bank_and_the_attention(self, attention, lifting):
        lift, gconv = _layers("p4", attention)
        layer = lift if lifting else gconv
        x = normal(13, 2, 6, 6, 3) if lifting else normal(13, 2, 6, 6, 4, 4)
        grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x, tau=1.0))))(layer)
        for name in ("kernels", "biases", "att_w1", "att_b1", "att_w2", "att_b2"):
            g = np.asarray(grads[name][...])
            per_bank = np.abs(g.reshape(g.shape[0], -1)).sum(axis=1) if name in (
                "kernels", "biases") else np.abs(g).sum(keepdims=True)
            assert np.all(per_bank > 0), f"no gradient reaches {name}: {per_bank}"

    def test_no_retrace_when_tau_changes(self):
        _, gconv = _layers("p4", "invariant")
        x = jnp.asarray(normal(14, 2, 6, 6, 4, 4))

        @nnx.jit
        @chex.assert_max_traces(n=1)
        def forward(m, x, tau):
            return m(x, tau=tau)

        for epoch in range(4):
            forward(gconv, x, dg.linear_temperature(epoch, anneal_epochs=2))
        forward(gconv, x, jnp.float32(3.0))  # any float32 scalar value: same trace
        chex.clear_trace_counter()

    def test_temperature_schedule(self):
        taus = [float(dg.linear_temperature(e, anneal_epochs=10)) for e in (0, 5, 10, 20)]
        np.testing.assert_allclose(taus, [30.0, 15.5, 1.0, 1.0], rtol=1e-6)
        assert float(dg.linear_temperature(2.5, initial=5, final=1, anneal_epochs=5)) == 3.0
        assert float(dg.linear_temperature(0, anneal_epochs=0)) == 1.0

    def test_aggregate_is_vmapped_mixture(self):
        params = jnp.asarray(normal(15, 3, 2, 2))
        weights = jnp.asarray([[1.0, 0, 0], [0.5, 0.5, 0]])
        out = dynamic.aggregate(params, weights)
        chex.assert_trees_all_close(out[0], params[0])
        chex.assert_trees_all_close(out[1], (params[0] + params[1]) / 2)


class ErrorTest(chex.TestCase):
    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="num_kernels: expected an int K >= 1, got 0"):
            dg.DynamicGroupConv(2, 2, 3, "p4", num_kernels=0, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="attention: expected one of"):
            dg.DynamicLiftingConv(2, 2, 3, "p4", attention="spatial", rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="impl: expected one of"):
            dg.DynamicLiftingConv(2, 2, 3, "p4", impl="fft", rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="impl: 'patches' does not apply to equivariant"):
            dg.DynamicLiftingConv(2, 2, 3, "p4", attention="equivariant", impl="patches",
                                  rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="reduction"):
            dg.DynamicLiftingConv(2, 2, 3, "p4", reduction=0, rngs=nnx.Rngs(0))
        layer = dg.DynamicGroupConv(2, 2, 3, "p4", rngs=nnx.Rngs(0))
        x = jnp.zeros((1, 5, 5, 2, 4))
        for tau in (0.0, -1.0):
            with pytest.raises(ValueError, match="tau: the attention temperature must be > 0"):
                layer(x, tau=tau)
        # under jit a bad traced tau cannot raise: the output is NaN, never a finite wrong
        # mixture (a negative tau would otherwise invert the softmax silently)
        x = jnp.asarray(normal(3, 2, 5, 5, 2, 4))
        forward = nnx.jit(lambda m, x, tau: m(x, tau=tau))
        assert np.all(np.isfinite(np.asarray(forward(layer, x, jnp.float32(2.0)))))
        for tau in (0.0, -1.0, np.nan):
            assert np.all(np.isnan(np.asarray(forward(layer, x, jnp.float32(tau))))), tau
        weights = jax.jit(lambda x, tau: dynamic.invariant_attention(
            x, layer.att_w1[...], layer.att_b1[...], layer.att_w2[...], layer.att_b2[...], tau))
        assert np.all(np.isnan(np.asarray(weights(x, jnp.float32(-2.0)))))
        with pytest.raises(ValueError, match=r"x: group axis \(last\) has size 8, expected 4"):
            layer(jnp.zeros((1, 5, 5, 2, 8)))
        with pytest.raises(ValueError, match="weights: expected invariant weights"):
            dynamic.dynamic_conv(x, layer.kernels[...], None, jnp.ones((1, 3)), "p4")
        with pytest.raises(ValueError, match="biases: expected shape"):
            dynamic.dynamic_conv(x, layer.kernels[...], jnp.ones((4,)), jnp.ones((1, 4)), "p4")
        with pytest.raises(ValueError, match="kernels: expected"):
            dynamic.dynamic_conv(x, jnp.ones((4, 3, 3)), None, jnp.ones((1, 4)), "p4")


class DynamicOptionsTest(chex.TestCase):
    """Residual form, bank initialisation, descriptors, frozen banks, diagnostics."""

    @parameterized.product(group=("p4", "p4m"), lifting=(True, False))
    def test_residual_form_starts_as_the_static_convolution(self, group, lifting):
        g = dg.get_group(group)
        cls = dg.DynamicLiftingConv if lifting else dg.DynamicGroupConv
        static_cls = dg.LiftingConv if lifting else dg.GroupConv
        x = normal(20, 3, 7, 7, 3) if lifting else normal(20, 3, 7, 7, 3, g.order)
        for attention, impls in (("invariant", DYNAMIC_IMPLS), ("equivariant", ("linear",))):
            dyn = cls(3, 4, 3, group, attention=attention, parameterization="residual",
                      rngs=nnx.Rngs(3))
            dyn.att_w2[...] = dyn.att_w2[...] * 20.0  # weights far from uniform
            np.testing.assert_array_equal(np.asarray(dyn.kernels[...]), 0.0)
            static = static_cls(3, 4, 3, group, rngs=nnx.Rngs(0))
            static.kernel[...] = dyn.kernel[...]
            static.bias[...] = jnp.arange(4.0)
            dyn.bias[...] = jnp.arange(4.0)
            y_static = static(x)
            scale = float(jnp.max(jnp.abs(y_static)))
            for impl in impls:
                dyn.impl = impl
                error = float(jnp.max(jnp.abs(dyn(x, tau=0.3) - y_static))) / scale
                assert error <= 1e-6, (attention, impl, error)

    @parameterized.product(group=("p4", "p4m"), attention=("invariant", "equivariant"))
    def test_residual_form_is_equivariant_after_training_moves_it(self, group, attention):
        order = dg.get_group(group).order
        lift = dg.DynamicLiftingConv(3, 4, 3, group, attention=attention,
                                     parameterization="residual", delta_scale=0.5,
                                     rngs=nnx.Rngs(1))
        gconv = dg.DynamicGroupConv(4, 5, 3, group, attention=attention,
                                    parameterization="residual", delta_scale=0.5,
                                    rngs=nnx.Rngs(2))
        for layer in (lift, gconv):
            layer.biases[...] = jnp.asarray(normal(4, *layer.biases[...].shape))
            layer.att_w2[...] = layer.att_w2[...] * 20.0
            assert float(jnp.std(layer.kernels[...])) > 0.0
        assert_equivariant(lambda x: lift(x, tau=0.5), group, normal(5, 2, 7, 7, 3), rtol=RTOL)
        assert_equivariant(lambda x: gconv(x, tau=0.5), group, normal(6, 2, 8, 8, 4, order),
                           input_kind="group", rtol=RTOL)

    def test_initial_mixed_kernel_has_he_variance(self):
        fan_in = 3 * 3 * 32 * 8
        he = 2.0 / fan_in
        for options, k in (({"bank_init": "mixture"}, 4), ({"bank_init": "mixture"}, 8),
                           ({"parameterization": "residual"}, 4)):
            layer = dg.DynamicGroupConv(32, 32, 3, "p4m", num_kernels=k, rngs=nnx.Rngs(0),
                                        **options)
            mixed = jnp.mean(layer.banks(), axis=0)  # uniform weights
            assert abs(float(jnp.var(mixed)) / he - 1.0) < 0.05, (options, k)
        per_bank = dg.DynamicGroupConv(32, 32, 3, "p4m", num_kernels=4, rngs=nnx.Rngs(0))
        ratio = float(jnp.var(jnp.mean(per_bank.banks(), axis=0))) / he
        assert abs(ratio - 0.25) < 0.02  # today's banks: 1/K of He variance

    @parameterized.product(group=("p4", "p4m"), descriptor=("mean_max", "mean_std"))
    def test_richer_descriptors_are_invariant(self, group, descriptor):
        g = dg.get_group(group)
        x = normal(7, 3, 8, 8, 4, g.order)
        d = dynamic.invariant_descriptor(x, descriptor)
        chex.assert_shape(d, (3, 8))
        for h in range(g.order):
            _assert_close_to_scale(
                dynamic.invariant_descriptor(g.transform_feature_map(x, h), descriptor), d)
        lift = dg.DynamicLiftingConv(3, 4, 3, group, descriptor=descriptor, rngs=nnx.Rngs(0))
        gconv = dg.DynamicGroupConv(4, 5, 3, group, descriptor=descriptor, rngs=nnx.Rngs(1))
        assert lift.att_w1[...].shape == (6, 4) and gconv.att_w1[...].shape == (8, 4)
        for layer in (lift, gconv):
            layer.att_w2[...] = layer.att_w2[...] * 20.0
        assert_equivariant(lambda x: lift(x, tau=0.5), group, normal(8, 2, 7, 7, 3), rtol=RTOL)
        assert_equivariant(lambda x: gconv(x, tau=0.5), group, normal(9, 2, 7, 7, 4, g.order),
                           input_kind="group", rtol=RTOL)
        w = gconv.attention_weights(x[:, :7, :7], tau=0.3)
        for h in range(g.order):
            _assert_close_to_scale(
                gconv.attention_weights(g.transform_feature_map(x[:, :7, :7], h), tau=0.3), w)

    def test_frozen_banks_are_not_parameters(self):
        layer = dg.DynamicGroupConv(3, 4, 3, "p4", freeze_banks=True, rngs=nnx.Rngs(0))
        assert isinstance(layer.kernels, dg.nn.FrozenBank)
        params = nnx.state(layer, nnx.Param)
        assert "kernels" not in params and "att_w1" in params
        grads = nnx.grad(lambda m: jnp.sum(m(normal(1, 2, 6, 6, 3, 4), tau=1.0) ** 2))(layer)
        assert "kernels" not in grads

    def test_diagnostics(self):
        init = jnp.asarray(normal(10, 4, 3, 3, 2))
        same = jnp.asarray(normal(11, 3, 3, 2))
        assert float(dynamic.bank_common_share(init + same, init)) == pytest.approx(1.0)
        opposite = jnp.stack([same, -same, same, -same])
        assert float(dynamic.bank_common_share(init + opposite, init)) == pytest.approx(0.0)
        assert np.isnan(float(dynamic.bank_common_share(init, init)))
        uniform = jnp.full((5, 4), 0.25)
        assert float(dynamic.attention_entropy(uniform)) == pytest.approx(np.log(4))
        assert float(dynamic.attention_spread(uniform)) == 0.0
        onehot = jnp.eye(4)
        assert float(dynamic.attention_entropy(onehot)) == pytest.approx(0.0, abs=1e-6)
        # signed weights (bank_mix="signed") by their share of the magnitude: in [0, log K]
        signed = jnp.asarray([[0.5, -0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
        assert float(dynamic.attention_entropy(signed)) == pytest.approx(np.log(2) / 2)
        assert float(dynamic.attention_entropy(-uniform)) == pytest.approx(np.log(4))
        assert float(dynamic.attention_spread(onehot)) == pytest.approx(np.sqrt(3) / 4)

    def test_option_errors(self):
        for kwargs, match in (({"parameterization": "lora"}, "parameterization: expected"),
                              ({"bank_init": "orthogonal"}, "bank_init: expected"),
                              ({"descriptor": "median"}, "descriptor: expected"),
                              ({"delta_scale": -1.0}, "delta_scale: expected a value >= 0")):
            with pytest.raises(ValueError, match=match):
                dg.DynamicGroupConv(2, 2, 3, "p4", rngs=nnx.Rngs(0), **kwargs)
        with pytest.raises(ValueError, match="base_kernel: expected shape"):
            dynamic.dynamic_conv(jnp.zeros((1, 5, 5, 2, 4)), jnp.zeros((2, 3, 3, 2, 4, 3)), None,
                                 jnp.ones((1, 2)) / 2, "p4", base_kernel=jnp.zeros((3, 3, 2, 3)))
