"""Session-wide test settings and shared fixtures.

* One JAX persistent compilation cache for the whole session. Several tests start
  subprocesses that compile the same programs (a kill -9 test runs one digits config three
  times; the CLI tests compile the tiny config again), and reproduce runs do the same through
  ``JAX_COMPILATION_CACHE_DIR``. The tests share one temporary cache folder, set here before
  JAX is imported (subprocesses inherit the variable) and removed at the end. A cache the
  caller already set (``JAX_COMPILATION_CACHE_DIR``) is used as it is.
* ``CCE_JAX_CACHE_DIR`` (cce_jax.conv's measured convolution choices) points there too.
* ``cifar10_jpeg_archive``: the offline CIFAR-10 copy's path (the test is skipped without it);
  ``cifar10_jpeg_cache``: that copy extracted and decoded once per session (about 30 s on 2
  cores), for every test that reads it (pass it as ``data.cache_dir``).
* XLA compiles at backend optimization level 0 (``XLA_FLAGS``; subprocesses inherit it unless
  a test drops XLA_FLAGS): the suite is bound by compile time of tiny programs.
* ``small_run``: test_training's small config trained on its FakeData once per session for
  each set of config overrides (a finished run, or one stopped after an epoch), for the
  training and preemption tests that read such a run or start from a copy of it.
* Two tiers: ``python -m pytest -m "not slow"`` is the everyday command (every module,
  2.5 min on 2 cores); ``python -m pytest`` (CI) runs everything (7 min). Both run on
  pytest-xdist workers (pyproject's addopts: one per core, at most 4; ``-n0``: one process);
  the session fixtures below are made once per worker. ``slow``: the decorated tests
  (subprocess runs on 8 simulated devices or several processes, end-to-end runs), every test
  that reads the offline CIFAR-10 copy, the cases listed in ``_SLOW_IDS`` (generated test
  cases and doctests that cannot carry a decorator) and, of the tests parametrized over every
  loss or shape in ``_FAST_CASES``, the cases not named there.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="cce_jax_tests_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# XLA's CPU backend spends most of a small program's compile time in LLVM optimization (the
# ResNet init: ~10 s at the default level, ~1.5 s at 0), and the tests' programs are tiny: the
# session compiles at level 0, as test_conv/test_models/test_segmentation's ``fast_jit`` and
# the subprocess workers already did. Subprocesses inherit it, except those that drop
# XLA_FLAGS (the CLI, tf_free and multidevice tests), which compile at the default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
# cce_jax.conv's measured per-layer choices go to the same temporary folder, not to the
# user's ~/.cache (subprocesses inherit the variable).
os.environ.setdefault(
    "CCE_JAX_CACHE_DIR", _OWN_CACHE or tempfile.mkdtemp(prefix="cce_jax_tests_cache_")
)

# The offline CIFAR-10 copy: ../shared beside the checkout (where CI clones it), else the
# project's shared folder.
_CIFAR10_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz",
    Path("/work/shared/data/cifar10-jpeg.tar.gz"),
)


# Parts of node ids of slow tests without a decorator of their own.
_SLOW_IDS = (
    "test_finite_over_the_stated_domain_",  # chex variants over float16/32/bfloat16 edges
    "cce_jax/models.py::",  # the doctest builds and runs every model
)


# Tests parametrized over every loss (or every shape): the fast tier runs the cases named here,
# CI runs them all. Each kept set holds the project's own losses (CCE, MSE-OL) and a cheap
# baseline; every loss keeps fast numpy-reference tests of its own elsewhere.
_FAST_CASES = {
    "test_gradients_match_finite_differences": {"ce", "cce_paper", "mse_ol", "focal", "la"},
    "test_axis_equals_moveaxis_and_leading_axes": {"ce_weighted", "cce_paper", "mse_ol", "la"},
    "test_jit_vmap_and_grad": {"ce", "cce", "mse_ol", "focal", "la"},
    "test_matches_xla_float32": {
        "x_shape4-w_shape4-strides4-SAME",
        "x_shape7-w_shape7-strides7-VALID",
    },
    "test_signal_mid_epoch_saves_the_exact_position_and_resumes_identically": {"SIGTERM"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses_cifar = {"cifar10_jpeg_archive", "cifar10_jpeg_cache"} & set(
            getattr(item, "fixturenames", ())
        )
        name, _, case = item.name.partition("[")
        not_kept = name in _FAST_CASES and case.rstrip("]") not in _FAST_CASES[name]
        if uses_cifar or not_kept or any(part in item.nodeid for part in _SLOW_IDS):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar10_jpeg_archive():
    """The path of the offline CIFAR-10 archive; skips the test where it is missing."""
    found = next((p for p in _CIFAR10_CANDIDATES if p.is_file()), None)
    if found is None:
        pytest.skip(f"offline CIFAR-10 archive not found at {_CIFAR10_CANDIDATES[0]}")
    return str(found)


@pytest.fixture(scope="session")
def cifar10_jpeg_cache(tmp_path_factory, cifar10_jpeg_archive):
    """A ``data.cache_dir`` holding the offline CIFAR-10 copy, extracted and decoded."""
    from cce_jax import data

    cache = tmp_path_factory.mktemp("cifar10_jpeg_cache")
    data.load_cifar10_jpeg(cifar10_jpeg_archive, str(cache))
    return str(cache)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """``small_run(copy_to=None, **overrides) -> (workdir, summary)``.

    test_training's ``small_config(**overrides)`` trained on its ``FakeData()``, once per
    session for each set of overrides; ``summary`` is what ``train_and_evaluate`` returned
    (None for a run stopped by a SIGTERM after epoch ``stop_after_epoch``). The shared
    workdir is read-only: pass ``copy_to`` to get a copy there (the returned workdir) to
    resume, damage or extend.
    """
    from test_training import FakeData, SignalAfter, small_config

    from cce_jax import training

    made = {}

    def get(copy_to=None, stop_after_epoch=None, **overrides):
        key = (stop_after_epoch, *sorted(overrides.items()))
        if key not in made:
            w = tmp_path_factory.mktemp("small_run") / "w"
            data = FakeData() if stop_after_epoch is None else SignalAfter(stop_after_epoch)
            try:
                summary = training.train_and_evaluate(small_config(**overrides), str(w), data=data)
            except training.Preempted:  # a SIGTERM at the end of epoch stop_after_epoch
                summary = None
            made[key] = (w, summary)
        w, summary = made[key]
        if copy_to is not None:
            shutil.copytree(w, copy_to)
            w = Path(copy_to)
        return w, summary

    return get
