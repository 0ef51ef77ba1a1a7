"""One-time preparation of data: archives from folders of images, and TFDS data.

    python -m experiments.prepare_data folder --root DIR --name NAME [options] [--data-dir DIR]
    python -m experiments.prepare_data idc --root FOLDER [--data-dir DIR]
    python -m experiments.prepare_data pbc --root PBC_dataset_normal_DIB [--data-dir DIR]
    python -m experiments.prepare_data medmnist [--name breastmnist] [--data-dir DIR]
    python -m experiments.prepare_data pcam [--data-dir DIR] [--manual-dir DIR]
    python -m experiments.prepare_data breakhis --root FOLDER [--data-dir DIR] [--seed 0]

``folder`` turns ``ROOT/<class>/<image>`` (or ``ROOT/<group>/<class>/<image>``) into
``NAME.npz`` and ``NAME.report.json`` (what was kept and dropped, and why) with
:func:`dgcnn_jax.data.folder.build`; train on it with ``--set dataset=NAME --set
data_dir=DIR``. ``idc`` and ``pbc`` are that builder with the recipes of the published
``idc50.npz`` (Kaggle layout ``<patient>/<0|1>/*.png``) and ``pbc28.npz``. Archives go
to ``--data-dir`` (default: the first ``DGCNN_DATA_DIR`` folder, or the user cache).
``pcam`` downloads the six official PatchCamelyon ``.h5.gz`` files (about 7.5 GB), or
reads them from ``--manual-dir``, and writes ``dgcnn_patch_camelyon`` as array_record
(default ``~/tensorflow_datasets``). ``breakhis`` prepares a ``<class>/<patient>/
<magnification>/*.png`` folder, split by patient. ``medmnist`` downloads and verifies
one archive.
"""

from __future__ import annotations

import dataclasses
import sys

from dgcnn_jax import data
from experiments import cli


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ValueError(f"--split: expected three fractions train,val,test such as "
                         f"0.7,0.1,0.2, got {text!r}")
    return parts


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(x) for x in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise ValueError(f"--require-size: expected HEIGHTxWIDTH or one size, got {text!r}")
    return values * 2 if len(values) == 1 else values


def _folder_recipe(args) -> data.folder.Recipe:
    extensions = tuple(e if e.startswith(".") else f".{e}"
                       for e in args.extensions.split(",") if e) if args.extensions else ()
    return data.folder.Recipe(
        name=args.name, layout=args.layout, extensions=extensions,
        name_pattern=args.name_pattern, group_pattern=args.group_pattern,
        mode="L" if args.grayscale else "RGB",
        require_size=_size(args.require_size) if args.require_size else None,
        crop=args.crop, size=args.size, fractions=_fractions(args.split), seed=args.seed,
        group_key=args.group_key)


def _parser():
    p = cli.Parser(__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    fo = sub.add_parser("folder", help="any folder of class folders")
    fo.add_argument("--root", required=True, help="ROOT/<class>/<image> (or --layout)")
    fo.add_argument("--name", required=True, help="the dataset name: NAME.npz")
    fo.add_argument("--layout", default="class", choices=data.folder.LAYOUTS,
                    help="group/class: ROOT/<group>/<class>/<image>, split by group")
    fo.add_argument("--extensions", default=",".join(data.folder.IMAGE_EXTENSIONS),
                    help="accepted suffixes, comma-separated ('': every file)")
    fo.add_argument("--name-pattern", default=None,
                    help="file names must match this regex (named groups class, group "
                         "must equal the folders)")
    fo.add_argument("--group-pattern", default=None,
                    help="regex searched in <class>/<file>: its first group is the group "
                         "key (e.g. a patient id); the split is then by group")
    fo.add_argument("--group-key", default="groups", help="archive key {split}_KEY")
    fo.add_argument("--grayscale", action="store_true", help="one channel (default RGB)")
    fo.add_argument("--require-size", default=None, metavar="HxW",
                    help="keep only images of this size (others dropped)")
    fo.add_argument("--crop", type=int, default=None, help="centre crop to CROP x CROP")
    fo.add_argument("--size", type=int, default=None, help="then resize to SIZE x SIZE")
    fo.add_argument("--split", default="0.7,0.1,0.2", help="train,val,test fractions")
    for name, what in (("idc", "the Kaggle-layout folder <patient>/<0|1>/*.png"),
                       ("pbc", "the official PBC_dataset_normal_DIB folder")):
        recipe = sub.add_parser(name, help=f"{name} from {what}")
        recipe.add_argument("--root", required=True, help=what)
    for recipe in (fo, sub.choices["idc"], sub.choices["pbc"]):
        recipe.add_argument("--data-dir", default=None,
                            help="where the archive goes (default: the first DGCNN_DATA_DIR "
                                 "folder, or the user cache)")
        recipe.add_argument("--seed", type=int, default=0,
                            help="split seed (0: the published file for idc and pbc)")
    pcam = sub.add_parser("pcam")
    pcam.add_argument("--data-dir", default=None)
    pcam.add_argument("--manual-dir", default=None)
    bh = sub.add_parser("breakhis")
    bh.add_argument("--root", required=True)
    bh.add_argument("--data-dir", default=None)
    bh.add_argument("--seed", type=int, default=0)
    mm = sub.add_parser("medmnist")
    mm.add_argument("--name", default=data.medmnist.DEFAULT_DATASET)
    mm.add_argument("--data-dir", default=None)
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.what in ("pcam", "breakhis"):  # TFDS builders: the extra "tfds"
        from dgcnn_jax.data import tfds_sources
    if args.what == "pcam":
        tfds_sources.prepare_pcam(args.data_dir, args.manual_dir)
    elif args.what == "breakhis":
        tfds_sources.prepare_breakhis(args.root, args.data_dir, args.seed)
    elif args.what == "medmnist":
        print(data.fetch(args.name, args.data_dir))
    else:
        if args.what == "folder":
            recipe = _folder_recipe(args)
        else:
            recipe = dataclasses.replace(getattr(data, args.what).RECIPE, seed=args.seed)
        published = data.info(args.what).md5 if args.what != "folder" and args.seed == 0 \
            else None
        return _build(args.root, args.data_dir, recipe, published)


def _build(root, data_dir, recipe, published: str | None):
    from tqdm.auto import tqdm

    out = data.default_data_dir(data_dir)
    # disable=None: no bar where stderr is not a terminal (a file or a pipe)
    with tqdm(desc=recipe.name, unit="file", file=sys.stderr, disable=None) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        report = data.folder.build(root, out, recipe, progress=progress)
    groups = (f" ({' / '.join(map(str, report.split_groups))} groups)"
              if any(report.split_groups) else "")
    print(f"wrote {report.path}: {report.kept} images of {'x'.join(map(str, report.image_shape))}"
          f", train / val / test {' / '.join(map(str, report.split_sizes))}{groups}")
    for reason, files in sorted(report.dropped.items()):
        print(f"  dropped {len(files)}: {reason}")
    if report.skipped:
        print(f"  skipped {len(report.skipped)} files by suffix")
    print(f"report: {report.report_path}")
    if published is not None:
        match = report.md5 == published
        print(f"MD5 {report.md5}: {'matches' if match else 'DIFFERS FROM'} the published file"
              f"{'' if match else ' ' + published + ' (another source folder?)'}")
    return report


if __name__ == "__main__":
    cli.run(main, "experiments.prepare_data", on_interrupt="nothing was written (each file "
            "is written to a temporary name first); run the command again")
