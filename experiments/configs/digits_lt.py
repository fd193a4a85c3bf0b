"""Imbalanced digits, the comparison of the losses in a few minutes on a CPU (draft)."""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.source = "digits"
    c.data.name = None
    c.data.profile = "exp"
    c.data.ratio = 20.0
    c.model.name = "resnet8"
    c.model.width = 16
    c.batch_size = 32
    c.eval_batch_size = 256
    c.num_epochs = 15
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.progress = False
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 5e-4
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (10, 13)
    c.schedule.factors = (0.1, 0.01)
    return c
