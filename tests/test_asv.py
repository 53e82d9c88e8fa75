"""The asv suite end to end, in miniature: one tiny benchmark run with ``asv run --python=same`` and
published; the published graph data must hold fastloss's series beside its peer's (the implementation
is a benchmark parameter, so one graph draws both). Skipped without asv (CI installs it)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastloss

pytest.importorskip("asv")
BENCHES = Path(__file__).resolve().parents[1] / "benches"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="asv needs git"),
    pytest.mark.skipif(not (BENCHES / "_suite.py").exists(), reason="benches/ is not beside the tests"),
]

TINY = '''
from . import _suite


class Tiny(_suite._ValueAndGrad):
    params = [["fastloss", "reference"], ["mse_loss"], [4096], ["float64"]]
'''


def _run(cmd, cwd, env):
    done = subprocess.run([sys.executable, "-m", "asv", *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"asv {' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_asv_run_and_publish_show_peers_side_by_side(tmp_path):
    suite = tmp_path / "benchmarks"
    suite.mkdir()
    shutil.copy(BENCHES / "_suite.py", suite / "_suite.py")
    (suite / "__init__.py").write_text("")
    (suite / "bench_tiny.py").write_text(TINY)

    repo = tmp_path / "repo"  # asv records results under a commit of a repository
    repo.mkdir()
    git = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q", "-b", "main"], **git)
    (repo / "README").write_text("asv smoke test\n")
    subprocess.run(["git", "add", "README"], **git)
    subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-q", "-m", "one"],
                   **git)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], text=True, **git).stdout.strip()

    conf = tmp_path / "asv.conf.json"
    conf.write_text(json.dumps({
        "version": 1, "project": "fastloss", "repo": str(repo), "branches": ["main"], "dvcs": "git",
        "environment_type": "virtualenv", "benchmark_dir": str(suite), "env_dir": str(tmp_path / "env"),
        "results_dir": str(tmp_path / "results"), "html_dir": str(tmp_path / "html"),
    }))
    env = dict(os.environ, HOME=str(tmp_path),  # asv keeps its machine file in the home folder
               ASV_PYTHONPATH=str(Path(fastloss.__file__).resolve().parents[1]))
    args = ["--config", str(conf)]
    _run(["machine", "--yes", "--machine", "smoke", *args], tmp_path, env)
    _run(["run", "--python=same", "--quick", "--set-commit-hash", commit, "--machine", "smoke",
          "--show-stderr", *args], tmp_path, env)
    _run(["publish", *args], tmp_path, env)

    graphs = [p for p in (tmp_path / "html" / "graphs").rglob("bench_tiny.Tiny.time_value_and_grad.json")
              if "summary" not in p.parts]  # summary/: the geometric mean over the parameters
    assert graphs, sorted(str(p) for p in (tmp_path / "html").rglob("*.json"))
    points = json.loads(graphs[0].read_text())
    # one point per commit: [revision, [fastloss's value, reference's value]] in parameter order
    (revision, values), = points
    assert len(values) == 2 and all(v is not None and v > 0 for v in values), points
    index = json.loads((tmp_path / "html" / "index.json").read_text())
    bench = index["benchmarks"]["bench_tiny.Tiny.time_value_and_grad"]
    assert bench["param_names"][0] == "impl" and bench["params"][0] == ["'fastloss'", "'reference'"]
