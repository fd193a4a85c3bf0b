"""Sphinx configuration: the API reference from the docstrings, and the Markdown docs.

Build (what CI runs, warnings are errors):

    pip install -c constraints.txt -e ".[docs]"
    sphinx-build -W --keep-going -b html docs /tmp/cce_jax_docs
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # cce_jax from this checkout

project = "cce_jax"
author = "cce_jax authors"
copyright = "cce_jax authors, Apache-2.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax copied into the site: math renders offline
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
# README.md's links to experiments/results/*.md land on the pages of docs/experiments/results/
# (tests/test_docs.py checks that each has one); links of other pages to files outside docs/
# are for readers of the repository.
suppress_warnings = ["myst.xref_missing"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autodoc_type_aliases = {"ArrayLike": "ArrayLike"}  # not jax's eight-type union
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = "cce_jax"
