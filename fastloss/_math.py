"""Vectorisable ``exp``, ``log`` and ``log1p`` for the Numba CPU kernels.

This Numba build has no SVML, so ``math.exp`` in a loop stays one scalar libm call per element (about
7.5 ns). The functions here are branch-free (range reduction, a polynomial, selects that LLVM turns into
blends, and 2**n assembled from exponent bits), so a loop calling them vectorises: 4 float64 or 8
float32 lanes per AVX2 register.

==========  ===============  ====================================================================
name        types            max error measured in a FASTMATH kernel (tests/test_math.py)
==========  ===============  ====================================================================
``exp``     float64→float64  1.05 ulp; subnormal results for -745.13 < x < -708.4, then 0
``log``     float64→float64  0.78 ulp over all positive floats, subnormals included
``log1p``   float64→float64  0.83 ulp, relative to the result also near 0 (log1p(tiny) = tiny)
``expf``    float32→float32  1.05 ulp; subnormal results for -103.97 < x < -87.34, then 0
``logf``    float32→float32  0.78 ulp over all positive floats, subnormals included
``log1pf``  float32→float32  0.81 ulp, relative to the result also near 0
``tanhf``   float32→float32  1.50 ulp (the quotient form above |x| = 0.625; 0.79 in the polynomial)
``tanhf_tiny`` float32       0.77 ulp, for |x| < 0.4375 only (a shorter polynomial)
==========  ===============  ====================================================================

``exp_bounded`` is ``exp`` for arguments a caller knows to lie in ``[-708, 709]``, where ``2**n`` is one
normal float: it skips the clamps and the split scaling and returns the same bits there. ``exp2f_bounded``
is ``2**y`` for float32 ``y`` in ``[-126, 127]`` (0.82 ulp measured). NaN in, NaN out; outside their
domains, garbage.

``exp``, ``log`` and ``log1p`` widen float32 or integer arguments to float64 (as ``math`` does);
``expf``, ``logf``, ``log1pf`` and ``tanhf`` take float32 only.

Special values as ``numpy``: ``exp(-inf) = 0``, ``exp(inf) = inf``, overflow (x > 709.78) gives inf,
``exp(0) = 1`` exactly; ``log(0) = -inf``, ``log(x < 0) = nan``, ``log(inf) = inf``; ``log1p(-1) =
-inf``, ``log1p(x < -1) = nan``, ``log1p(inf) = inf``; nan in, nan out. The sign of a zero result is
not guaranteed (callers compile with ``nsz``).

Surviving the callers' fast-math flags
--------------------------------------
``device`` inlines these functions into kernels compiled with ``_jit.FASTMATH`` = {reassoc, contract,
arcp, afn, nsz}, and those flags then apply to every instruction here. ``reassoc`` would fold the
round-to-nearest trick ``(y + 1.5*2**52) - 1.5*2**52`` into ``y``, merge the two Cody-Waite steps
``(x - n*ln2_hi) - n*ln2_lo`` into one inaccurate ``x - n*ln2``, and cancel log1p's rounding-error
term ``x - ((1 + x) - 1)`` to 0. The few operations whose rounding is load-bearing therefore go through
:func:`_fadd`, :func:`_fsub` and :func:`_fmul`: intrinsics that emit the LLVM instruction with only the
``contract`` flag. Numba's fast-math pass leaves instructions that already carry flags alone, LLVM may
not reassociate them, and ``contract`` still lets a multiply and an add fuse into one FMA (which only
makes those steps more exact). Unlike ``llvm.arithmetic.fence``, they do not stop the loop vectoriser.
(With plain ``+ - *`` in their place, a FASTMATH kernel computes exp(1) = 2 and log1p(1e-300) = 0.)
The polynomials themselves are left to the callers' flags: reordering them changes results by far less
than an ulp.

The polynomial coefficients are Chebyshev economisations of the Taylor series, computed exactly with
``fractions.Fraction`` on the reduced interval and rounded once (``tests/test_math.py`` recomputes
them); their truncation error is below 0.15 ulp.
"""
import numpy as np
from numba import types
from numba.extending import intrinsic

from ._jit import device

# --------------------------------------------------------------------------------------------------
# Intrinsics: bit casts and arithmetic that fast-math may not rewrite.
# --------------------------------------------------------------------------------------------------

_INT_OF_FLOAT = {types.float64: types.int64, types.float32: types.int32}
_FLOAT_OF_INT = {types.int64: types.float64, types.int32: types.float32}


@intrinsic
def _bits(typingctx, x):
    """The IEEE-754 bit pattern of a float64 (float32) as an int64 (int32): LLVM ``bitcast``."""
    if x not in _INT_OF_FLOAT:
        return None
    int_type = _INT_OF_FLOAT[x]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(int_type))

    return int_type(x), codegen


@intrinsic
def _from_bits(typingctx, i):
    """The float64 (float32) whose bit pattern is the int64 (int32) ``i``: LLVM ``bitcast``."""
    if i not in _FLOAT_OF_INT:
        return None
    float_type = _FLOAT_OF_INT[i]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(float_type))

    return float_type(i), codegen


def _strict_binop(opname, doc):
    """An intrinsic ``op(a, b)`` on two floats of one type, emitted with the ``contract`` flag only.

    Numba's fast-math pass only adds flags to instructions that have none, so these keep exactly
    ``contract``: no reassociation, no algebraic folding, but FMA fusion with a neighbouring multiply.
    """

    def typer(typingctx, a, b):
        if a != b or a not in _INT_OF_FLOAT:
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, opname)(args[0], args[1], flags=("contract",))

        return a(a, b), codegen

    typer.__name__ = f"_{opname}"
    typer.__doc__ = doc
    return intrinsic(typer)


_fadd = _strict_binop("fadd", "a + b, rounded as written (no reassociation).")
_fsub = _strict_binop("fsub", "a - b, rounded as written (no reassociation).")
_fmul = _strict_binop("fmul", "a * b, rounded as written (no reassociation).")

# --------------------------------------------------------------------------------------------------
# Constants. ln2 = LN2_HI + LN2_LO with LN2_HI short enough that n * LN2_HI is exact for every
# exponent n the reductions meet (|n| < 2**11 in float64, < 2**8 in float32).
# --------------------------------------------------------------------------------------------------

_LN2_HI = 0.6931471805598903  # 0x1.62e42fefa38p-1: ln2 to 42 bits
_LN2_LO = 5.497923018708371e-14  # ln2 - _LN2_HI
_LOG2E = 1.4426950408889634  # 1 / ln2
_INF = np.inf
_NAN = np.nan

# Adding 1.5 * 2**52 to |y| < 2**51 rounds y to the nearest integer n and leaves n in the low bits of the
# sum's mantissa: the sum's bit pattern is that of the constant plus n.
_ROUND = 6755399441055744.0  # 1.5 * 2**52
_ROUND_BITS = int(np.float64(_ROUND).view(np.int64))

# exp: beyond these x the result is inf / 0 anyway; clamping keeps n inside [-1076, 1024] so that both
# halves of 2**n are normal floats.
_EXP_MAX = 710.0
_EXP_MIN = -746.0

# exp(r) = 1 + r + r**2 * q(r) on |r| <= ln2 / 2: degree-9 q (Chebyshev-economised, error < 1.3e-17).
_EXP_Q0 = 0.5000000000000001
_EXP_Q1 = 0.1666666666666667
_EXP_Q2 = 0.04166666666662403
_EXP_Q3 = 0.008333333333326119
_EXP_Q4 = 0.0013888888917260632
_EXP_Q5 = 0.0001984126987487566
_EXP_Q6 = 2.4801521223491958e-05
_EXP_Q7 = 2.7557255330683724e-06
_EXP_Q8 = 2.762012275502573e-07
_EXP_Q9 = 2.5105245845597674e-08

# log: x = 2**k * m with m in [sqrt(1/2), sqrt(2)); subtracting the bits of sqrt(1/2) before taking the
# exponent field moves the split point of k from m = 1 to m = sqrt(1/2).
_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD
_MANTISSA_BITS = 52
_SMALLEST_NORMAL = 2.2250738585072014e-308  # 2**-1022
_SUBNORMAL_SCALE = 18014398509481984.0  # 2**54 lifts every subnormal into the normal range

# log(1 + f) = f - f**2/2 + s * (f**2/2 + z * p(z)), s = f / (2 + f), z = s**2 <= 0.0295:
# degree-6 p approximating sum 2 z**j / (2j + 3) (Chebyshev-economised, error < 5e-18 of the result).
_LOG_P0 = 0.666666666666667
_LOG_P1 = 0.39999999999897684
_LOG_P2 = 0.2857142862677037
_LOG_P3 = 0.2222221100883431
_LOG_P4 = 0.18182898079840507
_LOG_P5 = 0.15331430055741951
_LOG_P6 = 0.1461998992141016

# float32 twins. Numba types these np.float32 / np.int32 globals as float32 / int32 constants, which
# keeps the float32 functions in float32 (8 lanes) instead of promoting them to float64.
_F0 = np.float32(0.0)
_F0_5 = np.float32(0.5)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_FLN2_HI = np.float32(0.693145751953125)  # ln2 to 16 bits
_FLN2_LO = np.float32(1.428606765330187e-06)
_FLOG2E = np.float32(1.4426950408889634)
_FINF = np.float32(np.inf)
_FNAN = np.float32(np.nan)
_FROUND = np.float32(12582912.0)  # 1.5 * 2**23
_FROUND_BITS = np.int32(np.float32(12582912.0).view(np.int32))
_FEXP_MAX = np.float32(89.0)  # n stays in [-151, 129]: both halves of 2**n are normal
_FEXP_MIN = np.float32(-104.0)
_FEXP_Q0 = np.float32(0.5)
_FEXP_Q1 = np.float32(0.16666576266288757)
_FEXP_Q2 = np.float32(0.041666463017463684)
_FEXP_Q3 = np.float32(0.008363197557628155)
_FEXP_Q4 = np.float32(0.0013933676527813077)
# exp2f_bounded: 2**f = 1 + f p(f) on |f| <= 1/2, degree-5 p (Chebyshev-economised, 0.09 ulp)
_FEXP2_P0 = np.float32(0.6931471824645996)
_FEXP2_P1 = np.float32(0.24022650718688965)
_FEXP2_P2 = np.float32(0.055503569543361664)
_FEXP2_P3 = np.float32(0.009618056938052177)
_FEXP2_P4 = np.float32(0.0013390866806730628)
_FEXP2_P5 = np.float32(0.00015461447765119374)
_FSQRT_HALF_BITS = np.int32(0x3F3504F3)
_FMANTISSA_BITS = np.int32(23)
_FEXP_BIAS = np.int32(127)
_FONE_I = np.int32(1)
_FSMALLEST_NORMAL = np.float32(1.1754943508222875e-38)  # 2**-126
_FSUBNORMAL_SCALE = np.float32(16777216.0)  # 2**24
_FSUBNORMAL_K = np.int32(24)
_FZERO_K = np.int32(0)
_FLOG_P0 = np.float32(0.6666668653488159)
_FLOG_P1 = np.float32(0.39988699555397034)
_FLOG_P2 = np.float32(0.2958321273326874)

# tanhf: tanh(x) = x + x s q(s), s = x**2, for |x| < _FTANH_SMALL (the quotient form cancels there);
# degree-4 q approximating (tanh(x) / x - 1) / s on s in [0, 25/64] (Chebyshev-economised, 0.32 ulp).
_FTANH_SMALL = np.float32(0.625)
_FTANH_Q0 = np.float32(-0.333333283662796)
_FTANH_Q1 = np.float32(0.13332782685756683)
_FTANH_Q2 = np.float32(-0.05385249853134155)
_FTANH_Q3 = np.float32(0.021003641188144684)
_FTANH_Q4 = np.float32(-0.006104947999119759)
_FM2 = np.float32(-2.0)
# tanhf_tiny: the same form for |x| < _FTANH_TINY = 7/16 with a degree-3 q on s in [0, 49/256] (0.77 ulp)
_FTANH_TINY = np.float32(0.4375)
_FTANH_T0 = np.float32(-0.33333325386047363)
_FTANH_T1 = np.float32(0.13332007825374603)
_FTANH_T2 = np.float32(-0.053615644574165344)
_FTANH_T3 = np.float32(0.01881442405283451)


# --------------------------------------------------------------------------------------------------
# float64
# --------------------------------------------------------------------------------------------------


@device
def _pow2(n):
    """2.0 ** n for an int64 n in [-1022, 1023], built from its exponent field."""
    return _from_bits((n + 1023) << _MANTISSA_BITS)


@device
def _exp_reduced(x):
    """``(exp(r), t)`` for float64 ``x = n ln2 + r`` (|r| <= ln2 / 2, ``t = x log2(e) + 1.5 * 2**52`` whose
    low bits hold ``n``): the reduction and polynomial :func:`exp` and :func:`exp_bounded` share."""
    t = _fadd(_fmul(x, _LOG2E), _ROUND)
    n = _fsub(t, _ROUND)
    r = _fsub(_fsub(x, _fmul(n, _LN2_HI)), _fmul(n, _LN2_LO))
    q = _EXP_Q8 + r * _EXP_Q9
    q = _EXP_Q7 + r * q
    q = _EXP_Q6 + r * q
    q = _EXP_Q5 + r * q
    q = _EXP_Q4 + r * q
    q = _EXP_Q3 + r * q
    q = _EXP_Q2 + r * q
    q = _EXP_Q1 + r * q
    q = _EXP_Q0 + r * q
    p = _fadd(1.0, _fadd(r, (r * r) * q))
    return p, t


@device
def exp(x):
    """e ** x for float64 x, without branches (vectorises).

    Reduction: n = round(x / ln2), r = x - n*ln2 in [-ln2/2, ln2/2] (two-step Cody-Waite, exact first
    step), exp(r) = 1 + r + r**2 q(r), result exp(r) * 2**n. 2**n is applied as two normal factors
    2**(n//2) and 2**(n - n//2), so results near overflow are finite and results below 2**-1022 are
    subnormals rounded once from exp(r) (not flushed to 0); x < -745.13 gives 0, x > 709.78 gives inf.
    """
    x = np.float64(x)  # float32 / integer arguments are widened, as math.exp does
    # Clamp with selects (nan fails both tests and passes through); the clamped ends still give 0 / inf.
    x = _EXP_MAX if x > _EXP_MAX else x
    x = _EXP_MIN if x < _EXP_MIN else x
    p, t = _exp_reduced(x)
    k = _bits(t) - _ROUND_BITS
    k_half = k >> 1
    # Two multiplications in this order: p * 2**k could overflow or underflow in an intermediate product.
    return _fmul(_fmul(p, _pow2(k_half)), _pow2(k - k_half))


#: exp_bounded's domain: exp(x) for _EXP_BOUNDED_LO <= x <= _EXP_BOUNDED_HI needs n = round(x / ln2)
#: within [-1022, 1023] only (2**n one normal float).
_EXP_BOUNDED_LO = -708.0
_EXP_BOUNDED_HI = 709.0
_EXP_BIAS = 1023


@device
def exp_bounded(x):
    """:func:`exp` of a float64 ``x`` in ``[-708, 709]`` (or NaN), the same bits, cheaper: no clamps, and
    ``2**n`` applied as one factor built from ``t``'s low bits (``(bits(t) + 1023) << 52``: the high bits
    of ``t`` shift out). Outside that range the result is meaningless: callers bound ``x`` (a softcapped
    logit minus the row's maximum lies in ``[-2 cap, 0]``)."""
    x = np.float64(x)
    p, t = _exp_reduced(x)
    return _fmul(p, _from_bits((_bits(t) + _EXP_BIAS) << _MANTISSA_BITS))


@device
def _log_reduced(u, k_shift, c):
    """log(u * 2**-k_shift) + c for a positive normal float64 u and a small correction c.

    u = 2**k * m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f):
    log(m) = f - f**2/2 + s (f**2/2 + z p(z)) with z = s**2, and
    log = k ln2_hi + (f - (f**2/2 - (s (f**2/2 + z p(z)) + (k ln2_lo + c)))), summed small to large.
    """
    ix = _bits(u)
    k = (ix - _SQRT_HALF_BITS) >> _MANTISSA_BITS
    m = _from_bits(ix - (k << _MANTISSA_BITS))
    f = _fsub(m, 1.0)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    p = _LOG_P5 + z * _LOG_P6
    p = _LOG_P4 + z * p
    p = _LOG_P3 + z * p
    p = _LOG_P2 + z * p
    p = _LOG_P1 + z * p
    p = _LOG_P0 + z * p
    kf = np.float64(k - k_shift)
    tail = _fadd(_fmul(s, _fadd(hfsq, z * p)), _fadd(_fmul(kf, _LN2_LO), c))
    return _fadd(_fmul(kf, _LN2_HI), _fsub(f, _fsub(hfsq, tail)))


@device
def _log_special(y, u):
    """y where u > 0 is finite; -inf at u = 0, nan for u < 0, u itself for +inf and nan."""
    y = y if u > 0.0 else (-_INF if u == 0.0 else _NAN)
    return y if u < _INF else u


@device
def log(x):
    """Natural logarithm of a float64, without branches (vectorises); subnormal x are scaled by 2**54."""
    x = np.float64(x)  # float32 / integer arguments are widened, as math.log does
    small = x < _SMALLEST_NORMAL
    u = x * _SUBNORMAL_SCALE if small else x
    k_shift = 54 if small else 0
    return _log_special(_log_reduced(u, k_shift, 0.0), x)


@device
def log1p(x):
    """log(1 + x) for float64 x, accurate relative to the result also for tiny x (vectorises).

    u = 1 + x is rounded; its rounding error c (exact, Fast2Sum with the larger operand first) enters
    as log(1 + x) = log(u) + c / u. For |x| < 2**-54 this gives x itself.
    """
    x = np.float64(x)  # float32 / integer arguments are widened, as math.log1p does
    u = _fadd(1.0, x)
    # Fast2Sum: c = (1 + x) - u exactly when the larger of 1 and x is subtracted first (for huge x,
    # c = 1 - (u - x) is exactly the 1 that u lost, and c / u ≈ 1 / x is the right correction).
    c = _fsub(1.0, _fsub(u, x)) if x > 1.0 else _fsub(x, _fsub(u, 1.0))
    c = c / u
    y = _log_reduced(u, 0, c)
    y = _log_special(y, u)
    return y if x < _INF else x


# --------------------------------------------------------------------------------------------------
# float32 (the same algorithms with shorter polynomials and int32 bit fields)
# --------------------------------------------------------------------------------------------------


@device
def _pow2f(n):
    """np.float32(2.0 ** n) for an int32 n in [-126, 127], built from its exponent field."""
    return _from_bits(np.int32((n + _FEXP_BIAS) << _FMANTISSA_BITS))


@device
def expf(x):
    """e ** x for float32 x in float32 arithmetic, without branches (vectorises, 8 lanes per AVX2 register).

    As :func:`exp` with a degree-4 q: subnormal results (not flushed), 0 below x ≈ -103.97, inf above 88.72.
    """
    x = _FEXP_MAX if x > _FEXP_MAX else x
    x = _FEXP_MIN if x < _FEXP_MIN else x
    t = _fadd(_fmul(x, _FLOG2E), _FROUND)
    n = _fsub(t, _FROUND)
    r = _fsub(_fsub(x, _fmul(n, _FLN2_HI)), _fmul(n, _FLN2_LO))
    q = _FEXP_Q3 + r * _FEXP_Q4
    q = _FEXP_Q2 + r * q
    q = _FEXP_Q1 + r * q
    q = _FEXP_Q0 + r * q
    p = _fadd(_F1, _fadd(r, (r * r) * q))
    k = np.int32(_bits(t) - _FROUND_BITS)
    k_half = np.int32(k >> _FONE_I)
    return _fmul(_fmul(p, _pow2f(k_half)), _pow2f(np.int32(k - k_half)))


#: exp2f_bounded's domain: 2**y for these y needs n = round(y) within [-126, 127] only (2**n one normal float)
_FEXP2_BOUNDED_LO = -126.0
_FEXP2_BOUNDED_HI = 127.0


@device
def exp2f_bounded(y):
    """``2**y`` for a float32 ``y`` in ``[-126, 127]`` (or NaN), without branches (vectorises): ``n =
    round(y)``, ``f = y - n`` in ``[-1/2, 1/2]`` (exact), ``2**f = 1 + f p(f)`` by Horner, times ``2**n``
    built from ``t``'s low bits as in :func:`exp_bounded`. Outside that range the result is
    meaningless. A caller that has its argument in base 2 already (``a x - b`` with ``log2(e)`` folded
    into ``a`` and ``b``) saves :func:`expf`'s two-step reduction, its clamps and its split scaling."""
    t = _fadd(y, _FROUND)
    n = _fsub(t, _FROUND)
    f = _fsub(y, n)
    p = _FEXP2_P4 + f * _FEXP2_P5
    p = _FEXP2_P3 + f * p
    p = _FEXP2_P2 + f * p
    p = _FEXP2_P1 + f * p
    p = _FEXP2_P0 + f * p
    p = _F1 + f * p
    return _fmul(p, _from_bits(np.int32((_bits(t) + _FEXP_BIAS) << _FMANTISSA_BITS)))


@device
def _logf_reduced(u, k_shift, c):
    """log(u * 2**-k_shift) + c for a positive normal float32 u and a small float32 correction c (as
    :func:`_log_reduced` with a degree-2 p)."""
    ix = _bits(u)
    k = np.int32((ix - _FSQRT_HALF_BITS) >> _FMANTISSA_BITS)
    m = _from_bits(np.int32(ix - (k << _FMANTISSA_BITS)))
    f = _fsub(m, _F1)
    hfsq = _F0_5 * f * f
    s = f / (_F2 + f)
    z = s * s
    p = _FLOG_P1 + z * _FLOG_P2
    p = _FLOG_P0 + z * p
    kf = np.float32(k - k_shift)
    tail = _fadd(_fmul(s, _fadd(hfsq, z * p)), _fadd(_fmul(kf, _FLN2_LO), c))
    return _fadd(_fmul(kf, _FLN2_HI), _fsub(f, _fsub(hfsq, tail)))


@device
def _logf_special(y, u):
    """y where u > 0 is finite; -inf at u = 0, nan for u < 0, u itself for +inf and nan (float32)."""
    y = y if u > 0 else (-_FINF if u == 0 else _FNAN)
    return y if u < _FINF else u


@device
def logf(x):
    """Natural logarithm of a float32 in float32 arithmetic, without branches (vectorises).

    As :func:`log` with a degree-2 p; subnormal x are scaled by 2**24.
    """
    small = x < _FSMALLEST_NORMAL
    u = x * _FSUBNORMAL_SCALE if small else x
    k_shift = _FSUBNORMAL_K if small else _FZERO_K
    return _logf_special(_logf_reduced(u, k_shift, _F0), x)


@device
def log1pf(x):
    """log(1 + x) for float32 x in float32 arithmetic, accurate relative to the result also for tiny x
    (vectorises); the algorithm of :func:`log1p` (u = 1 + x rounded, its exact error c enters as c / u)."""
    u = _fadd(_F1, x)
    c = _fsub(_F1, _fsub(u, x)) if x > _F1 else _fsub(x, _fsub(u, _F1))
    c = c / u
    y = _logf_special(_logf_reduced(u, _FZERO_K, c), u)
    return y if x < _FINF else x


@device
def tanhf_small(x):
    """:func:`tanhf` for ``|x| < 0.625`` only (its polynomial: no exp, no division): ``x + x s q(s)``,
    ``s = x**2``, the polynomial :func:`tanhf` selects there. A caller that knows a whole block of
    arguments is that small (softcapped logits mostly are) skips the quotient form."""
    s = x * x
    q = _FTANH_Q3 + s * _FTANH_Q4
    q = _FTANH_Q2 + s * q
    q = _FTANH_Q1 + s * q
    q = _FTANH_Q0 + s * q
    return _fadd(x, x * (s * q))


@device
def tanhf_tiny(x):
    """:func:`tanhf_small` for ``|x| < 0.4375`` only, one term shorter (degree-3 ``q``): for a caller that
    knows a whole row of arguments is that small (softcapped logits well inside the cap)."""
    s = x * x
    q = _FTANH_T2 + s * _FTANH_T3
    q = _FTANH_T1 + s * q
    q = _FTANH_T0 + s * q
    return _fadd(x, x * (s * q))


@device
def tanhf(x):
    """tanh of a float32 in float32 arithmetic, without branches (vectorises).

    For |x| >= 0.625: ``(1 - e) / (1 + e)`` with ``e = expf(-2|x|) <= 0.287`` (no cancellation: a
    few roundings of ``e`` and one division); below, :func:`tanhf_small` (``x + x s q(s)``, which keeps
    tiny and subnormal x exact). Both are computed and one is selected. ``tanhf(±inf) = ±1``; nan in,
    nan out; the sign of a zero result is not guaranteed (callers compile with ``nsz``).
    """
    a = abs(x)
    e = expf(_FM2 * a)
    big = (_F1 - e) / (_F1 + e)
    small = tanhf_small(a)
    r = small if a < _FTANH_SMALL else big
    return -r if x < _F0 else r
