"""Imbalanced 8x8 digits: the losses side by side in minutes on a 2-core CPU.

  python -m experiments.reproduce --suite=digits      # ce, cce (both signs), mse_ol, la, bs

digits.py at ratio 50 (321 training images, 116 to 2 per class), the full test split, 15
epochs; test metrics and a checkpoint only at the end.
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
    c.update(num_epochs=15, eval_every=1000, checkpoint_every=1000, progress=False)
    c.schedule.update(warmup_epochs=1.0, boundaries=(10, 13), factors=(0.1, 0.01))
    return common.finish(c, arg)
