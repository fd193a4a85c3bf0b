"""The grids of ``python -m experiments.reproduce``: loss variants and suites, as data.

A suite names a config file (``experiments/configs/``), the imbalance profile and ratios, the
loss variants and seeds of its grid and where its runs go; each entry's comment gives its
command, its runtime and where its results are. :func:`run_args` turns one cell of a grid
(loss, ratio, seed) into the flags of its ``python -m experiments.train`` run.

Every suite keeps its runs and its report outside the checkout by default (``--workdir`` below,
report in ``WORKDIR/results``); the committed tables in ``experiments/results/`` are rewritten
only with ``--results_dir=experiments/results``.
"""

from __future__ import annotations

import os
import tempfile

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
    "ldam_drw": {
        "loss": "ldam",
        "hparams": {"max_margin": 0.5, "scale": 30.0},
        "cosine_head": True,
        "drw": 0.8,
    },
    "la": {"loss": "la", "hparams": {"tau": 1.0}},
    "bs": {"loss": "bs"},
    "cot": {"loss": "cot"},
    "cce_paper": {"loss": "cce", "hparams": {"gamma": -1.0, "normalizer": "k_minus_1"}},
    "cce_code": {"loss": "cce", "hparams": {"gamma": 1.0, "normalizer": "k"}},
    "mse_ol": {"loss": "mse_ol", "hparams": {"alpha": 5.0}},
}
# The order runs are made in: the losses the quick protocol must cover come first.
PRIORITY = (
    "ce",
    "cce_paper",
    "cce_code",
    "mse_ol",
    "ldam_drw",
    "la",
    "bs",
    "focal",
    "cb_focal",
    "cot",
)

_TMP = tempfile.gettempdir()
# The CIFAR suites' runs (hours to days, resumable): a folder that survives a reboot.
RUNS_HOME = os.path.join(os.path.expanduser("~"), "cce_jax_runs")
SUITES = {
    # The README's first command: six losses on imbalanced 8x8 digits, 2 seeds.
    #   python -m experiments.reproduce --suite=digits
    # ~3 min on 2 CPU cores (see experiments/configs/digits_lt.py for the protocol and
    # measurements); runs and report in $TMPDIR/cce_jax_digits; the README's first table.
    "digits": {
        "config": "experiments/configs/digits_lt.py",
        "quick_config": "experiments/configs/digits_lt.py",
        "profile": "exp",
        "ratios": (50,),
        "losses": ("ce", "cce_paper", "cce_code", "mse_ol", "la", "bs"),
        "seeds": (0, 1),
        "jobs": "cpu_cores",
        "workdir": os.path.join(_TMP, "cce_jax_digits"),
        "results": "workdir",
        "label": "imbalanced 8x8 digits, a quick comparison of the losses (small "
        "protocol for a CPU, not a paper protocol)",
    },
    # CIFAR-10-LT, exp profile, ratios 100 and 10, every loss variant.
    #   python -m experiments.reproduce --suite=cifar10_lt [--quick]
    # The paper protocol (ResNet-32, 200 epochs): ~11 h per run on a 2-core CPU
    # (docs/training.md); --quick (experiments/configs/cifar10_lt_quick.py) is the reduced
    # CPU protocol, 8-10 min per run on a 2-core CPU. Runs in ~/cce_jax_runs; committed table:
    # experiments/results/cifar10_lt_quick.md (--quick).
    "cifar10_lt": {
        "config": "experiments/configs/cifar10_lt.py",
        "quick_config": "experiments/configs/cifar10_lt_quick.py",
        "profile": "exp",
        "ratios": (100, 10),
        "losses": PRIORITY,
        "workdir": RUNS_HOME,
        "results": "workdir",
    },
    # As cifar10_lt with the step imbalance profile.
    #   python -m experiments.reproduce --suite=cifar10_step [--quick]
    # Runtimes as cifar10_lt; runs in ~/cce_jax_runs; no committed table.
    "cifar10_step": {
        "config": "experiments/configs/cifar10_lt.py",
        "quick_config": "experiments/configs/cifar10_lt_quick.py",
        "profile": "step",
        "ratios": (100, 10),
        "losses": PRIORITY,
        "workdir": RUNS_HOME,
        "results": "workdir",
    },
    # The CCE paper's Fashion-MNIST with induced imbalance, a CPU-sized protocol (see
    # experiments/configs/fashion_mnist_lt.py).
    #   python -m experiments.reproduce --suite=fashion_mnist_lt
    # ~90 min on 2 CPU cores; runs in ~/cce_jax_runs; committed table:
    # experiments/results/fashion_mnist_lt.md.
    "fashion_mnist_lt": {
        "config": "experiments/configs/fashion_mnist_lt.py",
        "quick_config": "experiments/configs/fashion_mnist_lt.py",
        "profile": "exp",
        "ratios": (100, 10),
        "losses": ("ce", "cce_paper", "cce_code", "mse_ol", "ldam_drw", "la", "bs"),
        "seeds": (0, 1, 2),
        "jobs": "cpu_cores",
        "workdir": RUNS_HOME,
        "label": "Fashion-MNIST-LT, ResNet-8 width 8, 8 epochs (a CPU protocol, not the paper's)",
    },
    # Imbalanced semantic segmentation on long-tailed CIFAR-10 mosaics (the data set is made
    # first when missing; see experiments/configs/segmentation.py).
    #   python -m experiments.reproduce --suite=segmentation
    # ~25 min on 2 idle CPU cores (43 min under load 5-7); runs in ~/cce_jax_runs, report
    # (mIoU table, per-class IoU plot, picture grid) in ~/cce_jax_runs/results.
    # The ratio is the generated set's most / least training pixels (data.ratio is unused).
    "segmentation": {
        "config": "experiments/configs/segmentation.py",
        "quick_config": "experiments/configs/segmentation.py",
        "profile": "exp",
        "ratios": (200,),
        "losses": ("ce", "cce_paper", "cce_code", "mse_ol", "focal", "la", "bs", "ldam_drw"),
        "loss_hparams": {"mse_ol": {"alpha": 6.0}},  # the MSE-OL paper's segmentation value
        "seeds": (0, 1, 2),
        "jobs": "cpu_cores",
        "workdir": RUNS_HOME,
        "task": "segmentation",
        "label": "imbalanced segmentation of CIFAR-10 mosaics, FCN-8, 12 epochs (a CPU "
        "protocol, not the paper's)",
    },
    # Two losses, two ratios, one epoch of the tiny config: the CI test of this script.
    #   python -m experiments.reproduce --suite=tiny
    # 12 one-epoch runs, each under ~40 s on a 2-core CPU, mostly compilation and data
    # (docs/training.md); runs and report in $TMPDIR/cce_jax_tiny.
    "tiny": {
        "config": "experiments/configs/tiny.py",
        "quick_config": "experiments/configs/tiny.py",
        "profile": "exp",
        "ratios": (10, 2),
        "losses": ("ce", "cce_paper"),
        "overrides": {"num_epochs": 1},
        "workdir": os.path.join(_TMP, "cce_jax_tiny"),
        "results": "workdir",
        "label": "CI smoke grid",
    },
}
# The columns of a classification suite's table: (summary-derived name, column label).
METRICS = (
    ("top1_error", "top-1 error %"),
    ("balanced_accuracy", "balanced acc %"),
    ("many", "many %"),
    ("medium", "medium %"),
    ("few", "few %"),
    ("macro_f1", "macro-F1 %"),
)
# The columns of a segmentation suite (the summaries' names; many/medium/few are mIoU).
SEG_METRICS = (
    ("miou", "mIoU %"),
    ("pixel_accuracy", "pixel acc %"),
    ("balanced_accuracy", "mean class acc %"),
    ("fw_iou", "fwIoU %"),
    ("many", "many mIoU %"),
    ("medium", "medium mIoU %"),
    ("few", "few mIoU %"),
)


def suite_label(suite: dict) -> str | None:
    """The report's title of ``suite`` (None: the protocol's name, quick or paper)."""
    label = suite.get("label")
    if label == "CI smoke grid":
        label = f"CI smoke grid ({suite.get('overrides', {}).get('num_epochs', '?')} epoch(s))"
    return label


def run_args(
    suite: dict,
    config_path: str,
    loss: str,
    ratio: float,
    seed: int | None,
    num_epochs: int,
    source: str | None,
    *,
    seeds=None,
    extra=(),
) -> list[str]:
    """The experiments.train flags of one run of the grid (without ``--workdir``).

    ``seeds``: several seeds in one program (``--config.seeds``); then ``seed`` is unused.
    """
    spec = LOSSES[loss]
    path = config_path if os.path.isabs(config_path) else os.path.join(REPO, config_path)
    args = [f"--config={path}", f"--config.loss.name={spec['loss']}"]
    if seeds:
        args.append(f"--config.seeds=({','.join(str(int(s)) for s in seeds)},)")
    else:
        args += [f"--config.seed={seed}", f"--config.data.subset_seed={seed}"]
    args += [
        f"--config.data.profile={suite['profile']}",
        f"--config.data.ratio={float(ratio)}",
        "--config.progress=False",
    ]
    for key, value in suite.get("overrides", {}).items():
        args.append(f"--config.{key}={value}")
    if source:
        args.append(f"--config.data.source={source}")
    if spec.get("cosine_head"):
        args.append("--config.model.cosine_head=True")
    if spec.get("drw"):
        args.append(f"--config.loss.drw_epoch={int(round(spec['drw'] * num_epochs))}")
    args += list(extra)
    hparams = {**spec.get("hparams", {}), **suite.get("loss_hparams", {}).get(loss, {})}
    for key, value in hparams.items():
        args.append(f"--loss_hparam={key}={value}")
    return args
