"""Imbalanced semantic segmentation on long-tailed CIFAR-10 mosaics, sized for a 2-core CPU.

  python -m experiments.make_segmentation_data --out=~/.cache/cce_jax/cifar10_seg_lt
  python -m experiments.train --config=experiments/configs/segmentation.py \
      --workdir=/tmp/seg_ce --config.loss.name=ce
  python -m experiments.reproduce --suite=segmentation   # makes the data set itself

Data: the CIFAR-10 segmentation set of ``cce_jax.data.segmentation.make_cifar_segmentation``
with its defaults (``seg_npz:`` of the folder above; docs/data.md): 2,000 training and 500
test images of 32x32, each a mosaic of 2-6 Voronoi regions filled from CIFAR-10 images of
the region's class, boundaries labelled ignore (255); training pixels per class long-tailed
from 760,179 (airplane) to 3,781 (truck), 201:1; every class covers ~8.5% of the test
pixels. Augmentation: pad 4, random 32x32 crop and horizontal flip of image and label map
together (padded pixels are ignore).

Model and schedule: FCN-8 (the ResNet-8 encoder, 16/32/64 channels, a bilinear-upsampling
decoder with skip connections, 109k parameters), batch 32, SGD momentum 0.9, weight decay
2e-4, lr 0.1 with 1 warm-up epoch, x0.1 from epoch 10, 12 epochs, test metrics every 6
epochs (chosen over batch 64 / lr 0.05, which reached a lower mIoU in the same 12 epochs for
CE and BS). Losses are per pixel, averaged over the pixels that are not ignore; class
counts, priors and MSE-OL ranks come from the training pixel counts. A CPU protocol (the
MSE-OL paper used CamVid): it ranks the losses against each other. Two runs side by side
take about 2 min on 2 idle CPU cores (the 24-run suite ~24 min); expected: mIoU ~7 % for CE,
~12.7 % for LA and BS. Runtimes and results: experiments/results/segmentation.md.
"""

import os

from experiments.configs import default


def data_dir() -> str:
    """Where ``--suite=segmentation`` makes the set: ``$CCE_JAX_CACHE_DIR/cifar10_seg_lt``
    (default ``~/.cache/cce_jax/cifar10_seg_lt``)."""
    return os.path.join(os.environ.get("CCE_JAX_CACHE_DIR", "~/.cache/cce_jax"), "cifar10_seg_lt")


def get_config():
    c = default.get_config()
    c.data.source = f"seg_npz:{data_dir()}/cifar10_seg.npz"
    c.data.augment = True
    c.model.name = "fcn8"
    c.batch_size = 32
    c.eval_batch_size = 250
    c.num_epochs = 12
    c.eval_every = 6
    c.optimizer.lr = 0.1
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (10,)
    c.schedule.factors = (0.1,)
    return c
