"""``numba.cuda``, imported at first GPU use with one clear error when the installed set cannot import it.

Only :mod:`fastloss._cuda_arrays` (and so every CUDA family, and ``fastloss bench --device cuda``)
imports this module, so ``import fastloss`` and the CPU paths never import ``numba.cuda``.

Known incompatibility handled here: numba-cuda 0.30.x registers an overload of ``np.row_stack`` at
import time, and NumPy 2.5 removed ``np.row_stack`` (an alias of ``np.vstack`` since NumPy 2.0), so
``import numba.cuda`` raises ``AttributeError`` there. The ``cuda*`` extras pin ``numpy<2.5``; for a
set installed otherwise, ``np.row_stack`` is set to ``np.vstack`` for the duration of that one import
only (the overload it registers is then numba-cuda's own ``np.vstack`` one) and removed right after,
so NumPy is left as it was.
"""
from __future__ import annotations

import numpy as np

#: The working set the ``cuda``/``cuda12``/``cuda13`` extras of fastloss install (pyproject.toml).
SUPPORTED = "numba-cuda 0.30.4 with NumPy < 2.5 (CuPy 14.2 for CuPy arrays)"
FIX = 'pip install "fastloss[cuda12]" (CUDA 12 driver) or "fastloss[cuda13]" (CUDA 13 driver)'


def _import_numba_cuda():
    added_alias = not hasattr(np, "row_stack")
    if added_alias:
        np.row_stack = np.vstack
    try:
        from numba import cuda
    finally:
        if added_alias:
            del np.row_stack
    return cuda


def import_cuda():
    """``numba.cuda``, or ``ImportError`` naming the installed versions, the supported set and the fix."""
    try:
        return _import_numba_cuda()
    except Exception as exc:  # ImportError, or AttributeError etc. from inside numba-cuda's import
        versions = {}
        for name in ("numba", "numba-cuda", "numpy", "cupy-cuda12x", "cupy-cuda13x"):
            try:
                from importlib.metadata import version

                versions[name] = version(name)
            except Exception:
                versions[name] = "not installed"
        found = ", ".join(f"{k} {v}" for k, v in versions.items())
        raise ImportError(
            f"fastloss cannot use the GPU: importing numba.cuda failed ({type(exc).__name__}: {exc}). "
            f"Installed: {found}. fastloss's GPU path needs {SUPPORTED}; to fix: {FIX}."
        ) from exc


cuda = import_cuda()
