"""Subprocess worker of tests/test_preemption.py: a short digits run, optionally stopped by a
SIGTERM it sends itself at a fixed batch (so the stop lands mid-epoch, deterministically).

  python tests/_preempt_worker.py --devices N --workdir DIR [--seeds 0,1]
      [--signal_at EPOCH,STEP] [--signal SIGTERM]

Exit codes as experiments.train: 0 done, 75 stopped and checkpointed.
"""

import argparse
import os
import signal
import sys

from _worker_env import cpu_devices  # tests/: sys.path[0] of a worker


def worker_config():
    """The short digits run of the preemption workers (3 epochs of 7 batches of 64)."""
    from experiments.configs import digits

    c = digits.get_config()
    c.num_epochs, c.eval_every, c.progress = 3, 1, False
    c.model.width = 8
    c.batch_size = 64
    c.schedule.boundaries, c.schedule.factors, c.schedule.warmup_epochs = (2,), (0.1,), 1.0
    return c


class Stopping:
    """A pipeline that sends its process ``signum`` after yielding batch ``at`` =
    (epoch, index), so a stop lands mid-epoch at a fixed place."""

    def __init__(self, inner, at, signum=signal.SIGTERM):
        self._inner, self._at, self._signum = inner, at, signum

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def train_epoch(self, epoch):
        for i, b in enumerate(self._inner.train_epoch(epoch)):
            yield b
            if (epoch, i) == self._at:
                os.kill(os.getpid(), self._signum)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="")
    p.add_argument("--signal_at", default="")
    p.add_argument("--signal", default="SIGTERM")
    p.add_argument("--steps_per_call", type=int, default=1)
    args = p.parse_args()
    cpu_devices(args.devices)  # before JAX is imported

    from cce_jax import data as data_lib
    from cce_jax import training

    c = worker_config()
    c.steps_per_call = args.steps_per_call
    seeds = tuple(int(s) for s in args.seeds.split(",") if s)
    c.seeds = seeds

    from cce_jax import parallel

    mesh = parallel.make_mesh()
    kw = dict(global_batch_size=c.batch_size, eval_batch_size=c.eval_batch_size, mesh=mesh)
    pipes = []
    for s in seeds or (int(c.seed),):
        dcfg = c.data.copy_and_resolve_references()
        if seeds:
            dcfg.subset_seed = s
        pipes.append(data_lib.build(dcfg, seed=s, **kw))
    if args.signal_at:
        at = tuple(int(x) for x in args.signal_at.split(","))
        pipes[0] = Stopping(pipes[0], at, getattr(signal, args.signal))
    try:
        training.train_and_evaluate(c, args.workdir, data=pipes if seeds else pipes[0])
    except training.Preempted as e:
        print(e, flush=True)
        sys.exit(training.EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
