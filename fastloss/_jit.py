"""The only place where Numba's options are spelled.

Every CPU kernel of fastloss is compiled through :func:`kernel` (parallel loops over rows or chunks) or
:func:`device` (one-point scalar functions inlined into those loops), so that caching, the fast-math flag
set and the error model are chosen once.
"""
from __future__ import annotations

import os
import tempfile


def _ensure_cache_dir() -> None:
    # Numba's cache=True raises at decoration time when the package directory is read-only and no
    # NUMBA_CACHE_DIR is set (site-packages installed by root, say). Point it at a per-user cache
    # directory then, before numba reads its configuration.
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if os.access(here, os.W_OK):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for root in (base, tempfile.gettempdir()):
        path = os.path.join(root, "fastloss", "numba")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            os.environ["NUMBA_CACHE_DIR"] = path
            try:  # numba may already have been imported by the caller
                import numba.core.config as _cfg

                _cfg.CACHE_DIR = path
            except Exception:  # pragma: no cover - numba internals moved
                pass
            return


_ensure_cache_dir()

import numba  # noqa: E402

#: LLVM fast-math flags that let reductions vectorise (reassoc), fuse multiply-adds (contract) and use
#: reciprocals (arcp) while keeping IEEE semantics for NaN and inf (no 'nnan', no 'ninf'): PyTorch
#: propagates NaN and inf and so must we. Measured as fast as fastmath=True on this machine.
#: Compensated (Kahan) summation does not survive 'reassoc': accumulate in float64 instead.
FASTMATH = frozenset({"reassoc", "contract", "arcp", "afn", "nsz"})

_COMMON = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))


def kernel(fn=None, *, parallel: bool = True):
    """Compile a module-level loop (``parallel=True`` turns ``prange`` into threads)."""

    def deco(f):
        return numba.njit(parallel=parallel, **_COMMON)(f)

    return deco(fn) if fn is not None else deco


def device(fn):
    """Compile a scalar one-point function that is always inlined into the loops calling it."""
    return numba.njit(inline="always", **_COMMON)(fn)


def set_num_threads(n: int) -> None:
    """Set the number of threads used by fastloss's CPU kernels (Numba and Cython alike)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads needs n >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def get_num_threads() -> int:
    """The number of threads fastloss's CPU kernels use (default: ``NUMBA_NUM_THREADS`` or all cores)."""
    return int(numba.get_num_threads())
