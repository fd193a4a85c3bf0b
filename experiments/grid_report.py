"""The report of a grid: rows from the run folders' summaries (mean ± sd over seeds), the
markdown table and protocol, its strict-JSON twin and the plots (per-class accuracy or IoU
against class size, balanced accuracy against the ratio, the segmentation picture grid).

One run's files (``summary.json``, ``per_class.png``, ``predictions.npz``) are
:mod:`cce_jax.training.report`'s; the JSON twin is written as strict JSON by
:func:`cce_jax.training.workdir.write_json`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import warnings

import numpy as np

from cce_jax.training import workdir as wd
from cce_jax.training.config import RUN_CONTROL_KEYS, config_diff, flatten
from cce_jax.training.report import mean_sd
from experiments.run_folders import ReproduceError, failure_reason, mismatch_message, seed_status
from experiments.suites import METRICS, RESULTS, SEG_METRICS

# Test images in the segmentation picture grid.
GRID_IMAGES = 6


# --------------------------------------------------------------------------- rows


def _nanmean(rows):
    """Mean over seeds per class; None (no test example) stays NaN, later null in JSON."""
    arr = np.array([[np.nan if a is None else a for a in r] for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        return np.nanmean(arr, 0).tolist()


def _row_metrics(summary: dict) -> dict:
    def pct(x):
        return None if x is None else 100.0 * x

    top1 = summary.get("test_top1")
    out = {
        "top1_error": None if top1 is None else pct(1.0 - top1),
        "balanced_accuracy": pct(summary.get("test_balanced_accuracy")),
        "many": pct(summary.get("test_many")),
        "medium": pct(summary.get("test_medium")),
        "few": pct(summary.get("test_few")),
        "macro_f1": pct(summary.get("test_macro_f1")),
    }
    if summary.get("task") == "segmentation":
        out.update(
            miou=pct(summary.get("test_miou")),
            pixel_accuracy=pct(top1),
            fw_iou=pct(summary.get("test_fw_iou")),
        )
    return out


def metrics_of(rows) -> tuple:
    """The table's columns: :data:`SEG_METRICS` for segmentation rows, else :data:`METRICS`."""
    return SEG_METRICS if any(r.get("task") == "segmentation" for r in rows) else METRICS


def posthoc_best(summaries: list[dict]) -> dict | None:
    """Post-hoc logit adjustment: the tau with the best mean balanced accuracy over seeds.

    Args:
      summaries: per-seed summaries; those without ``posthoc_logit_adjustment`` are skipped.

    Returns:
      ``{"tau", "mean", "sd", "per_seed", "tau0_mean", "num_seeds"}`` (balanced accuracy in %),
      or None when no summary has the list.
    """
    tables = []
    for s in summaries:
        rows = s.get("posthoc_logit_adjustment") or []
        table = {float(r["tau"]): r.get("balanced_accuracy") for r in rows if "tau" in r}
        if table:
            tables.append(table)
    if not tables:
        return None
    taus = sorted(set.intersection(*(set(t) for t in tables)))
    best = None
    for tau in taus:
        vals = [100.0 * t[tau] for t in tables if t[tau] is not None]
        mean, sd = mean_sd(vals)
        if mean is not None and (best is None or mean > best["mean"] + 1e-12):
            best = {"tau": tau, "mean": mean, "sd": sd, "per_seed": vals}
    if best is None:
        return None
    best["tau0_mean"] = mean_sd([100.0 * t[0.0] for t in tables if t.get(0.0) is not None])[0]
    best["num_seeds"] = len(tables)
    return best


def collect(root: str, losses, ratios, seeds, *, expected=None, extra_failures=None) -> list[dict]:
    """One entry per (loss, ratio) with the finished seeds' metrics and the failed seeds.

    Args:
      root: the suite's run folder (``WORKDIR/SUITE``).
      losses, ratios, seeds: the grid.
      expected: optional ``f(loss, ratio, seed) -> config dict or None``; a finished run whose
        stored config differs (beyond run control) raises :class:`ReproduceError` (None: not
        checked).
      extra_failures: ``{(loss, ratio, seed): (folder, reason)}`` of failures of this call
        that left no ``failure.json`` (crashes, bad flags).

    Returns:
      Rows with ``stats`` (mean/sd of each metric in %), ``posthoc``, ``failed`` and more.
    """
    extra_failures = extra_failures or {}
    rows = []
    for ratio in ratios:
        for loss in losses:
            found = _seed_results(root, loss, ratio, seeds, expected, extra_failures)
            if found[0] or found[3]:
                rows.append(_row(loss, ratio, *found))
    return rows


def _seed_results(root, loss, ratio, seeds, expected, extra_failures):
    """(summaries, their seeds, their folders, failures) of the seeds of (loss, ratio)."""
    runs, run_seeds, run_dirs, failed = [], [], [], []
    for seed in seeds:
        status, folder, data = seed_status(root, loss, ratio, seed)
        if status == "done":
            want = expected(loss, ratio, seed) if expected is not None else None
            if want is not None:
                diff = config_diff(data.get("config", {}), want, ignore=("seeds",))
                if diff:
                    raise ReproduceError(mismatch_message(folder, diff))
            runs.append(data)
            run_seeds.append(int(seed))
            run_dirs.append(folder)
        elif status == "failed":
            failed.append({"seed": int(seed), "workdir": folder, "reason": failure_reason(data)})
        elif (loss, float(ratio), int(seed)) in extra_failures:
            folder, reason = extra_failures[(loss, float(ratio), int(seed))]
            failed.append({"seed": int(seed), "workdir": folder, "reason": reason})
    return runs, run_seeds, run_dirs, failed


def _row(loss, ratio, runs, run_seeds, run_dirs, failed) -> dict:
    per_seed = [_row_metrics(s) for s in runs]
    names = per_seed[0] if per_seed else dict(METRICS)
    stats = {name: mean_sd([m.get(name) for m in per_seed]) for name in names}
    first = runs[0] if runs else {}
    seg = first.get("task") == "segmentation"
    return {
        "loss": loss,
        "ratio": float(ratio),
        "seeds": run_seeds,
        "run_dirs": run_dirs,
        "failed": failed,
        "stats": {k: {"mean": v[0], "sd": v[1]} for k, v in stats.items()},
        "posthoc": posthoc_best(runs),
        "per_seed": per_seed,
        "class_counts": first.get("class_counts"),
        "test_class_counts": first.get("test_class_counts"),
        "num_test": first.get("num_test"),
        "per_class_accuracy": (_nanmean([s["per_class_accuracy"] for s in runs]) if runs else None),
        "task": first.get("task", "classification"),
        "per_class_iou": _nanmean([s["per_class_iou"] for s in runs]) if seg else None,
        "num_test_pixels": first.get("num_test_pixels"),
        "class_names": first.get("class_names"),
        "wall_time_s": float(np.sum([s.get("wall_time_s") or 0.0 for s in runs])),
        "num_train": (
            (first["num_train"] if seg else int(np.sum(first["class_counts"]))) if runs else None
        ),
        "config": first.get("config"),
        "versions": first.get("versions"),
        "device": {
            k: first.get(k)
            for k in ("device_count", "process_count", "device_kind", "platform")
            if k in first
        },
    }


# --------------------------------------------------------------------------- the table


def _fmt(stat):
    if stat["mean"] is None:
        return "n/a"
    if stat["sd"] is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['sd']:.2f}"


def _fmt_posthoc(p):
    if not p:
        return "n/a"
    return _fmt(p) + f" (τ={p['tau']:g})"


def table_lines(rows: list[dict]) -> list[str]:
    """The markdown table: one line per (loss, ratio)."""
    metrics = metrics_of(rows)
    bal = "mean class acc" if metrics is SEG_METRICS else "bal acc"
    header = (
        "| loss | ratio | n | failed | "
        + " | ".join(label for _, label in metrics)
        + f" | post-hoc LA {bal} % (best τ) | min/run |"
    )
    lines = [header, "|" + "---|" * (len(metrics) + 6)]
    for r in rows:
        cells = [_fmt(r["stats"].get(k, {"mean": None})) for k, _ in metrics]
        n = len(r["seeds"])
        per_run = f"{r['wall_time_s'] / 60 / n:.1f}" if n else "n/a"
        lines.append(
            f"| {r['loss']} | {r['ratio']:g} | {n} | {len(r['failed'])} | "
            + " | ".join(cells)
            + f" | {_fmt_posthoc(r.get('posthoc'))} | {per_run} |"
        )
    return lines


# --------------------------------------------------------------------------- the protocol


def _schedule_text(cfg):
    s = cfg["schedule"]
    warm = f"warm-up {s.get('warmup_epochs', 0):g} epochs"
    if s["name"] == "step":
        pairs = ", ".join(
            f"x{f:g} from epoch {b}"
            for b, f in zip(s.get("boundaries") or (), s.get("factors") or ())
        )
        return f"step schedule ({warm}; lr {pairs or 'constant'})"
    return f"{s['name']} schedule ({warm})"


def _counts_text(counts):
    if not counts:
        return "?"
    counts = [int(c) for c in counts]
    if len(set(counts)) == 1:
        return f"{counts[0]} per class"
    return f"{min(counts)}-{max(counts)} per class"


def _loss_text(loss, cfg):
    lcfg = cfg["loss"]
    hp = ", ".join(f"{k}={v}" for k, v in sorted((lcfg.get("hparams") or {}).items()))
    text = f"{loss} = `{lcfg['name']}`" + (f" ({hp})" if hp else "")
    if cfg.get("model", {}).get("cosine_head"):
        text += ", cosine head"
    if int(lcfg.get("drw_epoch", -1)) >= 0:
        text += (
            f", DRW (class-balanced weights, beta {lcfg.get('drw_beta')}) from epoch "
            f"{lcfg['drw_epoch']}"
        )
    return text


# Keys that differ between the rows of a grid by design.
_GRID_KEYS = ("loss.", "model.cosine_head", "seed", "data.subset_seed", "data.ratio", "seeds")


def protocol_lines(rows: list[dict]) -> list[str]:
    """The protocol, from the finished runs' configs and summaries (no fixed claims)."""
    done = [r for r in rows if r["config"]]
    if not done:
        return []
    cfg = done[0]["config"]
    model, opt = cfg["model"], cfg["optimizer"]
    lines = [
        f"- Protocol: {model['name']} (width {model.get('width') or 'default'}, "
        f"{model.get('dtype', 'float32')}), {cfg['num_epochs']} epochs, batch "
        f"{cfg['batch_size']}, SGD lr {opt['lr']} momentum {opt['momentum']}"
        f"{' (Nesterov)' if opt.get('nesterov') else ''} weight decay {opt['weight_decay']}, "
        f"{_schedule_text(cfg)}; the final weights are evaluated.",
        _data_line(done),
        _evaluation_line(done),
        "- Losses: "
        + "; ".join(
            _loss_text(loss, r["config"]) for loss, r in {r["loss"]: r for r in done}.items()
        )
        + ".",
    ]
    return lines + _differ_lines(done)


def _data_line(done: list[dict]) -> str:
    data = done[0]["config"]["data"]
    source = data["source"]
    name = f" ({data['name']})" if source == "tfds" and data.get("name") else ""
    pipeline = f", {data['pipeline']} pipeline" if data.get("pipeline") else ""
    if done[0].get("task") == "segmentation":
        c = done[0]["class_counts"]
        return (
            f"- Data: `{source}`{pipeline}, a segmentation set used whole: "
            f"{done[0]['num_train']} training images, {min(c)}-{max(c)} training pixels per "
            f"class ({max(c) / max(min(c), 1):.0f}:1; data.profile and data.ratio do not "
            "apply)."
        )
    train = "; ".join(
        f"ratio {r['ratio']:g}: {r['num_train']} images ({min(r['class_counts'])}-"
        f"{max(r['class_counts'])} per class)"
        for r in {r["ratio"]: r for r in done}.values()
    )
    return f"- Data: `{source}`{name}{pipeline}, {data['profile']} profile; training split {train}."


def _evaluation_line(done: list[dict]) -> str:
    data = done[0]["config"]["data"]
    num_test = done[0].get("num_test")
    test_counts = _counts_text(done[0].get("test_class_counts"))
    if done[0].get("task") == "segmentation":
        test_counts = f"{done[0].get('num_test_pixels')} labelled pixels, " + (
            _counts_text(done[0].get("test_class_counts")).replace("per class", "pixels per class")
        )
    if data.get("max_test") is None:
        size = f" ({num_test} images, {test_counts})" if num_test else ""
        return f"- Evaluation: the full test split{size}."
    return (
        f"- Evaluation: {num_test or data['max_test']} test images "
        f"(data.max_test={data['max_test']}: NOT the full test split; "
        f"{test_counts})."
    )


def _differ_lines(done: list[dict]) -> list[str]:
    """Anything else that is not the same in every row (e.g. a per-run override)."""
    flat = [flatten(r["config"]) for r in done]
    differ = sorted(
        k
        for k in set().union(*flat)
        if k not in RUN_CONTROL_KEYS
        and not any(k == g or k.startswith(g) for g in _GRID_KEYS)
        and len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1
    )
    if not differ:
        return []
    return [
        "- **The rows differ in** " + ", ".join(f"`{k}`" for k in differ) + " (see the JSON twin)."
    ]


# --------------------------------------------------------------------------- the files


def write_report(
    name: str,
    rows: list[dict],
    *,
    quick: bool,
    command: str,
    grid: dict,
    out_dir: str = RESULTS,
    label: str | None = None,
    note: str | None = None,
) -> str:
    """Writes ``out_dir/name.md``, its strict-JSON twin and the plots; returns the .md path."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    lines = _header_lines(name, rows, quick, command, grid, label, note)
    lines += table_lines(rows)
    lines += _footnote_lines(rows)
    plots = _plots(base, rows)
    if metrics_of(rows) is SEG_METRICS:
        plots += _picture_grid(base, rows)
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    wd.atomic_write(base + ".md", "\n".join(lines) + "\n")
    twin = {"suite": name, "quick": quick, "command": command, "grid": grid, "rows": rows}
    wd.write_json(base + ".json", twin)
    return base + ".md"


def _header_lines(name, rows, quick, command, grid, label, note) -> list[str]:
    """The title, the command, protocol, seeds, hardware and grid lines, failed runs."""
    done = [r for r in rows if r["config"]]
    if label is None:
        label = "REDUCED (quick) protocol — not the paper protocol" if quick else "paper protocol"
    lines = [f"# {name}: {label}", ""]
    if quick:
        lines += [
            "**This table uses a reduced protocol that fits a 2-core CPU** (smaller "
            "network, fewer epochs; see the protocol line). Its numbers are far below the "
            "paper protocol's and only compare the losses with each other under this "
            "protocol.",
            "",
        ]
    finished = sum(len(r["seeds"]) for r in rows)
    failed = [(r, f) for r in rows for f in r["failed"]]
    total = len(grid["losses"]) * len(grid["ratios"]) * len(grid["seeds"])
    lines.append(f"- Command: `{command}`")
    lines += protocol_lines(rows)
    sets = (
        "the data order and the crops"
        if metrics_of(rows) is SEG_METRICS
        else ("the data order and the subset")
    )
    lines.append(f"- Seeds: {grid['seeds']} (each seed sets the init, {sets}).")
    if done:
        wall = sum(r["wall_time_s"] for r in rows)
        lines += [
            f"- Hardware: devices {done[0]['device']}; versions {done[0]['versions']}; report "
            f"written on {platform.machine()} with {os.cpu_count()} CPU cores.",
            f"- Sum of the finished runs' wall times: {wall / 60:.1f} min. Generated "
            f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        ]
    lines += [
        f"- Grid: losses {list(grid['losses'])}, ratios {list(grid['ratios'])}; runs "
        f"finished: {finished} of {total}; failed: {len(failed)}.",
    ]
    lines += [f"- {note}"] if note else []
    lines.append("")
    if failed:
        lines += ["**Failed runs** (not in the means):", ""]
        lines += [
            f"- {r['loss']} ratio {r['ratio']:g} seed {f['seed']}: {f['reason']} (`{f['workdir']}`)"
            for r, f in failed
        ]
        lines.append("")
    return lines


def _footnote_lines(rows) -> list[str]:
    groups = (
        "Many/medium/few: the mean IoU of the most, middle and least frequent thirds of the "
        "classes by training pixels (3/4/3 of 10). mIoU: mean over classes of "
        "TP / (TP + FP + FN) on the test pixels; fwIoU weights the IoUs by test pixels."
        if metrics_of(rows) is SEG_METRICS
        else "Many/medium/few: classes with >100, 20-100, <20 training images (n/a when a "
        "group is empty)."
    )
    return [
        "",
        f"mean ± sd over seeds (sd only with 2+ seeds). {groups} Post-hoc LA: "
        "balanced accuracy of `logits - τ log(prior)` from the same models, at the τ in "
        "(0, 0.5, 1, 1.5, 2) with the best mean over seeds; τ is picked on the test split "
        "(an oracle choice, optimistic); n/a when the summaries do not have it.",
        "",
    ]


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plots(base: str, rows: list[dict]) -> list[str]:
    """``base_per_class_r{ratio}.png`` per ratio and, for 2+ ratios, ``base_vs_ratio.png``."""
    rows = [r for r in rows if r["config"]]
    if not rows:
        return []
    plt = _pyplot()
    paths = [
        _per_class_plot(plt, base, rows, ratio) for ratio in sorted({r["ratio"] for r in rows})
    ]
    if len({r["ratio"] for r in rows}) >= 2:
        paths.append(_vs_ratio_plot(plt, base, rows))
    return paths


def _per_class_plot(plt, base, rows, ratio) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    seg = metrics_of(rows) is SEG_METRICS
    for r in rows:
        if r["ratio"] != ratio:
            continue
        counts = np.asarray(r["class_counts"])
        order = np.argsort(-counts, kind="stable")
        acc = np.asarray(r["per_class_iou" if seg else "per_class_accuracy"], float)[order]
        ax.plot(counts[order], 100 * acc, marker="o", label=f"{r['loss']} (n={len(r['seeds'])})")
    ax.set_xscale("log")
    what = "IoU" if seg else "accuracy"
    ax.set_xlabel(f"training {'pixels' if seg else 'images'} of the class")
    ax.set_ylabel(f"test {what} of the class %")
    ax.set_title(f"per-class {what}, ratio {ratio:g} (mean over seeds)")
    ax.legend(fontsize=7)
    return _save(plt, fig, f"{base}_per_class_r{ratio:g}.png", dpi=90)


def _save(plt, fig, path: str, dpi=None) -> str:
    """Lays out, writes and closes ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _vs_ratio_plot(plt, base, rows) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for loss in dict.fromkeys(r["loss"] for r in rows):
        pts = sorted(
            (r["ratio"], r["stats"]["balanced_accuracy"])
            for r in rows
            if r["loss"] == loss and r["stats"]["balanced_accuracy"]["mean"] is not None
        )
        ax.errorbar(
            [p[0] for p in pts],
            [p[1]["mean"] for p in pts],
            yerr=[p[1]["sd"] or 0.0 for p in pts],
            marker="o",
            capsize=3,
            label=loss,
        )
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio n_max / n_min")
    ax.set_ylabel("balanced test accuracy %")
    ax.legend(fontsize=7)
    return _save(plt, fig, f"{base}_vs_ratio.png", dpi=90)


def _predictions(rows: list[dict]):
    """(the first run's arrays, each loss's predicted maps, the losses) from the first
    finished seed of each row with a ``predictions.npz``; (None, [], []) when none has one."""
    from cce_jax.training import report

    preds, names, first = [], [], None
    for r in rows:
        folder = next(
            (
                d
                for d in r.get("run_dirs", ())
                if os.path.isfile(os.path.join(d, "predictions.npz"))
            ),
            None,
        )
        if folder is None:
            continue
        arrays = report.read_predictions(folder)
        first = first or arrays
        preds.append(arrays["predictions"][:GRID_IMAGES])
        names.append(r["loss"])
    return first, preds, names


def _picture_grid(base: str, rows: list[dict]) -> list[str]:
    """Input, truth and each loss's prediction (its first finished seed) on the same test
    images, with a class legend: ``base_pictures.png``."""
    from cce_jax.data import segmentation

    first, preds, names = _predictions(rows)
    if first is None:
        return []
    plt = _pyplot()
    from matplotlib.patches import Patch

    k = len(rows[0]["class_counts"])
    grid = segmentation.picture_grid(
        first["images"][:GRID_IMAGES], first["labels"][:GRID_IMAGES], *preds, num_classes=k
    )
    columns = ["input", "truth", *names]
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(columns), 1.2 + 0.9 * GRID_IMAGES), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    step = grid.shape[1] / len(columns)
    ax.set_xticks([step * (i + 0.5) for i in range(len(columns))], columns, rotation=45, fontsize=7)
    ax.set_yticks([])
    palette = segmentation.label_palette(k)
    class_names = rows[0].get("class_names") or [str(i) for i in range(k)]
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in range(k)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignore"))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("test images: input, truth, each loss (seed of its first run)", fontsize=8)
    return [_save(plt, fig, f"{base}_pictures.png")]
