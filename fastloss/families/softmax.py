"""The softmax family on the CPU: ``log_softmax``, ``softmax``, ``nll_loss`` and ``cross_entropy``.

Semantics are PyTorch 2.13's ``torch.nn.functional`` (see :mod:`fastloss.api` for the formulas).
``nll_loss`` is one fused gather kernel; the others run the Numba kernels below, one fused kernel per
layout, value and gradient in the same pass over each row.

Threads. Every kernel here is serial (``nogil``) and works on chunk ``k`` of ``n_chunks`` (runs of
rows, tiles or blocks of rows); :func:`_run` runs a call below :data:`MIN_CHUNK` elements on the
calling thread, and shares a bigger one's chunks among the calling thread and the pool threads of
:func:`fastloss._jit.run_chunks`. Losses are kept per position and summed per chunk in a fixed order,
so results do not depend on the thread count. A small call with ``B == 1`` (below ``MIN_CHUNK``) runs
the plain row-at-a-time kernels :func:`_ce_index_small` / :func:`_ce_prob_small`: a first call then
compiles one small kernel instead of the pipelined or tiled machinery.

Layout. Every input is seen as ``(A, C, B)``: ``C`` classes (the softmax axis, axis 1 of a loss's input)
between ``A`` leading and ``B`` trailing elements (``B = d1 * ... * dk``).

* ``B == 1`` and ``C > _SHORT_CLASSES`` (input ``(C,)`` or ``(N, C)``): the **row kernels**. Each
  chunk is a run of consecutive rows; a row is read from memory once and then stays in L2 (a
  32000-float row is 128 KB) for a sum-exp pass and, for the gradient, a scaling pass.
  ``exp(x - max)`` is stored straight into the gradient buffer by the sum-exp pass, so the gradient
  pass is a multiply-add and every element sees one ``exp``. The max of a row is taken over integer
  keys of its floats' bits (an integer max vectorises, a float max reduction does not without
  'nnan') inside the previous row's sum-exp pass, so its loads from memory overlap that row's
  arithmetic. No ``N x C`` temporary (no log-softmax array, no one-hot).
* ``B > 1`` (input ``(N, C, d1, ..., dk)``): the **channel kernels**. Work items are ``(n, block of
  B)``; within an item the loops run over ``c`` outside and ``b`` inside, so the inner loops are
  contiguous and vectorise across ``b``, with ``O(block)`` scratch per item for the per-position max,
  sums and coefficients.
* ``B == 1`` and ``C <= _SHORT_CLASSES``: the **short-row kernels**. Per-row overhead would dominate,
  so blocks of rows are transposed into private ``(1, C, rows)`` tiles and run through the channel
  code, vectorised across rows.

Cross-entropy gradient. With ``p = softmax(x)`` over the classes, ``a_c`` the weight the loss puts on
``-log p_c`` and ``S = sum_c a_c``, the loss of a row is ``l = S * lse - sum_c a_c * x_c`` (``lse`` the
log-sum-exp) and ``dl/dx_c = p_c * S - a_c``. Index targets: ``a_c = (1 - e) w_t [c == t] + e w_c / C``
(``e`` label smoothing, ``t`` the target, ``w`` the class weight, 1 without one); probability targets:
``a_c = w_c ((1 - e) q_c + e / C)``. The gradient of a row is that times the row's coefficient ``k``:
``grad_output`` (per row for ``'none'``) divided by the ``'mean'`` denominator, and 0 for an ignored
row, whose gradient is ``p * 0`` (NaN where the row's softmax is NaN, as PyTorch's).

In place: when the gradient buffer *is* the input, the sum-exp pass overwrites the row with
``exp(x - max)`` after the target logit and the smoothing sum have been read, and the gradient pass
scales it in place; loops touching one array only, so they vectorise (a loop reading ``x`` and writing
``out`` that alias would fall back to scalar code after LLVM's alias check).

Accuracy. float32 exponentials are summed in float32 over blocks (:data:`_BLOCK` elements of a row,
:data:`_CLASS_BLOCK` classes of a tile), each block then added in float64; every other sum (losses,
smoothing sums, weights) is float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

from .. import _jit
from .. import _validation as V
from .._dispatch import scalar_result
from .._math import _from_bits, _fsub, exp, expf, log  # _from_bits: the float of a bit pattern (LLVM bitcast)
from .._registry import Case

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


@_jit.device
def _larger(a, b):
    """``a if a > b else b``: keeps ``b`` when ``a`` is NaN, but a NaN row still turns NaN in its sum-exp."""
    return a if a > b else b


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
# Cross entropy with class indices: one row
# ================================================================================================
@_loop
def _ce_index_row_value(xs, m, nxt, ti, w, wsum, ignore_index, eps):
    """The loss of one row ``xs`` (maximum ``m``) with target ``ti`` (float64; 0 when ignored), and
    the maximum of the next row ``nxt``.

    ``(1 - e) w_t (lse - x_t) + e / C (W lse - sum_c w_c x_c)`` with ``lse = log(sum_c exp(x_c))`` and
    ``W = wsum = sum_c w_c``; the smoothing term only when ``e > 0`` (PyTorch skips it at 0, so a
    ``-inf`` logit with zero weight gives no ``0 * inf``).
    """
    if ti == ignore_index:
        return 0.0, _row_max(nxt)
    s, m_next = _row_sum_exp(xs, m, nxt)
    lse = m + log(s)
    loss = (1.0 - eps) * np.float64(w[ti]) * (lse - np.float64(xs[ti]))
    if eps > 0.0:
        loss += eps / xs.size * (wsum * lse - _row_dot(xs, w))
    return loss, m_next


@_loop
def _ce_index_row_grad(xs, m, nxt, ti, w, wsum, ignore_index, eps, k, os, inplace):
    """:func:`_ce_index_row_value`, writing ``os[c] = k * (p_c * S - a_c)`` (``os`` may be ``xs``).

    ``a_c = (1 - e) w_t [c == t] + e w_c / C``, ``S = (1 - e) w_t + e W / C``. An ignored row has
    ``k = 0``: its gradient is ``p * 0``, NaN where its softmax is (as PyTorch's).
    """
    ignored = ti == ignore_index
    k = 0.0 if ignored else k
    e_c = eps / xs.size
    # read what the loss needs before the exp pass may overwrite xs (in place)
    wt = 0.0 if ignored else np.float64(w[ti])
    xt = 0.0 if ignored else np.float64(xs[ti])
    dot = _row_dot(xs, w) if eps > 0.0 and not ignored else 0.0
    s, m_next = _row_exp(xs, os, m, nxt, inplace)
    lse = m + log(s)
    if ignored:
        loss = 0.0
        big_s = 0.0
    else:
        loss = (1.0 - eps) * wt * (lse - xt)
        if eps > 0.0:
            loss += e_c * (wsum * lse - dot)
        big_s = (1.0 - eps) * wt + e_c * wsum
    et = 0.0 if ignored else np.float64(os[ti])
    if eps > 0.0:
        _row_scale_sub(os, k * big_s / s, k * e_c, w)
    else:
        _row_scale(os, k * big_s / s)
    if not ignored:
        # the target's entry again, in float64 from its stored exp: p_t * S - a_t cancels when p_t ~ 1
        os[ti] = k * (et * big_s / s - e_c * np.float64(w[ti]) - (1.0 - eps) * wt)
    return loss, m_next


@_loop
def _ce_index_rows(k, n_chunks, x, t, w, wsum, ignore_index, eps, coef, out, with_grad, inplace, loss):
    """Cross entropy of chunk ``k`` of ``n_chunks`` runs of consecutive rows of ``x (R, C)`` with class
    indices ``t (R,)`` into ``loss (R,)`` (float64); ``with_grad``: also the gradient times ``coef (R,)``
    into ``out`` (may be ``x``). A run pipelines each row's max into the previous row's pass."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    m = _row_max(x[lo]) if lo < hi else x.dtype.type(0)
    for i in range(lo, hi):
        if not with_grad:
            loss[i], m = _ce_index_row_value(x[i], m, _next_row(x, i, hi), t[i], w, wsum, ignore_index, eps)
        else:
            loss[i], m = _ce_index_row_grad(x[i], m, _next_row(x, i, hi), t[i], w, wsum, ignore_index, eps,
                                            coef[i], out[i], inplace)
    return _row_sum(loss[lo:hi])


@_loop
def _ce_index_small(x, t, w, wsum, ignore_index, eps, coef, out, with_grad, loss):
    """:func:`_ce_index_rows` for a small call (all of it on the calling thread), one row at a time in
    plain loops, the gradient straight from ``exp(x - max)``; the losses' float64 sum.

    Small calls spend their time in fixed costs, not in these loops, and a first call with an empty
    Numba cache compiles this kernel alone: a few seconds less than the pipelined row kernels or the
    transposed tiles of the short rows, which pay off only on big inputs.
    """
    n_cls = x.shape[1]
    e_c = eps / n_cls
    total = 0.0
    for i in range(x.shape[0]):
        xs = x[i]
        ti = t[i]
        ignored = ti == ignore_index
        m = -np.inf
        for c in range(n_cls):
            m = _larger(np.float64(xs[c]), m)
        # what the loss needs, read before the gradient may overwrite xs (in place)
        wt = 0.0 if ignored else np.float64(w[ti])
        xt = 0.0 if ignored else np.float64(xs[ti])
        dot = _row_dot(xs, w) if eps > 0.0 and not ignored else 0.0
        s = 0.0
        if with_grad:
            os = out[i]
            for c in range(n_cls):
                e = exp(np.float64(xs[c]) - m)
                os[c] = e
                s += e
        else:
            for c in range(n_cls):
                s += exp(np.float64(xs[c]) - m)
        lse = m + log(s)
        li = 0.0
        big_s = 0.0
        if not ignored:
            li = (1.0 - eps) * wt * (lse - xt)
            if eps > 0.0:
                li += e_c * (wsum * lse - dot)
            big_s = (1.0 - eps) * wt + e_c * wsum
        loss[i] = li
        total += li
        if with_grad:
            k = 0.0 if ignored else coef[i]
            et = 0.0 if ignored else np.float64(os[ti])
            a = k * big_s / s
            b = k * e_c
            for c in range(n_cls):
                os[c] = np.float64(os[c]) * a - b * np.float64(w[c])
            if not ignored:
                os[ti] = k * (et * big_s / s - e_c * wt - (1.0 - eps) * wt)
    return total


@_loop
def _ce_prob_small(x, q, w, eps, coef, out, with_grad, loss):
    """:func:`_ce_prob_rows` for a small call, as :func:`_ce_index_small`; the losses' float64 sum.

    The loss of a row is ``-sum_c a_c (x_c - m - log(s))``, formed as ``-(sum_c a_c (x_c - m) -
    sum(a) log(s))``: a one-class row is then exactly ``-0.0``, as PyTorch's ``-(q * 0)``, where
    ``sum(a) (m + log(s)) - sum_c a_c x_c`` leaves a rounding error (6.9e-18) behind. The sums start
    at ``-0.0``, the identity of addition that keeps that sign."""
    n_cls = x.shape[1]
    e_c = eps / n_cls
    total = -0.0
    for i in range(x.shape[0]):
        xs = x[i]
        qs = q[i]
        m = -np.inf
        for c in range(n_cls):
            m = _larger(np.float64(xs[c]), m)
        sa = 0.0
        sax = -0.0
        for c in range(n_cls):
            a = _prob_weight(qs[c], w[c], eps, e_c)
            sa += a
            sax += a * (np.float64(xs[c]) - m)
        s = 0.0
        if with_grad:
            os = out[i]
            for c in range(n_cls):
                e = exp(np.float64(xs[c]) - m)
                os[c] = e
                s += e
        else:
            for c in range(n_cls):
                s += exp(np.float64(xs[c]) - m)
        li = _fsub(-0.0, _fsub(sax, sa * log(s)))  # strict: fast-math (nsz) would fold -(a - b) to b - a
        loss[i] = li
        total += li
        if with_grad:
            k = coef[i]
            for c in range(n_cls):
                os[c] = k * (np.float64(os[c]) * sa / s - _prob_weight(qs[c], w[c], eps, e_c))
    return total


# ================================================================================================
# Cross entropy with class probabilities: one row
# ================================================================================================
@_jit.device
def _prob_weight(qc, wc, eps, e_c):
    """``a_c = w_c ((1 - e) q_c + e / C)`` in float64."""
    return np.float64(wc) * ((1.0 - eps) * np.float64(qc) + e_c)


@_loop
def _row_prob_sums(xs, qs, w, eps):
    """``(sum_c a_c, sum_c a_c * x_c)`` of a probability-target row, float64."""
    e_c = eps / xs.size
    sa = 0.0
    sax = 0.0
    for c in range(xs.size):
        a = _prob_weight(qs[c], w[c], eps, e_c)
        sa += a
        sax += a * np.float64(xs[c])
    return sa, sax


@_loop
def _ce_prob_row(xs, m, nxt, qs, w, eps, k, os, with_grad, inplace):
    """The loss ``sum(a) lse - sum_c a_c x_c`` of one row (maximum ``m``) with probabilities ``qs``
    (float64) and the next row's maximum; ``with_grad``: also ``os[c] = k * (p_c sum(a) - a_c)``
    (``os`` may be ``xs``)."""
    sa, sax = _row_prob_sums(xs, qs, w, eps)
    if not with_grad:
        s, m_next = _row_sum_exp(xs, m, nxt)
        return sa * (m + log(s)) - sax, m_next
    s, m_next = _row_exp(xs, os, m, nxt, inplace)
    ka = os.dtype.type(k * sa / s)
    kb = os.dtype.type(k * (1.0 - eps))
    kc = os.dtype.type(k * eps / xs.size)
    for c in range(os.size):
        os[c] = ka * os[c] - w[c] * (kb * qs[c] + kc)
    return sa * (m + log(s)) - sax, m_next


@_loop
def _ce_prob_rows(k, n_chunks, x, q, w, eps, coef, out, with_grad, inplace, loss):
    """Cross entropy of chunk ``k`` of ``n_chunks`` runs of rows of ``x (R, C)`` with class probabilities
    ``q (R, C)`` into ``loss``; ``with_grad``: also the gradient times ``coef (R,)`` into ``out`` (may be
    ``x``)."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    m = _row_max(x[lo]) if lo < hi else x.dtype.type(0)
    no_row = np.empty(0, dtype=out.dtype)  # a stand-in for out[i] without a gradient
    for i in range(lo, hi):
        os = out[i] if with_grad else no_row
        k_i = coef[i] if with_grad else 0.0
        loss[i], m = _ce_prob_row(x[i], m, _next_row(x, i, hi), q[i], w, eps, k_i, os, with_grad, inplace)
    return _row_sum(loss[lo:hi])

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
def _ce_index_tile(x, t, w, wsum, ignore_index, eps, coef, out, with_grad, inplace, loss, n, lo, hi):
    """:func:`_ce_index_row_value` / :func:`_ce_index_row_grad` for every position of one tile."""
    n_cls = x.shape[1]
    e_c = eps / n_cls
    ts = t[n, lo:hi]
    m = _tile_max(x, n, lo, hi)
    wt = np.zeros(hi - lo)
    xt = np.zeros(hi - lo)
    for b in range(ts.size):
        if ts[b] != ignore_index:
            wt[b] = w[ts[b]]
            xt[b] = x[n, ts[b], lo + b]
    dot = _tile_dot(x, n, lo, hi, w) if eps > 0.0 else np.zeros(hi - lo)
    s = _tile_exp(x, out, n, lo, hi, m, inplace) if with_grad else _tile_sum_exp(x, n, lo, hi, m)
    ls = loss[n, lo:hi]
    for b in range(ts.size):
        lse = m[b] + log(s[b])
        lb = (1.0 - eps) * wt[b] * (lse - xt[b])
        if eps > 0.0:
            lb += e_c * (wsum * lse - dot[b])
        ls[b] = 0.0 if ts[b] == ignore_index else lb
    if with_grad:
        _ce_index_tile_grad(out, ts, w, wsum, ignore_index, eps, coef[n, lo:hi], s, wt, n, lo, hi)


@_loop
def _ce_index_tile_grad(out, ts, w, wsum, ignore_index, eps, ks, s, wt, n, lo, hi):
    """The gradient of one tile from ``out = exp(x - max)``; see :func:`_ce_index_row_grad`."""
    e_c = eps / out.shape[1]
    big_s = np.zeros(hi - lo)
    et = np.zeros(hi - lo)
    ka = np.empty(hi - lo, dtype=out.dtype)
    kb = np.empty(hi - lo, dtype=out.dtype)
    k = np.zeros(hi - lo)  # 0 where the target is ignored
    for b in range(ts.size):
        if ts[b] != ignore_index:
            k[b] = ks[b]
            big_s[b] = (1.0 - eps) * wt[b] + e_c * wsum
            et[b] = out[n, ts[b], lo + b]
        ka[b] = k[b] * big_s[b] / s[b]
        kb[b] = k[b] * e_c
    for c in range(out.shape[1]):
        os = out[n, c, lo:hi]
        wc = w[c]
        for b in range(os.size):
            os[b] = os[b] * ka[b] - kb[b] * wc
    for b in range(ts.size):
        tb = ts[b]
        if tb != ignore_index:
            out[n, tb, lo + b] = k[b] * (et[b] * big_s[b] / s[b] - e_c * np.float64(w[tb]) - (1.0 - eps) * wt[b])


@_loop
def _items_total(loss, first, last, blk, n_blk):
    """The float64 sum of ``loss (N, B)`` over the work items ``first:last`` of the channel kernels."""
    total = 0.0
    for item in range(first, last):
        n = item // n_blk
        lo = (item % n_blk) * blk
        total += _row_sum(loss[n, lo:min(lo + blk, loss.shape[1])])
    return total


@_loop
def _ce_index_channels(k, n_chunks, x, t, w, wsum, ignore_index, eps, coef, out, with_grad, inplace, loss):
    """Cross entropy of chunk ``k`` of ``n_chunks`` of the tiles of ``x (N, C, B)`` with class indices
    ``t (N, B)`` into ``loss (N, B)`` (float64); ``with_grad``: also the gradient times ``coef (N, B)``
    into ``out`` (may be ``x``)."""
    n_batch, n_cls, n_pos = x.shape
    blk, n_blk = _tile_blocks(n_cls, n_pos)
    first, last = _chunk(k, n_chunks, n_batch * n_blk)
    for item in range(first, last):
        n = item // n_blk
        lo = (item % n_blk) * blk
        _ce_index_tile(x, t, w, wsum, ignore_index, eps, coef, out, with_grad, inplace, loss, n, lo,
                       min(lo + blk, n_pos))
    return _items_total(loss, first, last, blk, n_blk)


@_loop
def _ce_prob_tile(x, q, w, eps, coef, out, with_grad, inplace, loss, n, lo, hi):
    """:func:`_ce_prob_row` for every position of one tile."""
    n_cls = x.shape[1]
    e_c = eps / n_cls
    m = _tile_max(x, n, lo, hi)
    sa = np.zeros(hi - lo)
    sax = np.zeros(hi - lo)
    for c in range(n_cls):
        xs = x[n, c, lo:hi]
        qs = q[n, c, lo:hi]
        for b in range(xs.size):
            a = _prob_weight(qs[b], w[c], eps, e_c)
            sa[b] += a
            sax[b] += a * np.float64(xs[b])
    s = _tile_exp(x, out, n, lo, hi, m, inplace) if with_grad else _tile_sum_exp(x, n, lo, hi, m)
    ls = loss[n, lo:hi]
    for b in range(ls.size):
        ls[b] = sa[b] * (m[b] + log(s[b])) - sax[b]
    if with_grad:
        ks = coef[n, lo:hi]
        for c in range(n_cls):
            os = out[n, c, lo:hi]
            qs = q[n, c, lo:hi]
            for b in range(os.size):
                os[b] = ks[b] * (np.float64(os[b]) * sa[b] / s[b] - _prob_weight(qs[b], w[c], eps, e_c))


@_loop
def _ce_prob_channels(k, n_chunks, x, q, w, eps, coef, out, with_grad, inplace, loss):
    """Cross entropy of chunk ``k`` of ``n_chunks`` of the tiles of ``x (N, C, B)`` with class
    probabilities ``q (N, C, B)`` into ``loss (N, B)``; ``with_grad``: also the gradient times
    ``coef (N, B)`` into ``out`` (may be ``x``)."""
    n_batch, n_cls, n_pos = x.shape
    blk, n_blk = _tile_blocks(n_cls, n_pos)
    first, last = _chunk(k, n_chunks, n_batch * n_blk)
    for item in range(first, last):
        n = item // n_blk
        lo = (item % n_blk) * blk
        _ce_prob_tile(x, q, w, eps, coef, out, with_grad, inplace, loss, n, lo, min(lo + blk, n_pos))
    return _items_total(loss, first, last, blk, n_blk)


# ================================================================================================
# log_softmax / softmax and their vector-Jacobian products
# ================================================================================================
@_loop
def _softmax_row(xs, m, nxt, ys, logarithm, gs, gxs, with_grad):
    """``ys = log_softmax(xs)`` (``logarithm``) or ``softmax(xs)`` given ``m = max(xs)``; returns the
    next row's maximum. ``with_grad``: also the vector-Jacobian product ``gxs = g - exp(y) * sum(g)``
    (log) or ``y * (g - sum(g * y))``, from ``ys`` and ``gs`` alone, so ``gxs`` may be ``xs``."""
    if logarithm:
        s, m_next = _row_sum_exp(xs, m, nxt)
        lse = ys.dtype.type(m + log(s))
        for c in range(xs.size):
            ys[c] = xs[c] - lse
    else:
        s, m_next = _row_exp_into(xs, ys, m, nxt)
        _row_scale(ys, 1.0 / s)
    if with_grad:
        if logarithm:
            sg = gs.dtype.type(_row_sum(gs))
            for c in range(ys.size):
                gxs[c] = gs[c] - _exp_same(ys[c]) * sg
        else:
            sgy = ys.dtype.type(_row_dot(gs, ys))
            for c in range(ys.size):
                gxs[c] = ys[c] * (gs[c] - sgy)
    return m_next


@_loop
def _softmax_rows(k, n_chunks, x, y, logarithm, g, gx, with_grad):
    """:func:`_softmax_row` for chunk ``k`` of ``n_chunks`` runs of rows of ``x (R, C)``; ``g``, ``gx``
    ``(R, C)`` when ``with_grad``."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    m = _row_max(x[lo]) if lo < hi else x.dtype.type(0)
    for i in range(lo, hi):
        gs = g[i] if with_grad else x[i, :0]
        gxs = gx[i] if with_grad else y[i, :0]
        m = _softmax_row(x[i], m, _next_row(x, i, hi), y[i], logarithm, gs, gxs, with_grad)


@_loop
def _softmax_tile(x, y, logarithm, g, gx, with_grad, n, lo, hi):
    """:func:`_softmax_row` along axis 1 for the positions ``lo:hi`` of batch ``n`` of ``(A, C, B)``."""
    m = _tile_max(x, n, lo, hi)
    if logarithm:
        s = _tile_sum_exp(x, n, lo, hi, m)
        lse = np.empty(hi - lo, dtype=y.dtype)
        for b in range(lse.size):
            lse[b] = m[b] + log(s[b])
        for c in range(x.shape[1]):
            xs = x[n, c, lo:hi]
            ys = y[n, c, lo:hi]
            for b in range(xs.size):
                ys[b] = xs[b] - lse[b]
    else:
        s = _tile_exp(x, y, n, lo, hi, m, False)
        r = np.empty(hi - lo, dtype=y.dtype)
        for b in range(r.size):
            r[b] = 1.0 / s[b]
        for c in range(x.shape[1]):
            ys = y[n, c, lo:hi]
            for b in range(ys.size):
                ys[b] *= r[b]
    if with_grad:
        _softmax_vjp_tile(y, logarithm, g, gx, n, lo, hi)


@_loop
def _softmax_vjp_tile(y, logarithm, g, gx, n, lo, hi):
    """The vector-Jacobian product of :func:`_softmax_tile` from ``y`` and ``g`` alone."""
    acc = np.zeros(hi - lo)
    for c in range(y.shape[1]):
        gs = g[n, c, lo:hi]
        ys = y[n, c, lo:hi]
        if logarithm:
            for b in range(gs.size):
                acc[b] += np.float64(gs[b])
        else:
            for b in range(gs.size):
                acc[b] += np.float64(gs[b]) * np.float64(ys[b])
    sums = acc.astype(y.dtype)
    for c in range(y.shape[1]):
        gs = g[n, c, lo:hi]
        ys = y[n, c, lo:hi]
        gxs = gx[n, c, lo:hi]
        if logarithm:
            for b in range(gs.size):
                gxs[b] = gs[b] - _exp_same(ys[b]) * sums[b]
        else:
            for b in range(gs.size):
                gxs[b] = ys[b] * (gs[b] - sums[b])


@_loop
def _softmax_channels(k, n_chunks, x, y, logarithm, g, gx, with_grad):
    """:func:`_softmax_tile` over chunk ``k`` of ``n_chunks`` of the tiles of ``x (A, C, B)``."""
    n_batch, n_cls, n_pos = x.shape
    blk, n_blk = _tile_blocks(n_cls, n_pos)
    first, last = _chunk(k, n_chunks, n_batch * n_blk)
    for item in range(first, last):
        n = item // n_blk
        lo = (item % n_blk) * blk
        _softmax_tile(x, y, logarithm, g, gx, with_grad, n, lo, min(lo + blk, n_pos))


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


@_loop
def _ce_index_short(k, n_chunks, x, t, w, wsum, ignore_index, eps, coef, out, with_grad, loss):
    """:func:`_ce_index_rows` for rows of few classes, chunk ``k`` of ``n_chunks`` of the blocks of
    ``_SHORT_ROWS`` rows (no ``inplace`` flag: the tiles are private)."""
    n_rows = x.shape[0]
    first, last = _chunk(k, n_chunks, (n_rows + _SHORT_ROWS - 1) // _SHORT_ROWS)
    for blk in range(first, last):
        lo, hi = _short_block(blk, n_rows)
        tile = _rows_to_tile(x, lo, hi)
        ts = t[lo:hi].reshape(1, hi - lo)
        ls = loss[lo:hi].reshape(1, hi - lo)
        ks = coef[lo:hi].reshape(1, hi - lo) if with_grad else ls
        # the gradient overwrites the private tile (in place), then goes back to rows
        _ce_index_tile(tile, ts, w, wsum, ignore_index, eps, ks, tile, with_grad, True, ls, 0, 0, hi - lo)
        if with_grad:
            _tile_to_rows(tile, out, lo)
    return _row_sum(loss[first * _SHORT_ROWS:min(last * _SHORT_ROWS, n_rows)])


@_loop
def _ce_prob_short(k, n_chunks, x, q, w, eps, coef, out, with_grad, loss):
    """:func:`_ce_prob_rows` for rows of few classes."""
    n_rows = x.shape[0]
    first, last = _chunk(k, n_chunks, (n_rows + _SHORT_ROWS - 1) // _SHORT_ROWS)
    for blk in range(first, last):
        lo, hi = _short_block(blk, n_rows)
        tile = _rows_to_tile(x, lo, hi)
        qs = _rows_to_tile(q, lo, hi)
        ls = loss[lo:hi].reshape(1, hi - lo)
        ks = coef[lo:hi].reshape(1, hi - lo) if with_grad else ls
        _ce_prob_tile(tile, qs, w, eps, ks, tile, with_grad, True, ls, 0, 0, hi - lo)
        if with_grad:
            _tile_to_rows(tile, out, lo)
    return _row_sum(loss[first * _SHORT_ROWS:min(last * _SHORT_ROWS, n_rows)])


@_loop
def _softmax_short(k, n_chunks, x, y, logarithm, g, gx, with_grad):
    """:func:`_softmax_rows` for rows of few classes."""
    n_rows = x.shape[0]
    first, last = _chunk(k, n_chunks, (n_rows + _SHORT_ROWS - 1) // _SHORT_ROWS)
    for blk in range(first, last):
        lo, hi = _short_block(blk, n_rows)
        tile = _rows_to_tile(x, lo, hi)
        ys = np.empty_like(tile)
        # the VJP reads only y and g: its result may overwrite the private logits tile
        gs = _rows_to_tile(g, lo, hi) if with_grad else tile
        _softmax_tile(tile, ys, logarithm, gs, tile, with_grad, 0, 0, hi - lo)
        if with_grad:
            _tile_to_rows(tile, gx, lo)
        _tile_to_rows(ys, y, lo)


# ================================================================================================
# Drivers (called by fastloss.api with checked NumPy arrays)
# ================================================================================================
def _split_axis(shape, axis):
    """``(A, C, B)``: the elements before ``axis``, along it, and after it."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _gradient_buffer(grad, x, xc):
    """``(out, xc, inplace)``: the gradient buffer for input ``x`` (``xc``: ``x``'s data, C-contiguous).

    ``inplace`` when the caller asked for the gradient in ``x`` itself (then ``x`` is C-contiguous and
    ``xc`` a view of it); an ``out`` overlapping the logits in any other way gets them copied first, so
    no kernel reads what it has overwritten.
    """
    out = grad.out_for(0, x)
    if grad.out is None:  # a new array: shares nothing with the logits
        return out, xc, False
    if out is x or (x.flags.c_contiguous and out.ctypes.data == x.ctypes.data):
        return out, xc, True
    if np.may_share_memory(out, xc):
        xc = xc.copy()
    return out, xc, False


#: Elements of work below which a call runs on the calling thread alone, and the least work of each
#: further chunk. A chunk handed to a pool thread costs about 10-20 us (waking the thread, the GIL
#: handover, Numba's argument unboxing), measured on the 2-core build machine; the serial kernels move
#: 0.5-2 ns per element (cross entropy, softmax), so 2**16 elements (30-130 us of work) is where a
#: second thread starts to pay: see DEVELOPING.md, "Threads".
MIN_CHUNK = 1 << 16

#: At most this many chunks per call: a few per thread balance a machine where other processes hold
#: cores (a descheduled thread delays only the chunk it holds). Fixed, not derived from the thread
#: count, so that the chunks, and every result, are the same whatever ``set_num_threads`` says.
MAX_CHUNKS = 16


def _n_chunks(work, units):
    """Chunks for ``work`` elements of work made of ``units`` indivisible pieces (rows, tiles, blocks)."""
    return max(1, min(units, MAX_CHUNKS, work // MIN_CHUNK))


def _run(kernel, work, units, *args):
    """Run the chunk kernel ``kernel(k, n_chunks, *args)`` over its chunks; the float64 total of the
    losses it returns, summed in chunk order."""
    n = _n_chunks(work, units)
    if n == 1:
        return kernel(0, 1, *args)
    parts = _jit.run_chunks(kernel, n, *args)
    return None if parts[0] is None else math.fsum(parts)


def _reduce(loss, total, reduction, denominator, dtype, shape):
    """The float64 per-position ``loss`` (whose sum is ``total``) reduced as ``reduction``
    (``'mean'`` divides by ``denominator``, NaN when it is 0, as PyTorch), in ``dtype``; ``'none'``
    gives ``shape``."""
    if reduction == "none":
        return loss.reshape(shape).astype(dtype)
    if reduction == "sum":
        return scalar_result(total, dtype)
    return scalar_result(total / denominator if denominator != 0 else math.nan, dtype)


def _coefficients(grad, reduction, denominator, loss_shape, shape):
    """Each position's factor on its loss gradient (float64, of ``shape``): ``grad_output`` (per
    position for ``'none'``), over ``denominator`` for ``'mean'``. The kernels zero it where a target
    is ignored."""
    if reduction == "none":
        return np.array(np.broadcast_to(grad.array(loss_shape, np.float64), loss_shape)).reshape(shape)
    g = grad.scalar()
    if reduction == "mean":
        g = g / denominator if denominator != 0 else 0.0
    coef = np.empty(shape)
    coef.fill(g)
    return coef


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


def _index_targets(t, x3, w, ignore_index):
    """Class indices ``t`` as C-contiguous ``intp`` of shape ``(N, B)``, and PyTorch's 'mean' divisor.

    Raises ``IndexError`` naming the first index outside ``[0, C)`` that is not ``ignore_index``."""
    n, n_cls, n_pos = x3.shape
    tk = t if t.dtype == np.intp and t.flags.c_contiguous else np.ascontiguousarray(t, dtype=np.intp)
    tk = tk.reshape(n, n_pos)
    den, bad = _index_scan(tk.reshape(-1), w, ignore_index, n_cls)
    if bad >= 0:
        V.class_index_error("target", t.reshape(-1)[bad], n_cls, ignore_index)
    return tk, den


_ONES = {}


def _ones(n, dtype):
    """A read-only array of ``n`` ones of ``dtype`` (cached): the class weight of a call without one."""
    key = (n, dtype)
    a = _ONES.get(key)
    if a is None:
        if len(_ONES) > 64:
            _ONES.clear()
        a = _ONES[key] = _readonly(np.ones(n, dtype=dtype))
    return a


def _class_view(x):
    """``x`` as ``(N, C, B)`` (C-contiguous; a ``(C,)`` input is ``(1, C, 1)``) and the loss's shape."""
    xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    shape = x.shape
    if len(shape) == 1:
        return xc.reshape(1, shape[0], 1), ()
    if len(shape) == 2:
        return xc.reshape(shape[0], shape[1], 1), (shape[0],)
    return xc.reshape(shape[0], shape[1], math.prod(shape[2:])), (shape[0],) + shape[2:]


def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, grad):
    """Driver of ``fastloss.cross_entropy``: index targets (any integer dtype) or probabilities."""
    x3, loss_shape = _class_view(x)
    n, n_cls, n_pos = x3.shape
    probabilities = t.dtype.kind == "f"
    # a class weight of ones stands in for "no weight": one compiled kernel serves both
    if w is None:
        wc, wsum = _ones(n_cls, x.dtype), float(n_cls)
    else:
        wc = _readonly(np.ascontiguousarray(w))
        wsum = float(np.sum(wc, dtype=np.float64))
    if probabilities:
        tk = np.ascontiguousarray(t).reshape(x3.shape)
        denominator = float(n * n_pos) if x3.size else 0.0  # PyTorch: 'mean' of an empty input is NaN
    else:
        tk, denominator = _index_targets(t, x3, wc, ignore_index)
    # without classes every target is ignore_index (or the targets are empty): no kernel, losses 0
    loss = np.empty((n, n_pos)) if x3.size else np.zeros((n, n_pos))
    # without a gradient, an empty buffer and coefficients the kernels do not read stand in (one
    # compiled kernel for value and gradient: half the compile time)
    xk, out, out3, coef, inplace = x3, None, _no_gradient(x3), loss, False
    if grad is not None:
        out, xk, inplace = _gradient_buffer(grad, x, x3)
        out3 = out.reshape(x3.shape)
        coef = _coefficients(grad, reduction, denominator, loss_shape, loss.shape)
    total = 0.0
    if x3.size:
        total = _run_cross_entropy(_readonly(xk), _readonly(tk), wc, wsum, ignore_index, label_smoothing, coef,
                                   out3, grad is not None, inplace, loss, probabilities)
    value = _reduce(loss, total, reduction, denominator, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


def _run_cross_entropy(x3, t, w, wsum, ignore_index, eps, coef, out3, with_grad, inplace, loss, probabilities):
    """Pick the short-row, row (one position per ``n``) or channel kernel and run it; the losses' sum."""
    n, n_cls, n_pos = x3.shape
    work = x3.size
    if n_pos > 1:
        units = n * _tile_blocks(n_cls, n_pos)[1]
        if probabilities:
            return _run(_ce_prob_channels, work, units, x3, t, w, eps, coef, out3, with_grad, inplace, loss)
        return _run(_ce_index_channels, work, units, x3, t, w, wsum, ignore_index, eps, coef, out3, with_grad,
                    inplace, loss)
    x2, out2, coef1, loss1 = x3[:, :, 0], out3[:, :, 0], coef[:, 0], loss[:, 0]
    t2 = t[:, :, 0] if probabilities else t[:, 0]
    if work < MIN_CHUNK:
        if probabilities:
            return _ce_prob_small(x2, t2, w, eps, coef1, out2, with_grad, loss1)
        return _ce_index_small(x2, t2, w, wsum, ignore_index, eps, coef1, out2, with_grad, loss1)
    if n_cls <= _SHORT_CLASSES:
        units = -(-n // _SHORT_ROWS)
        if probabilities:
            return _run(_ce_prob_short, work, units, x2, t2, w, eps, coef1, out2, with_grad, loss1)
        return _run(_ce_index_short, work, units, x2, t2, w, wsum, ignore_index, eps, coef1, out2, with_grad, loss1)
    if probabilities:
        return _run(_ce_prob_rows, work, n, x2, t2, w, eps, coef1, out2, with_grad, inplace, loss1)
    return _run(_ce_index_rows, work, n, x2, t2, w, wsum, ignore_index, eps, coef1, out2, with_grad, inplace, loss1)


def _readonly(a):
    """A read-only view of ``a``: the kernels see every input with one type whether the caller's array
    was writeable or not (Numba compiles a kernel once per argument type)."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


_NO_GRADIENT = {}


def _no_gradient(x):
    """The stand-in gradient buffer of a value-only call: an empty array of ``x``'s dtype and rank."""
    key = (x.dtype, x.ndim)
    a = _NO_GRADIENT.get(key)
    if a is None:
        a = _NO_GRADIENT[key] = np.empty((0,) + (1,) * (x.ndim - 1), dtype=x.dtype)
    return a


@_loop
def _nll_chunk(k, n_chunks, x, t, w, ignore_index, coef, out, with_grad, loss):
    """``nll_loss`` of chunk ``k`` of ``n_chunks`` of the batch of ``x (N, C, B)`` with class indices
    ``t (N, B)``: ``loss = -w_t x_t`` (0 where ignored; ``w`` empty means weights of 1), and with
    ``with_grad`` the gradient ``out`` (zero but ``-w_t coef`` at each target); the losses' sum.

    An ignored position adds 0 even where its logit is NaN; a zero weight times an infinite
    log-probability is NaN, as in PyTorch."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    total = 0.0
    for i in range(lo, hi):
        for b in range(x.shape[2]):
            ti = t[i, b]
            li = 0.0
            if ti != ignore_index:
                li = -(1.0 if w.size == 0 else np.float64(w[ti])) * np.float64(x[i, ti, b])
                total += li
            loss[i, b] = li
        if with_grad:  # row i of x is read: out may be x itself (in place)
            row = out[i].reshape(-1)
            for j in range(row.size):
                row[j] = 0
            for b in range(x.shape[2]):
                ti = t[i, b]
                if ti != ignore_index:
                    out[i, ti, b] = -(1.0 if w.size == 0 else np.float64(w[ti])) * coef[i, b]
    return total


def nll(x, t, w, ignore_index, reduction, grad):
    """Driver of ``fastloss.nll_loss``: one fused gather of the target log-probabilities."""
    x3, loss_shape = _class_view(x)
    n, n_cls, n_pos = x3.shape
    wk = _NO_WEIGHT if w is None else _readonly(np.ascontiguousarray(w, dtype=np.float64))
    tk, denominator = _index_targets(t, x3, wk, ignore_index)
    loss = np.empty((n, n_pos))
    out, out3, coef = None, _no_gradient(x3), loss
    if grad is not None:
        out, x3, _ = _gradient_buffer(grad, x, x3)
        out3 = out.reshape(x3.shape)
        coef = _coefficients(grad, reduction, denominator, loss_shape, loss.shape)
    total = 0.0
    if loss.size:
        work = x3.size if grad is not None else loss.size
        total = _run(_nll_chunk, work, n, _readonly(x3), _readonly(tk), wk, ignore_index, coef, out3,
                     grad is not None, loss)
    elif out is not None:
        out[...] = 0
    value = _reduce(loss, total, reduction, denominator, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


_NO_WEIGHT = _readonly(np.empty(0))


def _softmax_driver(x, axis, grad, logarithm):
    """``log_softmax`` / ``softmax`` of ``x`` along ``axis``, and the vector-Jacobian product."""
    a, c, b = _split_axis(x.shape, axis)
    xc = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(a, c, b)
    y = np.empty(x.shape, dtype=x.dtype)
    y3 = y.reshape(a, c, b)
    g3 = gx3 = _no_gradient(xc)  # stand-ins, not read without a gradient
    gx = None
    if grad is not None:
        g3 = np.ascontiguousarray(np.broadcast_to(grad.array(x.shape, x.dtype), x.shape)).reshape(a, c, b)
        # once a row's (or tile's) y is written the kernels read only y and g: gx may be the input
        gx, xc, _ = _gradient_buffer(grad, x, xc)
        gx3 = gx.reshape(a, c, b)
    xc, g3 = _readonly(xc), _readonly(g3)
    if x.size:
        with_grad = grad is not None
        work = x.size
        if b == 1 and c <= _SHORT_CLASSES:
            _run(_softmax_short, work, -(-a // _SHORT_ROWS), xc[:, :, 0], y3[:, :, 0], logarithm, g3[:, :, 0],
                 gx3[:, :, 0], with_grad)
        elif b == 1:
            _run(_softmax_rows, work, a, xc[:, :, 0], y3[:, :, 0], logarithm, g3[:, :, 0], gx3[:, :, 0], with_grad)
        else:
            _run(_softmax_channels, work, a * _tile_blocks(c, b)[1], xc, y3, logarithm, g3, gx3, with_grad)
    return y if grad is None else (y, (gx,))


def log_softmax(x, axis, grad):
    """Driver of ``fastloss.log_softmax``."""
    return _softmax_driver(x, axis, grad, True)


def softmax(x, axis, grad):
    """Driver of ``fastloss.softmax``."""
    return _softmax_driver(x, axis, grad, False)


# ================================================================================================
# float64 NumPy references (ground truth for the tests)
# ================================================================================================
def _ref_log_softmax_along(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _ref_grad_output(grad_output, shape):
    return np.ones(shape) if grad_output is None else np.broadcast_to(np.asarray(grad_output, np.float64), shape)


def _ref_log_softmax(input, axis=-1, grad_output=None):
    x = np.asarray(input, dtype=np.float64)
    y = _ref_log_softmax_along(x, axis)
    g = _ref_grad_output(grad_output, y.shape)
    return y, (g - np.exp(y) * np.sum(g, axis=axis, keepdims=True),)


def _ref_softmax(input, axis=-1, grad_output=None):
    x = np.asarray(input, dtype=np.float64)
    p = np.exp(_ref_log_softmax_along(x, axis))
    g = _ref_grad_output(grad_output, p.shape)
    return p, (p * (g - np.sum(g * p, axis=axis, keepdims=True)),)


def _ref_classes_last(x):
    """Classes on the last axis: ``(C,)`` stays, ``(N, C, d...)`` becomes ``(N, d..., C)``."""
    return x if x.ndim == 1 else np.moveaxis(x, 1, -1)


def _ref_classes_back(a, ndim):
    return a if ndim == 1 else np.moveaxis(a, -1, 1)


def _ref_index_weights(t, n_cls, w, ignore_index):
    """Per position and class: ``w_c [c == t]`` (0 where ignored), and the valid mask."""
    t = np.asarray(t)
    valid = t != ignore_index
    onehot = (np.arange(n_cls) == np.where(valid, t, -1)[..., None]).astype(np.float64)
    return onehot * w, valid


def _ref_reduce(loss, reduction, denominator, grad_output):
    """Reduced value and the per-position factor on the loss gradient."""
    if reduction == "none":
        return loss, _ref_grad_output(grad_output, loss.shape)
    g = 1.0 if grad_output is None else float(np.asarray(grad_output))
    if reduction == "sum":
        return loss.sum(), np.full(loss.shape, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        return loss.sum() / denominator, np.full(loss.shape, g / denominator if denominator else 0.0)


def _ref_nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", grad_output=None):
    x = _ref_classes_last(np.asarray(input, dtype=np.float64))
    n_cls = x.shape[-1]
    w = np.ones(n_cls) if weight is None else np.asarray(weight, dtype=np.float64)
    a, _ = _ref_index_weights(target, n_cls, w, ignore_index)
    loss = -np.sum(a * x, axis=-1)
    value, k = _ref_reduce(loss, reduction, a.sum(), grad_output)
    return value, (_ref_classes_back(-k[..., None] * a, np.ndim(input)),)


def _ref_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                       grad_output=None):
    """``l = -sum_c a_c logp_c``; its gradient through the log-softmax chain rule."""
    x = _ref_classes_last(np.asarray(input, dtype=np.float64))
    n_cls = x.shape[-1]
    w = np.ones(n_cls) if weight is None else np.asarray(weight, dtype=np.float64)
    e = float(label_smoothing)
    if np.asarray(target).dtype.kind == "f":
        q = _ref_classes_last(np.asarray(target, dtype=np.float64))
        a = w * ((1 - e) * q + e / n_cls)
        denominator = float(np.prod(a.shape[:-1]))  # the number of positions
    else:
        onehot_w, valid = _ref_index_weights(target, n_cls, w, ignore_index)
        a = (1 - e) * onehot_w + (e / n_cls) * w * valid[..., None]
        denominator = onehot_w.sum()
    logp = _ref_log_softmax_along(x, -1)
    loss = -np.sum(a * logp, axis=-1)
    value, k = _ref_reduce(loss, reduction, denominator, grad_output)
    dlogp = -k[..., None] * a
    grad = dlogp - np.exp(logp) * np.sum(dlogp, axis=-1, keepdims=True)
    return value, (_ref_classes_back(grad, np.ndim(input)),)


REFERENCE = {
    "log_softmax": _ref_log_softmax,
    "softmax": _ref_softmax,
    "nll_loss": _ref_nll_loss,
    "cross_entropy": _ref_cross_entropy,
}


# ================================================================================================
# Test and benchmark inputs
# ================================================================================================
def _logits(rng, shape, dtype, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _targets(rng, n_cls, shape, dtype=np.int64, ignore=None, fraction=0.25):
    """Class indices of ``shape``; with ``ignore``, about ``fraction`` of them set to it."""
    t = rng.integers(0, n_cls, size=shape)
    if ignore is not None:
        t = np.where(rng.random(shape) < fraction, ignore, t)
    return np.asarray(t).astype(dtype)


def _probabilities(rng, shape, dtype):
    """Random class probabilities along axis 1 (axis 0 of a 1-D shape)."""
    z = rng.standard_normal(shape)
    p = np.exp(_ref_log_softmax_along(z, 0 if len(shape) == 1 else 1))
    return p.astype(dtype)


def _softmax_cases(rng, dtype):
    return [
        Case((_logits(rng, (5, 7), dtype),), {}, "2d"),
        Case((_logits(rng, (3, 4, 5), dtype),), {"axis": 1}, "3d-axis1"),
        Case((_logits(rng, (6,), dtype), 0), {}, "1d"),
        Case((_logits(rng, (2, 3, 4), dtype),), {"axis": 0}, "3d-axis0"),
        Case((_logits(rng, (3, 37), dtype),), {"axis": -1}, "2d-37"),
    ]


def _nll_cases(rng, dtype):
    def logp(shape):
        return _ref_log_softmax_along(rng.standard_normal(shape), 0 if len(shape) == 1 else 1).astype(dtype)

    w = rng.uniform(0.2, 2.0, 5).astype(dtype)
    return [
        Case((logp((6, 5)), _targets(rng, 5, (6,))), {}, "2d"),
        Case((logp((5,)), np.array(3)), {}, "1d"),
        Case((logp((6, 5)), _targets(rng, 5, (6,), np.int32, ignore=2)),
             {"weight": w, "ignore_index": 2, "reduction": "sum"}, "weight-ignore-sum"),
        Case((logp((2, 5, 3, 2)), _targets(rng, 5, (2, 3, 2), np.uint8, ignore=255)),
             {"ignore_index": 255, "reduction": "none", "weight": w}, "4d-none"),
        Case((logp((3, 5, 4)), _targets(rng, 5, (3, 4), ignore=-100)), {"weight": w}, "3d-mean"),
    ]


def _cross_entropy_cases(rng, dtype):
    w = rng.uniform(0.2, 2.0, 5).astype(dtype)
    return [
        Case((_logits(rng, (6, 5), dtype), _targets(rng, 5, (6,))), {}, "2d"),
        Case((_logits(rng, (7,), dtype), np.array(4, dtype=np.int16)), {}, "1d"),
        Case((_logits(rng, (6, 5), dtype), _targets(rng, 5, (6,), np.int32, ignore=1)),
             {"weight": w, "ignore_index": 1}, "weight-ignore"),
        Case((_logits(rng, (6, 5), dtype), _targets(rng, 5, (6,), ignore=-100)),
             {"weight": w, "label_smoothing": 0.2, "reduction": "sum"}, "weight-ignore-smooth-sum"),
        Case((_logits(rng, (4, 37), dtype), _targets(rng, 37, (4,))),
             {"label_smoothing": 0.1, "reduction": "none"}, "smooth-none-37"),
        Case((_logits(rng, (2, 5, 3, 2), dtype), _targets(rng, 5, (2, 3, 2), np.uint8, ignore=255)),
             {"ignore_index": 255, "weight": w, "label_smoothing": 0.3}, "4d-weight-ignore-smooth"),
        Case((_logits(rng, (3, 5, 4), dtype), _targets(rng, 5, (3, 4))), {"reduction": "none"}, "3d-none"),
        Case((_logits(rng, (4, 5), dtype), _probabilities(rng, (4, 5), dtype)),
             {"weight": w, "label_smoothing": 0.1}, "prob-weight-smooth"),
        Case((_logits(rng, (2, 5, 3), dtype), _probabilities(rng, (2, 5, 3), dtype)),
             {"reduction": "none"}, "prob-3d-none"),
        Case((_logits(rng, (5,), dtype), _probabilities(rng, (5,), dtype)), {"reduction": "sum"}, "prob-1d-sum"),
    ]


CASES = {
    "log_softmax": _softmax_cases,
    "softmax": _softmax_cases,
    "nll_loss": _nll_cases,
    "cross_entropy": _cross_entropy_cases,
}


def _bench_shape(size):
    """``(N, C)`` with about ``size`` elements: a 32000-class vocabulary once there is room for it."""
    n_cls = 32000 if size >= 8 * 32000 else max(2, int(math.sqrt(size)))
    return max(1, size // n_cls), n_cls


def _bench_logits(rng, dtype, size):
    n, n_cls = _bench_shape(size)
    return _logits(rng, (n, n_cls), dtype), n_cls


def _bench_cross_entropy(rng, dtype, size):
    x, n_cls = _bench_logits(rng, dtype, size)
    return Case((x, _targets(rng, n_cls, (x.shape[0],))), {}, f"{x.shape[0]}x{n_cls}")


def _bench_nll(rng, dtype, size):
    x, n_cls = _bench_logits(rng, dtype, size)
    return Case((_ref_log_softmax_along(x.astype(np.float64), 1).astype(dtype), _targets(rng, n_cls, (x.shape[0],))),
                {}, f"{x.shape[0]}x{n_cls}")


def _bench_softmax(rng, dtype, size):
    x, n_cls = _bench_logits(rng, dtype, size)
    return Case((x,), {"axis": -1}, f"{x.shape[0]}x{n_cls}")


BENCH = {
    "log_softmax": _bench_softmax,
    "softmax": _bench_softmax,
    "nll_loss": _bench_nll,
    "cross_entropy": _bench_cross_entropy,
}


def _torch_log_softmax(torch, input, axis=-1):
    return torch.nn.functional.log_softmax(input, dim=axis)


def _torch_softmax(torch, input, axis=-1):
    return torch.nn.functional.softmax(input, dim=axis)


def _torch_nll_loss(torch, *args, **kwargs):
    return torch.nn.functional.nll_loss(*args, **kwargs)


def _torch_cross_entropy(torch, *args, **kwargs):
    return torch.nn.functional.cross_entropy(*args, **kwargs)


#: The PyTorch expression of each loss: the softmaxes spell the axis ``dim``, the losses are
#: ``torch.nn.functional.<name>`` itself.
TORCH = {
    "log_softmax": _torch_log_softmax,
    "softmax": _torch_softmax,
    "nll_loss": _torch_nll_loss,
    "cross_entropy": _torch_cross_entropy,
}
