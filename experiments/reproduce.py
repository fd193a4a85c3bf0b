"""Runs a grid of experiments.train runs and writes a table (mean +- sd over seeds) and plots.

  python -m experiments.reproduce --suite=cifar10_lt [--quick] [--seeds=0,1,2] \
      [--workdir=runs/reproduce] [--losses=ce,cce_paper] [--ratios=100] \
      [--source=cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz]

Every run is ``python -m experiments.train`` in a subprocess with its own workdir
``WORKDIR/SUITE[_quick]/r{ratio}/{loss}/seed{seed}``. A run whose ``summary.json`` exists is
skipped and an interrupted run resumes from its checkpoint, so the whole command can be
interrupted and started again. After every finished run the report is rewritten:
``experiments/results/SUITE[_quick].md`` and ``.json`` (per loss and ratio: mean +- sd over
seeds of top-1 error, balanced accuracy, many/medium/few-shot accuracy, macro-F1), plus
``..._per_class_r{ratio}.png`` (per-class accuracy against class size, one line per loss)
and ``..._vs_ratio.png`` (balanced accuracy against the imbalance ratio).

The seed sets both the initialisation/data order (``config.seed``) and which training
examples survive the imbalance (``config.data.subset_seed``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")
OFFLINE_SOURCE = "cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz"

# Loss variants: the trainer's loss name, its hyperparameters and other config overrides.
# ``drw`` is the fraction of the epochs after which DRW switches class-balanced weights on
# (160 of 200 in the LDAM-DRW protocol).
LOSSES = {
    "ce": {"loss": "ce"},
    "focal": {"loss": "focal", "hparams": {"gamma": 2.0}},
    "cb_focal": {"loss": "cb_focal", "hparams": {"beta": 0.9999, "gamma": 2.0}},
    "ldam_drw": {"loss": "ldam", "hparams": {"max_margin": 0.5, "scale": 30.0},
                 "cosine_head": True, "drw": 0.8},
    "la": {"loss": "la", "hparams": {"tau": 1.0}},
    "bs": {"loss": "bs"},
    "cot": {"loss": "cot"},
    "cce_paper": {"loss": "cce", "hparams": {"gamma": -1.0, "normalizer": "k_minus_1"}},
    "cce_code": {"loss": "cce", "hparams": {"gamma": 1.0, "normalizer": "k"}},
    "mse_ol": {"loss": "mse_ol", "hparams": {"alpha": 5.0}},
}
# The order runs are made in: the losses the quick protocol must cover come first.
PRIORITY = ("ce", "cce_paper", "cce_code", "mse_ol", "ldam_drw", "la", "bs", "focal",
            "cb_focal", "cot")

SUITES = {
    "cifar10_lt": {"config": "experiments/configs/cifar10_lt.py",
                   "quick_config": "experiments/configs/cifar10_lt_quick.py",
                   "profile": "exp", "ratios": (100, 10), "losses": PRIORITY},
    "cifar10_step": {"config": "experiments/configs/cifar10_lt.py",
                     "quick_config": "experiments/configs/cifar10_lt_quick.py",
                     "profile": "step", "ratios": (100, 10), "losses": PRIORITY},
    # Two losses, two ratios, one epoch of the tiny config: the CI test of this script.
    "tiny": {"config": "experiments/configs/tiny.py", "quick_config": "experiments/configs/tiny.py",
             "profile": "exp", "ratios": (10, 2), "losses": ("ce", "cce_paper"),
             "overrides": {"num_epochs": 1}},
}
METRICS = (("top1_error", "top-1 error %"), ("balanced_accuracy", "balanced acc %"),
           ("many", "many %"), ("medium", "medium %"), ("few", "few %"),
           ("macro_f1", "macro-F1 %"))


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("_reproduce_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  return module.get_config()


def run_args(suite: dict, config_path: str, loss: str, ratio: float, seed: int,
             num_epochs: int, source: str | None) -> list[str]:
  """The experiments.train flags of one run of the grid."""
  spec = LOSSES[loss]
  args = [f"--config={config_path}", f"--config.loss.name={spec['loss']}",
          f"--config.seed={seed}", f"--config.data.subset_seed={seed}",
          f"--config.data.profile={suite['profile']}", f"--config.data.ratio={float(ratio)}",
          "--config.progress=False"]
  for key, value in suite.get("overrides", {}).items():
    args.append(f"--config.{key}={value}")
  if source:
    args.append(f"--config.data.source={source}")
  if spec.get("cosine_head"):
    args.append("--config.model.cosine_head=True")
  if spec.get("drw"):
    args.append(f"--config.loss.drw_epoch={int(round(spec['drw'] * num_epochs))}")
  for key, value in spec.get("hparams", {}).items():
    args.append(f"--loss_hparam={key}={value}")
  return args


def _mean_sd(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), sd


def _row_metrics(summary: dict) -> dict:
  pct = lambda x: None if x is None else 100.0 * x
  return {"top1_error": pct(1.0 - summary["test_top1"]),
          "balanced_accuracy": pct(summary["test_balanced_accuracy"]),
          "many": pct(summary.get("test_many")), "medium": pct(summary.get("test_medium")),
          "few": pct(summary.get("test_few")), "macro_f1": pct(summary.get("test_macro_f1"))}


def collect(root: str, losses, ratios, seeds) -> list[dict]:
  """One entry per (loss, ratio) with the finished seeds' metrics."""
  rows = []
  for ratio in ratios:
    for loss in losses:
      runs = []
      for seed in seeds:
        path = os.path.join(root, f"r{ratio:g}", loss, f"seed{seed}", "summary.json")
        if os.path.exists(path):
          with open(path) as f:
            runs.append(json.load(f))
      if not runs:
        continue
      per_seed = [_row_metrics(s) for s in runs]
      stats = {name: _mean_sd([m[name] for m in per_seed]) for name, _ in METRICS}
      rows.append({
          "loss": loss, "ratio": ratio, "seeds": [s["config"]["seed"] for s in runs],
          "stats": {k: {"mean": v[0], "sd": v[1]} for k, v in stats.items()},
          "per_seed": per_seed,
          "class_counts": runs[0]["class_counts"],
          "per_class_accuracy": np.mean([s["per_class_accuracy"] for s in runs], 0).tolist(),
          "wall_time_s": float(np.sum([s["wall_time_s"] for s in runs])),
          "num_train": int(np.sum(runs[0]["class_counts"])),
          "config": runs[0]["config"], "versions": runs[0].get("versions"),
          "device": {k: runs[0].get(k) for k in ("device_count", "process_count",
                                                 "device_kind", "platform") if k in runs[0]},
      })
  return rows


def _fmt(stat):
  if stat["mean"] is None:
    return "n/a"
  if stat["sd"] is None:
    return f"{stat['mean']:.2f}"
  return f"{stat['mean']:.2f} ± {stat['sd']:.2f}"


def write_report(name: str, rows: list[dict], *, quick: bool, command: str, grid: dict,
                 out_dir: str = RESULTS) -> str:
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, name)
  cfg = rows[0]["config"] if rows else {}
  wall = sum(r["wall_time_s"] for r in rows)
  label = ("REDUCED (quick) protocol — not the paper protocol" if quick else
           "CI smoke grid (1 epoch)" if name == "tiny" else "paper protocol")
  lines = [f"# {name}: {label}", ""]
  if quick:
    lines += ["**This table uses a reduced protocol that fits a 2-core CPU** (smaller network, "
              "fewer epochs; see the protocol line). Its numbers are far below the paper "
              "protocol's and only compare the losses with each other under this protocol.", ""]
  if cfg:
    model = cfg["model"]
    sched = cfg["schedule"]
    lines += [
        f"- Command: `{command}`",
        f"- Protocol: {model['name']} (width {model.get('width') or 'default'}), "
        f"{cfg['num_epochs']} epochs, batch {cfg['batch_size']}, SGD lr {cfg['optimizer']['lr']} "
        f"momentum {cfg['optimizer']['momentum']} wd {cfg['optimizer']['weight_decay']}, "
        f"{sched['name']} schedule (warm-up {sched['warmup_epochs']} epochs, boundaries "
        f"{sched.get('boundaries')}, factors {sched.get('factors')}); LDAM-DRW: cosine head, "
        f"DRW from {int(round(0.8 * cfg['num_epochs']))} epochs.",
        f"- Data: `{cfg['data']['source']}` ({cfg['data'].get('name')}), profile "
        f"{cfg['data']['profile']}, ratios {sorted({r['ratio'] for r in rows})}; training "
        f"counts per class are in the JSON twin; evaluation on the full balanced test split "
        f"with the final weights.",
        f"- Seeds: {grid['seeds']} (each seed sets the init, the data order and the subset).",
        f"- Hardware: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"devices {rows[0]['device']}; jax {rows[0]['versions']}.",
        f"- Wall time of the finished runs: {wall / 60:.1f} min. Generated "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"- Grid: losses {list(grid['losses'])}, ratios {list(grid['ratios'])}; runs finished: "
        f"{sum(len(r['seeds']) for r in rows)} of "
        f"{len(grid['losses']) * len(grid['ratios']) * len(grid['seeds'])}.",
        "",
    ]
  header = "| loss | ratio | n | " + " | ".join(label for _, label in METRICS) + " | min/run |"
  lines += [header, "|" + "---|" * (len(METRICS) + 4)]
  for r in rows:
    cells = [_fmt(r["stats"][k]) for k, _ in METRICS]
    lines.append(f"| {r['loss']} | {r['ratio']:g} | {len(r['seeds'])} | " + " | ".join(cells)
                 + f" | {r['wall_time_s'] / 60 / len(r['seeds']):.1f} |")
  lines += ["", "mean ± sd over seeds (sd only with 2+ seeds). Many/medium/few: classes with "
            ">100, 20-100, <20 training images (n/a when a group is empty).", ""]
  plots = _plots(base, rows)
  lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  with open(base + ".md.tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(base + ".md.tmp", base + ".md")
  with open(base + ".json.tmp", "w") as f:
    json.dump({"suite": name, "quick": quick, "command": command, "grid": grid,
               "rows": rows}, f, indent=1, default=str)
  os.replace(base + ".json.tmp", base + ".json")
  return base + ".md"


def _plots(base: str, rows: list[dict]) -> list[str]:
  if not rows:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  for ratio in sorted({r["ratio"] for r in rows}):
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
      if r["ratio"] != ratio:
        continue
      counts = np.asarray(r["class_counts"])
      order = np.argsort(-counts, kind="stable")
      ax.plot(counts[order], 100 * np.asarray(r["per_class_accuracy"])[order], marker="o",
              label=r["loss"])
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy of the class %")
    ax.set_title(f"per-class accuracy, ratio {ratio:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = f"{base}_per_class_r{ratio:g}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
  fig, ax = plt.subplots(figsize=(6, 4))
  for loss in dict.fromkeys(r["loss"] for r in rows):
    pts = sorted((r["ratio"], r["stats"]["balanced_accuracy"]) for r in rows if r["loss"] == loss)
    xs = [p[0] for p in pts]
    ys = [p[1]["mean"] for p in pts]
    err = [p[1]["sd"] or 0.0 for p in pts]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=loss)
  ax.set_xscale("log")
  ax.set_xlabel("imbalance ratio n_max / n_min")
  ax.set_ylabel("balanced test accuracy %")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = f"{base}_vs_ratio.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  paths.append(path)
  return paths


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", required=True, choices=sorted(SUITES))
  parser.add_argument("--quick", action="store_true", help="the reduced CPU protocol")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--workdir", default="runs/reproduce")
  parser.add_argument("--losses", default=None, help="comma list (default: the suite's)")
  parser.add_argument("--ratios", default=None, help="comma list (default: the suite's)")
  parser.add_argument("--source", default=None,
                      help="data.source for every run (default: the config's; the offline "
                           f"copy is {OFFLINE_SOURCE})")
  parser.add_argument("--results_dir", default=RESULTS)
  parser.add_argument("--dry_run", action="store_true", help="print the runs, run nothing")
  args = parser.parse_args(argv)

  suite = SUITES[args.suite]
  name = args.suite + ("_quick" if args.quick and args.suite != "tiny" else "")
  config_path = suite["quick_config"] if args.quick else suite["config"]
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  losses = args.losses.split(",") if args.losses else list(suite["losses"])
  unknown = sorted(set(losses) - set(LOSSES))
  if unknown:
    parser.error(f"unknown loss variant(s) {unknown}; known: {', '.join(LOSSES)}")
  ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else list(suite["ratios"])
  num_epochs = int(suite.get("overrides", {}).get("num_epochs") or
                   load_config(config_path).num_epochs)
  root = os.path.join(os.path.abspath(args.workdir), name)
  command = "python -m experiments.reproduce " + " ".join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  grid = {"losses": losses, "ratios": ratios, "seeds": seeds, "config": config_path}

  # Seeds outermost: one seed of the whole grid first, then the next.
  todo = [(seed, ratio, loss) for seed in seeds for ratio in ratios for loss in losses]
  for i, (seed, ratio, loss) in enumerate(todo):
    workdir = os.path.join(root, f"r{ratio:g}", loss, f"seed{seed}")
    flags = run_args(suite, config_path, loss, ratio, seed, num_epochs, args.source)
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}"] + flags
    if os.path.exists(os.path.join(workdir, "summary.json")):
      print(f"[{i + 1}/{len(todo)}] done already: {workdir}", flush=True)
      continue
    print(f"[{i + 1}/{len(todo)}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    if args.dry_run:
      continue
    t0 = time.time()
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode != 0:
      print(f"run failed (exit {result.returncode}): {workdir}", file=sys.stderr, flush=True)
      sys.exit(result.returncode)
    print(f"  finished in {time.time() - t0:.0f}s", flush=True)
    rows = collect(root, losses, ratios, seeds)
    write_report(name, rows, quick=args.quick, command=command, grid=grid,
                 out_dir=args.results_dir)
  rows = collect(root, losses, ratios, seeds)
  if not args.dry_run:
    report = write_report(name, rows, quick=args.quick, command=command, grid=grid,
                          out_dir=args.results_dir)
    print(f"report: {report}", flush=True)


if __name__ == "__main__":
  main()
