"""CIFAR-10-LT, the paper protocol: exp profile, ratio 100, ResNet-32, 200 epochs, batch 128.

  python -m experiments.train --config=experiments/configs/cifar10_lt.py:loss=cce_paper \
      --workdir=runs/c10lt
  python -m experiments.reproduce --suite=cifar10_lt     # or --suite=cifar10_step

Data ``tfds:cifar10`` (offline: ``--config.data.source=cifar10_jpeg:PATH``); LDAM's step
decay; the CCE paper's: ``--config.schedule.boundaries='(100,150)'
--config.schedule.factors='(0.1,0.01)'``.
"""

from experiments.configs import common, default

SUITE = dict(workdir=common.RUNS_HOME)


def sweep(losses=common.ALL_LOSSES, ratios=(100, 10), seeds=(0, 1, 2), profile="exp"):
    """``--suite=cifar10_lt`` (``profile="step"``: ``--suite=cifar10_step``)."""
    return common.grid(losses, ratios, seeds, profile)


def get_config(arg=None):
    c = default.get_config()  # the paper protocol
    c.eval_batch_size = 1000  # divisible by 8 devices
    return common.finish(c, arg)
