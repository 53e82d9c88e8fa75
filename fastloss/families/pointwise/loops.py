"""The pointwise family's CPU machinery shared by every loss: the chunk routine, the direct path, the
broadcast operands and the chunking of the parallel loop. The per-loss block loops and chunk kernels
are in :mod:`.blocks`, the drivers in :mod:`.drivers`.
"""
from __future__ import annotations

import math

import numpy as np

from ..._jit import device, kernel, run_chunks

# One chunk routine (_chunk) serves every loss. The flattened, C-contiguous input is cut into one chunk
# per thread; each chunk is walked in blocks of BLOCK elements, and each block in three short loops
# over data that stays in L1:
#   (a) the loss's own block loop: f[j], d[j] = loss and derivative of element j (float64 scratch;
#       float32 for the losses computed in float32 arithmetic, see _chunk32);
#   (b) values: the float64 sum of w[j] f[j] (also stored per element for reduction='none');
#   (c) gradient: g[j] = gscale * grad_output[j] * w[j] * d[j], written to the output buffer.
# Splitting the block this way keeps every loop down to a few arrays, so LLVM's runtime alias checks
# stay under its limit and all three loops vectorise; and since loop (c) never reads the input, writing
# the gradient over the input itself (out=input) is safe and as fast.
# Each loss has its own small chunk function (_l1_chunk, ...) handing its block loop to _chunk, and one
# generic parallel loop (_run_chunks) runs any of them over the chunks: Numba compiles a loss the first
# time it is used and caches it on disk (a single kernel dispatching on a loss id compiled every loss at
# once, for over a minute).
# Operands other than the input (target, weight, pos_weight, grad_output) are "broadcast operands"
# (flat, q, p): element i is flat[(i // q) % p] -- a full array (q = 1, p = n), a constant (p = 1), or
# any broadcast whose varying axes are contiguous (see _broadcast_operand).

#: Elements per block: a block's working set (input, target, f, d, gradient: about 36 KB for float32)
#: stays in L1/L2 between its three loops (512, 1024 and 2048 measured the same).
BLOCK = 1024
#: Fewest elements worth a thread of their own (smaller inputs use fewer threads; one chunk runs on
#: the calling thread). About 100 us of work: a thread costs tens of microseconds to wake.
MIN_CHUNK = 1 << 17


# --- (b) and (c): weighting, reduction and chain rule, common to every loss ------------------------
# These and the operand helpers below are ordinary (not inlined) compiled functions, called once per
# block: compiled once and shared by every loss, which keeps each loss's own compilation short.
@kernel(parallel=False)
def _sum_weighted(f, ws):
    """sum_j w[j] f[j] in float64."""
    acc = 0.0
    for j in range(f.size):
        acc += f[j] * np.float64(ws[j])
    return acc


@kernel(parallel=False)
def _store_weighted(f, ws, vs):
    """vs[j] = w[j] f[j] (the per-element loss of reduction='none'); returns their float64 sum."""
    acc = 0.0
    for j in range(f.size):
        v = f[j] * np.float64(ws[j])
        vs[j] = v
        acc += v
    return acc


@kernel(parallel=False)
def _store_grads(gscale, d, ws, gos, gs):
    """gs[j] = gscale * grad_output[j] * w[j] * d[j] (the chain rule through weight and reduction)."""
    for j in range(d.size):
        gs[j] = gscale * np.float64(gos[j]) * np.float64(ws[j]) * d[j]


# --- broadcast operands ----------------------------------------------------------------------------
@kernel(parallel=False)
def _fill_operand(op, buf):
    """Fill ``buf`` (2 * BLOCK long) once per chunk where an operand repeats within a block.

    A constant fills it; a short period (q == 1, p <= BLOCK) is tiled so that every block is a
    zero-copy slice ``buf[k:k + m]``.
    """
    flat, q, p = op
    if p == 1:
        for j in range(buf.size):
            buf[j] = flat[0]
    elif q == 1 and p <= BLOCK:
        for j in range(buf.size):
            buf[j] = flat[j % p]


@kernel(parallel=False)
def _operand_block(op, start, m, buf):
    """Elements ``start .. start + m`` of the broadcast operand ``op = (flat, q, p)``.

    A slice of ``flat`` or of the prefilled ``buf`` where the elements are contiguous there; otherwise
    gathered into ``buf`` (a long period wrapping around, or runs of one value when q > 1).
    """
    flat, q, p = op
    if p == 1:
        return buf[:m]
    if q == 1:
        k = start % p
        if p <= BLOCK:
            return buf[k:k + m]
        if k + m <= p:
            return flat[k:k + m]
        head = p - k  # the block wraps around the end of the period: two pieces (m <= BLOCK < p)
        for j in range(head):
            buf[j] = flat[k + j]
        for j in range(head, m):
            buf[j] = flat[j - head]
        return buf[:m]
    j = 0
    while j < m:  # runs of one value
        i = start + j
        run = min(q - i % q, m - j)
        value = flat[(i // q) % p]
        for u in range(j, j + run):
            buf[u] = value
        j += run
    return buf[:m]


# --- the chunk routine and the per-loss chunk functions ------------------------------------------
@device
def _chunk(block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    """Chunk ``c`` of ``nchunks`` of one fused pass of the loss whose block loop is ``block``.

    ``x``: the flat input (n elements). ``t_op``, ``w_op``, ``pw_op``, ``go_op``: broadcast operands
    of target, weight, pos_weight and grad_output. ``vout``: the per-element losses ``w * f`` are
    stored there when it has n elements (reduction='none'), else it is empty. ``gout``: the gradient
    ``gscale * grad_output * w * f'`` is stored there when it has n elements, else it is empty.
    Returns the chunk's float64 sum of ``w * f``. The block loop's scratch ``f``, ``d`` is float64.
    """
    return _chunk_scratch(block, np.empty(BLOCK), np.empty(BLOCK), c, nchunks, a, gscale, x, t_op, w_op, pw_op,
                          go_op, vout, gout)


@device
def _chunk32(block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    """:func:`_chunk` with float32 scratch ``f``, ``d``, for block loops that compute in float32 (the
    ``P32`` losses of float32 data). Stored to float64, their loops ran at 4 lanes (a float64 store
    per lane); to float32, at 8. The values are the same: a float32 result widens to float64 exactly,
    and the weighting, sums and chain rule that follow are float64 either way."""
    return _chunk_scratch(block, np.empty(BLOCK, np.float32), np.empty(BLOCK, np.float32), c, nchunks, a, gscale,
                          x, t_op, w_op, pw_op, go_op, vout, gout)


@device
def _chunk_scratch(block, f, d, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    """The body of :func:`_chunk` and :func:`_chunk32`, given the block loop's scratch ``f``, ``d``
    (BLOCK elements each)."""
    n = x.size
    lo = c * n // nchunks
    hi = (c + 1) * n // nchunks
    tbuf = np.empty(2 * BLOCK, x.dtype)
    wbuf = np.empty(2 * BLOCK, x.dtype)
    pwbuf = np.empty(2 * BLOCK, x.dtype)
    gobuf = np.empty(2 * BLOCK, x.dtype)
    _fill_operand(t_op, tbuf)
    _fill_operand(w_op, wbuf)
    _fill_operand(pw_op, pwbuf)
    _fill_operand(go_op, gobuf)
    acc = 0.0
    for s in range(lo, hi, BLOCK):
        m = min(BLOCK, hi - s)
        ts = _operand_block(t_op, s, m, tbuf)
        ws = _operand_block(w_op, s, m, wbuf)
        pws = _operand_block(pw_op, s, m, pwbuf)
        fs, ds = f[:m], d[:m]
        block(a, x[s:s + m], ts, pws, fs, ds)
        if vout.size == n:
            acc += _store_weighted(fs, ws, vout[s:s + m])
        else:
            acc += _sum_weighted(fs, ws)
        if gout.size == n:
            gos = _operand_block(go_op, s, m, gobuf)
            _store_grads(gscale, ds, ws, gos, gout[s:s + m])
    return acc


# --- the direct path: full target, no weight / pos_weight / grad_output, a reduced value ------------
# The common training call. One loop per block reads x and t and writes the gradient, with no float64
# scratch arrays and no operand helpers: about twice the bandwidth of _chunk (benches/pointwise_bandwidth.py).
# The block sums fold into the chunk's float64 sum in order: deterministic, independent of the threads.
@device
def _direct(pair, c, nchunks, a, gscale, x, t, gout):
    """Chunk ``c`` of ``nchunks``: the float64 sum of the loss ``pair(a, x, t)[0]`` over the chunk, and
    ``gout = gscale * pair(a, x, t)[1]`` where ``gout`` has x's size (empty: no gradient)."""
    n = x.size
    lo = c * n // nchunks
    hi = (c + 1) * n // nchunks
    xs, ts = x[lo:hi], t[lo:hi]  # sliced first: loops over range(m) vectorise, range(lo, hi) do not
    acc = 0.0
    if gout.size == n:
        gs = gout[lo:hi]
        for s in range(0, hi - lo, 2 * BLOCK):
            m = min(2 * BLOCK, hi - lo - s)
            xb, tb, gb = xs[s:s + m], ts[s:s + m], gs[s:s + m]
            part = 0.0
            for j in range(m):
                f, d = pair(a, xb[j], tb[j])
                part += f
                gb[j] = gscale * d
            acc += part
    else:
        for s in range(0, hi - lo, 2 * BLOCK):
            m = min(2 * BLOCK, hi - lo - s)
            xb, tb = xs[s:s + m], ts[s:s + m]
            part = 0.0
            for j in range(m):
                part += pair(a, xb[j], tb[j])[0]
            acc += part
    return acc


@kernel(parallel=False)
def _sum_chunk(c, nchunks, x):
    """Float64 sum of chunk ``c`` of the flat array ``x`` (the sum(weight) of a weighted mean)."""
    n = x.size
    xs = x[c * n // nchunks:(c + 1) * n // nchunks]
    acc = 0.0
    for j in range(xs.size):
        acc += np.float64(xs[j])
    return acc


@kernel(parallel=False)
def _outside_unit_interval_chunk(c, nchunks, x):
    """How many elements of chunk ``c`` of the flat array ``x`` are below 0 or above 1 (NaN is not)."""
    n = x.size
    xs = x[c * n // nchunks:(c + 1) * n // nchunks]
    bad = 0
    for j in range(xs.size):
        bad += (xs[j] < 0.0) | (xs[j] > 1.0)
    return bad


# --- the parallel loop ----------------------------------------------------------------------------
# Threads, not prange: a prange kernel per loss roughly tripled each loss's first-call compile time
# (Numba's parfor passes: about 2.5 s per loss and dtype) and, with one chunk, still woke the thread
# pool. The chunk functions release the GIL (nogil); fastloss._jit.run_chunks shares them among the
# calling thread and a few pool threads, and inputs too small to split run on the calling thread alone.
_run_chunks = run_chunks


#: At most this many chunks: fixed, not the thread count, so that the chunks' partial sums, and so the
#: results, are the same for every ``set_num_threads``; several per thread balance a shared machine.
MAX_CHUNKS = 16


def _nchunks(n: int) -> int:
    """Chunks for n elements: at least MIN_CHUNK each, at most MAX_CHUNKS (independent of the threads)."""
    return max(1, min(MAX_CHUNKS, n // MIN_CHUNK))


def _flat(a):
    """``a`` as a flat, C-contiguous, read-only view (a copy only where ``a`` is not C-contiguous).

    Read-only whatever the caller's flags, so that the kernels see one array type per dtype and
    compile once (Numba types writeable and read-only arrays differently).
    """
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.flags.writeable:
        flat = flat.view()
        flat.flags.writeable = False
    return flat


_CONSTANTS = {}


def _constant_operand(value, dtype):
    """A broadcast operand whose every element is ``value`` (cached: read-only, shared by all calls)."""
    key = (float(value), np.dtype(dtype))
    op = _CONSTANTS.get(key)
    if op is None:
        op = _CONSTANTS[key] = (_flat(np.full(1, value, dtype=dtype)), 1, 1)
    return op


def _broadcast_operand(a, shape):
    """``a`` (broadcastable to ``shape``) as a kernel operand ``(flat, q, p)``: element i of the flattened
    broadcast is ``flat[(i // q) % p]``.

    Exact without a copy when the axes along which ``a`` varies are contiguous, e.g. a full array,
    a scalar, ``(C,)`` against ``(N, C)`` or ``(N, 1)`` against ``(N, C)``; any other broadcast is
    materialised (one array of ``shape``).
    """
    shape = tuple(shape)
    a = np.asarray(a)
    if a.shape == shape:
        return (_flat(a), 1, a.size)
    a_shape = (1,) * (len(shape) - a.ndim) + tuple(a.shape)
    varying = [k for k, (m, full) in enumerate(zip(a_shape, shape)) if m != 1 and full != 1]
    if not varying:
        return (_flat(a.reshape(-1)[:1] if a.size else np.zeros(1, a.dtype)), 1, 1)
    first, last = varying[0], varying[-1]
    if all(a_shape[k] == shape[k] for k in range(first, last + 1)):
        block = a.reshape(a_shape)[tuple(slice(None) if first <= k <= last else slice(0, 1)
                                         for k in range(len(shape)))]
        return (_flat(block), math.prod(shape[last + 1:]), math.prod(shape[first:last + 1]))
    full = np.broadcast_to(a, shape)
    return (_flat(full), 1, full.size)
