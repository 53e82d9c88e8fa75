"""First-call latency of ``value_and_grad(cross_entropy)`` in a fresh process (issue 10).

Each sample is a new interpreter with its own ``NUMBA_CACHE_DIR``: ``empty`` starts from an empty
directory (Numba compiles), ``warm`` reuses one that a previous process filled (Numba loads the
cached machine code). A sample reports three times, separately:

* ``import``: ``import fastloss`` (NumPy already imported);
* ``first``: the first ``value_and_grad(cross_entropy)`` call on (64, 10) float32 class indices;
* ``first_cpu``: the CPU time of the first call (less sensitive than ``first`` to other processes);
* ``second``: the same call again (what a call costs once everything is loaded).

Several checkouts can be compared in one run, their samples alternated so that a machine whose load
drifts affects them alike (``--path`` once per checkout, e.g. ``--path . --path /work/main``)::

    python benches/first_call.py                       # this checkout, 3 empty + 5 warm samples
    python benches/first_call.py --path . --path ../main --empty 3 --warm 5

Nothing here is collected by asv (no ``time_`` functions); run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile

try:
    from ._checkouts import run_child  # imported as benches.NAME (asv's discovery)
except ImportError:
    from _checkouts import run_child  # run as a script

CHILD = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import fastloss
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 10)).astype(np.float32)
t = rng.integers(0, 10, 64)
f = fastloss.value_and_grad(fastloss.cross_entropy)
t2 = time.perf_counter()
c2 = time.process_time()
f(x, t)
t3 = time.perf_counter()
c3 = time.process_time()
f(x, t)
t4 = time.perf_counter()
print(json.dumps({"file": fastloss.__file__, "import": t1 - t0, "first": t3 - t2, "first_cpu": c3 - c2, "second": t4 - t3}))
"""


def sample(path: str, cache_dir: str, pycache: str) -> dict:
    # bytecode as an installed package has it (written once, to a folder of this run's, not into
    # the checkout), whatever PYTHONDONTWRITEBYTECODE says here
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return run_child(path, CHILD, env=env, cwd=os.path.dirname(cache_dir))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", action="append", help="a checkout of fastloss (repeatable; default: this one)")
    p.add_argument("--empty", type=int, default=3, help="samples with an empty Numba cache")
    p.add_argument("--warm", type=int, default=5, help="samples with a warm Numba cache")
    args = p.parse_args(argv)
    paths = args.path or [os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)]
    results = {path: {"empty": [], "warm": []} for path in paths}
    root = tempfile.mkdtemp(prefix="fastloss-first-call-")
    try:
        caches = {path: os.path.join(root, f"cache{i}") for i, path in enumerate(paths)}
        pycaches = {path: os.path.join(root, f"pycache{i}") for i, path in enumerate(paths)}
        for path in paths:  # bytecode first, so that no sample compiles Python source
            sample(path, os.path.join(root, "scratch"), pycaches[path])
        for _ in range(args.empty):
            for path in paths:
                shutil.rmtree(caches[path], ignore_errors=True)
                os.makedirs(caches[path])
                results[path]["empty"].append(sample(path, caches[path], pycaches[path]))
        if not args.empty:  # fill each checkout's cache once (the empty samples did otherwise)
            for path in paths:
                os.makedirs(caches[path])
                sample(path, caches[path], pycaches[path])
        for _ in range(args.warm):
            for path in paths:
                results[path]["warm"].append(sample(path, caches[path], pycaches[path]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for path in paths:
        print(os.path.abspath(path))
        for kind in ("empty", "warm"):
            runs = results[path][kind]
            if not runs:
                continue
            cells = []
            for key in ("import", "first", "first_cpu", "second"):
                vals = [r[key] for r in runs]
                unit, scale = ("ms", 1e3) if key != "second" else ("us", 1e6)
                cells.append(f"{key} median {statistics.median(vals) * scale:.1f} {unit} "
                             f"[{min(vals) * scale:.1f}-{max(vals) * scale:.1f}]")
            print(f"  {kind:5s} cache (n={len(runs)}): " + ", ".join(cells))


if __name__ == "__main__":
    main()
