"""The only place where Numba's options are spelled.

Every CPU kernel of fastloss is compiled through :func:`kernel` (parallel loops over rows or chunks),
:func:`entry` (a kernel called from C, by pointer) or :func:`device` (one-point scalar functions inlined
into those loops), so that caching, the fast-math flag set and the error model are chosen once.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading


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


# --------------------------------------------------------------------------------------------------
# Cache freshness
# --------------------------------------------------------------------------------------------------
# Numba's cache=True keeps a compiled kernel as long as the kernel's own source file is unchanged, but
# a kernel inlines the one-point maths of _math.py and, in a family package (families/NAME/), the
# primitives of its sibling modules: an edit there would leave stale machine code in use. fastloss's
# kernels are therefore stamped with the hashes of those files too.
_ROOT = os.path.dirname(os.path.abspath(__file__))
_FAMILIES = os.path.join(_ROOT, "families")


#: ``from ..NAME`` in a family package's module: it borrows (and its kernels may inline) NAME's primitives
_SIBLING_IMPORT = re.compile(r"^\s*from \.\.(\w+)", re.MULTILINE)


def _package_files(here: str) -> list[str]:
    return sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py"))


def _source_files(py_file: str) -> list[str]:
    """The files whose contents a cached kernel defined in ``py_file`` depends on, ``py_file`` first:
    ``_math.py``, and when ``py_file`` is in a family package every module of that package and of the
    sibling families its modules import from (``from ..softmax.rows import ...``: lce's kernels inline
    softmax's row primitives)."""
    py_file = os.path.abspath(py_file)
    files = [py_file, os.path.join(_ROOT, "_math.py")]
    here = os.path.dirname(py_file)
    if os.path.dirname(here) == _FAMILIES:
        own = _package_files(here)
        files += own
        for f in own:
            with open(f, encoding="utf-8") as src:
                names = _SIBLING_IMPORT.findall(src.read())
            for name in sorted(set(names)):
                sibling = os.path.join(_FAMILIES, name)
                if os.path.isdir(sibling):
                    files += _package_files(sibling)
                elif os.path.isfile(sibling + ".py"):
                    files.append(sibling + ".py")
    return list(dict.fromkeys(files))


def _install_cache_locators() -> None:
    from numba.core import caching

    def stamp(path):
        st = os.stat(path)
        return caching._hash_source_file(path, st.st_mtime, st.st_size)

    # once per file and cache directory per process, not once per kernel (a family has dozens): the
    # sources of an imported module do not change under it
    stamps = {}
    ready = set()

    class _Dependencies:
        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(_ROOT + os.sep):
                return None  # not ours: Numba's own locators decide
            return super().from_function(py_func, py_file)

        def ensure_cache_path(self):
            path = self.get_cache_path()
            if path not in ready:
                super().ensure_cache_path()
                ready.add(path)

        def get_source_stamp(self):
            key = self._py_file
            if key not in stamps:
                stamps[key] = tuple(stamp(f) for f in _source_files(key))
            return stamps[key]

    bases = [getattr(caching, n, None) for n in ("UserProvidedCacheLocator", "InTreeCacheLocator",
                                                 "UserWideCacheLocator")]
    ours = [type(f"Fastloss{b.__name__}", (_Dependencies, b), {}) for b in bases if b is not None]
    locators = caching.CacheImpl._locator_classes
    if not any(c.__name__.startswith("Fastloss") for c in locators):
        locators[:0] = ours


try:
    _install_cache_locators()
except (ImportError, AttributeError):  # pragma: no cover - Numba internals moved: stamps are the source file's
    pass


# Loading a cached kernel. Numba refreshes its whole CPU target before it loads one: it imports every
# implementation module it has (and SciPy's linalg, through numba.np.arraymath's BLAS probe) and
# installs their registries, 0.3 s on a quiet machine and 2-3 s on a loaded one, spent by the first
# call of any loss in a fresh process. Rebuilding cached machine code needs none of that, only the
# runtime (NRT) the kernels allocate through; a compilation, which does need it, refreshes the target
# itself. Kernels compiled through this module load their cache that way.
def _make_quick_cache():
    from numba.core import caching
    from numba.core.runtime import rtsys

    class QuickLoadCache(caching.FunctionCache):
        #: False for a kernel compiled without the runtime (``kernel(nrt=False)``): its machine code
        #: calls none of NRT's functions, so loading it skips NRT's compilation (0.1-0.3 s).
        uses_nrt = True

        def load_overload(self, sig, target_context):
            if self.uses_nrt:
                rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)

    return QuickLoadCache


try:
    _QUICK_CACHE = _make_quick_cache()
except (ImportError, AttributeError):  # pragma: no cover - Numba internals moved
    _QUICK_CACHE = None


def _quick_load(dispatcher, nrt=True):
    """``dispatcher``, its cache loading without refreshing the whole target (see above)."""
    cache = getattr(dispatcher, "_cache", None)
    if _QUICK_CACHE is not None and type(cache) is _QUICK_CACHE.__bases__[0]:
        cache.__class__ = _QUICK_CACHE
        cache.uses_nrt = nrt
    return dispatcher


def kernel(fn=None, *, parallel: bool = True, nrt: bool = True):
    """Compile a module-level loop (``parallel=True`` turns ``prange`` into threads). ``nrt=False``
    compiles it without Numba's runtime: it may then allocate no array (views are fine), and a process
    whose first call loads it from the cache does not compile the runtime first."""

    def deco(f):
        opts = _COMMON if nrt else {**_COMMON, "_nrt": False}
        return _quick_load(numba.njit(parallel=parallel, **opts)(f), nrt)

    return deco(fn) if fn is not None else deco


def device(fn):
    """Compile a scalar one-point function that is always inlined into the loops calling it (not
    cached by itself: its code lives in its callers' caches)."""
    return numba.njit(inline="always", **{**_COMMON, "cache": False})(fn)


class _Entry:
    """A C entry point: ``fn`` compiled as a C function for each of its Numba signatures ``sigs``, each on
    the first call of :meth:`address` (cached as the kernels are, loaded without refreshing the
    target). Numba's ``cfunc`` compiles where it is declared: an import would compile, or load, every
    entry of every dtype."""

    def __init__(self, fn, sigs):
        self.py_func, self._sigs = fn, sigs
        self._cfuncs = [None] * len(sigs)
        self._lock = threading.Lock()

    def address(self, i: int) -> int:
        """The address of the C function of signature ``sigs[i]`` (valid while this object lives: it
        holds the machine code)."""
        cf = self._cfuncs[i]
        if cf is None:
            with self._lock:  # one compilation: a second would free the machine code of the first
                if self._cfuncs[i] is None:
                    self._cfuncs[i] = _compile_entry(self.py_func, self._sigs[i])
                cf = self._cfuncs[i]
        return cf.address


def _compile_entry(fn, sig):
    from numba.core import sigutils

    opts = {k: v for k, v in _COMMON.items() if k not in ("cache", "nogil")}
    opts["_nrt"] = False  # an entry allocates nothing: its arrays are views of the caller's memory
    try:
        from numba.core.ccallback import CFunc
    except ImportError:  # pragma: no cover - Numba internals moved: the public decorator (loads slower)
        return numba.cfunc(sig, cache=True, **opts)(fn)
    cf = CFunc(fn, sigutils.normalize_signature(sig), locals={}, options=opts)
    cf.enable_caching()
    _quick_load(cf, nrt=False)
    cf.compile()
    return cf


def entry(*sigs):
    """Compile a kernel as a C entry point, one per Numba signature in ``sigs`` (each compiled on first
    use, see :class:`_Entry`), for callers in C (Cython), which skip Numba's dispatcher and its
    unboxing of every argument: a few microseconds per call, more when the caches are cold. The kernel
    takes pointers and lengths, and views them as arrays with :data:`array_at`."""
    return lambda fn: _Entry(fn, sigs)


from numba.core import cgutils as _cgutils, types as _types  # noqa: E402
from numba.extending import intrinsic as _intrinsic  # noqa: E402


@_intrinsic
def array_at(typingctx, ptr, shape):
    """``array_at(ptr, shape)``, in an entry: the C-contiguous array of ``shape`` (a tuple of ``intp``)
    at the pointer ``ptr``, a view owning nothing (no reference count, no runtime)."""
    ndim = len(shape)
    arrty = _types.Array(ptr.dtype, ndim, "C")

    def codegen(context, builder, sig, args):
        from numba.np.arrayobj import make_array, populate_array

        data, shp = args
        ary = make_array(arrty)(context, builder)
        dims = _cgutils.unpack_tuple(builder, shp, ndim)
        item = context.get_constant(_types.intp, context.get_abi_sizeof(context.get_data_type(ptr.dtype)))
        strides = [item]  # C order: each stride the product of the item size and the later dimensions
        for d in reversed(dims[1:]):
            strides.insert(0, builder.mul(strides[0], d))
        populate_array(ary, data=data, shape=dims, strides=strides, itemsize=item, meminfo=None)
        return ary._getvalue()

    return arrty(ptr, shape), codegen


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
