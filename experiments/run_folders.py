"""The run folders of a grid (``WORKDIR/SUITE/r{ratio}/{loss}/seed{seed}`` or, for seeds
vmapped in one program, ``.../seeds_0_1_2/seed_<s>``), what they hold and when they may be
reused: a folder is reused only if its stored config equals the config the command asks for
(run-control keys aside; :func:`build_config`, :func:`check_reuse`)."""

from __future__ import annotations

import contextlib
import glob
import json
import os

from cce_jax.training.config import config_diff
from experiments.suites import LOSSES, PRIORITY, REPO


class ReproduceError(Exception):
    """A problem reported as one ``error:`` line (exit 2) before anything runs."""


# --------------------------------------------------------------------------- configs


_CONFIG_CACHE: dict = {}


def build_config(train_flags) -> dict:
    """The config experiments.train builds from ``train_flags``, as plain JSON data
    (``experiments.train.build_config``: the same parser, flags and path rules).

    Raises:
      ReproduceError: the flags or the config file are bad.
    """
    key = tuple(train_flags)
    if key not in _CONFIG_CACHE:
        from experiments import train

        with _cwd(REPO):
            try:
                config = train.build_config(list(train_flags))
            except Exception as e:  # absl/ml_collections raise many kinds
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ReproduceError(f"bad run flags {' '.join(train_flags)}: {msg}") from e
        _CONFIG_CACHE[key] = config.to_json_best_effort(sort_keys=True)
    return json.loads(_CONFIG_CACHE[key])


@contextlib.contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def mismatch_message(folder: str, diff: list[str]) -> str:
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more keys" if len(diff) > 4 else "")
    return (
        f"run folder {folder} holds a run of another config ({shown}); use another "
        "--workdir (or delete that folder) so old results are not reported as new ones"
    )


# --------------------------------------------------------------------------- the layout


def loss_dir(root, loss, ratio):
    return os.path.join(root, f"r{float(ratio):g}", loss)


def vmap_dir_name(seeds) -> str:
    return "seeds_" + "_".join(str(int(s)) for s in seeds)


def _vmap_dirs(root, loss, ratio, seed):
    """The ``seeds_*`` program folders of (loss, ratio) that trained ``seed``."""
    out = []
    for d in sorted(glob.glob(os.path.join(loss_dir(root, loss, ratio), "seeds_*"))):
        try:
            members = [int(s) for s in os.path.basename(d)[len("seeds_") :].split("_")]
        except ValueError:
            continue
        if int(seed) in members:
            out.append(d)
    return out


def seed_dirs(root, loss, ratio, seed) -> list[tuple[str, str | None]]:
    """Where a model of (loss, ratio, seed) may live: (model folder, program folder or None)."""
    out = [(os.path.join(loss_dir(root, loss, ratio), f"seed{seed}"), None)]
    out += [(os.path.join(d, f"seed_{seed}"), d) for d in _vmap_dirs(root, loss, ratio, seed)]
    return out


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def seed_status(root, loss, ratio, seed) -> tuple[str, str | None, dict | None]:
    """("done", folder, summary) | ("failed", folder, failure) | ("todo", None, None)."""
    failed = None
    for d, program in seed_dirs(root, loss, ratio, seed):
        summary = read_json(os.path.join(d, "summary.json"))
        if summary is not None:
            return "done", d, summary
        for f in (
            os.path.join(d, "failure.json"),
            os.path.join(program, "failure.json") if program else None,
        ):
            failure = read_json(f) if f else None
            if failure is not None and failed is None:
                failed = (os.path.dirname(f), failure)
    if failed:
        return "failed", failed[0], failed[1]
    return "todo", None, None


def grid_on_disk(root: str) -> tuple[list[str], list[float], list[int]]:
    """The losses, ratios and seeds of every finished or failed run under ``root``."""
    losses, ratios, seeds = set(), set(), set()
    for rdir in glob.glob(os.path.join(root, "r*")):
        try:
            ratio = float(os.path.basename(rdir)[1:])
        except ValueError:
            continue
        for loss in LOSSES:
            found = glob.glob(os.path.join(rdir, loss, "seed*", "*.json"))
            found += glob.glob(os.path.join(rdir, loss, "seeds_*", "seed_*", "summary.json"))
            for path in found:
                if os.path.basename(path) not in ("summary.json", "failure.json"):
                    continue
                parts = os.path.relpath(path, os.path.join(rdir, loss)).split(os.sep)
                name = parts[-2] if parts[0].startswith("seeds_") else parts[0]
                digits = name.removeprefix("seed_").removeprefix("seed")
                if digits.isdigit():
                    losses.add(loss)
                    ratios.add(ratio)
                    seeds.add(int(digits))
    order = [x for x in PRIORITY if x in losses] + sorted(losses - set(PRIORITY))
    return order, sorted(ratios), sorted(seeds)


def failure_reason(failure: dict) -> str:
    reason = str(failure.get("reason", "failed"))
    where = [f"{k} {failure[k]}" for k in ("epoch", "step") if failure.get(k) is not None]
    return reason + (f" ({', '.join(where)})" if where else "")


# --------------------------------------------------------------------------- reuse


def check_reuse(root, losses, ratios, seeds, expected) -> list[tuple[str, float, list[int]]]:
    """Which seeds of the grid are to run; refuses any folder that holds another config.

    Args:
      root: the suite's run folder.
      losses, ratios, seeds: the grid.
      expected: ``f(loss, ratio, seed) -> config dict`` of the run this command would make.

    Returns:
      ``[(loss, ratio, seeds to run)]`` for every (ratio, loss) of the grid, in that order
      (seeds finished or failed before are not to run).

    Raises:
      ReproduceError: a finished run, or an unfinished folder's ``config.json``, differs
        (beyond run control) from what this command asks for.
    """
    todo, mismatches = [], []
    for ratio in ratios:
        for loss in losses:
            missing = []
            for seed in seeds:
                status = _check_seed(root, loss, ratio, seed, expected, mismatches)
                if status == "todo":
                    missing.append(seed)
            todo.append((loss, ratio, missing))
    if mismatches:
        more = f" ({len(mismatches) - 1} more folders differ too)" if len(mismatches) > 1 else ""
        raise ReproduceError(mismatches[0] + more)
    return todo


def _check_seed(root, loss, ratio, seed, expected, mismatches) -> str:
    """The seed's status; appends the message of each of its folders of another config."""
    status, folder, data = seed_status(root, loss, ratio, seed)
    want = expected(loss, ratio, seed)
    if status == "done":
        diff = config_diff(data.get("config", {}), want, ignore=("seeds",))
        if diff:
            mismatches.append(mismatch_message(folder, diff))
        return status
    for d, program in seed_dirs(root, loss, ratio, seed):
        stored = read_json(os.path.join(d, "config.json"))
        if stored is not None:
            diff = config_diff(stored, want, ignore=("seeds",) if program else ())
            if diff:
                mismatches.append(mismatch_message(d, diff))
    return status


def check_program_folder(folder: str, flags) -> None:
    """Refuses a vmapped program's folder whose stored config is not the one of ``flags``."""
    stored = read_json(os.path.join(folder, "config.json"))
    if stored is not None:
        diff = config_diff(stored, build_config(flags))
        if diff:
            raise ReproduceError(mismatch_message(folder, diff))
