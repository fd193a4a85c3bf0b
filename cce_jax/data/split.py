"""From a loaded data set to the imbalanced split both pipelines serve (numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cce_jax.data import imbalance, sources

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DataInfo",
    "Split",
    "SplitViews",
    "make_split",
]

# Usual per-channel statistics (of the full balanced training sets, pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# A channel whose std (pixels in [0, 1]) is below this is only centred, not scaled.
MIN_STD = 1.0 / 255
# data.augment=None: random crops and flips only for images at least this large (H and W).
MIN_AUGMENT_SIZE = 32


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a built data set."""

    name: str  # e.g. "cifar10", "cifar10_jpeg", "digits", an npz file's stem
    num_classes: int
    image_shape: tuple  # (H, W, C) as fed to the model
    class_names: tuple
    # int64 [K]: images per class of the imbalanced TRAIN subset built; for segmentation
    # the training PIXELS per class (ignore pixels not counted)
    class_counts: np.ndarray
    num_train: int  # training images (classification: = class_counts.sum())
    num_test: int  # size of the (full, or max_test-limited) test split
    task: str = "classification"  # or "segmentation": labels are label maps [H, W]


@dataclasses.dataclass(frozen=True)
class Split:
    """The kept train subset and the test split, uint8, with the normalisation x * a + b."""

    info: DataInfo
    train_images: np.ndarray  # uint8 [N, H, W, C], kept subset in increasing source order
    train_labels: np.ndarray  # int32 [N] (segmentation: label maps [N, H, W], 255 = ignore)
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M] (segmentation: [M, H, W])
    a: np.ndarray  # float32 [C]: normalised = x * a + b = (x / scale - mean) / std
    b: np.ndarray  # float32 [C]
    augment: bool

    def normalize(self, images) -> np.ndarray:
        """uint8 [..., C] -> float32 normalised images (numpy)."""
        return np.asarray(images).astype(np.float32) * self.a + self.b


class SplitViews:
    """The host-side views both pipelines give of their :class:`Split` (``self._split``)."""

    _split: Split

    def train_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images [N, H, W, C], int32 labels [N]) of the kept train subset (host)."""
        return self._split.train_images, self._split.train_labels

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images, int32 labels) of the test split evaluated (host)."""
        return self._split.test_images, self._split.test_labels

    def normalize(self, images) -> np.ndarray:
        """uint8 images -> the float32 values the batches hold (numpy)."""
        return self._split.normalize(images)


def _check(labels, num_classes, what):
    from cce_jax.labels import check_labels

    try:
        check_labels(np.asarray(labels), int(num_classes))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what} labels: {e}") from e


def _at_least_two_classes(raw, task):
    num_classes = len(raw.class_names)
    if num_classes < 2:
        raise ValueError(
            f"source: {raw.name!r} has {num_classes} class ({list(raw.class_names)}); "
            f"{task} needs at least 2"
        )
    return num_classes


def _test_indices(config, labels):
    test_idx = np.arange(len(labels), dtype=np.int64)
    if config.max_test is not None:
        if int(config.max_test) < 1:
            raise ValueError(f"max_test must be >= 1 or None, got {config.max_test}")
        if np.ndim(labels) > 1:  # label maps: the first max_test images
            return test_idx[: int(config.max_test)]
        test_idx = imbalance.stratified_first(labels, int(config.max_test))
    return test_idx


def _augment(config, images) -> bool:
    if config.augment is None:  # pad-4 crops and flips suit CIFAR-sized images, not 8x8 ones
        return min(images.shape[1:3]) >= MIN_AUGMENT_SIZE
    return bool(config.augment)


def _channel_stats(images, scale):
    """Per-channel (mean, std) of uint8 images as pixels in [0, 1]."""
    x = images.astype(np.float64) / scale
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    # A (nearly) constant channel, e.g. an alpha channel: no scaling, so the zero padding
    # of the crops stays within [-1, 1] instead of reaching -mean / 1e-3.
    return mean, np.where(std < MIN_STD, 1.0, std)


def _segmentation_split(config, ds) -> Split:
    """Every training image of a segmentation set (the imbalance is in its pixels)."""
    from cce_jax.data import segmentation

    for key in ("counts", "n_max"):
        if config.get(key) is not None:
            raise ValueError(
                f"{key}: a segmentation set is used whole (its imbalance is in the pixels); "
                f"data.{key} selects images of a classification set and must be None"
            )
    num_classes = _at_least_two_classes(ds, "segmentation")
    counts = segmentation.training_pixel_counts(ds.train_masks, num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = [f"{int(i)} ({ds.class_names[i]!r})" for i in empty[:5]]
        raise ValueError(
            f"source: {ds.name!r}: train_masks holds no pixel of class {', '.join(names)}; "
            "every class of class_names needs training pixels"
        )
    test_idx = _test_indices(config, ds.test_masks)
    mean, std = _channel_stats(ds.train_images, 255.0)
    info = DataInfo(
        name=ds.name,
        num_classes=num_classes,
        image_shape=tuple(int(s) for s in ds.train_images.shape[1:]),
        class_names=tuple(ds.class_names),
        class_counts=counts,
        num_train=len(ds.train_images),
        num_test=len(test_idx),
        task="segmentation",
    )
    return Split(
        info=info,
        train_images=np.ascontiguousarray(ds.train_images),
        train_labels=ds.train_masks.astype(np.int32),
        test_images=np.ascontiguousarray(ds.test_images[test_idx]),
        test_labels=ds.test_masks[test_idx].astype(np.int32),
        a=(1.0 / (255.0 * std)).astype(np.float32),
        b=(-mean / std).astype(np.float32),
        augment=_augment(config, ds.train_images),
    )


def make_split(config, raw) -> Split:
    """Checks the labels of `raw` and selects the imbalanced train subset of `config`.

    A segmentation set (``seg_folder``/``seg_npz`` sources) is used whole: all its training
    images, ``class_counts`` = its training pixels per class; ``counts``/``n_max`` must be
    None, ``profile``/``ratio``/``subset_seed`` do not apply.
    """
    kind, _ = sources.parse_source(config.source, config.get("name"))
    if hasattr(raw, "train_masks"):
        return _segmentation_split(config, raw)
    num_classes = _at_least_two_classes(raw, "classification")
    _check(raw.train_labels, num_classes, "train")
    _check(raw.test_labels, num_classes, "test")

    available = np.bincount(raw.train_labels, minlength=num_classes)
    empty = np.flatnonzero(available == 0)
    if empty.size:
        names = [f"{int(i)} ({raw.class_names[i]!r})" for i in empty[:5]]
        raise ValueError(
            f"source: {raw.name!r}: train_labels holds no image of class "
            f"{', '.join(names)}; every class of class_names needs training images"
        )
    if config.counts is not None:
        counts = imbalance.class_counts(tuple(config.counts), num_classes)
    else:
        n_max = config.n_max if config.n_max is not None else int(available.min())
        counts = imbalance.class_counts(str(config.profile), num_classes, n_max, config.ratio)
    train_idx = imbalance.select_indices(
        raw.train_labels, raw.train_ids, counts, seed=config.subset_seed
    )
    test_idx = _test_indices(config, raw.test_labels)

    if kind == "digits":
        mean, std = [0.0], [1.0]  # images in [0, 1]
    elif raw.name in ("cifar10", "cifar10_jpeg"):
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif raw.name == "cifar100":
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:  # per-channel statistics of the imbalanced training subset
        mean, std = _channel_stats(raw.train_images[train_idx], raw.scale)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)

    info = DataInfo(
        name=raw.name,
        num_classes=num_classes,
        image_shape=tuple(int(s) for s in raw.train_images.shape[1:]),
        class_names=tuple(raw.class_names),
        class_counts=counts,
        num_train=int(counts.sum()),
        num_test=len(test_idx),
    )
    return Split(
        info=info,
        train_images=np.ascontiguousarray(raw.train_images[train_idx]),
        train_labels=raw.train_labels[train_idx].astype(np.int32),
        test_images=np.ascontiguousarray(raw.test_images[test_idx]),
        test_labels=raw.test_labels[test_idx].astype(np.int32),
        a=(1.0 / (raw.scale * std)).astype(np.float32),
        b=(-mean / std).astype(np.float32),
        augment=_augment(config, raw.train_images),
    )
