"""A grid's report: rows (mean ± sd over seeds), the markdown table, its JSON twin, plots and
the picture grid, from ``ROOT/r{ratio}/{loss}/seed{seed}`` or ``.../seeds_0_1/seed_{seed}``
(ROOT may be a bucket: every file goes through ``etils.epath``); and one run's table and
``per_class.png`` (:func:`format_table`, :func:`plot_per_class`)."""

import contextlib
import datetime
import io
import itertools
import json
import os
import platform
import warnings

import numpy as np
from etils import epath

from cce_jax.training import checkpoints as ckpt
from cce_jax.training.config import RUN_CONTROL_KEYS, flatten
from cce_jax.training.report import mean_sd
from experiments.configs.common import ALL_LOSSES

GRID_IMAGES, IGNORE = 6, 255  # test images in the picture grid; the label that does not count
METRICS = tuple(zip(
    ("top1_error", "balanced_accuracy", "many", "medium", "few", "macro_f1"),
    ("top-1 error %", "balanced acc %", "many %", "medium %", "few %", "macro-F1 %"),
))  # fmt: skip
SEG_METRICS = tuple(zip(
    ("miou", "pixel_accuracy", "balanced_accuracy", "fw_iou", "many", "medium", "few"),
    ("mIoU %", "pixel acc %", "mean class acc %", "fwIoU %", "many mIoU %", "medium mIoU %",
     "few mIoU %"),
))  # fmt: skip


def read_json(path):
    """The JSON data of ``path``; None when unreadable."""
    try:
        return json.loads(epath.Path(path).read_text())
    except (OSError, ValueError):
        return None


def seed_dirs(root, loss, ratio, seed) -> list[tuple[str, str | None]]:
    """Where a model of (loss, ratio, seed) may live: (model folder, program folder or None)."""
    base = epath.Path(root) / f"r{float(ratio):g}" / loss
    out = [(os.fspath(base / f"seed{seed}"), None)]
    for d in sorted(base.glob("seeds_*")) if base.exists() else ():
        if str(int(seed)) in d.name.split("_")[1:]:
            out.append((os.fspath(d / f"seed_{seed}"), os.fspath(d)))
    return out


def seed_status(root, loss, ratio, seed) -> tuple[str, str | None, dict | None]:
    """("done", folder, summary) | ("failed", folder, failure) | ("todo", None, None)."""
    failed = None
    for d, program in seed_dirs(root, loss, ratio, seed):
        summary = read_json(f"{d}/summary.json")
        if summary is not None:
            return "done", d, summary
        for folder in filter(None, (d, program)):
            failure = read_json(f"{folder}/failure.json")
            if failure is not None and failed is None:
                failed = ("failed", folder, failure)
    return failed or ("todo", None, None)


def grid_on_disk(root, losses=(), ratios=(), seeds=()) -> tuple[list, list, list]:
    """The losses, ratios and seeds given, then those of every finished or failed run under
    ``root``."""
    root, found = epath.Path(root), set()
    paths = [*root.glob("r*/*/seed*/*.json"), *root.glob("r*/*/seeds_*/seed_*/summary.json")]
    for path in paths if root.exists() else ():
        ratio, loss, *_, name, file = path.relative_to(root).parts
        seed = name.removeprefix("seed_").removeprefix("seed")
        if file in ("summary.json", "failure.json") and seed.isdigit() and loss in ALL_LOSSES:
            with contextlib.suppress(ValueError):
                found.add((loss, float(ratio[1:]), int(seed)))
    on_disk = [x for x in ALL_LOSSES if any(f[0] == x for f in found)]
    losses = list(dict.fromkeys([*losses, *on_disk]))
    ratios = list(dict.fromkeys([*ratios, *sorted({f[1] for f in found})]))
    return losses, ratios, sorted({*seeds, *(f[2] for f in found)})


def failure_reason(f: dict) -> str:
    where = ", ".join(f"{k} {f[k]}" for k in ("epoch", "step") if f.get(k) is not None)
    return str(f.get("reason", "failed")) + (f" ({where})" if where else "")


def _nanmean(rows):
    """Mean over seeds per class; None (no test example) stays NaN (null in JSON)."""
    arr = np.array([[np.nan if a is None else a for a in r] for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        return np.nanmean(arr, 0).tolist()


def _row_metrics(s: dict) -> dict:
    pct = lambda key: None if s.get(key) is None else 100.0 * s[key]  # noqa: E731
    top1 = s.get("test_top1")
    out = {"top1_error": None if top1 is None else 100.0 * (1.0 - top1)}
    out |= {k: pct(f"test_{k}") for k in ("balanced_accuracy", "many", "medium", "few", "macro_f1")}
    if s.get("task") == "segmentation":
        out |= dict(
            miou=pct("test_miou"), pixel_accuracy=pct("test_top1"), fw_iou=pct("test_fw_iou")
        )
    return out


def metrics_of(rows) -> tuple:
    return SEG_METRICS if any(r.get("task") == "segmentation" for r in rows) else METRICS


def posthoc_best(summaries: list[dict]) -> dict | None:
    """Post-hoc logit adjustment's tau of the best mean balanced accuracy over seeds (in %)."""
    rows = [s.get("posthoc_logit_adjustment") or [] for s in summaries]
    tables = [{float(r["tau"]): r.get("balanced_accuracy") for r in t if "tau" in r} for t in rows]
    if not (tables := [t for t in tables if t]):
        return None
    best = None
    for tau in sorted(set.intersection(*(set(t) for t in tables))):
        vals = [100.0 * t[tau] for t in tables if t[tau] is not None]
        mean, sd = mean_sd(vals)
        if mean is not None and (best is None or mean > best["mean"] + 1e-12):
            best = {"tau": tau, "mean": mean, "sd": sd, "per_seed": vals}
    if best is not None:
        best["tau0_mean"] = mean_sd([100.0 * t[0.0] for t in tables if t.get(0.0) is not None])[0]
        best["num_seeds"] = len(tables)
    return best


def collect(root, losses, ratios, seeds, *, extra_failures=None) -> list[dict]:
    """One row per (loss, ratio): the finished seeds' metrics and the failed seeds (also
    ``extra_failures[(loss, ratio, seed)] = (folder, reason)``, failures without failure.json)."""
    rows, extra_failures = [], extra_failures or {}
    for ratio, loss in itertools.product(ratios, losses):
        runs, dirs, failed = [], [], []
        for seed in seeds:
            status, folder, data = seed_status(root, loss, ratio, seed)
            if status == "done":
                runs.append((int(seed), data))
                dirs.append(folder)
            elif status == "failed" or (loss, float(ratio), int(seed)) in extra_failures:
                if status == "failed":
                    reason = failure_reason(data)
                else:
                    folder, reason = extra_failures[(loss, ratio, seed)]
                failed.append({"seed": int(seed), "workdir": folder, "reason": reason})
        if runs or failed:
            rows.append(_row(loss, ratio, runs, dirs, failed))
    return rows


def _row(loss, ratio, runs, run_dirs, failed) -> dict:
    summaries = [s for _, s in runs]
    per_seed = [_row_metrics(s) for s in summaries]
    stats = {k: mean_sd([m.get(k) for m in per_seed]) for k in (per_seed or [dict(METRICS)])[0]}
    first = summaries[0] if summaries else {}
    seg = first.get("task") == "segmentation"
    keys = ("class_counts", "num_test", "num_test_pixels", "class_names", "config", "versions")
    acc = _nanmean([s["per_class_accuracy"] for s in summaries]) if runs else None
    n_train = (first["num_train"] if seg else int(np.sum(first["class_counts"]))) if runs else None
    return {
        **{k: first.get(k) for k in keys}, "loss": loss, "ratio": float(ratio),
        "seeds": [seed for seed, _ in runs], "run_dirs": run_dirs, "failed": failed,
        "stats": {k: {"mean": v[0], "sd": v[1]} for k, v in stats.items()},
        "posthoc": posthoc_best(summaries), "per_seed": per_seed,
        "task": first.get("task", "classification"), "per_class_accuracy": acc,
        "per_class_iou": _nanmean([s["per_class_iou"] for s in summaries]) if seg else None,
        "wall_time_s": float(sum(s.get("wall_time_s") or 0.0 for s in summaries)),
        "num_train": n_train,
        "device": {k: first[k] for k in ("device_count", "device_kind", "platform") if k in first},
    }  # fmt: skip


def _fmt(stat):
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.2f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.2f}")


def table_lines(rows: list[dict]) -> list[str]:
    """The markdown table: one line per (loss, ratio)."""
    metrics = metrics_of(rows)
    bal = "mean class acc" if metrics is SEG_METRICS else "bal acc"
    header = " | ".join(label for _, label in metrics)
    lines = [f"| loss | ratio | n | failed | {header} | post-hoc LA {bal} % (best τ) | min/run |"]
    lines.append("|" + "---|" * (len(metrics) + 6))
    for r in rows:
        cells = " | ".join(_fmt(r["stats"].get(k, {"mean": None})) for k, _ in metrics)
        n, p = len(r["seeds"]), r.get("posthoc")
        posthoc = _fmt(p) + f" (τ={p['tau']:g})" if p else "n/a"
        per_run = f"{r['wall_time_s'] / 60 / n:.1f}" if n else "n/a"
        lines.append(
            f"| {r['loss']} | {r['ratio']:g} | {n} | {len(r['failed'])} | {cells} | "
            f"{posthoc} | {per_run} |"
        )
    return lines


def config_lines(rows: list[dict]) -> list[str]:
    """What the runs were: the data source and training counts as their summaries state them,
    the test split, the loss variants, then every config key of the first run."""
    done = [r for r in rows if r["config"]]
    if not done:
        return []
    cfg, unit = done[0]["config"], "pixels" if done[0]["task"] == "segmentation" else "images"
    counts = "; ".join(
        f"ratio {r['ratio']:g}: {r['num_train']} training images, {unit} per class "
        f"{r['class_counts']}"
        for r in {r["ratio"]: r for r in done}.values()
    )
    split = "the full test split"
    if max_test := cfg["data"].get("max_test"):
        split = f"data.max_test={max_test}: NOT {split}"
    variants = {r["loss"]: r["config"]["loss"] for r in done}
    losses = "; ".join(
        f"{v} = `{c['name']}` {dict(c['hparams'] or {})}" for v, c in variants.items()
    )
    flat = flatten(cfg)
    keys = ", ".join(f"{k}={flat[k]!r}" for k in sorted(flat) if k not in RUN_CONTROL_KEYS)
    return [
        f"- Data: `{cfg['data']['source']}`; {counts}.",
        f"- Evaluation: {done[0]['num_test']} test images ({split}).",
        f"- Losses: {losses}.",
        f"- Config of the first run ({done[0]['loss']}; the others differ in the loss, "
        f"data.ratio and the seed): `{keys}`.",
    ]


def write_report(name, rows, *, command, grid, out_dir, label=None, note=None) -> str:
    """Writes ``out_dir/name.md``, its strict-JSON twin and the plots; returns the .md path."""
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    base = os.fspath(epath.Path(out_dir) / name)
    lines = _header_lines(name, rows, command, grid, label, note) + table_lines(rows)
    seg = metrics_of(rows) is SEG_METRICS
    groups = (
        "Many/medium/few: the mean IoU of the most, middle and least frequent thirds of the "
        "classes by training pixels; fwIoU weights the IoUs by test pixels"
        if seg
        else "Many/medium/few: classes with >100, 20-100, <20 training images"
    )
    lines.append(
        f"\nmean ± sd over seeds. {groups}. Post-hoc LA: balanced accuracy of `logits - τ "
        "log(prior)` from the same models at the best τ of (0, 0.5, 1, 1.5, 2), picked on the "
        "test split (an oracle choice, optimistic).\n"
    )
    plots = _plots(base, rows) + (_picture_grid(base, rows) if seg else [])
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    ckpt.write(epath.Path(base + ".md"), "\n".join(lines) + "\n")
    twin = {"suite": name, "command": command, "grid": grid, "rows": rows}
    ckpt.write(epath.Path(base + ".json"), ckpt.dumps(twin, indent=1))
    return base + ".md"


def _header_lines(name, rows, command, grid, label, note) -> list[str]:
    """The title, the command, the config, seeds, hardware and grid lines, failed runs."""
    done = [r for r in rows if r["config"]]
    varies = "the crops" if metrics_of(rows) is SEG_METRICS else "the subset"
    lines = [
        f"# {name}: {label or grid['config']}",
        "",
        f"- Command: `{command}`",
        f"- Config file: `{grid['config']}`, each run with its loss variant as "
        "`FILE:loss=VARIANT` and `data.ratio`, `seed`, `data.subset_seed` set.",
        *config_lines(rows),
        f"- Seeds: {grid['seeds']} (each seed sets the init, the data order and {varies}).",
    ]
    if done:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines += [
            f"- Hardware: devices {done[0]['device']}; versions {done[0]['versions']}; report "
            f"written on {platform.machine()} with {os.cpu_count()} CPU cores.",
            f"- Sum of the finished runs' wall times: "
            f"{sum(r['wall_time_s'] for r in rows) / 60:.1f} min. Generated {now}.",
        ]
    failed = [(r, f) for r in rows for f in r["failed"]]
    total = len(grid["losses"]) * len(grid["ratios"]) * len(grid["seeds"])
    lines.append(
        f"- Grid: losses {list(grid['losses'])}, ratios {list(grid['ratios'])}; runs finished: "
        f"{sum(len(r['seeds']) for r in rows)} of {total}; failed: {len(failed)}."
    )
    lines += ([f"- {note}"] if note else []) + [""]
    if failed:
        lines += ["**Failed runs** (not in the means):", ""]
        for r, f in failed:
            where = f"ratio {r['ratio']:g} seed {f['seed']}: {f['reason']} (`{f['workdir']}`)"
            lines.append(f"- {r['loss']} {where}")
        lines.append("")
    return lines


def _axes(**kw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**({"figsize": (6, 4)} | kw))


def _save(fig, ax, path: str, dpi=90, legend=True, **labels) -> str:
    import matplotlib.pyplot as plt

    ax.set(**labels)
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    ckpt.write(epath.Path(path), buf.getvalue())  # whole or not at all; one-line StorageError
    return path


def _plots(base: str, rows: list[dict]) -> list[str]:
    """``base_per_class_r{ratio}.png`` per ratio and, for 2+ ratios, ``base_vs_ratio.png``."""
    rows = [r for r in rows if r["config"]]
    ratios, seg, paths = sorted({r["ratio"] for r in rows}), metrics_of(rows) is SEG_METRICS, []
    what, unit = ("IoU", "pixels") if seg else ("accuracy", "images")
    for ratio in ratios:
        fig, ax = _axes()
        for r in (r for r in rows if r["ratio"] == ratio):
            counts = np.asarray(r["class_counts"])
            order = np.argsort(-counts, kind="stable")
            acc = 100 * np.asarray(r["per_class_iou" if seg else "per_class_accuracy"], float)
            label = f"{r['loss']} (n={len(r['seeds'])})"
            ax.plot(counts[order], acc[order], marker="o", label=label)
        title = f"per-class {what}, ratio {ratio:g} (mean over seeds)"
        labels = dict(xlabel=f"training {unit} of the class", ylabel=f"test {what} of the class %")
        path = f"{base}_per_class_r{ratio:g}.png"
        paths.append(_save(fig, ax, path, title=title, xscale="log", **labels))
    if len(ratios) >= 2:
        fig, ax = _axes()
        for loss in dict.fromkeys(r["loss"] for r in rows):
            pts = [(r["ratio"], r["stats"]["balanced_accuracy"]) for r in rows if r["loss"] == loss]
            x, m = zip(*sorted(p for p in pts if p[1]["mean"] is not None)) if pts else ((), ())
            y, sd = [v["mean"] for v in m], [v["sd"] or 0.0 for v in m]
            ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, label=loss)
        labels = dict(xlabel="imbalance ratio n_max / n_min", ylabel="balanced test accuracy %")
        paths.append(_save(fig, ax, f"{base}_vs_ratio.png", xscale="log", **labels))
    return paths


def read_predictions(workdir) -> dict:
    """The arrays of a segmentation run's ``predictions.npz`` in ``workdir`` (a folder or a
    bucket URL): ``images``, ``labels`` (the true maps) and ``predictions``."""
    with np.load(io.BytesIO((epath.Path(workdir) / "predictions.npz").read_bytes())) as z:
        return {k: z[k] for k in z.files}


def plot_per_class(summary: dict, path) -> str:
    """One run's ``per_class.png``: the per-class test accuracy (segmentation: IoU) against
    the training count, the headline numbers in the title."""
    seg = summary.get("task") == "segmentation"
    counts = np.asarray(summary["class_counts"])
    acc = 100 * np.asarray(summary[f"per_class_{'iou' if seg else 'accuracy'}"], float)
    names = summary.get("class_names") or [str(i) for i in range(len(counts))]
    fig, ax = _axes(figsize=(max(5.0, 0.45 * len(counts)), 3.2))
    ax.bar(np.arange(len(counts)), acc, color="tab:blue")
    ax.set_xticks(range(len(counts)), [f"{n}\n{c}" for n, c in zip(names, counts)], fontsize=7)
    first = ("mIoU", "miou") if seg else ("top-1", "top1")
    second = ("pixel acc", "top1") if seg else ("balanced", "balanced_accuracy")
    head = ", ".join(f"{h} {100 * (summary[f'test_{k}'] or 0):.1f}%" for h, k in (first, second))
    ax.set_title(f"{summary['config']['loss']['name']}: {head}", fontsize=9)
    what, unit = ("IoU", "pixels") if seg else ("accuracy", "images")
    labels = dict(xlabel=f"class / training {unit}", ylabel=f"test {what} %", ylim=(0, 100))
    return _save(fig, ax, path, dpi=100, legend=False, **labels)


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
    head = dict(top1="top-1", balanced_accuracy="balanced", macro_f1="macro-F1")
    if seg:
        head = dict(
            miou="mIoU", top1="pixel acc", balanced_accuracy="mean class acc", fw_iou="fwIoU"
        )
    groups = "/".join(_pct(s[f"test_{g}"]) for g in ("many", "medium", "few"))
    lines.append("  ".join(f"{h} {_pct(s[f'test_{k}'])}" for k, h in head.items()))
    lines[-1] += f"  many/medium/few{' mIoU' * seg} {groups}"
    if not seg and (posthoc := s.get("posthoc_logit_adjustment")):
        best = max(posthoc, key=lambda r: r["balanced_accuracy"] or 0)
        lines.append(
            "post-hoc logit adjustment, balanced acc by tau: "
            + "  ".join(f"{r['tau']:g}: {_pct(r['balanced_accuracy']).strip()}" for r in posthoc)
            + f"  (best tau {best['tau']:g})"
        )
    return "\n".join(lines)


def label_palette(num_classes: int) -> np.ndarray:
    """uint8 [256, 3]: a colour per label (matplotlib's tab10, then tab20's light ones, then
    hues spaced by the golden ratio); 255 (ignore) is white, unused values black."""
    import colorsys

    from matplotlib import colormaps

    if not 1 <= int(num_classes) <= IGNORE:
        raise ValueError(f"num_classes must be in [1, 255], got {num_classes}")
    tab20 = colormaps["tab20"].colors
    hues = [colorsys.hsv_to_rgb((c * 0.618033988749895) % 1, 0.65, 0.9) for c in range(20, 255)]
    colours = np.round(255 * np.array([*tab20[0::2], *tab20[1::2], *hues]))
    pal = np.zeros((256, 3), np.uint8)
    pal[: int(num_classes)] = colours[: int(num_classes)]
    pal[IGNORE] = 255
    return pal


def picture_grid(images, masks, *predictions, num_classes: int, gap: int = 1) -> np.ndarray:
    """One row per example: the image (uint8 [N, H, W, 1 or 3]), its true label map
    ([N, H, W]), then each predicted label map ([N, H, W], white where the truth is ignore),
    in :func:`label_palette`'s colours, ``gap`` white pixels apart."""
    images, masks = np.asarray(images), np.asarray(masks)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 [N, H, W, 1 or 3], got {images.dtype} {images.shape}"
        )
    pal = label_palette(num_classes)
    columns = [np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images]
    for labels in (masks, *predictions):
        if np.shape(labels) != images.shape[:3]:
            raise ValueError(
                f"label maps {np.shape(labels)} must be [N, H, W] of images {images.shape}"
            )
        labels = np.where(masks == IGNORE, IGNORE, np.clip(labels, 0, IGNORE))
        columns.append(pal[labels.astype(np.int64)])
    (n, h, w), g = masks.shape, int(gap)
    out = np.full((n * (h + g) - g, len(columns) * (w + g) - g, 3), 255, np.uint8)
    for i, j in itertools.product(range(n), range(len(columns))):
        out[i * (h + g) : i * (h + g) + h, j * (w + g) : j * (w + g) + w] = columns[j][i]
    return out


def _picture_grid(base: str, rows: list[dict]) -> list[str]:
    """Input, truth and each loss's prediction (its first seed with a ``predictions.npz``)
    on the same test images, with a class legend: ``base_pictures.png``."""
    found = []  # (loss, the predictions of its first seed that has them)
    for r in rows:
        dirs = [d for d in r["run_dirs"] if epath.Path(f"{d}/predictions.npz").exists()]
        found += [(r["loss"], read_predictions(dirs[0]))] if dirs else []
    if not found:
        return []
    from matplotlib.patches import Patch

    names, arrays = zip(*found)
    k, n = len(rows[0]["class_counts"]), GRID_IMAGES
    preds = [a["predictions"][:n] for a in arrays]
    grid = picture_grid(arrays[0]["images"][:n], arrays[0]["labels"][:n], *preds, num_classes=k)
    columns = ["input", "truth", *names]
    fig, ax = _axes(figsize=(1.0 + 0.9 * len(columns), 1.2 + 0.9 * n), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    step = grid.shape[1] / len(columns)
    ax.set_xticks([step * (i + 0.5) for i in range(len(columns))], columns, rotation=45, fontsize=7)
    ax.set_yticks([])
    palette = label_palette(k)
    class_names = rows[0].get("class_names") or [str(i) for i in range(k)]
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in range(k)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignore"))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("test images: input, truth, each loss (seed of its first run)", fontsize=8)
    return [_save(fig, ax, f"{base}_pictures.png", dpi=None, legend=False)]
