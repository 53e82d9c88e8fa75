"""Cross-entropy kernels of the softmax family (CPU): index and probability targets, each as row
kernels (runs of rows, ``B == 1``), small-call kernels (a call below ``MIN_CHUNK`` elements, ``B == 1``),
channel kernels (``B > 1``) and short-row kernels (few classes); see :mod:`fastloss.families.softmax`
for which layout takes which.

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
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ... import _jit
from ..._jit import array_at
from ..._math import _fsub, log
from .rows import (_BLOCK, _SHORT_ROWS, _chunk, _exp_same, _index_scan, _items_total, _loop, _next_row, _row_dot,
                   _row_exp, _row_max, _row_scale, _row_scale_sub, _row_sum, _row_sum_exp, _rows_to_tile, _short_block,
                   _tile_blocks, _tile_dot, _tile_exp, _tile_max, _tile_sum_exp, _tile_to_rows)


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
# Small calls: the whole call on the calling thread, one row at a time in plain loops
# ================================================================================================
@intrinsic
def _fmaximum(typingctx, a, b):
    """IEEE 754-2019 ``maximum(a, b)`` of two floats of one type (LLVM ``llvm.maximum``): NaN if
    either is NaN, ``-0 < +0``. A loop of them is a reduction LLVM vectorises (a float
    compare-and-select is not, without 'nnan'), and it is typed in one step, where the order keys of
    :func:`.rows._row_max` cost seconds of compilation through their width-dependent overloads."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]),
                                            f"llvm.maximum.f{a.bitwidth}")
        return builder.call(fn, args)

    return a(a, b), codegen


@_jit.device
def _small_max(xs):
    """``max(xs)`` of a non-empty row, NaN if it holds one (:func:`.rows._row_max` skips NaNs whose
    sign bit is set; the row's sum of exponentials is NaN either way, and so is all that follows)."""
    m = xs[0]
    for c in range(1, xs.size):
        m = _fmaximum(m, xs[c])
    return m


@_jit.device
def _small_exp(os, xs, m, inplace):
    """``os[c] = exp(xs[c] - m)``, returning their float64 sum: exponentials in ``xs``'s precision,
    summed in it over blocks of ``_BLOCK`` (as :func:`.rows._row_exp`); ``inplace`` when ``os`` is
    ``xs``.

    ``xs`` is first copied into ``os`` unless it is ``os``, and the exponentials are then taken in place,
    by one loop whatever the call: a value, a gradient into a new buffer and one in place round alike
    (two loops, or one over two arrays that LLVM checks for aliasing at run time, may be vectorised and
    fast-math-rewritten differently, and their float32 sums differ in the last bits)."""
    if not inplace:
        for c in range(xs.size):
            os[c] = xs[c]
    s = 0.0
    for lo in range(0, os.size, _BLOCK):
        blk = os[lo:lo + _BLOCK]  # over a slice: indexed os[lo:hi] in place, the loop stays scalar (4x slower)
        acc = os.dtype.type(0)
        for c in range(blk.size):
            e = _exp_same(blk[c] - m)
            blk[c] = e
            acc += e
        s += acc
    return s


# The small kernels take these primitives inlined (compiled from the same source), not as kernels
# of their own: a first call then compiles one kernel, not four, and a warm one loads one from the cache.
_small_scan = _jit.device(_index_scan.py_func)
_small_sum = _jit.device(_row_sum.py_func)
_small_dot = _jit.device(_row_dot.py_func)


@_jit.device
def _row_factor(i, g, gvec, mean, den):
    """Row ``i``'s factor on its loss gradient: ``grad_output`` (``gvec[i]`` when ``gvec`` is not
    empty, else ``g``), over ``den`` for ``'mean'`` (0 when ``den`` is 0)."""
    gi = gvec[i] if gvec.size else g
    if mean:
        return gi / den if den != 0.0 else 0.0
    return gi


#: The small kernels allocate nothing (the caller hands them a scratch row): compiled without Numba's
#: runtime (as the C entries are), a warm first call loads them without compiling the runtime and
#: without the module of ``np.empty``'s implementation (0.2-0.5 s together, measured under load).
_small_loop = _jit.kernel(parallel=False, nrt=False)


#: Elements of one block of whole rows in :func:`_ce_index_small` (a longer row is a block alone): its
#: exponentials are one flat loop, which LLVM vectorises whatever the row length (a loop over a 10-class
#: row runs in its scalar remainder: 3x slower per call at (64, 10)).
_SMALL_BLOCK = 1024
#: :func:`_ce_index_small` takes the log of a product of row sums (each in ``[1, C]``) before it could
#: overflow (a log per row cost about a third of a (64, 10) call).
_PRODUCT_LIMIT = 1e250


def _ce_small_signature(dtype):
    """``bad = _ce_index_small(x, t, n_rows, n_cls, w, ignore_index, eps, g, gvec, n_gvec, mean, out,
    n_out, with_grad, inplace, loss, n_loss, row, n_row, result)``: each array a pointer (``x``, ``w``,
    ``out``, ``row`` of ``dtype``; ``t`` of intp; ``gvec``, ``loss``, ``result`` of float64) and its
    length; ``fastloss._cy.softmax_small``'s ``ce_entry_t``."""
    p, f8, i = types.CPointer(dtype), types.CPointer(types.float64), types.intp
    return i(p, types.CPointer(i), i, i, p, i, types.float64, types.float64, f8, i, i, p, i, i, i, f8, i, p, i, f8)


@_jit.entry(_ce_small_signature(types.float32), _ce_small_signature(types.float64))
def _ce_index_small(x_p, t_p, n_rows, n_cls, w_p, ignore_index, eps, g, gvec_p, n_gvec, mean, out_p, n_out,
                    with_grad, inplace, loss_p, n_loss, row_p, n_row, result):
    """Cross entropy of a small call, all of it on the calling thread: rows ``x (R, C)``, class indices
    ``t (R,)``, class weight ``w (C,)``; the gradient of row ``i`` (``with_grad``, into ``out``: the
    ``(R * C,)`` flat view of the C-contiguous gradient, which may be ``x``'s data: ``inplace``) scaled
    by :func:`_row_factor` (``g``, or ``gvec`` unless it is empty); the loss of each row into ``loss``
    unless it is empty; ``row`` is scratch for the exponentials of a value-only call (a block of
    rows: ``max(C, _SMALL_BLOCK)`` elements suffice; any size with ``with_grad``). A flat ``out`` because a ``reshape`` in the
    kernel costs its first call half a second of compilation.

    A C entry point (:func:`fastloss._jit.entry`, the signature of :func:`_ce_small_signature`; per
    dtype, ``_ce_index_small.address(0)`` float32, ``(1)`` float64): the fast path of the plain call and
    the general path's small calls both call it from C (``fastloss._cy.softmax_small``), one compiled
    kernel for both, so they give the same bits. The arrays are views of the caller's memory, which
    must be C-contiguous, aligned and in native byte order.

    Stores ``result[:2] = (total, den)``, the losses' float64 sum and PyTorch's 'mean' divisor (the
    weights of the targets that are not ``ignore_index``), and returns the first row whose target is
    outside ``[0, C)`` and not ``ignore_index`` (-1 if none; otherwise nothing was written). The
    targets are scanned first: the divisor scales every row's gradient.

    Blocks of whole rows (:data:`_SMALL_BLOCK` elements): a pass per row reads what its loss needs and
    writes ``x - max`` into the block (the gradient buffer, or ``row``), one flat loop takes the
    exponentials in ``x``'s precision, and a pass per row sums them in float64 and writes the gradient
    ``k (p_c S - a_c)``. A row's loss ``S lse - sum_c a_c x_c`` is formed as ``(1 - e) w_t (m - x_t) +
    e / C (W m - sum_c w_c x_c) + S log(s)`` (``m`` the row's max, ``s`` its sum of ``exp(x - m)``):
    the first terms exactly where ``m = x_t``. Without per-row losses, the rows with ``S = 1`` add the
    log of the product of their sums (:data:`_PRODUCT_LIMIT`), not one log each. The logs are libm's
    (``math.log``, correctly rounded to within an ulp, exactly 0 at 1): they are scalar here, and
    :func:`fastloss._math.log`, written to vectorise, would be inlined at each call, a second of
    compilation for a first call. In place, a value and a gradient run the same loops on the same
    values, so they round alike.

    A first call with an empty Numba cache compiles this kernel alone, a few seconds less than the
    pipelined row kernels or the transposed tiles of the short rows.
    """
    x = array_at(x_p, (n_rows, n_cls))
    t = array_at(t_p, (n_rows,))
    w = array_at(w_p, (n_cls,))
    gvec = array_at(gvec_p, (n_gvec,))
    out = array_at(out_p, (n_out,))
    loss = array_at(loss_p, (n_loss,))
    row = array_at(row_p, (n_row,))
    den, bad = _small_scan(t, w, ignore_index, n_cls)
    result[1] = den
    if bad >= 0:
        return bad
    e_c = eps / n_cls
    wsum = _small_sum(w) if eps > 0.0 else 0.0
    per_row = loss.size != 0
    per_block = max(1, _SMALL_BLOCK // n_cls)
    total = 0.0
    product = 1.0
    for i0 in range(0, n_rows, per_block):
        nb = min(n_rows - i0, per_block)
        blk = out[i0 * n_cls:(i0 + nb) * n_cls] if with_grad else row[:nb * n_cls]
        for j in range(nb):
            xs = x[i0 + j]
            ti = t[i0 + j]
            m = _small_max(xs)
            # what the loss needs, read before the block may overwrite xs (in place)
            base = 0.0
            if ti != ignore_index:
                base = (1.0 - eps) * np.float64(w[ti]) * (np.float64(m) - np.float64(xs[ti]))
                if eps > 0.0:
                    base += e_c * (wsum * np.float64(m) - _small_dot(xs, w))
            if per_row:
                loss[i0 + j] = base
            else:
                total += base
            at = j * n_cls
            for c in range(n_cls):
                blk[at + c] = xs[c] - m
        for e in range(blk.size):
            blk[e] = _exp_same(blk[e])
        for j in range(nb):
            i = i0 + j
            ti = t[i]
            os = blk[j * n_cls:(j + 1) * n_cls]
            s = 0.0
            for c in range(n_cls):
                s += np.float64(os[c])
            ignored = ti == ignore_index
            wt = 0.0 if ignored else np.float64(w[ti])
            big_s = 0.0 if ignored else (1.0 - eps) * wt + e_c * wsum
            if per_row:
                li = loss[i] + big_s * math.log(s) if not ignored else 0.0
                loss[i] = li
                total += li
            elif big_s == 1.0:
                product *= s
                if product > _PRODUCT_LIMIT:
                    total += math.log(product)
                    product = 1.0
            elif not ignored:
                total += big_s * math.log(s)
            if with_grad:
                k = 0.0 if ignored else _row_factor(i, g, gvec, mean, den)
                et = 0.0 if ignored else np.float64(os[ti])
                a = os.dtype.type(k * big_s / s)
                b = os.dtype.type(k * e_c)
                for c in range(n_cls):
                    os[c] = os[c] * a - b * w[c]
                if not ignored:
                    os[ti] = k * (et * big_s / s - e_c * wt - (1.0 - eps) * wt)
    result[0] = total + math.log(product)
    return -1


@_small_loop
def _ce_prob_small(x, q, w, eps, g, gvec, mean, out, with_grad, inplace, loss, row):
    """:func:`_ce_index_small` with class probabilities ``q (R, C)``; returns ``(total, R, -1)`` (the
    'mean' divisor is the number of rows).

    The loss of a row is ``-sum_c a_c (x_c - m - log(s))``, formed as ``-(sum_c a_c (x_c - m) -
    sum(a) log(s))``: a one-class row is then exactly ``-0.0``, as PyTorch's ``-(q * 0)``, where
    ``sum(a) (m + log(s)) - sum_c a_c x_c`` leaves a rounding error (6.9e-18) behind. The sums start
    at ``-0.0``, the identity of addition that keeps that sign."""
    n_rows, n_cls = x.shape
    den = np.float64(n_rows)
    e_c = eps / n_cls
    total = -0.0
    for i in range(n_rows):
        xs = x[i]
        qs = q[i]
        m = _small_max(xs)
        sa = 0.0
        sax = -0.0
        for c in range(n_cls):
            a = _prob_weight(qs[c], w[c], eps, e_c)
            sa += a
            sax += a * (np.float64(xs[c]) - m)
        os = out[i] if with_grad else row
        s = _small_exp(os, xs, m, inplace)
        li = _fsub(-0.0, _fsub(sax, sa * log(s)))  # strict: fast-math (nsz) would fold -(a - b) to b - a
        if loss.size:
            loss[i] = li
        total += li
        if with_grad:
            k = _row_factor(i, g, gvec, mean, den)
            for c in range(n_cls):
                os[c] = k * (np.float64(os[c]) * sa / s - _prob_weight(qs[c], w[c], eps, e_c))
    return total, den, -1


# ================================================================================================
# Channel tiles: positions lo:hi of batch n of an (N, C, B) array
# ================================================================================================
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
# Short rows (few classes): blocks of rows transposed into (1, C, rows) tiles (see .rows)
# ================================================================================================
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


def _nll_small_signature(dtype):
    """``bad = _nll_small(x, t, n_rows, n_cls, w, n_w, ignore_index, g, mean, out, n_out, with_grad,
    result)``: ``x`` and ``out (n_out, n_cls)`` of ``dtype``, ``w`` and ``result`` of float64
    (``fastloss._cy.softmax_small``'s ``nll_entry_t``)."""
    p, f8, i = types.CPointer(dtype), types.CPointer(types.float64), types.intp
    return i(p, types.CPointer(i), i, i, f8, i, i, types.float64, i, p, i, i, f8)


@_jit.entry(_nll_small_signature(types.float32), _nll_small_signature(types.float64))
def _nll_small(x_p, t_p, n_rows, n_cls, w_p, n_w, ignore_index, g, mean, out_p, n_out, with_grad, result):
    """``nll_loss`` of a small call on the calling thread: log-probabilities ``x (R, C)``, class
    indices ``t (R,)``, class weight ``w`` (empty: weights of 1). Row ``i`` loses ``-w[t_i] * x[i,
    t_i]`` (0 where ``t_i`` is ``ignore_index``); with ``with_grad`` the gradient goes to ``out`` (zero
    but ``-w[t_i] * g`` at each target, over the divisor for ``mean``).

    A C entry point as :func:`_ce_index_small`, whose ``result`` and return value it shares (nothing
    written when the return value is not -1): the scan, the gather and the sum of
    :func:`.softmax_kernels._nll_chunk` in one call, in its order."""
    x = array_at(x_p, (n_rows, n_cls))
    t = array_at(t_p, (n_rows,))
    w = array_at(w_p, (n_w,))
    out = array_at(out_p, (n_out, n_cls))
    den, bad = _small_scan(t, w, ignore_index, n_cls)
    result[1] = den
    if bad >= 0:
        return bad
    total = 0.0
    for i in range(x.shape[0]):
        ti = t[i]
        if ti != ignore_index:
            total += -(1.0 if w.size == 0 else np.float64(w[ti])) * np.float64(x[i, ti])
    if with_grad:
        k = g / den if mean and den != 0.0 else (0.0 if mean else g)
        for i in range(x.shape[0]):
            ti = t[i]
            row = out[i]
            for c in range(row.size):
                row[c] = 0
            if ti != ignore_index:
                row[ti] = -(1.0 if w.size == 0 else np.float64(w[ti])) * k
    result[0] = total
    return -1
