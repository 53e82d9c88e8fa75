"""Row and tile primitives of the softmax family's CPU kernels, and the one-point maths they share.

Every kernel of the family is built from these: the max of a row over integer keys of its floats'
bits, the sum-exp passes (which also take the *next* row's max, so that its loads overlap this row's
arithmetic), the scaling passes of the gradient, and their channel-tile twins over ``(N, C, B)``
positions ``lo:hi``. Compiled once per dtype, inlined or called per row by the kernels of
:mod:`.ce_kernels` and :mod:`.softmax_kernels`.

Accuracy. float32 exponentials are summed in float32 over blocks (:data:`_BLOCK` elements of a row,
:data:`_CLASS_BLOCK` classes of a tile), each block then added in float64; every other sum (losses,
smoothing sums, weights) is float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

from ... import _jit
from ..._math import _from_bits, exp, expf  # _from_bits: the float of a bit pattern (LLVM bitcast)

#: Number of float32 exponentials summed in float32 before the partial sum joins a float64 total.
#: Summing straight into float64 halves the float32 lanes of the whole exp loop (2x slower here);
#: 1024-element blocks leave 1.9e-7 relative error in the gradient, 256 about 1e-7 at the same speed.
_BLOCK = 256

#: Elements (classes x positions) in one work item of the channel kernels: its tile of logits and of
#: gradient stays in L2 between the passes.
_TILE = 16384

#: Classes summed in the input's dtype before the channel kernels add the partial sum in float64.
_CLASS_BLOCK = 16

#: Rows of few classes (at most ``_SHORT_CLASSES``) are processed in blocks of ``_SHORT_ROWS``
#: transposed into channel tiles (see "Short rows" below); measured faster than the row kernels up to
#: about 32-64 classes.
_SHORT_CLASSES = 32
_SHORT_ROWS = 512


# ================================================================================================
# One-point functions
# ================================================================================================
def _exp_same(v):
    """``exp(v)`` in ``v``'s own precision: ``expf`` for float32, ``exp`` for float64."""
    return math.exp(v)


@overload(_exp_same)
def _exp_same_impl(v):
    # Resolved at compile time from v's type, so one kernel source serves float32 and float64 data
    # and float32 rows get float32 exponentials (twice the SIMD lanes of float64).
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v: expf(v)
    return lambda v: exp(v)


# ================================================================================================
# Row loops over one contiguous row ``xs`` of C values (compiled once per dtype, called per row)
# ================================================================================================
_loop = _jit.kernel(parallel=False)


def _int_view(xs):
    """``xs``'s bits as the signed integers of its width (int32 for float32, int64 for float64)."""
    return xs.view(np.int32 if xs.dtype.itemsize == 4 else np.int64)


@overload(_int_view, inline="always")
def _int_view_impl(xs):
    int_type = np.int32 if xs.dtype.bitwidth == 32 else np.int64
    return lambda xs: xs.view(int_type)


def _order_key(bits):
    """An integer that orders as the float with these ``bits`` (``-0 < +0``; +NaN above +inf): the
    sign-magnitude bits of a negative float flipped to two's complement. Its own inverse."""
    return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)


@overload(_order_key, inline="always")
def _order_key_impl(bits):
    # constants per width, so that the shift stays a 32-bit lane operation for int32
    if bits.bitwidth == 32:
        return lambda bits: np.int32(bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    return lambda bits: np.int64(bits ^ ((bits >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF)))


@_jit.device
def _lowest_key(xs):
    """The order key of ``-inf`` as ``xs``'s width of integer (NaNs with the sign bit set are below):
    ``-inf``'s bits are ``-2**23`` (float32) or ``-2**52`` (float64) as signed integers."""
    int_type = _int_view(xs[:0]).dtype.type
    return _order_key(int_type(-(1 << (23 if xs.itemsize == 4 else 52))))


@_jit.device
def _float_of_key(key):
    """The float whose order key is ``key`` (float32 for an int32 key, float64 for int64)."""
    return _from_bits(_order_key(key))


@_loop
def _key_max(xs, best):
    """``max(best, key(xs[c]) for all c)`` over the order keys of ``xs``'s floats.

    LLVM does not vectorise a float max reduction without 'nnan' (a chain of scalar compares, about
    6x slower), but it does vectorise an integer max, and the keys order as the floats.
    """
    bits = _int_view(xs)
    for c in range(bits.size):
        best = max(best, _order_key(bits[c]))
    return best


@_loop
def _row_max(xs):
    """``max(xs)``: ``-inf`` for an empty row; NaN when a NaN with a clear sign bit is present (other
    NaNs are skipped; the row turns NaN in its sum-exp all the same)."""
    return _float_of_key(_key_max(xs, _lowest_key(xs)))


# The exp passes below also take the maximum of the *next* row (``nxt``, the same length or empty),
# block by block: its loads from memory then overlap this row's exponentials, which run from L2,
# instead of stalling a separate max pass. Each returns ``(sum, max(nxt))``.
@_loop
def _row_sum_exp(xs, m, nxt):
    """``sum_c exp(xs[c] - m)`` as float64 (float32 partial sums over blocks of ``_BLOCK``)."""
    s = 0.0
    best = _lowest_key(nxt)
    for lo in range(0, xs.size, _BLOCK):
        blk = xs[lo:lo + _BLOCK]
        acc = xs.dtype.type(0)
        for c in range(blk.size):
            acc += _exp_same(blk[c] - m)
        s += acc
        best = _key_max(nxt[lo:lo + _BLOCK], best)
    return s, _float_of_key(best)


@_loop
def _row_exp_into(xs, os, m, nxt):
    """``os[c] = exp(xs[c] - m)``; their float64 sum. ``os`` must not alias ``xs``."""
    s = 0.0
    best = _lowest_key(nxt)
    for lo in range(0, xs.size, _BLOCK):
        blk = xs[lo:lo + _BLOCK]
        oblk = os[lo:lo + _BLOCK]
        acc = xs.dtype.type(0)
        for c in range(blk.size):
            e = _exp_same(blk[c] - m)
            oblk[c] = e
            acc += e
        s += acc
        best = _key_max(nxt[lo:lo + _BLOCK], best)
    return s, _float_of_key(best)


@_loop
def _row_exp_inplace(xs, m, nxt):
    """``xs[c] = exp(xs[c] - m)`` in place; their float64 sum."""
    s = 0.0
    best = _lowest_key(nxt)
    for lo in range(0, xs.size, _BLOCK):
        blk = xs[lo:lo + _BLOCK]
        acc = xs.dtype.type(0)
        for c in range(blk.size):
            e = _exp_same(blk[c] - m)
            blk[c] = e
            acc += e
        s += acc
        best = _key_max(nxt[lo:lo + _BLOCK], best)
    return s, _float_of_key(best)


@_jit.device
def _row_exp(xs, os, m, nxt, inplace):
    """``os = exp(xs - m)``, its float64 sum and ``max(nxt)``; ``inplace`` when ``os`` is ``xs`` (then
    the loop touches one array: with two that alias, LLVM's alias check falls back to scalar code)."""
    if inplace:
        return _row_exp_inplace(os, m, nxt)
    return _row_exp_into(xs, os, m, nxt)


@_jit.device
def _next_row(x, i, hi):
    """Row ``i + 1`` of ``x`` while below ``hi``, else an empty row."""
    return x[i + 1] if i + 1 < hi else x[i, :0]


@_jit.device
def _chunk(k, n_chunks, n_rows):
    """Rows ``[lo, hi)`` of chunk ``k`` of ``n_chunks`` equal chunks."""
    return k * n_rows // n_chunks, (k + 1) * n_rows // n_chunks


@_loop
def _row_sum(xs):
    """``sum_c xs[c]`` in float64."""
    s = 0.0
    for c in range(xs.size):
        s += np.float64(xs[c])
    return s


@_loop
def _row_dot(xs, w):
    """``sum_c w[c] * xs[c]`` in float64."""
    s = 0.0
    for c in range(xs.size):
        s += np.float64(w[c]) * np.float64(xs[c])
    return s


@_loop
def _row_scale(os, a):
    """``os[c] *= a``."""
    a = os.dtype.type(a)
    for c in range(os.size):
        os[c] *= a


@_loop
def _row_scale_sub(os, a, b, w):
    """``os[c] = os[c] * a - b * w[c]``."""
    a = os.dtype.type(a)
    b = os.dtype.type(b)
    for c in range(os.size):
        os[c] = os[c] * a - b * w[c]


# ================================================================================================
# Channel tiles: positions lo:hi of batch n of an (N, C, B) array
# ================================================================================================
@_jit.device
def _tile_blocks(n_cls, n_pos):
    """``(block, blocks)``: positions per work item (a multiple of 16) and work items per batch."""
    blk = max(16, (_TILE // max(n_cls, 1)) // 16 * 16)
    blk = max(min(blk, n_pos), 1)
    return blk, (n_pos + blk - 1) // blk


@_loop
def _tile_max(x, n, lo, hi):
    """``m[b] = max_c x[n, c, lo + b]`` (NaN as :func:`_row_max`), of ``x``'s dtype.

    Over the order keys, as :func:`_row_max`: an integer max vectorises to one instruction, where
    the float compare-and-keep becomes a masked store (microcoded, slow on AMD Zen).
    """
    keys = np.full(hi - lo, _lowest_key(x[n, 0, :0]), dtype=_int_view(x[n, 0, :0]).dtype)
    for c in range(x.shape[1]):
        bits = _int_view(x[n, c, lo:hi])
        for b in range(bits.size):
            keys[b] = max(keys[b], _order_key(bits[b]))
    m = np.empty(hi - lo, dtype=x.dtype)
    m_bits = _int_view(m)
    for b in range(m_bits.size):
        m_bits[b] = _order_key(keys[b])
    return m


@_loop
def _tile_sum_exp(x, n, lo, hi, m):
    """``s[b] = sum_c exp(x[n, c, lo + b] - m[b])`` in float64 (partial sums in ``x``'s dtype over
    ``_CLASS_BLOCK`` classes: float64 accumulators would halve the float32 lanes of the exp loop)."""
    s = np.zeros(hi - lo)
    part = np.empty(hi - lo, dtype=x.dtype)
    for c0 in range(0, x.shape[1], _CLASS_BLOCK):
        part[:] = 0
        for c in range(c0, min(c0 + _CLASS_BLOCK, x.shape[1])):
            xs = x[n, c, lo:hi]
            for b in range(xs.size):
                part[b] += _exp_same(xs[b] - m[b])
        for b in range(part.size):
            s[b] += part[b]
    return s


@_loop
def _tile_exp(x, out, n, lo, hi, m, inplace):
    """:func:`_tile_sum_exp`, also storing each exponential in ``out`` (``inplace``: ``out`` is ``x``,
    so the loop touches one array)."""
    s = np.zeros(hi - lo)
    part = np.empty(hi - lo, dtype=x.dtype)
    for c0 in range(0, x.shape[1], _CLASS_BLOCK):
        part[:] = 0
        for c in range(c0, min(c0 + _CLASS_BLOCK, x.shape[1])):
            os = out[n, c, lo:hi]
            if inplace:
                for b in range(os.size):
                    e = _exp_same(os[b] - m[b])
                    os[b] = e
                    part[b] += e
            else:
                xs = x[n, c, lo:hi]
                for b in range(xs.size):
                    e = _exp_same(xs[b] - m[b])
                    os[b] = e
                    part[b] += e
        for b in range(part.size):
            s[b] += part[b]
    return s


@_loop
def _tile_dot(x, n, lo, hi, w):
    """``d[b] = sum_c w[c] * x[n, c, lo + b]`` in float64."""
    d = np.zeros(hi - lo)
    for c in range(x.shape[1]):
        xs = x[n, c, lo:hi]
        wc = np.float64(w[c])
        for b in range(xs.size):
            d[b] += wc * np.float64(xs[b])
    return d

@_loop
def _items_total(loss, first, last, blk, n_blk):
    """The float64 sum of ``loss (N, B)`` over the work items ``first:last`` of the channel kernels."""
    total = 0.0
    for item in range(first, last):
        n = item // n_blk
        lo = (item % n_blk) * blk
        total += _row_sum(loss[n, lo:min(lo + blk, loss.shape[1])])
    return total

# ================================================================================================
# Short rows (few classes): blocks of rows transposed into (1, C, rows) tiles
# ================================================================================================
# A row of a few classes costs more in per-row overhead (views, calls, reductions ending in one
# lane) than in arithmetic; transposed, a block of rows becomes one channel tile whose loops run
# across the rows, vectorised. The transposes are strided copies of the block, in L1/L2.
@_loop
def _rows_to_tile(x, lo, hi):
    """``x[lo:hi]`` (rows, C) as a new ``(1, C, rows)`` tile."""
    tile = np.empty((1, x.shape[1], hi - lo), dtype=x.dtype)
    rows = x[lo:hi]
    for c in range(x.shape[1]):
        dst = tile[0, c]
        for r in range(dst.size):
            dst[r] = rows[r, c]
    return tile


@_loop
def _tile_to_rows(tile, out, lo):
    """``out[lo:lo + rows] = tile[0].T`` for a ``(1, C, rows)`` tile."""
    rows = out[lo:lo + tile.shape[2]]
    for c in range(tile.shape[1]):
        src = tile[0, c]
        for r in range(src.size):
            rows[r, c] = src[r]


@_jit.device
def _short_block(k, n_rows):
    """Rows ``[lo, hi)`` of block ``k`` of the short-row kernels."""
    lo = k * _SHORT_ROWS
    return lo, min(lo + _SHORT_ROWS, n_rows)


# ================================================================================================
# Class-index targets
# ================================================================================================
@_loop
def _index_scan(t, w, ignore_index, n_cls):
    """``(sum(w[t_i]) over the targets that are not ignore_index, first bad position)`` of the flat
    class indices ``t``: the 'mean' divisor of PyTorch, and the position of the first target outside
    ``[0, n_cls)`` that is not ``ignore_index`` (-1 if none). ``w`` empty means weights of 1.

    The range check of the class indices, done here in the pass the divisor needs anyway rather than
    by ``min``/``max`` reductions before the call: the driver raises before any kernel writes."""
    den = 0.0
    for i in range(t.size):
        ti = t[i]
        if ti == ignore_index:
            continue
        if ti < 0 or ti >= n_cls:
            return den, i
        den += 1.0 if w.size == 0 else np.float64(w[ti])
    return den, -1
