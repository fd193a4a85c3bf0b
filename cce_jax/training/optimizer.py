"""The learning-rate schedule and the optimizer, composed from optax pieces."""

from typing import Callable

import jax
import optax


def make_lr_schedule(config, steps_per_epoch: int, updates_per_step: int = 1) -> Callable:
    """``lr(count)`` from ``config.optimizer.lr`` and ``config.schedule`` (docs/training.md):
    ``"step"`` (from epoch ``boundaries[i]`` on, ``lr * factors[i]``), ``"cosine"`` (to 0 after
    the warm-up) or ``"constant"``, times a linear warm-up over ``schedule.warmup_epochs``.
    ``count`` counts optimizer updates, ``updates_per_step`` per batch (COT: 2).
    """
    base, sch, spe = float(config.optimizer.lr), config.schedule, int(steps_per_epoch)
    warm = int(round(float(sch.warmup_epochs) * spe))
    total = int(config.num_epochs) * spe
    if sch.name == "step":
        boundaries = [int(round(float(b) * spe)) for b in sch.boundaries]
        levels = [base] + [base * float(f) for f in sch.factors]
        main = optax.join_schedules([optax.constant_schedule(v) for v in levels], boundaries)
    elif sch.name == "cosine":
        cosine = optax.cosine_decay_schedule(base, max(total - warm, 1))
        main = optax.join_schedules([optax.constant_schedule(base), cosine], [warm])
    elif sch.name == "constant":
        main = optax.constant_schedule(base)
    else:
        raise ValueError(f"schedule.name={sch.name!r}: expected step, cosine or constant")
    warmup = optax.linear_schedule(1.0 / warm, 1.0, warm - 1) if warm > 1 else None

    def schedule(count):
        step = count // updates_per_step
        lr = main(step)
        return lr if warmup is None else lr * warmup(step)

    return schedule


def decay_mask(params):
    """Weight decay on conv and dense kernels only (not BatchNorm scale/bias, not biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD + momentum with coupled L2 weight decay (PyTorch ``SGD(weight_decay=...)``) on the
    kernels (:func:`decay_mask`), or on every parameter with ``optimizer.decay_all``."""
    from cce_jax.training.config import is_cot

    opt = config.optimizer
    schedule = make_lr_schedule(config, steps_per_epoch, 2 if is_cot(config) else 1)
    mask = None if opt.get("decay_all", False) else decay_mask
    return optax.chain(
        optax.add_decayed_weights(float(opt.weight_decay), mask=mask),
        optax.sgd(schedule, momentum=float(opt.momentum) or None, nesterov=bool(opt.nesterov)),
    )
