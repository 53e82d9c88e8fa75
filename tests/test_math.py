"""Accuracy, special values and vectorisation of fastloss._math.

Every value is computed the way the loss kernels compute it: inside a ``_jit.kernel`` loop, compiled with
the FASTMATH flags, into which the functions are inlined. The reference is NumPy in ``np.longdouble``
(64-bit mantissa on x86: 11 more bits than float64), so a reported error of 1 ulp is 1 ulp to within
1/2000 ulp. Errors are in ulps of the correctly rounded result (for subnormal results, of the smallest
subnormal).
"""
import math
import re
import zlib
from fractions import Fraction

import numba
import numpy as np
import pytest
from numba import prange

from fastloss import _jit, _math

pytestmark = pytest.mark.skipif(
    np.finfo(np.longdouble).nmant < 60, reason="needs an extended-precision np.longdouble reference"
)

MAX_ULP = 1.5  # measured: exp 1.05, expf 1.05, log 0.78, logf 0.78, log1p 0.83, exp2f_bounded 0.82
#: tanhf's quotient form rounds e, 1 - e, 1 + e and the quotient: measured 1.50 ulp (0.79 in the polynomial)
MAX_ULP_OF = {"tanhf": 2.0}
N = 200_000


@_jit.kernel(parallel=False)
def _exp_loop(x, out):
    for i in range(x.size):
        out[i] = _math.exp(x[i])


@_jit.kernel(parallel=False)
def _log_loop(x, out):
    for i in range(x.size):
        out[i] = _math.log(x[i])


@_jit.kernel(parallel=False)
def _log1p_loop(x, out):
    for i in range(x.size):
        out[i] = _math.log1p(x[i])


@_jit.kernel(parallel=False)
def _expf_loop(x, out):
    for i in range(x.size):
        out[i] = _math.expf(x[i])


@_jit.kernel(parallel=False)
def _logf_loop(x, out):
    for i in range(x.size):
        out[i] = _math.logf(x[i])


@_jit.kernel(parallel=False)
def _log1pf_loop(x, out):
    for i in range(x.size):
        out[i] = _math.log1pf(x[i])


@_jit.kernel(parallel=False)
def _tanhf_loop(x, out):
    for i in range(x.size):
        out[i] = _math.tanhf(x[i])


@_jit.kernel(parallel=False)
def _tanhf_tiny_loop(x, out):
    for i in range(x.size):
        out[i] = _math.tanhf_tiny(x[i])


@_jit.kernel(parallel=False)
def _exp2f_bounded_loop(x, out):
    for i in range(x.size):
        out[i] = _math.exp2f_bounded(x[i])


@_jit.kernel(parallel=True)
def _exp_log_prange(x, out_exp, out_log):
    for i in prange(x.size):
        out_exp[i] = _math.exp(x[i])
        out_log[i] = _math.log(x[i])


LOOPS = {"exp": _exp_loop, "log": _log_loop, "log1p": _log1p_loop, "expf": _expf_loop, "logf": _logf_loop,
         "log1pf": _log1pf_loop, "tanhf": _tanhf_loop, "exp2f_bounded": _exp2f_bounded_loop,
         "tanhf_tiny": _tanhf_tiny_loop}
REFERENCE = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "expf": np.exp, "logf": np.log,
             "log1pf": np.log1p, "tanhf": np.tanh, "exp2f_bounded": np.exp2, "tanhf_tiny": np.tanh}


def dtype_of(name):
    return np.float32 if name.endswith("f") or name in ("exp2f_bounded", "tanhf_tiny") else np.float64


def run(name, x):
    """``_math.<name>`` applied to every element of x inside a FASTMATH kernel loop."""
    x = np.ascontiguousarray(x, dtype=dtype_of(name))
    out = np.empty_like(x)
    LOOPS[name](x, out)
    return out


def ulp_errors(got, x, name):
    """|got - exact| in ulps of the correctly rounded result, for the finite results."""
    dtype = got.dtype
    with np.errstate(all="ignore"):
        exact = REFERENCE[name](x.astype(np.longdouble))
        rounded = exact.astype(dtype)
    finite = np.isfinite(rounded)
    spacing = np.spacing(np.abs(rounded[finite])).astype(np.longdouble)
    err = np.abs(got[finite].astype(np.longdouble) - exact[finite]) / spacing
    return err, got[~finite], rounded[~finite]


def uniform(lo, hi, dtype, rng):
    return rng.uniform(lo, hi, N).astype(dtype)


def positive_bit_patterns(dtype, rng):
    """Positive finite floats with uniformly random bit patterns: every binade equally, subnormals too."""
    itype = np.int64 if dtype == np.float64 else np.int32
    top = np.array(np.inf, dtype).view(itype)
    return rng.integers(1, top, N, dtype=itype).view(dtype)


REGIONS = {
    "exp": {
        "tiny": lambda rng: uniform(-1e-12, 1e-12, np.float64, rng),
        "unit": lambda rng: uniform(-1.0, 1.0, np.float64, rng),
        "normal": lambda rng: uniform(-708.0, 709.0, np.float64, rng),
        "near overflow": lambda rng: uniform(700.0, 709.78, np.float64, rng),
        "subnormal results": lambda rng: uniform(-745.13, -708.4, np.float64, rng),
        "beyond the ends": lambda rng: uniform(-800.0, 800.0, np.float64, rng),
    },
    "expf": {
        "tiny": lambda rng: uniform(-1e-6, 1e-6, np.float32, rng),
        "unit": lambda rng: uniform(-1.0, 1.0, np.float32, rng),
        "normal": lambda rng: uniform(-87.0, 88.0, np.float32, rng),
        "near overflow": lambda rng: uniform(80.0, 88.72, np.float32, rng),
        "subnormal results": lambda rng: uniform(-103.9, -87.4, np.float32, rng),
        "beyond the ends": lambda rng: uniform(-120.0, 120.0, np.float32, rng),
    },
    "exp2f_bounded": {  # its domain only: outside it the result is meaningless by contract
        "tiny": lambda rng: uniform(-1e-6, 1e-6, np.float32, rng),
        "unit": lambda rng: uniform(-1.0, 1.0, np.float32, rng),
        "domain": lambda rng: uniform(-126.0, 127.0, np.float32, rng),
        "near the ends": lambda rng: np.concatenate([uniform(-126.0, -120.0, np.float32, rng),
                                                     uniform(120.0, 127.0, np.float32, rng)]),
    },
    "tanhf_tiny": {  # its domain only
        "tiny": lambda rng: uniform(-1e-6, 1e-6, np.float32, rng),
        "domain": lambda rng: uniform(-0.4375, 0.4375, np.float32, rng),
        "near the end": lambda rng: uniform(0.4, 0.4375, np.float32, rng),
        "subnormal": lambda rng: uniform(-1.1754943508222875e-38, 1.1754943508222875e-38, np.float32, rng),
    },
    "log": {
        "all positive floats": lambda rng: positive_bit_patterns(np.float64, rng),
        "near one": lambda rng: uniform(0.9, 1.1, np.float64, rng),
        "subnormal": lambda rng: uniform(0.0, 2.2250738585072014e-308, np.float64, rng),
    },
    "logf": {
        "all positive floats": lambda rng: positive_bit_patterns(np.float32, rng),
        "near one": lambda rng: uniform(0.9, 1.1, np.float32, rng),
        "subnormal": lambda rng: uniform(0.0, 1.1754943508222875e-38, np.float32, rng),
    },
    "log1pf": {
        "tiny": lambda rng: uniform(-1e-6, 1e-6, np.float32, rng),
        "unit": lambda rng: uniform(-1.0, 1.0, np.float32, rng),
        "(0, 1] (exp(-|x|) in BCE)": lambda rng: uniform(0.0, 1.0, np.float32, rng),
        "near -1": lambda rng: (-1.0 + np.abs(positive_bit_patterns(np.float32, rng)) % 1e-3).astype(np.float32),
        "all positive floats": lambda rng: positive_bit_patterns(np.float32, rng),
    },
    "tanhf": {
        "tiny": lambda rng: uniform(-1e-6, 1e-6, np.float32, rng),
        "polynomial": lambda rng: uniform(-0.625, 0.625, np.float32, rng),
        "near the switch": lambda rng: uniform(0.6, 0.65, np.float32, rng),
        "quotient": lambda rng: uniform(-9.0, 9.0, np.float32, rng),
        "saturated": lambda rng: uniform(-100.0, 100.0, np.float32, rng),
        "subnormal": lambda rng: uniform(-1.1754943508222875e-38, 1.1754943508222875e-38, np.float32, rng),
    },
    "log1p": {
        "tiny": lambda rng: uniform(-1e-12, 1e-12, np.float64, rng),
        "unit": lambda rng: uniform(-1.0, 1.0, np.float64, rng),
        "near -1": lambda rng: -1.0 + positive_bit_patterns(np.float64, rng) % 1e-3,
        "all positive floats": lambda rng: positive_bit_patterns(np.float64, rng),
    },
}


@pytest.mark.parametrize(
    "name, region", [(name, region) for name, regions in REGIONS.items() for region in regions]
)
def test_accuracy_in_fastmath_kernel(name, region):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{region}".encode()))
    x = REGIONS[name][region](rng).astype(dtype_of(name))
    got = run(name, x)
    err, got_nonfinite, want_nonfinite = ulp_errors(got, x, name)
    assert err.size > 0
    assert err.max() <= MAX_ULP_OF.get(name, MAX_ULP), f"{name} on {region}: {float(err.max()):.3f} ulp at x={x[np.argmax(err)]!r}"
    np.testing.assert_array_equal(got_nonfinite, want_nonfinite)


def test_accuracy_in_prange_body():
    x = np.random.default_rng(1).uniform(1e-3, 700.0, N)
    out_exp, out_log = np.empty_like(x), np.empty_like(x)
    _exp_log_prange(x, out_exp, out_log)
    assert ulp_errors(out_exp, x, "exp")[0].max() <= MAX_ULP
    assert ulp_errors(out_log, x, "log")[0].max() <= MAX_ULP


INF, NAN = np.inf, np.nan
TINY = 5e-324
SPECIAL = {
    "exp": [(0.0, 1.0), (-0.0, 1.0), (-INF, 0.0), (INF, INF), (NAN, NAN), (709.79, INF), (1e300, INF),
            (-745.14, 0.0), (-1e300, 0.0), (-745.13, TINY), (TINY, 1.0), (-TINY, 1.0)],
    "log": [(0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-TINY, NAN), (-INF, NAN), (INF, INF), (NAN, NAN),
            (1.0, 0.0)],
    "log1p": [(0.0, 0.0), (-1.0, -INF), (-1.5, NAN), (-INF, NAN), (INF, INF), (NAN, NAN), (TINY, TINY),
              (-TINY, -TINY), (1e-300, 1e-300), (-1e-20, -1e-20), (2.0**-60, 2.0**-60)],
    "log1pf": [(0.0, 0.0), (-1.0, -INF), (-1.5, NAN), (-INF, NAN), (INF, INF), (NAN, NAN), (1e-45, 1e-45),
               (-1e-45, -1e-45), (1e-30, 1e-30), (-1e-20, -1e-20), (2.0**-30, 2.0**-30)],
    "expf": [(0.0, 1.0), (-0.0, 1.0), (-INF, 0.0), (INF, INF), (NAN, NAN), (88.73, INF), (1e30, INF),
             (-104.0, 0.0), (-1e30, 0.0), (1e-45, 1.0)],
    "logf": [(0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-1e-45, NAN), (-INF, NAN), (INF, INF), (NAN, NAN),
             (1.0, 0.0)],
    "tanhf": [(0.0, 0.0), (INF, 1.0), (-INF, -1.0), (NAN, NAN), (10.0, 1.0), (-10.0, -1.0), (1e30, 1.0),
              (-1e30, -1.0), (1e-45, 1e-45), (-1e-45, -1e-45), (1e-20, 1e-20), (-2.0**-30, -2.0**-30)],
    "exp2f_bounded": [(0.0, 1.0), (-0.0, 1.0), (NAN, NAN), (1.0, 2.0), (-1.0, 0.5), (-126.0, 2.0**-126),
                      (127.0, 2.0**127), (3.0, 8.0), (-100.0, 2.0**-100)],
}


@pytest.mark.parametrize("name", SPECIAL)
def test_special_values(name):
    dtype = dtype_of(name)
    x = np.array([a for a, _ in SPECIAL[name]], dtype=dtype)
    want = np.array([b for _, b in SPECIAL[name]], dtype=dtype)
    np.testing.assert_array_equal(run(name, x), want)


# Points whose IEEE result is exact (NumPy's libm must agree bit for bit), and points at the ends of the
# finite range (largest and smallest finite results, subnormal arguments and results), within 1 ulp.
_SUB64, _SUB32 = 5e-324, np.float32(1e-45)
EXACT = {
    "exp": [0.0, -0.0, -INF, INF, NAN, 710.0, 1e308, -746.0, -1e308, _SUB64, -_SUB64, 1e-300, -1e-300],
    "log": [1.0, 0.0, -0.0, INF, -INF, NAN, -1.0, -_SUB64, -1e308],
    "log1p": [0.0, -0.0, -1.0, INF, -INF, NAN, -2.0, _SUB64, -_SUB64, 1e-300, -1e-300, 2.0**-60],
    "log1pf": [0.0, -0.0, -1.0, INF, -INF, NAN, -2.0, _SUB32, -_SUB32, 1e-30, -1e-30, 2.0**-30],
    "expf": [0.0, -0.0, -INF, INF, NAN, 89.0, 1e30, -104.0, -1e30, _SUB32, -_SUB32],
    "logf": [1.0, 0.0, -0.0, INF, -INF, NAN, -1.0, -_SUB32, -1e30],
    "tanhf": [0.0, INF, -INF, NAN, 20.0, -20.0, 1e30, -1e30, _SUB32, -_SUB32, 1e-30, -1e-30],
}
EDGES = {
    "exp": [709.78, 709.782712893384, -708.39, -708.4, -720.0, -745.13, -740.0],
    "log": [_SUB64, 2 * _SUB64, 2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308,
            np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0)],
    "log1p": [1.7976931348623157e308, -0.9999999999999999, 1e-17, -1e-17, np.nextafter(0.0, 1.0) * 2**52],
    "log1pf": [np.float32(3.4028235e38), np.nextafter(np.float32(-1.0), np.float32(0.0)), 1e-8, -1e-8],
    "expf": [88.72, 88.7228, -87.3, -87.4, -95.0, -103.9],
    "tanhf": [0.625, np.nextafter(np.float32(0.625), np.float32(0.0)), -0.625, 1.0, -1.0, 8.0, 9.0109, 2.0**-12],
    "logf": [_SUB32, np.float32(1.1754942e-38), np.float32(1.1754944e-38), np.float32(3.4028235e38),
             np.nextafter(np.float32(1.0), np.float32(2.0)), np.nextafter(np.float32(1.0), np.float32(0.0))],
}


def _in_every_lane(points, dtype, copies=41):
    """The points repeated at shifting offsets, so that each meets every SIMD lane, the unrolled vector
    body and the scalar remainder of the loop."""
    pts = np.array(points, dtype=dtype)
    return np.concatenate([np.roll(pts, k) for k in range(copies)] + [pts[:k] for k in range(len(pts))])


@pytest.mark.parametrize("name", EXACT)
def test_exact_points_in_every_lane(name):
    dtype = dtype_of(name)
    x = _in_every_lane(EXACT[name], dtype)
    with np.errstate(all="ignore"):
        want = REFERENCE[name](x)
    got = run(name, x)
    np.testing.assert_array_equal(got, want)
    # log(1) and log1p(0) are +0 (a -0 would turn a zero loss into -0 and back)
    assert not np.signbit(run(name, np.ones(64, dtype) if name.startswith("log") and not name.startswith("log1p")
                              else np.zeros(64, dtype))).any()


@pytest.mark.parametrize("name", EDGES)
def test_range_ends_in_every_lane(name):
    dtype = dtype_of(name)
    x = _in_every_lane(EDGES[name], dtype)
    with np.errstate(all="ignore"):
        want = REFERENCE[name](x)
    got = run(name, x)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    finite = np.isfinite(want)
    spacing = np.abs(np.spacing(want[finite].astype(dtype)))
    assert np.all(np.abs(got[finite] - want[finite]) <= spacing), (x[finite], got[finite], want[finite])


# --------------------------------------------------------------------------------------------------
# The kernels vectorise and really carry the fast-math flags the functions must survive.
# --------------------------------------------------------------------------------------------------

# The same options as _jit.kernel but uncached: Numba cannot show the IR of a kernel loaded from cache.
_uncached = dict(_jit._COMMON, cache=False)


def _map_source(name):
    return f"def loop(x, out):\n    for i in range(x.size):\n        out[i] = _math.{name}(x[i])\n"


@pytest.mark.parametrize("name", LOOPS)
def test_loop_vectorises_with_fastmath_flags(name):
    namespace = {"_math": _math}
    exec(_map_source(name), namespace)  # a fresh function, so that nothing comes from the cache
    loop = numba.njit(**_uncached)(namespace["loop"])
    x = np.ones(64, dtype_of(name))
    loop(x, np.empty_like(x))
    ir = loop.inspect_llvm(loop.signatures[0])
    element = "double" if dtype_of(name) == np.float64 else "float"
    widths = {int(w) for w in re.findall(rf"<(\d+) x {element}>", ir)}
    assert widths and max(widths) >= 2, f"{name}: no vector of {element} in the kernel"
    assert not re.search(r"call [^\n]*@(llvm\.)?(exp|log)", ir), f"{name}: calls a scalar exp/log"
    assert "reassoc" in ir and "contract" in ir, "the kernel must carry the callers' fast-math flags"


# --------------------------------------------------------------------------------------------------
# The polynomial coefficients are what their docstrings say: Chebyshev economisations of the Taylor
# series, recomputed exactly here.
# --------------------------------------------------------------------------------------------------


def economise(taylor, lo, hi, degree):
    """Power-basis coefficients of ``taylor`` (a Fraction polynomial on [lo, hi]) truncated to ``degree``
    in the Chebyshev basis of [lo, hi], computed exactly."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    n = len(taylor)
    in_t = [Fraction(0)] * n  # the polynomial in t = (x - mid) / half
    for k, c in enumerate(taylor):
        for j in range(k + 1):
            in_t[j] += c * math.comb(k, j) * mid ** (k - j) * half**j
    cheb = [[Fraction(1)], [Fraction(0), Fraction(1)]]  # power coefficients of T_0, T_1, ...
    while len(cheb) < n:
        nxt = [Fraction(0)] + [2 * c for c in cheb[-1]]
        for i, c in enumerate(cheb[-2]):
            nxt[i] -= c
        cheb.append(nxt)
    rest, weights = in_t[:], [Fraction(0)] * n
    for k in range(n - 1, -1, -1):
        weights[k] = rest[k] / cheb[k][k]
        for i, c in enumerate(cheb[k]):
            rest[i] -= weights[k] * c
    kept = [Fraction(0)] * (degree + 1)
    for k in range(degree + 1):
        for i, c in enumerate(cheb[k]):
            kept[i] += weights[k] * c
    in_x = [Fraction(0)] * (degree + 1)
    for j, c in enumerate(kept):
        for i in range(j + 1):
            in_x[i] += c * math.comb(j, i) * (-mid) ** (j - i) / half**j
    return in_x




def exp_taylor_q(terms):
    """Taylor coefficients of (e**r - 1 - r) / r**2."""
    return [Fraction(1, math.factorial(k + 2)) for k in range(terms)]


def log_taylor_p(terms):
    """Taylor coefficients in z = s**2 of (log((1 + s) / (1 - s)) - 2s) / s**3."""
    return [Fraction(2, 2 * k + 3) for k in range(terms)]


def exp2_taylor_p(terms):
    """Taylor coefficients of (2**f - 1) / f: ln2**(k+1) / (k+1)!."""
    ln2 = sum(Fraction(1, k * 2**k) for k in range(1, 200))  # ln 2 to 2**-200
    return [ln2 ** (k + 1) / math.factorial(k + 1) for k in range(terms)]


def tanh_taylor_q(terms):
    """Taylor coefficients in s = x**2 of (tanh(x) / x - 1) / s: tanh x = sum_n 2**2n (2**2n - 1) B_2n
    x**(2n-1) / (2n)! with the Bernoulli numbers B (converges for s < pi**2 / 4)."""
    bern = [Fraction(1)]
    for m in range(1, 2 * terms + 3):
        bern.append(-sum(math.comb(m + 1, k) * bern[k] for k in range(m)) / (m + 1))
    return [Fraction(4**n * (4**n - 1)) * bern[2 * n] / math.factorial(2 * n) for n in range(2, terms + 2)]


HALF_LN2 = Fraction(0.3467)
Z_MAX = Fraction(0.0295)


@pytest.mark.parametrize(
    "prefix, count, taylor, lo, hi, dtype",
    [
        ("_EXP_Q", 10, exp_taylor_q(25), -HALF_LN2, HALF_LN2, np.float64),
        ("_FEXP_Q", 5, exp_taylor_q(16), -HALF_LN2, HALF_LN2, np.float32),
        ("_FEXP2_P", 6, exp2_taylor_p(20), Fraction(-1, 2), Fraction(1, 2), np.float32),
        ("_LOG_P", 7, log_taylor_p(30), Fraction(0), Z_MAX, np.float64),
        ("_FLOG_P", 3, log_taylor_p(30), Fraction(0), Z_MAX, np.float32),
        ("_FTANH_Q", 5, tanh_taylor_q(40), Fraction(0), Fraction(25, 64), np.float32),
        ("_FTANH_T", 4, tanh_taylor_q(40), Fraction(0), Fraction(49, 256), np.float32),
    ],
)
def test_polynomial_coefficients(prefix, count, taylor, lo, hi, dtype):
    want = [dtype(float(c)) for c in economise(taylor, lo, hi, count - 1)]
    got = [getattr(_math, f"{prefix}{i}") for i in range(count)]
    np.testing.assert_array_equal(np.array(got, dtype), np.array(want, dtype))


def test_ln2_split_is_exact_enough():
    ln2 = sum(Fraction(1, k * 2**k) for k in range(1, 200))  # ln 2 = sum 1 / (k 2**k), to 2**-200
    hi = Fraction(_math._LN2_HI)
    assert abs(ln2 - hi - Fraction(_math._LN2_LO)) < Fraction(1, 2**100)
    # n * _LN2_HI must be exact for every |n| < 2**11 the float64 reductions meet: 42 bits at most.
    assert (hi * 2**42).denominator == 1
    fhi = Fraction(float(_math._FLN2_HI))
    assert abs(ln2 - fhi - Fraction(float(_math._FLN2_LO))) < Fraction(1, 2**40)
    assert (fhi * 2**16).denominator == 1  # 16 bits: n * _FLN2_HI exact for |n| < 2**8


# --------------------------------------------------------------------------------------------------
# The bounded exponential: the same bits as exp over its whole domain, NaN propagated
# --------------------------------------------------------------------------------------------------
@_jit.kernel(parallel=False)
def _exp_pair_loop(x, full, bounded):
    for i in range(x.size):
        full[i] = _math.exp(x[i])
        bounded[i] = _math.exp_bounded(x[i])


def test_bounded_exp_is_exp_on_its_domain():
    lo, hi = _math._EXP_BOUNDED_LO, _math._EXP_BOUNDED_HI
    rng = np.random.default_rng(5)
    ends = [lo, hi, np.nextafter(lo, 0.0), np.nextafter(hi, 0.0), 0.0, -0.0, np.nan, -np.log(2) / 2, np.log(2) / 2]
    x = np.concatenate([uniform(lo, hi, np.float64, rng), np.linspace(lo, hi, N), ends])
    full, bounded = np.empty_like(x), np.empty_like(x)
    _exp_pair_loop(x, full, bounded)
    np.testing.assert_array_equal(bounded, full)  # NaN where NaN
    assert np.isnan(bounded[np.isnan(x)]).all()
    assert np.nanmin(bounded) > 0  # no result flushed: the domain keeps 2**n normal
