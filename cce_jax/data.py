"""Imbalanced training splits and tf.data input pipelines for JAX.

This module builds long-tailed ("imbalanced") training subsets of image-classification data
sets the way the long-tail literature does (exponential and step profiles, Cui et al. 2019,
Cao et al. 2019), and feeds them to JAX as numpy batches.

Sources (``config.source``):

* ``"tfds"``: ``tfds.load(config.name, data_dir=config.data_dir)``; any data set with
  ``image`` and ``label`` features and ``train``/``test`` splits (cifar10, cifar100,
  svhn_cropped, fashion_mnist, ...).
* ``"cifar10_jpeg:PATH"``: the offline CIFAR-10 JPEG archive (``train/<class>/NNNN.jpg``,
  ``test/<class>/NNNN.jpg``). Extracted once into ``config.cache_dir`` and the decoded uint8
  arrays cached there as an ``.npz`` (both written atomically).
* ``"digits"``: scikit-learn's embedded 8x8 digits (1,797 images); no download at all.

All supported data sets are small: they are loaded fully into memory as uint8 numpy arrays
and the tf.data pipelines are built from tensors.

Only ``cce_jax.data`` imports tensorflow; it is not imported by ``cce_jax/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import tarfile
import tempfile
import zlib
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "DataInfo",
    "Data",
    "build",
    "class_counts",
    "default_config",
    "select_indices",
]

# Usual per-channel statistics (of the full balanced training sets, pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_PROFILES = ("exp", "step", "none")
_PAD = 4  # augmentation: zero padding before the random crop back to the original size


# ----------------------------------------------------------------------------------------
# Imbalance profiles and subset selection (numpy only).
# ----------------------------------------------------------------------------------------


def _floor(x: float) -> int:
    # floor() that is robust to values such as 49.99999999999999 meant to be 50.
    return int(math.floor(x * (1.0 + 1e-12) + 1e-9))


def class_counts(profile, num_classes=None, n_max=None, ratio=1.0) -> np.ndarray:
    """Per-class training counts of an imbalanced split.

    Args:
      profile: ``"exp"``, ``"step"`` or ``"none"``, or an explicit sequence of positive
        per-class counts (then ``num_classes``, if given, must equal its length and
        ``n_max``/``ratio`` are ignored).
      num_classes: K, the number of classes.
      n_max: the count of the most frequent class (class 0), >= 1.
      ratio: imbalance ratio n_max / n_min >= 1. LDAM's ``imb_factor`` is ``1 / ratio``.

    ``exp``: n_i = floor(n_max * ratio ** (-i / (K - 1))); ``step``: the first K // 2 classes
    keep n_max, the others floor(n_max / ratio); ``none``: all n_max.

    Returns:
      np.ndarray of int64, shape [K].

    >>> c = class_counts("exp", 10, 5000, 100)
    >>> c.tolist(), int(c.sum())
    ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 12406)
    >>> class_counts("step", 4, 100, 10).tolist()
    [100, 100, 10, 10]
    >>> class_counts([3, 2, 1]).tolist()
    [3, 2, 1]
    """
    if not isinstance(profile, str):
        try:
            counts = [int(c) for c in profile]
        except TypeError:
            raise ValueError(
                f"profile must be one of {_PROFILES} or a sequence of counts, got {profile!r}"
            ) from None
        if len(counts) == 0:
            raise ValueError("profile: explicit counts must not be empty")
        if num_classes is not None and len(counts) != int(num_classes):
            raise ValueError(
                f"profile: explicit counts have length {len(counts)} but num_classes="
                f"{num_classes}"
            )
        if any(c < 1 for c in counts):
            raise ValueError(f"profile: explicit counts must all be positive, got {counts}")
        return np.asarray(counts, dtype=np.int64)

    if profile not in _PROFILES:
        raise ValueError(f"profile: unknown profile {profile!r}; expected one of {_PROFILES}")
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if n_max is None or int(n_max) < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max!r}")
    ratio = float(ratio)
    if not ratio >= 1.0:  # also catches NaN
        raise ValueError(f"ratio must be >= 1 (ratio = n_max / n_min), got {ratio}")
    k, n_max = int(num_classes), int(n_max)
    if profile == "none":
        counts = [n_max] * k
    elif profile == "step":
        low = max(1, _floor(n_max / ratio))
        counts = [n_max] * (k // 2) + [low] * (k - k // 2)
    else:  # exp
        if k == 1:
            counts = [n_max]
        else:
            counts = [n_max] + [
                max(1, _floor(n_max * ratio ** (-i / (k - 1)))) for i in range(1, k - 1)
            ]
            counts.append(max(1, _floor(n_max / ratio)))
    return np.asarray(counts, dtype=np.int64)


def _id_str(x) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.bytes_):
        return bytes(x).decode("utf-8")
    return str(x)


def _seeded_hash(seed: int, ident: str) -> int:
    h = hashlib.blake2b(f"{int(seed)}\x00{ident}".encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def select_indices(labels, ids, counts, *, seed) -> np.ndarray:
    """Positions (sorted, int64) of the training examples kept in the imbalanced subset.

    Examples of class c are ranked by a seeded hash of their stable id (ties broken by the
    id), and the first ``counts[c]`` are kept. The result therefore depends only on the
    multiset of (label, id) pairs and the seed, not on the order the data was read in.

    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> ids = ["a", "b", "c", "d", "e", "f"]
    >>> kept = select_indices(labels, ids, [2, 1], seed=0)
    >>> len(kept), np.bincount(labels[kept]).tolist()
    (3, [2, 1])
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if len(ids) != len(labels):
        raise ValueError(f"ids: length {len(ids)} differs from labels: {len(labels)}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(counts)):
        raise ValueError(
            f"labels: values must lie in [0, {len(counts)}) for {len(counts)} counts, got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    available = np.bincount(labels, minlength=len(counts))
    short = np.nonzero(available < counts)[0]
    if short.size:
        c = int(short[0])
        raise ValueError(
            f"counts: class {c} has only {available[c]} examples but {counts[c]} were requested"
            f" (classes short of examples: {short.tolist()})"
        )
    str_ids = [_id_str(i) for i in ids]
    keys = [(_seeded_hash(seed, s), s) for s in str_ids]
    kept = []
    for c in range(len(counts)):
        pos = np.nonzero(labels == c)[0]
        order = sorted(pos.tolist(), key=lambda p: keys[p])
        kept.extend(order[: counts[c]])
    return np.sort(np.asarray(kept, dtype=np.int64))


def _stratified_first(labels: np.ndarray, n: int) -> np.ndarray:
    """Sorted positions of the first n examples, taken round-robin over the classes."""
    labels = np.asarray(labels).astype(np.int64)
    rank = np.zeros(len(labels), np.int64)
    seen: dict = {}
    for p, y in enumerate(labels.tolist()):
        rank[p] = seen.get(y, 0)
        seen[y] = rank[p] + 1
    order = np.lexsort((np.arange(len(labels)), rank))
    return np.sort(order[:n]).astype(np.int64)


# ----------------------------------------------------------------------------------------
# Config and public types.
# ----------------------------------------------------------------------------------------


def default_config():
    """The ``data`` config with its defaults (an ``ml_collections.ConfigDict``).

    >>> cfg = default_config()
    >>> cfg.source, cfg.name, cfg.profile, cfg.ratio
    ('tfds', 'cifar10', 'exp', 100.0)
    """
    import ml_collections
    from ml_collections.config_dict import placeholder

    cfg = ml_collections.ConfigDict()
    cfg.source = "tfds"  # "tfds" | "cifar10_jpeg:PATH" | "digits"
    cfg.name = "cifar10"  # the tfds name when source == "tfds"
    cfg.data_dir = placeholder(str)
    cfg.cache_dir = "~/.cache/cce_jax"
    cfg.profile = "exp"  # "exp" | "step" | "none"
    cfg.ratio = 100.0
    cfg.n_max = placeholder(int)
    cfg.counts = placeholder(tuple)
    cfg.subset_seed = 0
    # None = automatic: True for tfds and cifar10_jpeg, False for digits.
    cfg.augment = placeholder(bool)
    cfg.max_test = placeholder(int)
    return cfg


@dataclasses.dataclass(frozen=True)
class DataInfo:
    name: str  # e.g. "cifar10", "cifar10_jpeg", "digits"
    num_classes: int
    image_shape: tuple  # (H, W, C) as fed to the model
    class_names: tuple
    class_counts: np.ndarray  # int64 [K], counts of the imbalanced TRAIN subset built
    num_train: int  # = class_counts.sum()
    num_test: int  # size of the (full, or max_test-limited) test split


@dataclasses.dataclass
class _Raw:
    """A data set loaded into memory. Images are uint8 [N, H, W, C]; pixel = value / scale."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: Sequence
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    scale: float = 255.0


# ----------------------------------------------------------------------------------------
# Loaders.
# ----------------------------------------------------------------------------------------


def _load_tfds(name: str, data_dir) -> _Raw:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
    except Exception as e:  # unknown name, or not prepared and no network
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RuntimeError(
            f"name: cannot load the tfds data set {name!r} (data_dir={data_dir!r}): {first} "
            "Offline, prepare it in data_dir first, or use data.source='cifar10_jpeg:PATH' "
            "or 'digits'."
        ) from e
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(f"name: tfds data set {name!r} has no {key!r} feature")
    num_classes = features["label"].num_classes
    names = tuple(features["label"].names) if features["label"].names else tuple(
        str(i) for i in range(num_classes)
    )

    def read(split):
        ds = builder.as_dataset(
            split=split,
            shuffle_files=False,
            read_config=tfds.ReadConfig(add_tfds_id=True),
        )
        images, labels, ids = [], [], []
        for i, ex in enumerate(tfds.as_numpy(ds.batch(4096))):
            images.append(ex["image"])
            labels.append(ex["label"])
            if "tfds_id" in ex:
                ids.extend(_id_str(s) for s in ex["tfds_id"])
            elif "id" in ex:
                ids.extend(_id_str(s) for s in ex["id"])
        imgs = np.concatenate(images).astype(np.uint8)
        labs = np.concatenate(labels).astype(np.int64)
        if len(ids) != len(labs):  # no stable id feature: the position in the split
            ids = [f"{split}:{i}" for i in range(len(labs))]
        return imgs, labs, ids

    tr_x, tr_y, tr_ids = read("train")
    te_x, te_y, _ = read("test")
    if tr_x.ndim == 3:
        tr_x, te_x = tr_x[..., None], te_x[..., None]
    return _Raw(name, tr_x, tr_y, tr_ids, te_x, te_y, names)


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[..., None]  # values 0..16
    labels = d.target.astype(np.int64)
    # Fixed stratified split: within each class (file order), every third example is test.
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        pos = np.nonzero(labels == c)[0]
        rank[pos] = np.arange(len(pos))
    test = rank % 3 == 2
    tr = np.nonzero(~test)[0]
    te = np.nonzero(test)[0]
    return _Raw(
        "digits",
        images[tr],
        labels[tr],
        [f"digits:{i}" for i in tr],
        images[te],
        labels[te],
        tuple(str(i) for i in range(10)),
        scale=16.0,
    )


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract_once(archive: str, root: str) -> str:
    """Extracts `archive` into root/extracted atomically; returns that directory."""
    target = os.path.join(root, "extracted")
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=root)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue  # folders are made as needed; links are not followed
                    rel = os.path.normpath(member.name)
                    if os.path.isabs(rel) or rel.split(os.sep)[0] == "..":
                        raise ValueError(f"unsafe member path {member.name!r}")
                    dest = os.path.join(tmp, rel)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    with tar.extractfile(member) as src, open(dest, "wb") as out:
                        out.write(src.read())
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
            raise ValueError(
                f"source: cannot extract {archive!r}; the archive looks corrupt ({e})"
            ) from e
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isdir(target):  # another process won the race otherwise
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _decode_folder(folder: str, split: str, class_names):
    """Decodes folder/split/<class>/*.jpg (tf.io.decode_image, as tfds ImageFolder does)."""
    import tensorflow as tf

    paths, labels = [], []
    for c, cname in enumerate(class_names):
        d = os.path.join(folder, split, cname)
        if not os.path.isdir(d):
            raise ValueError(f"source: {split}/{cname}/ is missing from the extracted archive")
        files = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        paths.extend(f"{split}/{cname}/{f}" for f in files)
        labels.extend([c] * len(files))
    if not paths:
        raise ValueError(f"source: no images under {split}/ of the extracted archive")
    blobs = []
    for rel in paths:
        with open(os.path.join(folder, rel), "rb") as f:
            blobs.append(f.read())

    def decode(b):
        x = tf.io.decode_image(b, channels=3, expand_animations=False)
        x.set_shape([None, None, 3])
        return x

    decode = tf.autograph.experimental.do_not_convert(decode)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(blobs, dtype=tf.string))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(1024)
    try:
        images = np.concatenate(list(ds.as_numpy_iterator()))
    except tf.errors.OpError as e:
        raise ValueError(
            f"source: cannot decode the images of {split}/ as one uint8 array of equal "
            f"shapes ({e.message.splitlines()[0]})"
        ) from e
    return images.astype(np.uint8), np.asarray(labels, np.int64), paths


def _load_cifar10_jpeg(archive: str, cache_dir: str) -> _Raw:
    archive = os.path.expanduser(archive)
    if not os.path.isfile(archive):
        raise FileNotFoundError(
            f"source: the CIFAR-10 JPEG archive {archive!r} does not exist (expected a .tar.gz "
            "with train/<class>/*.jpg and test/<class>/*.jpg)"
        )
    key = _sha256(archive)[:16]
    root = os.path.join(os.path.expanduser(cache_dir), f"cifar10_jpeg-{key}")
    npz = os.path.join(root, "arrays.npz")
    if not os.path.isfile(npz):
        folder = _extract_once(archive, root)
        train_dir = os.path.join(folder, "train")
        if not os.path.isdir(train_dir) or not os.path.isdir(os.path.join(folder, "test")):
            raise ValueError(f"source: {archive!r} has no train/ and test/ folders")
        names = sorted(
            n for n in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, n))
        )
        tr_x, tr_y, tr_ids = _decode_folder(folder, "train", names)
        te_x, te_y, te_ids = _decode_folder(folder, "test", names)
        fd, tmp = tempfile.mkstemp(prefix=".arrays-", suffix=".npz", dir=root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    train_images=tr_x,
                    train_labels=tr_y,
                    train_ids=np.asarray(tr_ids),
                    test_images=te_x,
                    test_labels=te_y,
                    test_ids=np.asarray(te_ids),
                    class_names=np.asarray(names),
                )
            os.replace(tmp, npz)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    with np.load(npz) as z:
        return _Raw(
            "cifar10_jpeg",
            z["train_images"],
            z["train_labels"].astype(np.int64),
            z["train_ids"].tolist(),
            z["test_images"],
            z["test_labels"].astype(np.int64),
            tuple(str(n) for n in z["class_names"].tolist()),
        )


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    try:
        from cce_jax.labels import check_labels  # written by another module owner
    except ImportError:
        check_labels = None
    if check_labels is not None:
        try:
            check_labels(np.asarray(labels), int(num_classes))
        except ValueError as e:
            raise ValueError(f"{what} labels: {e}") from e
        return
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} labels must lie in [0, {num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )


# ----------------------------------------------------------------------------------------
# Pipelines.
# ----------------------------------------------------------------------------------------


def _process():
    import jax

    return int(jax.process_index()), int(jax.process_count())


class Data:
    """Input pipelines of one imbalanced data set; see :func:`build`."""

    def __init__(self, raw: _Raw, info: DataInfo, train_idx, test_idx, *, seed, augment,
                 mean, std, global_batch_size, eval_batch_size):
        pidx, pcount = _process()
        if global_batch_size < 1 or global_batch_size % pcount:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a positive multiple of the "
                f"process count {pcount}"
            )
        if eval_batch_size < 1 or eval_batch_size % pcount:
            raise ValueError(
                f"eval_batch_size={eval_batch_size} must be a positive multiple of the "
                f"process count {pcount}"
            )
        self.info = info
        self.steps_per_epoch = info.num_train // global_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"global_batch_size={global_batch_size} exceeds the {info.num_train} training "
                "examples (batches drop the remainder)"
            )
        self._seed = int(seed)
        self._augment = bool(augment)
        self._pidx, self._pcount = pidx, pcount
        self._global_b = global_batch_size
        self._local_b = global_batch_size // pcount
        self._eval_global_b = eval_batch_size
        self._eval_local_b = eval_batch_size // pcount
        # uint8 in memory; normalisation: (x / scale - mean) / std, as  x * a + b.
        self._train_x = np.ascontiguousarray(raw.train_images[train_idx])
        self._train_y = raw.train_labels[train_idx].astype(np.int32)
        self._test_x = raw.test_images[test_idx]
        self._test_y = raw.test_labels[test_idx].astype(np.int32)
        mean = np.asarray(mean, np.float32)
        std = np.asarray(std, np.float32)
        self._a = (1.0 / (raw.scale * std)).astype(np.float32)
        self._b = (-mean / std).astype(np.float32)
        self._tf_images = None

    # -- train -------------------------------------------------------------------------

    def _epoch_plan(self, epoch: int):
        """This process's (image positions, crop rows, crop cols, flips), in batch order.

        A pure function of (seed, epoch): the permutation and the per-element augmentation
        parameters are drawn for the whole global epoch from numpy generators seeded by
        (seed, epoch), and element i of the epoch always gets parameters i, whatever the
        process count. Process p takes slice p of every global batch.
        """
        g, steps = self._global_b, self.steps_per_epoch
        seed = self._seed & 0xFFFFFFFF
        perm = np.random.default_rng([seed, int(epoch), 0x5F1]).permutation(self.info.num_train)
        perm = perm[: steps * g]
        aug = np.random.default_rng([seed, int(epoch), 0xA06])
        oy = aug.integers(0, 2 * _PAD + 1, size=steps * g)
        ox = aug.integers(0, 2 * _PAD + 1, size=steps * g)
        flip = aug.integers(0, 2, size=steps * g)
        sl = slice(self._pidx * self._local_b, (self._pidx + 1) * self._local_b)
        return tuple(v.reshape(steps, g)[:, sl].reshape(-1).astype(np.int64)
                     for v in (perm, oy, ox, flip))

    def _epoch_positions(self, epoch: int) -> np.ndarray:
        return self._epoch_plan(epoch)[0]

    def _dataset(self, epoch: int):
        import tensorflow as tf

        if self._tf_images is None:
            with tf.device("/cpu:0"):
                self._tf_images = tf.constant(self._train_x)
                self._tf_labels = tf.constant(self._train_y)
        images, labels = self._tf_images, self._tf_labels
        h, w, _ = self.info.image_shape
        a = tf.constant(self._a.reshape(1, 1, 1, -1))
        b = tf.constant(self._b.reshape(1, 1, 1, -1))
        rows0 = tf.range(h, dtype=tf.int64)[None]
        cols0 = tf.range(w, dtype=tf.int64)[None]
        cols_rev = tf.range(w - 1, -1, -1, dtype=tf.int64)[None]
        augment = self._augment

        @tf.autograph.experimental.do_not_convert
        def make_batch(pos, oy, ox, flip):
            x = tf.gather(images, pos)  # [B, H, W, C] uint8
            if augment:  # zero-pad by _PAD, crop at (oy, ox), flip: two batched gathers
                x = tf.pad(x, [[0, 0], [_PAD, _PAD], [_PAD, _PAD], [0, 0]])
                rows = oy[:, None] + rows0
                cols = ox[:, None] + tf.where(flip[:, None] > 0, cols_rev, cols0)
                x = tf.gather(x, rows, axis=1, batch_dims=1)
                x = tf.gather(x, cols, axis=2, batch_dims=1)
            x = tf.cast(x, tf.float32) * a + b
            return {"image": x, "label": tf.gather(labels, pos)}

        ds = tf.data.Dataset.from_tensor_slices(self._epoch_plan(epoch))
        ds = ds.batch(self._local_b, drop_remainder=True)
        ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        opts = tf.data.Options()
        opts.deterministic = True
        return ds.with_options(opts)

    def train_epoch(self, epoch: int) -> Iterator[dict]:
        """This process's batches of epoch `epoch`: a pure function of (seed, epoch)."""
        return self._dataset(int(epoch)).as_numpy_iterator()

    # -- eval --------------------------------------------------------------------------

    def num_eval_batches(self) -> int:
        """Batches yielded by :meth:`eval_batches`; the same on every process."""
        return -(-len(self._test_y) // self._eval_global_b)

    def eval_batches(self) -> Iterator[dict]:
        """This process's share of the test split, once; padding has ``mask == False``."""
        n = len(self._test_y)
        gb, lb = self._eval_global_b, self._eval_local_b
        shape = self._test_x.shape[1:]
        for i in range(self.num_eval_batches()):
            start = i * gb + self._pidx * lb
            stop = min(start + lb, n)
            k = max(0, stop - start)
            image = np.zeros((lb,) + shape, np.float32)
            label = np.zeros((lb,), np.int32)
            mask = np.zeros((lb,), bool)
            if k:
                x = self._test_x[start:stop].astype(np.float32)
                image[:k] = x * self._a + self._b
                label[:k] = self._test_y[start:stop]
                mask[:k] = True
            yield {"image": image, "label": label, "mask": mask}


def build(config, *, seed: int, global_batch_size: int, eval_batch_size: int) -> Data:
    """Loads the data set of `config` and builds its imbalanced train and full test pipelines.

    `config` holds the fields of :func:`default_config`. `seed` drives the per-epoch shuffle
    and augmentation; ``config.subset_seed`` drives which training examples survive.
    """
    source = str(config.source)
    if source == "tfds":
        raw = _load_tfds(str(config.name), config.data_dir)
    elif source.startswith("cifar10_jpeg:"):
        raw = _load_cifar10_jpeg(source.split(":", 1)[1], config.cache_dir)
    elif source == "digits":
        raw = _load_digits()
    else:
        raise ValueError(
            f"source: unknown data source {source!r}; expected 'tfds', "
            "'cifar10_jpeg:PATH' or 'digits'"
        )
    num_classes = len(raw.class_names)
    _check_labels(raw.train_labels, num_classes, "train")
    _check_labels(raw.test_labels, num_classes, "test")

    available = np.bincount(raw.train_labels, minlength=num_classes)
    if config.counts is not None:
        counts = class_counts(tuple(config.counts), num_classes)
    else:
        n_max = config.n_max if config.n_max is not None else int(available.min())
        counts = class_counts(str(config.profile), num_classes, n_max, config.ratio)
    train_idx = select_indices(raw.train_labels, raw.train_ids, counts, seed=config.subset_seed)

    test_idx = np.arange(len(raw.test_labels), dtype=np.int64)
    if config.max_test is not None:
        if int(config.max_test) < 1:
            raise ValueError(f"max_test must be >= 1 or None, got {config.max_test}")
        test_idx = _stratified_first(raw.test_labels, int(config.max_test))

    augment = config.augment
    if augment is None:
        augment = source != "digits"

    if source == "digits":
        mean, std = [0.0], [1.0]  # images in [0, 1]
    elif raw.name in ("cifar10", "cifar10_jpeg"):
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif raw.name == "cifar100":
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:  # per-channel statistics of the imbalanced training subset
        x = raw.train_images[train_idx].astype(np.float64) / raw.scale
        mean = x.mean(axis=(0, 1, 2))
        std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3)

    info = DataInfo(
        name=raw.name,
        num_classes=num_classes,
        image_shape=tuple(int(s) for s in raw.train_images.shape[1:]),
        class_names=tuple(raw.class_names),
        class_counts=counts,
        num_train=int(counts.sum()),
        num_test=int(len(test_idx)),
    )
    return Data(raw, info, train_idx, test_idx, seed=seed, augment=augment, mean=mean,
                std=std, global_batch_size=global_batch_size, eval_batch_size=eval_batch_size)
