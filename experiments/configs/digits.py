"""The main job: the embedded (offline) 8x8 digits, imbalanced, small ResNet.

  python -m experiments.train --config=experiments/configs/digits.py --workdir=/tmp/digits

scikit-learn's digits (10 classes, 8x8x1). Applies the exp profile with ratio 10 to the
training part: on your own data set, ``--config.data.profile=none`` keeps every image.
ResNet-8 (16/32/64 channels), CE, 30 epochs. Prints the final test top-1 and balanced
accuracy, a per-class table and post-hoc logit adjustment.
"""

from experiments.configs import common, default


def get_config(arg=None):
    c = default.get_config()
    c.data.source = "digits"
    c.data.profile = "exp"
    c.data.ratio = 10.0
    c.model.name = "resnet8"
    c.model.width = 16
    c.batch_size = 32
    c.eval_batch_size = 256
    c.num_epochs = 30
    c.eval_every = 5
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 5e-4
    c.schedule.warmup_epochs = 2.0
    c.schedule.boundaries = (20, 25)
    c.schedule.factors = (0.1, 0.01)
    return common.finish(c, arg)
