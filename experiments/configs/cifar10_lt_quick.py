"""CIFAR-10-LT, REDUCED protocol for a 2-core CPU: ResNet-8 (width 16), 20 epochs.

  python -m experiments.reproduce --suite=cifar10_lt --quick

As cifar10_lt.py on the offline JPEG copy; results: experiments/results/cifar10_lt_quick.md.
"""

from experiments.configs import cifar10_lt, common

SUITE = cifar10_lt.SUITE
sweep = cifar10_lt.sweep


def get_config(arg=None):
    c = cifar10_lt.get_config()
    c.data.source = "cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz"
    c.model.update(name="resnet8", width=16)
    c.update(num_epochs=20, eval_every=5, eval_batch_size=500)
    c.schedule.update(warmup_epochs=1.0, boundaries=(16, 18), factors=(0.01, 0.0001))
    return common.finish(c, arg)
