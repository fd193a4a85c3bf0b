"""Forward+backward time of every cce_jax loss, as a ratio to optax's cross entropy.

    python -m benchmarks.bench_losses [--repeats 200] [--rounds 5]

Each loss: ``jit(value_and_grad(mean(loss)))`` on the default backend, the median over
``repeats`` calls after compilation, the best of ``rounds`` interleaved rounds, divided by
the time of ``optax.losses.softmax_cross_entropy_with_integer_labels`` in the same run.
Prints a markdown table.
"""

import argparse
import platform
import timeit

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cce_jax import losses

SHAPES = {"B=1024,K=10": ((1024,), 10), "B=1024,K=100": ((1024,), 100),
          "seg 8x64x64,K=19": ((8, 64, 64), 19)}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} jax={jax.__version__} machine={platform.machine()}")
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
        mean = lambda f: lambda zz: jnp.mean(f(zz, y))  # noqa: E731
        grads = {n: jax.jit(jax.value_and_grad(mean(f))) for n, f in fns.items()}
        jax.block_until_ready([g(z) for g in grads.values()])  # compile
        rows[shape_name] = {n: float("inf") for n in fns}
        for name, g in [*grads.items()] * args.rounds:  # interleaved rounds
            times = timeit.repeat(
                lambda g=g: jax.block_until_ready(g(z)), number=1, repeat=args.repeats
            )
            rows[shape_name][name] = min(rows[shape_name][name], float(np.median(times)))
    print("| loss | " + " | ".join(SHAPES) + " |\n|---|" + "---|" * len(SHAPES))
    for name in rows[next(iter(SHAPES))]:
        times = [(rows[sh][name], rows[sh]["optax_ce"]) for sh in SHAPES]
        cells = [f"{t / base:.2f}x ({t * 1e6:.0f} us)" for t, base in times]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
