"""Session-wide test settings and shared fixtures.

* One JAX persistent compilation cache for the whole session. Several tests start
  subprocesses that compile the same programs (a kill -9 test runs one digits config three
  times; the CLI tests compile the tiny config again), and reproduce runs do the same through
  ``JAX_COMPILATION_CACHE_DIR``. The tests share one temporary cache folder, set here before
  JAX is imported (subprocesses inherit the variable) and removed at the end. A cache the
  caller already set (``JAX_COMPILATION_CACHE_DIR``) is used as it is.
* ``cifar10_jpeg_cache``: the offline CIFAR-10 copy extracted and decoded once per session
  (about 30 s on 2 cores), for every test that reads it (pass it as ``data.cache_dir``).
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

CIFAR10_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar10_jpeg_cache(tmp_path_factory):
    """A ``data.cache_dir`` holding the offline CIFAR-10 copy, extracted and decoded."""
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"offline CIFAR-10 archive not found at {CIFAR10_ARCHIVE}")
    from cce_jax import data

    cache = tmp_path_factory.mktemp("cifar10_jpeg_cache")
    data.load_cifar10_jpeg(str(CIFAR10_ARCHIVE), str(cache))
    return str(cache)
