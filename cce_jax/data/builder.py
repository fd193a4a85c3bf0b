"""The ``data`` config, the kept train subset and test split (:func:`make_split`), and
:func:`build` (numpy up to the pipelines)."""

import dataclasses
import sys

import numpy as np

from cce_jax import _extras
from cce_jax.data import imbalance, sources

PIPELINES = ("auto", "device", "tf")
MIN_STD = 1.0 / 255  # a channel whose std (pixels in [0, 1]) is below this is only centred
MIN_AUGMENT_SIZE = 32  # data.augment=None: crops and flips for images at least this large


def default_config():
    """The ``data`` config with its defaults (an ``ml_collections.ConfigDict``).

    >>> cfg = default_config()
    >>> cfg.source, cfg.name, cfg.profile, cfg.ratio, cfg.pipeline, cfg.download
    ('tfds', None, 'exp', 100.0, 'auto', 'auto')
    """
    _extras.require("data", "cce_jax.data.default_config()", "ml_collections")
    import ml_collections
    from ml_collections.config_dict import placeholder

    cfg = ml_collections.ConfigDict()
    cfg.source = "tfds"  # a source string: cce_jax.data.sources.SOURCES, docs/data.md
    cfg.name = placeholder(str)  # the tfds name, used only by source == "tfds"
    cfg.data_dir = placeholder(str)
    cfg.download = "auto"  # tfds only: "auto" | "always" | "never"
    cfg.cache_dir = "~/.cache/cce_jax"
    cfg.pipeline = "auto"  # "auto" | "device" | "tf"
    cfg.profile = "exp"  # "exp" | "step" | "none" (with n_max None: every image)
    cfg.ratio = 100.0
    cfg.n_max = placeholder(int)  # None: the smallest class of the source
    cfg.counts = placeholder(tuple)
    cfg.subset_seed = 0
    cfg.augment = placeholder(bool)  # None: True for images of at least 32x32 pixels
    cfg.max_test = placeholder(int)
    return cfg


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a built data set."""

    name: str  # e.g. "cifar10", "cifar10_jpeg", "digits", an npz file's stem
    num_classes: int
    image_shape: tuple  # (H, W, C) as fed to the model
    class_names: tuple
    # int64 [K]: images per class of the TRAIN subset built (segmentation: training PIXELS)
    class_counts: np.ndarray
    num_train: int  # training images
    num_test: int  # size of the (full, or max_test-limited) test split
    task: str = "classification"  # or "segmentation" (label maps [H, W]): the labels' ndim
    source: str = ""  # the source string, e.g. "npz:/data/own.npz"
    source_counts: np.ndarray | None = None  # int64 [K]: class_counts before the cut


@dataclasses.dataclass(frozen=True)
class Split:
    """The kept train subset and the test split, uint8, with the normalisation x * a + b."""

    info: DataInfo
    train_images: np.ndarray  # uint8 [N, H, W, C], kept subset in increasing source order
    train_labels: np.ndarray  # int32 [N] (segmentation: label maps [N, H, W], 255 = ignore)
    test_images: np.ndarray
    test_labels: np.ndarray
    a: np.ndarray  # float32 [C]: normalised = x * a + b = (x / scale - mean) / std
    b: np.ndarray
    augment: bool


class SplitViews:
    """What both pipelines share: the :class:`Split`, batch sizes, steps and host-side views;
    ``parts`` (devices or processes, named by ``what``) must divide both batch sizes."""

    def __init__(self, split: Split, global_batch_size, eval_batch_size, parts: int, what: str):
        sizes = {"global_batch_size": global_batch_size, "eval_batch_size": eval_batch_size}
        for name, value in sizes.items():
            if int(value) < 1 or int(value) % parts:
                raise ValueError(f"{name}={value} must be a positive multiple of {what}")
        self._split, self.info, self.augment = split, split.info, split.augment
        self._global_b, self._local_b = int(global_batch_size), int(global_batch_size) // parts
        self._eval_b = int(eval_batch_size)
        self.steps_per_epoch = split.info.num_train // self._global_b
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"global_batch_size={global_batch_size} exceeds the {split.info.num_train} "
                "training examples (batches drop the remainder)"
            )

    def num_eval_batches(self) -> int:
        """Batches yielded by ``eval_batches()``; the same on every process."""
        return -(-self.info.num_test // self._eval_b)

    def train_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images, int32 labels) of the kept train subset (host)."""
        return self._split.train_images, self._split.train_labels

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images, int32 labels) of the test split evaluated (host)."""
        return self._split.test_images, self._split.test_labels

    def normalize(self, images) -> np.ndarray:
        """uint8 images -> the float32 values the batches hold (numpy)."""
        return np.asarray(images).astype(np.float32) * self._split.a + self._split.b


def _train_subset(config, raw: sources.Dataset):
    """(kept positions, kept counts, available counts): per class images (classification)
    or pixels (segmentation, whose images are all kept)."""
    k, y = len(raw.class_names), np.asarray(raw.train_labels)
    what = "pixel" if raw.task == "segmentation" else "image"
    available = np.bincount(y[y != sources.IGNORE_INDEX] if y.ndim > 1 else y, minlength=k)
    empty = np.flatnonzero(available == 0)
    if empty.size:
        names = [f"{int(i)} ({raw.class_names[i]!r})" for i in empty[:5]]
        raise ValueError(
            f"source: {raw.name!r}: train_labels holds no {what} of class {', '.join(names)}; "
            f"every class of class_names needs training {what}s"
        )
    if raw.task == "segmentation":
        for key in ("counts", "n_max"):
            if config.get(key) is not None:
                raise ValueError(
                    f"{key}: a segmentation set is used whole (its imbalance is in the pixels); "
                    f"data.{key} selects images of a classification set and must be None"
                )
        return np.arange(len(y), dtype=np.int64), available.astype(np.int64), available
    if config.counts is not None:
        counts = imbalance.class_counts(tuple(config.counts), k)
    elif config.profile == "none" and config.n_max is None:  # every image the source has
        counts = available.astype(np.int64)
    else:
        n_max = config.n_max if config.n_max is not None else int(available.min())
        counts = imbalance.class_counts(str(config.profile), k, n_max, config.ratio)
    kept = imbalance.select_indices(y, raw.train_ids, counts, seed=config.subset_seed)
    if not np.array_equal(counts, available):  # the cut, in one line on stderr
        how = f"profile={config.profile}, ratio={config.ratio}, n_max={config.n_max}"
        if config.counts is not None:
            how = f"counts={tuple(config.counts)}"
        per_class = ", ".join(f"{c}/{a}" for c, a in zip(counts.tolist(), available.tolist()))
        print(
            f"cce_jax.data: {raw.name}: kept {int(counts.sum())} of {int(available.sum())} "
            f"training images, per class {per_class} ({how}; data.profile=none with "
            "n_max=None keeps every image)",
            file=sys.stderr,
        )
    return kept, counts, available


def _test_indices(config, labels):
    if config.max_test is None:
        return np.arange(len(labels), dtype=np.int64)
    if int(config.max_test) < 1:
        raise ValueError(f"max_test must be >= 1 or None, got {config.max_test}")
    if np.ndim(labels) > 1:  # label maps: the first max_test images
        return np.arange(min(len(labels), int(config.max_test)), dtype=np.int64)
    return imbalance.stratified_first(labels, int(config.max_test))


def make_split(config, raw: sources.Dataset) -> Split:
    """Checks the labels of `raw` and selects the train subset of `config`.

    Classification: ``counts``, or ``profile``/``ratio``/``n_max`` (None: the smallest class;
    ``profile="none"`` with ``n_max=None``: every image), the survivors chosen by
    ``subset_seed``. Segmentation (label maps): every training image, ``class_counts`` = the
    training pixels per class; ``counts``/``n_max`` must be None.
    """
    k = len(raw.class_names)
    if k < 2:
        raise ValueError(
            f"source: {raw.name!r} has {k} class ({list(raw.class_names)}); "
            f"{raw.task} needs at least 2"
        )
    for split in ("train", "test"):
        sources.check_labels(getattr(raw, f"{split}_labels"), k, f"{raw.name}: {split}_labels")
    train_idx, counts, available = _train_subset(config, raw)
    test_idx = _test_indices(config, raw.test_labels)
    train_x = np.ascontiguousarray(raw.train_images[train_idx])
    mean, std = raw.mean, raw.std
    if mean is None:  # the kept images' statistics; a (nearly) constant channel is only centred
        x = train_x.astype(np.float64) / raw.scale
        mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
        std = np.where(std < MIN_STD, 1.0, std)
    if raw.task == "classification":  # rounds the statistics to float32 first (as ever)
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    info = DataInfo(
        name=raw.name,
        num_classes=k,
        image_shape=tuple(int(s) for s in raw.train_images.shape[1:]),
        class_names=tuple(raw.class_names),
        class_counts=counts,
        num_train=len(train_idx),
        num_test=len(test_idx),
        task=raw.task,
        source=str(config.get("source", "")),
        source_counts=available.astype(np.int64),
    )
    augment = config.augment
    augment = min(train_x.shape[1:3]) >= MIN_AUGMENT_SIZE if augment is None else bool(augment)
    return Split(
        info=info,
        train_images=train_x,
        train_labels=raw.train_labels[train_idx].astype(np.int32),
        test_images=np.ascontiguousarray(raw.test_images[test_idx]),
        test_labels=raw.test_labels[test_idx].astype(np.int32),
        a=(1.0 / (raw.scale * np.asarray(std))).astype(np.float32),
        b=(-np.asarray(mean) / np.asarray(std)).astype(np.float32),
        augment=augment,
    )


def build(config, *, seed, global_batch_size, eval_batch_size, mesh=None, raw=None):
    """Loads the data set of `config` and builds its train and test pipelines: a
    :class:`~cce_jax.data.tf_pipeline.TFData` (``pipeline="tf"``) or
    :class:`~cce_jax.data.device_pipeline.DeviceData`. ``seed`` drives the per-epoch shuffle and
    augmentation (``config.subset_seed`` which training examples survive); the batch sizes are
    over all processes / devices; ``mesh`` (device pipeline): a mesh with a ``"data"`` axis
    (default: all devices); ``raw``: a :class:`~cce_jax.data.sources.Dataset` already loaded,
    e.g. shared by several seeds."""
    pipeline = str(config.get("pipeline", "auto"))  # "auto": the device pipeline (docs/data.md)
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline: expected one of {PIPELINES}, got {pipeline!r}")
    if pipeline == "tf" and not _extras._importable("tensorflow"):
        raise ValueError(
            "pipeline: 'tf' needs tensorflow, which is not importable here; use "
            "data.pipeline='device' (or 'auto'), or install the [tfds] extra"
        )
    split = make_split(config, sources.load_source(config) if raw is None else raw)
    sizes = dict(global_batch_size=int(global_batch_size), eval_batch_size=int(eval_batch_size))
    if pipeline == "tf":
        if split.info.task != "classification":
            raise ValueError(
                f"pipeline: 'tf' serves classification sets only; {split.info.name!r} is a "
                f"{split.info.task} set: use data.pipeline='device' (or 'auto')"
            )
        from cce_jax.data.tf_pipeline import TFData

        return TFData(split, seed=seed, **sizes)
    from cce_jax.data.device_pipeline import DeviceData

    return DeviceData(split, seed=seed, mesh=mesh, **sizes)
