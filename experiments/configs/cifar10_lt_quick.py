"""CIFAR-10-LT, REDUCED protocol for a 2-core CPU: ResNet-8 (width 16), 20 epochs.

  python -m experiments.train --config=experiments/configs/cifar10_lt_quick.py \
      --workdir=runs/quick_ce --config.loss.name=ce

What differs from the paper protocol (experiments/configs/cifar10_lt.py): a ResNet-8 of
width 16 (~78k parameters) instead of ResNet-32, 20 epochs instead of 200 (1 warm-up epoch,
lr x0.01 from epoch 16, x0.0001 from 18: the LDAM schedule's shape, compressed), test metrics
every 5 epochs. Data: the offline JPEG copy of CIFAR-10 (../shared/data), exp profile, ratio
100 (12,406 training images), the full balanced 10,000-image test split.

Time and result: experiments/results/cifar10_lt_quick.md (per run) and docs/training.md,
"Configs"; numbers are far below the paper protocol's by design.
Used by ``python -m experiments.reproduce --suite=cifar10_lt --quick``.
"""

from experiments.configs import cifar10_lt


def get_config():
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
    return c
