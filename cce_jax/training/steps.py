"""The train state and the jitted train and eval steps over a 1-D ``"data"`` mesh: state
replicated, batches sharded on their batch axis (XLA inserts the all-reduces, so the loss and
BatchNorm's moments are the global batch's; docs/training.md)."""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cce_jax import metrics as metrics_lib
from cce_jax.parallel import batch_sharding, shard_batch, to_host


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # number of batches trained on
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(model, tx, rng, image_shape, mesh) -> TrainState:
    """The state replicated on ``mesh``; with S stacked keys ``rng``, S states (``jax.vmap``,
    state i equals the state made from key i alone)."""

    def init(key):
        variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

    fn = init if jnp.ndim(rng) == 0 else jax.vmap(init)
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))(rng)


def _valid_mean(values, labels, num_classes: int):
    """The batch mean; for label maps the mean over the pixels whose label is a class (0 when
    none)."""
    if labels.ndim <= 1:
        return jnp.mean(values)
    valid = (labels >= 0) & (labels < num_classes)
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)


def make_train_step(model, tx, mesh, loss_fns, *, num_models=None, steps_per_call=1, donate=True):
    """``train_step(state, batch) -> (state, metrics)``, jitted over ``mesh``: one SGD step
    per loss fn ``fn(logits, labels)``, in order (COT: CE, then ``-H_c / K``). ``metrics``:
    ``loss``, ``accuracy``, ``grad_norm`` of the first, ``loss_{i}`` of the later ones.
    ``num_models=S``: vmapped over S models; ``steps_per_call=N``: a scan over N batches."""
    step = functools.partial(_train_step, model, tx, tuple(loss_fns))
    if num_models is not None:
        step = jax.vmap(step)
    if steps_per_call > 1:  # batches [N, ...]: N steps, in order
        step = functools.partial(jax.lax.scan, step)

    replicated = NamedSharding(mesh, P())
    leading = (num_models is not None) + (steps_per_call > 1)
    return jax.jit(
        step,
        in_shardings=(replicated, batch_sharding(mesh, leading)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,) if donate else (),
    )


def _train_step(model, tx, loss_fns, state, batch):
    metrics, labels = {}, batch["label"]
    for i, loss_fn in enumerate(loss_fns):

        def objective(params):  # called at once: state and loss_fn are this round's
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, new = model.apply(
                variables, batch["image"], train=True, mutable=["batch_stats"]
            )
            loss = _valid_mean(loss_fn(logits, labels), labels, logits.shape[-1])
            return loss, (logits, new["batch_stats"])

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
        grad_norm = optax.tree.norm(grads)
        if i == 0:
            hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
            accuracy = _valid_mean(hit, labels, logits.shape[-1])
            metrics.update(loss=loss, grad_norm=grad_norm, accuracy=accuracy)
        else:
            metrics[f"loss_{i}"] = loss
    return state.replace(step=state.step + 1), metrics


def make_eval_step(model, mesh, class_counts, *, num_models=None):
    """``eval_step(state, batch) -> confusion matrices`` (int32 ``[(S,) T, K, K]``), jitted:
    matrix t counts ``argmax(logits - POSTHOC_TAUS[t] * log(prior))``, the prior from
    ``class_counts``. Label maps count pixels; ignore pixels and ``mask`` False count nothing."""
    counts = np.asarray(class_counts, np.float64)
    log_prior = jnp.asarray(np.log(np.maximum(counts, 1e-12) / counts.sum()), jnp.float32)
    taus = jnp.asarray(metrics_lib.POSTHOC_TAUS, jnp.float32)

    def eval_step(state, batch):
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
        ).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"]
        adjusted = logits[None] - taus.reshape((-1,) + (1,) * logits.ndim) * log_prior
        pred = jnp.argmax(adjusted, -1)  # [T, B(, H, W)]
        zeros = jnp.zeros((len(counts),) * 2, jnp.int32)
        return jax.vmap(lambda p: metrics_lib.confusion_update(zeros, labels, p, mask))(pred)

    fn = eval_step if num_models is None else jax.vmap(eval_step)
    return jax.jit(
        fn,
        in_shardings=(NamedSharding(mesh, P()), batch_sharding(mesh, num_models is not None)),
        out_shardings=NamedSharding(mesh, P()),
    )


def evaluate(eval_step, state, batches, mesh, class_counts, num_models=None, task=""):
    """Full-split metrics with post-hoc logit adjustment (:func:`cce_jax.metrics.posthoc`);
    with ``num_models=S`` a list of S dicts."""
    total = None
    for batch in batches:
        batch = {"mask": np.ones(np.shape(batch["label"]), bool), **batch}
        cm = to_host(eval_step(state, shard_batch(batch, mesh, num_models is not None)))
        total = cm.astype(np.int64) if total is None else total + cm
    if total is None:
        raise ValueError("evaluate: no eval batches")
    if num_models is None:
        return metrics_lib.posthoc(total, class_counts, task)
    return [metrics_lib.posthoc(cms, class_counts, task) for cms in total]
