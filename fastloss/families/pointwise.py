"""The pointwise family: regression, probabilistic and penalty losses that treat each element alone.

Losses: ``l1_loss``, ``mse_loss``, ``smooth_l1_loss``, ``huber_loss``, ``mape_loss``, ``rmse_loss``,
``binary_cross_entropy``, ``binary_cross_entropy_with_logits``, ``kl_div``, ``log_loss``,
``l1_penalty``, ``l2_penalty``; semantics of PyTorch 2.13 (``log_loss``: scikit-learn 1.9).

Layout of this module:

1. **One-point functions** (plain Python of scalars): each formula and its derivative, written once and
   compiled for the CPU here and for CUDA in ``pointwise_cuda.py``.
2. **CPU kernels**: one generic parallel pass computing values and gradients together.
3. **Drivers** called by :mod:`fastloss.api`.
4. **REFERENCE / CASES / BENCH / TORCH** tables (float64 NumPy ground truth, test and benchmark inputs).
"""
from __future__ import annotations

import math
import types
import warnings

import numpy as np

from .._jit import device, kernel, run_chunks
from .._math import exp, expf, log, log1p, log1pf, logf

# ==================================================================================================
# 1. One-point functions
# ==================================================================================================
# Each loss of one element and its derivative with respect to the prediction, as plain, undecorated
# Python functions of scalars. The CPU kernels below and the CUDA twin (pointwise_cuda.py) compile these
# very functions through compile_point_functions(), so:
#   - use only scalars, `math`, the elementary functions `exp`, `log`, `log1p` (bound at compile time:
#     fastloss._math's vectorisable ones on the CPU), the constants of POINT_CONSTANTS and calls to other
#     functions of this section, all by plain name;
#   - no NumPy, no arrays, no closures, no other globals;
#   - keep the names stable: the CUDA twin refers to them.
# Comparisons are written so that NaN falls through to the branch PyTorch takes (a comparison with NaN
# is false), which is how NaN propagates -- or not -- exactly as in torch.
# The kernels call them with float64 arguments (float32 data is widened on load with np.float64;
# Numba's float() would keep float32), so every loss is evaluated in float64 and rounded once when
# stored.

#: Floor of BCE's logarithms (PyTorch clamps log(x) and log(1 - x) at -100).
BCE_LOG_FLOOR = -100.0
#: Floor of the denominator (1 - x) * x of BCE's gradient: PyTorch's EPSILON = 1e-12, a float32
#: constant (so 1e-12 rounded to float32) for float64 data as well.
BCE_GRAD_EPS = 9.999999960041972e-13
#: Floor of |target| in MAPE: float64's machine epsilon, as sklearn.metrics.mean_absolute_percentage_error.
MAPE_EPS = 2.220446049250313e-16

#: The constants the one-point functions may use, by name (compile_point_functions binds them).
#: ZERO and ONE are the literals of the functions that also serve float32 arithmetic (BCE with logits):
#: compiled with float32 ZERO / ONE (see P32), they keep float32 operands in float32.
ZERO, ONE, NEG_INF = 0.0, 1.0, -math.inf
POINT_CONSTANTS = {"BCE_LOG_FLOOR": BCE_LOG_FLOOR, "BCE_GRAD_EPS": BCE_GRAD_EPS, "MAPE_EPS": MAPE_EPS,
                   "ZERO": ZERO, "ONE": ONE, "NEG_INF": NEG_INF}


def sign_point(r):
    """sign(r) in {-1, 0, 1}, with sign(0) = sign(NaN) = 0 (torch's sign, hence the gradient of |r|)."""
    if r > 0.0:
        return 1.0
    if r < 0.0:
        return -1.0
    return 0.0


def l1_point(r):
    """|r| of the residual r = input - target."""
    return abs(r)


def l1_point_grad(r):
    """d|r|/dr = sign(r); 0 at r == 0 (and at NaN), as torch."""
    return sign_point(r)


def mse_point(r):
    """r**2 of the residual r = input - target."""
    return r * r


def mse_point_grad(r):
    """d(r**2)/dr = 2 r."""
    return 2.0 * r


def smooth_l1_point(r, beta):
    """Smooth L1 of r: 0.5 r**2 / beta where |r| < beta, else |r| - 0.5 beta (|r| when beta == 0)."""
    z = abs(r)
    if z < beta:
        return 0.5 * z * z / beta
    return z - 0.5 * beta


def smooth_l1_point_grad(r, beta):
    """d smooth_l1 / dr: r / beta inside (-beta, beta), sign(r) outside and at |r| == beta.

    torch sends beta == 0 to l1_loss's backward, whose slope at r == 0 is 0 (not -1 as the
    ``r <= -beta`` branch would give).
    """
    if beta == 0.0:
        return sign_point(r)
    if r <= -beta:
        return -1.0
    if r >= beta:
        return 1.0
    return r / beta


def huber_point(r, delta):
    """Huber of r: 0.5 r**2 where |r| < delta, else delta (|r| - 0.5 delta)."""
    z = abs(r)
    if z < delta:
        return 0.5 * z * z
    return delta * (z - 0.5 * delta)


def huber_point_grad(r, delta):
    """d huber / dr: r inside (-delta, delta), +-delta outside and at |r| == delta."""
    if r <= -delta:
        return -delta
    if r >= delta:
        return delta
    return r


def mape_denominator(t):
    """max(|t|, MAPE_EPS), NaN propagating (as numpy.maximum)."""
    d = abs(t)
    if d < MAPE_EPS:
        return MAPE_EPS
    return d


def mape_point(x, t):
    """Absolute percentage error |t - x| / max(|t|, eps), a fraction."""
    return abs(t - x) / mape_denominator(t)


def mape_point_grad(x, t):
    """d mape / dx = sign(x - t) / max(|t|, eps); 0 at x == t."""
    return sign_point(x - t) / mape_denominator(t)


def clamp_below(v, floor):
    """max(v, floor), NaN propagating (std::max(v, floor) in torch's kernels)."""
    if v < floor:
        return floor
    return v


def bce_point(x, t):
    """Binary cross entropy of a probability x: (t - 1) max(log1p(-x), -100) - t max(log(x), -100).

    Written in torch's order, so 0 * -100 terms and NaN behave as torch's CPU kernel.
    """
    log_x = clamp_below(log(x), BCE_LOG_FLOOR)
    log_1mx = clamp_below(log1p(-x), BCE_LOG_FLOOR)
    return (t - 1.0) * log_1mx - t * log_x


def bce_point_grad(x, t):
    """d bce / dx = (x - t) / max((1 - x) x, EPSILON), torch's backward (finite at x = 0 and x = 1)."""
    return (x - t) / clamp_below((1.0 - x) * x, BCE_GRAD_EPS)


def exp_neg_abs_point(x):
    """exp(-|x|), in (0, 1]: the one exponential that log_sigmoid and sigmoid of x share."""
    return exp(-abs(x))


def log_sigmoid_point_e(x, e):
    """log(sigmoid(x)) = min(x, 0) - log1p(e) given e = exp(-|x|); never overflows (torch's form)."""
    m = x if x < ZERO else ZERO  # NaN: the log1p term is NaN as well
    return m - log1p(e)


def sigmoid_point_e(x, e):
    """sigmoid(x) given e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below; never overflows."""
    if x >= ZERO:
        return ONE / (ONE + e)
    return e / (ONE + e)


def log_sigmoid_point(x):
    """log(sigmoid(x))."""
    return log_sigmoid_point_e(x, exp_neg_abs_point(x))


def sigmoid_point(x):
    """sigmoid(x)."""
    return sigmoid_point_e(x, exp_neg_abs_point(x))


def bce_logits_point_e(x, t, pw, e):
    """BCE of a logit x with positive weight pw, given e = exp(-|x|):
    (1 - t) x - (1 + (pw - 1) t) log_sigmoid(x), with log_sigmoid(x) = min(x, 0) - log1p(e).

    Summed as (1 - t) x + w log1p(e) for x >= 0 and -pw t x + w log1p(e) for x < 0 (w = 1 + (pw - 1) t):
    terms of one sign for t in [0, 1], where torch's form cancels (x = -10, t = 1e-4 loses 3 digits in
    float32). x = -inf gives NaN (x - x), as torch's inf - inf.
    """
    log_weight = ONE + (pw - ONE) * t
    if x < ZERO:
        linear = -(pw * t) * x if x > NEG_INF else x - x
    else:
        linear = (ONE - t) * x  # NaN for x = NaN, and for x = inf with t = 1 (0 * inf), as torch
    return linear + log_weight * log1p(e)


def bce_logits_point_grad_e(x, t, pw, e):
    """d bce_logits / dx given e = exp(-|x|): (1 + (pw - 1) t) sigmoid(x) - pw t (sigmoid(x) - t when
    pw == 1)."""
    log_weight = ONE + (pw - ONE) * t
    return log_weight * sigmoid_point_e(x, e) - pw * t


def bce_logits_point(x, t, pw):
    """BCE of a logit x with positive weight pw (see bce_logits_point_e)."""
    return bce_logits_point_e(x, t, pw, exp_neg_abs_point(x))


def bce_logits_point_grad(x, t, pw):
    """d bce_logits / dx (see bce_logits_point_grad_e)."""
    return bce_logits_point_grad_e(x, t, pw, exp_neg_abs_point(x))


def xlogy_point(a, b):
    """a log(b) with 0 where a == 0, NaN where b is NaN (torch.xlogy)."""
    if b != b:
        return b
    if a == 0.0:
        return 0.0
    return a * log(b)


def kl_div_point(x, t):
    """KL term of log-probability x and probability t: xlogy(t, t) - t x (NaN for t < 0, as torch)."""
    return xlogy_point(t, t) - t * x


def kl_div_point_grad(x, t):
    """d kl_div / dx = -t."""
    return -t


def kl_div_log_target_point(x, t):
    """KL term of log-probabilities x and t (log_target=True): exp(t) (t - x)."""
    return exp(t) * (t - x)


def kl_div_log_target_point_grad(x, t):
    """d kl_div / dx = -exp(t) (log_target=True)."""
    return -exp(t)


#: Every one-point function, in dependency order (helpers before their callers). The CUDA twin compiles
#: exactly these with ``compile_point_functions(cuda.jit(device=True), {...})``.
POINT_FUNCTIONS = (
    sign_point, clamp_below, mape_denominator, exp_neg_abs_point, log_sigmoid_point_e, sigmoid_point_e,
    log_sigmoid_point, sigmoid_point, xlogy_point, bce_logits_point_e, bce_logits_point_grad_e,
    l1_point, l1_point_grad, mse_point, mse_point_grad,
    smooth_l1_point, smooth_l1_point_grad, huber_point, huber_point_grad,
    mape_point, mape_point_grad, bce_point, bce_point_grad,
    bce_logits_point, bce_logits_point_grad,
    kl_div_point, kl_div_point_grad, kl_div_log_target_point, kl_div_log_target_point_grad,
)


def compile_point_functions(compile_one, elementary, constants=None):
    """Compile every function of ``POINT_FUNCTIONS`` with ``compile_one`` and return them as a module.

    ``compile_one``: a decorator, e.g. ``fastloss._jit.device`` or ``numba.cuda.jit(device=True)``.
    ``elementary``: ``{"exp": ..., "log": ..., "log1p": ...}``, the elementary functions for that target.

    The plain functions call each other by name; each is re-bound to a namespace in which those names
    (and ``exp``/``log``/``log1p``, ``math`` and ``POINT_CONSTANTS``) are the compiled versions for the
    target, so the same source serves the CPU and CUDA. ``constants`` overrides entries of
    ``POINT_CONSTANTS`` (the float32 ZERO and ONE of P32). The returned object is a module so that jitted
    kernels can call ``P.l1_point(r)`` (Numba resolves module attributes at compile time).
    """
    namespace = {"math": math, **POINT_CONSTANTS, **(constants or {}), **elementary}
    compiled = types.ModuleType(f"{__name__}.points")
    for fn in POINT_FUNCTIONS:
        rebound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
        rebound.__qualname__, rebound.__module__, rebound.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        namespace[fn.__name__] = compile_one(rebound)
        setattr(compiled, fn.__name__, namespace[fn.__name__])
    return compiled


# ==================================================================================================
# 2. CPU kernels
# ==================================================================================================
# One chunk routine (_chunk) serves every loss. The flattened, C-contiguous input is cut into one chunk
# per thread; each chunk is walked in blocks of BLOCK elements, and each block in three short loops
# over data that stays in L1:
#   (a) the loss's own block loop: f[j], d[j] = loss and derivative of element j (float64 scratch);
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

#: The one-point functions compiled for the CPU (inlined into the loops below).
P = compile_point_functions(device, {"exp": exp, "log": log, "log1p": log1p})
#: The same, in float32 arithmetic (for the functions written with ZERO / ONE): BCE with logits of
#: float32 data, whose exp and log1p in float64 made that loss compute-bound.
P32 = compile_point_functions(device, {"exp": expf, "log": logf, "log1p": log1pf},
                              {"ZERO": np.float32(0.0), "ONE": np.float32(1.0)})

#: Elements per block: a block's working set (input, target, f, d, gradient: about 36 KB for float32)
#: stays in L1/L2 between its three loops (512, 1024 and 2048 measured the same).
BLOCK = 1024
#: Fewest elements worth a thread of their own (smaller inputs use fewer threads; one chunk runs on
#: the calling thread). About 100 us of work: a thread costs tens of microseconds to wake.
MIN_CHUNK = 1 << 17


# --- (a) the block loops: f[j], d[j] = loss of element j and its derivative w.r.t. xs[j] ----------
# Uniform signature (a, xs, ts, pws, f, d): `a` the loss's scalar option (beta, delta), `ts` the
# target, `pws` the pos_weight (used by BCE-with-logits only). Arithmetic in float64.
@device
def _l1_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.l1_point(r)
        d[j] = P.l1_point_grad(r)


@device
def _mse_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.mse_point(r)
        d[j] = P.mse_point_grad(r)


@device
def _smooth_l1_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.smooth_l1_point(r, a)
        d[j] = P.smooth_l1_point_grad(r, a)


@device
def _huber_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.huber_point(r, a)
        d[j] = P.huber_point_grad(r, a)


@device
def _mape_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.mape_point(xj, tj)
        d[j] = P.mape_point_grad(xj, tj)


@device
def _bce_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.bce_point(xj, tj)
        d[j] = P.bce_point_grad(xj, tj)


@device
def _bce_logits_block(a, xs, ts, pws, f, d):
    # exp(-|x|) in a loop of its own (through f): with exp and log1p inlined in one loop body, their
    # polynomial constants outgrow the 16 vector registers and the loop ran 28% slower.
    for j in range(xs.size):
        f[j] = P.exp_neg_abs_point(np.float64(xs[j]))
    for j in range(xs.size):
        xj, tj, pj, e = np.float64(xs[j]), np.float64(ts[j]), np.float64(pws[j]), f[j]
        f[j] = P.bce_logits_point_e(xj, tj, pj, e)
        d[j] = P.bce_logits_point_grad_e(xj, tj, pj, e)


@device
def _bce_logits_f32_block(a, xs, ts, pws, f, d):
    # float32 data: the per-element terms in float32 (8 lanes, float32 exp / log1p: 2e-7 relative);
    # stored to the float64 f, d, so that the sums and the chain rule stay in float64.
    for j in range(xs.size):
        f[j] = P32.exp_neg_abs_point(xs[j])
    for j in range(xs.size):
        xj, tj, pj, e = xs[j], ts[j], pws[j], np.float32(f[j])
        f[j] = P32.bce_logits_point_e(xj, tj, pj, e)
        d[j] = P32.bce_logits_point_grad_e(xj, tj, pj, e)


@device
def _kl_div_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.kl_div_point(xj, tj)
        d[j] = P.kl_div_point_grad(xj, tj)


@device
def _kl_div_log_target_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.kl_div_log_target_point(xj, tj)
        d[j] = P.kl_div_log_target_point_grad(xj, tj)


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
    Returns the chunk's float64 sum of ``w * f``.
    """
    n = x.size
    lo = c * n // nchunks
    hi = (c + 1) * n // nchunks
    f = np.empty(BLOCK)
    d = np.empty(BLOCK)
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
def _l1_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.l1_point(r), P.l1_point_grad(r)


@device
def _mse_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.mse_point(r), P.mse_point_grad(r)


@device
def _smooth_l1_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.smooth_l1_point(r, a), P.smooth_l1_point_grad(r, a)


@device
def _huber_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.huber_point(r, a), P.huber_point_grad(r, a)


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
def _l1_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_l1_pair, c, nchunks, a, gscale, x, t, gout)


@kernel(parallel=False)
def _mse_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_mse_pair, c, nchunks, a, gscale, x, t, gout)


@kernel(parallel=False)
def _smooth_l1_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_smooth_l1_pair, c, nchunks, a, gscale, x, t, gout)


@kernel(parallel=False)
def _huber_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_huber_pair, c, nchunks, a, gscale, x, t, gout)


# Per loss, one small compiled function inlining _chunk with the loss's block loop; _run_chunks (below)
# runs it over the chunks in parallel threads. Every chunk function takes
# (c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout) and returns chunk c's float64 sum of
# w * f; the caller combines the chunks in order, so the result is deterministic for a given nchunks.
@kernel(parallel=False)
def _l1_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_l1_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _mse_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_mse_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _smooth_l1_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_smooth_l1_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _huber_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_huber_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _mape_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_mape_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _bce_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_bce_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _bce_logits_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_bce_logits_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _bce_logits_f32_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_bce_logits_f32_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _kl_div_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_kl_div_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _kl_div_log_target_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_kl_div_log_target_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


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


# ==================================================================================================
# 3. Drivers (called by fastloss.api with checked NumPy arrays)
# ==================================================================================================
from .._dispatch import scalar_result  # noqa: E402


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


def _ratio(num: float, den: float) -> float:
    """num / den with IEEE semantics (0 / 0 = NaN, x / 0 = +-inf), as torch's division."""
    try:
        return num / den
    except ZeroDivisionError:
        if num == 0 or num != num:
            return math.nan
        return math.copysign(math.inf, num) * math.copysign(1.0, den)


def _fused(chunk, x, t, *, a=0.0, weight=None, pos_weight=None, values=None, grad_output=None,
           gscale=0.0, gout=None) -> float:
    """One fused pass of the loss chunk function ``chunk`` over ``x``; returns the float64 sum of ``w * f``.

    ``t``, ``weight``, ``pos_weight``, ``grad_output``: arrays broadcastable to ``x``, or ``None``
    (target 0, weights 1, grad_output 1). ``values``: a C-contiguous array of ``x``'s size that
    receives the per-element losses, or ``None``. ``gout``: a C-contiguous array of ``x``'s size that
    receives ``gscale * grad_output * w * f'``, or ``None`` for no gradient.
    """
    n, shape, dtype = x.size, x.shape, x.dtype
    if n == 0:
        return 0.0
    direct = _DIRECT.get(chunk)
    if (direct is not None and weight is None and pos_weight is None and grad_output is None
            and values is None and isinstance(t, np.ndarray) and t.shape == shape and t.dtype == dtype
            # written over an input, the loop runs LLVM's scalar fallback (other roundings than its
            # vector body): the general path keeps out=input equal to a fresh buffer
            and (gout is None or not (np.may_share_memory(gout, x) or np.may_share_memory(gout, t)))):
        gflat = np.empty(0, dtype=dtype) if gout is None else gout.reshape(-1)
        return math.fsum(_run_chunks(direct, _nchunks(n), float(a), float(gscale), _flat(x), _flat(t), gflat))
    empty = np.empty(0, dtype=dtype)
    t_op = _constant_operand(0.0, dtype) if t is None else _broadcast_operand(t, shape)
    one = _constant_operand(1.0, dtype)
    w_op = one if weight is None else _broadcast_operand(weight, shape)
    pw_op = one if pos_weight is None else _broadcast_operand(pos_weight, shape)
    go_op = one if grad_output is None else _broadcast_operand(grad_output, shape)
    vflat = empty if values is None else values.reshape(-1)
    gflat = empty if gout is None else gout.reshape(-1)
    return math.fsum(_run_chunks(chunk, _nchunks(n), float(a), float(gscale), _flat(x), t_op, w_op, pw_op,
                                 go_op, vflat, gflat))


#: The losses with a direct path (see _direct), by their general chunk function.
_DIRECT = {_l1_chunk: _l1_direct_chunk, _mse_chunk: _mse_direct_chunk,
           _smooth_l1_chunk: _smooth_l1_direct_chunk, _huber_chunk: _huber_direct_chunk}


def _run(chunk, x, t, reduction, grad, *, a=0.0, weight=None, pos_weight=None,
         weighted_mean=False, batch=None, scale=1.0):
    """One pointwise loss as the API returns it: the value, or ``(value, (grad,))`` for a GradRequest.

    ``reduction``: 'none', 'sum', 'mean' (divided by n, or by sum(weight) when ``weighted_mean``) or
    'batchmean' (divided by ``batch``). ``scale`` multiplies a reduced loss (the penalties' lam).
    Other arguments as :func:`_fused`.
    """
    gout = grad.out_for(0, x) if grad is not None else None
    operands = dict(a=a, weight=weight, pos_weight=pos_weight, gout=gout)
    if reduction == "none":
        value = np.empty(x.shape, dtype=x.dtype)
        go = grad.array(x.shape, x.dtype) if grad is not None else None
        _fused(chunk, x, t, values=value, grad_output=go, gscale=1.0, **operands)
    else:
        if reduction == "sum":
            divisor = 1.0
        elif reduction == "batchmean":
            divisor = float(batch)
        elif weighted_mean:
            divisor = math.fsum(_run_chunks(_sum_chunk, _nchunks(weight.size), _flat(weight)))
        else:
            divisor = float(x.size)
        gscale = _ratio(grad.scalar() * scale, divisor) if grad is not None else 0.0
        total = _fused(chunk, x, t, gscale=gscale, **operands)
        value = scalar_result(_ratio(total * scale, divisor), x.dtype)
    return value if grad is None else (value, (gout,))


def l1(x, t, w, reduction, grad):
    """l1_loss: ``w |x - t|``; weighted 'mean' is sum(w l) / sum(w), as torch 2.13."""
    return _run(_l1_chunk, x, t, reduction, grad, weight=w, weighted_mean=w is not None)


def mse(x, t, w, reduction, grad):
    """mse_loss: ``w (x - t)**2``; weighted 'mean' is sum(w l) / sum(w), as torch 2.13."""
    return _run(_mse_chunk, x, t, reduction, grad, weight=w, weighted_mean=w is not None)


def smooth_l1(x, t, reduction, beta, grad):
    """smooth_l1_loss with threshold ``beta`` (beta = 0 is the L1 loss)."""
    return _run(_smooth_l1_chunk, x, t, reduction, grad, a=beta)


def huber(x, t, w, reduction, delta, grad):
    """huber_loss with threshold ``delta``; weighted 'mean' is mean(w l), as torch 2.13."""
    return _run(_huber_chunk, x, t, reduction, grad, a=delta, weight=w)


def mape(x, t, reduction, grad):
    """mape_loss: ``|t - x| / max(|t|, eps)``."""
    return _run(_mape_chunk, x, t, reduction, grad)


def rmse(x, t, grad):
    """rmse_loss: ``sqrt(mean((x - t)**2))``, a 0-d result (NaN for empty input).

    Two passes: the value, then the gradient ``grad_output * (x - t) / (n * rmse)``, which is taken
    as 0 where rmse == 0 (the subgradient; torch's autograd would give NaN there).
    """
    n = x.size
    gout = grad.out_for(0, x) if grad is not None else None
    root = math.sqrt(_fused(_mse_chunk, x, t) / n) if n else math.nan
    value = scalar_result(root, x.dtype)
    if grad is None:
        return value
    # d sqrt(m) / dx_i = (2 r_i / n) / (2 sqrt(m)): MSE's derivative 2 r scaled by 1 / (2 n rmse)
    gscale = 0.0 if root == 0.0 else _ratio(grad.scalar(), 2.0 * n * root)
    _fused(_mse_chunk, x, t, gscale=gscale, gout=gout)
    return value, (gout,)


def bce(x, t, w, reduction, grad):
    """binary_cross_entropy of probabilities ``x`` (logs clamped at -100); ``w`` broadcasts."""
    return _run(_bce_chunk, x, t, reduction, grad, weight=w)


def bce_logits(x, t, w, pos_weight, reduction, grad):
    """binary_cross_entropy_with_logits; ``w`` and ``pos_weight`` broadcast to ``x``."""
    chunk = _bce_logits_f32_chunk if x.dtype == np.float32 else _bce_logits_chunk
    return _run(chunk, x, t, reduction, grad, weight=w, pos_weight=pos_weight)


def kl_div(x, t, reduction, log_target, grad):
    """kl_div of log-probabilities ``x``; 'batchmean' divides the sum by ``x.shape[0]`` (1 for 0-d)."""
    chunk = _kl_div_log_target_chunk if log_target else _kl_div_chunk
    batch = x.shape[0] if x.ndim else 1
    return _run(chunk, x, t, reduction, grad, batch=batch)


def penalty(w, lam, p, grad):
    """``lam * sum(|w|)`` (p = 1) or ``lam / 2 * sum(w**2)`` (p = 2), with gradients ``lam sign(w)`` and
    ``lam w``."""
    if p == 1:
        return _run(_l1_chunk, w, None, "sum", grad, scale=lam)
    return _run(_mse_chunk, w, None, "sum", grad, scale=0.5 * lam)


def values_outside_unit_interval(a) -> int:
    """How many elements of the NumPy array ``a`` lie below 0 or above 1 (NaN not counted); one pass."""
    return sum(_run_chunks(_outside_unit_interval_chunk, _nchunks(a.size), _flat(a)))


# --------------------------------------------------------------------------------------------------
# log_loss: scikit-learn 1.9's sklearn.metrics.log_loss, with its gradient w.r.t. y_pred
# --------------------------------------------------------------------------------------------------
def _log_loss_classes(y_true, labels):
    """The sorted classes (LabelBinarizer's order) and each sample's class index, as scikit-learn."""
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be a 1-d array of labels, got shape {y_true.shape}")
    if labels is None:
        classes, index = np.unique(y_true, return_inverse=True)
        if classes.size == 1:
            raise ValueError(
                f"y_true contains only one label ({classes[0]}). Please provide the list of all expected "
                "class labels explicitly through the labels argument."
            )
        return classes, index
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.shape != labels.shape or not np.all(classes == labels):
        warnings.warn(
            f"Labels passed were {labels.tolist()}. But this function assumes labels are ordered "
            f"lexicographically. Pass the ordered labels={classes.tolist()} and ensure that the columns "
            "of y_pred correspond to this ordering.", UserWarning, stacklevel=4)
    missing = ~np.isin(y_true, classes)
    if missing.any():
        raise ValueError(f"y_true contains values {set(y_true[missing].tolist())} not belonging to the "
                         f"passed labels {labels.tolist()}.")
    if classes.size == 1:
        raise ValueError(f"The labels array needs to contain at least two labels, got {classes.tolist()}.")
    return classes, np.searchsorted(classes, y_true)


def _log_loss_check(y_true, y_pred, sample_weight):
    """scikit-learn's checks of y_pred's values and of the three lengths; returns the weights or None."""
    if y_pred.ndim not in (1, 2):
        raise ValueError(f"y_pred must be (n_samples,) or (n_samples, n_classes), got shape {y_pred.shape}")
    if y_pred.shape[0] == 0:
        raise ValueError("y_pred holds no samples (shape {}); log_loss needs at least one".format(y_pred.shape))
    if not np.all(np.isfinite(y_pred)):
        raise ValueError("y_pred contains NaN or infinity")
    if y_pred.max() > 1:
        raise ValueError(f"y_pred contains values greater than 1: {y_pred.max()}")
    if y_pred.min() < 0:
        raise ValueError(f"y_pred contains values lower than 0: {y_pred.min()}")
    lengths = [len(y_true), y_pred.shape[0]] + ([] if sample_weight is None else [np.size(sample_weight)])
    if len(set(lengths)) > 1:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: {lengths}")
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be a real numeric array, got dtype {sw.dtype}")
    return sw.reshape(-1).astype(np.float64)


def log_loss(y_true, y_pred, normalize, sample_weight, labels, grad):
    """sklearn.metrics.log_loss (1.9) of labels ``y_true`` and probabilities ``y_pred``, and its gradient.

    ``y_pred``: (n, k) with columns in the order of the sorted labels, or (n,) holding the positive
    class's probability (columns ``[1 - p, p]``). Each probability is clipped to ``[eps, 1 - eps]`` in
    ``y_pred``'s dtype; ``l_i = -log(p[i, y_i])``; the value is ``sum_i s_i l_i / sum_i s_i``
    (``normalize``) or ``sum_i s_i l_i`` (``s = 1`` without ``sample_weight``). The gradient is
    ``-c s_i / p[i, y_i]`` at the true class (``c = grad_output / sum(s)`` or ``grad_output``), 0 at
    the other classes and where the clip is active (as torch.clamp's gradient).
    """
    y_true = np.asarray(y_true)
    sw = _log_loss_check(y_true, y_pred, sample_weight)
    classes, index = _log_loss_classes(y_true, labels)
    n, dtype = y_pred.shape[0], y_pred.dtype
    binary = y_pred.ndim == 1 or y_pred.shape[1] == 1
    k = 2 if binary else y_pred.shape[1]
    if classes.size != k:
        raise ValueError(f"y_true and y_pred contain different number of classes: {classes.size} vs {k}. "
                         f"Classes found: {classes.tolist()}")
    rows = np.arange(n)
    if binary:  # the true class's column of [1 - p, p], formed in y_pred's dtype as scikit-learn does
        p1 = y_pred.reshape(n)
        p_true = np.where(index == 1, p1, dtype.type(1) - p1)
        row_sums = np.ones(n)
    else:
        p_true = y_pred[rows, index]
        row_sums = y_pred.sum(axis=1, dtype=np.float64)
    if not np.allclose(row_sums, 1.0, rtol=math.sqrt(np.finfo(dtype).eps), atol=0.0):
        warnings.warn("The y_pred values do not sum to one. Make sure to pass probabilities.", UserWarning,
                      stacklevel=4)
    eps = np.finfo(dtype).eps
    clipped = np.clip(p_true, eps, dtype.type(1) - eps).astype(np.float64)
    s = np.ones(n) if sw is None else sw
    total = -math.fsum(s * np.log(clipped))
    if normalize:
        weight_sum = math.fsum(s)
        if weight_sum == 0:
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
        value, c = total / weight_sum, 1.0 / weight_sum
    else:
        value, c = total, 1.0
    result = scalar_result(value, dtype)
    if grad is None:
        return result
    c *= grad.scalar()
    inside = (p_true >= eps) & (p_true <= dtype.type(1) - eps)  # clip's gradient: 1 inside, 0 outside
    g_true = np.where(inside, -c * s / clipped, 0.0)
    gout = grad.out_for(0, y_pred)
    if binary:  # d/dp of -log(p) and of -log(1 - p)
        gout.reshape(n)[:] = np.where(index == 1, g_true, -g_true)
    else:
        gout[...] = 0
        gout[rows, index] = g_true
    return result, (gout,)


# ==================================================================================================
# 4. Float64 NumPy references, test cases, benchmark inputs, PyTorch expressions
# ==================================================================================================
# The references are the ground truth of the tests: plain float64 NumPy, one line per formula, written
# independently of the one-point functions above (np.where instead of branches).
from .._registry import Case  # noqa: E402


def _sign0(r):
    """sign with sign(0) = sign(NaN) = 0 (torch's convention; np.sign(NaN) is NaN)."""
    return np.where(r > 0, 1.0, np.where(r < 0, -1.0, 0.0))


def _ref_reduce(loss, dloss, reduction, grad_output, divisor=None):
    """(value, (grad,)) of a pointwise loss from its per-element ``loss`` and ``dloss`` = d loss / d input.

    'mean' divides by ``divisor`` (default: the number of elements), 'batchmean' likewise.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        if reduction == "none":
            go = 1.0 if grad_output is None else np.broadcast_to(np.asarray(grad_output, np.float64), loss.shape)
            return loss, (go * dloss,)
        go = 1.0 if grad_output is None else float(np.asarray(grad_output))
        div = 1.0 if reduction == "sum" else float(loss.size if divisor is None else divisor)
        return np.float64(np.sum(loss)) / div, (dloss * (go / np.float64(div)),)


def _w(weight, x):
    return np.ones_like(x) if weight is None else np.broadcast_to(np.asarray(weight, np.float64), x.shape)


def ref_l1_loss(input, target, reduction="mean", weight=None, grad_output=None):
    x, t, w = np.asarray(input, np.float64), np.asarray(target, np.float64), _w(weight, input)
    r = x - t
    return _ref_reduce(w * np.abs(r), w * _sign0(r), reduction, grad_output,
                       None if weight is None else np.sum(w))


def ref_mse_loss(input, target, reduction="mean", weight=None, grad_output=None):
    x, t, w = np.asarray(input, np.float64), np.asarray(target, np.float64), _w(weight, input)
    r = x - t
    return _ref_reduce(w * r * r, w * 2.0 * r, reduction, grad_output, None if weight is None else np.sum(w))


def ref_smooth_l1_loss(input, target, reduction="mean", beta=1.0, grad_output=None):
    r = np.asarray(input, np.float64) - np.asarray(target, np.float64)
    z = np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta)
        d = _sign0(r) if beta == 0 else np.where(r <= -beta, -1.0, np.where(r >= beta, 1.0, r / beta))
    return _ref_reduce(loss, d, reduction, grad_output)


def ref_huber_loss(input, target, reduction="mean", delta=1.0, weight=None, grad_output=None):
    x, t, w = np.asarray(input, np.float64), np.asarray(target, np.float64), _w(weight, input)
    r = x - t
    z = np.abs(r)
    loss = np.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta))
    d = np.where(r <= -delta, -delta, np.where(r >= delta, delta, r))
    return _ref_reduce(w * loss, w * d, reduction, grad_output)


def ref_mape_loss(input, target, reduction="mean", grad_output=None):
    x, t = np.asarray(input, np.float64), np.asarray(target, np.float64)
    denominator = np.maximum(np.abs(t), np.finfo(np.float64).eps)
    return _ref_reduce(np.abs(t - x) / denominator, _sign0(x - t) / denominator, reduction, grad_output)


def ref_rmse_loss(input, target, grad_output=None):
    r = np.asarray(input, np.float64) - np.asarray(target, np.float64)
    value = np.sqrt(np.mean(r * r)) if r.size else np.float64(np.nan)
    go = 1.0 if grad_output is None else float(np.asarray(grad_output))
    grad = np.zeros_like(r) if value == 0 else go * r / (r.size * value)
    return value, (grad,)


def ref_binary_cross_entropy(input, target, weight=None, reduction="mean", grad_output=None):
    x, t, w = np.asarray(input, np.float64), np.asarray(target, np.float64), _w(weight, input)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = -(t * np.maximum(np.log(x), -100.0) + (1 - t) * np.maximum(np.log(1 - x), -100.0))
        d = (x - t) / np.maximum((1 - x) * x, float(np.float32(1e-12)))
    return _ref_reduce(w * loss, w * d, reduction, grad_output)


def ref_binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None,
                                         grad_output=None):
    x, t, w = np.asarray(input, np.float64), np.asarray(target, np.float64), _w(weight, input)
    pw = _w(pos_weight, input)
    with np.errstate(over="ignore", invalid="ignore"):
        sigmoid = np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))
        # torch's form in extended precision: in float64 it cancels where x << 0 (the kernels do not)
        xl, tl, pwl = (np.asarray(a, np.longdouble) for a in (x, t, pw))
        log_sigmoid_l = np.minimum(xl, 0) - np.log1p(np.exp(-np.abs(xl)))
        loss = ((1 - tl) * xl - (1 + (pwl - 1) * tl) * log_sigmoid_l).astype(np.float64)
        d = (1 + (pw - 1) * t) * sigmoid - pw * t
    return _ref_reduce(w * loss, w * d, reduction, grad_output)


def ref_kl_div(input, target, reduction="mean", log_target=False, grad_output=None):
    x, t = np.asarray(input, np.float64), np.asarray(target, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            loss, d = np.exp(t) * (t - x), -np.exp(t)
        else:
            loss, d = np.where(t == 0, 0.0, t * np.log(t)) - t * x, -t
    batch = x.shape[0] if x.ndim else 1
    return _ref_reduce(loss, d, "sum" if reduction == "batchmean" and x.ndim == 0 else reduction,
                       grad_output, batch if reduction == "batchmean" else None)


def ref_log_loss(y_true, y_pred, normalize=True, sample_weight=None, labels=None, grad_output=None):
    """Row by row, from the definition (float64; clipped at float64's eps)."""
    y_true = list(np.asarray(y_true).tolist())
    classes = sorted(set(y_true if labels is None else np.asarray(labels).tolist()))
    p = np.asarray(y_pred, np.float64)
    p2 = np.stack([1 - p, p], axis=1) if p.ndim == 1 else p
    eps = np.finfo(np.float64).eps
    s = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    norm = np.sum(s) if normalize else 1.0
    go = 1.0 if grad_output is None else float(np.asarray(grad_output))
    value, grad = 0.0, np.zeros_like(p2)
    for i, label in enumerate(y_true):
        c = classes.index(label)
        q = min(max(p2[i, c], eps), 1 - eps)
        value -= s[i] * np.log(q) / norm
        grad[i, c] = -go * s[i] / (norm * q) if eps <= p2[i, c] <= 1 - eps else 0.0
    if p.ndim == 1:
        grad = grad[:, 1] - grad[:, 0]
    return np.float64(value), (grad,)


def ref_l1_penalty(w, lam=1.0, grad_output=None):
    w = np.asarray(w, np.float64)
    go = 1.0 if grad_output is None else float(np.asarray(grad_output))
    return lam * np.sum(np.abs(w)), (go * lam * _sign0(w),)


def ref_l2_penalty(w, lam=1.0, grad_output=None):
    w = np.asarray(w, np.float64)
    go = 1.0 if grad_output is None else float(np.asarray(grad_output))
    return lam / 2 * np.sum(w * w), (go * lam * w,)


REFERENCE = {
    "l1_loss": ref_l1_loss, "mse_loss": ref_mse_loss, "smooth_l1_loss": ref_smooth_l1_loss,
    "huber_loss": ref_huber_loss, "mape_loss": ref_mape_loss, "rmse_loss": ref_rmse_loss,
    "binary_cross_entropy": ref_binary_cross_entropy,
    "binary_cross_entropy_with_logits": ref_binary_cross_entropy_with_logits,
    "kl_div": ref_kl_div, "log_loss": ref_log_loss, "l1_penalty": ref_l1_penalty, "l2_penalty": ref_l2_penalty,
}


# --- test cases: every option and reduction, 0-d to 3-d shapes ------------------------------------
_SHAPES = ((), (7,), (4, 5), (2, 3, 4))
_REDUCTIONS = ("mean", "sum", "none")


def _normal(rng, shape, dtype, scale=1.0):
    return _uniform(rng, shape, dtype, 0, 0, scale)


def _uniform(rng, shape, dtype, lo=0.0, hi=1.0, normal_scale=None):
    """Uniform in [lo, hi) (or normal with standard deviation ``normal_scale``) as an array of ``dtype``
    (a 0-d array for shape (), never a NumPy scalar)."""
    v = rng.uniform(lo, hi, shape) if normal_scale is None else normal_scale * rng.standard_normal(shape)
    return np.asarray(v, dtype=dtype)


def _regression_cases(rng, dtype, *, weighted, option=None, values=()):
    """x, t ~ N(0, 2) over every shape x reduction; a weight where the loss takes one; ``option``
    (beta, delta) over ``values``."""
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            kwargs = {"reduction": reduction}
            if option:
                kwargs[option] = values[len(cases) % len(values)]
            x, t = _normal(rng, shape, dtype, 2.0), _normal(rng, shape, dtype, 2.0)
            cases.append(Case((x, t), kwargs, f"{shape}-{reduction}"))
            if weighted and shape:
                w = _uniform(rng, shape, dtype, 0.1, 2.0)
                cases.append(Case((x, t), dict(kwargs, weight=w), f"{shape}-{reduction}-weighted"))
    return cases


def _bce_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            x = _uniform(rng, shape, dtype, 0.02, 0.98)
            hard = np.asarray(rng.uniform(size=shape) < 0.5, dtype=dtype)
            soft = _uniform(rng, shape, dtype, 0.0, 1.0)
            cases.append(Case((x, hard), {"reduction": reduction}, f"{shape}-{reduction}-hard"))
            cases.append(Case((x, soft), {"reduction": reduction}, f"{shape}-{reduction}-soft"))
    x = _uniform(rng, (6, 3), dtype, 0.02, 0.98)
    t = (rng.uniform(size=(6, 3)) < 0.5).astype(dtype)
    for w_shape in ((6, 3), (3,), (6, 1), ()):
        w = _uniform(rng, w_shape, dtype, 0.1, 2.0)
        for reduction in _REDUCTIONS:
            cases.append(Case((x, t), {"weight": w, "reduction": reduction}, f"weight{w_shape}-{reduction}"))
    return cases


def _bce_logits_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            x = _normal(rng, shape, dtype, 3.0)
            t = _uniform(rng, shape, dtype, 0.0, 1.0)
            cases.append(Case((x, t), {"reduction": reduction}, f"{shape}-{reduction}"))
    x = _normal(rng, (5, 4), dtype, 3.0)
    t = (rng.uniform(size=(5, 4)) < 0.5).astype(dtype)
    pw = _uniform(rng, (4,), dtype, 0.5, 3.0)
    for w_shape in ((5, 4), (4,), (5, 1)):
        w = _uniform(rng, w_shape, dtype, 0.1, 2.0)
        for reduction in _REDUCTIONS:
            cases.append(Case((x, t), {"weight": w, "pos_weight": pw, "reduction": reduction},
                              f"weight{w_shape}-pos_weight-{reduction}"))
    cases.append(Case((x, t), {"pos_weight": pw}, "pos_weight-only"))
    x3 = _normal(rng, (2, 3, 4), dtype, 3.0)
    t3 = _uniform(rng, (2, 3, 4), dtype, 0.0, 1.0)
    cases.append(Case((x3, t3), {"pos_weight": pw, "weight": _uniform(rng, (3, 1), dtype, 0.1, 2.0),
                                 "reduction": "none"}, "3d-pos_weight-weight(3,1)"))
    return cases


def _log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _kl_div_cases(rng, dtype):
    cases = []
    for shape in ((4,), (3, 5), (2, 3, 4)):
        x = _log_softmax(rng.standard_normal(shape)).astype(dtype)
        logt = _log_softmax(rng.standard_normal(shape))
        t = np.exp(logt)
        t.reshape(-1)[::3] = 0.0  # exact zeros: 0 * log(0) = 0
        for reduction in _REDUCTIONS + ("batchmean",):
            cases.append(Case((x, t.astype(dtype)), {"reduction": reduction}, f"{shape}-{reduction}"))
            cases.append(Case((x, logt.astype(dtype)), {"reduction": reduction, "log_target": True},
                              f"{shape}-{reduction}-log_target"))
    return cases


def _mape_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            t = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 3.0, shape)
            cases.append(Case((_normal(rng, shape, dtype, 2.0), np.asarray(t, dtype)), {"reduction": reduction},
                              f"{shape}-{reduction}"))
    return cases


def _rmse_cases(rng, dtype):
    return [Case((_normal(rng, s, dtype, 2.0), _normal(rng, s, dtype, 2.0)), {}, f"{s}") for s in _SHAPES]


def _log_loss_cases(rng, dtype):
    n = 12

    def probabilities(k):
        p = rng.uniform(0.05, 1.0, (n, k))
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)

    y3 = rng.integers(0, 3, n)
    y3[:3] = [0, 1, 2]
    y2 = rng.integers(0, 2, n)
    y2[:2] = [0, 1]
    names = np.array(["cat", "dog", "emu"])[y3]
    sw = rng.uniform(0.1, 2.0, n)
    return [
        Case((y3, probabilities(3)), {}, "3-classes"),
        Case((names, probabilities(3)), {"normalize": False}, "strings-sum"),
        Case((y3, probabilities(3)), {"sample_weight": sw}, "sample_weight"),
        Case((y3, probabilities(3)), {"sample_weight": sw, "normalize": False}, "sample_weight-sum"),
        Case((y2, _uniform(rng, n, dtype, 0.05, 0.95)), {}, "1d-binary"),
        Case((y2 + 1, probabilities(4)), {"labels": [0, 1, 2, 3]}, "labels-unused-classes"),
    ]


def _penalty_cases(rng, dtype):
    return [Case((_normal(rng, s, dtype, 2.0),), {"lam": lam}, f"{s}-lam{lam}")
            for s, lam in zip(_SHAPES, (1.0, 0.5, 2.0, 1e-3))]


CASES = {
    "l1_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=True),
    "mse_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=True),
    "smooth_l1_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=False, option="beta",
                                                           values=(1.0, 0.5, 0.0, 2.5)),
    "huber_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=True, option="delta",
                                                       values=(1.0, 0.5, 2.5)),
    "mape_loss": _mape_cases,
    "rmse_loss": _rmse_cases,
    "binary_cross_entropy": _bce_cases,
    "binary_cross_entropy_with_logits": _bce_logits_cases,
    "kl_div": _kl_div_cases,
    "log_loss": _log_loss_cases,
    "l1_penalty": _penalty_cases,
    "l2_penalty": _penalty_cases,
}


# --- benchmark inputs: one flat array of `size` elements (log_loss: `size` probabilities) ---------
def _bench_regression(rng, dtype, size):
    return Case((_normal(rng, size, dtype), _normal(rng, size, dtype)), {}, f"n={size}")


def _bench_probabilities(rng, dtype, size):
    return Case((_uniform(rng, size, dtype, 0.01, 0.99), (rng.uniform(size=size) < 0.5).astype(dtype)),
                {}, f"n={size}")


def _bench_logits(rng, dtype, size):
    return Case((_normal(rng, size, dtype, 3.0), (rng.uniform(size=size) < 0.5).astype(dtype)), {}, f"n={size}")


def _bench_kl_div(rng, dtype, size):
    cols = 1000 if size >= 1000 else size
    shape = (max(1, size // cols), cols)
    return Case((_log_softmax(rng.standard_normal(shape)).astype(dtype),
                 np.exp(_log_softmax(rng.standard_normal(shape))).astype(dtype)), {"reduction": "batchmean"},
                f"{shape}")


def _bench_log_loss(rng, dtype, size):
    k = 10
    n = max(2, size // k)
    p = rng.uniform(0.05, 1.0, (n, k))
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)[:min(k, n)] if n >= k else y[:k]
    return Case((y, (p / p.sum(axis=1, keepdims=True)).astype(dtype)), {}, f"({n}, {k})")


def _bench_penalty(rng, dtype, size):
    return Case((_normal(rng, size, dtype),), {"lam": 1e-3}, f"n={size}")


BENCH = {
    "l1_loss": _bench_regression, "mse_loss": _bench_regression, "smooth_l1_loss": _bench_regression,
    "huber_loss": _bench_regression, "mape_loss": _bench_regression, "rmse_loss": _bench_regression,
    "binary_cross_entropy": _bench_probabilities, "binary_cross_entropy_with_logits": _bench_logits,
    "kl_div": _bench_kl_div, "log_loss": _bench_log_loss, "l1_penalty": _bench_penalty,
    "l2_penalty": _bench_penalty,
}


# --- PyTorch expressions of the losses torch.nn.functional lacks ----------------------------------
def _torch_reduce(loss, reduction):
    return loss if reduction == "none" else (loss.sum() if reduction == "sum" else loss.mean())


def torch_mape_loss(torch, input, target, reduction="mean"):
    eps = float(np.finfo(np.float64).eps)
    return _torch_reduce(torch.abs(target - input) / torch.clamp(torch.abs(target), min=eps), reduction)


def torch_rmse_loss(torch, input, target):
    return torch.sqrt(torch.nn.functional.mse_loss(input, target))


TORCH = {
    "mape_loss": torch_mape_loss,
    "rmse_loss": torch_rmse_loss,
    "l1_penalty": lambda torch, w, lam=1.0: lam * torch.sum(torch.abs(w)),
    "l2_penalty": lambda torch, w, lam=1.0: lam / 2 * torch.sum(w * w),
    "log_loss": None,  # tested against sklearn.metrics.log_loss in tests/test_pointwise.py
}
