"""Trains and evaluates one config (flags -> config -> ``train_and_evaluate``).

  python -m experiments.train --config=experiments/configs/digits.py[:ARG] --workdir=DIR \\
      [--config.KEY=VALUE ...]

Rerunning with the same --workdir resumes from its last checkpoint; ``timeout -s TERM N
python -m experiments.train ...`` stops within N seconds (saved; the same command continues).
Multi-process: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every
process (or ``--config.distributed=True`` for ``jax.distributed.initialize()``'s detection).

Exit codes (``cce_jax.training.EXIT_*``): 0 done, 2 bad flags/config/data/workdir, 3 training
diverged (``failure.json``), 74 storage failed, 75 stopped by SIGTERM/SIGINT after saving the
exact position (rerun to resume); every error is one ``error:`` line.
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
    from cce_jax import training

    if FLAGS.coordinator_address or FLAGS.config.get("distributed", False):
        training.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    errors = (
        (training.ConfigError, training.EXIT_CONFIG_ERROR),
        (training.TrainingDiverged, training.EXIT_DIVERGED),
        (training.Preempted, training.EXIT_PREEMPTED),
        (training.StorageError, training.EXIT_IO_ERROR),
    )
    try:
        summary = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except tuple(e for e, _ in errors) as e:
        code = next(c for t, c in errors if isinstance(e, t))
        print(f"{'' if code == training.EXIT_PREEMPTED else 'error: '}{e}", file=sys.stderr)
        sys.exit(code)
    import jax

    if jax.process_index() == 0:
        if "num_seeds" in summary:
            m, b = summary["test_top1"], summary["test_balanced_accuracy"]
            print(
                f"{summary['num_seeds']} seeds: test top-1 {m['mean']:.4f} ± {m['sd'] or 0:.4f}, "
                f"balanced accuracy {b['mean']:.4f} ± {b['sd'] or 0:.4f}"
            )
        else:
            print(training.format_table(summary))
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
