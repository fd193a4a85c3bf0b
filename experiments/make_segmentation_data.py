"""Writes the long-tailed CIFAR-10 segmentation set (cce_jax.data.segmentation).

  python -m experiments.make_segmentation_data --out=DIR \\
      [--archive=../shared/data/cifar10-jpeg.tar.gz] [--cache_dir=~/.cache/cce_jax] \\
      [--num_train=2000] [--num_test=500] [--size=32] [--cells=2,6] [--ratio=200] \\
      [--seed=0] [--test_seed=0] [--formats=folder,npz]

``DIR`` (which must not exist) receives the folder layout (``classes.txt``,
``train|test/images|labels/*.png``: source ``seg_folder:DIR``), ``cifar10_seg.npz`` (source
``seg_npz:DIR/cifar10_seg.npz``), ``stats.json`` and ``stats.md`` (per-class pixel counts).
The same settings always write the same bytes. The per-class pixel counts are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

OFFLINE_ARCHIVE = "../shared/data/cifar10-jpeg.tar.gz"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.make_segmentation_data",
        description="Writes the long-tailed CIFAR-10 segmentation set.",
    )
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--archive", default=OFFLINE_ARCHIVE, help="the CIFAR-10 JPEG archive")
    p.add_argument("--cache_dir", default="~/.cache/cce_jax", help="its decoded copy")
    p.add_argument("--num_train", type=int, default=2000)
    p.add_argument("--num_test", type=int, default=500)
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--cells", default="2,6", help="fewest,most regions per image")
    p.add_argument("--ratio", type=float, default=200.0, help="most / least training pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the training split")
    p.add_argument("--test_seed", type=int, default=0, help="seed of the test split")
    p.add_argument("--formats", default="folder,npz", help="folder and/or npz")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from cce_jax.data import segmentation, sources

    try:
        cells = tuple(int(c) for c in args.cells.split(","))
        if len(cells) != 2:
            raise ValueError
    except ValueError:
        print(
            f"error: --cells must be two integers FEWEST,MOST, got {args.cells!r}", file=sys.stderr
        )
        return 2
    t0 = time.perf_counter()
    cifar = sources.load_cifar10_jpeg(args.archive, args.cache_dir)
    t1 = time.perf_counter()
    try:
        segmentation.write_cifar_segmentation(
            cifar,
            args.out,
            formats=tuple(f for f in args.formats.split(",") if f),
            num_train=args.num_train,
            num_test=args.num_test,
            size=args.size,
            cells=cells,
            ratio=args.ratio,
            seed=args.seed,
            test_seed=args.test_seed,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t2 = time.perf_counter()
    with open(os.path.join(args.out, "stats.md")) as f:
        print(f.read(), end="")
    print(
        f"\nwrote {os.path.abspath(args.out)} in {t2 - t1:.1f} s "
        f"(CIFAR-10 loaded in {t1 - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
