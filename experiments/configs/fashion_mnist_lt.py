"""Fashion-MNIST-LT (the CCE paper's other data set), a protocol sized for a 2-core CPU.

  python -m experiments.train --config=experiments/configs/fashion_mnist_lt.py:loss=ce \
      --workdir=/tmp/fmnist_ce
  python -m experiments.reproduce --suite=fashion_mnist_lt   # 7 losses x 2 ratios x 3 seeds

Data: the four IDX files (``fashion_mnist:DIR``, or ``tfds:fashion_mnist``). Applies the exp
profile with n_max 6,000 (ratio 100: 14,886 training images; 10: 24,516); on your own data set
``--config.data.profile=none`` keeps every image. The full test split; pad-4 crops and flips.
ResNet-8 of width 8, batch 128, lr 0.1, 1 warm-up epoch, x0.01 from epoch 6, x0.0001 from 7, 8
epochs: it ranks the losses against each other (the paper: ResNet-34, 200 epochs).
"""

from experiments.configs import common, default

SUITE = dict(
    workdir=common.RUNS_HOME,
    jobs=2,
    label="Fashion-MNIST-LT, ResNet-8 width 8, 8 epochs (a CPU protocol, not the paper's)",
)


def sweep(
    losses=("ce", "cce_paper", "cce_code", "mse_ol", "ldam_drw", "la", "bs"),
    ratios=(100, 10),
    seeds=(0, 1, 2),
):
    return common.grid(losses, ratios, seeds)


def get_config(arg=None):
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
    return common.finish(c, arg)
