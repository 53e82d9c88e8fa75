"""The package as a newcomer meets it: importing a source tree without its compiled kernels, the
version, the type marker."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastloss

PACKAGE = Path(fastloss.__file__).resolve().parent


def _copy_without_extensions(dest: Path) -> Path:
    """``fastloss/`` copied to ``dest`` without compiled extensions or caches."""
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "*.dylib", "__pycache__", "*.c", "*.html")
    shutil.copytree(PACKAGE, dest / "fastloss", ignore=ignore)
    return dest


def _import_in(folder: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", "import fastloss"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_source_tree_without_built_kernels_says_what_to_do(tmp_path):
    tree = _copy_without_extensions(tmp_path)
    (tree / "setup.py").write_text("# a source checkout\n")
    done = _import_in(tree)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastloss was imported from its source tree")
    assert "another directory" in last and "pip install -e ." in last
    assert "fastloss._cy.ranking" in last
    # one error, not a chain of them
    assert done.stderr.count("Error: ") == 1 and "During handling" not in done.stderr, done.stderr


def test_installation_without_kernels_says_reinstall(tmp_path):
    tree = _copy_without_extensions(tmp_path)  # no setup.py beside it: an installed copy
    done = _import_in(tree)
    assert done.returncode != 0
    assert "lacks its compiled kernels" in done.stderr and "reinstall" in done.stderr


def test_version_is_the_projects():
    assert isinstance(fastloss.__version__, str) and fastloss.__version__[0].isdigit()
    from importlib import metadata

    try:
        installed = metadata.version("fastloss")
    except metadata.PackageNotFoundError:
        installed = None
    pyproject = PACKAGE.parent / "pyproject.toml"
    if pyproject.exists():
        import re

        want = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M).group(1)
        assert fastloss.__version__ == want
    elif installed is not None:
        assert fastloss.__version__ == installed


def test_typed_package():
    assert (PACKAGE / "py.typed").exists()
    import inspect
    import typing

    for name in fastloss.api.__all__:
        fn = getattr(fastloss, name)
        hints = typing.get_type_hints(inspect.unwrap(fn))
        assert "return" in hints, f"{name} has no return annotation"
