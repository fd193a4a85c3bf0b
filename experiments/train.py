"""Trains and evaluates one config (flags -> config -> ``train_and_evaluate``), then prints
the per-class table and plots ``per_class.png`` (``experiments/report.py``).

  python -m experiments.train --config=experiments/configs/digits.py[:ARG] --workdir=DIR \\
      [--config.KEY=VALUE ...]

The same command resumes from the workdir's last checkpoint (``timeout -s TERM N ...`` is a
time limit). Multi-process: ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` on every process, or ``--config.distributed=True``. Exit codes
(``cce_jax.training.EXIT_*``): 0 done, 2 bad flags/config/data/workdir, 3 diverged, 74
storage failed, 75 stopped by SIGTERM/SIGINT (saved; rerun to resume); errors are one line.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow/JAX load

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, summary.json.")
flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "jax.distributed: number of processes.")
flags.DEFINE_integer("process_id", None, "jax.distributed: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    import jax

    from cce_jax import parallel, training

    if FLAGS.coordinator_address or FLAGS.config.get("distributed", False):
        parallel.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    errors = (
        (training.ConfigError, training.EXIT_CONFIG_ERROR),
        (training.TrainingDiverged, training.EXIT_DIVERGED),
        (training.Preempted, training.EXIT_PREEMPTED),
        (training.StorageError, training.EXIT_IO_ERROR),
    )
    from experiments import report

    try:
        summary = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        seeds = summary.get("seeds") or ()  # their tables: WORKDIR/seed_<s>/summary.json
        for d in [f"{FLAGS.workdir}/seed_{s}" for s in seeds] or [FLAGS.workdir]:
            if jax.process_index() == 0 and (run := report.read_json(f"{d}/summary.json")):
                report.plot_per_class(run, f"{d}/per_class.png")
    except tuple(e for e, _ in errors) as e:
        code = next(c for t, c in errors if isinstance(e, t))
        stop = code == training.EXIT_PREEMPTED
        print(f"{'' if stop else 'error: '}{e}", file=sys.stdout if stop else sys.stderr)
        sys.exit(code)
    if jax.process_index() > 0:
        return
    if seeds:
        m, b = summary["test_top1"], summary["test_balanced_accuracy"]
        print(f"{len(seeds)} seeds: top-1 {m['mean']:.4f} ± {m['sd'] or 0:.4f}, ", end="")
        print(f"balanced accuracy {b['mean']:.4f} ± {b['sd'] or 0:.4f}")
    else:
        print(report.format_table(summary))
    print(f"summary: {os.path.join(FLAGS.workdir, 'summary.json')}", flush=True)


def parse_flags(argv):
    """absl's parser; a bad flag, config file or ``--config.KEY`` is one line and exit 2."""
    try:
        argv = FLAGS(argv)
        FLAGS.config.get("seed")  # a config file that failed to load raises here
        return argv
    except Exception as e:  # flags.Error, an unknown --config.KEY, a missing config file
        text = " ".join(
            str(e).replace("\\n", " ").translate({ord(c): None for c in "\\'\""}).split()
        )
        what = "no such config key" if isinstance(e, (AttributeError, KeyError)) else "bad flags"
        print(f"error: {what}: {text[:300]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
