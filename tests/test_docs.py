"""The documentation in docs/ builds with Sphinx, warnings as errors, and nothing in the repository
points outside it. Skipped without Sphinx (the `docs` extra; CI installs it)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.mark.slow
@pytest.mark.skipif(not (DOCS / "conf.py").exists(), reason="docs/ is not beside the tests")
def test_docs_build_without_warnings(tmp_path):
    for module in ("sphinx", "numpydoc", "myst_parser"):
        pytest.importorskip(module)
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    import fastloss

    for name in fastloss.losses():  # every loss of this version has its entry, from its docstring
        assert f'id="fastloss.{name}"' in api, name
    assert "dim" in api  # log_softmax's alias is in its signature
    for page in ("contract", "guide", "install", "performance", "gpu", "developing"):
        assert (tmp_path / "html" / f"{page}.html").exists()


@pytest.mark.skipif(not (DOCS / "conf.py").exists(), reason="docs/ is not beside the tests")
def test_nothing_points_outside_the_repository():
    texts = [ROOT / "README.md", ROOT / "DEVELOPING.md", *ROOT.glob("fastloss/**/*.py"), *DOCS.glob("*.md")]
    bad = [str(p.relative_to(ROOT)) for p in texts if p.exists() and re.search(r"shared/SPEC|\bthe SPEC\b", p.read_text())]
    assert bad == []


@pytest.mark.skipif(not (DOCS / "contract.md").exists(), reason="docs/ is not beside the tests")
def test_contract_names_every_loss():
    import fastloss

    contract = (DOCS / "contract.md").read_text()
    missing = [n for n in fastloss.losses() if f"`{n}" not in contract]
    assert missing == []
