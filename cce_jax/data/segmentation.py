"""Semantic-segmentation data: folder and npz sources, pixel counts, a CIFAR-10 generator.

A segmentation set is a :class:`SegmentationDataset`: uint8 images ``[N, H, W, C]``, uint8
label maps ``[N, H, W]`` of class indices, and the class names. The value
:data:`IGNORE_INDEX` (255) marks pixels that count for nothing (void, unlabelled, region
boundaries); every other value must be a class index in ``[0, K)``.

Sources (``source`` strings, :func:`load_seg_source`):

==========================  ================================================================
``"seg_folder:DIR"``        the folder layout below (:func:`load_seg_folder`)
``"seg_npz:PATH"``          one ``.npz`` with ``train_masks``/``test_masks`` (:func:`load_seg_npz`)
==========================  ================================================================

The folder layout (:func:`load_seg_folder`, written by :func:`write_seg_folder`)::

    DIR/classes.txt                       one class name per line, class 0 first
    DIR/train/images/<stem>.png|.jpg|.jpeg
    DIR/train/labels/<stem>.png           single-channel 8-bit PNG (mode L or P) of class ids
    DIR/test/images/...                   the same for the test split
    DIR/test/labels/...

:func:`make_cifar_segmentation` builds a long-tailed set from CIFAR-10 (Voronoi regions, each
filled from a CIFAR image of its class) and :func:`write_cifar_segmentation` writes it in both
formats with its per-class pixel counts. :func:`random_crop_flip` is the jittable
augmentation that moves an image and its label map together; :func:`picture_grid` draws
images, true and predicted label maps side by side.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import io
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "SEG_SOURCES",
    "SegmentationDataset",
    "check_masks",
    "ensure_cifar_segmentation",
    "load_seg_folder",
    "load_seg_npz",
    "load_seg_source",
    "label_palette",
    "make_cifar_segmentation",
    "parse_seg_source",
    "picture_grid",
    "pixel_count_report",
    "random_crop_flip",
    "save_seg_npz",
    "training_pixel_counts",
    "write_cifar_segmentation",
    "write_seg_folder",
]

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SEG_SOURCES = ("seg_folder", "seg_npz")


@dataclasses.dataclass
class SegmentationDataset:
    """A segmentation set in memory.

    Attributes:
      name: the folder's or npz file's name, or the generator's.
      train_images: uint8 [N, H, W, C]; pixel = value / 255.
      train_masks: uint8 [N, H, W]: class indices in [0, K), or :data:`IGNORE_INDEX`.
      train_ids: N stable example ids (str): the file stems of a folder, the npz
        ``train_ids`` or ``"train:<position>"``.
      test_images: uint8 [M, H, W, C] (same H, W, C).
      test_masks: uint8 [M, H, W].
      class_names: K names; K is the number of classes.
    """

    name: str
    train_images: np.ndarray
    train_masks: np.ndarray
    train_ids: Sequence
    test_images: np.ndarray
    test_masks: np.ndarray
    class_names: tuple

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)


# ----------------------------------------------------------------------------------------
# Label maps and pixel counts
# ----------------------------------------------------------------------------------------


def check_masks(masks, num_classes: int, *, what: str = "masks") -> None:
    """Raises ``ValueError`` (naming ``what``) unless every value is < K or 255.

    >>> check_masks(np.array([[0, 2], [255, 1]], np.uint8), 3)
    >>> check_masks(np.array([[0, 3]], np.uint8), 3)
    Traceback (most recent call last):
    ...
    ValueError: masks: label value 3 is not a class index in [0, 3) nor the ignore index 255
    """
    m = np.asarray(masks)
    if m.dtype != np.uint8:
        raise ValueError(f"{what}: label maps must be uint8, got {m.dtype}")
    k = int(num_classes)
    if not 1 <= k <= IGNORE_INDEX:
        raise ValueError(f"{what}: the number of classes must be in [1, 255], got {k}")
    bad = (m >= k) & (m != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"{what}: label value {int(m[bad].min())} is not a class index in [0, {k}) nor "
            f"the ignore index {IGNORE_INDEX}"
        )


def training_pixel_counts(masks, num_classes: int) -> np.ndarray:
    """Pixels of each class in ``masks`` (ignore pixels, 255, not counted): int64 [K].

    Computed on the TRAINING masks, these are the class counts of the losses
    (``class_counts`` of CB, LA, BS, LDAM, MSE-OL's ranks) and the frequencies that define
    the many/medium/few groups of :func:`cce_jax.metrics.segmentation_metrics`.

    >>> training_pixel_counts(np.array([[0, 0, 255], [2, 0, 255]], np.uint8), 3).tolist()
    [3, 0, 1]
    """
    check_masks(masks, num_classes)
    m = np.asarray(masks).reshape(-1)
    return np.bincount(m[m != IGNORE_INDEX], minlength=int(num_classes)).astype(np.int64)


def pixel_count_report(ds: SegmentationDataset) -> dict:
    """Per-class pixel counts of both splits, as JSON-ready values.

    Keys: ``class_names``, ``train_pixels``, ``test_pixels`` (per class),
    ``train_images``, ``test_images``, ``image_shape`` ([H, W, C]),
    ``train_ignore_pixels``, ``test_ignore_pixels``, ``train_ratio`` (most / least
    frequent training class; ``None`` when a class has no training pixel) and
    ``test_classes_present``.
    """
    k = ds.num_classes
    train = training_pixel_counts(ds.train_masks, k)
    test = training_pixel_counts(ds.test_masks, k)
    return {
        "class_names": list(ds.class_names),
        "train_pixels": train.tolist(),
        "test_pixels": test.tolist(),
        "train_images": int(len(ds.train_masks)),
        "test_images": int(len(ds.test_masks)),
        "image_shape": list(ds.train_images.shape[1:]),
        "train_ignore_pixels": int(np.sum(ds.train_masks == IGNORE_INDEX)),
        "test_ignore_pixels": int(np.sum(ds.test_masks == IGNORE_INDEX)),
        "train_ratio": float(train.max() / train.min()) if train.min() > 0 else None,
        "test_classes_present": int(np.sum(test > 0)),
    }


def _check_dataset(ds: SegmentationDataset, where: str) -> SegmentationDataset:
    k = len(ds.class_names)
    if k < 1:
        raise ValueError(f"{where}: no class names")
    for split in ("train", "test"):
        x = getattr(ds, f"{split}_images")
        m = getattr(ds, f"{split}_masks")
        if x.dtype != np.uint8 or x.ndim != 4 or 0 in x.shape:
            raise ValueError(
                f"{where}: {split}_images must be non-empty uint8 [N, H, W, C], got "
                f"{x.dtype} {x.shape}"
            )
        if m.shape != x.shape[:3]:
            raise ValueError(
                f"{where}: {split}_masks has shape {m.shape} but {split}_images {x.shape} "
                "(expected [N, H, W] of the images)"
            )
        check_masks(m, k, what=f"{where}: {split}_masks")
    if ds.train_images.shape[1:] != ds.test_images.shape[1:]:
        raise ValueError(
            f"{where}: train images are {ds.train_images.shape[1:]} but test images "
            f"{ds.test_images.shape[1:]}"
        )
    if len(ds.train_ids) != len(ds.train_images) or len(set(ds.train_ids)) != len(ds.train_ids):
        raise ValueError(f"{where}: train_ids must be {len(ds.train_images)} unique ids")
    return ds


# ----------------------------------------------------------------------------------------
# The folder source
# ----------------------------------------------------------------------------------------


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise ValueError(f"{path}: {mode} images are not supported (8-bit L or RGB)")
            if mode in ("1", "L", "LA"):
                return np.asarray(im.convert("L"), np.uint8)[..., None]
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot be read as an image ({e})") from e


def _read_label(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.format != "PNG":
                raise ValueError(f"{path}: a label map must be a PNG file, got {im.format}")
            if im.mode not in ("L", "P"):
                raise ValueError(
                    f"{path}: a label map must be a single-channel 8-bit PNG (mode L or P) of "
                    f"class indices, got mode {im.mode}"
                )
            return np.array(im, np.uint8)  # P: the palette indices are the class ids
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot be read as a PNG label map ({e})") from e


def _read_classes(folder: str) -> tuple:
    path = os.path.join(folder, "classes.txt")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing (one class name per line, class 0 first)")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if not names:
        raise ValueError(f"{path}: no class names")
    if any(not n for n in names):
        raise ValueError(f"{path}: line {names.index('') + 1} is empty (one name per line)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names must be unique")
    if len(names) >= IGNORE_INDEX:
        raise ValueError(f"{path}: at most 254 classes (255 is the ignore index)")
    return names


def _read_split(folder: str, split: str, num_classes: int):
    img_dir = os.path.join(folder, split, "images")
    lab_dir = os.path.join(folder, split, "labels")
    for d in (img_dir, lab_dir):
        if not os.path.isdir(d):
            raise ValueError(f"{d}: missing (expected {split}/images/ and {split}/labels/)")
    images = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise ValueError(f"{img_dir}: no .png/.jpg/.jpeg images")
    stems = [os.path.splitext(f)[0] for f in images]
    seen = {}
    for f, s in zip(images, stems):
        if s in seen:
            raise ValueError(f"{os.path.join(img_dir, f)}: a second image named {s!r} ({seen[s]})")
        seen[s] = f
    labels = sorted(f for f in os.listdir(lab_dir) if not f.startswith("."))
    for f in labels:
        stem, ext = os.path.splitext(f)
        if ext.lower() != ".png" or stem not in seen:
            raise ValueError(
                f"{os.path.join(lab_dir, f)}: no image {split}/images/{stem}.png|.jpg|.jpeg "
                "for this label map (label maps are <stem>.png beside an image <stem>)"
            )
    for f, s in zip(images, stems):
        if not os.path.isfile(os.path.join(lab_dir, s + ".png")):
            raise ValueError(
                f"{os.path.join(img_dir, f)}: its label map {split}/labels/{s}.png is missing"
            )

    def read(i):
        ipath = os.path.join(img_dir, images[i])
        lpath = os.path.join(lab_dir, stems[i] + ".png")
        x, m = _read_image(ipath), _read_label(lpath)
        if m.shape != x.shape[:2]:
            raise ValueError(
                f"{lpath}: label map is {m.shape[1]}x{m.shape[0]} (WxH) but its image "
                f"{ipath} is {x.shape[1]}x{x.shape[0]}"
            )
        check_masks(m, num_classes, what=lpath)
        return x, m

    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        pairs = list(pool.map(read, range(len(images))))
    first = pairs[0][0].shape
    for f, (x, _) in zip(images, pairs):
        if x.shape != first:
            raise ValueError(
                f"{os.path.join(img_dir, f)}: shape {x.shape} (H, W, C) differs from the "
                f"first image's {first} ({images[0]}); all images must have one size and "
                "channel count"
            )
    return (
        np.stack([x for x, _ in pairs]),
        np.stack([m for _, m in pairs]),
        stems,
    )


def load_seg_folder(folder: str) -> SegmentationDataset:
    """A segmentation set stored as image and label-map files (the CamVid-like layout).

    Layout::

        DIR/classes.txt                  K lines: the class names, class 0 first
        DIR/train/images/<stem>.png      or .jpg / .jpeg: 8-bit grayscale or colour
        DIR/train/labels/<stem>.png      one label map per image, same stem and size
        DIR/test/images/, DIR/test/labels/

    A label map is a single-channel 8-bit PNG (mode ``L``, or ``P`` whose palette indices
    are the class ids, as Pascal VOC stores them) whose values are class indices
    in ``[0, K)`` or 255 (ignore). Images are read as RGB (palette, RGBA, CMYK: converted)
    or, when grayscale, with one channel; all images of both splits must have one size and
    channel count. Files are sorted by name; the training ids are the file stems.

    Raises:
      ValueError: naming the file, for a missing ``classes.txt`` or folder, an image without
        a label map or a label map without an image, a label map that is not a
        single-channel 8-bit PNG, a label map whose size differs from its image's, a label
        value >= K other than 255, images of different sizes or channel counts, an
        unreadable file.
    """
    folder = os.path.expanduser(str(folder))
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    names = _read_classes(folder)
    tr_x, tr_m, tr_ids = _read_split(folder, "train", len(names))
    te_x, te_m, _ = _read_split(folder, "test", len(names))
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise ValueError(
            f"{folder}: train images are {tr_x.shape[1:]} (H, W, C) but test images "
            f"{te_x.shape[1:]}"
        )
    name = os.path.basename(os.path.normpath(folder))
    return SegmentationDataset(name, tr_x, tr_m, tuple(tr_ids), te_x, te_m, names)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_seg_folder(ds: SegmentationDataset, folder: str) -> None:
    """Writes ``ds`` in the layout of :func:`load_seg_folder` (PNG images and label maps).

    ``folder`` must not exist or be empty. The files are named by the training ids (which
    must then be usable as file names) and, for the test split, ``<position>`` with as many
    digits as the training names; :func:`load_seg_folder` reads back exactly ``ds``'s
    arrays, names and training ids.
    """
    _check_dataset(ds, "write_seg_folder")
    if os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"{folder}: exists and is not empty")
    for i in ds.train_ids:
        s = str(i)
        if not s or s.startswith(".") or any(c in s for c in '/\\:*?"<>|\0'):
            raise ValueError(f"write_seg_folder: train id {s!r} cannot be a file name")
    width = max(5, len(str(len(ds.test_images) - 1)))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in ds.class_names))
    for split, stems in (
        ("train", [str(i) for i in ds.train_ids]),
        ("test", [f"{i:0{width}d}" for i in range(len(ds.test_images))]),
    ):
        x, m = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_masks")
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(folder, split, sub), exist_ok=True)
        for stem, img, mask in zip(stems, x, m):
            img = img[..., 0] if img.shape[-1] == 1 else img
            with open(os.path.join(folder, split, "images", stem + ".png"), "wb") as f:
                f.write(_png_bytes(np.ascontiguousarray(img)))
            with open(os.path.join(folder, split, "labels", stem + ".png"), "wb") as f:
                f.write(_png_bytes(np.ascontiguousarray(mask)))


# ----------------------------------------------------------------------------------------
# The npz source
# ----------------------------------------------------------------------------------------


def load_seg_npz(path: str) -> SegmentationDataset:
    """A segmentation set stored in one ``.npz`` (``np.savez``; no pickled objects).

    Arrays: ``train_images`` uint8 [N, H, W, C] (or [N, H, W], read as C = 1),
    ``train_masks`` uint8 [N, H, W], ``test_images`` uint8 [M, H, W, C] (same H, W, C),
    ``test_masks`` uint8 [M, H, W]; optional ``class_names`` (K strings; default ``"0"``..
    ``"K-1"`` with K = 1 + the largest label value other than 255) and ``train_ids`` (N
    unique strings or integers; default ``"train:<position>"``). Other arrays (e.g. the
    ``train_labels`` of a classification set in the same file) are ignored.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming the file and the array, for a missing array, a wrong dtype or
        shape, a label value >= K other than 255, duplicate ``train_ids``.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the npz file does not exist")
    required = ("train_images", "train_masks", "test_images", "test_masks")
    unreadable = (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error)
    try:
        z = np.load(path, allow_pickle=False)
    except unreadable as e:
        raise ValueError(f"{path}: cannot be read as a .npz ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single array (.npy), not a .npz of named arrays")
    with z:
        missing = [k for k in required if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (has {sorted(z.files)})")
        try:
            arrays = {k: z[k] for k in (*required, "class_names", "train_ids") if k in z.files}
        except unreadable as e:
            raise ValueError(f"{path}: cannot read its arrays ({e})") from e
    for split in ("train", "test"):
        x = arrays[f"{split}_images"]
        if x.ndim == 3:
            arrays[f"{split}_images"] = x[..., None]
        m = arrays[f"{split}_masks"]
        if m.dtype != np.uint8 or m.ndim != 3:
            raise ValueError(
                f"{path}: {split}_masks must be uint8 [N, H, W], got {m.dtype} {m.shape}"
            )
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or len(cn) == 0:
            raise ValueError(f"{path}: class_names must be a 1-D array of K names, got {cn.shape}")
        names = tuple(str(n) for n in cn.tolist())
    else:
        values = [
            int(m[m != IGNORE_INDEX].max())
            for m in (arrays["train_masks"], arrays["test_masks"])
            if np.any(m != IGNORE_INDEX)
        ]
        names = tuple(str(i) for i in range(max(values, default=0) + 1))
    n = len(arrays["train_images"])
    if "train_ids" in arrays:
        ids_arr = arrays["train_ids"]
        if ids_arr.ndim != 1:
            raise ValueError(f"{path}: train_ids must have shape [{n}], got {ids_arr.shape}")
        ids = tuple(str(i) for i in ids_arr.tolist())
    else:
        ids = tuple(f"train:{i}" for i in range(n))
    ds = SegmentationDataset(
        os.path.splitext(os.path.basename(path))[0],
        arrays["train_images"],
        arrays["train_masks"],
        ids,
        arrays["test_images"],
        arrays["test_masks"],
        names,
    )
    return _check_dataset(ds, path)


def save_seg_npz(ds: SegmentationDataset, path: str) -> None:
    """Writes ``ds`` in the format of :func:`load_seg_npz` (compressed), byte-reproducibly.

    The same arrays always give the same bytes (fixed member order and timestamps), so a
    generated file can be compared by its hash.
    """
    _check_dataset(ds, "save_seg_npz")
    arrays = {
        "train_images": ds.train_images,
        "train_masks": ds.train_masks,
        "train_ids": np.asarray([str(i) for i in ds.train_ids]),
        "test_images": ds.test_images,
        "test_masks": ds.test_masks,
        "class_names": np.asarray([str(n) for n in ds.class_names]),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


# ----------------------------------------------------------------------------------------
# Source strings
# ----------------------------------------------------------------------------------------


def parse_seg_source(source: str) -> tuple[str, str]:
    """(kind, path) of ``"seg_folder:DIR"`` or ``"seg_npz:PATH"``.

    >>> parse_seg_source("seg_npz:/data/camvid.npz")
    ('seg_npz', '/data/camvid.npz')
    """
    kind, sep, arg = str(source).partition(":")
    if kind not in SEG_SOURCES or not sep or not arg:
        raise ValueError(
            f"source: unknown segmentation source {source!r}; expected 'seg_folder:DIR' or "
            "'seg_npz:PATH'"
        )
    return kind, os.path.expanduser(arg)


def load_seg_source(source: str) -> SegmentationDataset:
    """:func:`load_seg_folder` or :func:`load_seg_npz` of a source string."""
    kind, arg = parse_seg_source(source)
    return load_seg_folder(arg) if kind == "seg_folder" else load_seg_npz(arg)


# ----------------------------------------------------------------------------------------
# The CIFAR-10 segmentation generator
# ----------------------------------------------------------------------------------------

GENERATOR_VERSION = 1  # bump when the output for the same settings changes


def _target_shares(num_classes: int, ratio: float) -> np.ndarray:
    """Pixel shares ``s_c ∝ ratio ** (-c / (K - 1))`` (the exp profile), summing to 1."""
    k = num_classes
    e = np.arange(k) / max(k - 1, 1)
    w = float(ratio) ** (-e)
    return w / w.sum()


def _voronoi(points: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """Region index [n, S, S] of each pixel centre: the nearest valid point (first on ties)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    dy = c[None, None, :, None] - points[:, :, 0, None, None]  # [n, P, S, 1]
    dx = c[None, None, None, :] - points[:, :, 1, None, None]  # [n, P, 1, S]
    d2 = dy * dy + dx * dx
    d2 = np.where(valid[:, :, None, None], d2, np.inf)
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
    k = len(shares)
    lo, hi = cells
    per_image = rng.integers(lo, hi + 1, n)
    max_cells = hi
    valid = np.arange(max_cells)[None, :] < per_image[:, None]  # [n, P]
    points = rng.random((n, max_cells, 2)).astype(np.float32) * size
    regions = np.concatenate(
        [_voronoi(points[i : i + 256], valid[i : i + 256], size) for i in range(0, n, 256)]
    )
    ignore = _boundaries(regions)
    # The labelled (non-boundary) area of every cell, in a random order of the cells.
    flat = np.arange(n)[:, None, None] * max_cells + regions  # global cell id per pixel
    area = np.bincount(flat[~ignore], minlength=n * max_cells)
    order = rng.permutation(np.nonzero(valid.reshape(-1))[0])
    # Cell classes: walking the cells in that order, a cell takes the class whose interval of
    # the cumulative target shares holds the middle of the cell's area, so each class gets its
    # share of the labelled pixels up to one cell.
    cum = np.cumsum(area[order]).astype(np.float64)
    mid = (cum - area[order] / 2.0) / max(cum[-1], 1.0)
    cls = np.minimum(np.searchsorted(np.cumsum(shares), mid, side="right"), k - 1)
    cell_class = np.zeros(n * max_cells, np.int64)
    cell_class[order] = cls
    # Each cell's source: a random CIFAR image of its class (with replacement).
    by_class = np.argsort(src_labels, kind="stable")
    starts = np.searchsorted(src_labels[by_class], np.arange(k))
    counts = np.bincount(src_labels, minlength=k)
    if np.any(counts == 0):
        raise ValueError(f"the source split has no image of classes {np.nonzero(counts == 0)[0]}")
    u = rng.random(n * max_cells)
    src = by_class[starts[cell_class] + (u * counts[cell_class]).astype(np.int64)]
    # Fill: the source image is tiled so that its centre lies on the cell's seed point.
    h, w = src_images.shape[1:3]
    oy = (h // 2 - np.floor(points[..., 0]).astype(np.int64)).reshape(-1)
    ox = (w // 2 - np.floor(points[..., 1]).astype(np.int64)).reshape(-1)
    yy = np.arange(size)[None, :, None]
    xx = np.arange(size)[None, None, :]
    images = src_images[src[flat], (yy + oy[flat]) % h, (xx + ox[flat]) % w]
    masks = cell_class[flat].astype(np.uint8)
    masks[ignore] = IGNORE_INDEX
    return images.astype(np.uint8), masks


def make_cifar_segmentation(
    cifar,
    *,
    num_train: int = 2000,
    num_test: int = 500,
    size: int = 32,
    cells: tuple[int, int] = (2, 6),
    ratio: float = 200.0,
    seed: int = 0,
    test_seed: int = 0,
) -> SegmentationDataset:
    """A long-tailed segmentation set made from CIFAR-10 images (deterministic, seeded).

    Each image (``size`` x ``size``) is cut into Voronoi regions: ``n`` seed points drawn
    uniformly (``n`` uniform in ``cells``, inclusive), each pixel centre belonging to its
    nearest point. A region takes one class and is filled with a CIFAR image of that class,
    tiled so that the image's centre lies on the region's seed point (the object tends to be
    inside the region). Pixels with a neighbour (8-neighbourhood) in another region are
    labelled 255 (ignore): the boundaries are 2 pixels wide.

    Classes are assigned by labelled area: the regions of the split are walked in a random
    order and each takes the class whose interval of the cumulative target shares holds the
    middle of its area. The target share of class c is ``∝ ratio ** (-c / (K - 1))`` in the
    training split (class 0 most frequent, class K - 1 rarest: most / least ≈ ``ratio``) and
    ``1 / K`` in the test split, so each class gets its share of the labelled pixels up to
    one region. Training regions are filled from CIFAR's training images, test regions from
    its test images (drawn uniformly within the class, with replacement).

    Args:
      cifar: anything with ``train_images``, ``train_labels``, ``test_images``,
        ``test_labels`` (uint8 [N, h, w, C], integer [N]) and ``class_names``, e.g.
        ``cce_jax.data.load_cifar10_jpeg(archive, cache_dir)``.
      num_train, num_test: images per split.
      size: height and width of the images.
      cells: the (fewest, most) regions per image.
      ratio: target most / least training pixel frequency (>= 1).
      seed: the seed of the training split.
      test_seed: the seed of the test split, so the test split stays fixed when ``seed``
        or ``num_train`` change (the two splits use independent streams even when the
        seeds are equal).

    Returns:
      :class:`SegmentationDataset` named ``cifar10_seg``, training ids ``<position>``
      zero-padded to 5 digits.

    Raises:
      ValueError: bad settings, or a test split in which some class has no labelled pixel.
    """
    k = len(cifar.class_names)
    lo, hi = (int(c) for c in cells)
    if not 1 <= lo <= hi:
        raise ValueError(f"cells must be (fewest, most) with 1 <= fewest <= most, got {cells}")
    if int(size) < 3:
        raise ValueError(f"size must be at least 3, got {size}")
    if float(ratio) < 1 or not np.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio}")
    if int(num_train) < 1 or int(num_test) < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train}, {num_test}")
    train_rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(2)[0])
    test_rng = np.random.default_rng(np.random.SeedSequence(int(test_seed)).spawn(2)[1])
    common = dict(size=int(size), cells=(lo, hi))
    tr_x, tr_m = _make_split(
        train_rng,
        np.asarray(cifar.train_images, np.uint8),
        np.asarray(cifar.train_labels, np.int64),
        n=int(num_train),
        shares=_target_shares(k, ratio),
        **common,
    )
    te_x, te_m = _make_split(
        test_rng,
        np.asarray(cifar.test_images, np.uint8),
        np.asarray(cifar.test_labels, np.int64),
        n=int(num_test),
        shares=np.full(k, 1.0 / k),
        **common,
    )
    absent = np.nonzero(training_pixel_counts(te_m, k) == 0)[0]
    if absent.size:
        raise ValueError(
            f"the test split has no labelled pixel of classes {absent.tolist()}; "
            "use more test images"
        )
    ids = tuple(f"{i:05d}" for i in range(int(num_train)))
    names = tuple(str(n) for n in cifar.class_names)
    return SegmentationDataset("cifar10_seg", tr_x, tr_m, ids, te_x, te_m, names)


def _stats_markdown(report: dict, settings: dict) -> str:
    lines = [
        "# CIFAR-10 segmentation set: per-class pixel counts",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        f"{report['train_images']} training and {report['test_images']} test images of "
        f"{report['image_shape']}; ignore (255) pixels: {report['train_ignore_pixels']} "
        f"(train), {report['test_ignore_pixels']} (test).",
        "",
        "| class | name | train pixels | test pixels |",
        "|---|---|---|---|",
    ]
    for c, name in enumerate(report["class_names"]):
        lines.append(f"| {c} | {name} | {report['train_pixels'][c]} | {report['test_pixels'][c]} |")
    ratio = report["train_ratio"]
    lines += ["", f"Most / least frequent training class: {ratio:.1f}" if ratio else ""]
    return "\n".join(lines).rstrip() + "\n"


def _full_settings(settings: dict) -> dict:
    """Every setting of :func:`make_cifar_segmentation` (defaults filled in), JSON-ready."""
    params = inspect.signature(make_cifar_segmentation).parameters
    defaults = {n: p.default for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; expected some of {sorted(defaults)}")
    full = {**defaults, **settings}
    full = {n: (float(v) if n == "ratio" else int(v)) for n, v in full.items() if n != "cells"}
    full["cells"] = [int(c) for c in {**defaults, **settings}["cells"]]
    full["generator_version"] = GENERATOR_VERSION
    return full


def ensure_cifar_segmentation(out_dir: str, *, cifar, formats=("folder", "npz"), **settings):
    """:func:`write_cifar_segmentation` unless ``out_dir`` already holds that very set.

    For experiment scripts that make the set once and reuse it: when ``out_dir`` exists, its
    ``stats.json`` must record the same settings (defaults filled in), formats and
    generator version, else ``ValueError`` names the differences. Several processes may call
    this at once: one writes, the others find its folder.

    Args:
      out_dir: the folder.
      cifar: the CIFAR-10 data set, or a function without arguments that returns it (called
        only when the set must be made), e.g.
        ``lambda: load_cifar10_jpeg(archive, cache_dir)``.
      formats: as for :func:`write_cifar_segmentation`.
      **settings: as for :func:`write_cifar_segmentation`.

    Returns:
      The content of ``stats.json``: ``settings``, ``formats`` and
      :func:`pixel_count_report`'s keys (``train_pixels`` are the class counts).
    """
    want = {**_full_settings(settings), "formats": list(formats)}
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    stats_path = os.path.join(out_dir, "stats.json")

    def existing() -> dict:
        if not os.path.isfile(stats_path):
            raise ValueError(
                f"{out_dir}: exists but has no stats.json; delete it or choose another folder"
            )
        with open(stats_path) as f:
            stats = json.load(f)
        have = {**stats.get("settings", {}), "formats": stats.get("formats")}
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            raise ValueError(
                f"{out_dir}: holds a set made with other settings ({', '.join(diff)}); delete it "
                "or choose another folder"
            )
        return stats

    if not os.path.exists(out_dir):
        data = cifar() if callable(cifar) else cifar
        try:
            write_cifar_segmentation(data, out_dir, formats=want["formats"], **settings)
        except (OSError, ValueError):
            if not os.path.isfile(stats_path):  # not another process's finished folder
                raise
    return existing()


def write_cifar_segmentation(cifar, out_dir: str, *, formats=("folder", "npz"), **settings):
    """Makes the set of :func:`make_cifar_segmentation` (``settings``) and writes it.

    ``out_dir`` receives, for ``"folder"`` in ``formats``, the :func:`load_seg_folder`
    layout (PNG images and label maps, ``classes.txt``); for ``"npz"``, ``cifar10_seg.npz``
    (:func:`load_seg_npz`); always ``stats.json`` (the settings and
    :func:`pixel_count_report`) and ``stats.md`` (the same as a table). Everything is
    written into a temporary folder beside ``out_dir`` and renamed, so ``out_dir`` is either
    complete or absent. Same settings, same bytes. ``out_dir`` must not exist
    (:func:`ensure_cifar_segmentation` reuses an existing one).

    Returns:
      The :class:`SegmentationDataset` written.
    """
    formats = tuple(formats)
    unknown = set(formats) - {"folder", "npz"}
    if unknown or not formats:
        raise ValueError(f"formats: expected 'folder' and/or 'npz', got {formats}")
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    if os.path.exists(out_dir):
        raise ValueError(f"{out_dir}: exists; choose a new folder or delete it")
    full = _full_settings(settings)
    ds = make_cifar_segmentation(cifar, **settings)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}-{os.getpid()}-", dir=parent)
    try:
        if "folder" in formats:
            write_seg_folder(ds, tmp)
        if "npz" in formats:
            save_seg_npz(ds, os.path.join(tmp, "cifar10_seg.npz"))
        report = pixel_count_report(ds)
        with open(os.path.join(tmp, "stats.json"), "w") as f:
            json.dump({"settings": full, "formats": list(formats), **report}, f, indent=1)
            f.write("\n")
        with open(os.path.join(tmp, "stats.md"), "w") as f:
            f.write(_stats_markdown(report, full))
        os.rename(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return ds


# ----------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------


def random_crop_flip(key, images, masks, *, pad: int = 4):
    """Pad, random crop back to size and random horizontal flip, the same for image and mask.

    Jittable (jax.numpy). Each example gets its own offsets ``(oy, ox)`` uniform in
    ``[0, 2 * pad]`` and a flip with probability 1/2, all drawn from ``key``. The images are
    padded with zeros, the masks with :data:`IGNORE_INDEX`, so padded pixels count for
    nothing in the loss and the metrics.

    Args:
      key: a ``jax.random`` key.
      images: [B, H, W, C] (any dtype; e.g. normalised float32).
      masks: [B, H, W] integer label maps.
      pad: pixels of padding on each side (0: flip only).

    Returns:
      (images, masks), shapes and dtypes unchanged.
    """
    import jax
    import jax.numpy as jnp

    images, masks = jnp.asarray(images), jnp.asarray(masks)
    if images.ndim != 4 or masks.shape != images.shape[:3]:
        raise ValueError(
            f"images must be [B, H, W, C] and masks [B, H, W], got {images.shape}, {masks.shape}"
        )
    b, h, w, _ = images.shape
    p = int(pad)
    if p < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    k_off, k_flip = jax.random.split(key)
    off = jax.random.randint(k_off, (b, 2), 0, 2 * p + 1)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    xi = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    xm = jnp.pad(masks, ((0, 0), (p, p), (p, p)), constant_values=IGNORE_INDEX)

    def one(x, m, o, f):
        x = jax.lax.dynamic_slice(x, (o[0], o[1], 0), (h, w, x.shape[-1]))
        m = jax.lax.dynamic_slice(m, (o[0], o[1]), (h, w))
        return jnp.where(f, x[:, ::-1], x), jnp.where(f, m[:, ::-1], m)

    return jax.vmap(one)(xi, xm, off, flip)


# ----------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------

# The first 10 colours: matplotlib's "tab10"; then "tab20"'s lighter ones.
_COLOURS = (
    "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
    "aec7e8 ffbb78 98df8a ff9896 c5b0d5 c49c94 f7b6d2 c7c7c7 dbdb8d 9edae5"
).split()


def label_palette(num_classes: int) -> np.ndarray:
    """uint8 [256, 3]: a colour per label value; 255 (ignore) is white, unused values black.

    Classes 0-19 take matplotlib's tab10 then tab20-light colours; further classes hues
    spaced by the golden ratio.

    >>> pal = label_palette(3)
    >>> pal[0].tolist(), pal[255].tolist(), pal[3].tolist()
    ([31, 119, 180], [255, 255, 255], [0, 0, 0])
    """
    import colorsys

    k = int(num_classes)
    if not 1 <= k <= IGNORE_INDEX:
        raise ValueError(f"num_classes must be in [1, 255], got {num_classes}")
    pal = np.zeros((256, 3), np.uint8)
    for c in range(k):
        if c < len(_COLOURS):
            pal[c] = [int(_COLOURS[c][i : i + 2], 16) for i in (0, 2, 4)]
        else:
            rgb = colorsys.hsv_to_rgb((c * 0.618033988749895) % 1.0, 0.65, 0.9)
            pal[c] = [round(255 * v) for v in rgb]
    pal[IGNORE_INDEX] = 255
    return pal


def picture_grid(images, masks, *predictions, num_classes: int, gap: int = 1) -> np.ndarray:
    """One row per example: the image, its true label map, then each predicted label map.

    Label maps are drawn with :func:`label_palette` (ignore = white); a prediction is drawn
    white where the truth is 255, so only the pixels that count are compared. Columns and
    rows are separated by ``gap`` white pixels.

    Args:
      images: uint8 [N, H, W, C] (C = 1 or 3).
      masks: integer [N, H, W], the truth.
      *predictions: integer [N, H, W] each (e.g. one per loss).
      num_classes: K.
      gap: pixels between the pictures.

    Returns:
      uint8 [N * (H + gap) - gap, (2 + P) * (W + gap) - gap, 3], to save with Pillow.

    >>> g = picture_grid(np.zeros((2, 4, 5, 3), np.uint8), np.zeros((2, 4, 5), np.uint8),
    ...                  np.ones((2, 4, 5), np.int32), num_classes=2)
    >>> g.shape, g.dtype
    ((9, 17, 3), dtype('uint8'))
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 [N, H, W, 1 or 3], got {images.dtype} {images.shape}"
        )
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks {masks.shape} must be [N, H, W] of images {images.shape}")
    pal = label_palette(num_classes)
    ignored = masks == IGNORE_INDEX
    columns = [np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images]
    columns.append(pal[np.clip(masks, 0, 255).astype(np.int64)])
    for pred in predictions:
        pred = np.asarray(pred)
        if pred.shape != masks.shape:
            raise ValueError(f"a prediction has shape {pred.shape}, expected {masks.shape}")
        pred = np.where(ignored, IGNORE_INDEX, np.clip(pred, 0, 255)).astype(np.int64)
        columns.append(pal[pred])
    n, h, w = masks.shape
    g = int(gap)
    out = np.full((n * (h + g) - g, len(columns) * (w + g) - g, 3), 255, np.uint8)
    for i in range(n):
        for j, col in enumerate(columns):
            out[i * (h + g) : i * (h + g) + h, j * (w + g) : j * (w + g) + w] = col[i]
    return out
