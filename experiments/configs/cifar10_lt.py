"""CIFAR-10-LT, the paper protocol (exp profile, imbalance ratio 100), ResNet-32.

  python -m experiments.train --config=experiments/configs/cifar10_lt.py --workdir=runs/c10lt \
      --config.loss.name=cce

Data: tfds.load("cifar10") by default (source "tfds:cifar10"; needs the tfds copy in
``--config.data.data_dir``); offline:
``--config.data.source=cifar10_jpeg:../shared/data/cifar10-jpeg.tar.gz``.
Batch 128, SGD lr 0.1, momentum 0.9, weight decay 2e-4 (conv/dense kernels), 5 warm-up
epochs, 200 epochs. Schedule: LDAM-style step decay (lr x0.01 from epoch 160, x0.0001 from
180) by default; the CCE paper's schedule (x0.1 at 100, x0.01 at 150) with
``--config.schedule.boundaries='(100,150)' --config.schedule.factors='(0.1,0.01)'``.
Loss: ``--config.loss.name=NAME`` and ``--config.loss.hparams.KEY=VALUE`` (the same as
``--loss_hparam=KEY=VALUE``; checked by ``cce_jax.losses.get`` before anything is written);
LDAM-DRW: ``loss.name=ldam``, ``model.cosine_head=True``, ``loss.drw_epoch=160``.

Measured time: docs/training.md, "Configs". Result: not yet measured (the literature
reports ~70-73% top-1 for CE and ~77% for LDAM-DRW at ratio 100).
"""

from experiments.configs import default


def get_config():
    # default.py holds the paper protocol (tfds cifar10, exp ratio 100, ResNet-32, batch 128,
    # SGD 0.1/0.9/2e-4, 5 warm-up epochs, 200 epochs, LDAM step decay); only what differs here.
    c = default.get_config()
    c.eval_batch_size = 1000  # divisible by 8 devices
    return c
