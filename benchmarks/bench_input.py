"""Input-pipeline throughput: the tf.data pipeline against the device pipeline, in one run.

On CIFAR-10-LT-sized data (the offline CIFAR-10 JPEG copy, exp profile, ratio 100: 12,406
training images, batch 128, pad-crop-flip on) it measures, alternating the two pipelines
``--reps`` times so both see the same machine load:

  * pipeline alone: images/s of producing the train batches (tf: numpy batches on the host;
    device: batches on the device, waited for every few steps),
  * pipeline + step: images/s of a jitted ResNet-8 (width 16: the cifar10_lt_quick model)
    SGD train step fed by the pipeline (tf batches are transferred with
    ``jax.device_put``; device batches are used as they are),

and prints every figure as a ratio device / tf (> 1: the device pipeline is faster).

    python benchmarks/bench_input.py [--archive ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

# Before TensorFlow/JAX load: no oneDNN/absl start-up chatter (a user's own setting wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

REPO = pathlib.Path(__file__).resolve().parents[1]


def pipeline_alone(d, epoch: int, max_steps: int) -> float:
    """images/s of producing up to `max_steps` train batches of `epoch`."""
    import jax

    n, last = 0, None
    t0 = time.perf_counter()
    for i, b in enumerate(d.train_epoch(epoch)):
        if i >= max_steps:
            break
        n += b["label"].shape[0]
        if i % 4 == 3:  # bounded queue (and no deadlock on simulated devices)
            jax.block_until_ready(b)
        last = b
    jax.block_until_ready(last)
    return n / (time.perf_counter() - t0)


def make_step(num_classes: int, image_shape, width: int, mesh):
    """A jitted SGD step of ResNet-8 (`width`) with CE loss, state replicated on `mesh`."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from cce_jax import models

    model = models.get_model("resnet8", num_classes=num_classes, width=width)
    tx = optax.sgd(0.05, momentum=0.9)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    rep = NamedSharding(mesh, P())
    state = jax.device_put(
        (variables["params"], variables["batch_stats"], tx.init(variables["params"])), rep
    )

    def step(state, batch):
        params, stats, opt = state

        def loss_fn(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
            return loss.mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), loss

    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0), state


def pipeline_with_step(d, step, state, epoch: int, max_steps: int, mesh):
    """(images/s, state) of `max_steps` train steps fed by `d`."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sharding = NamedSharding(mesh, P("data"))
    n, pending = 0, None
    t0 = time.perf_counter()
    for i, b in enumerate(d.train_epoch(epoch)):
        if i >= max_steps:
            break
        if not isinstance(b["image"], jax.Array):
            b = jax.device_put(b, sharding)
        state, loss = step(state, b)
        if pending is not None:
            jax.block_until_ready(pending)  # one step in flight, as the trainer does
        pending = loss
        n += b["label"].shape[0]
    jax.block_until_ready(pending)
    return n / (time.perf_counter() - t0), state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", default=str(REPO.parent / "shared/data/cifar10-jpeg.tar.gz"))
    p.add_argument("--cache_dir", default="~/.cache/cce_jax")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--alone_steps", type=int, default=96, help="batches per 'alone' timing")
    p.add_argument("--train_steps", type=int, default=24, help="steps per 'with step' timing")
    p.add_argument("--width", type=int, default=16, help="ResNet-8 width of the step")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions")
    args = p.parse_args(argv)

    import jax

    from cce_jax import data

    mesh = data.default_mesh()
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {len(jax.devices())} "
        f"device(s), {os.cpu_count()} cpu cores, batch {args.batch_size}"
    )
    cfg = data.default_config()
    cfg.source = f"cifar10_jpeg:{args.archive}"
    cfg.cache_dir = args.cache_dir
    cfg.profile, cfg.ratio = "exp", args.ratio
    t0 = time.perf_counter()
    raw = data.load_source(cfg)
    print(f"load (extract + Pillow decode, or the cached .npz): {time.perf_counter() - t0:.1f}s")
    pipes = {}
    for kind in ("tf", "device"):
        cfg.pipeline = kind
        t0 = time.perf_counter()
        pipes[kind] = data.build(
            cfg, seed=0, global_batch_size=args.batch_size, eval_batch_size=500, raw=raw, mesh=mesh
        )
        print(
            f"build {kind:6s}: {time.perf_counter() - t0:.2f}s  "
            f"(n_train {pipes[kind].info.num_train}, {pipes[kind].steps_per_epoch} steps)"
        )
    info = pipes["tf"].info
    step, state = make_step(info.num_classes, info.image_shape, args.width, mesh)

    # Warm-up: tf.data graph, device-pipeline compiles, the train step's compile.
    for kind, d in pipes.items():
        pipeline_alone(d, 0, 8)
        _, state = pipeline_with_step(d, step, state, 0, 3, mesh)

    alone = {k: [] for k in pipes}
    with_step = {k: [] for k in pipes}
    for r in range(args.reps):
        for kind, d in pipes.items():
            alone[kind].append(pipeline_alone(d, 1 + r, args.alone_steps))
            rate, state = pipeline_with_step(d, step, state, 1 + r, args.train_steps, mesh)
            with_step[kind].append(rate)

    def show(title, rates):
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{title}:")
        for k, v in rates.items():
            print(
                f"  {k:6s} median {med[k]:10.0f} images/s   (reps: "
                + ", ".join(f"{x:.0f}" for x in v)
                + ")"
            )
        print(f"  ratio device / tf: {med['device'] / med['tf']:.2f}")
        return med

    show("pipeline alone", alone)
    show(f"pipeline + ResNet-8 (width {args.width}) train step", with_step)
    print(f"auto picks: {data.choose_pipeline('auto')!r} on {jax.default_backend()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
