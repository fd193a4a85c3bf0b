"""Data sources: one loader per source, returning a :class:`RawDataset` (uint8 in memory), or
for the segmentation sources a :class:`~cce_jax.data.segmentation.SegmentationDataset`.

Source strings (``config.source``):

=======================  ===================================================================
``"tfds"``               ``tfds`` data set ``config.name`` (needs tensorflow_datasets)
``"tfds:NAME"``          the same with the name in the source string
``"cifar10_jpeg:PATH"``  the offline CIFAR-10 JPEG archive, decoded with Pillow, cached
``"npz:PATH"``           any array data set in one ``.npz`` (see :func:`load_npz`)
``"fashion_mnist:DIR"``  Fashion-MNIST's four standard IDX files (gzip'd or not) in ``DIR``
``"digits"``             scikit-learn's embedded 8x8 digits
``"seg_folder:DIR"``     a segmentation set as image and label-map files (docs/data.md)
``"seg_npz:PATH"``       a segmentation set in one ``.npz`` with ``train_masks``/``test_masks``
=======================  ===================================================================

Only ``tfds`` imports tensorflow / tensorflow_datasets, lazily.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from cce_jax import _extras
from cce_jax.data.imbalance import id_str

__all__ = [
    "LOADERS",
    "RawDataset",
    "clear_cache",
    "load_cifar10_jpeg",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "load_source",
    "load_tfds",
    "network_reachable",
    "parse_source",
    "read_idx",
]

STALE_TEMP_SECONDS = 600  # temporaries of a live-looking writer older than this are removed


@dataclasses.dataclass
class RawDataset:
    """A data set loaded into memory. Images are uint8 [N, H, W, C]; pixel = value / scale.

    Attributes:
      name: e.g. ``"cifar10"``, ``"cifar10_jpeg"``, ``"digits"``, or the npz file's stem.
      train_images: uint8 [N, H, W, C].
      train_labels: int64 [N].
      train_ids: N stable example ids (str), used by :func:`select_indices`.
      test_images: uint8 [M, H, W, C].
      test_labels: int64 [M].
      class_names: K names; K is the number of classes.
      scale: pixel value of white (255 for 8-bit images, 16 for digits).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: Sequence
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    scale: float = 255.0


def parse_source(source: str, name=None) -> tuple[str, str | None]:
    """(kind, argument) of a source string; see the module docstring.

    >>> parse_source("npz:/data/x.npz"), parse_source("tfds", "cifar10"), parse_source("digits")
    (('npz', '/data/x.npz'), ('tfds', 'cifar10'), ('digits', None))
    """
    source = str(source)
    kind, sep, arg = source.partition(":")
    if kind not in LOADERS:
        raise ValueError(
            f"source: unknown data source {source!r}; expected 'tfds', 'tfds:NAME', "
            "'cifar10_jpeg:PATH', 'npz:PATH', 'fashion_mnist:DIR', 'digits', "
            "'seg_folder:DIR' or 'seg_npz:PATH'"
        )
    if kind == "digits":
        if sep:
            raise ValueError(f"source: 'digits' takes no argument, got {source!r}")
        return kind, None
    if kind == "tfds":
        arg = arg if sep else name
        if not arg:
            raise ValueError(
                "name: source 'tfds' needs a data set name: set data.name (e.g. 'cifar10') or "
                "use data.source='tfds:NAME'"
            )
        return kind, str(arg)
    if not arg:
        raise ValueError(f"source: {kind!r} needs a path, e.g. '{kind}:/data/file'")
    return kind, arg


# ----------------------------------------------------------------------------------------
# tfds
# ----------------------------------------------------------------------------------------


def network_reachable(
    host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0
) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tfds_error(name, data_dir, why) -> RuntimeError:
    return RuntimeError(
        f"name: cannot load the tfds data set {name!r} (data_dir={data_dir!r}): {why} "
        "Offline, prepare it in data_dir first, or use data.source='cifar10_jpeg:PATH', "
        "'npz:PATH' or 'digits'."
    )


def load_tfds(name: str, data_dir=None, *, download="auto") -> RawDataset:
    """A tfds data set with ``image``/``label`` features and train/test splits.

    Args:
      name: the tfds name (cifar10, cifar100, svhn_cropped, fashion_mnist, ...).
      data_dir: the tfds data_dir (None: tfds' default).
      download: ``"never"`` (or False): never download (not prepared in data_dir -> error
        at once); ``"auto"`` (default): download only if the network answers within 3 s,
        else the same error at once; ``"always"`` (or True): ``download_and_prepare``
        (tfds retries for minutes without a network).

    Returns:
      :class:`RawDataset`.
    """
    _extras.require("tfds", "source 'tfds'", "tensorflow", "tensorflow_datasets")
    import tensorflow_datasets as tfds

    download = {True: "always", False: "never"}.get(download, download)
    if download not in ("auto", "always", "never"):
        raise ValueError(f"download: expected 'auto', 'always' or 'never', got {download!r}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _tfds_error(name, data_dir, first) from e
    if download != "always" and not builder.is_prepared():
        if download == "never":
            raise _tfds_error(name, data_dir, "not prepared there and data.download='never'.")
        if not network_reachable():
            raise _tfds_error(
                name, data_dir, "not prepared there and no network (data.download='auto')."
            )
    try:
        builder.download_and_prepare()
    except Exception as e:  # not prepared and the download failed
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _tfds_error(name, data_dir, first) from e
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(f"name: tfds data set {name!r} has no {key!r} feature")
    num_classes = features["label"].num_classes
    if features["label"].names:
        names = tuple(features["label"].names)
    else:
        names = tuple(str(i) for i in range(num_classes))

    def read(split):
        ds = builder.as_dataset(
            split=split, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=True)
        )
        images, labels, ids = [], [], []
        for ex in tfds.as_numpy(ds.batch(4096)):
            images.append(ex["image"])
            labels.append(ex["label"])
            if "tfds_id" in ex:
                ids.extend(id_str(s) for s in ex["tfds_id"])
            elif "id" in ex:
                ids.extend(id_str(s) for s in ex["id"])
        imgs = np.concatenate(images).astype(np.uint8)
        labs = np.concatenate(labels).astype(np.int64)
        if len(ids) != len(labs):  # no stable id feature: the position in the split
            ids = [f"{split}:{i}" for i in range(len(labs))]
        return imgs, labs, ids

    tr_x, tr_y, tr_ids = read("train")
    te_x, te_y, _ = read("test")
    if tr_x.ndim == 3:
        tr_x, te_x = tr_x[..., None], te_x[..., None]
    return RawDataset(name, tr_x, tr_y, tr_ids, te_x, te_y, names)


# ----------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------


def load_digits() -> RawDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16), split 2/3 train, 1/3 test per class.

    Within each class (file order) every third example is test: 1,201 train / 596 test.
    """
    _extras.require("data", "source 'digits'", "sklearn")
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = d.images.astype(np.uint8)[..., None]  # values 0..16
    labels = d.target.astype(np.int64)
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        pos = np.nonzero(labels == c)[0]
        rank[pos] = np.arange(len(pos))
    test = rank % 3 == 2
    tr = np.nonzero(~test)[0]
    te = np.nonzero(test)[0]
    return RawDataset(
        "digits",
        images[tr],
        labels[tr],
        [f"digits:{i}" for i in tr],
        images[te],
        labels[te],
        tuple(str(i) for i in range(10)),
        scale=16.0,
    )


# ----------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ----------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format; ``.gz`` is decompressed) as uint8.

    Header: two zero bytes, the element type (0x08: unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the data must have exactly that many bytes.
    Anything else raises ``ValueError`` naming the file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e}); download it again") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: not an IDX file (it starts with {data[:4].hex() or 'nothing'})")
    code, ndim = data[2], data[3]
    if code != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{code:02x}; expected 0x08 (unsigned byte)")
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header cut short ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = memoryview(data)[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise ValueError(
            f"{path}: {len(body)} data bytes, but the header's shape {dims} needs "
            f"{int(np.prod(dims))} (a truncated or damaged file)"
        )
    return np.frombuffer(body, np.uint8).reshape(dims)


def load_fashion_mnist(folder: str) -> RawDataset:
    """Fashion-MNIST from its four standard IDX files in ``folder`` (28x28x1, 10 classes).

    The files (as the data set's own site and tfds serve them, ``.gz`` or decompressed):
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``: 60,000 training and 10,000 test images. The training ids are
    ``train:<index>`` in file order, as the tfds source gives them for ``fashion_mnist``, so
    a seed selects the same imbalanced subset from either copy.
    """
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"source: fashion_mnist:{folder}: no such folder")
    arrays = {}
    for key, stem in _FASHION_MNIST_FILES.items():
        found = [os.path.join(folder, stem + ext) for ext in (".gz", "")]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise ValueError(f"source: {folder} has no {stem}.gz (nor {stem})")
        arrays[key] = read_idx(found[0])
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"source: {folder}: {split} images {x.shape} and labels {y.shape} do not "
                "match (expected [N, H, W] and [N])"
            )
        if y.size and int(y.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"source: {folder}: {split} label {int(y.max())} is not in 0..9")
    n = len(arrays["train_labels"])
    return RawDataset(
        "fashion_mnist",
        arrays["train_images"][..., None],
        arrays["train_labels"].astype(np.int64),
        [f"train:{i}" for i in range(n)],
        arrays["test_images"][..., None],
        arrays["test_labels"].astype(np.int64),
        FASHION_MNIST_CLASSES,
    )


# ----------------------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------------------


def _npz_error(path, msg) -> ValueError:
    return ValueError(f"source: npz file {path!r}: {msg}")


def load_npz(path: str) -> RawDataset:
    """Any array data set stored in one ``.npz`` (``np.savez``; no pickled objects).

    Arrays:
      ``train_images``: uint8 [N, H, W, C] (or [N, H, W], read as C = 1);
      ``train_labels``: integer [N]; ``test_images``: uint8 [M, H, W, C] (same H, W, C);
      ``test_labels``: integer [M]; optional ``class_names``: K strings (default: "0".."K-1"
      with K = 1 + the largest label); optional ``train_ids``: N unique strings or integers
      (stable ids for the subset selection; default ``"train:<position>"``).

    Returns:
      :class:`RawDataset` named after the file stem, scale 255.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"source: the npz file {path!r} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zlib.error) as e:
        raise _npz_error(path, f"cannot be read as a .npz ({e})") from e
    with z:
        keys = set(z.files)
        missing = [
            k
            for k in ("train_images", "train_labels", "test_images", "test_labels")
            if k not in keys
        ]
        if missing:
            raise _npz_error(path, f"missing arrays {missing} (has {sorted(keys)})")
        try:
            arrays = {k: z[k] for k in keys}
        except (ValueError, zlib.error, OSError) as e:
            raise _npz_error(path, f"cannot read its arrays ({e})") from e
    images = {}
    for split in ("train", "test"):
        x = arrays[f"{split}_images"]
        if x.dtype != np.uint8:
            raise _npz_error(path, f"{split}_images must be uint8, got {x.dtype}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or 0 in x.shape[1:]:
            raise _npz_error(
                path,
                f"{split}_images must have shape [N, H, W, C], "
                f"got {arrays[f'{split}_images'].shape}",
            )
        y = arrays[f"{split}_labels"]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise _npz_error(
                path, f"{split}_labels must be a 1-D integer array, got {y.dtype} {y.shape}"
            )
        if len(y) != len(x):
            raise _npz_error(
                path, f"{split}_labels has {len(y)} entries but {split}_images {len(x)}"
            )
        if len(x) == 0:
            raise _npz_error(path, f"{split}_images is empty")
        images[split] = (x, y.astype(np.int64))
    (tr_x, tr_y), (te_x, te_y) = images["train"], images["test"]
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise _npz_error(
            path, f"train images are {tr_x.shape[1:]} but test images {te_x.shape[1:]}"
        )
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or len(cn) == 0:
            raise _npz_error(path, f"class_names must be a 1-D array of K names, got {cn.shape}")
        names = tuple(id_str(n) for n in cn.tolist())
    else:
        k = int(max(tr_y.max(), te_y.max(), 0)) + 1
        names = tuple(str(i) for i in range(k))
    if "train_ids" in arrays:
        ids_arr = arrays["train_ids"]
        if ids_arr.ndim != 1 or len(ids_arr) != len(tr_y):
            raise _npz_error(path, f"train_ids must have shape [{len(tr_y)}], got {ids_arr.shape}")
        ids = [id_str(i) for i in ids_arr.tolist()]
        if len(set(ids)) != len(ids):
            raise _npz_error(path, "train_ids must be unique")
    else:
        ids = [f"train:{i}" for i in range(len(tr_y))]
    name = os.path.splitext(os.path.basename(path))[0]
    return RawDataset(name, tr_x, tr_y, ids, te_x, te_y, names)


# ----------------------------------------------------------------------------------------
# cifar10_jpeg
# ----------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def clean_stale_temporaries(root: str, *, max_age_s: float = STALE_TEMP_SECONDS) -> list:
    """Removes ``.extract-*`` folders and ``.arrays-*`` files left by killed runs in `root`.

    A temporary is named ``.extract-<pid>-...`` / ``.arrays-<pid>-...``; it is stale when
    that process no longer exists, or when it is older than `max_age_s` seconds and carries no
    pid (older releases). Returns the removed paths.
    """
    removed = []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.startswith((".extract-", ".arrays-")):
            continue
        path = os.path.join(root, entry)
        parts = entry.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        try:
            age = now - os.path.getmtime(path)
        except OSError:
            continue
        stale = (not _pid_alive(pid)) if pid is not None else age > max_age_s
        if pid == os.getpid():
            stale = False
        if stale:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass
            if not os.path.exists(path):
                removed.append(path)
    return removed


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _cache_error(e: OSError, doing: str, root: str) -> OSError:
    """One line for a cache that cannot be written: the path, the cause, what to do."""
    cause = (
        "no space left on device"
        if e.errno in (errno.ENOSPC, errno.EDQUOT)
        else f"not writable ({e.strerror})"
    )
    return OSError(
        e.errno,
        f"source: {cause} while {doing} {root!r}; free space there or set data.cache_dir "
        "to a writable folder with room (the extracted archive and its arrays: ~3x the archive)",
    )


def _extract_once(archive: str, root: str) -> str:
    """Extracts `archive` into root/extracted atomically; returns that directory."""
    target = os.path.join(root, "extracted")
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".extract-{os.getpid()}-", dir=root)
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
        except OSError as e:
            if e.errno not in _WRITE_ERRNOS:
                raise ValueError(
                    f"source: cannot extract {archive!r}; the archive looks corrupt ({e})"
                ) from e
            raise _cache_error(e, f"extracting {archive!r} into", root) from e
        except (tarfile.TarError, EOFError, ValueError, zlib.error) as e:
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


def _decode_one(path: str) -> np.ndarray:
    from PIL import Image

    with open(path, "rb") as f:
        blob = f.read()
    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_folder(folder: str, split: str, class_names):
    """Decodes folder/split/<class>/*.jpg|png with Pillow into uint8 [N, H, W, 3]."""
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
    images = [None] * len(paths)
    errors = []

    def work(lo, hi):
        for i in range(lo, hi):
            try:
                images[i] = _decode_one(os.path.join(folder, paths[i]))
            except (
                OSError,
                ValueError,
                SyntaxError,
            ) as e:  # PIL: UnidentifiedImageError is an OSError
                errors.append(f"{paths[i]}: {e}")
                return

    n_threads = max(1, min(8, os.cpu_count() or 1))
    chunk = -(-len(paths) // n_threads)
    threads = [
        threading.Thread(target=work, args=(i * chunk, min(len(paths), (i + 1) * chunk)))
        for i in range(n_threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise ValueError(f"source: cannot decode the images of {split}/ ({errors[0]})")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(
            f"source: cannot decode the images of {split}/ as one uint8 array of equal shapes "
            f"(found shapes {sorted(shapes)[:3]})"
        )
    return np.stack(images), np.asarray(labels, np.int64), paths


def _write_npz_atomically(path: str, **arrays) -> None:
    root = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".arrays-{os.getpid()}-", suffix=".npz", dir=root)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise _cache_error(e, "writing the decoded arrays into", root) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _disk_usage(folder: str) -> int:
    """Bytes of the files under ``folder``."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def load_cifar10_jpeg(archive: str, cache_dir: str = "~/.cache/cce_jax") -> RawDataset:
    """The offline CIFAR-10 JPEG archive (``train|test/<class>/NNNN.jpg``), decoded once.

    Extracted into ``cache_dir/cifar10_jpeg-<sha256 prefix>/extracted`` and decoded with
    Pillow into ``arrays_pillow.npz`` (both written to temporaries, then renamed); later calls
    load the ``.npz``. Pillow decodes like ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``;
    the tf default used before (INTEGER_FAST) differs by up to 5 levels (mean 1), hence a new
    cache file name. Temporaries left by killed runs are removed first
    (:func:`clean_stale_temporaries`). Classes are the train/ sub-folders, sorted. The first
    call says on stderr where the copy went and how large it is (about 420 MB for CIFAR-10).
    """
    archive = os.path.expanduser(archive)
    if not os.path.isfile(archive):
        raise FileNotFoundError(
            f"source: the CIFAR-10 JPEG archive {archive!r} does not exist (expected a .tar.gz "
            "with train/<class>/*.jpg and test/<class>/*.jpg)"
        )
    key = _sha256(archive)[:16]
    root = os.path.join(os.path.expanduser(cache_dir), f"cifar10_jpeg-{key}")
    clean_stale_temporaries(root)
    npz = os.path.join(root, "arrays_pillow.npz")
    if not os.path.isfile(npz):
        _extras.require("data", "source 'cifar10_jpeg'", "PIL")
        folder = _extract_once(archive, root)
        train_dir = os.path.join(folder, "train")
        if not os.path.isdir(train_dir) or not os.path.isdir(os.path.join(folder, "test")):
            raise ValueError(f"source: {archive!r} has no train/ and test/ folders")
        names = sorted(
            n for n in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, n))
        )
        tr_x, tr_y, tr_ids = _decode_folder(folder, "train", names)
        te_x, te_y, te_ids = _decode_folder(folder, "test", names)
        _write_npz_atomically(
            npz,
            train_images=tr_x,
            train_labels=tr_y,
            train_ids=np.asarray(tr_ids),
            test_images=te_x,
            test_labels=te_y,
            test_ids=np.asarray(te_ids),
            class_names=np.asarray(names),
        )
        print(
            f"cce_jax.data: the CIFAR-10 JPEG copy was extracted and decoded once into {root} "
            f"({_disk_usage(root) / 1e6:.0f} MB; later runs load it from there; "
            "data.cache_dir sets the folder; delete it to free the space)",
            file=sys.stderr,
            flush=True,
        )
    with np.load(npz) as z:
        return RawDataset(
            "cifar10_jpeg",
            z["train_images"],
            z["train_labels"].astype(np.int64),
            z["train_ids"].tolist(),
            z["test_images"],
            z["test_labels"].astype(np.int64),
            tuple(str(n) for n in z["class_names"].tolist()),
        )


# ----------------------------------------------------------------------------------------
# The table and the in-process cache
# ----------------------------------------------------------------------------------------


def _tfds_loader(arg, config):
    return load_tfds(arg, config.get("data_dir"), download=config.get("download", "auto"))


LOADERS: dict[str, Callable] = {
    "tfds": _tfds_loader,
    "cifar10_jpeg": lambda arg, config: load_cifar10_jpeg(
        arg, config.get("cache_dir") or "~/.cache/cce_jax"
    ),
    "npz": lambda arg, config: load_npz(arg),
    "fashion_mnist": lambda arg, config: load_fashion_mnist(arg),
    "digits": lambda arg, config: load_digits(),
    "seg_folder": lambda arg, config: _segmentation().load_seg_folder(arg),
    "seg_npz": lambda arg, config: _segmentation().load_seg_npz(arg),
}


def _segmentation():
    from cce_jax.data import segmentation

    return segmentation


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _freeze(raw):
    for field in dataclasses.fields(raw):
        a = getattr(raw, field.name)
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    raw.train_ids = tuple(raw.train_ids)
    return raw


def load_source(config):
    """The :class:`RawDataset` of ``config.source`` (a segmentation source: its
    :class:`~cce_jax.data.segmentation.SegmentationDataset`), loaded once per process.

    Cached by (source, name, data_dir, cache_dir); the cached arrays are read-only. Pass it as
    ``build(..., raw=...)`` to build several pipelines (e.g. one per seed) from one load.

    Args:
      config: the ``data`` config (:func:`cce_jax.data.default_config` fields).

    Returns:
      :class:`RawDataset`, or ``SegmentationDataset`` for ``seg_folder``/``seg_npz``.
    """
    kind, arg = parse_source(config.source, config.get("name"))
    if kind in ("cifar10_jpeg", "npz", "fashion_mnist", "seg_folder", "seg_npz"):
        arg = os.path.abspath(os.path.expanduser(arg))
    stamp = None
    if kind in ("cifar10_jpeg", "npz", "seg_npz") and os.path.isfile(arg):
        st = os.stat(arg)
        stamp = (st.st_mtime_ns, st.st_size)  # a rewritten file is loaded again
    key = (kind, arg, stamp, config.get("data_dir"), config.get("cache_dir"))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    raw = _freeze(LOADERS[kind](arg, config))
    with _CACHE_LOCK:
        _CACHE[key] = raw
    return raw


def clear_cache() -> None:
    """Forgets the data sets cached by :func:`load_source`."""
    with _CACHE_LOCK:
        _CACHE.clear()
