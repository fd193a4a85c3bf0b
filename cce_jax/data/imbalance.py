"""Imbalance profiles (:func:`class_counts`), the seeded subset choice (:func:`select_indices`)
and the tf pipeline's epoch plan (:func:`epoch_plan`), numpy only."""

import dataclasses
import hashlib
import math

import numpy as np

PROFILES = ("exp", "step", "none")
PAD = 4  # augmentation: zero padding before the random crop back to the original size


def _floor(x: float) -> int:
    # floor() that is robust to values such as 49.99999999999999 meant to be 50.
    return math.floor(x * (1.0 + 1e-12) + 1e-9)


def class_counts(profile, num_classes=None, n_max=None, ratio=1.0) -> np.ndarray:
    """Per-class training counts (int64 [K]) of an imbalanced split: the profiles of the
    long-tail literature (Cui et al. 2019, Cao et al. 2019; LDAM-DRW's ``get_img_num_per_cls``).

    ``exp``: n_i = floor(n_max * ratio ** (-i / (K - 1))); ``step``: the first K // 2 classes
    keep n_max, the others floor(n_max / ratio); ``none``: all n_max. ``profile`` may also be
    an explicit sequence of positive counts (``num_classes``, if given, must be its length).
    ``ratio`` = n_max / n_min >= 1 (LDAM's ``imb_factor`` is ``1 / ratio``).

    >>> c = class_counts("exp", 10, 5000, 100)
    >>> c.tolist(), int(c.sum())
    ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 12406)
    >>> class_counts("step", 4, 100, 10).tolist(), class_counts([3, 2, 1]).tolist()
    ([100, 100, 10, 10], [3, 2, 1])
    """
    if not isinstance(profile, str):
        try:
            counts = [int(c) for c in profile]
        except TypeError:
            raise ValueError(f"profile: one of {PROFILES} or counts, got {profile!r}") from None
        if num_classes is not None and len(counts) != int(num_classes):
            raise ValueError(
                f"profile: explicit counts have length {len(counts)} != num_classes={num_classes}"
            )
        if not counts or min(counts) < 1:
            raise ValueError(f"profile: explicit counts must be positive, got {counts}")
        return np.asarray(counts, dtype=np.int64)
    if profile not in PROFILES:
        raise ValueError(f"profile: unknown profile {profile!r}; expected one of {PROFILES}")
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if n_max is None or int(n_max) < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max!r}")
    ratio = float(ratio)
    if not ratio >= 1.0:  # also catches NaN
        raise ValueError(f"ratio must be >= 1 (ratio = n_max / n_min), got {ratio}")
    k, n_max = int(num_classes), int(n_max)
    low = max(1, _floor(n_max / ratio))
    if profile == "none":
        counts = [n_max] * k
    elif profile == "step":
        counts = [n_max] * (k // 2) + [low] * (k - k // 2)
    elif k == 1:
        counts = [n_max]
    else:  # exp: the last class exactly floor(n_max / ratio)
        mid = [max(1, _floor(n_max * ratio ** (-i / (k - 1)))) for i in range(1, k - 1)]
        counts = [n_max, *mid, low]
    return np.asarray(counts, dtype=np.int64)


def id_str(x) -> str:
    """A stable example id as ``str`` (``bytes`` ids are decoded as UTF-8)."""
    return bytes(x).decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _seeded_hash(seed: int, ident: str) -> int:
    h = hashlib.blake2b(f"{int(seed)}\x00{ident}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def select_indices(labels, ids, counts, *, seed) -> np.ndarray:
    """Sorted int64 positions of the training examples kept: per class c, the first
    ``counts[c]`` examples ranked by a seeded hash of their stable id (ties: the id).

    The result depends only on the multiset of (label, id) pairs and the seed, not on the
    order the data was read in. ``counts`` must be non-negative integers.

    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> kept = select_indices(labels, list("abcdef"), [2, 1], seed=0)
    >>> len(kept), np.bincount(labels[kept]).tolist()
    (3, [2, 1])
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    raw = np.asarray(counts).reshape(-1)
    whole = raw.dtype.kind in "iuf" and np.all(np.isfinite(raw) & (raw == np.round(raw)))
    if not (raw.size and whole and np.all(raw >= 0)):
        raise ValueError(f"counts: must be non-negative integers, got {raw.tolist()}")
    counts = raw.astype(np.int64)
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
    keys = [(_seeded_hash(seed, s), s) for s in map(id_str, ids)]
    kept = []
    for c in range(len(counts)):
        kept += sorted(np.nonzero(labels == c)[0].tolist(), key=keys.__getitem__)[: counts[c]]
    return np.sort(np.asarray(kept, dtype=np.int64))


def class_rank(labels) -> np.ndarray:
    """int64 [N]: the position of each example among those of its class, in order."""
    rank, seen = np.zeros(len(labels), np.int64), {}
    for p, y in enumerate(np.asarray(labels).tolist()):
        rank[p] = seen[y] = seen.get(y, -1) + 1
    return rank


def stratified_first(labels, n: int) -> np.ndarray:
    """Sorted positions of the first n examples, taken round-robin over the classes.

    >>> stratified_first([0, 0, 0, 1, 1, 2], 4).tolist()
    [0, 1, 3, 5]
    """
    return np.sort(np.argsort(class_rank(labels), kind="stable")[:n]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch in global batch order; every field is int64 [steps, global_batch_size].

    ``positions`` index the kept training subset; row ``s`` is global batch ``s``. Example
    ``(s, i)`` is zero-padded by :data:`PAD`, cropped back to H x W at row ``oy``, column
    ``ox`` of the padded image, then mirrored left-right if ``flip`` (when augmenting).
    """

    positions: np.ndarray
    oy: np.ndarray
    ox: np.ndarray
    flip: np.ndarray


def epoch_plan(*, seed: int, epoch: int, num_train: int, global_batch_size: int) -> EpochPlan:
    """The tf.data pipeline's epoch, drawn whole from numpy generators seeded by (seed's low
    32 bits, epoch); the remainder that fills no global batch is dropped. Element i gets
    parameters i whatever the process count (process p of P takes columns ``[p*B/P,
    (p+1)*B/P)``).

    >>> p = epoch_plan(seed=0, epoch=0, num_train=10, global_batch_size=4)
    >>> p.positions.shape, len(set(p.positions.ravel().tolist()))
    ((2, 4), 8)
    """
    n, g = int(num_train), int(global_batch_size)
    if g < 1 or n < 0:
        raise ValueError(f"need global_batch_size >= 1 and num_train >= 0, got {g}, {n}")
    if int(epoch) < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    steps, seed32 = n // g, int(seed) & 0xFFFFFFFF
    perm = np.random.default_rng([seed32, int(epoch), 0x5F1]).permutation(n)[: steps * g]
    aug = np.random.default_rng([seed32, int(epoch), 0xA06])
    oy = aug.integers(0, 2 * PAD + 1, size=steps * g)
    ox = aug.integers(0, 2 * PAD + 1, size=steps * g)
    flip = aug.integers(0, 2, size=steps * g)
    return EpochPlan(*(v.astype(np.int64).reshape(steps, g) for v in (perm, oy, ox, flip)))
