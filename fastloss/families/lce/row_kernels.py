"""The row kernels of large-vocabulary cross entropy (see :mod:`fastloss.families.lce` for the maths):
the one-point functions (tanh in the data's precision, the softcapped maximum), the segment loops over a
row or one class slice of a row, :func:`_rows` (full rows: value and gradient, one pass from memory per
row) and the class-block kernels (a row longer than the chunk: online statistics, then the gradient).

They inline the softmax family's row primitives (:mod:`fastloss.families.softmax.rows`): the Numba
cache stamps of this package cover that module too (see :func:`fastloss._jit._source_files`).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ... import _jit
from ..._math import (_EXP_BOUNDED_LO, _FEXP2_BOUNDED_LO, _LOG2E, _from_bits, exp, exp2f_bounded, exp_bounded, expf,
                       log, tanhf, tanhf_small, tanhf_tiny)
# softmax's row primitives (exp in the data's own precision, integer-key maxima, the exp / scale passes)
from ..softmax.rows import (_float_of_key, _int_view, _lowest_key, _order_key, _row_dot, _row_exp, _row_max,
                            _row_scale, _row_scale_sub)

#: float32 exponentials summed in float32 before the partial sum joins a float64 total.
_BLOCK = 1024

_loop = _jit.kernel(parallel=False)


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


_LN2 = math.log(2.0)
_FLN2 = np.float32(_LN2)


def _exp2_same(v, bounded):
    """``2**v`` in ``v``'s own precision; ``bounded``: ``v`` lies in ``[-126, 127]`` (float32;
    :func:`fastloss._math.exp2f_bounded`) or ``v ln2`` in ``[-708, 709]`` (float64;
    :func:`fastloss._math.exp_bounded`), else ``exp(v ln2)`` with its clamps."""
    return 2.0 ** v


@overload(_exp2_same)
def _exp2_same_impl(v, bounded):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v, bounded: exp2f_bounded(v) if bounded else expf(v * _FLN2)
    return lambda v, bounded: exp_bounded(np.float64(v) * _LN2) if bounded else exp(np.float64(v) * _LN2)


#: tanhf's polynomial serves |x / cap| below this (``_math._FTANH_SMALL``), tanhf_tiny below the second
_SMALL_TANH = 0.625
_TINY_TANH = 0.4375


def _tanh_tiny_same(v):
    """``tanh(v)`` for ``|v| < _TINY_TANH`` (float32: :func:`fastloss._math.tanhf_tiny`); float64:
    :func:`_tanh64`."""
    return math.tanh(v)


@overload(_tanh_tiny_same)
def _tanh_tiny_same_impl(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v: tanhf_tiny(v)
    return lambda v: _tanh64(np.float64(v))


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


@intrinsic
def _prefetch(typingctx, arr, i):
    """Ask the caches for the line holding ``arr[i]`` (LLVM ``llvm.prefetch``: a read, kept in every
    level) without waiting for it: the next row streams in while this row computes (a load of it, as
    softmax's next-row maximum, would stall the softcapped pass's longer arithmetic on memory)."""
    if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


@_jit.device
def _prefetch_span(xs, lo, hi):
    """:func:`_prefetch` every cache line of ``xs[lo:hi]`` (64-byte lines)."""
    step = 64 // xs.itemsize
    for j in range(lo, min(hi, xs.size), step):
        _prefetch(xs, j)


def _abs_key(bits):
    """The bits of ``|x|`` from ``x``'s (sign bit cleared): they order as the magnitudes (NaN above inf)."""
    return bits & 0x7FFFFFFFFFFFFFFF


@overload(_abs_key, inline="always")
def _abs_key_impl(bits):
    if bits.bitwidth == 32:
        return lambda bits: np.int32(bits & np.int32(0x7FFFFFFF))
    return lambda bits: np.int64(bits & np.int64(0x7FFFFFFFFFFFFFFF))


@_loop
def _key_max_abs(xs, best, top):
    """softmax's ``_key_max(xs, best)`` and ``max(top, |xs| bits)`` in one pass (the integer maxima
    vectorise; see :func:`fastloss.families.softmax.rows._key_max`)."""
    bits = _int_view(xs)
    for c in range(bits.size):
        b = bits[c]
        best = max(best, _order_key(b))
        top = max(top, _abs_key(b))
    return best, top


# The softcapped passes take exp(z - m) as 2**(a tanh(x / cap) - b), a = cap log2(e) and b = m log2(e)
# rounded to the data's dtype once per row: the base-2 argument costs one multiply-add and no
# reduction by ln2 (:func:`fastloss._math.exp2f_bounded`). The softcap and the maximum the passes
# really apply are then ``a ln2`` and ``b ln2`` (within an ulp of the data's dtype of ``cap`` and
# ``m``); the loss takes those (:func:`_cap_scale`, :func:`_capped_max`), so that its ``lse`` and
# ``z_t`` agree with the sum of the exponentials to float64 rounding.
@_jit.device
def _base2(cap, like):
    """``a = cap log2(e)`` in ``like``'s dtype (see above)."""
    return like.dtype.type(cap * _LOG2E)


@_jit.device
def _cap_scale(cap, like):
    """The softcap the passes apply in ``like``'s dtype, ``a ln2`` (float64): ``z = _cap_scale tanh``."""
    return np.float64(_base2(cap, like)) * _LN2


@_jit.device
def _capped_max(m_x, cap, like):
    """The largest softcapped logit from the largest logit ``m_x`` (tanh is increasing), as the passes
    take it: ``b ln2`` with ``b = a tanh(m_x / cap)`` rounded to ``like``'s dtype (float64)."""
    dt = like.dtype.type
    return np.float64(_base2(cap, like) * _tanh_same(dt(m_x) * dt(1.0 / cap))) * _LN2


@_jit.device
def _on_base2_grid(m, like):
    """``m`` (float64) moved to the nearest ``b ln2`` with ``b`` of ``like``'s dtype: the maximum the
    passes apply when given ``m`` (for a merged maximum of class blocks)."""
    return np.float64(like.dtype.type(m * _LOG2E)) * _LN2


@_jit.device
def _bounded(cap, like):
    """Whether every base-2 argument ``a tanh - b`` of a row softcapped at ``cap`` (``z - m`` in
    ``[-2 cap, 0]`` up to rounding) lies in the bounded exponential's domain for ``like``'s dtype:
    ``cap <= 43.6`` (float32), ``<= 354`` (float64)."""
    if like.itemsize == 4:
        return 2.0 * cap * _LOG2E <= -_FEXP2_BOUNDED_LO
    return 2.0 * cap <= -_EXP_BOUNDED_LO


@_jit.device
def _cap_exp_of(th, m, cap, like):
    """``exp(z - m)`` of the logit whose ``tanh(x / cap)`` is ``th``, exactly as the passes compute it."""
    dt = like.dtype.type
    return _exp2_same(_base2(cap, like) * dt(th) - dt(m * _LOG2E), _bounded(cap, like))


@_jit.device
def _cap_point(x, m, cap, like):
    """``(tanh(x / cap), exp(z - m))`` of one logit in ``like``'s dtype, computed as the exp passes
    compute them for a row (the target's, whose stored value has the derivative folded in)."""
    dt = like.dtype.type
    th = _tanh_same(dt(x) * dt(1.0 / cap))
    return th, _cap_exp_of(th, m, cap, like)


# ================================================================================================
# Segment loops: a row, or one class slice of a row, as a contiguous 1-D array. The exp passes are
# softmax's (``_row_exp``) without a softcap; with one, the passes below compute ``tanh`` once per
# element and store ``exp(z - m) (1 - tanh**2)`` in place of the logits (the softcap's derivative
# folded in: the gradient pass is then the plain one, ``p_c g``, whenever ``a_c`` is zero off the
# target), summing ``exp(z - m)``: one tanh and one exp per element, no pass recomputes either. The
# tanh are kept (``ths``, a row) only where the statistics or the gradient need them (probability
# targets, label smoothing); otherwise ``ths`` is empty and nothing stores them. A block whose
# ``|x / cap|`` all lie in tanh's polynomial range (softcapped logits mostly do) skips tanh's own exp
# and division; when the row's largest ``|x / cap|`` (taken in the previous row's pass with its maximum)
# is below that range, no block looks at its own. The exponential is taken in base 2 (see
# :func:`_base2`); ``z - m`` lies in ``[-2 cap, 0]``, so for a softcap up to 43.6 (float32; 354
# float64) it needs no clamps and scales by ``2**n`` in one step (:func:`_bounded`).
# ================================================================================================
#: How each element's tanh is taken (constants, so that every loop compiles one case): ``_FULL``
#: tanhf (any argument), ``_SMALL`` its polynomial alone (``|x / cap| < _SMALL_TANH``), ``_TINY`` a
#: polynomial one term shorter (``|x / cap| < _TINY_TANH``; float32 only: float64 takes ``_tanh64``).
_FULL = 0
_SMALL = 1
_TINY = 2


@_jit.device
def _tanh_tier(am):
    """The tier whose range holds ``|x / cap| <= am``."""
    return _TINY if am < _TINY_TANH else (_SMALL if am < _SMALL_TANH else _FULL)


@_jit.device
def _cap_elem(x, inv, a, b, tier, bounded):
    """``(tanh(x inv), 2**(a tanh(x inv) - b))`` of one logit, tanh as ``tier`` says, and ``bounded``
    (the argument known to lie in the bounded exponential's domain) the exponential without clamps."""
    u = x * inv
    th = _tanh_tiny_same(u) if tier == _TINY else (_tanh_small_same(u) if tier == _SMALL else _tanh_same(u))
    return th, _exp2_same(a * th - b, bounded)


@_jit.device
def _cap_loop(blk, oblk, tblk, inv, a, b, tier, bounded, keep):
    """``oblk = 2**(a tanh(blk inv) - b) (1 - tanh**2)`` (``keep``: ``tblk = tanh(blk inv)``); the sum of
    the exponentials in the data's dtype. Flags as :func:`_cap_elem`'s (constants at each call)."""
    acc = oblk.dtype.type(0)
    one = oblk.dtype.type(1)
    for c in range(blk.size):
        th, e = _cap_elem(blk[c], inv, a, b, tier, bounded)
        if keep:
            tblk[c] = th
        oblk[c] = e * (one - th * th)
        acc += e
    return acc


@_jit.device
def _cap_block(blk, oblk, tblk, inv, a, b, tier, bounded):
    """``oblk = 2**(a tanh(blk inv) - b) (1 - tanh**2)``; the sum of the exponentials in the data's dtype.
    ``tier``: the row's (:func:`_tanh_tier` of its largest ``|x / cap|``), or ``_FULL`` when some element
    needs tanhf: then the block takes its own ``max |blk|``. ``bounded``: ``a tanh - b`` lies in the
    bounded exponential's domain.

    ``tblk`` empty (only when ``bounded``): the common path, no tanh kept (three loops, one per tier).
    Otherwise ``tblk = tanh(blk inv)`` (the row's kept tanh, or scratch), two loops for each kind of
    exponential. Each case is its own loop (a flag tested inside a loop would not vectorise); the
    shortest tanh only on the common path, since every loop costs compile time."""
    t = tier if tier != _FULL else _tanh_tier(_abs_max(blk) * inv)
    if tblk.size == 0:
        if t == _TINY:
            return _cap_loop(blk, oblk, tblk, inv, a, b, _TINY, True, False)
        if t == _SMALL:
            return _cap_loop(blk, oblk, tblk, inv, a, b, _SMALL, True, False)
        return _cap_loop(blk, oblk, tblk, inv, a, b, _FULL, True, False)
    if bounded:
        if t != _FULL:
            return _cap_loop(blk, oblk, tblk, inv, a, b, _SMALL, True, True)
        return _cap_loop(blk, oblk, tblk, inv, a, b, _FULL, True, True)
    if t != _FULL:
        return _cap_loop(blk, oblk, tblk, inv, a, b, _SMALL, False, True)
    return _cap_loop(blk, oblk, tblk, inv, a, b, _FULL, False, True)


# The block function is compiled twice, once reading the logits from another array and once in place:
# one function taking the same array as ``blk`` and ``oblk`` would leave LLVM two pointers that may
# alias, and its runtime overlap check would send the in-place call to the scalar fallback loop.
@_loop
def _cap_block_into(blk, oblk, tblk, inv, a, b, tier, bounded):
    """:func:`_cap_block` reading the logits ``blk``."""
    return _cap_block(blk, oblk, tblk, inv, a, b, tier, bounded)


@_loop
def _cap_block_inplace(oblk, tblk, inv, a, b, tier, bounded):
    """:func:`_cap_block` with ``oblk`` holding the logits."""
    return _cap_block(oblk, oblk, tblk, inv, a, b, tier, bounded)


@_jit.device
def _block_tanh(ths, lo, n, keep, bounded):
    """The ``tblk`` of :func:`_cap_block` for the block at ``lo`` of ``n`` elements: the kept row's slice,
    empty on the common path (not kept, bounded), else ``n`` elements of scratch."""
    if keep:
        return ths[lo:lo + n]
    return ths[:0] if bounded else ths[:n]


@_loop
def _cap_exp_into(xs, os, ths, m, cap, a_x, nxt):
    """``ths[c] = tanh(xs[c] / cap)`` (``ths`` shorter than ``xs``: not kept; then one block of scratch
    unless the softcap is within :func:`_bounded`), ``os[c] = exp(z_c - m) (1 - ths[c]**2)``
    (``m`` on the base-2 grid of :func:`_capped_max`, ``z_c = _cap_scale ths[c]``); the float64 sum of
    the exponentials (blocks of :data:`_BLOCK` summed in the data's dtype). ``nxt`` (the next row, or
    empty) is prefetched, block by block. ``a_x``: ``max |xs|`` (or inf): below ``_SMALL_TANH cap`` no
    block takes its own, and below ``_TINY_TANH cap`` the shorter tanh serves the row."""
    dt = os.dtype.type
    a = _base2(cap, os)
    b = dt(m * _LOG2E)
    inv = dt(1.0 / cap)
    bounded = _bounded(cap, os)
    tier = _tanh_tier(dt(a_x) * inv)
    s = 0.0
    keep = ths.size >= xs.size
    for lo in range(0, xs.size, _BLOCK):
        n = min(_BLOCK, xs.size - lo)
        _prefetch_span(nxt, lo, lo + n)
        s += _cap_block_into(xs[lo:lo + n], os[lo:lo + n], _block_tanh(ths, lo, n, keep, bounded), inv, a, b, tier,
                             bounded)
    return s


@_loop
def _cap_exp_inplace(os, ths, m, cap, a_x, nxt):
    """:func:`_cap_exp_into` with ``os`` holding the logits."""
    dt = os.dtype.type
    a = _base2(cap, os)
    b = dt(m * _LOG2E)
    inv = dt(1.0 / cap)
    bounded = _bounded(cap, os)
    tier = _tanh_tier(dt(a_x) * inv)
    s = 0.0
    keep = ths.size >= os.size
    for lo in range(0, os.size, _BLOCK):
        n = min(_BLOCK, os.size - lo)
        _prefetch_span(nxt, lo, lo + n)
        s += _cap_block_inplace(os[lo:lo + n], _block_tanh(ths, lo, n, keep, bounded), inv, a, b, tier, bounded)
    return s


@_jit.device
def _seg_exp(xs, os, ths, m, cap, a_x, nxt, inplace):
    """``os = exp(z - m)``, its float64 sum and ``max(nxt)`` (``z = xs``; the third value is unused);
    with a softcap (``cap > 0``) ``z = cap tanh(xs / cap)``, ``os = exp(z - m) (1 - tanh**2)`` and ``ths =
    tanh(xs / cap)``, ``a_x`` is ``max |xs|`` or inf, and ``nxt`` is only prefetched (NaN for its maxima:
    see :func:`_cap_exp_into`). ``inplace``: ``os`` is ``xs``."""
    if cap > 0.0:
        s = _cap_exp_inplace(os, ths, m, cap, a_x, nxt) if inplace else _cap_exp_into(xs, os, ths, m, cap, a_x, nxt)
        return s, os.dtype.type(np.nan), np.nan
    s, mk = _row_exp(xs, os, os.dtype.type(m), nxt, inplace)
    return s, mk, np.inf


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
    """Overwrite ``os`` with ``dl/dx = (p_c (S + 2 lam u lse) - a_c) k`` (without the index target's
    one-hot term: see :func:`_target_grad`), ``g = k (S + 2 lam u lse) / sum_c exp(z_c - m)``,
    ``kk = k``. ``os`` holds ``exp(z_c - m)``, with a softcap times ``d_c = 1 - ths[c]**2`` (the
    gradient is then ``os[c] g - a_c k d_c``: ``ths`` is read only where ``a_c`` is not zero)."""
    dt = os.dtype.type
    gg = dt(g)
    one = dt(1)
    if prob:
        kq = dt(kk * (1.0 - eps))
        kc = dt(kk * e_c)
        if cap > 0.0:
            for c in range(os.size):
                th = ths[c]
                os[c] = os[c] * gg - ws[c] * (kq * qs[c] + kc) * (one - th * th)
        else:
            for c in range(os.size):
                os[c] = os[c] * gg - ws[c] * (kq * qs[c] + kc)
        return
    kb = kk * e_c
    if cap > 0.0 and eps > 0.0:
        kbb = dt(kb)
        for c in range(os.size):
            th = ths[c]
            os[c] = os[c] * gg - kbb * ws[c] * (one - th * th)
    elif eps > 0.0:
        _row_scale_sub(os, g, kb, ws)
    else:
        _row_scale(os, g)


@_jit.device
def _target_grad(et, tht, g, kk, wt, eps, e_c, cap):
    """The gradient at the index target in float64 from its ``exp(z_t - m)`` (and ``tanh``) as the exp
    pass computes them: ``p_t (S + 2 lam w_t lse) - a_t`` cancels when ``p_t`` is near 1."""
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
    """The largest logit of row ``i`` over its slices, and the largest ``|logit|``."""
    best = _lowest_key(a)
    top = _int_view(a[:0]).dtype.type(0)
    for k in range(widths.size):
        best, top = _key_max_abs(_seg(a, bases, widths, k, i), best, top)
    return np.float64(_float_of_key(best)), np.float64(_from_bits(top))


@_loop
def _rows(c, nchunks, src, dst, n_rows, bases, widths, col0s, inplace, bias, has_bias, cap, prob, t, q, w, wsum,
          ignore_index, eps, lam, coef, with_grad, loss):
    """Rows ``[lo, hi)`` of chunk ``c`` of ``nchunks``: ``loss[i]`` (float64) and, ``with_grad``, the
    gradient times ``coef[i]`` written into ``dst``.

    Row ``i`` is split in class slices (one for ``cross_entropy``; one per BLAS thread in
    ``linear_cross_entropy``): slice ``k`` is classes ``col0s[k]:`` of width ``widths[k]`` (see
    :func:`_seg`) of the flat ``src`` (the logits) and ``dst`` (``inplace``: the same array). Without a
    gradient ``dst`` is not written (a private row takes the exponentials). The bias is added in place
    (only ``inplace``). Without a bias the next row's maximum is taken during this row's exp pass (with a
    softcap the next row is only prefetched then, and its maxima taken from cache when it comes).
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
    keep = cap > 0.0 and (prob or eps > 0.0)  # the tanh of the row are needed after its exp pass
    # the row's tanh when kept; else one block of scratch for the clamped exponential's loops (see _cap_block)
    scratch = cap > 0.0 and not _bounded(cap, dst)
    ths = np.empty(n_cls if keep else (_BLOCK if scratch else 0), dtype=dst.dtype)
    ahead = not has_bias and cap == 0.0  # plain rows take the next row's maximum in their exp pass
    m_next, a_next = _slices_max(src, bases, widths, lo) if ahead and lo < hi else (0.0, np.inf)
    for i in range(lo, hi):
        ti = 0 if prob else t[i]
        ignored = (not prob) and ti == ignore_index
        nxt_ok = ahead and i + 1 < hi
        if has_bias:
            for k in range(n_slices):
                _seg_add(_seg(dst, bases, widths, k, i), bias[col0s[k]:col0s[k] + widths[k]])
            m_x, a_x = _slices_max(dst, bases, widths, i)
        elif ahead:
            m_x, a_x = m_next, a_next
        else:  # softcapped: the row's maxima from cache (the previous row's pass prefetched it)
            m_x, a_x = _slices_max(src, bases, widths, i)
        if ignored and not with_grad:
            loss[i] = 0.0
            if nxt_ok:
                m_next, a_next = _slices_max(src, bases, widths, i + 1)
            continue
        m = _capped_max(m_x, cap, dst) if cap > 0.0 else np.float64(dst.dtype.type(m_x))
        scale = _cap_scale(cap, dst) if cap > 0.0 else 1.0  # z = scale tanh(x / cap)
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
        tht = 0.0
        et = 0.0
        if cap > 0.0 and not prob and not ignored:  # the target's tanh and exp, before the pass (in place)
            th_t, e_t = _cap_point(src[jt], m, cap, dst)
            tht = np.float64(th_t)
            et = np.float64(e_t)
            zt = scale * tht
        total = 0.0
        mn = -np.inf
        an = 0.0
        for k in range(n_slices):
            xs = _seg(src, bases, widths, k, i)
            os = _seg(dst, bases, widths, k, i) if with_grad else private[col0s[k]:col0s[k] + widths[k]]
            nxt = _seg(src, bases, widths, k, i + 1) if not has_bias and i + 1 < hi else xs[:0]
            sk, mk, ak = _seg_exp(xs, os, ths[col0s[k]:col0s[k] + widths[k]] if keep else ths, m, cap, a_x, nxt,
                                  inplace)
            total += sk
            mk = np.float64(mk)
            mn = mk if mk > mn else mn
            an = ak if ak > an or ak != ak else an  # a NaN sticks
        if nxt_ok:
            m_next, a_next = mn, an
        if keep:  # statistics of z = cap tanh(x / cap), from the kept tanh (linear in it)
            for k in range(n_slices):
                tk = ths[col0s[k]:col0s[k] + widths[k]]
                ws = w[col0s[k]:col0s[k] + widths[k]]
                if prob:
                    a, b = _seg_prob_sums(tk, q[i, col0s[k]:col0s[k] + widths[k]], ws, eps, e_c)
                    sa += a
                    saz += scale * b
                elif eps > 0.0 and not ignored:
                    dot += scale * _row_dot(tk, ws)
        if ignored:
            li, gs, kk = 0.0, 0.0, 0.0
        else:
            li, gs, kk = _row_loss(prob, m, total, zt, dot, sa, saz, wt, wsum, eps, e_c, lam,
                                   coef[i] if with_grad else 0.0)
        loss[i] = li
        if not with_grad:
            continue
        g = gs / total
        if cap == 0.0 and not prob and not ignored:
            et = np.float64(dst[jt])
        for k in range(n_slices):
            ws = w[col0s[k]:col0s[k] + widths[k]]
            qs = q[i, col0s[k]:col0s[k] + widths[k]] if prob else q[0, :0]
            _seg_grad(_seg(dst, bases, widths, k, i), ths[col0s[k]:col0s[k] + widths[k]] if keep else ths,
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
        mb = _capped_max(mx, cap, zs) if cap > 0.0 else mx
        st = stats[i]
        m = max(st[0], mb) if mb == mb else st[0]
        m = _on_base2_grid(m, zs) if cap > 0.0 else np.float64(z.dtype.type(m))
        sb = _seg_exp(zs, private, ths, m, cap, np.inf, zs[:0], False)[0]
        st[1] = st[1] * exp(st[0] - m) + sb if st[0] > -np.inf else sb
        st[0] = m
        vals = ths if cap > 0.0 else zs
        scale = _cap_scale(cap, zs) if cap > 0.0 else 1.0
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
        _seg_exp(zs, zs, ths, m, cap, np.inf, zs[:0], True)
        g = gsum[i] / stats[i, 1]
        qs = q[i, col0:col0 + width] if prob else q[0, :0]
        ti = -1 if prob or t[i] == ignore_index else t[i] - col0
        at = 0 <= ti < width
        et = np.float64(zs[ti]) if at else 0.0
        tht = 0.0
        if at and cap > 0.0:  # zs[ti] holds exp(z_t - m) (1 - tanh**2): the exp as the pass made it
            tht = np.float64(ths[ti])
            et = np.float64(_cap_exp_of(ths[ti], m, cap, zs))
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
