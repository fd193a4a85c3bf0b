"""Fashion-MNIST-LT (the CCE paper's other data set), a protocol sized for a 2-core CPU.

  python -m experiments.train --config=experiments/configs/fashion_mnist_lt.py \
      --workdir=/tmp/fmnist_ce --config.loss.name=ce
  python -m experiments.reproduce --suite=fashion_mnist_lt   # 7 losses x 2 ratios x 3 seeds

Data: Fashion-MNIST from its four standard IDX files (``fashion_mnist:DIR``; the offline copy
is ``../shared/data/fashion-mnist``; ``--config.data.source=tfds:fashion_mnist`` reads the
same data through tfds), 28x28x1, 10 classes. The training split is made long-tailed with
the exp profile, n_max 6,000 (the full class): ratio 100 keeps 14,886 images (6,000 down to
60 per class), ratio 10 keeps 24,516; the test split is the full balanced 10,000 images.
Augmentation: zero-pad 4, random 28x28 crop, horizontal flip (clothes are left-right
symmetric; the shift is 14% of the side, as pad-4 crops are 12.5% of CIFAR's 32).

Model and schedule: ResNet-8 of width 8 (8/16/32 channels, ~20k parameters), batch 128, SGD
momentum 0.9, weight decay 2e-4, lr 0.1 with 1 warm-up epoch, x0.01 from epoch 6 and x0.0001
from epoch 7 (the LDAM schedule's shape, compressed), 8 epochs, test metrics every 4 epochs.
This is a small protocol for a CPU, not the paper's (ResNet-34, 200 epochs): it ranks the
losses against each other. Runtimes and results: experiments/results/fashion_mnist_lt.md.
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.source = "fashion_mnist:../shared/data/fashion-mnist"
    c.data.profile = "exp"
    c.data.ratio = 100.0
    c.data.n_max = 6000
    c.data.augment = True
    c.model.name = "resnet8"
    c.model.width = 8
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_epochs = 8
    c.eval_every = 4
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (6, 7)
    c.schedule.factors = (0.01, 0.0001)
    return c
