"""Writes the long-tailed CIFAR-10 segmentation set: Voronoi mosaics of CIFAR-10 images.

  python -m experiments.make_segmentation_data --out=DIR [--archive=...]   # --help: settings

``DIR`` (which must not exist) receives the folder layout (``classes.txt``,
``train|test/images|labels/*.png``: source ``seg_folder:DIR``), ``cifar10_seg.npz`` (source
``seg_npz:DIR/cifar10_seg.npz``), ``stats.json`` and ``stats.md`` (per-class pixel counts).
The same settings always write the same bytes. The per-class pixel counts are printed.
"""

import argparse
import inspect
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np

from cce_jax.data.sources import IGNORE_INDEX, Dataset, load_cifar10_jpeg

OFFLINE_ARCHIVE = "../shared/data/cifar10-jpeg.tar.gz"
GENERATOR_VERSION = 1  # bump when the output for the same settings changes


def pixel_counts(masks, k: int) -> np.ndarray:
    """Pixels of each class in ``masks`` (255 not counted): int64 [K]."""
    m = np.asarray(masks).reshape(-1)
    return np.bincount(m[m != IGNORE_INDEX], minlength=int(k)).astype(np.int64)


def pixel_count_report(ds: Dataset) -> dict:
    """Per-class pixel counts of both splits and the set's sizes, as JSON-ready values."""
    k = len(ds.class_names)
    train, test = pixel_counts(ds.train_labels, k), pixel_counts(ds.test_labels, k)
    return {
        "class_names": list(ds.class_names),
        "train_pixels": train.tolist(),
        "test_pixels": test.tolist(),
        "train_images": int(len(ds.train_labels)),
        "test_images": int(len(ds.test_labels)),
        "image_shape": list(ds.train_images.shape[1:]),
        "train_ignore_pixels": int(np.sum(ds.train_labels == IGNORE_INDEX)),
        "test_ignore_pixels": int(np.sum(ds.test_labels == IGNORE_INDEX)),
        "train_ratio": float(train.max() / train.min()) if train.min() > 0 else None,
        "test_classes_present": int(np.sum(test > 0)),
    }


def write_seg_folder(ds: Dataset, folder: str) -> None:
    """Writes ``ds`` in the layout ``seg_folder:`` reads (PNG images and label maps; the
    training files named by the training ids, the test files ``<position>``, 5+ digits)."""
    from PIL import Image

    if os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"{folder}: exists and is not empty")
    for s in map(str, ds.train_ids):
        if not s or s.startswith(".") or any(c in s for c in '/\\:*?"<>|\0'):
            raise ValueError(f"write_seg_folder: train id {s!r} cannot be a file name")
    width = max(5, len(str(len(ds.test_images) - 1)))
    os.makedirs(folder, exist_ok=True)
    names = "".join(f"{n}\n" for n in ds.class_names)
    pathlib.Path(folder, "classes.txt").write_text(names, encoding="utf-8")
    test_stems = [f"{i:0{width}d}" for i in range(len(ds.test_images))]
    for split, stems in (("train", map(str, ds.train_ids)), ("test", test_stems)):
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(folder, split, sub), exist_ok=True)
        x, m = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        for stem, img, mask in zip(stems, x, m):
            img = img[..., 0] if img.shape[-1] == 1 else img
            for sub, array in (("images", img), ("labels", mask)):
                path = f"{folder}/{split}/{sub}/{stem}.png"
                Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def save_seg_npz(ds: Dataset, path: str) -> None:
    """Writes ``ds`` as ``seg_npz:`` reads it (label maps as ``train_masks``/``test_masks``),
    compressed, byte-reproducibly (fixed member order and timestamps)."""
    arrays = {
        "train_images": ds.train_images,
        "train_masks": ds.train_labels,
        "train_ids": np.asarray([str(i) for i in ds.train_ids]),
        "test_images": ds.test_images,
        "test_masks": ds.test_labels,
        "class_names": np.asarray([str(n) for n in ds.class_names]),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue(), zipfile.ZIP_DEFLATED)


# -- the generator --------------------------------------------------------------------------


def _voronoi(points: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """Region index [n, S, S] of each pixel centre: the nearest valid point (first on ties)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    dy = c[None, None, :, None] - points[:, :, 0, None, None]  # [n, P, S, 1]
    dx = c[None, None, None, :] - points[:, :, 1, None, None]  # [n, P, 1, S]
    d2 = np.where(valid[:, :, None, None], dy * dy + dx * dx, np.inf)
    return np.argmin(d2, axis=1).astype(np.int64)


def _boundaries(regions: np.ndarray) -> np.ndarray:
    """True where one of the 8 neighbours (inside the image) is in another region."""
    h, w = regions.shape[-2:]
    p = np.pad(regions, ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = np.zeros(regions.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                out |= p[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != regions
    return out


def _make_split(rng, src_images, src_labels, *, n, size, cells, shares):
    k, (lo, hi) = len(shares), cells
    per_image = rng.integers(lo, hi + 1, n)
    valid = np.arange(hi)[None, :] < per_image[:, None]  # [n, P]
    points = rng.random((n, hi, 2)).astype(np.float32) * size
    regions = np.concatenate(
        [_voronoi(points[i : i + 256], valid[i : i + 256], size) for i in range(0, n, 256)]
    )
    ignore = _boundaries(regions)
    flat = np.arange(n)[:, None, None] * hi + regions  # global cell id per pixel
    area = np.bincount(flat[~ignore], minlength=n * hi)
    order = rng.permutation(np.nonzero(valid.reshape(-1))[0])
    # Walking the cells in that order, a cell takes the class whose interval of the cumulative
    # target shares holds the middle of its labelled area: each class gets its share up to a cell.
    cum = np.cumsum(area[order]).astype(np.float64)
    mid = (cum - area[order] / 2.0) / max(cum[-1], 1.0)
    cell_class = np.zeros(n * hi, np.int64)
    cell_class[order] = np.minimum(np.searchsorted(np.cumsum(shares), mid, side="right"), k - 1)
    # Each cell's source: a random CIFAR image of its class (with replacement).
    by_class = np.argsort(src_labels, kind="stable")
    starts = np.searchsorted(src_labels[by_class], np.arange(k))
    counts = np.bincount(src_labels, minlength=k)
    if np.any(counts == 0):
        raise ValueError(f"the source split has no image of classes {np.nonzero(counts == 0)[0]}")
    u = rng.random(n * hi)
    src = by_class[starts[cell_class] + (u * counts[cell_class]).astype(np.int64)]
    # Fill: the source image is tiled so that its centre lies on the cell's seed point.
    h, w = src_images.shape[1:3]
    oy = (h // 2 - np.floor(points[..., 0]).astype(np.int64)).reshape(-1)
    ox = (w // 2 - np.floor(points[..., 1]).astype(np.int64)).reshape(-1)
    yy, xx = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
    images = src_images[src[flat], (yy + oy[flat]) % h, (xx + ox[flat]) % w]
    masks = cell_class[flat].astype(np.uint8)
    masks[ignore] = IGNORE_INDEX
    return images.astype(np.uint8), masks


def make_cifar_segmentation(
    cifar, *, num_train=2000, num_test=500, size=32, cells=(2, 6), ratio=200.0, seed=0, test_seed=0
) -> Dataset:
    """A long-tailed segmentation set made from CIFAR-10 images (deterministic, seeded).

    Each ``size`` x ``size`` image is cut into Voronoi regions (``cells``: fewest, most seed
    points); a region takes one class and is filled with a CIFAR image of it (centred on the
    seed point); pixels with an 8-neighbour in another region are 255 (ignore). Training
    pixel shares ``∝ ratio ** (-c / (K - 1))`` (most / least ≈ ``ratio``), test shares 1 / K.
    ``seed`` and ``test_seed`` drive independent streams of the two splits. Training ids are
    the positions, 5 digits. ``cifar``: anything with the CIFAR arrays and ``class_names``.
    """
    k, (lo, hi) = len(cifar.class_names), (int(c) for c in cells)
    if not 1 <= lo <= hi:
        raise ValueError(f"cells must be (fewest, most) with 1 <= fewest <= most, got {cells}")
    if int(size) < 3:
        raise ValueError(f"size must be at least 3, got {size}")
    if float(ratio) < 1 or not np.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio}")
    if int(num_train) < 1 or int(num_test) < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train}, {num_test}")
    w = float(ratio) ** (-np.arange(k) / max(k - 1, 1))
    splits = []
    for s, (split, n, sd, shares) in enumerate(
        (("train", num_train, seed, w / w.sum()), ("test", num_test, test_seed, np.full(k, 1 / k)))
    ):
        rng = np.random.default_rng(np.random.SeedSequence(int(sd)).spawn(2)[s])
        x = np.asarray(getattr(cifar, f"{split}_images"), np.uint8)
        y = np.asarray(getattr(cifar, f"{split}_labels"), np.int64)
        splits.append(
            _make_split(rng, x, y, n=int(n), size=int(size), cells=(lo, hi), shares=shares)
        )
    (tr_x, tr_m), (te_x, te_m) = splits
    if absent := np.nonzero(pixel_counts(te_m, k) == 0)[0].tolist():
        raise ValueError(f"the test split has no labelled pixel of classes {absent}; add images")
    ids = tuple(f"{i:05d}" for i in range(int(num_train)))
    names = tuple(str(n) for n in cifar.class_names)
    return Dataset("cifar10_seg", tr_x, tr_m, ids, te_x, te_m, names)


# -- writing the set once -------------------------------------------------------------------


def _stats_markdown(report: dict, settings: dict) -> str:
    lines = [
        "# CIFAR-10 segmentation set: per-class pixel counts\n",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "\n",
        f"{report['train_images']} training and {report['test_images']} test images of "
        f"{report['image_shape']}; ignore (255) pixels: {report['train_ignore_pixels']} "
        f"(train), {report['test_ignore_pixels']} (test).\n",
        "| class | name | train pixels | test pixels |",
        "|---|---|---|---|",
    ]
    for c, name in enumerate(report["class_names"]):
        lines.append(f"| {c} | {name} | {report['train_pixels'][c]} | {report['test_pixels'][c]} |")
    ratio = report["train_ratio"]
    lines += ["", f"Most / least frequent training class: {ratio:.1f}" if ratio else ""]
    return "\n".join(lines).rstrip() + "\n"


def _defaults() -> dict:
    """The keyword settings of :func:`make_cifar_segmentation` and their defaults."""
    params = inspect.signature(make_cifar_segmentation).parameters.values()
    return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}


def _full_settings(settings: dict) -> dict:
    """Every setting of :func:`make_cifar_segmentation` (defaults filled in), JSON-ready."""
    if unknown := sorted(set(settings) - set(_defaults())):
        raise ValueError(f"unknown settings {unknown}; expected some of {sorted(_defaults())}")
    full = {**_defaults(), **settings}
    out = {n: (float(v) if n == "ratio" else int(v)) for n, v in full.items() if n != "cells"}
    return {**out, "cells": [int(c) for c in full["cells"]], "generator_version": GENERATOR_VERSION}


def write_cifar_segmentation(cifar, out_dir: str, *, formats=("folder", "npz"), **settings):
    """Makes the set of :func:`make_cifar_segmentation` and writes it into ``out_dir`` (which
    must not exist): the folder layout and/or ``cifar10_seg.npz``, ``stats.json`` and
    ``stats.md``, all in a temporary folder renamed at the end. Returns the :class:`Dataset`."""
    formats = tuple(formats)
    if set(formats) - {"folder", "npz"} or not formats:
        raise ValueError(f"formats: expected 'folder' and/or 'npz', got {formats}")
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    if os.path.exists(out_dir):
        raise ValueError(f"{out_dir}: exists; choose a new folder or delete it")
    full = _full_settings(settings)
    ds = make_cifar_segmentation(cifar, **settings)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}-", dir=os.path.dirname(out_dir))
    try:
        if "folder" in formats:
            write_seg_folder(ds, tmp)
        if "npz" in formats:
            save_seg_npz(ds, os.path.join(tmp, "cifar10_seg.npz"))
        report = pixel_count_report(ds)
        stats = {"settings": full, "formats": list(formats), **report}
        pathlib.Path(tmp, "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
        pathlib.Path(tmp, "stats.md").write_text(_stats_markdown(report, full))
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ds


def ensure_cifar_segmentation(out_dir: str, *, cifar, formats=("folder", "npz"), **settings):
    """:func:`write_cifar_segmentation` unless ``out_dir`` already holds that very set.

    An existing ``out_dir``'s ``stats.json`` must record the same settings (defaults filled
    in), formats and generator version, else ``ValueError`` names the differences. ``cifar``:
    the CIFAR-10 set, or a function returning it (called only to make the set). Several
    processes may call this at once. Returns the content of ``stats.json``."""
    want = {**_full_settings(settings), "formats": list(formats)}
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    stats_path = os.path.join(out_dir, "stats.json")
    if not os.path.exists(out_dir):
        try:
            data = cifar() if callable(cifar) else cifar
            write_cifar_segmentation(data, out_dir, formats=want["formats"], **settings)
        except (OSError, ValueError):
            if not os.path.isfile(stats_path):  # not another process's finished folder
                raise
    if not os.path.isfile(stats_path):
        raise ValueError(f"{out_dir}: exists but has no stats.json; delete it or choose another")
    with open(stats_path) as f:
        stats = json.load(f)
    have = {**stats.get("settings", {}), "formats": stats.get("formats")}
    if diff := sorted(k for k in want if have.get(k) != want[k]):
        raise ValueError(
            f"{out_dir}: holds a set made with other settings ({', '.join(diff)}); delete it "
            "or choose another folder"
        )
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.make_segmentation_data",
        description=__doc__.splitlines()[0] + " Settings: see make_cifar_segmentation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--archive", default=OFFLINE_ARCHIVE, help="the CIFAR-10 JPEG archive")
    p.add_argument("--cache_dir", default="~/.cache/cce_jax", help="its decoded copy")
    p.add_argument("--formats", default="folder,npz", help="folder and/or npz")
    for name, value in _defaults().items():
        if name != "cells":
            p.add_argument(f"--{name}", type=type(value), default=value)
    p.add_argument("--cells", default="2,6", help="FEWEST,MOST regions per image")
    args = p.parse_args(argv)
    cells = args.cells.split(",")
    if len(cells) != 2 or not all(c.strip().isdigit() for c in cells):
        why = f"--cells must be two integers FEWEST,MOST, got {args.cells!r}"
        print(f"error: {why}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cifar = load_cifar10_jpeg(args.archive, args.cache_dir)
    t1 = time.perf_counter()
    settings = {k: getattr(args, k) for k in _defaults()} | {"cells": tuple(map(int, cells))}
    formats = tuple(f for f in args.formats.split(",") if f)
    try:
        write_cifar_segmentation(cifar, args.out, formats=formats, **settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(pathlib.Path(args.out, "stats.md").read_text(), end="")
    took = f"{time.perf_counter() - t1:.1f} s (CIFAR-10 loaded in {t1 - t0:.1f} s)"
    print(f"\nwrote {os.path.abspath(args.out)} in {took}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
