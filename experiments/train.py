"""Trains and evaluates one config: the thin entry point (flags + config file).

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/tiny \
      [--config.KEY=VALUE ...] [--loss_hparam=KEY=VALUE ...]

Rerunning with the same --workdir resumes from its last checkpoint. Multi-process:
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every process
(or ``--config.distributed=True`` for the cluster auto-detection of
``jax.distributed.initialize()``).
"""

import ast
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, summary.json.")
flags.DEFINE_multi_string("loss_hparam", [], "KEY=VALUE added to config.loss.hparams "
                          "(VALUE a Python literal); repeatable.")
flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "jax.distributed: number of processes.")
flags.DEFINE_integer("process_id", None, "jax.distributed: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_hparam(text):
    if "=" not in text:
        raise app.UsageError(f"--loss_hparam expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string
    return key.strip(), value


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    if FLAGS.loss_hparam:
        with config.unlocked():
            for text in FLAGS.loss_hparam:
                key, value = _parse_hparam(text)
                config.loss.hparams[key] = value

    # Must precede any use of JAX devices.
    from cce_jax import training
    if FLAGS.coordinator_address or config.distributed:
        training.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
    try:
        summary = training.train_and_evaluate(config, FLAGS.workdir)
    except training.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    import jax
    if summary is not None and jax.process_index() == 0:
        def fmt(x):
            return "n/a" if x is None else f"{x:.4f}"
        print(f"final test top-1 {fmt(summary['test_top1'])}  balanced accuracy "
              f"{fmt(summary['test_balanced_accuracy'])}  macro-F1 "
              f"{fmt(summary['test_macro_f1'])}  (many/medium/few "
              f"{fmt(summary['test_many'])}/{fmt(summary['test_medium'])}/"
              f"{fmt(summary['test_few'])})  wall {summary['wall_time_s']:.1f}s", flush=True)
        print(f"summary: {FLAGS.workdir}/summary.json", flush=True)


if __name__ == "__main__":
    app.run(main)
