"""Thin ``flax.nnx`` modules over the functional core.

Each module holds its fields and parameters and calls one core function; layouts are
those of :mod:`dgcnn_jax.ops`. Kernels are initialised He-style with the group fan-in
(``fan_in = k * k * C_in * |G_in|``).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from . import _init, dynamic, execution, norm, ops
from ._omni import _check_targets
from ._checks import check_choice, check_feature_map, check_image, check_positive_int
from .groups import Group, get_group

__all__ = [
    "PARAMETERIZATIONS",
    "BANK_INITS",
    "BANK_STARTS",
    "FrozenBank",
    "LiftingConv",
    "GroupConv",
    "GroupBatchNorm",
    "GroupPool",
    "DynamicLiftingConv",
    "DynamicGroupConv",
    "default_kernel_init",
]

default_kernel_init = _init.he_normal()
"""He-normal over the fan-in of the last-but-one axis times the receptive field; for
group kernels ``[k, k, C_in, |G|, C_out]`` that is ``k * k * C_in * |G|``. The values of
``jax.nn.initializers.he_normal()``, from a few compiled programs (:mod:`._init`)."""


PARAMETERIZATIONS = ("banks", "residual")
"""Dynamic layers: ``"banks"``, K independent kernels ``W_k`` mixed as ``sum_k pi_k W_k``;
``"residual"``, a static kernel plus K mixed changes, ``W_0 + sum_k pi_k dW_k``."""

BANK_INITS = ("per_bank", "mixture")
"""``"banks"`` form: ``"per_bank"`` draws every bank He-normal (a uniform mixture of K
then has 1/K of He variance); ``"mixture"`` scales them by sqrt(K) so that the uniform
mixture has He variance."""


class FrozenBank(nnx.Variable):
    """Kernel banks kept at their initial values (not an ``nnx.Param``: not trained)."""


def _check_dtypes(dtype, param_dtype):
    """``(dtype, param_dtype)`` as numpy dtypes (``dtype`` may be None), both floating."""
    return (None if dtype is None else _floating(dtype, "dtype"),
            _floating(param_dtype, "param_dtype"))


def _floating(value, name: str):
    try:
        value = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name}: expected a floating dtype, got {value!r}") from None
    if not jnp.issubdtype(value, jnp.floating):
        raise ValueError(f"{name}: expected a floating dtype, got {value}")
    return value


def _compute_dtype(dtype, x, param_dtype):
    """The dtype a layer computes in: ``dtype``, or (None) the promotion of the input's
    and the parameters' (flax's rule). Integer inputs are left to the core to refuse."""
    if dtype is not None:
        return dtype
    return jnp.promote_types(jnp.result_type(x), param_dtype)


def _cast(x, dtype):
    """``x`` in ``dtype`` if it is floating (other inputs reach the core's checks as they
    are)."""
    if x is None or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        return x
    return jnp.asarray(x).astype(dtype)


class _ConvBase(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 group: Group | str, *, padding: ops.Padding, dilation: int, use_bias: bool,
                 kernel_init, kernel_shape: tuple[int, ...], rngs: nnx.Rngs,
                 impl: str = "auto", precision: str = execution.DEFAULT_PRECISION,
                 dtype=None, param_dtype=jnp.float32):
        self.group = get_group(group)
        self.dtype, self.param_dtype = _check_dtypes(dtype, param_dtype)
        execution.resolve(impl, "static")  # validates early
        self.impl = impl  # see dgcnn_jax.execution.IMPLS
        execution.as_precision(precision)  # validates early
        self.precision = precision  # see dgcnn_jax.execution.PRECISIONS
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.dilation = check_positive_int(dilation, "dilation")
        ops.conv_padding(padding, kernel_size, dilation)  # validates early
        self.padding = padding
        self.kernel = nnx.Param(kernel_init(rngs.params(), kernel_shape, self.param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_channels,), self.param_dtype)) if use_bias \
            else None

    def _apply(self, op, x):
        dt = _compute_dtype(self.dtype, x, self.param_dtype)
        y = op(_cast(x, dt), self.kernel[...].astype(dt), self.group, padding=self.padding,
               dilation=self.dilation, impl=self.impl, precision=self.precision)
        return ops.add_bias(y, self.bias[...].astype(dt)) if self.bias is not None else y


class LiftingConv(_ConvBase):
    """Lifting convolution Z2 -> G: ``[B, H, W, C_in] -> [B, H', W', C_out, |G|]``.

    Parameters: ``kernel [k, k, C_in, C_out]`` and ``bias [C_out]`` (shared over G).
    ``impl``: how the convolution runs (:data:`dgcnn_jax.execution.IMPLS`); ``precision``:
    of the convolution (:data:`dgcnn_jax.execution.PRECISIONS`, ``"highest"`` by default:
    exact equivariance on GPUs and TPUs too). ``dtype``: of the computation (None: the
    promotion of the input's and the parameters'; ``jnp.bfloat16`` for mixed precision);
    ``param_dtype``: of the stored parameters (float32), as in flax.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 group: Group | str = "p4m", *, padding: ops.Padding = "SAME",
                 dilation: int = 1, use_bias: bool = True, kernel_init=default_kernel_init,
                 impl: str = "auto", precision: str = execution.DEFAULT_PRECISION,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, kernel_size, group, padding=padding,
                         dilation=dilation, use_bias=use_bias, kernel_init=kernel_init,
                         kernel_shape=(kernel_size, kernel_size, in_channels, out_channels),
                         rngs=rngs, impl=impl, precision=precision, dtype=dtype,
                         param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._apply(ops.lifting_conv, x)


class GroupConv(_ConvBase):
    """Group convolution G -> G: ``[B, H, W, C_in, |G|] -> [B, H', W', C_out, |G|]``.

    Parameters: ``kernel [k, k, C_in, |G|, C_out]`` and ``bias [C_out]`` (shared over G).
    ``impl``, ``precision``, ``dtype`` and ``param_dtype`` as for :class:`LiftingConv`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 group: Group | str = "p4m", *, padding: ops.Padding = "SAME",
                 dilation: int = 1, use_bias: bool = True, kernel_init=default_kernel_init,
                 impl: str = "auto", precision: str = execution.DEFAULT_PRECISION,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        order = get_group(group).order
        super().__init__(in_channels, out_channels, kernel_size, group, padding=padding,
                         dilation=dilation, use_bias=use_bias, kernel_init=kernel_init,
                         kernel_shape=(kernel_size, kernel_size, in_channels, order,
                                       out_channels),
                         rngs=rngs, impl=impl, precision=precision, dtype=dtype,
                         param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._apply(ops.group_conv, x)


class GroupBatchNorm(nnx.Module):
    """Batch norm for ``[B, H, W, C, |G|]`` (or images) with statistics shared over G.

    In training mode (``use_running_average=False``, set by ``model.train()``) it
    normalises with the batch statistics and updates the running averages; in eval
    mode (``model.eval()``) it uses the running averages. The statistics and the
    normalisation are computed in float32 whatever the input's dtype; the output is in
    ``dtype`` (None: the promotion of the input's and ``param_dtype``).
    """

    def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
                 use_running_average: bool = False, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.num_features = check_positive_int(num_features, "num_features")
        self.dtype, self.param_dtype = _check_dtypes(dtype, param_dtype)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), self.param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), self.param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim not in (4, 5) or x.shape[3] != self.num_features:
            raise ValueError(
                f"x: expected [batch, height, width, {self.num_features}(, |G|)], got shape "
                f"{tuple(x.shape)}")
        dt = _compute_dtype(self.dtype, x, self.param_dtype)
        f32 = jnp.float32
        y, mean, var = norm.apply_batch_norm(
            _cast(x, f32), self.mean[...], self.var[...], self.scale[...].astype(f32),
            self.bias[...].astype(f32), use_running_average=self.use_running_average,
            momentum=self.momentum, epsilon=self.epsilon)
        if not self.use_running_average:  # store what the core computed
            self.mean[...], self.var[...] = mean, var
        return _cast(y, dt)


class GroupPool(nnx.Module):
    """Pooling over the group axis: ``[B, H, W, C, |G|] -> [B, H, W, C]`` (max or mean)."""

    def __init__(self, kind: str = "max"):
        self.kind = check_choice(kind, "kind", ("max", "mean"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.orientation_pool(x, self.kind)


BANK_STARTS = ("random", "assignment")
"""How the bank attention starts: ``"random"`` (the head's weights drawn, its bias 0) or
``"assignment"`` (``field_banks`` only: output field ``o`` starts on bank ``o mod K``,
see :func:`dgcnn_jax.dynamic.bank_assignment`)."""


def _check_omni(targets, bank_mix, num_kernels, attention, parameterization, impl,
                bank_start="random"):
    """The layer's attention targets (in the order of ``dynamic.TARGETS``) and bank mix."""
    if isinstance(targets, str):  # "banks,positions", as a config gives it
        targets = tuple(t for t in targets.split(",") if t)
    targets = _check_targets(targets)  # the functional core's rules, in its order
    check_choice(bank_mix, "bank_mix", dynamic.BANK_MIXES)
    if "banks" not in targets and "field_banks" not in targets and num_kernels != 1:
        raise ValueError(f"targets: {num_kernels} kernel banks need attention over 'banks' "
                         f"or 'field_banks' (or num_kernels=1)")
    check_choice(bank_start, "bank_start", BANK_STARTS)
    if bank_start == "assignment" and "field_banks" not in targets:
        raise ValueError("bank_start: the assignment start gives output fields their banks: "
                         "it needs the 'field_banks' target")
    if targets != ("banks",) or bank_mix != "softmax":
        if attention != "invariant":
            raise ValueError("targets, bank_mix: attention over positions or fields, and "
                             "signed bank mixing, are invariant attention only")
        if parameterization != "banks":
            raise ValueError("targets, bank_mix: attention over positions or fields, and "
                             "signed bank mixing, take the 'banks' parameterization")
        if impl == "linear":
            raise ValueError("impl: 'linear' mixes K responses and cannot apply attention "
                             "over positions or fields; use a per-example impl")
    return targets, bank_mix


class _DynamicBase(nnx.Module):
    """K kernel banks mixed per input by an attention branch (see :mod:`dgcnn_jax.dynamic`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 group: Group | str, *, lifting: bool, padding: ops.Padding, dilation: int,
                 use_bias: bool, kernel_init, num_kernels: int, attention: str,
                 reduction: float, min_hidden: int, impl: str, parameterization: str,
                 bank_init: str, delta_scale: float, descriptor: str, freeze_banks: bool,
                 precision: str, rngs: nnx.Rngs, targets=("banks",),
                 bank_mix: str = "softmax", bank_start: str = "random", dtype=None,
                 param_dtype=jnp.float32):
        self.group = get_group(group)
        self.dtype, self.param_dtype = _check_dtypes(dtype, param_dtype)
        pdt = self.param_dtype
        execution.as_precision(precision)  # validates early
        self.precision = precision  # see dgcnn_jax.execution.PRECISIONS
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.dilation = check_positive_int(dilation, "dilation")
        if isinstance(num_kernels, bool) or not isinstance(num_kernels, numbers.Integral) \
                or num_kernels < 1:
            raise ValueError(f"num_kernels: expected an int K >= 1, got {num_kernels!r}")
        self.num_kernels = num_kernels = int(num_kernels)
        self.attention = check_choice(attention, "attention", dynamic.ATTENTION_MODES)
        execution.resolve(impl, "dynamic" if attention == "invariant" else "equivariant")
        self.impl = impl  # see dgcnn_jax.execution.IMPLS
        self.reduction = reduction
        self.hidden = dynamic.attention_hidden(in_channels, reduction, min_hidden)
        ops.conv_padding(padding, kernel_size, dilation)
        self.padding = padding
        self.lifting = lifting
        self.parameterization = check_choice(parameterization, "parameterization",
                                             PARAMETERIZATIONS)
        self.bank_init = check_choice(bank_init, "bank_init", BANK_INITS)
        if not delta_scale >= 0:
            raise ValueError(f"delta_scale: expected a value >= 0, got {delta_scale!r}")
        self.delta_scale = delta_scale
        self.descriptor = check_choice(descriptor, "descriptor", tuple(dynamic.DESCRIPTORS))
        self.freeze_banks = bool(freeze_banks)
        self.targets, self.bank_mix = _check_omni(targets, bank_mix, num_kernels, attention,
                                                  parameterization, impl, bank_start)
        self.bank_start = bank_start
        k, cin, cout, nk = kernel_size, in_channels, out_channels, num_kernels
        shape = (k, k, cin, cout) if lifting else (k, k, cin, self.group.order, cout)
        residual = parameterization == "residual"
        if residual:  # the static kernel W_0 (He-normal) and its bias
            self.kernel = nnx.Param(kernel_init(rngs.params(), shape, pdt))
            self.bias = nnx.Param(jnp.zeros((cout,), pdt)) if use_bias else None
        keys = jax.random.split(rngs.params(), nk)
        banks = jnp.stack([kernel_init(key, shape, pdt) for key in keys])
        if residual:  # the changes dW_k: zero, or delta_scale times He-normal
            banks = banks * delta_scale
        elif bank_init == "mixture":
            banks = banks * jnp.sqrt(jnp.asarray(nk, pdt))
        self.kernels = (FrozenBank if self.freeze_banks else nnx.Param)(banks)
        self.biases = nnx.Param(jnp.zeros((nk, cout), pdt)) if use_bias else None
        shapes = dynamic.attention_param_shapes(attention, cin, self.hidden, nk, k, self.group,
                                                lifting=lifting, descriptor=descriptor)
        self.att_w1 = nnx.Param(default_kernel_init(rngs.params(), shapes["w1"], pdt))
        self.att_b1 = nnx.Param(jnp.zeros(shapes["b1"], pdt))
        if "banks" in self.targets:  # the bank head (absent for K = 1 without it)
            self.att_w2 = nnx.Param(_init.lecun_normal()(
                rngs.params(), shapes["w2"], pdt))
            self.att_b2 = nnx.Param(jnp.zeros(shapes["b2"], pdt))
        else:
            self.att_w2 = self.att_b2 = None
        heads = dynamic.omni_param_shapes(self.targets, shapes["w1"][0], self.hidden, nk, k,
                                          cin, cout)
        for target in self.targets[1:] if "banks" in self.targets else self.targets:
            setattr(self, f"att_w_{target}", nnx.Param(_init.lecun_normal()(
                rngs.params(), heads[f"w_{target}"], pdt)))
            bias = jnp.zeros(heads[f"b_{target}"], pdt)
            if target == "field_banks" and bank_start == "assignment":
                bias = (dynamic.ASSIGNMENT_LOGIT
                        * dynamic.bank_assignment(nk, cout).reshape(-1)).astype(pdt)
            setattr(self, f"att_b_{target}", nnx.Param(bias))

    @property
    def omni(self) -> bool:
        """Whether the layer attends to more than the banks (or mixes them signed)."""
        return self.targets != ("banks",) or self.bank_mix != "softmax"

    def omni_attention(self, x: jax.Array, tau=1.0) -> dict[str, jax.Array]:
        """The invariant attention over every target of the layer (see
        :func:`dgcnn_jax.dynamic.omni_attention`)."""
        self._check_input(x)
        params = {"w1": self.att_w1[...], "b1": self.att_b1[...]}
        for target in self.targets:
            if target == "banks":
                params["w_banks"], params["b_banks"] = self.att_w2[...], self.att_b2[...]
            else:
                params[f"w_{target}"] = getattr(self, f"att_w_{target}")[...]
                params[f"b_{target}"] = getattr(self, f"att_b_{target}")[...]
        params = {name: v.astype(jnp.float32) for name, v in params.items()}
        return dynamic.omni_attention(_cast(x, jnp.float32), params, self.targets, tau,
                                      kernel_size=self.kernel_size, descriptor=self.descriptor,
                                      bank_mix=self.bank_mix, num_kernels=self.num_kernels,
                                      precision=self.precision, ordered=self.impl == "orbit")

    def attention_weights(self, x: jax.Array, tau=1.0) -> jax.Array:
        """Mixing weights: ``[B, K]`` (invariant) or ``[B, K, |G|]`` (equivariant); per
        output field ``[B, K, C_out]`` (``field_banks``); a layer without attention over
        banks (K = 1) has weight 1."""
        if self.omni:
            for name in ("banks", "field_banks"):
                if name in self.targets:
                    return self.omni_attention(x, tau)[name]
            self._check_input(x)
            return jnp.ones((x.shape[0], 1), jnp.float32)
        self._check_input(x)
        params = (self.att_w1[...], self.att_b1[...], self.att_w2[...], self.att_b2[...])
        args = (_cast(x, jnp.float32), *(v.astype(jnp.float32) for v in params), tau)
        if self.attention == "invariant":
            return dynamic.invariant_attention(*args, self.descriptor, precision=self.precision,
                                               ordered=self.impl == "orbit")
        return dynamic.equivariant_attention(*args, self.group, padding=self.padding,
                                             precision=self.precision)

    def banks(self) -> jax.Array:
        """The K effective kernels ``[K, ...]``: ``W_k``, or ``W_0 + dW_k`` (residual form)."""
        if self.parameterization == "residual":
            return self.kernel[...][None] + self.kernels[...]
        return self.kernels[...]

    def _check_input(self, x):
        if self.lifting:
            check_image(x, "x", channels=self.in_channels)
        else:
            check_feature_map(x, self.group, "x", channels=self.in_channels)

    def __call__(self, x: jax.Array, *, tau=1.0) -> jax.Array:
        """Apply the layer; ``tau`` is the attention temperature (a call input, so a
        schedule can change it without recompiling)."""
        dt = _compute_dtype(self.dtype, x, self.param_dtype)
        kernels = self.kernels[...].astype(dt)
        biases = self.biases[...].astype(dt) if self.biases is not None else None
        common = dict(padding=self.padding, dilation=self.dilation, impl=self.impl,
                      precision=self.precision)
        if self.omni:
            attention = {name: w.astype(dt) for name, w in self.omni_attention(x, tau).items()}
            return dynamic.omni_conv(_cast(x, dt), kernels, biases, attention, self.group,
                                     **common)
        weights = self.attention_weights(x, tau).astype(dt)
        if self.parameterization == "residual":
            common["base_kernel"] = self.kernel[...].astype(dt)
            common["base_bias"] = self.bias[...].astype(dt) if self.bias is not None else None
        conv = dynamic.dynamic_conv if self.attention == "invariant" \
            else dynamic.dynamic_conv_equivariant
        return conv(_cast(x, dt), kernels, biases, weights, self.group, **common)


class DynamicLiftingConv(_DynamicBase):
    """Dynamic lifting convolution: ``[B, H, W, C_in] -> [B, H', W', C_out, |G|]``.

    Parameters: ``kernels [K, k, k, C_in, C_out]``, ``biases [K, C_out]`` and the
    attention branch ``att_*``. ``num_kernels`` K (default 4), ``attention``
    ("invariant" or "equivariant"), ``reduction`` (hidden width ratio of the attention
    MLP, at least ``min_hidden``), ``impl`` (how the convolution runs: a dynamic entry of
    :data:`dgcnn_jax.execution.IMPLS`; ``"auto"``, the default, picks the measured
    fastest for the backend; equivariant attention runs ``"linear"``),
    ``parameterization`` (:data:`PARAMETERIZATIONS`: ``"banks"``, the default, or
    ``"residual"``, which adds a static ``kernel [k, k, C_in, C_out]`` and ``bias`` and
    makes ``kernels``/``biases`` the K changes, initialised at ``delta_scale`` times
    He-normal: 0, the default, starts as the static convolution exactly), ``bank_init``
    (:data:`BANK_INITS`), ``descriptor`` (the invariant attention's statistics, a key of
    :data:`dgcnn_jax.dynamic.DESCRIPTORS`), ``freeze_banks`` (keep ``kernels`` at
    their initial values, a :class:`FrozenBank`: the control that mixes untrained
    kernels) and ``precision`` (of every convolution and matrix product, a name of
    :data:`dgcnn_jax.execution.PRECISIONS`; ``"highest"``, the default, keeps exact
    equivariance on GPUs and TPUs). ``targets`` (:data:`dgcnn_jax.dynamic.TARGETS`):
    what the invariant attention acts on, ``("banks",)`` by default (the published
    layer); adding ``"positions"``, ``"in_fields"`` or ``"out_fields"`` gives sigmoid
    attention over the base kernel's ``k x k`` positions and fields (ODConv), each with its
    head ``att_w_<target>``, ``att_b_<target>``; without ``"banks"`` K must be 1.
    ``bank_mix``: ``"softmax"`` or ``"signed"`` (L1-normalised, negative weights allowed).
    ``"field_banks"`` instead of ``"banks"`` mixes the banks per output field, and
    ``bank_start="assignment"`` (:data:`BANK_STARTS`) starts field ``o`` on bank ``o mod
    K`` so that the banks separate (KernelWarehouse). ``dtype`` (of the convolution and
    the kernel mixing; None: the promotion of the input's and the parameters') and
    ``param_dtype`` (float32) as for :class:`LiftingConv`; the attention (descriptor,
    MLP, softmax) is computed in float32 whatever ``dtype`` is.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 group: Group | str = "p4m", *, padding: ops.Padding = "SAME",
                 dilation: int = 1, use_bias: bool = True, kernel_init=default_kernel_init,
                 num_kernels: int = 4, attention: str = "invariant", reduction: float = 0.25,
                 min_hidden: int = 4, impl: str = "auto", parameterization: str = "banks",
                 bank_init: str = "per_bank", delta_scale: float = 0.0,
                 descriptor: str = "mean", freeze_banks: bool = False,
                 precision: str = execution.DEFAULT_PRECISION, targets=("banks",),
                 bank_mix: str = "softmax", bank_start: str = "random", dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, kernel_size, group, lifting=True,
                         padding=padding, dilation=dilation, use_bias=use_bias,
                         kernel_init=kernel_init, num_kernels=num_kernels, attention=attention,
                         reduction=reduction, min_hidden=min_hidden, impl=impl,
                         parameterization=parameterization, bank_init=bank_init,
                         delta_scale=delta_scale, descriptor=descriptor,
                         freeze_banks=freeze_banks, precision=precision, rngs=rngs,
                         targets=targets, bank_mix=bank_mix, bank_start=bank_start,
                         dtype=dtype, param_dtype=param_dtype)


class DynamicGroupConv(_DynamicBase):
    """Dynamic group convolution: ``[B, H, W, C_in, |G|] -> [B, H', W', C_out, |G|]``.

    Parameters: ``kernels [K, k, k, C_in, |G|, C_out]``, ``biases [K, C_out]`` and the
    attention branch ``att_*``; other arguments as :class:`DynamicLiftingConv`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 group: Group | str = "p4m", *, padding: ops.Padding = "SAME",
                 dilation: int = 1, use_bias: bool = True, kernel_init=default_kernel_init,
                 num_kernels: int = 4, attention: str = "invariant", reduction: float = 0.25,
                 min_hidden: int = 4, impl: str = "auto", parameterization: str = "banks",
                 bank_init: str = "per_bank", delta_scale: float = 0.0,
                 descriptor: str = "mean", freeze_banks: bool = False,
                 precision: str = execution.DEFAULT_PRECISION, targets=("banks",),
                 bank_mix: str = "softmax", bank_start: str = "random", dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, kernel_size, group, lifting=False,
                         padding=padding, dilation=dilation, use_bias=use_bias,
                         kernel_init=kernel_init, num_kernels=num_kernels, attention=attention,
                         reduction=reduction, min_hidden=min_hidden, impl=impl,
                         parameterization=parameterization, bank_init=bank_init,
                         delta_scale=delta_scale, descriptor=descriptor,
                         freeze_banks=freeze_banks, precision=precision, rngs=rngs,
                         targets=targets, bank_mix=bank_mix, bank_start=bank_start,
                         dtype=dtype, param_dtype=param_dtype)
