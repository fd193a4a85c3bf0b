"""Imbalanced 8x8 digits: the losses side by side in minutes on a 2-core CPU.

  python -m experiments.reproduce --suite=digits      # ce, cce (both signs), mse_ol, la, bs

scikit-learn's embedded digits (10 classes, 8x8x1, no download), exp profile with imbalance
ratio 50 on the training part (116 images in the largest class, 2 in the smallest, 321 in
all); the full test split (596 images, 58-61 per class). ResNet-8 (width 16), batch 32,
SGD lr 0.05 (momentum 0.9, weight decay 5e-4), 1 warm-up epoch, 15 epochs with lr x0.1 from
epoch 10 and x0.01 from 13. Test metrics only after the last epoch and one checkpoint at the
end (``eval_every``/``checkpoint_every`` are run-control keys): a run is mostly start-up and
compilation, so per-epoch extras would be a large share of it.

Why ratio 50: measured with 2 seeds (balanced accuracy %, ce / cce_paper / cce_code / mse_ol /
la / bs): ratio 10: 93.8 / 93.2 / 93.6 / 95.3 / 95.0 / 95.1 (differences within the seed
spread); ratio 20: 92.6 / 91.7 / 89.8 / 95.0 / 94.0 / 94.1; ratio 50: 85.1 / 84.3 / 80.1 /
92.2 / 91.7 / 91.6, the rare classes make the difference (few-shot 72 for ce, 86 for mse_ol).
A run is mostly start-up and compilation; measured times (with date and machine):
docs/training.md, "Configs".
"""

from experiments.configs import digits


def get_config():
    # digits.py (data source, model, batch, optimizer) at ratio 50, 15 epochs.
    c = digits.get_config()
    c.data.ratio = 50.0
    c.num_epochs = 15
    c.schedule.warmup_epochs = 1.0
    c.schedule.boundaries = (10, 13)
    c.schedule.factors = (0.1, 0.01)
    # Run control: test metrics and a checkpoint only at the end (see above).
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.progress = False
    return c
