"""Large-vocabulary cross entropy on the CPU: ``cross_entropy`` with z-loss / logit softcapping, and
``linear_cross_entropy`` (the projection ``input @ linear_weight.T + linear_bias`` fused with the loss).

Semantics: SPEC §1 "Large-vocabulary cross entropy" (see :mod:`fastloss.api` for the formulas).
``cross_entropy`` reaches this module only when ``z_loss`` or ``softcap`` is set; with their defaults
it runs :mod:`fastloss.families.softmax` unchanged.

The row maths
-------------
For one row of logits ``x`` (``C`` classes), softcap ``s`` (or none) and z-loss weight ``lam``:

* ``z_c = s tanh(x_c / s)`` (``z = x`` without a softcap), ``lse = log sum_c exp(z_c)``,
  ``p_c = exp(z_c - lse)``;
* the cross entropy puts weight ``a_c`` on ``-log p_c``: index target ``t``, class weights ``w``,
  smoothing ``e``: ``a_c = (1 - e) w_t [c == t] + e w_c / C``; probability target ``q``:
  ``a_c = w_c ((1 - e) q_c + e / C)``. With ``S = sum_c a_c`` the loss is
  ``l = S lse - sum_c a_c z_c + lam u lse**2`` where ``u = w_t`` (index) or 1 (probabilities);
* gradient: ``dl/dz_c = p_c S - a_c + 2 lam u lse p_c`` (``d lse / d z_c = p_c``), so
  ``dl/dz_c = p_c (S + 2 lam u lse) - a_c``, and through the softcap
  ``dz_c/dx_c = 1 - tanh(x_c / s)**2 = 1 - (z_c / s)**2`` (from the stored ``z``, as torch's
  ``tanh`` backward does from its output).

Each row's gradient is that times the row's coefficient ``k``: ``grad_output`` (per row for
``'none'``) over the ``'mean'`` denominator; an ignored row has ``k = 0`` and loss 0 (its gradient is
``p * 0``: NaN only where its softmax is, as torch's).

Kernels
-------
Serial ``nogil`` Numba kernels over a run of rows (:func:`_rows`), run on the pointwise family's thread
pool (no ``prange``), built on the softmax family's row primitives. Per row, one pass from memory:
``exp(z - m)`` written into the gradient buffer (and, with a softcap, ``tanh(x / s)`` into a private
row), while the next row's maximum is taken; the gradient pass then rescales them from L2. The max of
the softcapped row is ``s tanh(max x / s)`` (tanh increases). float32 data is computed in float32
(``expf``, ``tanhf``; exponentials summed in float32 over blocks of :data:`_BLOCK` elements, each
block then added in float64); all other sums are float64.

``linear_cross_entropy`` processes rows in chunks: BLAS products fill the chunk buffer with the
logits, the row kernel overwrites them with their gradient (in place), then ``d input = G @ W`` and
``d W += G.T @ input`` (a BLAS ``gemm`` with ``beta = 1``: no ``(V, H)`` temporary). Each thread owns
one class slice of the chunk and calls single-threaded BLAS on it (see :func:`_sliced_chunks`). When one row of
``V`` classes exceeds ``chunk_size``, the classes are processed in blocks too, with an online
log-sum-exp: a first sweep gathers each row's statistics, a second recomputes each block of logits for
its gradient (four products instead of three).
"""
from __future__ import annotations

import math

import numpy as np

from .. import _jit
from .._dispatch import scalar_result
from numba import types
from numba.extending import overload

from .._math import _from_bits, exp, log, tanhf, tanhf_small
from .._registry import Case
# softmax's row primitives (exp in the data's own precision, integer-key maxima, the exp / scale passes)
from .softmax.rows import (_exp_same, _float_of_key, _int_view, _key_max, _lowest_key, _row_dot, _row_exp, _row_max,
                           _row_scale, _row_scale_sub)

#: float32 exponentials summed in float32 before the partial sum joins a float64 total.
_BLOCK = 256

#: Rows of fewer elements than this in all run on the calling thread.
_MIN_PARALLEL = 1 << 15

#: Default chunk: the extra memory of linear_cross_entropy (the chunk of logits and the per-thread
#: ``d input`` partials) is at most this fraction of the full (N, V) logits (and at least one row);
#: as large as that allows, since every chunk's products stream all of ``W`` and ``d W`` (measured
#: under load at (2048, 1024, 32000) on 2 cores, the products alone in chunks of 64 rows took 1.55x the
#: three whole products, in chunks of 128 rows 1.19x) ...
CHUNK_FRACTION = 0.045
#: ... but a chunk of fewer rows than this is not worth its products' overhead unless the logits are
#: small anyway (then the whole problem is one chunk).
MIN_CHUNK_ROWS = 64


# ================================================================================================
# One-point functions
# ================================================================================================
@_jit.device
def _tanh64(u):
    """``tanh(u)`` of a float64, branch-free (vectorises): ``tanh|u| = (1 - e) / (1 + e)`` with
    ``e = exp(-2|u|)``; its absolute error is about one ulp of 1 (a softcapped float64 logit's error is
    ``cap`` ulps of 1); ``±inf`` gives ``±1``, NaN stays NaN."""
    a = abs(u)
    e = exp(-2.0 * a)
    th = (1.0 - e) / (1.0 + e)
    return th if u >= 0.0 else -th


def _tanh_same(v):
    """``tanh(v)`` in ``v``'s own precision: :func:`fastloss._math.tanhf` for float32."""
    return math.tanh(v)


@overload(_tanh_same)
def _tanh_same_impl(v):
    # resolved at compile time, as softmax's _exp_same: float32 rows keep 8 float32 lanes
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v: tanhf(v)
    return lambda v: _tanh64(np.float64(v))


def _tanh_small_same(v):
    """``tanh(v)`` for ``|v| < _SMALL_TANH`` (float32: :func:`fastloss._math.tanhf_small`, the polynomial
    alone); float64: :func:`_tanh64`."""
    return math.tanh(v)


@overload(_tanh_small_same)
def _tanh_small_same_impl(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v: tanhf_small(v)
    return lambda v: _tanh64(np.float64(v))


#: tanhf's polynomial serves |x / cap| below this (``_math._FTANH_SMALL``)
_SMALL_TANH = 0.625


def _abs_max(xs):
    """``max |xs[c]|`` (NaN when a NaN is present), from the integer bits (vectorises)."""
    return np.max(np.abs(xs))


@overload(_abs_max, inline="always")
def _abs_max_impl(xs):
    # |x| clears the sign bit; the magnitudes of floats order as their bits (NaN above inf)
    if xs.dtype.bitwidth == 32:
        def impl(xs):
            bits = _int_view(xs)
            best = np.int32(0)
            for c in range(bits.size):
                best = max(best, np.int32(bits[c] & np.int32(0x7FFFFFFF)))
            return _from_bits(best)
        return impl

    def impl64(xs):
        bits = _int_view(xs)
        best = np.int64(0)
        for c in range(bits.size):
            best = max(best, np.int64(bits[c] & np.int64(0x7FFFFFFFFFFFFFFF)))
        return _from_bits(best)
    return impl64


@_jit.device
def _capped_max(m_x, cap, like):
    """The largest softcapped logit ``cap tanh(m_x / cap)`` from the largest logit ``m_x`` (tanh is
    increasing), computed in ``like``'s dtype exactly as :func:`_cap_exp_into` computes each element."""
    dt = like.dtype.type
    return dt(cap) * _tanh_same(dt(m_x) * dt(1.0 / cap))


_loop = _jit.kernel(parallel=False)


# ================================================================================================
# Segment loops: a row, or one class slice of a row, as a contiguous 1-D array. The exp passes are
# softmax's (``_row_exp``) without a softcap; with one, the passes below compute ``tanh`` once per
# element and keep it (``ths``) for the gradient's ``1 - tanh**2``, and keep ``exp(z - m)`` in place of
# the logits: one tanh and one exp per element, no pass recomputes either. A block whose ``|x / cap|``
# all lie in tanh's polynomial range (softcapped logits mostly do) skips tanh's own exp and division.
# ================================================================================================
@_loop
def _cap_block_into(blk, oblk, tblk, inv, cc, mm):
    """``tblk = tanh(blk * inv)``, ``oblk = exp(cc tblk - mm)``; their sum in the data's dtype."""
    acc = oblk.dtype.type(0)
    if _abs_max(blk) * inv < _SMALL_TANH:
        for c in range(blk.size):
            th = _tanh_small_same(blk[c] * inv)
            tblk[c] = th
            e = _exp_same(cc * th - mm)
            oblk[c] = e
            acc += e
    else:
        for c in range(blk.size):
            th = _tanh_same(blk[c] * inv)
            tblk[c] = th
            e = _exp_same(cc * th - mm)
            oblk[c] = e
            acc += e
    return acc


@_loop
def _cap_block_inplace(oblk, tblk, inv, cc, mm):
    """:func:`_cap_block_into` with ``oblk`` holding the logits (one array: two that alias would take
    LLVM's scalar fallback)."""
    acc = oblk.dtype.type(0)
    if _abs_max(oblk) * inv < _SMALL_TANH:
        for c in range(oblk.size):
            th = _tanh_small_same(oblk[c] * inv)
            tblk[c] = th
            e = _exp_same(cc * th - mm)
            oblk[c] = e
            acc += e
    else:
        for c in range(oblk.size):
            th = _tanh_same(oblk[c] * inv)
            tblk[c] = th
            e = _exp_same(cc * th - mm)
            oblk[c] = e
            acc += e
    return acc


@_loop
def _cap_exp_into(xs, os, ths, m, cap, nxt):
    """``ths[c] = tanh(xs[c] / cap)``, ``os[c] = exp(cap ths[c] - m)``; their float64 sum (blocks of
    :data:`_BLOCK` summed in the data's dtype) and ``max(nxt)`` (the next row's loads overlap this
    row's arithmetic)."""
    dt = os.dtype.type
    mm = dt(m)
    cc = dt(cap)
    inv = dt(1.0 / cap)
    s = 0.0
    best = _lowest_key(nxt)
    for lo in range(0, xs.size, _BLOCK):
        s += _cap_block_into(xs[lo:lo + _BLOCK], os[lo:lo + _BLOCK], ths[lo:lo + _BLOCK], inv, cc, mm)
        best = _key_max(nxt[lo:lo + _BLOCK], best)
    return s, _float_of_key(best)


@_loop
def _cap_exp_inplace(os, ths, m, cap, nxt):
    """:func:`_cap_exp_into` with ``os`` holding the logits."""
    dt = os.dtype.type
    mm = dt(m)
    cc = dt(cap)
    inv = dt(1.0 / cap)
    s = 0.0
    best = _lowest_key(nxt)
    for lo in range(0, os.size, _BLOCK):
        s += _cap_block_inplace(os[lo:lo + _BLOCK], ths[lo:lo + _BLOCK], inv, cc, mm)
        best = _key_max(nxt[lo:lo + _BLOCK], best)
    return s, _float_of_key(best)


@_jit.device
def _seg_exp(xs, os, ths, m, cap, nxt, inplace):
    """``os = exp(z - m)`` (``z = cap tanh(xs / cap)``, or ``xs`` when ``cap == 0``), its float64 sum and
    ``max(nxt)``; ``inplace``: ``os`` is ``xs``."""
    if cap > 0.0:
        if inplace:
            return _cap_exp_inplace(os, ths, m, cap, nxt)
        return _cap_exp_into(xs, os, ths, m, cap, nxt)
    return _row_exp(xs, os, os.dtype.type(m), nxt, inplace)


@_loop
def _seg_prob_sums(zs, qs, ws, eps, e_c):
    """``(sum_c a_c, sum_c a_c z_c)`` with ``a_c = w_c ((1 - e) q_c + e / C)``, float64 (``e_c = e / C``
    of the whole row: ``zs`` may be a slice of it)."""
    sa = 0.0
    saz = 0.0
    for c in range(zs.size):
        a = np.float64(ws[c]) * ((1.0 - eps) * np.float64(qs[c]) + e_c)
        sa += a
        saz += a * np.float64(zs[c])
    return sa, saz


@_loop
def _seg_add(zs, bs):
    """``zs += bs`` (the bias)."""
    for c in range(zs.size):
        zs[c] += bs[c]


@_loop
def _seg_grad(os, ths, g, kk, ws, qs, prob, eps, e_c, cap):
    """Overwrite ``os`` (holding ``exp(z_c - m)``) with ``dl/dx = (p_c (S + 2 lam u lse) - a_c) k``
    times ``1 - ths[c]**2`` with a softcap (without the index target's one-hot term: see
    :func:`_target_grad`). ``g = k (S + 2 lam u lse) / sum_c exp(z_c - m)``, ``kk = k``."""
    dt = os.dtype.type
    gg = dt(g)
    one = dt(1)
    if prob:
        kq = dt(kk * (1.0 - eps))
        kc = dt(kk * e_c)
        if cap > 0.0:
            for c in range(os.size):
                th = ths[c]
                os[c] = (os[c] * gg - ws[c] * (kq * qs[c] + kc)) * (one - th * th)
        else:
            for c in range(os.size):
                os[c] = os[c] * gg - ws[c] * (kq * qs[c] + kc)
        return
    kb = kk * e_c
    if cap > 0.0:
        kbb = dt(kb)
        if eps > 0.0:
            for c in range(os.size):
                th = ths[c]
                os[c] = (os[c] * gg - kbb * ws[c]) * (one - th * th)
        else:
            for c in range(os.size):
                th = ths[c]
                os[c] = os[c] * gg * (one - th * th)
    elif eps > 0.0:
        _row_scale_sub(os, g, kb, ws)
    else:
        _row_scale(os, g)


@_jit.device
def _target_grad(et, tht, g, kk, wt, eps, e_c, cap):
    """The gradient at the index target in float64 from its stored ``exp(z_t - m)`` (and ``tanh``):
    ``p_t (S + 2 lam w_t lse) - a_t`` cancels when ``p_t`` is near 1."""
    d = et * g - kk * ((1.0 - eps) * wt + e_c * wt)
    if cap > 0.0:
        d *= 1.0 - tht * tht
    return d


@_jit.device
def _row_loss(prob, m, s, zt, dot, sa, saz, wt, wsum, eps, e_c, lam, k):
    """``(loss, g_times_s, kk)`` of a non-ignored row from its statistics: ``m`` its max, ``s`` its
    sum of ``exp(z - m)``; index: ``zt`` the target's logit, ``wt`` its weight, ``dot = sum w_c z_c``;
    probabilities: ``sa = S``, ``saz = sum a_c z_c``. ``g_times_s = k (S + 2 lam u lse)``."""
    lse = m + log(s)
    if prob:
        big_s = sa
        u = 1.0
        loss = sa * lse - saz
    else:
        big_s = (1.0 - eps) * wt + e_c * wsum
        u = wt
        loss = (1.0 - eps) * wt * (lse - zt)
        if eps > 0.0:  # torch skips the smoothing term at 0: no 0 * inf from a -inf logit
            loss += e_c * (wsum * lse - dot)
    if lam > 0.0:
        loss += lam * u * lse * lse
    return loss, k * (big_s + 2.0 * lam * u * lse), k


# ================================================================================================
# Full rows: value and gradient, one pass from memory per row
# ================================================================================================
@_jit.device
def _seg(a, bases, widths, k, i):
    """Slice ``k`` of row ``i``: the C-ordered ``(rows, widths[k])`` matrix at ``bases[k]`` of the flat ``a``."""
    return a[bases[k] + i * widths[k]:bases[k] + (i + 1) * widths[k]]


@_jit.device
def _slices_max(a, bases, widths, i):
    """The largest logit of row ``i`` over its slices."""
    m = -np.inf
    for k in range(widths.size):
        mk = np.float64(_row_max(_seg(a, bases, widths, k, i)))
        m = mk if mk > m else m
    return m


@_loop
def _rows(c, nchunks, src, dst, n_rows, bases, widths, col0s, inplace, bias, has_bias, cap, prob, t, q, w, wsum,
          ignore_index, eps, lam, coef, with_grad, loss):
    """Rows ``[lo, hi)`` of chunk ``c`` of ``nchunks``: ``loss[i]`` (float64) and, ``with_grad``, the
    gradient times ``coef[i]`` written into ``dst``.

    Row ``i`` is split in class slices (one for ``cross_entropy``; one per BLAS thread in
    ``linear_cross_entropy``): slice ``k`` is classes ``col0s[k]:`` of width ``widths[k]`` (see
    :func:`_seg`) of the flat ``src`` (the logits) and ``dst`` (``inplace``: the same array). Without a
    gradient ``dst`` is not written (a private row takes the exponentials). The bias is added in place
    (only ``inplace``). Without a bias the next row's maximum is taken during this row's exp pass.
    """
    lo = c * n_rows // nchunks
    hi = (c + 1) * n_rows // nchunks
    n_slices = widths.size
    n_cls = 0
    for k in range(n_slices):
        n_cls += widths[k]
    e_c = eps / n_cls
    inplace = inplace and with_grad
    private = np.empty(0 if with_grad else n_cls, dtype=dst.dtype)
    ths = np.empty(n_cls if cap > 0.0 else 0, dtype=dst.dtype)
    ahead = not has_bias
    m_next = _slices_max(src, bases, widths, lo) if ahead and lo < hi else 0.0
    for i in range(lo, hi):
        ti = 0 if prob else t[i]
        ignored = (not prob) and ti == ignore_index
        nxt_ok = ahead and i + 1 < hi
        if has_bias:
            for k in range(n_slices):
                _seg_add(_seg(dst, bases, widths, k, i), bias[col0s[k]:col0s[k] + widths[k]])
            m_x = _slices_max(dst, bases, widths, i)
        else:
            m_x = m_next
        if ignored and not with_grad:
            loss[i] = 0.0
            if nxt_ok:
                m_next = _slices_max(src, bases, widths, i + 1)
            continue
        m = np.float64(_capped_max(m_x, cap, dst)) if cap > 0.0 else np.float64(dst.dtype.type(m_x))
        # the target's slice and column
        jt = 0
        if not prob and not ignored:
            for k in range(n_slices):
                if col0s[k] <= ti < col0s[k] + widths[k]:
                    jt = bases[k] + i * widths[k] + ti - col0s[k]
        wt = 0.0 if prob or ignored else np.float64(w[ti])
        zt = 0.0
        dot = 0.0
        sa = 0.0
        saz = 0.0
        if cap == 0.0:  # statistics of the logits, read before the exp pass overwrites them (in place)
            for k in range(n_slices):
                xs = _seg(src, bases, widths, k, i)
                ws = w[col0s[k]:col0s[k] + widths[k]]
                if prob:
                    a, b = _seg_prob_sums(xs, q[i, col0s[k]:col0s[k] + widths[k]], ws, eps, e_c)
                    sa += a
                    saz += b
                elif eps > 0.0 and not ignored:
                    dot += _row_dot(xs, ws)
            if not prob and not ignored:
                zt = np.float64(src[jt])
        total = 0.0
        mn = -np.inf
        for k in range(n_slices):
            xs = _seg(src, bases, widths, k, i)
            os = _seg(dst, bases, widths, k, i) if with_grad else private[col0s[k]:col0s[k] + widths[k]]
            nxt = _seg(src, bases, widths, k, i + 1) if nxt_ok else xs[:0]
            sk, mk = _seg_exp(xs, os, ths[col0s[k]:col0s[k] + widths[k]] if cap > 0.0 else ths, m, cap, nxt,
                              inplace)
            total += sk
            mk = np.float64(mk)
            mn = mk if mk > mn else mn
        if nxt_ok:
            m_next = mn
        if cap > 0.0:  # statistics of z = cap tanh(x / cap), from the kept tanh (linear in it)
            for k in range(n_slices):
                tk = ths[col0s[k]:col0s[k] + widths[k]]
                ws = w[col0s[k]:col0s[k] + widths[k]]
                if prob:
                    a, b = _seg_prob_sums(tk, q[i, col0s[k]:col0s[k] + widths[k]], ws, eps, e_c)
                    sa += a
                    saz += cap * b
                elif eps > 0.0 and not ignored:
                    dot += cap * _row_dot(tk, ws)
            if not prob and not ignored:
                zt = cap * np.float64(ths[ti])
        if ignored:
            li, gs, kk = 0.0, 0.0, 0.0
        else:
            li, gs, kk = _row_loss(prob, m, total, zt, dot, sa, saz, wt, wsum, eps, e_c, lam,
                                   coef[i] if with_grad else 0.0)
        loss[i] = li
        if not with_grad:
            continue
        g = gs / total
        et = 0.0 if prob or ignored else np.float64(dst[jt])
        tht = np.float64(ths[ti]) if cap > 0.0 and not prob and not ignored else 0.0
        for k in range(n_slices):
            ws = w[col0s[k]:col0s[k] + widths[k]]
            qs = q[i, col0s[k]:col0s[k] + widths[k]] if prob else q[0, :0]
            _seg_grad(_seg(dst, bases, widths, k, i), ths[col0s[k]:col0s[k] + widths[k]] if cap > 0.0 else ths,
                      g, kk, ws, qs, prob, eps, e_c, cap)
        if not prob and not ignored:
            dst[jt] = _target_grad(et, tht, g, kk, wt, eps, e_c, cap)


# ================================================================================================
# Class blocks (a row longer than the chunk): online statistics, then the gradient
# ================================================================================================
@_loop
def _block_stats_chunk(c, nchunks, z, col0, bias, has_bias, cap, prob, t, q, w, eps, n_cls, stats):
    """Columns ``[col0, col0 + z.shape[1])`` of rows ``z`` (the logits, in place): merge their
    statistics into ``stats[i] = (m, s, zt, dot, sa, saz)`` (``m = -inf``, ``s = 0`` to start)."""
    n_rows, width = z.shape
    lo = c * n_rows // nchunks
    hi = (c + 1) * n_rows // nchunks
    e_c = eps / n_cls
    ws = w[col0:col0 + width]
    bs = bias[col0:col0 + width]
    private = np.empty(width, dtype=z.dtype)
    ths = np.empty(width if cap > 0.0 else 0, dtype=z.dtype)
    for i in range(lo, hi):
        zs = z[i]
        if has_bias:
            _seg_add(zs, bs)
        mx = np.float64(_row_max(zs))
        mb = np.float64(_capped_max(mx, cap, zs)) if cap > 0.0 else mx
        st = stats[i]
        m = max(st[0], mb) if mb == mb else st[0]
        m = np.float64(z.dtype.type(m))
        sb = _seg_exp(zs, private, ths, m, cap, zs[:0], False)[0]
        st[1] = st[1] * exp(st[0] - m) + sb if st[0] > -np.inf else sb
        st[0] = m
        vals = ths if cap > 0.0 else zs
        scale = cap if cap > 0.0 else 1.0
        if prob:
            sa, saz = _seg_prob_sums(vals, q[i, col0:col0 + width], ws, eps, e_c)
            st[4] += sa
            st[5] += scale * saz
        else:
            ti = t[i] - col0
            if 0 <= ti < width:
                st[2] = scale * np.float64(vals[ti])
            if eps > 0.0:
                st[3] += scale * _row_dot(vals, ws)


@_loop
def _block_grad_chunk(c, nchunks, z, col0, bias, has_bias, cap, prob, t, q, w, eps, n_cls, ignore_index, stats,
                      gsum, kk):
    """The gradient of columns ``[col0, col0 + z.shape[1])`` into ``z`` (which holds their logits),
    from each row's final ``stats``, ``gsum[i] = k (S + 2 lam u lse)`` and ``kk[i]``."""
    n_rows, width = z.shape
    lo = c * n_rows // nchunks
    hi = (c + 1) * n_rows // nchunks
    e_c = eps / n_cls
    ws = w[col0:col0 + width]
    bs = bias[col0:col0 + width]
    ths = np.empty(width if cap > 0.0 else 0, dtype=z.dtype)
    for i in range(lo, hi):
        zs = z[i]
        if has_bias:
            _seg_add(zs, bs)
        m = stats[i, 0]
        _seg_exp(zs, zs, ths, m, cap, zs[:0], True)
        g = gsum[i] / stats[i, 1]
        qs = q[i, col0:col0 + width] if prob else q[0, :0]
        ti = -1 if prob or t[i] == ignore_index else t[i] - col0
        at = 0 <= ti < width
        et = np.float64(zs[ti]) if at else 0.0
        tht = np.float64(ths[ti]) if at and cap > 0.0 else 0.0
        _seg_grad(zs, ths, g, kk[i], ws, qs, prob, eps, e_c, cap)
        if at:
            zs[ti] = _target_grad(et, tht, g, kk[i], np.float64(w[t[i]]), eps, e_c, cap)


@_loop
def _finish_rows(prob, t, w, wsum, ignore_index, eps, n_cls, lam, coef, stats, loss, gsum, kk):
    """Loss and gradient factors of every row from its merged block statistics."""
    e_c = eps / n_cls
    for i in range(stats.shape[0]):
        st = stats[i]
        if not prob and t[i] == ignore_index:
            loss[i], gsum[i], kk[i] = 0.0, 0.0, 0.0
            continue
        wt = 1.0 if prob else np.float64(w[t[i]])
        loss[i], gsum[i], kk[i] = _row_loss(prob, st[0], st[1], st[2], st[3], st[4], st[5], wt, wsum, eps, e_c,
                                            lam, coef[i])

# ================================================================================================
# Drivers
# ================================================================================================
def _run_chunks(chunk, n_rows, n_cls, *args):
    """``chunk(c, nchunks, *args)`` for every chunk of rows, on the pointwise family's thread pool."""
    from .pointwise import _run_chunks as run

    nchunks = max(1, min(_jit.get_num_threads(), n_rows, (n_rows * max(n_cls, 1)) // _MIN_PARALLEL))
    return run(chunk, nchunks, *args)


def _readonly(a):
    view = a.view()
    view.flags.writeable = False
    return view


class _Targets:
    """Class-index or probability targets, class weights and the ``'mean'`` denominator, as the row
    kernels take them (stand-in arrays for what a kind of target does not use)."""

    def __init__(self, t, w, n_rows, n_cls, dtype, ignore_index):
        self.prob = t.dtype.kind == "f"
        self.ignore_index = int(ignore_index)
        self.w = np.ones(n_cls, dtype=dtype) if w is None else np.ascontiguousarray(w, dtype=dtype)
        self.wsum = float(np.sum(self.w, dtype=np.float64))
        if self.prob:
            self.q = _readonly(np.ascontiguousarray(t, dtype=dtype).reshape(n_rows, n_cls))
            self.t = np.zeros(0, dtype=np.intp)
            self.denominator = float(n_rows) if n_rows * n_cls else 0.0
            self.weights = None
        else:
            self.t = np.ascontiguousarray(t, dtype=np.intp).reshape(n_rows)
            self.q = np.zeros((1, 0), dtype=dtype)
            valid = self.t != self.ignore_index
            self.weights = np.where(valid, self.w.astype(np.float64)[np.where(valid, self.t, 0)], 0.0) \
                if n_cls else np.zeros(n_rows)
            self.denominator = float(np.sum(self.weights))
        self.w = _readonly(self.w)


def _coefficients(grad, reduction, denominator, n_rows, loss_shape):
    """Each row's factor on its loss gradient: ``grad_output`` (per row for ``'none'``), over the
    ``'mean'`` denominator."""
    if reduction == "none":
        return np.array(np.broadcast_to(grad.array(loss_shape, np.float64), loss_shape), dtype=np.float64).reshape(n_rows)
    g = grad.scalar()
    if reduction == "mean":
        g = g / denominator if denominator != 0 else 0.0
    return np.full(n_rows, g)


def _reduce(loss, reduction, denominator, dtype, shape):
    if reduction == "none":
        return loss.reshape(shape).astype(dtype)
    total = math.fsum(loss) if loss.size < 4096 else float(np.sum(loss))
    if reduction == "sum":
        return scalar_result(total, dtype)
    return scalar_result(total / denominator if denominator != 0 else math.nan, dtype)


def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, z_loss, softcap, grad):
    """Driver of ``fastloss.cross_entropy`` with ``z_loss`` and/or ``softcap``: classes on axis 1
    (axis 0 of a 1-D input); input ``(N, C, d...)`` runs as rows of ``C`` with the classes moved last."""
    cls_axis = 0 if x.ndim == 1 else 1
    n_cls = x.shape[cls_axis]
    loss_shape = () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])
    rows = np.ascontiguousarray(np.moveaxis(x, cls_axis, -1)).reshape(-1, n_cls)
    n_rows = rows.shape[0]
    tgt = t
    if t.dtype.kind == "f":
        tgt = np.moveaxis(t, cls_axis, -1)
    tg = _Targets(tgt, w, n_rows, n_cls, x.dtype, ignore_index)
    loss = np.zeros(n_rows)
    moved = x.ndim > 2  # the gradient is made as rows of classes, then moved back into ``out``
    out = None
    z = np.empty((0, n_cls), dtype=x.dtype)  # value only: the kernel uses a private row
    copy, src, coef = True, rows, loss
    if grad is not None:
        out = grad.out_for(0, x)
        coef = _coefficients(grad, reduction, tg.denominator, n_rows, loss_shape)
        if moved:
            z = np.empty_like(rows)
        else:
            z = out.reshape(n_rows, n_cls)
            if out.ctypes.data == rows.ctypes.data:  # in place: the logits are already in ``z``
                copy = False
            elif np.may_share_memory(out, rows):
                src = rows.copy()
    if n_rows and n_cls:
        whole = np.zeros(1, dtype=np.int64)  # one slice per row: the whole row
        _run_chunks(_rows, n_rows, n_cls, _readonly(src).reshape(-1), z.reshape(-1), n_rows, whole,
                    np.full(1, n_cls, dtype=np.int64), whole, not copy, tg.w, False, float(softcap or 0.0), tg.prob,
                    tg.t, tg.q, tg.w, tg.wsum, tg.ignore_index, float(label_smoothing), float(z_loss), coef,
                    grad is not None, loss)
    elif grad is not None:
        z[...] = 0
    value = _reduce(loss, reduction, tg.denominator, x.dtype, loss_shape)
    if grad is None:
        return value
    if moved:
        out[...] = np.moveaxis(z.reshape((x.shape[0],) + tuple(x.shape[2:]) + (n_cls,)), -1, 1)
    return value, (out,)


def _chunk_shape(n_rows, n_cls, chunk_size, n_hid=0, n_slices=1):
    """``(rows, width)`` of linear_cross_entropy's chunk of logits: at most ``chunk_size`` elements;
    ``width < n_cls`` (class blocks) only when one row does not fit. The default counts a row of each
    of the ``n_slices`` partials of ``d input`` (``n_hid`` wide) beside the row of logits."""
    if chunk_size is None:
        per_row = n_cls + (n_slices * n_hid if n_slices > 1 else 0)
        rows = max(min(n_rows, MIN_CHUNK_ROWS), int(CHUNK_FRACTION * n_rows * n_cls / max(per_row, 1)))
        return max(1, min(rows, n_rows)), n_cls
    if chunk_size >= n_cls:
        return max(1, min(n_rows, chunk_size // max(n_cls, 1))), n_cls
    return 1, chunk_size


def _fortran_operand(m):
    """``(operand, trans)`` such that ``op(operand) = m.T`` with ``operand`` F-contiguous (no copy
    for C- or F-contiguous ``m``)."""
    if m.flags.c_contiguous:
        return m.T, 0
    if m.flags.f_contiguous:
        return m, 1
    return np.asfortranarray(m.T), 0


def _gemm_acc(c, a, b):
    """``c += a @ b`` for C-contiguous ``c`` without a temporary of ``c``'s size: a BLAS ``gemm`` with
    ``beta = 1`` from SciPy where it is installed, on the Fortran views ``c.T += b.T @ a.T``; else
    NumPy's matmul by blocks of rows of ``c``."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - SciPy is in the test environment
        blas = None
    if blas is not None and c.size:
        gemm = blas.sgemm if c.dtype == np.float32 else blas.dgemm
        op_a, trans_a = _fortran_operand(b)
        op_b, trans_b = _fortran_operand(a)
        r = gemm(1.0, op_a, op_b, beta=1.0, c=c.T, trans_a=trans_a, trans_b=trans_b, overwrite_c=1)
        if not np.shares_memory(r, c):  # pragma: no cover - SciPy copies only a c it cannot use
            c[...] = r.T
        return
    step = max(1, (1 << 20) // max(c.shape[1], 1))
    for lo in range(0, c.shape[0], step):
        c[lo:lo + step] += a[lo:lo + step] @ b


def linear_cross_entropy(x, W, t, b, w, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size, grad):
    """Driver of ``fastloss.linear_cross_entropy``: ``x (N, H)`` or ``(H,)``, ``W (V, H)``, ``b (V,)``
    or ``None``; ``t`` class indices ``(N,)``/``()`` or probabilities ``(N, V)``/``(V,)``."""
    dtype = x.dtype
    n_hid = x.shape[-1]
    n_cls = W.shape[0]
    loss_shape = () if x.ndim == 1 else (x.shape[0],)
    x2 = np.ascontiguousarray(x).reshape(-1, n_hid)
    n_rows = x2.shape[0]
    Wc = np.ascontiguousarray(W)
    tg = _Targets(t, w, n_rows, n_cls, dtype, ignore_index)
    has_bias = b is not None
    bias = _readonly(np.ascontiguousarray(b)) if has_bias else tg.w
    rows, width = _chunk_shape(n_rows, n_cls, chunk_size, n_hid, _slice_count(n_cls))
    loss = np.zeros(n_rows)
    with_grad = grad is not None
    coef = _coefficients(grad, reduction, tg.denominator, n_rows, loss_shape) if with_grad else loss
    args = (float(softcap or 0.0), tg.prob)
    eps, lam = float(label_smoothing), float(z_loss)
    if with_grad:
        outs = [grad.out_for(0, x), grad.out_for(1, W)] + ([grad.out_for(2, b)] if has_bias else [])
        # gradient buffers that overlap an input still to be read are filled through a temporary;
        # the input itself as its own gradient (in place) is safe for rows of x when whole rows are
        # done (x's rows of a chunk are last read before their gradient is written)
        own_x = outs[0].ctypes.data == x2.ctypes.data and width == n_cls
        work = []
        for k, o in enumerate(outs):
            inputs = [a for a in (x2, Wc, b) if a is not None]
            clash = any(np.may_share_memory(o, a) for a in inputs) and not (k == 0 and own_x
                                                                              and not np.may_share_memory(o, Wc))
            work.append(np.empty(o.shape, dtype) if clash else o)
        dx2 = work[0].reshape(n_rows, n_hid)
        dW = work[1]
        dW[...] = 0
        if width < n_cls:
            dx2[...] = 0
        db = np.zeros(n_cls) if has_bias else None
    buf = np.empty(rows * width, dtype=dtype)
    if n_rows and n_cls:
        if width == n_cls:
            _sliced_chunks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, buf,
                           (dx2, dW, db) if with_grad else None)
        else:
            _class_blocks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, width, buf,
                          (dx2, dW, db) if with_grad else None)
    elif with_grad:
        dx2[...] = 0
    value = _reduce(loss, reduction, tg.denominator, dtype, loss_shape)
    if not with_grad:
        return value
    if has_bias:
        work[2][...] = db
    for o, wk in zip(outs, work):
        if wk is not o:
            o[...] = wk
    return value, tuple(outs)


_BLAS_CONTROLLER = []


def _single_threaded_blas():
    """threadpoolctl's limit of BLAS to the calling thread (``restore_original_limits()`` undoes it),
    or ``None`` where threadpoolctl is not installed.

    The controller (which inspects every loaded native library: milliseconds, and more Python objects
    with PyTorch loaded) is made once per process and reused by every call."""
    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _BLAS_CONTROLLER.append(None)
        else:
            _BLAS_CONTROLLER.append(ThreadpoolController())
    controller = _BLAS_CONTROLLER[0]
    return None if controller is None else controller.limit(limits=1, user_api="blas")


def _slice_count(n_cls):
    """The most class slices :func:`_sliced_chunks` makes: one per thread."""
    return max(1, min(_jit.get_num_threads(), n_cls))


def _in_parallel(n, fn):
    """``fn(0), ..., fn(n - 1)`` on the pointwise family's thread pool (``fn`` releases the GIL)."""
    from .pointwise import _run_chunks as run

    run(lambda k, _n: fn(k), n)


def _sliced_chunks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, buf, grads):
    """linear_cross_entropy by chunks of whole rows, each row split into one class slice per thread.

    Per chunk: thread ``k`` computes its slice of the logits (``x @ W[slice].T``, a single-threaded
    BLAS call), the row kernel turns the rows into their gradient ``G`` (rows split among the threads),
    then thread ``k`` does ``d W[slice] += G[:, slice].T @ x`` and ``G[:, slice] @ W[slice]`` (summed
    into ``d x``). BLAS's own threads would synchronise inside every product, which for the long
    ``K = V`` product of ``d x`` on a small chunk costs more than the product (measured 5-7x slower at
    64 rows on a busy 2-core machine); single-threaded calls on disjoint slices never wait for each other.
    Without threadpoolctl (to keep BLAS to one thread) one slice takes the whole rows and BLAS threads.
    """
    n_rows, n_hid = x2.shape
    n_cls = Wc.shape[0]
    threads = _jit.get_num_threads()
    limits = _single_threaded_blas() if threads > 1 else None
    try:
        n_slices = _slice_count(n_cls) if limits is not None else 1
        col0s = np.array([k * n_cls // n_slices for k in range(n_slices)], dtype=np.int64)
        widths = np.diff(np.append(col0s, n_cls)).astype(np.int64)
        bases = col0s * rows  # slice k of a chunk of n <= rows rows: n * widths[k] elements from here
        partial = np.empty((n_slices, rows, n_hid), dtype=x2.dtype) if grads is not None else None
        for lo in range(0, n_rows, rows):
            hi = min(n_rows, lo + rows)
            n = hi - lo
            xc = x2[lo:hi]
            segs = [buf[bases[k]:bases[k] + n * widths[k]].reshape(n, widths[k]) for k in range(n_slices)]
            cls = [slice(col0s[k], col0s[k] + widths[k]) for k in range(n_slices)]
            _in_parallel(n_slices, lambda k: np.matmul(xc, Wc[cls[k]].T, out=segs[k]))
            _run_chunks(_rows, n, n_cls, buf, buf, n, bases, widths, col0s, True, bias, has_bias, *args,
                        tg.t[lo:hi] if not tg.prob else tg.t, tg.q[lo:hi] if tg.prob else tg.q, tg.w, tg.wsum,
                        tg.ignore_index, eps, lam, coef[lo:hi], grads is not None, loss[lo:hi])
            if grads is None:
                continue
            dx2, dW, db = grads

            def backward(k):
                _gemm_acc(dW[cls[k]], segs[k].T, xc)
                np.matmul(segs[k], Wc[cls[k]], out=partial[k, :n])
                if db is not None:
                    db[cls[k]] += np.add.reduce(segs[k], axis=0, dtype=np.float64)

            _in_parallel(n_slices, backward)
            # x's rows of this chunk were last read above: d x may overwrite them (in place)
            np.sum(partial[:, :n], axis=0, out=dx2[lo:hi])
    finally:
        if limits is not None:
            limits.restore_original_limits()


def _class_blocks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, width, buf, grads):
    """linear_cross_entropy when a row exceeds the chunk: class blocks of ``width``, a statistics sweep
    (online log-sum-exp), then, for the gradient, a sweep recomputing each block of logits."""
    n_rows, n_cls = x2.shape[0], Wc.shape[0]
    cap, prob = args
    stats = np.zeros((n_rows, 6))
    stats[:, 0] = -np.inf
    t_of = (lambda lo, hi: tg.t) if prob else (lambda lo, hi: tg.t[lo:hi])
    q_of = (lambda lo, hi: tg.q[lo:hi]) if prob else (lambda lo, hi: tg.q)

    def blocks():
        for lo in range(0, n_rows, rows):
            hi = min(n_rows, lo + rows)
            for col0 in range(0, n_cls, width):
                cw = min(width, n_cls - col0)
                zb = buf[:(hi - lo) * cw].reshape(hi - lo, cw)
                np.matmul(x2[lo:hi], Wc[col0:col0 + cw].T, out=zb)
                yield lo, hi, col0, cw, zb

    for lo, hi, col0, cw, zb in blocks():
        _run_chunks(_block_stats_chunk, hi - lo, cw, zb, col0, bias, has_bias, cap, prob, t_of(lo, hi), q_of(lo, hi),
                    tg.w, eps, n_cls, stats[lo:hi])
    gsum = np.zeros(n_rows)
    kk = np.zeros(n_rows)
    _finish_rows(prob, tg.t, tg.w, tg.wsum, tg.ignore_index, eps, n_cls, lam, coef, stats, loss, gsum, kk)
    if grads is None:
        return
    dx2, dW, db = grads
    for lo, hi, col0, cw, zb in blocks():
        _run_chunks(_block_grad_chunk, hi - lo, cw, zb, col0, bias, has_bias, cap, prob, t_of(lo, hi), q_of(lo, hi),
                    tg.w, eps, n_cls, tg.ignore_index, stats[lo:hi], gsum[lo:hi], kk[lo:hi])
        _gemm_acc(dW[col0:col0 + cw], zb.T, x2[lo:hi])
        _gemm_acc(dx2[lo:hi], zb, Wc[col0:col0 + cw])
        if has_bias:
            db[col0:col0 + cw] += np.add.reduce(zb, axis=0, dtype=np.float64)


# ================================================================================================
# float64 NumPy references (ground truth for the tests)
# ================================================================================================
def _ref_logsumexp(z):
    m = np.max(z, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]


def ref_rows(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
             softcap=None, grad_output=None, loss_shape=None):
    """The loss of rows of logits ``x (R, C)`` and its gradient with respect to ``x``, float64.

    ``target``: class indices ``(R,)`` or probabilities ``(R, C)``. ``loss_shape``: the shape of
    ``reduction='none'`` (default ``(R,)``).
    """
    x = np.asarray(x, dtype=np.float64)
    n_rows, n_cls = x.shape
    loss_shape = (n_rows,) if loss_shape is None else tuple(loss_shape)
    z = x if softcap is None else softcap * np.tanh(x / softcap)
    w = np.ones(n_cls) if weight is None else np.asarray(weight, dtype=np.float64)
    e = float(label_smoothing)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        a = w * ((1 - e) * np.asarray(target, dtype=np.float64).reshape(n_rows, n_cls) + e / n_cls)
        u = np.ones(n_rows)
        denominator = float(n_rows)
    else:
        t = target.reshape(n_rows)
        valid = t != ignore_index
        onehot = (np.arange(n_cls) == np.where(valid, t, -1)[:, None]).astype(np.float64)
        a = (1 - e) * onehot * w + (e / n_cls) * w * valid[:, None]
        u = (onehot * w).sum(axis=1)
        denominator = float(u.sum())
    lse = _ref_logsumexp(z)
    p = np.exp(z - lse[:, None])
    loss = a.sum(axis=1) * lse - (a * z).sum(axis=1) + z_loss * u * lse ** 2
    if reduction == "none":
        value = loss.reshape(loss_shape)
        k = (np.ones(loss_shape) if grad_output is None else
             np.broadcast_to(np.asarray(grad_output, dtype=np.float64), loss_shape)).reshape(n_rows)
    else:
        g = 1.0 if grad_output is None else float(np.asarray(grad_output))
        value = loss.sum()
        k = np.full(n_rows, g)
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                value = value / denominator
            k = k / denominator if denominator else 0.0 * k
    dz = k[:, None] * (p * (a.sum(axis=1) + 2 * z_loss * u * lse)[:, None] - a)
    if softcap is not None:
        dz = dz * (1 - np.tanh(x / softcap) ** 2)
    return value, dz


def ref_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                      z_loss=0.0, softcap=None, grad_output=None):
    """``fastloss.cross_entropy`` with ``z_loss`` / ``softcap``: value and gradient, float64."""
    x = np.asarray(input, dtype=np.float64)
    axis = 0 if x.ndim == 1 else 1
    rows = np.moveaxis(x, axis, -1)
    t = np.asarray(target)
    if t.dtype.kind == "f":
        t = np.moveaxis(t, axis, -1).reshape(-1, x.shape[axis])
    loss_shape = () if x.ndim == 1 else (x.shape[0],) + x.shape[2:]
    value, dz = ref_rows(rows.reshape(-1, x.shape[axis]), t, weight, ignore_index, reduction, label_smoothing,
                         z_loss, softcap, grad_output, loss_shape)
    return value, (np.moveaxis(dz.reshape(rows.shape), -1, axis),)


def ref_linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                             ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_size=None,
                             grad_output=None):
    """``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` and the gradients of
    ``(input, linear_weight[, linear_bias])``, float64, with the whole logits."""
    x = np.asarray(input, dtype=np.float64)
    W = np.asarray(linear_weight, dtype=np.float64)
    x2 = x.reshape(-1, x.shape[-1])
    logits = x2 @ W.T
    if linear_bias is not None:
        logits = logits + np.asarray(linear_bias, dtype=np.float64)
    ig = -100 if ignore_index is None else ignore_index
    value, dz = ref_rows(logits, np.asarray(target).reshape(x2.shape[0], -1) if np.asarray(target).dtype.kind == "f"
                         else np.asarray(target).reshape(-1), weight, ig, reduction, label_smoothing, z_loss, softcap,
                         grad_output, () if x.ndim == 1 else (x.shape[0],))
    grads = ((dz @ W).reshape(x.shape), dz.T @ x2)
    if linear_bias is not None:
        grads += (dz.sum(axis=0),)
    return value, grads


REFERENCE = {"linear_cross_entropy": ref_linear_cross_entropy}


# ================================================================================================
# Test and benchmark inputs
# ================================================================================================
def _normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _index_targets(rng, n_cls, n, ignore=None, fraction=0.25, dtype=np.int64):
    t = rng.integers(0, n_cls, size=n)
    if ignore is not None:
        t = np.where(rng.random(n) < fraction, ignore, t)
    return np.asarray(t).astype(dtype)


def _prob_targets(rng, shape, dtype):
    z = rng.standard_normal(shape)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)).astype(dtype)


def _linear_ce_cases(rng, dtype):
    n, h, v = 6, 4, 9

    def xw(n_rows=n):
        return _normal(rng, (n_rows, h), dtype), _normal(rng, (v, h), dtype, 0.8)

    def bias():
        return _normal(rng, (v,), dtype, 0.5)

    w = rng.uniform(0.2, 2.0, v).astype(dtype)
    x, W = xw()
    cases = [Case((x, W, _index_targets(rng, v, n)), {"linear_bias": bias()}, "bias")]
    x, W = xw()
    cases.append(Case((x, W, _index_targets(rng, v, n, ignore=-100)),
                      {"weight": w, "label_smoothing": 0.2, "reduction": "sum", "chunk_size": 1},
                      "weight-ignore-smooth-sum-chunk1"))
    x, W = xw()
    cases.append(Case((x, W, _prob_targets(rng, (n, v), dtype)),
                      {"weight": w, "label_smoothing": 0.1, "reduction": "none", "chunk_size": 20},
                      "prob-weight-smooth-none-chunk20"))
    x, W = xw()
    cases.append(Case((x[0], W, np.array(3, dtype=np.int32)), {"z_loss": 1e-2, "softcap": 2.5}, "1d-zloss-softcap"))
    x, W = xw()
    cases.append(Case((x, W, _index_targets(rng, v, n, ignore=-100, dtype=np.int32)),
                      {"linear_bias": bias(), "weight": w, "z_loss": 0.1, "softcap": 3.0, "chunk_size": 4,
                       "label_smoothing": 0.1}, "bias-weight-ignore-zloss-softcap-classblocks"))
    x, W = xw()
    cases.append(Case((x, W, _prob_targets(rng, (n, v), dtype)),
                      {"softcap": 1.5, "z_loss": 0.05, "chunk_size": 10 ** 9, "linear_bias": bias()},
                      "prob-softcap-zloss-bigchunk"))
    x, W = xw(7)
    cases.append(Case((x, W, _index_targets(rng, v, 7, ignore=2)),
                      {"ignore_index": 2, "reduction": "none", "z_loss": 0.02, "chunk_size": 5}, "ignore2-none-classblocks"))
    x, W = xw()
    cases.append(Case((x, W, _index_targets(rng, v, n)), {"chunk_size": 2 * v, "softcap": 4.0}, "softcap-chunk2rows"))
    return cases


CASES = {"linear_cross_entropy": _linear_ce_cases}


def _bench_linear_ce(rng, dtype, size):
    """``(N, H, V)`` with ``V * H`` about ``size`` (the weight, the largest argument): (2048, 1024,
    32000) at the default headline size."""
    v = 32000 if size >= 32000 * 64 else max(8, int(math.sqrt(size)))
    h = max(4, size // v)
    n = 2048 if size >= 32000 * 64 else max(4, h)
    x = _normal(rng, (n, h), dtype)
    W = _normal(rng, (v, h), dtype, 1.0 / math.sqrt(h))
    return Case((x, W, _index_targets(rng, v, n)), {}, f"{n}x{h}x{v}")


BENCH = {"linear_cross_entropy": _bench_linear_ce}


def torch_cross_entropy(torch, input, target, weight=None, ignore_index=-100, reduction="mean",
                        label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The PyTorch expression of ``cross_entropy`` with ``z_loss`` and ``softcap``, by hand:
    ``z = s tanh(x / s)``, ``F.cross_entropy(z, ...)`` plus ``z_loss * w[t] * logsumexp(z) ** 2``."""
    F = torch.nn.functional
    z = input if softcap is None else softcap * torch.tanh(input / softcap)
    if not z_loss:
        return F.cross_entropy(z, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
    ce = F.cross_entropy(z, target, weight=weight, ignore_index=ignore_index, reduction="none",
                         label_smoothing=label_smoothing)
    dim = 0 if z.dim() == 1 else 1
    lse = torch.logsumexp(z, dim=dim)
    if target.is_floating_point():
        u = torch.ones_like(lse)
        denominator = lse.numel()
    else:
        valid = target != ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        u = (weight[safe] if weight is not None else torch.ones_like(lse)) * valid
        denominator = u.sum()
    rows = ce + z_loss * u * lse ** 2
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / denominator


def torch_linear_cross_entropy(torch, input, linear_weight, target, *, linear_bias=None, weight=None,
                               reduction="mean", ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                               chunk_size=None):
    """torch 2.13's ``F.linear_cross_entropy``; with ``z_loss``/``softcap``, ``F.linear`` and the
    expression of :func:`torch_cross_entropy`."""
    F = torch.nn.functional
    if not z_loss and softcap is None:
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                      reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing)
    logits = F.linear(input, linear_weight, linear_bias)
    return torch_cross_entropy(torch, logits, target, weight, -100 if ignore_index is None else ignore_index,
                               reduction, label_smoothing, z_loss, softcap)


TORCH = {"linear_cross_entropy": torch_linear_cross_entropy}
