"""Every convolution implementation equals the XLA reference in values and gradients."""

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized
from flax import nnx

import dgcnn_jax as dg
from dgcnn_jax import execution as _conv
from tests.conftest import normal


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


class FastConvTest(chex.TestCase):
    @parameterized.parameters(
        (3, ((1, 1), (1, 1)), 1), (5, ((2, 2), (2, 2)), 1), (2, ((0, 0), (0, 0)), 1),
        (4, ((1, 1), (1, 1)), 1), (3, ((2, 2), (2, 2)), 2), (3, ((0, 0), (0, 0)), 3))
    def test_gradients_equal_reference(self, k, padding, dilation):
        x = jnp.asarray(normal(0, 4, 11, 11, 6))
        w = jnp.asarray(normal(1, k, k, 6, 5))
        probe = jnp.asarray(normal(2, *_conv.conv2d(x, w, padding, dilation).shape))

        def loss(x, w, impl):
            return jnp.sum(jnp.sin(_conv.conv2d(x, w, padding, dilation, impl=impl)) * probe)

        saved = _conv._EACH_MIN_CHANNELS
        try:  # the batched and the one-example-at-a-time forward and input gradient
            for each_min in (saved, 1):
                _conv._EACH_MIN_CHANNELS = each_min
                for jit in (False, True):
                    grad = jax.grad(loss, argnums=(0, 1))
                    grad = jax.jit(grad, static_argnums=2) if jit else grad
                    fast, ref = grad(x, w, "fast"), grad(x, w, "xla")
                    for a, b in zip(fast, ref):
                        assert _rel(a, b) <= 1e-5
                chex.assert_trees_all_close(
                    _conv.conv2d(x, w, padding, dilation, impl="fast"),
                    _conv.conv2d(x, w, padding, dilation, impl="xla"))
        finally:
            _conv._EACH_MIN_CHANNELS = saved

    @parameterized.parameters(
        (3, ((1, 1), (1, 1)), 1), (5, ((2, 1), (0, 3)), 1), (2, ((0, 0), (0, 0)), 1),
        (3, ((3, 3), (3, 3)), 1), (3, ((2, 2), (2, 2)), 2))
    def test_per_example_conv_equals_reference(self, k, padding, dilation):
        x = jnp.asarray(normal(3, 3, 11, 9, 4))
        w = jnp.asarray(normal(4, 3, k, k, 4, 5))

        def ref(x, w):  # each example through XLA's convolution and its autodiff
            return jax.vmap(lambda a, b: _conv.conv2d(a[None], b, padding, dilation,
                                                      impl="xla")[0])(x, w)

        def fast(x, w):
            return _conv.per_example_conv(x, w, padding, dilation)

        y = ref(x, w)
        probe = jnp.asarray(normal(5, *y.shape))
        assert _rel(jax.jit(fast)(x, w), y) <= 1e-6
        for jit in (False, True):
            grads = [jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w)) * probe),
                              argnums=(0, 1)) for f in (fast, ref)]
            if jit:
                grads = [jax.jit(g) for g in grads]
            for a, b in zip(grads[0](x, w), grads[1](x, w)):
                assert _rel(a, b) <= 1e-5
        with pytest.raises(ValueError, match="per-example"):
            _conv.per_example_conv(x, w[0], padding, dilation)

    def test_chunked_filter_gradient(self):
        x = jnp.asarray(normal(3, 6, 9, 9, 4))
        dy = jnp.asarray(normal(4, 6, 9, 9, 3))
        pad = ((1, 1), (1, 1))
        whole = _conv.filter_gradient(x, dy, 3, pad)
        saved = _conv._CHUNK_ELEMENTS
        try:
            _conv._CHUNK_ELEMENTS = 9 * 11 * 3 * 4 * 2  # two examples per chunk
            chunked = jax.jit(lambda x, dy: _conv.filter_gradient(x, dy, 3, pad))(x, dy)
        finally:
            _conv._CHUNK_ELEMENTS = saved
        assert _rel(chunked, whole) <= 1e-6
        _, vjp = jax.vjp(lambda w: _conv.conv2d(x, w, pad, impl="xla"), jnp.zeros((3, 3, 4, 3)))
        assert _rel(whole, vjp(dy)[0]) <= 1e-5

    @parameterized.parameters("p4", "p4m")
    def test_group_conv_gradients_fast_vs_reference(self, group):
        order = dg.get_group(group).order
        x = jnp.asarray(normal(5, 2, 8, 8, 3, order))
        w = jnp.asarray(normal(6, 3, 3, 3, order, 4))

        def loss(x, w, impl):
            return jnp.sum(jnp.tanh(dg.group_conv(x, w, group, impl=impl)) ** 2)

        fast = jax.grad(loss, argnums=(0, 1))(x, w, "fast")
        ref = jax.grad(loss, argnums=(0, 1))(x, w, "xla")
        for a, b in zip(fast, ref):
            assert _rel(a, b) <= 1e-5

    def test_bad_impl(self):
        assert _conv.resolve(None, "static", 10) == "xla"
        assert _conv.resolve("auto", "static", 1 << 24) == (
            "fast" if jax.default_backend() == "cpu" else "xla")
        assert _conv.resolve("fast", "static", 10) == "fast"
        with pytest.raises(ValueError, match="impl: expected one of auto, xla, fast, patches"):
            dg.group_conv(jnp.zeros((1, 5, 5, 1, 4)), jnp.zeros((3, 3, 1, 4, 1)), "p4",
                          impl="cudnn")

    def test_one_resolver_for_every_kind(self):
        assert _conv.resolve("auto", "dynamic", backend="cpu") == "fast"
        assert _conv.resolve("auto", "dynamic", backend="gpu") == "patches"
        assert _conv.resolve("auto", "equivariant", backend="cpu") == "linear"
        assert _conv.resolve("auto", "static", 1 << 24, backend="gpu") == "xla"
        for kind in _conv.KINDS:  # every concrete name resolves to itself where it applies
            for name, impl in _conv.IMPLS.items():
                if name != "auto" and kind in impl.kinds:
                    assert _conv.resolve(name, kind) == name
        with pytest.raises(ValueError, match="impl: 'patches' does not apply to a static"):
            dg.GroupConv(2, 2, 3, "p4", impl="patches", rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="impl: 'linear' mixes K banks"):
            _conv.per_example_conv(jnp.zeros((1, 5, 5, 2)), jnp.zeros((1, 3, 3, 2, 2)),
                                   ((1, 1), (1, 1)), impl="linear")
        with pytest.raises(ValueError, match="kind: expected one of"):
            _conv.resolve("auto", "lifting")


def _precisions(fn, *args):
    import re

    text = jax.jit(fn).lower(*args).as_text()
    lines = [ln for ln in text.splitlines()
             if "stablehlo.convolution" in ln or "stablehlo.dot_general" in ln]
    return {m.group(1) if (m := re.search(r"precision[ _a-z]*= \[#?(?:stablehlo<precision )?"
                                          r"(\w+)", ln)) else "DEFAULT" for ln in lines}


def test_core_functions_default_to_the_highest_precision():
    """Without a ``precision`` argument every core function computes in full float32 (what
    exact equivariance needs on GPUs and TPUs), forward and backward."""
    from dgcnn_jax import dynamic, ops

    x = jnp.asarray(normal(0, 2, 6, 6, 2, 4))
    kern = jnp.asarray(normal(1, 3, 3, 2, 4, 3))
    banks = jnp.asarray(normal(2, 2, 3, 3, 2, 4, 3))
    weights = jax.nn.softmax(jnp.asarray(normal(3, 2, 2)))
    w1, b1 = jnp.asarray(normal(4, 2, 4)), jnp.zeros(4)
    w2, b2 = jnp.asarray(normal(5, 4, 2)), jnp.zeros(2)
    for impl in ("xla", "fast"):
        grad = jax.grad(lambda x, k: jnp.sum(ops.group_conv(x, k, "p4", impl=impl) ** 2),
                        argnums=(0, 1))
        assert _precisions(grad, x, kern) == {"HIGHEST"}, impl
    for impl in ("xla", "fast", "patches", "linear"):
        def loss(x, banks, impl=impl):
            w = dynamic.invariant_attention(x, w1, b1, w2, b2, 2.0)
            return jnp.sum(dynamic.dynamic_conv(x, banks, None, w, "p4", impl=impl) ** 2)
        assert _precisions(jax.grad(loss, argnums=(0, 1)), x, banks) == {"HIGHEST"}, impl
    assert _precisions(lambda x: dynamic.dynamic_conv_equivariant(
        x, banks, None, jnp.repeat(weights[..., None], 4, -1), "p4"), x) == {"HIGHEST"}
    assert _precisions(lambda x, k: ops.group_conv(x, k, "p4", precision="default"),
                       x, kern) == {"DEFAULT"}
    with pytest.raises(ValueError, match="precision: expected one of highest, high, default"):
        ops.group_conv(x, kern, "p4", precision="tf32")
    with pytest.raises(ValueError, match="precision: expected one of"):
        dg.GroupConv(2, 3, 3, "p4", precision="fast", rngs=nnx.Rngs(0))
