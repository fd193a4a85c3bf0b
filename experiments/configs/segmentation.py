"""Imbalanced semantic segmentation on long-tailed CIFAR-10 mosaics, sized for a 2-core CPU.

  python -m experiments.make_segmentation_data --out=~/.cache/cce_jax/cifar10_seg_lt
  python -m experiments.train --config=experiments/configs/segmentation.py:loss=ce \
      --workdir=/tmp/seg_ce
  python -m experiments.reproduce --suite=segmentation   # makes the data set itself

Data: the generated set (docs/data.md), used whole: 2,000 training and 500 test mosaics of
32x32, training pixels per class long-tailed 201:1 (the set is made imbalanced: data.profile
and data.ratio do not apply); pad-4 crops and flips. FCN-8 (ResNet-8 encoder, width 16),
batch 32, lr 0.1, x0.1 from epoch 10, 12 epochs; per-pixel losses over the labelled pixels;
MSE-OL with the MSE-OL paper's segmentation alpha 6.
"""

import os

from experiments.configs import common, default

SUITE = dict(
    workdir=common.RUNS_HOME,
    jobs=2,
    label="imbalanced segmentation of CIFAR-10 mosaics, FCN-8, 12 epochs (a CPU protocol, "
    "not the paper's)",
)


def data_dir() -> str:
    """Where ``--suite=segmentation`` makes the set: ``$CCE_JAX_CACHE_DIR/cifar10_seg_lt``
    (default ``~/.cache/cce_jax/cifar10_seg_lt``)."""
    return os.path.join(os.environ.get("CCE_JAX_CACHE_DIR", "~/.cache/cce_jax"), "cifar10_seg_lt")


def sweep(
    losses=("ce", "cce_paper", "cce_code", "mse_ol", "focal", "la", "bs", "ldam_drw"),
    ratios=(200,),  # the generated set's most / least training pixels (data.ratio is unused)
    seeds=(0, 1, 2),
):
    return common.grid(losses, ratios, seeds)


def get_config(arg=None):
    c = default.get_config()
    c.data.source = f"seg_npz:{data_dir()}/cifar10_seg.npz"
    c.data.augment = True
    c.model.name = "fcn8"
    c.batch_size = 32
    c.eval_batch_size = 250
    c.num_epochs = 12
    c.eval_every = 6
    c.optimizer.lr = 0.1
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (10,)
    c.schedule.factors = (0.1,)
    return common.finish(c, arg, hparams={"mse_ol": {"alpha": 6.0}})
