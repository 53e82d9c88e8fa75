"""Helpers shared by the test modules: tolerances, conversions to torch, case parametrisation."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from fastloss._registry import REGISTRY

try:  # tests that need PyTorch skip cleanly without it
    import torch
except ImportError:  # pragma: no cover - CI installs torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch 2.13 is not installed")

DTYPES = (np.float32, np.float64)
SEED = 20261122


def tolerance(dtype):
    """(rtol, atol-scale) for comparing a result of ``dtype`` with a float64 ground truth."""
    return (2e-5, 2e-6) if np.dtype(dtype) == np.float32 else (1e-9, 1e-12)


def assert_close(actual, expected, dtype, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, ascale = tolerance(dtype)
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=ascale * max(scale, 1.0), equal_nan=True, err_msg=what)


def positional_index(spec, name):
    return list(inspect.signature(spec.fn).parameters).index(name)


def diff_positions(spec):
    return [positional_index(spec, n) for n in spec.diff]


def diff_slots(spec, case):
    """Where ``case`` holds each differentiated input: a position in ``case.args`` or a keyword of
    ``case.kwargs`` (keyword-only inputs such as ``linear_bias``); an optional input the case leaves
    out (absent or None), or gives as a Python number (``gaussian_nll_loss``'s float ``var``), has no
    gradient and no slot. Returns ``[(name, slot), ...]`` in ``diff`` order."""
    slots = []
    for name in spec.diff:
        pos = positional_index(spec, name)
        if pos < len(case.args):
            if not isinstance(case.args[pos], (int, float)):
                slots.append((name, pos))
        elif case.kwargs.get(name) is not None and not isinstance(case.kwargs[name], (int, float)):
            slots.append((name, name))
    return slots


def slot_value(case, slot):
    return case.args[slot] if isinstance(slot, int) else case.kwargs[slot]


def with_slot(case, slot, value):
    """``(args, kwargs)`` of ``case`` with the input at ``slot`` replaced by ``value``."""
    args, kwargs = list(case.args), dict(case.kwargs)
    if isinstance(slot, int):
        args[slot] = value
    else:
        kwargs[slot] = value
    return args, kwargs


def case_params(filter_fn=lambda spec: True, dtypes=DTYPES):
    """pytest params (spec, dtype, case) over every registered loss whose family is importable."""
    params = []
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        if not filter_fn(spec):
            continue
        for dtype in dtypes:
            try:
                cases = spec.cases(np.random.default_rng(SEED), dtype)
            except (ImportError, KeyError, AttributeError) as exc:
                params.append(pytest.param(spec, dtype, None, id=f"{name}-{np.dtype(dtype).name}-missing",
                                           marks=pytest.mark.skip(reason=f"family not available: {exc!r}")))
                continue
            for i, case in enumerate(cases):
                params.append(pytest.param(spec, dtype, case, id=f"{name}-{np.dtype(dtype).name}-{case.id or i}"))
    return params


def copy_args(case):
    def cp(a):
        return a.copy() if isinstance(a, np.ndarray) else a

    return tuple(cp(a) for a in case.args), {k: cp(v) for k, v in case.kwargs.items()}


def upcast(a):
    """float arrays to float64 (the reference's precision); everything else unchanged."""
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        return a.astype(np.float64)
    return a


def to_torch(a, requires_grad=False):
    if isinstance(a, np.ndarray):
        if a.dtype.kind == "f":
            return torch.tensor(a.astype(np.float64), requires_grad=requires_grad)
        if a.dtype.kind in "iu":
            return torch.tensor(a.astype(np.int64))
        if a.dtype.kind == "b":
            return torch.tensor(a)
    return a


def probe_without_simulator(script: str) -> dict:
    """Run ``script`` (Python that prints one JSON line last) in a process without the CUDA simulator,
    importing the same fastloss as the tests, and return what it printed. For checks of the real-GPU
    code paths that need numba-cuda but no GPU. Skips without numba-cuda, unless
    ``FASTLOSS_REQUIRE_CUDA_COMPILE=1`` (CI), where it fails, as it does on any other error."""
    import json
    import os
    import subprocess
    import sys

    import fastloss

    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "FASTLOSS_RECORD_LAUNCHES")}
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        if os.environ.get("FASTLOSS_REQUIRE_CUDA_COMPILE", "") == "1" or "numba.cuda" not in done.stderr:
            pytest.fail(done.stderr[-4000:])
        pytest.skip(f"numba-cuda is needed (pip install 'numba-cuda[cu12]'): {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# CUDA: where the kernels can run, and PTX reports from scripts run without the simulator
# --------------------------------------------------------------------------------------------------
def _real_gpu() -> bool:
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - a broken CUDA install counts as no GPU
        return False


def _simulated() -> bool:
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


#: CUDA kernel tests: they run under the simulator (CI) or on a GPU.
needs_device = pytest.mark.skipif(not _simulated() and not _real_gpu(), reason="needs NUMBA_ENABLE_CUDASIM=1 or a GPU")


def _nvvm_available() -> bool:
    import os
    import subprocess
    import sys

    code = "from numba.cuda.cudadrv import nvvm; nvvm.NVVM()"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120).returncode == 0
    except Exception:  # pragma: no cover
        return False


#: PTX tests: they need numba-cuda's NVVM (no GPU).
needs_nvvm = pytest.mark.skipif(not _nvvm_available(), reason="needs numba-cuda with NVVM (pip install numba-cuda[cu12])")


def ptx_report(script: str) -> dict:
    """Run ``tests/<script>`` (it compiles kernels for real targets and prints one JSON line last) in a
    process without the simulator, importing the same fastloss as the tests; return its report."""
    import json
    import os
    import subprocess
    import sys

    import fastloss

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, env.get("PYTHONPATH")]))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    done = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
