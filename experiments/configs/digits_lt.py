"""Imbalanced 8x8 digits: the losses side by side in minutes on a 2-core CPU.

  python -m experiments.reproduce --suite=digits      # ce, cce (both signs), mse_ol, la, bs

digits.py at imbalance ratio 50 (the exp profile; ``data.profile=none`` keeps every image of
your own data): 116 training images in the largest class, 2 in the smallest, 321 in all; the
full test split (596 images). 15 epochs, lr x0.1 from epoch 10 and x0.01 from 13; test
metrics and a checkpoint only at the end (a run is mostly start-up and compilation). At ratio
10 the losses differ within the seed spread; at 50 the rare classes make the difference.
"""

from experiments.configs import common, digits

SUITE = dict(
    workdir=f"{common.TMP}/cce_jax_digits",
    jobs=2,
    label="imbalanced 8x8 digits, a quick comparison of the losses (small protocol for a "
    "CPU, not a paper protocol)",
)


def sweep(losses=("ce", "cce_paper", "cce_code", "mse_ol", "la", "bs"), ratios=(50,), seeds=(0, 1)):
    """``--suite=digits``: six losses at ratio 50, 2 seeds."""
    return common.grid(losses, ratios, seeds)


def get_config(arg=None):
    c = digits.get_config()
    c.data.ratio = 50.0
    c.num_epochs = 15
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (10, 13)
    c.schedule.factors = (0.1, 0.01)
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.progress = False
    return common.finish(c, arg)
