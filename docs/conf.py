"""Sphinx configuration of fastloss's documentation: ``sphinx-build -W docs docs/_build/html``.

Pages are Markdown (MyST) and reStructuredText; the API reference is generated from the docstrings
(autodoc + autosummary, numpydoc). The list of public functions is written at build time from
``fastloss.__all__`` (``_generated/functions.rst``), so a new loss appears without editing the docs.
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
_CY = os.path.join(ROOT, "fastloss", "_cy")
if os.path.isdir(_CY) and any(f.startswith("ranking.") and f.endswith((".so", ".pyd")) for f in os.listdir(_CY)):
    sys.path.insert(0, ROOT)  # document the source tree, whose kernels are built in place (pip install -e .)
# otherwise the installed fastloss is documented (a source tree without kernels cannot be imported)

import fastloss  # noqa: E402

project = "fastloss"
author = "the fastloss developers"
copyright = "the fastloss developers"
release = version = fastloss.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated/*.inc"]
myst_heading_anchors = 3
autosummary_generate = False  # no stub pages: the entries are on the API page
autodoc_typehints = "none"  # the signature shows the defaults; the types are in fastloss/_typing.py
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
html_theme = "alabaster"
html_title = f"fastloss {release}"
suppress_warnings = ["myst.header"]

LOSS_FUNCTIONS = [name for name in fastloss.__all__ if name in fastloss.losses()]
TOOLS = [name for name in ("value_and_grad", "grad", "losses", "set_num_threads", "get_num_threads")
         if name in fastloss.__all__]


def _write_function_list() -> None:
    """``_generated/functions.rst.inc``: a summary table, then the docstring of every public loss and
    tool (the summary links to the entries on the same page)."""
    out = os.path.join(os.path.dirname(__file__), "_generated")
    os.makedirs(out, exist_ok=True)
    lines = []
    for title, names in (("Losses", LOSS_FUNCTIONS), ("Gradients and settings", TOOLS)):
        lines += [title, "-" * len(title), "", ".. autosummary::", "", *(f"   fastloss.{n}" for n in names), ""]
    lines += ["Reference", "---------", ""]
    for name in LOSS_FUNCTIONS + TOOLS:
        lines += [f".. autofunction:: fastloss.{name}", ""]
    text = "\n".join(lines)
    path = os.path.join(out, "functions.rst.inc")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:  # rewriting an unchanged file would rebuild every page
        with open(path, "w") as f:
            f.write(text)


_write_function_list()
