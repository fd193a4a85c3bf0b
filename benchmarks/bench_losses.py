"""Forward+backward time of every cce_jax loss, as a ratio to optax's cross entropy.

    python -m benchmarks.bench_losses [--repeats 200] [--markdown]

For each shape, every loss is timed as ``jit(value_and_grad(mean(loss)))`` on the default
backend (CPU here, GPU/TPU when present) and divided by the time of
``optax.losses.softmax_cross_entropy_with_integer_labels`` measured the same way in the same
run. Each timing is the median over ``repeats`` calls, after compilation, of the best of
5 interleaved rounds, so background load hits the baseline and the loss alike.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cce_jax import losses

SHAPES = {
    "B=1024,K=10": ((1024,), 10),
    "B=1024,K=100": ((1024,), 100),
    "seg 8x64x64,K=19": ((8, 64, 64), 19),
}


def _timer(fn, z, y, repeats):
    grad_fn = jax.jit(jax.value_and_grad(lambda zz: jnp.mean(fn(zz, y))))
    jax.block_until_ready(grad_fn(z))  # compile

    def run():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(grad_fn(z))
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    print(
        f"backend={jax.default_backend()} devices={jax.devices()} jax={jax.__version__} "
        f"machine={platform.machine()} cpus={__import__('os').cpu_count()}"
    )
    rows = {}
    for shape_name, (lead, k) in SHAPES.items():
        rng = np.random.default_rng(0)
        z = jnp.asarray(rng.normal(size=lead + (k,)) * 3, jnp.float32)
        y = jnp.asarray(rng.integers(0, k, size=lead), jnp.int32)
        counts = np.sort(rng.integers(10, 5000, size=k))[::-1]
        fns = {"optax_ce": optax.losses.softmax_cross_entropy_with_integer_labels}
        for name in losses.NAMES:
            if name not in losses.PRESETS:  # cce_paper, cce_code: `cce` with fixed hparams
                fns[name] = losses.get(name, class_counts=counts)
        timers = {name: _timer(fn, z, y, args.repeats) for name, fn in fns.items()}
        best = {name: float("inf") for name in fns}
        for _ in range(args.rounds):
            for name, run in timers.items():
                best[name] = min(best[name], run())
        rows[shape_name] = best

    names = list(next(iter(rows.values())))
    if args.markdown:
        print("| loss | " + " | ".join(SHAPES) + " |")
        print("|---|" + "---|" * len(SHAPES))
        for name in names:
            cells = []
            for shape_name in SHAPES:
                t = rows[shape_name][name]
                ratio = t / rows[shape_name]["optax_ce"]
                cells.append(f"{ratio:.2f}x ({t * 1e6:.0f} us)")
            print(f"| {name} | " + " | ".join(cells) + " |")
    else:
        for shape_name in SHAPES:
            base = rows[shape_name]["optax_ce"]
            print(f"\n{shape_name}: optax CE fwd+bwd {base * 1e6:.1f} us")
            for name in names:
                t = rows[shape_name][name]
                print(f"  {name:10s} {t * 1e6:9.1f} us  ratio {t / base:5.2f}")


if __name__ == "__main__":
    main()
