"""Sphinx configuration. The reference pages are generated at every build (generate.py)."""

import os
import sys

import mtt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import generate  # noqa: E402  (docs/ is not a package: importable once on sys.path)

generate.write_all(os.path.join(HERE, generate.GENERATED))

project = "mtt"
author = "The mtt developers"
copyright = "the mtt developers"
release = mtt.__version__
version = release

extensions = []
root_doc = "index"
exclude_patterns = ["_build"]
# only .rst files are documents: the generated fragments (.inc) are included by other pages
source_suffix = {".rst": "restructuredtext"}

html_theme = "alabaster"
html_static_path = []
pygments_style = "sphinx"
highlight_language = "none"
