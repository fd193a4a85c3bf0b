"""The docs say what runs: README commands, flags and config lists checked against the code."""

import dataclasses
import doctest
import glob
import os
import re
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def _between(text, tag):
    match = re.search(rf"<!-- {tag}:[^>]*-->\n(.*?)<!-- /{tag} -->", text, re.S)
    assert match, tag
    return match.group(1)


def test_readme_table_is_the_committed_one():
    # The README's digits table: columns of experiments/results/digits.md, which the same
    # command wrote.
    readme = _read("README.md")
    assert "<!-- digits-table: from python -m experiments.reproduce --suite=digits -->" in readme
    assert "python -m experiments.reproduce --suite=digits" in readme.split("## ")[0]
    results = {}
    for line in _read("experiments", "results", "digits.md").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 12 and cells[1] == "50":
            results[cells[0]] = [cells[4], cells[5], cells[8], cells[10]]
    rows = [line for line in _between(readme, "digits-table").splitlines() if "±" in line]
    assert len(rows) == len(results) == 6
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:] == results[cells[0]], cells


def test_readme_lists_every_reproduce_flag_and_suite():
    from experiments import reproduce

    readme = _read("README.md")
    for action in reproduce._parser()._actions:
        flag = action.option_strings[0] if action.option_strings else None
        if not flag or action.help == "==SUPPRESS==" or flag == "-h":
            continue
        assert f"[{flag}" in readme or f"`{flag}" in readme, flag
    usage = [m for m in re.findall(r"--suite=([\w|]+)", readme) if "|" in m]
    assert usage and set(usage[0].split("|")) == set(reproduce.SUITES), usage


def test_training_doc_lists_every_config():
    doc = _read("docs", "training.md")
    for name in sorted(os.listdir(os.path.join(REPO, "experiments", "configs"))):
        if name.endswith(".py") and name not in ("__init__.py", "common.py"):
            assert f"`{name}`" in doc, name


# --------------------------------------------------------------------------------------
# Every fenced code block of README.md and docs/*.md is run or checked, or says why not.
#
#   ```python             executed (as a doctest when it holds `>>>` examples)
#   ```bash               executed in the repo root (quick commands only)
#   ```bash check         every line is `[timeout ...] python -m experiments.train|
#                         reproduce ...`: the reproduce commands run with --dry_run (the grid
#                         and every run's config are built), the train commands' config is
#                         built from their flags; nothing trains
#   ```bash skip="why"    not run (installs, GPU grids, hours); listed as skipped, with why
#   ```text               not code: signatures, synopses, layouts, output
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Block:
    path: str
    line: int
    info: str
    body: str

    @property
    def lang(self):
        return self.info.split()[0] if self.info else ""

    @property
    def skip(self):
        match = re.search(r'skip="([^"]+)"', self.info)
        return match.group(1) if match else None

    def __str__(self):
        return f"{self.path}:{self.line}"


def code_blocks() -> list[Block]:
    out = []
    paths = ["README.md"] + sorted(
        os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
    )
    for rel in paths:
        lines = _read(rel).splitlines()
        i = 0
        while i < len(lines):
            match = re.match(r"^( *)```(.*)$", lines[i])
            if match:
                indent, info, start, body = match.group(1), match.group(2).strip(), i + 1, []
                i += 1
                while not lines[i].strip().startswith("```"):
                    body.append(lines[i][len(indent) :])
                    i += 1
                out.append(Block(rel, start, info, "\n".join(body) + "\n"))
            i += 1
    return out


BLOCKS = code_blocks()


def _blocks(lang):
    return [pytest.param(b, id=str(b)) for b in BLOCKS if b.lang == lang]


def test_every_code_block_is_run_checked_or_says_why_not():
    assert len(BLOCKS) >= 10
    for b in BLOCKS:
        if b.lang.startswith("{"):  # a MyST directive of the docs site (toctree, include)
            continue
        assert b.lang in ("python", "bash", "text"), f"{b}: unknown block kind {b.info!r}"
        if b.lang == "bash" and b.info not in ("bash", "bash check"):
            assert b.skip, f'{b}: a bash block is run, `check`ed or `skip="why"`: {b.info!r}'
    for rel in ["README.md"] + [f"docs/{n}" for n in os.listdir(os.path.join(REPO, "docs"))]:
        if rel.endswith(".md"):  # no indented code blocks: they could not be marked
            text = re.sub(r"```.*?```", "", _read(rel), flags=re.S)
            assert not re.search(r"\n\n {4}\S", text), f"{rel}: an indented code block"


@pytest.mark.parametrize("block", _blocks("python"))
def test_python_block(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if ">>>" in block.body:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.body, {}, str(block), block.path, block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0, str(block)
    else:
        exec(compile(block.body, str(block), "exec"), {"__name__": "__docs__"})


def _commands(body):
    body = body.replace("\\\n", " ")
    cmds = [shlex.split(line, comments=True) for line in body.splitlines() if line.strip()]
    return [c[c.index("python") :] if c[0] == "timeout" else c for c in cmds]  # a slot's limit


@pytest.mark.parametrize("block", _blocks("bash"))
def test_bash_block(block, tmp_path, monkeypatch):
    if block.skip:
        pytest.skip(f"{block}: {block.skip}")
    if block.info == "bash":
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.body],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"{block}: {out.stdout}\n{out.stderr}"
        return
    from experiments import reproduce

    monkeypatch.chdir(REPO)
    for cmd in _commands(block.body):
        assert cmd[:2] == ["python", "-m"], f"{block}: {cmd}"
        args = [a for a in cmd[3:] if not a.startswith("--workdir=")]
        if cmd[2] == "experiments.reproduce":
            try:
                reproduce.main([*args, f"--workdir={tmp_path}", "--dry_run"])
            except SystemExit as e:
                assert not e.code, f"{block}: {shlex.join(cmd)}"
        elif cmd[2] == "experiments.train":  # the config the run would use is built
            path, _, arg = (
                next(a for a in args if a.startswith("--config=")).split("=", 1)[1].partition(":")
            )
            flags = dict(a[len("--config.") :].split("=", 1) for a in args if "--config." in a)
            reproduce.build(path, arg, flags)
        else:
            raise AssertionError(f"{block}: a `check` block holds train/reproduce commands only")


def test_relative_links_point_to_files():
    """Every relative link of README.md and docs/*.md names an existing file (the docs site
    leaves links to files outside docs/ unchecked, so this test checks them all)."""
    paths = ["README.md"] + [
        os.path.join("docs", n) for n in os.listdir(os.path.join(REPO, "docs"))
    ]
    checked = 0
    for rel in paths:
        if not rel.endswith(".md"):
            continue
        text = re.sub(r"```.*?```", "", _read(rel), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.join(REPO, os.path.dirname(rel), target.split("#")[0])
            assert os.path.exists(path), f"{rel}: broken link {target}"
            checked += 1
    assert checked >= 10


def test_readme_links_are_pages_of_the_docs_site():
    # docs/readme.md includes README.md: its links to docs/X.md and experiments/results/X.md
    # must be pages of the site (docs/X.md, docs/experiments/results/X.md), not dead links.
    text = re.sub(r"```.*?```", "", _read("README.md"), flags=re.S)
    links = [t for t in re.findall(r"\]\(([^)#\s]+\.md)", text) if not re.match(r"[a-z]+:", t)]
    assert len(links) >= 8
    for target in links:
        page = target.removeprefix("docs/") if target.startswith("docs/") else target
        assert os.path.isfile(os.path.join(REPO, "docs", page)), target
