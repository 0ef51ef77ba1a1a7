"""Model registry: stable names used in configs and result tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flax import nnx

from .._checks import check_positive_int
from ._densenet import DenseGNet
from ._small import SmallGCNN, count_params
from ._flops import forward_flops

__all__ = ["ModelSpec", "available", "create", "spec", "count_params", "flops_per_image"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and what it is for."""

    name: str
    description: str
    group: str
    dynamic: bool
    build: Callable[..., nnx.Module]
    input_size: int = 28  # the image size the widths were matched at

    @property
    def in_channels(self) -> int:
        """Image channels of the family's data: 1 (grey MedMNIST) or 3 (PCam)."""
        return 1 if self.input_size == 28 else 3

    @property
    def baseline(self) -> str:
        """The plain (z2) model of the same family."""
        return "cnn" if self.input_size == 28 else "densenet"


def _dense(name, group, growth, dynamic, description, **fixed):
    def build(num_classes, in_channels, rngs, **kwargs):
        return DenseGNet(in_channels, num_classes, group, growth, dynamic=dynamic, rngs=rngs,
                         **{**fixed, **kwargs})
    return ModelSpec(name, description, group, dynamic, build, input_size=96)


def _small(name, group, width, dynamic, description, **fixed):
    def build(num_classes, in_channels, rngs, **kwargs):
        return SmallGCNN(in_channels, num_classes, group, width, dynamic=dynamic,
                         rngs=rngs, **{**fixed, **kwargs})
    return ModelSpec(name, description, group, dynamic, build)


_OMNI = ("banks", "positions", "in_fields", "out_fields")

# Widths matched so that the parameter counts agree within 10% (docs/models.md).
_SPECS = {s.name: s for s in [
    _small("cnn", "z2", 47, False, "plain CNN, 47 channels"),
    _small("p4_gcnn", "p4", 24, False, "p4 G-CNN, 24 fields (96 channels)"),
    _small("p4m_gcnn", "p4m", 17, False, "p4m G-CNN, 17 fields (136 channels)"),
    _small("p4_dgcnn", "p4", 12, True, "dynamic p4 G-CNN, K=4, 12 fields"),
    _small("p4m_dgcnn", "p4m", 8, True, "dynamic p4m G-CNN, K=4, 8 fields"),
    # FLOP-matched: the width of the static counterpart (about K times the parameters)
    _small("p4_dgcnn_wide", "p4", 24, True, "dynamic p4 G-CNN, K=4, width of p4_gcnn"),
    _small("p4m_dgcnn_wide", "p4m", 17, True, "dynamic p4m G-CNN, K=4, width of p4m_gcnn"),
    # the third form: invariant attention over banks, kernel positions and fields (ODConv)
    _small("p4m_odgcnn", "p4m", 17, True, "dynamic p4m G-CNN, K=4, attention over banks, "
           "positions and fields, width of p4m_gcnn", targets=_OMNI),
    _small("p4m_odgcnn_k1", "p4m", 17, True, "p4m G-CNN, one kernel, attention over "
           "positions and fields, width of p4m_gcnn", num_kernels=1, targets=_OMNI[1:]),
    _dense("densenet", "z2", 26, False, "DenseNet for 96 px PCam, growth 26"),
    _dense("p4_densenet", "p4", 13, False, "p4 DenseNet, growth 13"),
    _dense("p4m_densenet", "p4m", 9, False, "p4m DenseNet, growth 9 (Veeling et al.)"),
    _dense("p4m_ddensenet", "p4m", 5, True, "dynamic p4m DenseNet, K=3, growth 5",
           num_kernels=3),
    _dense("p4m_ddensenet_wide", "p4m", 9, True,
           "dynamic p4m DenseNet, K=3, growth of p4m_densenet", num_kernels=3),
]}


def available() -> tuple[str, ...]:
    """Names accepted by :func:`create`."""
    return tuple(_SPECS)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model."""
    if name not in _SPECS:
        raise ValueError(f"name: unknown model {name!r}; known models: {', '.join(_SPECS)}")
    return _SPECS[name]


def create(name: str, *, num_classes: int, in_channels: int = 1, rngs: nnx.Rngs,
           **kwargs) -> nnx.Module:
    """Build a registered model, e.g. ``create("p4m_dgcnn", num_classes=2, rngs=nnx.Rngs(0))``.

    Extra keyword arguments (e.g. ``dropout``, ``attention``) go to the model class.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    in_channels = check_positive_int(in_channels, "in_channels")
    return spec(name).build(num_classes, in_channels, rngs, **kwargs)


def flops_per_image(name: str, *, num_classes: int, in_channels: int | None = None,
                    input_size: int | None = None, **kwargs) -> int:
    """Forward FLOPs per image of a registered model (see :func:`forward_flops`).

    The model is built abstractly (``nnx.eval_shape``: no parameters are initialised);
    ``in_channels`` and ``input_size`` default to the model family's
    (:class:`ModelSpec`); other keyword arguments go to :func:`create`.
    """
    info = spec(name)
    in_channels = info.in_channels if in_channels is None else in_channels
    size = info.input_size if input_size is None else input_size
    model = nnx.eval_shape(lambda: create(name, num_classes=num_classes,
                                          in_channels=in_channels, rngs=nnx.Rngs(0), **kwargs))
    return forward_flops(model, (size, size, in_channels))
