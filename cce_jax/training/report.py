"""What a finished run leaves: summary.json (with seeds, their aggregate), the printed epoch
line and a segmentation run's predicted label maps (predictions.npz)."""

import io
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath

from cce_jax import parallel
from cce_jax.training import checkpoints as ckpt

_KEYS = ("top1", "balanced_accuracy", "many", "medium", "few", "macro_f1")
SCALAR_METRICS = tuple(f"test_{k}" for k in _KEYS) + ("final_train_loss",)
# Segmentation runs add these (test_top1 is then the pixel accuracy, test_balanced_accuracy
# the mean class accuracy, test_many/medium/few the mIoU of the pixel-frequency groups).
SEGMENTATION_METRICS = ("test_miou", "test_fw_iou")
NUM_PREDICTIONS = 16  # the test images whose label maps a segmentation run stores


def run_summary(ev: dict, rows: list[dict], info, config: dict, seeds=None, **extra) -> dict:
    """One model's ``summary.json`` from its final test metrics ``ev``, its metrics ``rows``,
    the data ``info``, its ``config`` and ``extra``; ``trained_with_seeds`` when it is one of
    several ``seeds``; a segmentation run adds ``task`` and its pixel metrics."""
    summary = {f"test_{k}": ev.get(k) for k in _KEYS}
    for k in ("per_class_accuracy", "posthoc_logit_adjustment", "test_class_counts"):
        summary[k] = ev.get(k)
    last = rows[-1] if rows else {}
    summary.update(
        confusion_matrix=ev["confusion_matrix"],
        class_counts=np.asarray(info.class_counts).tolist(),
        class_names=list(getattr(info, "class_names", []) or []),
        num_train=int(info.num_train),
        num_test=int(ev["num_examples"]),
        epochs=int(config["num_epochs"]),
        final_train_loss=last.get("train_loss"),
        final_train_accuracy=last.get("train_accuracy"),
        train_time_s_total=float(sum(r.get("epoch_time_s", 0.0) for r in rows)),
        device_count=jax.device_count(),
        process_count=jax.process_count(),
        platform=jax.devices()[0].platform,
        device_kind=jax.devices()[0].device_kind,
        versions={
            **{m.__name__: m.__version__ for m in (jax, flax, optax, np)},
            "orbax_checkpoint": getattr(ocp, "__version__", None),
            "python": sys.version.split()[0],
        },
        config=config,
        **extra,
    )
    if seeds:
        summary["trained_with_seeds"] = list(seeds)
    if getattr(info, "task", "classification") == "segmentation":
        pixel = ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou")
        summary.update({f"test_{k}": ev[k] for k in pixel}, task="segmentation")
        summary.update(num_test=int(info.num_test), num_test_pixels=int(ev["num_pixels"]))
        summary.update(per_class_iou=ev["per_class_iou"], frequency_groups=ev["groups"])
    return summary


def write_predictions(workdir: epath.Path, model, data, variables, n=NUM_PREDICTIONS) -> None:
    """``predictions.npz``: a segmentation ``model``'s label maps for the first ``n`` test
    images of ``data``, with the images and the true maps."""
    images, truth = (a[:n] for a in data.test_split())
    variables = jax.tree.map(parallel.to_host, variables)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(data.normalize(images))
    )
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=np.asarray(images),
        labels=np.asarray(truth, np.uint8),
        predictions=np.asarray(jnp.argmax(logits, -1), np.uint8),
    )
    ckpt.write(workdir / "predictions.npz", buf.getvalue())


def epoch_line(row: dict, ev: dict | None, num_epochs) -> str:
    """An epoch's printed line: train loss, accuracy, lr, speed, and the test metrics."""
    msg = (
        f"epoch {row['epoch']}/{num_epochs}: loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f} lr {row['lr']:.4g} {row['images_per_s']:.0f} img/s"
    )
    if ev is not None and "miou" in ev:
        msg += f" | test mIoU {ev['miou'] or 0:.4f} pixel acc {ev['top1'] or 0:.4f}"
    elif ev is not None:
        msg += f" | test top1 {ev['top1']:.4f} bal {ev['balanced_accuracy']:.4f}"
    return msg


def mean_sd(values) -> tuple[float | None, float | None]:
    """(mean, sd with ddof 1) of the finite values, skipping None and NaN; the mean is None
    without a value, the sd None with fewer than two.

    >>> mean_sd([1.0, None, 3.0, float("nan")])
    (2.0, 1.4142135623730951)
    """
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def aggregate(summaries: list[dict], seeds) -> dict:
    """Mean and sd (ddof 1) over seeds of the scalar metrics, plus the per-seed values."""
    out = {"seeds": [int(s) for s in seeds], "num_seeds": len(summaries)}
    seg = summaries[0].get("task") == "segmentation"
    for key in SCALAR_METRICS + SEGMENTATION_METRICS * seg + ("train_time_s_total",):
        values = [s.get(key) for s in summaries]
        mean, sd = mean_sd(values)
        out[key] = {"mean": mean, "sd": sd, "per_seed": values}
    for key in ("per_class_accuracy", "per_class_iou")[: 1 + seg]:
        out[f"{key}_mean"] = np.mean([np.asarray(s[key], float) for s in summaries], 0).tolist()
    if seg:
        out["task"] = "segmentation"
    out.update({k: summaries[0][k] for k in ("class_counts", "wall_time_s")})
    return out
