"""``fastloss.__version__``: the installed distribution's version (``importlib.metadata``).

A source tree used without installing has no metadata of its own (or, worse, an older installed
fastloss's): there the version is read from ``pyproject.toml`` beside the package.
"""
from __future__ import annotations

import os
import re
from importlib import metadata


def _from_pyproject() -> str | None:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    project = re.search(r"^\[project\](.*?)(?=^\[|\Z)", text, re.M | re.S)
    found = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
    return found.group(1) if found else None


def _version() -> str:
    source = _from_pyproject()  # a source tree: its own pyproject wins over any installed metadata
    if source is not None:
        return source
    try:
        return metadata.version("fastloss")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
