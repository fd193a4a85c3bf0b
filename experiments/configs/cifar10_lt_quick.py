"""CIFAR-10-LT, REDUCED protocol for a 2-core CPU: ResNet-8 (width 16), 20 epochs.

  python -m experiments.reproduce --suite=cifar10_lt --quick

As cifar10_lt.py (applies the exp profile, ratio 100: 12,406 training images; on your own data
``data.profile=none`` keeps every image) but ResNet-8 width 16, 20 epochs (1 warm-up, lr x0.01
from epoch 16, x0.0001 from 18), the offline JPEG copy of CIFAR-10, test metrics every 5
epochs. Results: experiments/results/cifar10_lt_quick.md (far below the paper protocol's).
"""

from experiments.configs import cifar10_lt, common

SUITE = cifar10_lt.SUITE
sweep = cifar10_lt.sweep


def get_config(arg=None):
    c = cifar10_lt.get_config()
    c.data.source = "cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz"
    c.model.name = "resnet8"
    c.model.width = 16
    c.num_epochs = 20
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (16, 18)
    c.schedule.factors = (0.01, 0.0001)
    c.eval_every = 5
    c.eval_batch_size = 500
    return common.finish(c, arg)
