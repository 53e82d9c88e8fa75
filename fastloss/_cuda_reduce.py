"""Warp and block reductions for the CUDA row kernels: warp shuffles on a GPU, shared memory under the
simulator.

On a GPU, a group of ``G`` lanes (``G`` a power of two, at most a warp, aligned within the warp) adds
or maximises its values with a butterfly of ``shfl_xor_sync`` (offsets ``G/2, ..., 1``): every lane ends
with the result, and it is the same bits in every lane (at each step lane ``i`` computes
``s_i + s_(i^k)`` and its partner ``s_(i^k) + s_i``, equal since float addition is commutative). A
block reduction reduces each warp by shuffles, parks one value per warp in shared memory and every
warp then reduces those (at most 32) in the same order: two shuffle rounds, one barrier, and a
result every thread holds and that depends on the block size only (deterministic run to run).

Numba's CUDA simulator has no warp shuffles (neither numba's built-in one nor numba-cuda's), so
under ``NUMBA_ENABLE_CUDASIM=1`` the same functions are trees in shared memory, with barriers; the
kernels are unchanged. Two rules follow, and every kernel that uses this module keeps them:

* every thread of a block calls each reduction the same number of times (row loops give every group
  of a block the same trip count and mask the rows past the end), since the simulator's barrier is
  the whole block's;
* ``buf`` is a shared array of at least ``BUF`` elements owned by the caller; under the simulator a
  group reduction uses the slots of its own threads, a block reduction all of them.

Use: ``_cuda_reduce.install(globals())`` in a kernel module binds the device functions to that
module's globals. Why not one compiled copy: the simulator swaps the ``cuda`` global of the kernel's
module for its thread-aware fake for the whole launch, but swaps and restores it around each call of
a device function from another module, which races between the block's threads (see
:func:`fastloss._cuda_arrays.block_reductions`). Bound to the kernel's module, they see the fake.
"""
from __future__ import annotations

import math
import threading
import types

import numpy as np
from numba import config, cuda

#: True under the CUDA simulator.
SIMULATOR = bool(config.ENABLE_CUDASIM)
#: Lanes of a warp. Under the simulator a "warp" is 4 threads, so that its small blocks still have
#: several warps and the cross-warp stage of every reduction runs in the tests.
WARP = 4 if SIMULATOR else 32
#: Most threads in a block of the row kernels (1024 on a GPU, the hardware limit).
MAX_THREADS = 16 if SIMULATOR else 1024
#: Length of the shared buffer a caller passes: one slot per warp on a GPU, per thread simulated.
BUF = MAX_THREADS if SIMULATOR else 32
#: All lanes of a warp take part in every shuffle (the kernels call reductions uniformly).
FULL_MASK = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# GPU: warp shuffles
# --------------------------------------------------------------------------------------------------
def _gpu_group_sum(buf, v, width):
    """Sum of ``v`` over the aligned group of ``width`` lanes (a power of two <= WARP); every lane of
    the group gets it. ``buf`` is unused on a GPU."""
    k = width >> 1
    while k > 0:
        v += cuda.shfl_xor_sync(FULL_MASK, v, k)
        k >>= 1
    return v


def _gpu_group_max(buf, v, width):
    """Maximum of ``v`` over the aligned group of ``width`` lanes; NaN is ignored unless every value
    is NaN (``other > v`` is false for NaN, and a NaN ``v`` always takes ``other``)."""
    k = width >> 1
    while k > 0:
        other = cuda.shfl_xor_sync(FULL_MASK, v, k)
        if other > v or v != v:
            v = other
        k >>= 1
    return v


def _gpu_block_sum(buf, v):
    """Sum of ``v`` over the block (every thread gets it); ``buf`` a shared array of >= 32 slots of
    the sum's type (float64 for the loss and exp sums)."""
    lane = cuda.threadIdx.x & (WARP - 1)
    warp = cuda.threadIdx.x >> 5
    v = group_sum(buf, v, WARP)
    if lane == 0:
        buf[warp] = v
    cuda.syncthreads()
    w = buf[lane] if lane < (cuda.blockDim.x >> 5) else buf[0] * 0.0
    total = group_sum(buf, w, WARP)
    cuda.syncthreads()  # buf may be written again right after
    return total


def _gpu_block_max(buf, v):
    """Maximum of ``v`` over the block (NaN as in :func:`_gpu_group_max`); ``buf`` of >= 32 slots of
    ``v``'s type."""
    lane = cuda.threadIdx.x & (WARP - 1)
    warp = cuda.threadIdx.x >> 5
    v = group_max(buf, v, WARP)
    if lane == 0:
        buf[warp] = v
    cuda.syncthreads()
    w = buf[lane] if lane < (cuda.blockDim.x >> 5) else buf[0]
    total = group_max(buf, w, WARP)
    cuda.syncthreads()
    return total


# --------------------------------------------------------------------------------------------------
# Simulator: trees in shared memory (each thread parks its value in its own slot)
# --------------------------------------------------------------------------------------------------
def _sim_group_sum(buf, v, width):
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    k = width >> 1
    while k > 0:
        if tid & (width - 1) < k:
            buf[tid] += buf[tid + k]
        cuda.syncthreads()
        k >>= 1
    total = buf[tid - (tid & (width - 1))]
    cuda.syncthreads()
    return total


def _sim_group_max(buf, v, width):
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    k = width >> 1
    while k > 0:
        if tid & (width - 1) < k:
            other = buf[tid + k]
            if other > buf[tid] or buf[tid] != buf[tid]:
                buf[tid] = other
        cuda.syncthreads()
        k >>= 1
    total = buf[tid - (tid & (width - 1))]
    cuda.syncthreads()
    return total


def _sim_block_sum(buf, v):
    return group_sum(buf, v, cuda.blockDim.x)


def _sim_block_max(buf, v):
    return group_max(buf, v, cuda.blockDim.x)


_IMPLEMENTATIONS = {
    "group_sum": _sim_group_sum if SIMULATOR else _gpu_group_sum,
    "group_max": _sim_group_max if SIMULATOR else _gpu_group_max,
    "block_sum": _sim_block_sum if SIMULATOR else _gpu_block_sum,
    "block_max": _sim_block_max if SIMULATOR else _gpu_block_max,
}


def install(namespace: dict) -> None:
    """Compile ``group_sum(buf, v, width)``, ``group_max``, ``block_sum(buf, v)`` and ``block_max``
    as device functions bound to ``namespace`` (a kernel module's ``globals()``) and put them there,
    with the constants they read (``WARP``, ``FULL_MASK``); the module must import ``cuda``."""
    if namespace.get("cuda") is not cuda:
        raise RuntimeError("install() needs a module that imports numba's cuda as 'cuda'")
    for name, value in (("WARP", WARP), ("FULL_MASK", FULL_MASK), ("math", math)):
        if namespace.setdefault(name, value) is not value:
            raise RuntimeError(f"install(): the module's {name!r} is not _cuda_reduce's")
    bind(namespace, _IMPLEMENTATIONS)


def bind(namespace: dict, templates: dict) -> None:
    """Compile each ``templates[name]`` as a device function whose globals are ``namespace`` (so that the
    names it reads are that module's) and put it there as ``name``, which must be free."""
    for name, fn in templates.items():
        if name in namespace:
            raise RuntimeError(f"install(): the module already defines {name!r}")
        rebound = types.FunctionType(fn.__code__, namespace, name)
        rebound.__doc__ = fn.__doc__
        namespace[name] = cuda.jit(device=True)(rebound)


def group_size(n: int) -> int:
    """Lanes per row for rows of ``n`` items that fit a warp: the power of two >= n, at most WARP."""
    g = 1
    while g < n and g < WARP:
        g *= 2
    return g


# --------------------------------------------------------------------------------------------------
# Scratch for the partial sums, reused from call to call
# --------------------------------------------------------------------------------------------------
_SCRATCH: dict = {}
#: At most this many scratch buffers are kept (one per device, stream, thread and length seen recently).
MAX_SCRATCH = 64


def _stream_key(like) -> tuple:
    """The part of a kept buffer's key that says where its kernels run: ``like``'s device and stream,
    and the calling thread (see :func:`scratch`)."""
    from . import _cuda_arrays as D

    stream = D.stream_for(like)
    return D.device_id(like), id(stream) if stream else 0, threading.get_ident(), D.is_cupy(like)


def _kept(store: dict, key: tuple, make):
    """``store[key]``, made by ``make()`` the first time; the oldest entry goes beyond
    :data:`MAX_SCRATCH` entries."""
    buf = store.get(key)
    if buf is None:
        if len(store) >= MAX_SCRATCH:
            store.pop(next(iter(store)))
        buf = store[key] = make()
    return buf


def scratch(n: int, like, role: str):
    """A float64 device buffer of ``n`` elements for per-block partial sums (or a denominator), kept
    per (device, stream, calling thread, n, role) and handed out again by later calls; buffers live at
    the same time within a call need different ``role`` names.

    Safe because every kernel of a call runs on one stream (CuPy's current stream, or stream 0 for
    Numba arrays), in order: a later call's kernels on that stream write the buffer only after this
    call's kernels have read it. Per thread, because two threads launching on one stream interleave
    their kernels: one call's partial sums would be overwritten by the other's before its final sum
    reads them. Never return a scratch buffer (or a view of it) to the caller.
    """
    from . import _cuda_arrays as D

    return _kept(_SCRATCH, _stream_key(like) + (int(n), role), lambda: D.partial_buffer(n, like))


_TICKETS: dict = {}


def ticket(like):
    """The zeroed uint32[1] counter of :func:`fastloss._cuda_rows.finish_partials` for launches on
    ``like``'s device and stream from this thread (kept, as :func:`scratch`; each launch's last block
    leaves it at 0 again). Per stream and thread for the reason :func:`scratch` gives."""
    from . import _cuda_arrays as D

    return _kept(_TICKETS, _stream_key(like), lambda: D.zeros((1,), np.uint32, like))
