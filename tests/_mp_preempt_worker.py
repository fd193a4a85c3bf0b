"""Subprocess worker of tests/test_multiprocess_preemption.py: one process of a short
multi-process digits run (jax.distributed, gloo CPU collectives, one shared workdir),
optionally stopped by a SIGTERM that THIS process sends itself at a fixed batch; from then on
it reads each batch 0.25 s late, so the run is still going when JAX's preemption service
(which polls about once a second) has agreed on the step to stop at.

  python tests/_mp_preempt_worker.py --workdir DIR --coordinator HOST:PORT
      --num_processes P --process_id I [--devices N] [--signal_at EPOCH,STEP]

Exit codes as experiments.train: 0 done, 75 stopped and checkpointed. Prints
``stop: <message>`` when stopped and ``done: checkpoint <step>`` when finished.
"""

import argparse
import os
import sys
import time

from _worker_env import cpu_devices  # tests/: sys.path[0] of a worker


class Slow:
    """A pipeline whose batches come 0.25 s late once its SIGTERM was sent."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def train_epoch(self, epoch):
        for i, b in enumerate(self._inner.train_epoch(epoch)):
            yield b
            if (epoch, i) >= self._inner._at:
                time.sleep(0.25)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--coordinator", required=True)
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--signal_at", default="")
    args = p.parse_args()
    cpu_devices(args.devices)  # before JAX is imported
    from _preempt_worker import Stopping, worker_config  # this folder: sys.path[0]

    from cce_jax import parallel, training

    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    import jax

    from cce_jax import data as data_lib

    assert jax.process_count() == args.num_processes, jax.process_count()
    assert jax.device_count() == args.devices * args.num_processes, jax.devices()

    c = worker_config()
    c.data.pipeline = "device"

    from cce_jax import parallel

    mesh = parallel.make_mesh()
    pipe = data_lib.build(
        c.data,
        seed=int(c.seed),
        global_batch_size=c.batch_size,
        eval_batch_size=c.eval_batch_size,
        mesh=mesh,
    )
    print(f"steps_per_epoch: {pipe.steps_per_epoch}", flush=True)
    if args.signal_at:
        pipe = Slow(Stopping(pipe, tuple(int(x) for x in args.signal_at.split(","))))
    try:
        training.train_and_evaluate(c, args.workdir, data=pipe)
    except training.Preempted as e:
        print(f"stop: {e}", flush=True)
        sys.exit(training.EXIT_PREEMPTED)
    ckpts = os.path.join(args.workdir, "checkpoints")
    last = max(int(n) for n in os.listdir(ckpts) if n.isdigit())
    print(f"done: checkpoint {last}", flush=True)


if __name__ == "__main__":
    main()
