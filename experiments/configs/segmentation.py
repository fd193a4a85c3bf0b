"""Imbalanced semantic segmentation on long-tailed CIFAR-10 mosaics, sized for a 2-core CPU.

  python -m experiments.make_segmentation_data --out=~/.cache/cce_jax/cifar10_seg_lt
  python -m experiments.train --config=experiments/configs/segmentation.py:loss=ce \
      --workdir=/tmp/seg_ce
  python -m experiments.reproduce --suite=segmentation   # makes the data set itself

The generated set (docs/data.md), used whole (data.profile and data.ratio do not apply);
FCN-8, 12 epochs; MSE-OL with the MSE-OL paper's segmentation alpha 6.
"""

import os

from experiments.configs import common, default

LABEL = "imbalanced segmentation of CIFAR-10 mosaics, FCN-8, 12 epochs (a CPU protocol, not "
SUITE = dict(workdir=common.RUNS_HOME, jobs=2, label=LABEL + "the paper's)")
LOSSES = ("ce", "cce_paper", "cce_code", "mse_ol", "focal", "la", "bs", "ldam_drw")


def data_dir() -> str:
    """Where ``--suite=segmentation`` makes the set (``$CCE_JAX_CACHE_DIR`` or ~/.cache/cce_jax)."""
    return os.path.join(os.environ.get("CCE_JAX_CACHE_DIR", "~/.cache/cce_jax"), "cifar10_seg_lt")


def sweep(losses=LOSSES, ratios=(200,), seeds=(0, 1, 2)):  # 200: the set's most / least pixels
    return common.grid(losses, ratios, seeds)


def get_config(arg=None):
    c = default.get_config()
    c.data.update(source=f"seg_npz:{data_dir()}/cifar10_seg.npz", augment=True)
    c.model.name = "fcn8"
    c.update(batch_size=32, eval_batch_size=250, num_epochs=12, eval_every=6)
    c.optimizer.lr = 0.1
    c.schedule.update(warmup_epochs=1.0, boundaries=(10,), factors=(0.1,))
    return common.finish(c, arg, hparams={"mse_ol": {"alpha": 6.0}})
