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


# --------------------------------------------------------------------------------------------------
# The thread pool of the CPU kernels
# --------------------------------------------------------------------------------------------------
# Serial nogil kernels on a few plain Python threads rather than Numba `prange`:
# * a call too small to split runs on the calling thread and never touches another thread, so a busy
#   machine cannot stall it on a descheduled worker (the OpenMP barrier of a `prange` kernel made
#   value_and_grad(cross_entropy) on (64, 10) 4.3x slower while another process held one of 2 cores);
# * the chunks of a big call are claimed from a shared counter by the caller and the workers alike,
#   so a descheduled worker delays only the chunk it holds, and the caller never idles on a queue;
# * serial kernels compile in a fraction of a `prange` kernel's time (no parfor passes);
# * calls from several Python threads at once are safe (Numba's workqueue layer aborts there).
# Results are combined in chunk order, so they depend only on the chunk count, which the callers
# derive from the size of the work, never from the number of threads.
import itertools  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

_POOL_LOCK = threading.Lock()
_POOL = None  # (pid, ThreadPoolExecutor): a forked child must not inherit the parent's dead threads


def _pool() -> ThreadPoolExecutor:
    global _POOL
    pool = _POOL
    if pool is not None and pool[0] == os.getpid():
        return pool[1]
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)  # the caller works too
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastloss"))
        return _POOL[1]


def run_chunks(chunk, nchunks: int, *args) -> list:
    """``[chunk(c, nchunks, *args) for c in range(nchunks)]``, the chunks shared among the calling thread
    and up to ``get_num_threads() - 1`` pool threads (``chunk`` must release the GIL to gain from them).

    One chunk, or one thread, runs on the calling thread alone. Otherwise every participant claims the
    next unclaimed chunk until none is left; the results come back in chunk order.
    """
    if nchunks <= 1:
        return [chunk(0, 1, *args)]
    helpers = min(get_num_threads(), nchunks) - 1
    if helpers <= 0:
        return [chunk(c, nchunks, *args) for c in range(nchunks)]
    results = [None] * nchunks
    claim = itertools.count().__next__  # atomic under the GIL

    def work():
        c = claim()
        while c < nchunks:
            results[c] = chunk(c, nchunks, *args)
            c = claim()

    pool = _pool()
    futures = [pool.submit(work) for _ in range(helpers)]
    error = None
    try:
        work()
    except BaseException as e:  # noqa: BLE001 - re-raised once the helpers are done with the arrays
        error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:  # noqa: BLE001
            error = error or e
    if error is not None:
        raise error
    return results
