"""Data sources: ONE registry, :data:`SOURCES` (name -> loader), each returning a :class:`Dataset`;
a source string is ``NAME`` or ``NAME:ARGUMENT`` (docs/data.md, "Add a source"). Only ``tfds``
imports tensorflow / tensorflow_datasets, lazily."""

import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import io
import os
import struct
import sys
import tarfile
import zlib
from collections.abc import Sequence

import numpy as np

from cce_jax import _extras
from cce_jax.data.imbalance import class_rank, id_str

IGNORE_INDEX = 255  # label-map pixels that count for nothing (void, boundaries, padding)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # of the full balanced training sets, pixels in [0, 1]
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_THREADS = max(1, min(8, os.cpu_count() or 1))
CACHE_DIR = "~/.cache/cce_jax"


@dataclasses.dataclass
class Dataset:
    """A data set in memory: uint8 images ``[N, H, W, C]`` (pixel = value / ``scale``).

    ``train_labels``/``test_labels``: int64 ``[N]`` class ids, or uint8 label maps
    ``[N, H, W]`` (values in ``[0, K)`` or 255). ``train_ids``: N stable ids for the seeded
    subset choice. ``mean``/``std``: the per-channel normalisation (pixels in [0, 1]); None:
    the statistics of the kept training images.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: Sequence
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    scale: float = 255.0
    mean: tuple | None = None
    std: tuple | None = None

    @property
    def task(self) -> str:
        """``"segmentation"`` for label maps, else ``"classification"``."""
        return "segmentation" if np.ndim(self.train_labels) > 1 else "classification"


def check_labels(labels, num_classes: int, what: str) -> None:
    """Raises ``ValueError`` naming ``what`` and the bad values unless every label is in
    ``[0, K)`` (label maps: or :data:`IGNORE_INDEX`)."""
    y = np.asarray(labels)
    bad = (y < 0) | (y >= int(num_classes))
    if y.ndim > 1:
        bad &= y != IGNORE_INDEX
    if bad.any():
        values = np.unique(y[bad]).tolist()
        shown = f"{values[:8]}{' ...' if len(values) > 8 else ''}"
        extra = f" nor the ignore index {IGNORE_INDEX}" if y.ndim > 1 else ""
        raise ValueError(
            f"{what}: label values {shown} are not class indices in [0, {num_classes}){extra}"
        )


def _checked(ds: Dataset, where: str, key: str = "labels") -> Dataset:
    """Shapes, dtypes, ids and label values of ``ds``; errors name ``where`` and the array."""
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        lab = f"{split}_{key}"
        if x.dtype != np.uint8:
            raise ValueError(f"{where}: {split}_images must be uint8, got {x.dtype}")
        if x.ndim != 4 or 0 in x.shape:
            raise ValueError(f"{where}: {split}_images must have shape [N, H, W, C], got {x.shape}")
        if y.ndim > 1 and (y.dtype != np.uint8 or y.shape != x.shape[:3]):
            raise ValueError(
                f"{where}: {lab} has shape {y.shape} {y.dtype}; label maps must be uint8 [N, H, W]"
            )
        if y.ndim < 2 and (y.ndim != 1 or y.dtype.kind not in "iu"):
            raise ValueError(f"{where}: {lab} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise ValueError(f"{where}: {lab} has {len(y)} entries but {split}_images {len(x)}")
        check_labels(y, len(ds.class_names), f"{where}: {lab}")
    if ds.train_images.shape[1:] != ds.test_images.shape[1:]:
        shapes = ds.train_images.shape[1:], ds.test_images.shape[1:]
        raise ValueError(f"{where}: train images are {shapes[0]} but test images {shapes[1]}")
    if len(ds.train_ids) != len(ds.train_images):
        raise ValueError(f"{where}: train_ids must have shape [{len(ds.train_images)}]")
    if len(set(ds.train_ids)) != len(ds.train_ids):
        raise ValueError(f"{where}: train_ids must be unique")
    return ds


def load_tfds(name: str, data_dir=None, *, download="auto") -> Dataset:
    """A tfds data set with ``image``/``label`` features and train/test splits. ``download``
    ``"never"`` (or False): one not prepared in ``data_dir`` is an error at once; ``"auto"``,
    ``"always"`` (or True): ``download_and_prepare`` (tfds reports a failed download)."""
    _extras.require("tfds", "source 'tfds'", "tensorflow", "tensorflow_datasets")
    import tensorflow_datasets as tfds

    download = {True: "always", False: "never"}.get(download, download)
    if download not in ("auto", "always", "never"):
        raise ValueError(f"download: expected 'auto', 'always' or 'never', got {download!r}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if download == "never" and not builder.is_prepared():
            raise RuntimeError("not prepared there and data.download='never'.")
        builder.download_and_prepare()
    except Exception as e:  # an unknown name, not prepared, a failed download
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RuntimeError(
            f"name: cannot load the tfds data set {name!r} (data_dir={data_dir!r}): {why} "
            "Offline, prepare it in data_dir first, or use data.source='cifar10_jpeg:PATH', "
            "'npz:PATH' or 'digits'."
        ) from e
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(f"name: tfds data set {name!r} has no {key!r} feature")
    names = tuple(features["label"].names or map(str, range(features["label"].num_classes)))

    def read(split):
        config = tfds.ReadConfig(add_tfds_id=True)
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=config)
        parts = list(tfds.as_numpy(ds.batch(4096)))
        x, y, ids = (np.concatenate([p[f] for p in parts]) for f in ("image", "label", "tfds_id"))
        x = x.astype(np.uint8)
        return (x[..., None] if x.ndim == 3 else x), y.astype(np.int64), [id_str(s) for s in ids]

    (tr_x, tr_y, tr_ids), (te_x, te_y, _) = read("train"), read("test")
    stats = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}
    mean, std = stats.get(name, (None, None))
    return Dataset(name, tr_x, tr_y, tr_ids, te_x, te_y, names, mean=mean, std=std)


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16): within each class (file order) every
    third example is test, 1,201 train / 596 test. Pixels in [0, 1], not normalised."""
    _extras.require("data", "source 'digits'", "sklearn")
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images, labels = d.images.astype(np.uint8)[..., None], d.target.astype(np.int64)
    test = class_rank(labels) % 3 == 2
    tr, te = np.nonzero(~test)[0], np.nonzero(test)[0]
    ids = [f"digits:{i}" for i in tr]
    names = tuple(str(i) for i in range(10))
    return Dataset(
        "digits", images[tr], labels[tr], ids, images[te], labels[te], names, 16.0, (0.0,), (1.0,)
    )


def read_idx(path: str) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format; ``.gz`` is decompressed) as uint8;
    a bad header (not 0, 0, type 0x08, rank, big-endian uint32 dimensions) or body length
    raises ``ValueError`` naming the file."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e}); download it again") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: not an IDX file (it starts with {data[:4].hex() or 'nothing'})")
    code, head = data[2], 4 + 4 * data[3]
    if code != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{code:02x}; expected 0x08 (unsigned byte)")
    dims = struct.unpack(f">{data[3]}I", data[4:head]) if len(data) >= head else None
    if dims is None or len(data) - head != int(np.prod(dims)):
        raise ValueError(f"{path}: a truncated or damaged file (IDX shape {dims})")
    return np.frombuffer(memoryview(data)[head:], np.uint8).reshape(dims)


def load_fashion_mnist(folder: str) -> Dataset:
    """Fashion-MNIST from its four IDX files in ``folder`` (``.gz`` or not): 60,000 training
    and 10,000 test images of 28x28x1. Training ids ``train:<index>`` as tfds gives them."""
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"source: fashion_mnist:{folder}: no such folder")
    arrays = []
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        found = [
            p for p in (f"{folder}/{stem}-ubyte.gz", f"{folder}/{stem}-ubyte") if os.path.isfile(p)
        ]
        if not found:
            raise ValueError(f"source: {folder} has no {stem}-ubyte.gz (nor {stem}-ubyte)")
        arrays.append(read_idx(found[0]))
    # images [N, H, W] get their channel axis, labels [N] become int64
    tr_x, tr_y, te_x, te_y = (a[..., None] if a.ndim == 3 else a.astype(np.int64) for a in arrays)
    names = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
    ids = [f"train:{i}" for i in range(len(tr_y))]
    ds = Dataset("fashion_mnist", tr_x, tr_y, ids, te_x, te_y, tuple(names.split(",")))
    return _checked(ds, f"source: {folder}")


def load_npz(path: str, key: str | None = None) -> Dataset:
    """A data set in one ``.npz`` of ``np.savez`` arrays, format in docs/data.md: images,
    labels (or label maps, also as ``*_masks``, read first with ``key="masks"``), optional
    ``class_names`` (default "0".."K-1") and ``train_ids`` (default ``train:<position>``)."""
    path = os.path.expanduser(str(path))
    where = f"source: {path}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: the npz file does not exist")
    unreadable = (OSError, ValueError, EOFError, zlib.error)
    try:
        z = np.load(path, allow_pickle=False)
    except unreadable as e:
        raise ValueError(f"{where}: cannot be read as a .npz ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{where}: a single array (.npy), not a .npz of named arrays")
    with z:
        order = ("masks", "labels") if key == "masks" else ("labels", "masks")
        key = next((k for k in order if f"train_{k}" in z.files), order[0])
        need = sorted(f"{s}_{k}" for k in ("images", key) for s in ("train", "test"))
        missing = [k for k in need if k not in z.files]
        if missing:
            raise ValueError(f"{where}: missing arrays {missing} (has {sorted(z.files)})")
        try:
            a = {k: z[k] for k in (*need, "class_names", "train_ids") if k in z.files}
        except unreadable as e:
            raise ValueError(f"{where}: cannot read its arrays ({e})") from e
    x = [a[f"{s}_images"] for s in ("train", "test")]
    x = [v[..., None] if v.ndim == 3 else v for v in x]
    y = [a[f"{s}_{key}"] for s in ("train", "test")]
    y = [v.astype(np.int64) if v.ndim == 1 and v.dtype.kind in "iu" else v for v in y]
    known = y[0][y[0] != IGNORE_INDEX] if y[0].ndim > 1 else y[0]
    k = int(known.max(initial=0)) + 1 if known.dtype.kind in "iu" else 1  # default "0".."K-1"
    cn = a.get("class_names", np.asarray([str(i) for i in range(k)]))
    if cn.ndim != 1 or len(cn) == 0:
        raise ValueError(f"{where}: class_names must be a 1-D array of K names, got {cn.shape}")
    ids = [f"train:{i}" for i in range(len(x[0]))]
    if "train_ids" in a:
        ids = [id_str(i) for i in a["train_ids"].ravel().tolist()]
    name = os.path.splitext(os.path.basename(path))[0]
    ds = Dataset(name, x[0], y[0], ids, x[1], y[1], tuple(id_str(n) for n in cn.tolist()))
    return _checked(ds, where, key)


def _decode_archive(archive: str) -> dict:
    """The arrays of a ``train|test/<class>/*.jpg`` archive: its members read with tarfile in
    order, decoded with Pillow in a thread pool."""
    from PIL import Image

    def decode(blob):
        with Image.open(io.BytesIO(blob)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    members = []  # (split, class, file name, bytes)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                parts = os.path.normpath(m.name).split(os.sep)
                if m.isfile() and len(parts) == 3 and parts[2].lower().endswith(IMAGE_EXTENSIONS):
                    members.append((*parts, tar.extractfile(m).read()))
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise ValueError(f"source: cannot read {archive!r}; the archive looks corrupt ({e})") from e
    names = sorted({c for s, c, *_ in members if s == "train"})
    if not names or not any(s == "test" for s, *_ in members):
        raise ValueError(f"source: {archive!r} has no train/<class>/ and test/<class>/ images")
    label = {c: y for y, c in enumerate(names)}
    out = {"class_names": np.asarray(names)}
    for split in ("train", "test"):
        files = sorted((c, f, blob) for s, c, f, blob in members if s == split and c in label)
        with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
            try:
                images = list(pool.map(decode, [blob for *_, blob in files]))
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors are OSErrors
                raise ValueError(f"source: cannot decode the images of {split}/ ({e})") from e
        if len({im.shape for im in images}) != 1:
            raise ValueError(f"source: the images of {split}/ differ in shape")
        out[f"{split}_images"] = np.stack(images)
        out[f"{split}_labels"] = np.asarray([label[c] for c, *_ in files], np.int64)
        out[f"{split}_ids"] = np.asarray([f"{split}/{c}/{f}" for c, f, _ in files])
    return out


def save_npz_atomically(path: str, **arrays) -> None:
    """``np.savez`` into a temporary file beside ``path``, then renamed: never half-written."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(
            e.errno,
            f"source: cannot write {path!r} ({e.strerror}); free space there or set "
            "data.cache_dir to a writable folder with room",
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_cifar10_jpeg(archive: str, cache_dir: str = CACHE_DIR) -> Dataset:
    """The CIFAR-10 JPEG archive (``train|test/<class>/NNNN.jpg``), decoded once from the tar
    (Pillow decodes like ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``) into
    ``cache_dir/cifar10_jpeg-<sha256 prefix>/arrays_pillow.npz`` (written atomically), which
    later calls load. Classes: the sorted train/ folders; training ids: the member paths."""
    archive = os.path.expanduser(archive)
    if not os.path.isfile(archive):
        raise FileNotFoundError(f"source: the CIFAR-10 JPEG archive {archive!r} does not exist")
    with open(archive, "rb") as f:
        key = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    root = os.path.join(os.path.expanduser(cache_dir), f"cifar10_jpeg-{key}")
    npz = os.path.join(root, "arrays_pillow.npz")
    if not os.path.isfile(npz):
        _extras.require("data", "source 'cifar10_jpeg'", "PIL")
        save_npz_atomically(npz, **_decode_archive(archive))
        print(
            f"cce_jax.data: the CIFAR-10 JPEG copy was decoded once into {npz} (data.cache_dir; "
            f"{os.path.getsize(npz) / 1e6:.0f} MB; later runs load it from there)",
            file=sys.stderr,
        )
    ds = load_npz(npz)
    return dataclasses.replace(ds, name="cifar10_jpeg", mean=CIFAR10_MEAN, std=CIFAR10_STD)


def _read_image(path: str, label: bool) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if label and (im.format != "PNG" or im.mode not in ("L", "P")):
                raise ValueError(
                    f"{path}: a label map must be a PNG of mode L or P (8-bit class indices), "
                    f"got {im.format} mode {im.mode}"
                )
            if label:
                return np.array(im, np.uint8)  # P: the palette indices are the class ids
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise ValueError(f"{path}: {im.mode} images are not supported (8-bit L or RGB)")
            if im.mode in ("1", "L", "LA"):
                return np.asarray(im.convert("L"), np.uint8)[..., None]
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError is an OSError
        what = "a PNG label map" if label else "an image"
        raise ValueError(f"{path}: cannot be read as {what} ({e})") from e


def _read_split(folder: str, split: str, num_classes: int):
    """(images, label maps, stems) of ``folder/split``: every image ``images/<stem>.*`` with
    its label map ``labels/<stem>.png`` and nothing else."""
    img_dir, lab_dir = (os.path.join(folder, split, sub) for sub in ("images", "labels"))
    for d in (img_dir, lab_dir):
        if not os.path.isdir(d):
            raise ValueError(f"{d}: missing (expected {split}/images/ and {split}/labels/)")
    stems = {}
    for f in sorted(f for f in os.listdir(img_dir) if f.lower().endswith(IMAGE_EXTENSIONS)):
        if stems.setdefault(os.path.splitext(f)[0], f) != f:
            raise ValueError(f"{os.path.join(img_dir, f)}: a second image of that stem")
    if not stems:
        raise ValueError(f"{img_dir}: no .png/.jpg/.jpeg images")
    for f in sorted(f for f in os.listdir(lab_dir) if not f.startswith(".")):
        stem, ext = os.path.splitext(f)
        if ext.lower() != ".png" or stem not in stems:
            raise ValueError(f"{os.path.join(lab_dir, f)}: no image {split}/images/{stem}.*")

    def read(stem):
        ipath, lpath = os.path.join(img_dir, stems[stem]), os.path.join(lab_dir, stem + ".png")
        if not os.path.isfile(lpath):
            raise ValueError(f"{ipath}: its label map {split}/labels/{stem}.png is missing")
        x, m = _read_image(ipath, False), _read_image(lpath, True)
        if m.shape != x.shape[:2]:
            raise ValueError(
                f"{lpath}: label map is {m.shape[1]}x{m.shape[0]} (WxH) but its image "
                f"{ipath} is {x.shape[1]}x{x.shape[0]}"
            )
        check_labels(m, num_classes, lpath)
        return x, m

    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        images, maps = zip(*pool.map(read, stems))
    for f, x in zip(stems.values(), images):
        if x.shape != images[0].shape:
            raise ValueError(
                f"{os.path.join(img_dir, f)}: shape {x.shape} (H, W, C) differs from the "
                f"first image's {images[0].shape}; all images must have one size and channels"
            )
    return np.stack(images), np.stack(maps), list(stems)


def load_seg_folder(folder: str) -> Dataset:
    """A segmentation set as files (docs/data.md): ``classes.txt`` (one name per line),
    ``train|test/images/<stem>.png|.jpg|.jpeg`` and ``train|test/labels/<stem>.png``
    (single-channel 8-bit PNG, mode L or P, of class ids or 255). Training ids: the stems.
    Every error names the file."""
    folder = os.path.expanduser(str(folder))
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    path = os.path.join(folder, "classes.txt")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing (one class name per line, class 0 first)")
    with open(path, encoding="utf-8") as f:
        names = tuple(line.strip() for line in f.read().rstrip().splitlines())
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{path}: one unique, non-empty class name per line, class 0 first")
    if len(names) >= IGNORE_INDEX:
        raise ValueError(f"{path}: at most 254 classes (255 is the ignore index)")
    tr_x, tr_m, tr_ids = _read_split(folder, "train", len(names))
    te_x, te_m, _ = _read_split(folder, "test", len(names))
    name = os.path.basename(os.path.normpath(folder))
    return _checked(Dataset(name, tr_x, tr_m, tr_ids, te_x, te_m, names), folder)


# name -> (argument: "path" | "name" | None, loader(argument, data config) -> Dataset)
SOURCES = {
    "tfds": ("name", lambda a, c: load_tfds(a, c["data_dir"], download=c["download"] or "auto")),
    "cifar10_jpeg": ("path", lambda a, c: load_cifar10_jpeg(a, c["cache_dir"] or CACHE_DIR)),
    "npz": ("path", lambda a, c: load_npz(a)),
    "seg_npz": ("path", lambda a, c: load_npz(a, "masks")),  # label maps as *_masks first
    "fashion_mnist": ("path", lambda a, c: load_fashion_mnist(a)),
    "seg_folder": ("path", lambda a, c: load_seg_folder(a)),
    "digits": (None, lambda a, c: load_digits()),
}


def parse_source(source: str, name=None) -> tuple[str, str | None]:
    """(name, argument) of a source string; a ``"name"`` argument may come from ``name``.

    >>> parse_source("npz:/data/x.npz"), parse_source("tfds", "cifar10"), parse_source("digits")
    (('npz', '/data/x.npz'), ('tfds', 'cifar10'), ('digits', None))
    """
    kind, sep, arg = str(source).partition(":")
    if kind not in SOURCES:
        forms = [f"'{k}:{a.upper()}'" if a else f"'{k}'" for k, (a, _) in SOURCES.items()]
        raise ValueError(f"source: unknown data source {source!r}; expected {', '.join(forms)}")
    takes = SOURCES[kind][0]
    if takes is None:
        if sep:
            raise ValueError(f"source: {kind!r} takes no argument, got {source!r}")
        return kind, None
    arg = arg if sep or takes == "path" else name
    if not arg:
        if takes == "name":
            raise ValueError(
                f"name: source {kind!r} needs a data set name: set data.name (e.g. 'cifar10') "
                f"or use data.source='{kind}:NAME'"
            )
        raise ValueError(f"source: {kind!r} needs a path, e.g. '{kind}:/data/file'")
    return kind, str(arg)


@functools.lru_cache(maxsize=8)
def _load(kind, arg, _stamp, options):
    ds = SOURCES[kind][1](arg, dict(options))
    for a in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        a.setflags(write=False)
    ds.train_ids = tuple(ds.train_ids)
    return ds


def load_source(config) -> Dataset:
    """The :class:`Dataset` of ``config.source``, loaded once per process (read-only arrays;
    a file rewritten since is loaded again). Pass it as ``build(..., raw=...)`` to build
    several pipelines (e.g. one per seed) from one load."""
    kind, arg = parse_source(config.source, config.get("name"))
    stamp = None
    if SOURCES[kind][0] == "path":
        arg = os.path.abspath(os.path.expanduser(arg))
        if os.path.isfile(arg):
            stamp = (os.stat(arg).st_mtime_ns, os.stat(arg).st_size)
    options = tuple((k, config.get(k)) for k in ("data_dir", "cache_dir", "download"))
    return _load(kind, arg, stamp, options)
