"""GPU array plumbing shared by the CUDA families (``fastloss.families.*_cuda``).

Imported only when a caller passes a GPU array (see :mod:`fastloss._dispatch`), so ``import fastloss``
never imports ``numba.cuda``; CuPy is touched only for CuPy arrays, which the caller has imported.

Two array libraries are served, each getting its own kind of array back:

* CuPy arrays: results are CuPy arrays on the input's device; kernels launch on CuPy's current stream
  (``cuda.external_stream``), so nothing synchronises the host.
* Numba device arrays (also the CUDA simulator's, ``NUMBA_ENABLE_CUDASIM=1``) and any other object
  with ``__cuda_array_interface__`` (wrapped zero-copy): results are Numba device arrays; kernels
  launch on the default stream.

The module also holds the pieces every CUDA family shares: launch geometry, the shared-memory block
reductions, the deterministic two-stage reduction of per-block partial sums, contiguous copies and
dtype casts, the incoming gradient as the kernels read it, and the value checks of
:mod:`fastloss._validation` (``min``/``max`` of targets) for Numba device arrays, which have no
``min``/``max`` methods.
"""
from __future__ import annotations

import functools
import json
import math
import os
import types
import warnings

import numpy as np

from ._cuda_import import cuda  # numba.cuda, or one clear ImportError when it cannot be imported
from numba import config, float64  # noqa: E402  (after numba.cuda: see _cuda_import)

#: True under the CUDA simulator, where each GPU thread is a Python thread: blocks are kept small
#: there so that the tests stay fast (the kernels are correct for any power-of-two block size).
SIMULATOR = bool(config.ENABLE_CUDASIM)

#: Threads per block of every kernel (a power of two; the shared-memory reductions rely on it).
TPB = 8 if SIMULATOR else 256
#: Upper bound on the blocks of a grid-stride kernel; also the length of its partial-sum buffer.
MAX_BLOCKS = 3 if SIMULATOR else 1024
#: Copies of non-contiguous Numba device arrays handle up to this many dimensions.
MAX_NDIM = 6


#: Every kernel made by :func:`jit_kernel` in this process, for the test that their on-disk cache
#: entries cannot collide (``tests/test_cuda_cache.py``).
KERNELS: list = []


def jit_kernel(fn=None, **options):
    """``cuda.jit`` for a fastloss kernel (a decorator, with or without options), cached on disk.

    On real GPUs the compiled kernel is kept in Numba's on-disk cache (``cache=True``, next to the
    source as the CPU kernels' are), so a fresh process loads it instead of compiling (issue 9: a first
    call within 1 s with the cache warm). The simulator compiles nothing and caches nothing.

    A cache entry is found by the kernel's module and ``__qualname__`` and checked against its bytecode
    and closure, *not* against its globals: kernels built from one template with different bound
    globals (``pointwise_cuda``'s specialisations) must each carry a name of their own, or one would
    load another's code. :data:`KERNELS` lets a test check that.
    """
    if fn is None:
        return functools.partial(jit_kernel, **options)
    if not SIMULATOR:
        options.setdefault("cache", True)
    made = cuda.jit(fn, **options)
    KERNELS.append(made)
    return made


# --------------------------------------------------------------------------------------------------
# Which library, which device
# --------------------------------------------------------------------------------------------------
def is_cupy(a) -> bool:
    """True for CuPy arrays, told by class so that CuPy is never imported here."""
    return type(a).__module__.split(".")[0] == "cupy"


def _is_simulated(a) -> bool:
    return type(a).__module__.startswith("numba.cuda.simulator")


def device_id(a):
    """The ordinal of the GPU holding ``a``, or ``None`` where the array does not say."""
    if is_cupy(a):
        return int(a.device.id)
    if _is_simulated(a):
        return 0  # the simulator has exactly one device
    gpu_data = getattr(a, "gpu_data", None)  # a Numba device array: the context it was allocated in
    if gpu_data is not None and getattr(gpu_data, "context", None) is not None:
        return int(gpu_data.context.device.id)
    dev = getattr(a, "device", None)  # e.g. a torch tensor: device.index
    for attr in ("id", "index"):
        if isinstance(getattr(dev, attr, None), int):
            return getattr(dev, attr)
    return None


def check_same_device(**arrays) -> None:
    """``ValueError`` naming the arguments when GPU arrays live on different devices."""
    where = {name: device_id(a) for name, a in arrays.items()}
    known = {d for d in where.values() if d is not None}
    if len(known) > 1:
        listing = ", ".join(f"{name} on GPU {d}" for name, d in where.items() if d is not None)
        raise ValueError(f"arrays on different GPUs: {listing}; move them to one device first")
    libraries = {is_cupy(a) for a in arrays.values()}
    if len(libraries) > 1:
        cupy_names = [n for n, a in arrays.items() if is_cupy(a)]
        other = [n for n, a in arrays.items() if not is_cupy(a)]
        raise TypeError(
            f"CuPy and Numba device arrays mixed: {', '.join(cupy_names)} from CuPy, {', '.join(other)} not; "
            "use one array library per call"
        )


def as_device_array(a):
    """CuPy and Numba device arrays as they are; any other ``__cuda_array_interface__`` object as a
    zero-copy Numba device array view (synchronising on the stream it exports, as the protocol asks)."""
    if is_cupy(a) or _is_simulated(a) or (cuda.is_cuda_array(a) and hasattr(a, "copy_to_host")):
        return a
    return cuda.as_cuda_array(a)


# --------------------------------------------------------------------------------------------------
# Allocation, views and copies in the input's library
# --------------------------------------------------------------------------------------------------
def _cupy():
    import cupy  # only reached with CuPy arrays, so CuPy is already imported by the caller

    return cupy


def empty(shape, dtype, like):
    """A new uninitialised C-contiguous array of ``like``'s library (and device)."""
    shape = tuple(int(s) for s in shape)
    if is_cupy(like):
        return _cupy().empty(shape, dtype=dtype)
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def zeros(shape, dtype, like):
    """A new zeroed C-contiguous array of ``like``'s library (and device), zeroed in stream order
    (CuPy) or before returning (Numba)."""
    shape = tuple(int(s) for s in shape)
    if is_cupy(like):
        return _cupy().zeros(shape, dtype=dtype)
    return cuda.to_device(np.zeros(shape, dtype=np.dtype(dtype)))


def is_c_contiguous(a) -> bool:
    if is_cupy(a):
        return bool(a.flags.c_contiguous)
    return bool(a.is_c_contiguous())


def reshape(a, shape):
    """A view of the C-contiguous ``a`` with a new shape."""
    return a.reshape(tuple(int(s) for s in shape))


def scalar_view(buf):
    """The first element of a one-element result buffer as a 0-d array (a reduced loss).

    CuPy's 0-d arrays support ``float()``; Numba's device arrays do not, so theirs come back as a
    0-d device array of a subclass that adds ``float()`` and ``int()`` (each copies the value to the
    host, synchronising it, as CuPy's do).
    """
    if is_cupy(buf):
        return buf.reshape(())
    if _is_simulated(buf):
        return _scalar_classes()[1](buf._ary.reshape(()))
    return _scalar_classes()[0](shape=(), strides=(), dtype=buf.dtype, gpu_data=buf.gpu_data, stream=buf.stream)


@functools.lru_cache(maxsize=None)
def _scalar_classes():
    """``(DeviceScalar, SimulatedDeviceScalar)``: 0-d Numba device arrays that ``float()`` accepts."""

    def __float__(self):
        return float(self.copy_to_host())

    def __int__(self):
        return int(self.copy_to_host())

    doc = "A reduced loss: a 0-d Numba device array that float() and int() accept."
    classes = []
    for base in ("DeviceNDArray", "FakeCUDAArray"):
        cls = None
        if base == "DeviceNDArray" and not SIMULATOR:
            from numba.cuda.cudadrv.devicearray import DeviceNDArray as cls
        elif base == "FakeCUDAArray" and SIMULATOR:
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as cls
        # the base's module name: arrays are told apart by their class's module (is_cupy, _dispatch)
        methods = {"__float__": __float__, "__int__": __int__, "__doc__": doc,
                   "__module__": cls.__module__ if cls is not None else __name__}
        classes.append(type("DeviceScalar", (cls,), methods) if cls is not None else None)
    return tuple(classes)


def contiguous(a):
    """``a`` itself when it is C-contiguous, else a C-contiguous copy made on the device."""
    if is_c_contiguous(a):
        return a
    if is_cupy(a):
        return _cupy().ascontiguousarray(a)
    out = empty(a.shape, a.dtype, a)
    if a.size:
        _copy_strided(a, out)
    return out


def astype(a, dtype):
    """``a`` converted to ``dtype`` (a new C-contiguous array; ``a`` itself when already of ``dtype``)."""
    dtype = np.dtype(dtype)
    if np.dtype(a.dtype) == dtype:
        return a
    if is_cupy(a):
        return a.astype(dtype)
    src = contiguous(a)
    out = empty(a.shape, dtype, a)
    if a.size:
        n = a.size
        launch(_cast_kernel, blocks_for(n), a, reshape(src, (n,)), reshape(out, (n,)))
    return out


def broadcast_to(a, shape):
    """A read-only stride-0 view of ``a`` broadcast to ``shape`` (``ValueError`` if it does not fit)."""
    shape = tuple(int(s) for s in shape)
    np.broadcast_shapes(tuple(a.shape), shape)  # raises the usual ValueError
    if tuple(a.shape) == shape:
        return a
    if is_cupy(a):
        return _cupy().broadcast_to(a, shape)
    if _is_simulated(a):
        return type(a)(np.broadcast_to(a._ary, shape))
    lead = len(shape) - a.ndim
    strides = [0] * lead + [0 if n == 1 and m != 1 else s for n, m, s in zip(a.shape, shape[lead:], a.strides)]
    return type(a)(shape=shape, strides=tuple(strides), dtype=a.dtype, gpu_data=a.gpu_data)


def _copy_strided(src, dst):
    """Copy a non-contiguous Numba device array into the C-contiguous ``dst`` of the same shape."""
    if src.ndim > MAX_NDIM:
        # Rare: copy the leading index one slice at a time (each slice has one dimension less).
        for i in range(src.shape[0]):
            _copy_strided(src[i], dst[i])
        return
    n = src.size
    launch(_copy_kernel, blocks_for(n), src, src, reshape(dst, (n,)))


# --------------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------------
_EXTERNAL_STREAMS: dict = {}


def stream_for(like):
    """The stream to launch on: CuPy's current stream for CuPy arrays, else the default stream (0)."""
    if not is_cupy(like):
        return 0
    ptr = int(_cupy().cuda.get_current_stream().ptr)
    if ptr == 0:
        return 0  # CuPy's null stream is CUDA's legacy default stream, numba's stream 0
    stream = _EXTERNAL_STREAMS.get(ptr)
    if stream is None:
        stream = _EXTERNAL_STREAMS[ptr] = cuda.external_stream(ptr)
    return stream


def _wrap_cai(a):
    # Numba would synchronise the host on the stream a CuPy array exports; the kernel runs on that
    # very stream, so the wrap skips it (sync=False) and the launch stays asynchronous.
    return cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)


def _strided_memory_view():
    """cuda.core's ``StridedMemoryView`` where numba-cuda launches kernels with it, else ``None``."""
    try:
        from numba.cuda.cudadrv.devicearray import StridedMemoryView
    except ImportError:
        return None
    return StridedMemoryView


#: How CuPy arrays are handed to kernels. numba-cuda 0.30 takes a cuda.core ``StridedMemoryView`` as
#: it is (typed from its dtype, rank and layout, its pointer read at launch): made from CuPy's DLPack
#: export with ``stream_ptr=-1`` (no stream ordering: the kernel runs on the array's own, CuPy's current,
#: stream) it costs one small Cython call per array. The other way, a ``DeviceNDArray`` built from the
#: ``__cuda_array_interface__`` dict (a context lookup, a stream object and an array header in Python
#: per array and launch), is the fallback: for non-contiguous views, which numba types only when
#: contiguous, and for good once a launch has failed with views and then worked with it.
_SMV = None if SIMULATOR else _strided_memory_view()


def _kernel_arg(a):
    if not is_cupy(a):
        return a
    if _SMV is not None and a.flags.c_contiguous:
        return _SMV.from_dlpack(a, stream_ptr=-1)
    return _wrap_cai(a)


#: Configured launches (``kernel[blocks, threads, stream]``) by (kernel, blocks, threads, stream), on
#: real GPUs: made once, with numba-cuda's warning about grids under 128 blocks silenced (a loss's
#: final reduction is one block by design); cleared when it grows past _MAX_CONFIGURED entries.
_CONFIGURED: dict = {}
_MAX_CONFIGURED = 4096


def _configured(kernel, blocks, threads, stream):
    if SIMULATOR:  # the simulator's kernel[...] configures the kernel object itself: nothing to keep
        return kernel[blocks, threads, stream]
    key = (kernel, blocks, threads, stream)
    made = _CONFIGURED.get(key)
    if made is None:
        if len(_CONFIGURED) >= _MAX_CONFIGURED:
            _CONFIGURED.clear()
        from numba.cuda.core.errors import NumbaPerformanceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=NumbaPerformanceWarning)
            made = _CONFIGURED[key] = kernel[blocks, threads, stream]
    return made


def launch(kernel, blocks: int, like, *args, threads: int = TPB):
    """Launch ``kernel[blocks, threads]`` on ``like``'s stream (asynchronously).

    The one launch point of every fastloss kernel: with ``FASTLOSS_RECORD_LAUNCHES`` set, it also
    records the kernel and its argument types (see :func:`_record_launch`).
    """
    global _SMV
    if _RECORD_PATH is not None:
        _record_launch(kernel, args)
    configured = _configured(kernel, int(blocks), int(threads), stream_for(like))
    try:
        configured(*[_kernel_arg(a) for a in args])
    except Exception:
        if _SMV is None or not any(is_cupy(a) for a in args):
            raise
        configured(*[_wrap_cai(a) if is_cupy(a) else a for a in args])  # raises if the views were not the cause
        _SMV = None
        warnings.warn("fastloss: numba-cuda did not launch with cuda.core StridedMemoryView arguments; CuPy "
                      "arrays are passed as DeviceNDArray wrappers from now on (slower launches)",
                      RuntimeWarning, stacklevel=2)


def kernel_factory(make):
    """Decorator for a module-level function ``make(*key) -> kernel`` that builds kernels specialised
    at compile time (``key``: strings, numbers, booleans). Each kernel is built once per key, and
    carries the way to rebuild it, so that the real-target compile test can find it by name."""

    @functools.lru_cache(maxsize=None)
    def made(*key):
        kernel = make(*key)
        kernel._fastloss_locator = {"factory": [make.__module__, make.__qualname__], "key": list(key)}
        return kernel

    made.__wrapped__ = make
    made.__doc__ = make.__doc__
    return made


# --------------------------------------------------------------------------------------------------
# Launch recording, for the real-target compile test
# --------------------------------------------------------------------------------------------------
#: Path of the JSON-lines file of recorded launches, or None (the default: recording costs one test
#: of this global per launch). The CUDA simulator does not type-check the branches a launch does not
#: take, so CI runs the CUDA tests under it with recording on, then compiles every recorded
#: (kernel, argument types) for real GPUs with NVVM in a process without the simulator
#: (``tests/cuda_compile.py``).
_RECORD_PATH = os.environ.get("FASTLOSS_RECORD_LAUNCHES") or None
_RECORDED: set = set()


def kernel_locator(kernel) -> dict:
    """How to find ``kernel`` in a fresh process: its module and qualified name, or its factory and key."""
    loc = getattr(kernel, "_fastloss_locator", None)
    if loc is not None:
        return loc
    fn = getattr(kernel, "py_func", None) or getattr(kernel, "fn", None)  # real dispatcher / simulator
    return {"function": [fn.__module__, fn.__qualname__]}


def numba_type_name(a) -> str:
    """The Numba type a real GPU launch gives argument ``a``, as its string (``array(float32, 1d, C)``).

    Device arrays follow numba-cuda's rule (``DeviceNDArray._numba_type_``): 'C' when C-contiguous
    and not broadcast, else 'F' when F-contiguous and not broadcast, else 'A'. The simulator's arrays
    wrap NumPy arrays, whose flags give the same answer.
    """
    from numba import typeof
    from numba.np import numpy_support

    if hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "strides") and not np.isscalar(a):
        broadcast = 0 in tuple(a.strides)
        flags = a.flags
        layout = "C" if flags["C_CONTIGUOUS"] and not broadcast else (
            "F" if flags["F_CONTIGUOUS"] and not broadcast else "A")
        return str(types_array(numpy_support.from_dtype(np.dtype(a.dtype)), a.ndim, layout))
    return str(typeof(a))


def types_array(dtype, ndim, layout):
    from numba.core import types as nbtypes

    return nbtypes.Array(dtype, ndim, layout)


def _record_launch(kernel, args) -> None:
    loc = kernel_locator(kernel)
    entry = {"kernel": loc, "types": [numba_type_name(a) for a in args]}
    key = json.dumps(entry, sort_keys=True)
    if key in _RECORDED:
        return
    _RECORDED.add(key)
    with open(_RECORD_PATH, "a", encoding="utf-8") as f:
        f.write(key + "\n")


def blocks_for(n: int, per_block: int = TPB) -> int:
    """Blocks of a grid-stride kernel over ``n`` items: enough to cover them, at most MAX_BLOCKS."""
    return max(1, min(MAX_BLOCKS, -(-int(n) // per_block)))


#: Blocks per multiprocessor a streaming grid-stride kernel is given: TPB = 256 threads each, 8 blocks
#: fill an SM's 2048 threads, enough loads in flight to saturate memory.
BLOCKS_PER_SM = 8
_SM_COUNTS: dict = {}


def multiprocessors(like) -> int:
    """The number of streaming multiprocessors of the GPU holding ``like`` (cached per device)."""
    if SIMULATOR:
        return 1
    dev = device_id(like)
    count = _SM_COUNTS.get(dev)
    if count is None:
        if is_cupy(like):
            count = int(_cupy().cuda.Device(dev).attributes["MultiProcessorCount"])
        else:
            count = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
        _SM_COUNTS[dev] = count
    return count


def grid_blocks(n: int, like, per_block: int = TPB) -> int:
    """Blocks of a streaming grid-stride kernel over ``n`` items on ``like``'s GPU: enough to cover
    them, at most BLOCKS_PER_SM per multiprocessor (1056 on a 132-SM H100/H200; MAX_BLOCKS under the
    simulator)."""
    cap = MAX_BLOCKS if SIMULATOR else BLOCKS_PER_SM * multiprocessors(like)
    return max(1, min(cap, -(-int(n) // per_block)))


def on_input_device(driver):
    """Run a family driver with CuPy's current device set to that of its CuPy arguments (multi-GPU)."""

    @functools.wraps(driver)
    def run(*args):
        for a in args:
            if is_cupy(a):
                with _cupy().cuda.Device(a.device.id):
                    return driver(*args)
        return driver(*args)

    return run


# --------------------------------------------------------------------------------------------------
# Reductions: per-block partial sums in float64, combined by one block in a fixed order
# --------------------------------------------------------------------------------------------------
def _block_sum(buf, value):
    """Sum of ``value`` over the block (every thread gets it); ``buf`` is a shared array of TPB.

    A tree in shared memory: the order of the additions depends on the block size only, so a result is
    the same from run to run. Every thread of the block must call it.
    """
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    step = TPB // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()  # buf may be reused right after
    return total


def _block_max(buf, value):
    """Maximum of ``value`` over the block (NaN is ignored unless every value is NaN)."""
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    step = TPB // 2
    while step > 0:
        if tid < step:
            other = buf[tid + step]
            if other > buf[tid] or buf[tid] != buf[tid]:
                buf[tid] = other
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


def block_reductions(namespace):
    """``(block_sum, block_max)`` compiled as device functions for the kernels of one module.

    ``namespace`` is that module's ``globals()`` (it must hold ``cuda`` and ``TPB``). Why not one
    shared compiled copy: the simulator swaps the ``cuda`` global of the *kernel's* module for its
    thread-aware fake for the whole launch, but swaps and restores it around each call of a device
    function from another module, which races between the block's threads. Bound to the kernel's own
    module, the block reductions always see the fake there; on a GPU the two ways are the same.
    """
    compiled = []
    for fn in (_block_sum, _block_max):
        rebound = types.FunctionType(fn.__code__, namespace, fn.__name__)
        rebound.__doc__ = fn.__doc__
        compiled.append(cuda.jit(device=True)(rebound))
    return tuple(compiled)


block_sum, block_max = block_reductions(globals())


@jit_kernel
def _finish_sum_kernel(partials, n_parts, factor, den, den_buf, use_den_buf, root, out):
    """``out[0] = factor * sum(partials[:n_parts]) / d`` with ``d = den_buf[0]`` if ``use_den_buf``
    else ``den``; its square root when ``root``.

    One block: thread k sums partials k, k + TPB, ... in order, then a block tree. ``out`` is the
    result buffer in the loss's dtype (or a float64 buffer for an intermediate such as a denominator).
    """
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    for k in range(cuda.threadIdx.x, n_parts, TPB):
        acc += partials[k]
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        d = den_buf[0] if use_den_buf else den
        v = factor * total / d
        if root:
            v = math.sqrt(v)
        out[0] = v


def finish_sum(partials, out, den=1.0, den_buf=None, factor=1.0, root=False):
    """Launch the final stage: ``out[0] = factor * sum(partials) / den`` (``den`` a float, or
    ``den_buf[0]``), square-rooted when ``root``; ``partials`` is 1-D."""
    use = den_buf is not None
    launch(_finish_sum_kernel, 1, out, partials, partials.shape[0], float(factor), float(den),
           den_buf if use else partials, use, bool(root), out)


def empty_sum(out, den=1.0, den_buf=None):
    """``out[0] = 0 / den`` for a reduced loss with nothing to sum (no rows, no elements): 0, or NaN
    for an empty mean (``den`` 0, or ``den_buf[0]`` on the device), as torch. The one launch a call
    without work makes."""
    finish_sum(partial_buffer(0, out), out, den=den, den_buf=den_buf)


def partial_buffer(blocks: int, like):
    """Float64 per-block partial sums, one per block of a launch (``blocks`` may be 0: an empty sum)."""
    return empty((blocks,), np.float64, like)


def result_buffer(like, dtype=None):
    """A one-element buffer for a reduced result (see :func:`scalar_view`)."""
    return empty((1,), like.dtype if dtype is None else dtype, like)


# --------------------------------------------------------------------------------------------------
# Element-wise helper kernels
# --------------------------------------------------------------------------------------------------
@jit_kernel
def _cast_kernel(src, dst):
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit(device=True)
def _strided_get(src, i):
    """Element ``i`` (C order) of an N-d array of any strides; branches on ``ndim`` are pruned at
    compile time, so each specialisation indexes with exactly ``src.ndim`` subscripts."""
    if src.ndim == 1:
        return src[i]
    if src.ndim == 2:
        n1 = src.shape[1]
        return src[i // n1, i % n1]
    if src.ndim == 3:
        n1, n2 = src.shape[1], src.shape[2]
        return src[i // (n1 * n2), (i // n2) % n1, i % n2]
    if src.ndim == 4:
        n1, n2, n3 = src.shape[1], src.shape[2], src.shape[3]
        return src[i // (n1 * n2 * n3), (i // (n2 * n3)) % n1, (i // n3) % n2, i % n3]
    if src.ndim == 5:
        n1, n2, n3, n4 = src.shape[1], src.shape[2], src.shape[3], src.shape[4]
        return src[i // (n1 * n2 * n3 * n4), (i // (n2 * n3 * n4)) % n1, (i // (n3 * n4)) % n2,
                   (i // n4) % n3, i % n4]
    n1, n2, n3, n4, n5 = src.shape[1], src.shape[2], src.shape[3], src.shape[4], src.shape[5]
    return src[i // (n1 * n2 * n3 * n4 * n5), (i // (n2 * n3 * n4 * n5)) % n1, (i // (n3 * n4 * n5)) % n2,
               (i // (n4 * n5)) % n3, (i // n5) % n4, i % n5]


@jit_kernel
def _copy_kernel(src, dst):
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = _strided_get(src, i)


@jit_kernel
def _range_kernel(src, parts):
    """Per-block (min, max) of a flat array's non-NaN values into ``parts[0, b]``, ``parts[1, b]``
    (float64), and their count into ``parts[2, b]``."""
    lo_buf = cuda.shared.array(TPB, float64)
    hi_buf = cuda.shared.array(TPB, float64)
    n_buf = cuda.shared.array(TPB, float64)
    lo = math.inf
    hi = -math.inf
    seen = 0.0
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        v = float64(src[i])
        if v == v:  # explicit comparisons: builtin min/max do not type for float64 on every CUDA target
            seen += 1.0
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    lo = -block_max(lo_buf, -lo)
    hi = block_max(hi_buf, hi)
    seen = block_sum(n_buf, seen)
    if cuda.threadIdx.x == 0:
        b = cuda.blockIdx.x
        parts[0, b] = lo
        parts[1, b] = hi
        parts[2, b] = seen


def value_range(a):
    """``(min, max)`` of ``a``'s non-NaN values as Python numbers, or ``None`` when there are none.

    For the validation layer (class indices, BCE's [0, 1]) on Numba device arrays, which have no
    ``min``/``max``; it synchronises the host, as any value check must. Integers are exact up to 2**53
    (class indices are far below that).
    """
    if a.size == 0:
        return None
    src = reshape(contiguous(a), (a.size,))
    blocks = blocks_for(a.size)
    parts = empty((3, blocks), np.float64, a)
    launch(_range_kernel, blocks, a, src, parts)
    host = parts.copy_to_host()
    if host[2].sum() == 0:
        return None
    lo, hi = host[0].min(), host[1].max()
    if np.dtype(a.dtype).kind in "iub":
        return int(lo), int(hi)
    return float(lo), float(hi)


def first_outside(a, lo: int, hi: int, allowed: int):
    """The first value (C order) of integer ``a`` outside ``[lo, hi)`` and not ``allowed``, or ``None``.

    Only called once a bad value is known to exist (error path): copies ``a`` to the host.
    """
    host = a.copy_to_host().ravel()
    bad = ((host < lo) | (host >= hi)) & (host != allowed)
    return int(host[bad][0]) if bad.any() else None


# --------------------------------------------------------------------------------------------------
# The incoming gradient, as the kernels read it
# --------------------------------------------------------------------------------------------------
class Incoming:
    """``grad_output`` for a kernel: element ``i`` of the loss gets ``scale * values[i * step]``, or
    ``scale`` alone when ``step < 0`` (a host number, or the default of ones).

    ``values`` is always a 1-D C-contiguous device array of the loss's dtype, so that a kernel is
    typed the same way whichever form ``grad_output`` takes. With ``step < 0`` the caller may pass any
    device array of that dtype and library (often the N-d input itself); it is swapped for a cached
    one-element array that is never read. Typing ``values[i * step]`` as a row of an N-d input was a
    compile error on real GPUs that the simulator, which runs only the branch taken, never showed.
    """

    __slots__ = ("scale", "values", "step")

    def __init__(self, scale, values, step):
        step = int(step)
        if step < 0:
            values = _unit_values(values)
        self.scale, self.values, self.step = float(scale), values, step

    def args(self):
        """The three kernel arguments ``(scale, values, step)``."""
        return self.scale, self.values, self.step


_UNIT_VALUES: dict = {}


def _unit_values(like):
    """A cached one-element 1-D array of ones of ``like``'s dtype, library and device."""
    key = (is_cupy(like), device_id(like), np.dtype(like.dtype).str)
    ones = _UNIT_VALUES.get(key)
    if ones is None:
        dtype = np.dtype(like.dtype)
        if is_cupy(like):
            ones = _cupy().ones((1,), dtype=dtype)
        else:
            ones = cuda.to_device(np.ones((1,), dtype=dtype))
        _UNIT_VALUES[key] = ones
    return ones


def incoming(grad_output, shape, like) -> Incoming:
    """``grad_output`` broadcast to the loss's ``shape`` for kernels over ``like`` (a device array).

    ``None`` or a host number: a scale. A device array: converted to ``like``'s dtype; one element is
    read by every loss element (step 0), one per element is read in C order (step 1), after a
    contiguous copy of the broadcast where it does not already have the loss's shape.
    """
    shape = tuple(int(s) for s in shape)
    g = grad_output
    if g is None:
        return Incoming(1.0, like, -1)
    from ._dispatch import is_device_array

    if not is_device_array(g):
        host = np.asarray(g)
        if host.size != 1:
            raise TypeError(
                "host and device arrays mixed: grad_output is a host array of shape "
                f"{host.shape} for GPU inputs; pass a device array or a number"
            )
        _check_broadcast(host.shape, shape)
        return Incoming(float(host.reshape(())), like, -1)
    g = as_device_array(g)
    if (is_cupy(g)) != (is_cupy(like)):
        raise TypeError("grad_output must come from the same array library as the inputs")
    _check_broadcast(tuple(g.shape), shape)
    g = astype(g, like.dtype)
    if g.size == 1:
        return Incoming(1.0, reshape(contiguous(g), (1,)), 0)
    full = contiguous(broadcast_to(g, shape))
    return Incoming(1.0, reshape(full, (full.size,)), 1)


def _check_broadcast(gshape, shape):
    try:
        if np.broadcast_shapes(tuple(gshape), shape) == shape:
            return
    except ValueError:
        pass
    raise ValueError(f"grad_output of shape {tuple(gshape)} does not broadcast to the loss's shape {tuple(shape)}")


@cuda.jit(device=True)
def incoming_at(scale, values, step, i):
    """The incoming gradient of loss element ``i`` (see :class:`Incoming`), in float64."""
    if step < 0:
        return scale
    return scale * float64(values[i * step])


def grad_buffer(out, like):
    """The gradient buffer for device input ``like``: the caller's ``out`` (checked) or a new array."""
    if out is None:
        return empty(like.shape, like.dtype, like)
    from ._dispatch import is_device_array

    if not is_device_array(out) or is_cupy(out) != is_cupy(like):
        kind = "a CuPy array" if is_cupy(like) else "a Numba device array"
        raise TypeError(f"out must be {kind} for these inputs, got {type(out).__name__}")
    out = as_device_array(out)
    if tuple(out.shape) != tuple(like.shape) or np.dtype(out.dtype) != np.dtype(like.dtype):
        raise ValueError(
            f"out has shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}; the gradient needs shape "
            f"{tuple(like.shape)} and dtype {np.dtype(like.dtype)}"
        )
    if not is_c_contiguous(out):
        raise ValueError("out must be a writeable C-contiguous array")
    return out

