"""One-time preparation of TFDS-backed data (no TensorFlow needed).

    python -m experiments.prepare_data pcam [--data-dir DIR] [--manual-dir DIR]
    python -m experiments.prepare_data breakhis --root FOLDER [--data-dir DIR] [--seed 0]
    python -m experiments.prepare_data medmnist [--name breastmnist] [--data-dir DIR]

``pcam`` downloads the six official PatchCamelyon ``.h5.gz`` files (about 7.5 GB), or
reads them from ``--manual-dir`` for a fully offline preparation, and writes
``dgcnn_patch_camelyon`` as array_record under ``--data-dir`` (default
``~/tensorflow_datasets``). ``breakhis`` prepares a ``<class>/<patient>/<magnification>
/*.png`` folder, split by patient. ``medmnist`` downloads and verifies one archive.
"""

from __future__ import annotations

import argparse

from dgcnn_jax import data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
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
    args = p.parse_args(argv)
    if args.what in ("pcam", "breakhis"):  # TFDS builders: the extra "tfds"
        from dgcnn_jax.data import tfds_sources
    if args.what == "pcam":
        tfds_sources.prepare_pcam(args.data_dir, args.manual_dir)
    elif args.what == "breakhis":
        tfds_sources.prepare_breakhis(args.root, args.data_dir, args.seed)
    else:
        print(data.fetch(args.name, args.data_dir))


if __name__ == "__main__":
    main()
