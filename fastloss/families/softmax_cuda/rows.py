"""Constants and the reduction-free device functions of the CUDA softmax family's row kernels (see
:mod:`fastloss.families.softmax_cuda` for the layout and the arithmetic)."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64, uint64

from ... import _cuda_arrays as D
from ... import _cuda_reduce as _R
from ..._cuda_arrays import incoming_at
from ..._cuda_rows import PER_THREAD, ROW_THREADS, WARP

#: Elements of its row a thread keeps in registers (a compile-time length: the loops over it unroll).
#: 16 x 512 threads cover 8,192 classes; longer rows read the rest twice, the second time from L2.
#: Why not 32 x 1024 (32,768 classes, what a 128 KB row needs): ptxas (sm_90) puts the cross-entropy
#: kernel at 128 registers with 16 and spills 0.9 KB per thread at 64 (1024-thread blocks) with 32.
CACHE = 4 if D.SIMULATOR else 16
#: Threads per block when a block holds several rows (groups of at most a warp).
ROWS_BLOCK = 16 if D.SIMULATOR else 256
#: Rows of at least this many classes (K == 1) take more than a warp (_cuda_rows.row_group).
ROW_BLOCK_MIN_C = WARP * PER_THREAD + 1
#: Register limit of the row kernels: a block of ROW_THREADS threads must fit the 64K registers of an SM.
_ROW_JIT = {} if D.SIMULATOR else {"max_registers": 65536 // ROW_THREADS}

# Kinds of target of the cross-entropy kernel.
INDEX_TARGET, PROB_TARGET = 0, 1
BUF = _R.BUF


@cuda.jit(device=True)
def row_base(r, C, K):
    """Flat index of row ``r``'s class 0; one division per row, none for K == 1."""
    if K == 1:
        return r * C
    o = r // K
    return o * C * K + (r - o * K)


@cuda.jit(device=True)
def load_row(x, i0, end, stride, live, cache, ninf):
    """Fill ``cache[j]`` with the thread's ``j``-th element of the row, flat index ``i0 + j stride``
    (``-inf`` from ``end`` on, or for a row not ``live``); return their maximum (NaN never becomes a
    maximum). Indices step by addition and are unsigned (no wrap-around of negative indices)."""
    m = ninf
    i = i0
    for j in range(CACHE):
        v = ninf
        if live and i < end:
            v = x[uint64(i)]
        cache[j] = v
        if v > m:
            m = v
        i += stride
    return m


@cuda.jit(device=True)
def online_add(m, s, v, one):
    """Add ``v`` to a running (max ``m``, sum ``s`` of exp(x - m)) in the data's precision.

    ``-inf`` values add nothing (even while ``m`` is still ``-inf``, where exp(v - m) would be NaN);
    a NaN makes ``s`` NaN, which then reaches every output of the row, as in PyTorch.
    """
    if v > m:
        return v, s * math.exp(m - v) + one
    if m > v or v != v:
        return m, s + math.exp(v - m)
    return m, s + one  # v == m, both finite (or both +inf, where s then is unused: M is +inf)


@cuda.jit(device=True)
def tail_pass(x, i0, end, stride, live, m, zero, one):
    """Online (max, sum) over the thread's elements beyond the cache (``i0 + j stride``,
    ``j >= CACHE``), starting from the cache's maximum ``m``; returns ``(m, s)``,
    ``s = sum exp(x - m)``."""
    s = zero
    if live:
        i = i0 + CACHE * stride
        while i < end:
            m, s = online_add(m, s, x[uint64(i)], one)
            i += stride
    return m, s


@cuda.jit(device=True)
def tail_share(mt, st, M, zero):
    """The tail's ``sum exp(x - M)`` from its online pair (0 when it is empty, never 0 * inf)."""
    if st == zero:
        return zero
    return st * math.exp(mt - M)


@cuda.jit(device=True)
def cached_exp_sum(cache, M, zero, keep):
    """``sum_j exp(cache[j] - M)`` in the data's precision; with ``keep`` false the cache is
    overwritten with the exponentials (read again by the gradient)."""
    s = zero
    for j in range(CACHE):
        e = math.exp(cache[j] - M)
        if not keep:
            cache[j] = e
        s += e
    return s


@cuda.jit(device=True)
def row_scale(reduce, scale, gv, gstep, r, inv_den, den_buf, use_den_buf):
    """Incoming gradient of row ``r``'s loss: grad_output of the row (of the 0-d loss when
    ``reduce``), divided by the mean's denominator (``1 / inv_den``, or ``den_buf[0]``)."""
    g = incoming_at(scale, gv, gstep, 0 if reduce else r) * inv_den
    if use_den_buf:
        g = g / den_buf[0]
    return g


@cuda.jit(device=True)
def target_weight(t, w, has_w, ignore, r):
    """``w[t_r]`` (1 without weights), 0 for an ignored target."""
    ti = int64(t[r])
    if ti == ignore:
        return 0.0
    if has_w:
        return float64(w[ti])
    return 1.0


def _layout(shape, axis):
    """``(O, C, K)`` of ``shape`` around ``axis``."""
    O = int(np.prod(shape[:axis], dtype=np.int64))
    K = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return O, int(shape[axis]), K
