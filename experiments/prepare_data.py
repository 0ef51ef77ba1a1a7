"""One-time preparation of TFDS-backed data (no TensorFlow needed).

    python -m experiments.prepare_data pcam [--data-dir DIR] [--manual-dir DIR]
    python -m experiments.prepare_data breakhis --root FOLDER [--data-dir DIR] [--seed 0]
    python -m experiments.prepare_data medmnist [--name breastmnist] [--data-dir DIR]
    python -m experiments.prepare_data pbc --root PBC_dataset_normal_DIB --data-dir DIR

``pcam`` downloads the six official PatchCamelyon ``.h5.gz`` files (about 7.5 GB), or
reads them from ``--manual-dir`` for a fully offline preparation, and writes
``dgcnn_patch_camelyon`` as array_record under ``--data-dir`` (default
``~/tensorflow_datasets``). ``breakhis`` prepares a ``<class>/<patient>/<magnification>
/*.png`` folder, split by patient. ``medmnist`` downloads and verifies one archive.
"""

from __future__ import annotations

import sys

from dgcnn_jax import data
from experiments import cli


def main(argv=None):
    p = cli.Parser(__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    pcam = sub.add_parser("pcam")
    pcam.add_argument("--data-dir", default=None)
    pcam.add_argument("--manual-dir", default=None)
    bh = sub.add_parser("breakhis")
    bh.add_argument("--root", required=True)
    bh.add_argument("--data-dir", default=None)
    bh.add_argument("--seed", type=int, default=0)
    pb = sub.add_parser("pbc")
    pb.add_argument("--root", required=True,
                    help="the official PBC_dataset_normal_DIB folder (one folder per class)")
    pb.add_argument("--data-dir", default=None,
                    help="where pbc28.npz goes (default: the first DGCNN_DATA_DIR folder, or "
                         "the user cache)")
    pb.add_argument("--seed", type=int, default=0, help="split seed (0: the published file)")
    mm = sub.add_parser("medmnist")
    mm.add_argument("--name", default=data.medmnist.DEFAULT_DATASET)
    mm.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    if args.what in ("pcam", "breakhis"):  # TFDS builders: the extra "tfds"
        from dgcnn_jax.data import tfds_sources
    if args.what == "pcam":
        tfds_sources.prepare_pcam(args.data_dir, args.manual_dir)
    elif args.what == "breakhis":
        try:
            tfds_sources.prepare_breakhis(args.root, args.data_dir, args.seed)
        except (OSError, ValueError) as err:
            p.exit(2, f"{p.prog} breakhis: error: {err}\n")
    elif args.what == "pbc":
        try:
            return _prepare_pbc(args.root, args.data_dir, args.seed)
        except (OSError, ValueError) as err:
            p.exit(2, f"{p.prog} pbc: error: {err}\n")
    else:
        print(data.fetch(args.name, args.data_dir))


def _prepare_pbc(root, data_dir, seed):
    from tqdm.auto import tqdm

    out = data.default_data_dir(data_dir)
    with tqdm(desc="pbc28", unit="image", file=sys.stderr, disable=None) as bar:  # no bar in pipes
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        report = data.pbc.build(root, out, seed=seed, progress=progress)
    checksum = data.medmnist.md5sum(report.path)
    print(f"wrote {report.path}: {report.kept} images, train / val / test "
          f"{' / '.join(map(str, report.split_sizes))}; dropped {len(report.dropped_not_images)}"
          f" non-images, {len(report.dropped_cross_class_duplicates)} files of cross-class "
          f"duplicates, {len(report.dropped_same_class_duplicates)} same-class copies")
    if seed == 0:
        match = checksum == data.pbc.MD5
        print(f"MD5 {checksum}: {'matches' if match else 'DIFFERS FROM'} the published file"
              f"{'' if match else ' ' + data.pbc.MD5 + ' (another source folder?)'}")
    return report


if __name__ == "__main__":
    cli.run(main, "experiments.prepare_data", on_interrupt="nothing was written (each file "
            "is written to a temporary name first); run the command again")
