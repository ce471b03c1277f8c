"""Sphinx configuration for the fws documentation (built with -W in the test suite)."""

from __future__ import annotations

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import fws  # noqa: E402

project = "fws"
author = "the fws developers"
copyright = "2026, the fws developers"
version = release = fws.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "fws_options",
    "fws_literal_options",
    "fws_code_lines",
]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": True}
exclude_patterns = ["_build"]

# Curly quotes and ellipses, but never dashes: "--port" in prose must stay two hyphens
# (fws_literal_options also makes every option name literal text, which smartquotes skips).
smartquotes_action = "qe"

# Furo (the test extra installs it) is made for reference pages: wide tables scroll in
# their own box, code blocks scroll instead of being cut, search, a page outline, a dark
# mode. Without it the docs still build, on Sphinx's bundled alabaster, so that a plain
# `pip install sphinx` can build them too; fws.css gives alabaster the scrolling boxes.
if importlib.util.find_spec("furo") is not None:
    html_theme = "furo"
    html_theme_options = {"navigation_with_keys": True}
else:
    html_theme = "alabaster"
    html_theme_options = {"page_width": "1100px", "fixed_sidebar": False}
html_title = f"fws {release}"
html_static_path = ["_static"]
html_css_files = ["fws.css"]
