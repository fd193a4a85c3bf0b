"""Tiny smoke run: a small imbalanced subset of the offline CIFAR-10 copy, narrow ResNet-8.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/tiny
  python -m experiments.reproduce --suite=tiny    # 2 losses x 2 ratios x 3 seeds, 1 epoch

About 380 training images (the exp profile, n_max 100, ratio 10; ``data.profile=none`` keeps
every image), 1000 test images, 3 epochs (``tiny.py:epochs=N`` or ``--config.num_epochs=N``).
"""

from experiments.configs import common, default

SUITE = dict(workdir=f"{common.TMP}/cce_jax_tiny", label="CI smoke grid (1 epoch(s))")


def sweep(losses=("ce", "cce_paper"), ratios=(10, 2), seeds=(0, 1, 2)):
    return common.grid(losses, ratios, seeds, epochs=1)


def get_config(arg=None):
    c = default.get_config()
    c.data.source = "cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz"
    c.data.profile = "exp"
    c.data.n_max = 100
    c.data.ratio = 10.0
    c.data.max_test = 1000
    c.model.name = "resnet8"
    c.model.width = 8
    c.batch_size = 32
    c.eval_batch_size = 200
    c.num_epochs = 3
    c.eval_every = 1
    c.optimizer.lr = 0.05
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (2,)
    c.schedule.factors = (0.1,)
    return common.finish(c, arg)
