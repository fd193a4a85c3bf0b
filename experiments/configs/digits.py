"""The main job: the embedded (offline) 8x8 digits, imbalanced (exp profile, ratio 10).

  python -m experiments.train --config=experiments/configs/digits.py --workdir=/tmp/digits

ResNet-8 (width 16), CE, 30 epochs; ``--config.data.profile=none`` keeps every image.
"""

from experiments.configs import common, default


def get_config(arg=None):
    c = default.get_config()
    c.data.update(source="digits", profile="exp", ratio=10.0)
    c.model.update(name="resnet8", width=16)
    c.update(batch_size=32, eval_batch_size=256, num_epochs=30, eval_every=5)
    c.optimizer.update(lr=0.05, weight_decay=5e-4)
    c.schedule.update(warmup_epochs=2.0, boundaries=(20, 25), factors=(0.1, 0.01))
    return common.finish(c, arg)
