"""What a user installs: the extras, the license, and the message of a missing extra."""

import os
import pathlib
import shlex
import subprocess
import sys
import textwrap
import tomllib

import pytest
from _hide_modules import write_sitecustomize  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(extra: str) -> set[str]:
    """The distribution names an extra installs, the extras it names resolved."""
    out = set()
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        name = req.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        if name == "cce_jax":
            for sub in req.split("[")[1].rstrip("]").split(","):
                out |= _requirements(sub.strip())
        else:
            out.add(name)
    return out


def test_train_extra_installs_no_tensorflow():
    for extra in ("data", "train"):
        assert not {r for r in _requirements(extra) if r.startswith("tensorflow")}, extra
    assert {"tensorflow-cpu", "tensorflow-datasets"} <= _requirements("tfds")
    assert {"tensorflow-cpu", "flax", "pytest"} <= _requirements("test")


def test_every_pinned_requirement_is_in_constraints():
    pins = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for extra in PYPROJECT["project"]["optional-dependencies"]:
        if extra == "bench":
            continue
        missing = {r.replace("_", "-") for r in _requirements(extra)} - pins
        assert not missing, (extra, missing)


def test_license_file_is_shipped():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]


CHECK = textwrap.dedent(
    """
    import cce_jax, cce_jax.losses
    from cce_jax import data

    try:
        import cce_jax.training
    except ImportError as e:
        print("training:", e)
    try:
        data.default_config()
    except ImportError as e:
        print("default_config:", e)
    try:
        data.load_digits()
    except ImportError as e:
        print("digits:", e)
    """
)


def test_missing_extra_names_the_extra(tmp_path):
    write_sitecustomize(tmp_path, ("flax", "orbax", "ml_collections", "sklearn"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert lines["training"].startswith("cce_jax.training needs flax, orbax.checkpoint"), lines
    assert '-e ".[train]"' in lines["training"]
    assert "[data] extra" in lines["default_config"], lines
    assert "sklearn (scikit-learn)" in lines["digits"] and "[data] extra" in lines["digits"]


def test_train_help_reads_cleanly():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 1 and not out.stderr, out.stderr  # absl's --help exits 1
    usage = out.stdout.split("flags:")[0]
    assert "python -m experiments.train --config=" in usage
    for line in usage.splitlines():
        assert "   " not in line.strip(), line  # no runs of spaces from a joined docstring line


@pytest.mark.slow
def test_editable_install_is_not_shadowed_by_a_clone_folder(tmp_path):
    # The README's editable install, into a scratch prefix: a script next to a folder named
    # cce_jax (e.g. the clone itself) must still import the installed package, not the
    # folder as a namespace package (setuptools' default finder mode fails this).
    line = next(x for x in (REPO / "README.md").read_text().splitlines() if "pip install" in x)
    settings = [a for a in shlex.split(line) if a.startswith("editable_mode=")]
    assert settings, line
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"--prefix={tmp_path}"]
    cmd += ["-e", str(REPO), "--config-settings", settings[0]]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode and "from versions: none" in out.stderr:
        pytest.skip("no package index for setuptools, the build backend")
    assert out.returncode == 0, out.stderr
    site_dir = next(tmp_path.glob("lib/python*/site-packages"))
    (tmp_path / "work" / "cce_jax").mkdir(parents=True)
    script = f"import site, importlib.util; site.addsitedir({str(site_dir)!r}); "
    script += "print(importlib.util.find_spec('cce_jax').origin)"
    found = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path / "work"
    )
    assert found.stdout.strip() == str(REPO / "cce_jax" / "__init__.py"), found
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.count(f"--config-settings {settings[0]}") == 2  # both venvs of CI
