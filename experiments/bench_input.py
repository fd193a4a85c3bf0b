"""Input-pipeline throughput of cce_jax.data against the ResNet-32 train step.

Measures, on the offline CIFAR-10 JPEG copy:
  * the one-time extract + decode into the cache (skipped when the cache already exists),
  * train-pipeline images/s (augment + normalise + batch, from the in-memory uint8 arrays)
    for the exp ratio-100 split and the full balanced ('none') split,
  * the jitted ResNet-32 train step's images/s (cce_jax.training.step_throughput), if present,
and prints the ratio pipeline / step (goal: >= 5).

    python experiments/bench_input.py [--archive ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def pipeline_throughput(d, epochs: int) -> tuple[float, float]:
    """(steady images/s over epochs 1..epochs, images/s of the first epoch incl. warm-up)."""
    t0 = time.perf_counter()
    n = sum(b["label"].shape[0] for b in d.train_epoch(0))
    first = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    n = 0
    for e in range(1, epochs + 1):
        for b in d.train_epoch(e):
            n += b["label"].shape[0]
    return n / (time.perf_counter() - t0), first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", default=str(REPO.parent / "shared/data/cifar10-jpeg.tar.gz"))
    p.add_argument("--cache_dir", default="~/.cache/cce_jax")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after a warm-up epoch")
    p.add_argument("--steps", type=int, default=10, help="timed ResNet-32 train steps")
    args = p.parse_args(argv)

    from cce_jax import data

    print(f"cpu cores: {os.cpu_count()}, batch {args.batch_size}")
    t0 = time.perf_counter()
    data._load_cifar10_jpeg(args.archive, args.cache_dir)  # extract + decode once (cached)
    print(f"load (extract + decode, or cached .npz): {time.perf_counter() - t0:.1f}s")

    rates = {}
    for profile in ("exp", "none"):
        cfg = data.default_config()
        cfg.source = f"cifar10_jpeg:{args.archive}"
        cfg.cache_dir = args.cache_dir
        cfg.profile = profile
        cfg.ratio = 100.0
        d = data.build(cfg, seed=0, global_batch_size=args.batch_size, eval_batch_size=500)
        rate, first = pipeline_throughput(d, args.epochs)
        rates[profile] = rate
        print(f"pipeline {profile:4s} (ratio 100) n_train={d.info.num_train:6d}: "
              f"{rate:9.0f} images/s  (first epoch incl. warm-up: {first:.0f} images/s)")

    try:
        from cce_jax.training import step_throughput
    except ImportError:
        print("step: n/a (cce_jax.training.step_throughput not available)")
        return 0
    import jax

    step = step_throughput(model_name="resnet32", batch_size=args.batch_size,
                           num_steps=args.steps)
    print(f"step resnet32 ({jax.devices()[0].platform}): {step:9.0f} images/s")
    for profile, rate in rates.items():
        print(f"ratio pipeline/step ({profile}): {rate / step:.1f}x "
              f"({'ok' if rate >= 5 * step else 'BELOW'} the 5x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
