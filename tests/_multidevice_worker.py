"""Subprocess worker of tests/test_multidevice.py: a few train steps on fixed data.

  python tests/_multidevice_worker.py --devices N --out FILE.npz
      [--coordinator HOST:PORT --num_processes P --process_id I]

Sets XLA_FLAGS before importing JAX so the CPU platform has N devices (per process), runs
``steps`` train steps of a small ResNet on a fixed global batch (each process feeds its
slice), evaluates a fixed test batch and writes params, BatchNorm statistics, the per-step
metrics and the confusion matrix to FILE.npz (process 0 only).
"""

import argparse
import sys

from _worker_env import cpu_devices  # tests/: sys.path[0] of a worker


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cot", action="store_true")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    args = p.parse_args()

    cpu_devices(args.devices)  # before JAX is imported

    import jax  # noqa: E402

    jax.config.update("jax_enable_x64", False)
    if args.coordinator:
        from cce_jax import parallel

        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    import ml_collections  # noqa: E402
    import numpy as np  # noqa: E402
    import optax  # noqa: E402

    from cce_jax import models, parallel  # noqa: E402
    from cce_jax.training import optimizer, steps  # noqa: E402

    assert jax.device_count() == args.devices * args.num_processes, jax.devices()

    K, B, H = 5, 16, 8
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.steps, B, H, H, 3)).astype(np.float32)
    labels = rng.integers(0, K, (args.steps, B)).astype(np.int32)
    test_x = rng.standard_normal((B, H, H, 3)).astype(np.float32)
    test_y = rng.integers(0, K, B).astype(np.int32)

    cfg = ml_collections.ConfigDict()
    cfg.num_epochs = 10
    cfg.loss = {"name": "cot" if args.cot else "ce"}
    cfg.optimizer = {
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "decay_all": False,
    }
    cfg.schedule = {"name": "step", "warmup_epochs": 0.0, "boundaries": (), "factors": ()}

    mesh = parallel.make_mesh()
    model = models.get_model("resnet8", num_classes=K, width=4)
    tx = optimizer.make_optimizer(cfg, steps_per_epoch=args.steps)

    def ce(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    def neg_complement(logits, y):  # -H_c / K, written out here (no cce_jax.losses dependency)
        p = jax.nn.softmax(logits)
        py = jnp.take_along_axis(p, y[:, None], -1)
        q = p / (1.0 - py + 1e-7)
        off = 1.0 - jax.nn.one_hot(y, K)
        return jnp.sum(off * q * jnp.log(q + 1e-10), -1) / K

    import jax.numpy as jnp  # noqa: E402

    fns = (ce, neg_complement) if args.cot else (ce,)
    state = steps.create_train_state(model, tx, jax.random.key(0), (H, H, 3), mesh)
    step = steps.make_train_step(model, tx, mesh, fns)
    counts = np.array([200, 50, 50, 10, 10])
    eval_step = steps.make_eval_step(model, mesh, counts)

    pi, pc = jax.process_index(), jax.process_count()
    lb = B // pc
    sl = slice(pi * lb, (pi + 1) * lb)
    losses, accs = [], []
    for s in range(args.steps):
        batch = {"image": images[s, sl], "label": labels[s, sl]}
        state, m = step(state, parallel.shard_batch(batch, mesh))
        jax.block_until_ready(m)
        losses.append(float(parallel.to_host(m["loss"])))
        accs.append(float(parallel.to_host(m["accuracy"])))
    ev = steps.evaluate(
        eval_step,
        state,
        [{"image": test_x[sl], "label": test_y[sl], "mask": np.arange(B)[sl] < 13}],
        mesh,
        counts,
    )

    flat = {}
    for name, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            flat[name + jax.tree_util.keystr(path)] = parallel.to_host(leaf)
    flat["losses"] = np.array(losses)
    flat["accs"] = np.array(accs)
    flat["confusion"] = np.array(ev["confusion_matrix"])
    flat["step"] = parallel.to_host(state.step)
    if pi == 0:
        np.savez(args.out, **flat)
    print("ok", jax.device_count(), pc, losses, file=sys.stderr)
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
