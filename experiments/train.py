"""Trains and evaluates one config: the thin entry point (flags + config file).

  python -m experiments.train --config=experiments/configs/digits.py --workdir=/tmp/digits \\
      [--config.KEY=VALUE ...] [--config.loss.hparams.KEY=VALUE ...] [--loss_hparam=KEY=VALUE ...]

Rerunning with the same --workdir resumes from its last checkpoint. Loss hyperparameters go
to ``cce_jax.losses.get`` (``--config.loss.hparams.alpha=5.0`` and ``--loss_hparam=alpha=5.0``
are the same; VALUE is a Python literal, ``nan``/``inf`` are floats). Multi-process:
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every process (or
``--config.distributed=True`` for the cluster auto-detection of ``jax.distributed.initialize()``).

Exit codes (``cce_jax.training.EXIT_*``): 0 done (or stopped by ``stop_after_epoch``), 2 bad
flags/config/workdir (one ``error:`` line), 3 training diverged (``failure.json``, no
summary), 74 storage failed (one ``error:`` line; nothing lost), 75 stopped for
``--config.deadline`` or by SIGTERM/SIGINT after saving the exact position (rerun to resume).
"""

import ast
import os
import sys

# Before TensorFlow/JAX load: no oneDNN/absl start-up chatter (a user's own setting wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (get_config()).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, summary.json.")
flags.DEFINE_multi_string(
    "loss_hparam",
    [],
    "KEY=VALUE added to config.loss.hparams (VALUE a Python literal); repeatable.",
)
flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "jax.distributed: number of processes.")
flags.DEFINE_integer("process_id", None, "jax.distributed: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])

_HPARAM_PREFIX = "--config.loss.hparams."


def parse_value(text: str):
    """A Python literal, else a float (``nan``, ``inf``, ``1e-3``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _parse_hparam(text):
    if "=" not in text:
        raise app.UsageError(f"--loss_hparam expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value)


def _fail(msg: str, code: int = 2):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


class FlagError(ValueError):
    """A bad flag or config file, reported as one ``error:`` line (exit 2)."""


def preflight(argv: list[str]) -> list[str]:
    """Checks the config file and every ``--config.KEY`` before absl parses them, so a typo
    is one ``error:`` line with the closest valid key, not a traceback. Rewrites
    ``--config.loss.hparams.KEY=VALUE`` to ``--loss_hparam=KEY=VALUE``."""
    out, path = [], None
    for a in argv:
        if a.startswith(_HPARAM_PREFIX):
            out.append("--loss_hparam=" + a[len(_HPARAM_PREFIX) :])
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        out.append(a)
    if path is None:
        return out  # absl reports the missing required flag
    if not os.path.isfile(path):
        raise FlagError(f"--config: no such config file {path!r}")
    try:
        config = load_config_file(path)
    except Exception as e:  # a config file that does not load
        raise FlagError(f"--config: cannot load {path!r}: {type(e).__name__}: {e}") from e
    from cce_jax.training.config import closest_key, config_to_dict, flatten

    valid = set(flatten(config_to_dict(config)))
    prefixes = {k.rsplit(".", i)[0] for k in valid for i in range(k.count(".") + 1)}
    for a in out:
        if a.startswith("--config.loss.name="):
            from cce_jax import losses

            name = a.split("=", 1)[1]
            if name in losses.RECIPES and name != "cot":  # cot: the trainer runs it
                raise FlagError(f"{a}: {losses.RECIPES[name]}")
        if a.startswith("--config.") and "=" in a:
            key = a[len("--config.") :].split("=", 1)[0]
            if key not in valid and key not in prefixes:
                close = closest_key(key, config)
                hint = f"; did you mean --config.{close}?" if close else ""
                raise FlagError(f"--config.{key}: no such config key{hint}")
    return out


def load_config_file(path: str):
    """``get_config()`` of a config file, loaded as config_flags loads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_preflight_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    config = finalize_config(FLAGS.config, FLAGS.loss_hparam)

    # Must precede any use of JAX devices.
    from cce_jax import training

    if FLAGS.coordinator_address or config.distributed:
        training.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    try:
        summary = training.train_and_evaluate(config, FLAGS.workdir)
    except training.ConfigError as e:
        _fail(str(e), training.EXIT_CONFIG_ERROR)
    except training.TrainingDiverged as e:
        _fail(str(e), training.EXIT_DIVERGED)
    except training.DeadlineReached as e:  # also Preempted (SIGTERM, SIGINT)
        print(str(e), flush=True)
        sys.exit(training.EXIT_DEADLINE)
    except training.StorageError as e:  # disk full, unreadable checkpoint: one line
        _fail(str(e), training.EXIT_IO_ERROR)
    import jax

    if summary is not None and jax.process_index() == 0:
        if config_seeds(config):
            for s in config_seeds(config):
                print(f"--- seed {s} ---")
                print(
                    training.format_table(
                        _load(os.path.join(FLAGS.workdir, f"seed_{s}", "summary.json"))
                    )
                )
            m = summary["test_top1"]
            b = summary["test_balanced_accuracy"]
            print(
                f"{summary['num_seeds']} seeds: test top-1 {m['mean']:.4f} ± {m['sd'] or 0:.4f}, "
                f"balanced accuracy {b['mean']:.4f} ± {b['sd'] or 0:.4f}",
                flush=True,
            )
        else:
            print(training.format_table(summary))
            print(
                f"final test top-1 {summary['test_top1']:.4f}  balanced accuracy "
                f"{summary['test_balanced_accuracy']:.4f}  wall {summary['wall_time_s']:.1f}s",
                flush=True,
            )
        print(f"summary: {os.path.join(FLAGS.workdir, 'summary.json')}", flush=True)


def finalize_config(config, loss_hparams=()):
    """Adds the ``--loss_hparam`` values and resolves relative data paths."""
    if loss_hparams:
        with config.unlocked():
            for text in loss_hparams:
                key, value = _parse_hparam(text)
                config.loss.hparams[key] = value
    return resolve_data_paths(config)


def build_config(train_flags):
    """The config this command builds from ``train_flags`` (``--config=FILE``,
    ``--config.KEY=VALUE``, ``--loss_hparam=...``, ``--workdir=...``), parsed exactly as
    ``main`` gets it, on a private flag registry (what ``experiments.reproduce`` compares
    with a run folder's stored config). Run from the repo root, like the command."""
    from absl import flags as absl_flags

    argv = preflight(["experiments.train", *train_flags])
    fv = absl_flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv
    )
    absl_flags.DEFINE_multi_string("loss_hparam", [], "KEY=VALUE", flag_values=fv)
    absl_flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
    fv(argv)
    return finalize_config(fv.config, fv.loss_hparam)


def config_seeds(config):
    seeds = config.get("seeds", None)
    return tuple(seeds) if seeds else ()


def _load(path):
    from cce_jax.training import workdir

    return workdir.read_json(path)  # a local file or a gs:// object


def resolve_data_paths(config):
    """A relative ``cifar10_jpeg:PATH``/``npz:PATH`` is tried from the cwd, then the repo root."""
    source = str(config.data.source)
    kind, sep, path = source.partition(":")
    if not sep or kind not in ("cifar10_jpeg", "npz"):
        return config
    path = os.path.expanduser(path)
    if os.path.isabs(path) or os.path.exists(path):
        return config
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.join(repo_root, path)
    if not os.path.exists(candidate):
        return config
    with config.unlocked():
        config.data.source = f"{kind}:{os.path.normpath(candidate)}"
    return config


if __name__ == "__main__":
    try:
        sys.argv = preflight(sys.argv)  # config_flags reads its overrides from sys.argv itself
    except FlagError as e:
        _fail(str(e))
    help_flags = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")
    try:
        app.run(main)
    except SystemExit as e:
        if e.code == 1 and any(a in help_flags for a in sys.argv[1:]):
            sys.exit(0)  # absl exits 1 after printing the help: asking for help is no failure
        raise
