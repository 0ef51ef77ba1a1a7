"""Figures from a trained run: attention weights per layer, equivariance on a real image.

    python -m experiments.figures --workdir runs/compare/breastmnist/p4m_dgcnn/seed0

Both use the run's best checkpoint (eval mode, the temperature it was validated with)
and the test split; each writes a PNG and a JSON file with the numbers it plots.

* ``attention.png``: per dynamic layer, the mixing weight of each of the K kernels over
  the test images, split by class (equivariant attention: averaged over the group axis).
* ``equivariance.png``: one test image under every element ``g`` of the model's group:
  ``L_g x``, the feature map of ``L_g x`` and ``L_g`` applied to the feature map of ``x``
  (they agree), their difference; the JSON holds the largest relative difference over
  every element and every layer.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dgcnn_jax import get_group
from dgcnn_jax.testing import equivariance_errors
from experiments import cli, evaluate, plots, training

__all__ = ["attention_figure", "equivariance_figure", "main"]

_SHOWN_LAYER = 2  # the third convolution: 28x28 maps, before the 2x2 pooling


def _load(workdir, data_dir=None):
    """Eval-mode model, its temperature, normalised test images and labels, and the
    model's intermediates as one compiled function of the images."""
    run = evaluate.load_run(workdir, data_dir)
    model = run.state.model(training=False)
    if not hasattr(model, "intermediates"):
        raise ValueError(f"{workdir}: model {run.config.model} does not report intermediates")
    images, labels = run.dataset.split("test")
    x = (images.astype(np.float32) / 255.0 - run.dataset.mean) / run.dataset.std
    # split once: a call is then a plain jitted function of the images (nnx.jit would
    # walk the model's graph on every one of the figure's ~60 calls)
    graphdef, state = nnx.split(model)
    compiled = jax.jit(lambda s, v: nnx.merge(graphdef, s).intermediates(v, tau=run.tau))
    return run.config, model, run.tau, x, labels, lambda v: compiled(state, v)


def attention_figure(workdir, out, data_dir=None) -> dict:
    """Plot the attention weights of every dynamic layer over the test split."""
    config, model, tau, x, labels, intermediates = _load(workdir, data_dir)
    if not model.dynamic:
        raise ValueError(f"{workdir}: model {config.model} has no dynamic layers")
    weights = [np.asarray(w) for w in intermediates(jnp.asarray(x))["attention"]]
    weights = [w.mean(axis=-1) if w.ndim == 3 else w for w in weights]  # [N, K]
    classes = sorted(set(labels.tolist()))
    stats = {"workdir": str(workdir), "model": config.model, "tau": tau, "layers": []}
    names = training.dynamic_layer_names(model)  # a static stem has no attention
    for name, w in zip(names, weights):
        stats["layers"].append({"layer": name,
            "mean": w.mean(0).tolist(), "std": w.std(0).tolist(),
            "entropy_mean": float(-(w * np.log(np.maximum(w, 1e-12))).sum(1).mean()),
            "per_class_mean": {str(c): w[labels == c].mean(0).tolist() for c in classes}})
    out = pathlib.Path(out)
    plots.attention_boxes(weights, labels, out, f"{config.model} on {config.dataset}: "
                          f"attention per layer (tau {tau:.2f})", names)
    out.with_suffix(".json").write_text(json.dumps(stats, indent=2))
    return stats


def equivariance_figure(workdir, out, data_dir=None, index: int | None = None) -> dict:
    """Show that feature maps of a transformed test image are the transformed maps."""
    config, model, tau, x, labels, intermediates = _load(workdir, data_dir)
    group = get_group(model.group)
    if index is None:  # the first test image of the positive (last) class
        index = int(np.flatnonzero(labels == labels.max())[0])
    image = jnp.asarray(x[index:index + 1])
    layers = len(model.convs)
    # [layers, |G|]: max |Phi_i(L_g x) - L_g Phi_i(x)| / max |Phi_i(x)| per layer i
    seen = {}  # the features of each transformed image, computed once for all layers

    def features(v):
        key = np.asarray(v).tobytes()
        if key not in seen:
            seen[key] = intermediates(v)["features"]
        return seen[key]

    errors = np.stack([equivariance_errors(lambda v, i=i: features(v)[i], group, image)
                       for i in range(layers)])
    feats = features(image)[_SHOWN_LAYER]
    field = int(jnp.argmax(jnp.abs(feats).mean(axis=(0, 1, 2, 4))))  # most active field
    rows = []
    for g in range(group.order):
        xg = group.transform_image(image, g)
        fg = features(xg)[_SHOWN_LAYER]
        lg = group.transform_feature_map(feats, g)
        # the field's channel at the identity orientation, one map per panel
        rows.append([xg[0, :, :, 0], fg[0, :, :, field, 0], lg[0, :, :, field, 0],
                     jnp.abs(fg - lg)[0, :, :, field, 0]])
    out = pathlib.Path(out)
    plots.equivariance_grid(
        rows, [f"g = {name}" for name in group.element_names],
        ["L_g x", "features of L_g x", "L_g (features of x)", "difference"], out,
        f"{config.model}: layer {_SHOWN_LAYER + 1}, field {field}; max relative error over "
        f"all g and layers {errors.max():.1e}", float(jnp.abs(feats[..., field, :]).max()))
    result = {"workdir": str(workdir), "model": config.model, "test_index": index,
              "elements": list(group.element_names),
              "relative_error_per_layer": errors.tolist(),
              "max_relative_error": float(errors.max())}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None):
    p = cli.Parser(__doc__)
    p.add_argument("--workdir", required=True, help="a training work directory")
    p.add_argument("--out", default=None, help="output folder (default: the workdir)")
    p.add_argument("--data-dir", default=None, help="override the run's data directory")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out or args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        att = attention_figure(args.workdir, out / "attention.png", args.data_dir)
        eq = equivariance_figure(args.workdir, out / "equivariance.png", args.data_dir)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    for i, layer in enumerate(att["layers"]):
        print(f"layer {i + 1}: mean weights {np.round(layer['mean'], 3).tolist()}  "
              f"entropy {layer['entropy_mean']:.3f}")
    print(f"largest relative equivariance error: {eq['max_relative_error']:.2e}")
    print(f"wrote {out / 'attention.png'} and {out / 'equivariance.png'}")


if __name__ == "__main__":
    cli.run(main, "experiments.figures")
