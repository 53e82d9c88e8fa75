"""Running a measurement in a fresh process on a given checkout of fastloss (``benches/first_call.py``,
``benches/percall.py``): several checkouts compare in one run, their samples alternated."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def run_child(path: str, child: str, argv=(), env=None, cwd=None) -> dict:
    """Run ``python -c child *argv`` with ``path`` (a checkout) first on ``PYTHONPATH`` and return the
    JSON object its last line of output prints, without its ``"file"`` key: ``fastloss.__file__``,
    which must lie in ``path`` (else ``RuntimeError``). ``cwd`` defaults to the temporary folder:
    ``python -c`` puts the working directory first on ``sys.path``, where a checkout would shadow
    ``PYTHONPATH``'s."""
    env = dict(env if env is not None else os.environ, PYTHONPATH=os.path.abspath(path))
    res = subprocess.run([sys.executable, "-c", child, *map(str, argv)], env=env, capture_output=True, text=True,
                         check=True, cwd=cwd or tempfile.gettempdir())
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if not out.pop("file").startswith(os.path.abspath(path) + os.sep):
        raise RuntimeError(f"the sample of {path} imported another fastloss")
    return out
