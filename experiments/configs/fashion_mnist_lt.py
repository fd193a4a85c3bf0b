"""Fashion-MNIST-LT (the CCE paper's other data set), a protocol sized for a 2-core CPU.

  python -m experiments.train --config=experiments/configs/fashion_mnist_lt.py:loss=ce \
      --workdir=/tmp/fmnist_ce
  python -m experiments.reproduce --suite=fashion_mnist_lt   # 7 losses x 2 ratios x 3 seeds

Data ``fashion_mnist:DIR`` (or ``tfds:fashion_mnist``), exp profile with n_max 6,000; ResNet-8
width 8, 8 epochs: it ranks the losses (the paper: ResNet-34, 200 epochs).
"""

from experiments.configs import common, default

LABEL = "Fashion-MNIST-LT, ResNet-8 width 8, 8 epochs (a CPU protocol, not the paper's)"
SUITE = dict(workdir=common.RUNS_HOME, jobs=2, label=LABEL)
LOSSES = ("ce", "cce_paper", "cce_code", "mse_ol", "ldam_drw", "la", "bs")


def sweep(losses=LOSSES, ratios=(100, 10), seeds=(0, 1, 2)):
    return common.grid(losses, ratios, seeds)


def get_config(arg=None):
    c = default.get_config()
    c.data.update(source="fashion_mnist:../shared/data/fashion-mnist", profile="exp", ratio=100.0)
    c.data.update(n_max=6000, augment=True)
    c.model.update(name="resnet8", width=8)
    c.update(batch_size=128, eval_batch_size=500, num_epochs=8, eval_every=4)
    c.schedule.update(warmup_epochs=1.0, boundaries=(6, 7), factors=(0.01, 0.0001))
    return common.finish(c, arg)
