"""Tiny smoke run: ~380 training images of the offline CIFAR-10 copy, narrow ResNet-8.

python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/tiny
python -m experiments.reproduce --suite=tiny    # 2 losses x 2 ratios x 3 seeds, 1 epoch
"""

from experiments.configs import common, default

SUITE = dict(workdir=f"{common.TMP}/cce_jax_tiny", label="CI smoke grid (1 epoch(s))")


def sweep(losses=("ce", "cce_paper"), ratios=(10, 2), seeds=(0, 1, 2)):
    return common.grid(losses, ratios, seeds, epochs=1)


def get_config(arg=None):
    c = default.get_config()
    c.data.update(source="cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz", profile="exp")
    c.data.update(n_max=100, ratio=10.0, max_test=1000)
    c.model.update(name="resnet8", width=8)
    c.update(batch_size=32, eval_batch_size=200, num_epochs=3, eval_every=1)
    c.optimizer.lr = 0.05
    c.schedule.update(warmup_epochs=1.0, boundaries=(2,), factors=(0.1,))
    return common.finish(c, arg)
