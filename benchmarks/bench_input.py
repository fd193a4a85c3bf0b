"""Input-pipeline throughput: the tf.data pipeline against the device pipeline, in one run.

  python -m benchmarks.bench_input [--archive ../shared/data/cifar10-jpeg.tar.gz] [--reps=3]

CIFAR-10-LT (offline JPEG copy, exp profile, ratio 100), batch 128, pad-crop-flip, the two
pipelines alternated ``--reps`` times: images/s of each alone and feeding the trainer's
ResNet-8 (width 16) step, each as a ratio device / tf (> 1: the device pipeline is faster).
"""

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow/JAX load
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def rate(d, epoch: int, steps: int, step=None, state=None, mesh=None):
    """(images/s, state) of ``steps`` train batches of ``epoch``, fed to ``step`` if given."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    n, pending = 0, None
    t0 = time.perf_counter()
    for i, b in enumerate(itertools.islice(d.train_epoch(epoch), steps)):
        n += b["label"].shape[0]
        if step is not None:
            if not isinstance(b["image"], jax.Array):  # tf: numpy batches
                b = jax.device_put(b, NamedSharding(mesh, PartitionSpec("data")))
            state, b = step(state, b)  # b: the step's metrics
        if step is not None or i % 4 == 3:  # one step in flight, as the trainer does
            jax.block_until_ready(pending)
        pending = b
    jax.block_until_ready(pending)
    return n / (time.perf_counter() - t0), state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--cache_dir", default="~/.cache/cce_jax")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--alone_steps", type=int, default=96, help="batches per 'alone' timing")
    p.add_argument("--train_steps", type=int, default=24, help="steps per 'with step' timing")
    p.add_argument("--width", type=int, default=16, help="ResNet-8 width of the step")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions")
    args = p.parse_args(argv)

    import jax

    from benchmarks.bench_train_step import _setup
    from cce_jax import data, parallel

    mesh = parallel.make_mesh()
    where = f"{len(jax.devices())} {jax.default_backend()} device(s), {os.cpu_count()} cpu cores"
    print(f"jax {jax.__version__}, {where}, batch {args.batch_size}")
    cfg = data.default_config()
    cfg.source, cfg.cache_dir = f"cifar10_jpeg:{args.archive}", args.cache_dir
    cfg.profile, cfg.ratio = "exp", args.ratio
    t0 = time.perf_counter()
    raw = data.load_source(cfg)
    print(f"load (extract + Pillow decode, or the cached .npz): {time.perf_counter() - t0:.1f}s")
    kw = dict(seed=0, global_batch_size=args.batch_size, eval_batch_size=500, raw=raw, mesh=mesh)
    pipes = {}
    for kind in ("tf", "device"):
        cfg.pipeline = kind
        pipes[kind] = data.build(cfg, **kw)
    info = pipes["tf"].info
    _, state, step = _setup("resnet8", info.num_classes, "float32", args.width, info.image_shape)
    for d in pipes.values():  # warm-up: the tf.data graph, the compiles
        rate(d, 0, 8)
        _, state = rate(d, 0, 3, step, state, mesh)
    alone, with_step = ({k: [] for k in pipes} for _ in range(2))
    for r, (kind, d) in itertools.product(range(args.reps), pipes.items()):
        alone[kind].append(rate(d, 1 + r, args.alone_steps)[0])
        ips, state = rate(d, 1 + r, args.train_steps, step, state, mesh)
        with_step[kind].append(ips)
    for title, rates in (("pipeline alone", alone), ("pipeline + ResNet-8 step", with_step)):
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{title}:")
        for k, v in rates.items():
            reps = ", ".join(f"{x:.0f}" for x in v)
            print(f"  {k:6s} median {med[k]:10.0f} images/s   (reps: {reps})")
        print(f"  ratio device / tf: {med['device'] / med['tf']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
