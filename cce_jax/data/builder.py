"""The ``data`` config, the pipeline choice and :func:`build`."""

from __future__ import annotations

import importlib.util

from cce_jax import _extras
from cce_jax.data import sources
from cce_jax.data.split import make_split

__all__ = ["PIPELINES", "build", "choose_pipeline", "default_config", "tf_available"]

PIPELINES = ("auto", "device", "tf")


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
    # "tfds" | "tfds:NAME" | "cifar10_jpeg:PATH" | "npz:PATH" | "fashion_mnist:DIR" | "digits"
    # | "seg_folder:DIR" | "seg_npz:PATH" (segmentation sets)
    cfg.source = "tfds"
    cfg.name = placeholder(str)  # the tfds name, used only by source == "tfds"
    cfg.data_dir = placeholder(str)
    cfg.download = "auto"  # tfds only: "auto" | "always" | "never"
    cfg.cache_dir = "~/.cache/cce_jax"
    cfg.pipeline = "auto"  # "auto" | "device" | "tf"
    cfg.profile = "exp"  # "exp" | "step" | "none"
    cfg.ratio = 100.0
    cfg.n_max = placeholder(int)
    cfg.counts = placeholder(tuple)
    cfg.subset_seed = 0
    # None = automatic: True for images of at least 32x32 pixels (split.MIN_AUGMENT_SIZE).
    cfg.augment = placeholder(bool)
    cfg.max_test = placeholder(int)
    return cfg


def tf_available() -> bool:
    """Whether tensorflow can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def choose_pipeline(pipeline: str = "auto", *, tf_ok: bool | None = None) -> str:
    """The pipeline ``"auto"`` resolves to (``"device"`` and ``"tf"`` are returned as given).

    Rule (measured, see docs/data.md): ``"device"`` everywhere — on accelerators the data then
    never crosses the host, and on CPU it measured at least as fast as tf.data in the trainer —
    and always when tensorflow is not importable. ``"tf"`` must be asked for explicitly.

    Args:
      pipeline: ``"auto"``, ``"device"`` or ``"tf"``.
      tf_ok: whether tensorflow is importable (default: :func:`tf_available`).

    Returns:
      ``"device"`` or ``"tf"``.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline: expected one of {PIPELINES}, got {pipeline!r}")
    if pipeline != "auto":
        if pipeline == "tf" and not (tf_available() if tf_ok is None else tf_ok):
            raise ValueError(
                "pipeline: 'tf' needs tensorflow, which is not importable here; use "
                "data.pipeline='device' (or 'auto'), or install the [tfds] extra"
            )
        return pipeline
    return "device"  # the measured rule is the same on every platform (docs/data.md)


def build(
    config,
    *,
    seed: int,
    global_batch_size: int,
    eval_batch_size: int,
    mesh=None,
    raw: sources.RawDataset | None = None,
):
    """Loads the data set of `config` and builds its imbalanced train and test pipelines.

    Args:
      config: the fields of :func:`default_config`.
      seed: drives the per-epoch shuffle and augmentation (``config.subset_seed`` drives
        which training examples survive).
      global_batch_size: train batch size over all processes / devices.
      eval_batch_size: eval batch size over all processes / devices.
      mesh: device pipeline only: a mesh with a ``"data"`` axis (default: all devices).
      raw: a :class:`RawDataset` already loaded (:func:`load_source`), e.g. shared by the
        pipelines of several seeds; default ``load_source(config)``.

    Returns:
      :class:`~cce_jax.data.tf_pipeline.TFData` (``pipeline="tf"``) or
      :class:`~cce_jax.data.device_pipeline.DeviceData` (``"device"``), both with ``info``,
      ``steps_per_epoch``, ``train_epoch(epoch)``, ``eval_batches()``,
      ``num_eval_batches()`` and ``pipeline``.
    """
    pipeline = choose_pipeline(str(config.get("pipeline", "auto")))
    if raw is None:
        raw = sources.load_source(config)
    split = make_split(config, raw)
    if pipeline == "tf" and split.info.task != "classification":
        raise ValueError(
            f"pipeline: 'tf' serves classification sets only; {split.info.name!r} is a "
            f"{split.info.task} set: use data.pipeline='device' (or 'auto')"
        )
    if pipeline == "tf":
        from cce_jax.data.tf_pipeline import TFData

        return TFData(
            split,
            seed=seed,
            global_batch_size=int(global_batch_size),
            eval_batch_size=int(eval_batch_size),
        )
    from cce_jax.data.device_pipeline import DeviceData

    return DeviceData(
        split,
        seed=seed,
        global_batch_size=int(global_batch_size),
        eval_batch_size=int(eval_batch_size),
        mesh=mesh,
    )
