"""Which optional extra installs a missing dependency, said in the ImportError."""

import importlib.util

__all__ = ["require"]

# import name -> distribution name on PyPI
_DISTRIBUTIONS = {
    "absl": "absl-py",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "orbax": "orbax-checkpoint",
    "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str, *modules: str) -> None:
    """Raises ImportError naming the extra to install if one of ``modules`` is missing.

    Finds the modules without importing them.

    >>> require("train", "cce_jax.training", "json")
    >>> require("train", "cce_jax.training", "no_such_module_abc")
    Traceback (most recent call last):
    ...
    ImportError: cce_jax.training needs no_such_module_abc, which is not installed: install the [train] extra (in the checkout: pip install -c constraints.txt -e ".[train]").
    """  # noqa: E501
    missing = [m for m in modules if not _importable(m)]
    if missing:
        names = ", ".join(
            f"{m} ({_DISTRIBUTIONS[m]})" if m in _DISTRIBUTIONS else m for m in missing
        )
        raise ImportError(
            f"{what} needs {names}, which is not installed: install the [{extra}] extra "
            f'(in the checkout: pip install -c constraints.txt -e ".[{extra}]").'
        )
