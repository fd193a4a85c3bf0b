"""What a finished run leaves: summary.json, a per-class table and plot, and a segmentation
run's predicted label maps (predictions.npz)."""

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


def read_predictions(workdir) -> dict:
    """The arrays :func:`write_predictions` wrote in ``workdir`` (a folder or a bucket URL)."""
    with np.load(io.BytesIO((epath.Path(workdir) / "predictions.npz").read_bytes())) as z:
        return {k: z[k] for k in z.files}


def plot_per_class(summary: dict, path: epath.Path) -> None:
    """The per-class test accuracy (segmentation: IoU) against the training count, if
    matplotlib (optional for the trainer) is installed."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no backend, no global state
    except ImportError:
        return

    seg = summary.get("task") == "segmentation"
    counts = np.asarray(summary["class_counts"])
    acc = _nan(summary["per_class_iou" if seg else "per_class_accuracy"])
    names = summary.get("class_names") or [str(i) for i in range(len(counts))]
    fig = Figure(figsize=(max(5.0, 0.45 * len(counts)), 3.2), dpi=100)
    ax = fig.subplots()
    x = np.arange(len(counts))
    ax.bar(x, 100 * acc, color="tab:blue")
    ax.set_xticks(x, [f"{n}\n{c}" for n, c in zip(names, counts)], fontsize=7)
    ax.set_ylabel("test IoU %" if seg else "test accuracy %")
    ax.set_xlabel("class / training pixels" if seg else "class / training images")
    ax.set_ylim(0, 100)
    first = ("mIoU", "miou") if seg else ("top-1", "top1")
    second = ("pixel acc", "top1") if seg else ("balanced", "balanced_accuracy")
    head = ", ".join(f"{h} {100 * (summary[f'test_{k}'] or 0):.1f}%" for h, k in (first, second))
    ax.set_title(f"{summary.get('config', {}).get('loss', {}).get('name', '')}: {head}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    ckpt.write(path, buf.getvalue())


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


def _pct(x):
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def format_table(summary: dict) -> str:
    """Per-class accuracy against the training count, then the headline numbers
    (segmentation: per-class IoU and accuracy against the training pixels, then mIoU)."""
    s, seg = summary, summary.get("task") == "segmentation"
    names = [str(n) for n in s.get("class_names") or range(len(s["class_counts"]))]
    # Column title -> values, each right-aligned to its title's width.
    cols = {"train px" if seg else "train": s["class_counts"]}
    cols["test px" if seg else "test"] = s["test_class_counts"]
    if seg:
        cols["IoU %"] = map(_pct, s["per_class_iou"])
    cols["acc %"] = map(_pct, s["per_class_accuracy"])
    w = max(5, *map(len, names))
    lines = ["  ".join([f"{'class':<{w}}", *cols])]
    for n, *values in zip(names, *cols.values()):
        lines.append("  ".join([f"{n:<{w}}", *(f"{v:>{len(c)}}" for c, v in zip(cols, values))]))
    groups = f"{_pct(s['test_many'])}/{_pct(s['test_medium'])}/{_pct(s['test_few'])}"
    if seg:
        lines.append(
            f"mIoU {_pct(s['test_miou'])}  pixel acc {_pct(s['test_top1'])}  mean class acc "
            f"{_pct(s['test_balanced_accuracy'])}  fwIoU {_pct(s['test_fw_iou'])}  "
            f"many/medium/few mIoU {groups}"
        )
        return "\n".join(lines)
    lines.append(
        f"top-1 {_pct(s['test_top1'])}  balanced {_pct(s['test_balanced_accuracy'])}  "
        f"macro-F1 {_pct(s['test_macro_f1'])}  many/medium/few {groups}"
    )
    if posthoc := s.get("posthoc_logit_adjustment") or []:
        best = max(posthoc, key=lambda r: r["balanced_accuracy"] or 0)
        lines.append(
            "post-hoc logit adjustment, balanced acc by tau: "
            + "  ".join(f"{r['tau']:g}: {_pct(r['balanced_accuracy']).strip()}" for r in posthoc)
            + f"  (best tau {best['tau']:g})"
        )
    return "\n".join(lines)


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


def _nan(values) -> np.ndarray:
    return np.asarray([np.nan if a is None else a for a in values], float)


def aggregate(summaries: list[dict], seeds) -> dict:
    """Mean and sd (ddof 1) over seeds of the scalar metrics, plus the per-seed values."""
    out = {"seeds": [int(s) for s in seeds], "num_seeds": len(summaries)}
    seg = summaries[0].get("task") == "segmentation"
    for key in SCALAR_METRICS + SEGMENTATION_METRICS * seg + ("train_time_s_total",):
        values = [s.get(key) for s in summaries]
        mean, sd = mean_sd(values)
        out[key] = {"mean": mean, "sd": sd, "per_seed": values}
    for key in ("per_class_accuracy", "per_class_iou")[: 1 + seg]:
        out[f"{key}_mean"] = np.mean([_nan(s[key]) for s in summaries], 0).tolist()
    if seg:
        out["task"] = "segmentation"
    out.update({k: summaries[0][k] for k in ("class_counts", "wall_time_s")})
    return out
