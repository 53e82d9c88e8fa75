"""The pointwise family's one-point functions: each loss of one element and its derivative, written once.

Plain Python functions of scalars, compiled for the CPU by :mod:`.blocks` (``P``, ``P32``) and for CUDA
by :mod:`fastloss.families.pointwise_cuda`, both through :func:`compile_point_functions`.
"""
from __future__ import annotations

import math
import types

import numpy as np

# The plain functions call exp/log/log1p by name: bound here to fastloss._math's, and re-bound per
# target by compile_point_functions.
from ..._math import exp, log, log1p  # noqa: F401

# Each loss of one element and its derivative with respect to the prediction, as plain, undecorated
# Python functions of scalars. The CPU kernels below and the CUDA twin (the pointwise_cuda package) compile these
# very functions through compile_point_functions(), so:
#   - use only scalars, `math`, the elementary functions `exp`, `log`, `log1p` (bound at compile time:
#     fastloss._math's vectorisable ones on the CPU), the constants of POINT_CONSTANTS and calls to other
#     functions of this section, all by plain name;
#   - no NumPy, no arrays, no closures, no other globals;
#   - keep the names stable: the CUDA twin refers to them;
#   - no number literal used as a value: the constants of POINT_CONSTANTS by name (a literal in a
#     comparison would be harmless, but the names are used there too, for one rule).
# Comparisons are written so that NaN falls through to the branch PyTorch takes (a comparison with NaN
# is false), which is how NaN propagates -- or not -- exactly as in torch.
# The precision a loss is evaluated in is the arguments' and constants' the caller compiles with:
#   - CPU, P (blocks.py): float64 constants and arguments (float32 data widened on load with
#     np.float64), every loss in float64, rounded once when stored;
#   - CPU, P32 (blocks.py): float32 constants and float32 arguments, for BCE with logits, soft margin
#     and the focal loss of float32 data (float32 exp / log1p; the block sums are float64);
#   - CUDA, P64 / P32 (pointwise_cuda/kernels.py): float64 data in float64; float32 data in float32
#     throughout, with the GPU's float32 exp / log / log1p (float64 runs at 1/32-1/64 rate on consumer
#     GPUs); the kernels sum in float64. Within the project's 2e-5 of a float64 reference except where
#     a formula subtracts nearly equal terms, as torch's float32 kernels do (tests/test_points_f32.py
#     names those regimes; see poisson_nll_loss below).
# An argument of the other precision (a float64 option or default next to float32 data) widens the
# arithmetic it touches to float64: float32 kernels must pass their options (beta, eps, ...) and absent
# operands' defaults (target 0, pos_weight 1) as float32.

#: Floor of BCE's logarithms (PyTorch clamps log(x) and log(1 - x) at -100).
BCE_LOG_FLOOR = -100.0
#: Floor of the denominator (1 - x) * x of BCE's gradient: PyTorch's EPSILON = 1e-12, a float32
#: constant (so 1e-12 rounded to float32) for float64 data as well.
BCE_GRAD_EPS = 9.999999960041972e-13
#: Floor of |target| in MAPE: float64's machine epsilon, as sklearn.metrics.mean_absolute_percentage_error.
MAPE_EPS = 2.220446049250313e-16

#: 0.5 log(2 pi): the constant term of the Gaussian NLL (full=True) and of Stirling's approximation.
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: Every number the one-point functions use, by name: the functions hold no literal, so that compiled
#: with the constants of one precision (point_constants) and called with arguments of that precision,
#: their arithmetic stays in it (Numba widens float32 op float64 to float64, and unifies a float32
#: return with a float64 one to float64).
ZERO, HALF, ONE, TWO, THREE, NEG_ONE, NEG_INF = 0.0, 0.5, 1.0, 2.0, 3.0, -1.0, -math.inf
POINT_CONSTANTS = {"BCE_LOG_FLOOR": BCE_LOG_FLOOR, "BCE_GRAD_EPS": BCE_GRAD_EPS, "MAPE_EPS": MAPE_EPS,
                   "HALF_LOG_2PI": HALF_LOG_2PI, "ZERO": ZERO, "HALF": HALF, "ONE": ONE, "TWO": TWO,
                   "THREE": THREE, "NEG_ONE": NEG_ONE, "NEG_INF": NEG_INF}


def point_constants(dtype):
    """``POINT_CONSTANTS`` as scalars of ``dtype`` (``np.float32`` or ``np.float64``), for the
    ``constants`` of :func:`compile_point_functions`.

    With ``np.float32`` every constant is the float32 nearest to its float64 value: -100, 1e-12 (BCE's
    floors, already float32 numbers), float64's epsilon 2**-52 and the small integers are exact, and
    HALF_LOG_2PI rounds by 3e-8 relative. With ``np.float64`` the values are ``POINT_CONSTANTS``'
    own.

    >>> import numpy as np
    >>> c = point_constants(np.float32)
    >>> c["HALF"], c["HALF"].dtype, c["BCE_LOG_FLOOR"] == BCE_LOG_FLOOR
    (np.float32(0.5), dtype('float32'), np.True_)
    """
    scalar = np.dtype(dtype).type  # np.float32, "float32" or np.dtype("float32") alike
    return {name: scalar(value) for name, value in POINT_CONSTANTS.items()}


def sign_point(r):
    """sign(r) in {-1, 0, 1}, with sign(0) = sign(NaN) = 0 (torch's sign, hence the gradient of |r|)."""
    if r > ZERO:
        return ONE
    if r < ZERO:
        return NEG_ONE
    return ZERO


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
    return TWO * r


def smooth_l1_point(r, beta):
    """Smooth L1 of r: 0.5 r**2 / beta where |r| < beta, else |r| - 0.5 beta (|r| when beta == 0)."""
    z = abs(r)
    if z < beta:
        return HALF * z * z / beta
    return z - HALF * beta


def smooth_l1_point_grad(r, beta):
    """d smooth_l1 / dr: r / beta inside (-beta, beta), sign(r) outside and at |r| == beta.

    torch sends beta == 0 to l1_loss's backward, whose slope at r == 0 is 0 (not -1 as the
    ``r <= -beta`` branch would give).
    """
    if beta == ZERO:
        return sign_point(r)
    if r <= -beta:
        return NEG_ONE
    if r >= beta:
        return ONE
    return r / beta


def huber_point(r, delta):
    """Huber of r: 0.5 r**2 where |r| < delta, else delta (|r| - 0.5 delta)."""
    z = abs(r)
    if z < delta:
        return HALF * z * z
    return delta * (z - HALF * delta)


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
    return (t - ONE) * log_1mx - t * log_x


def bce_point_grad(x, t):
    """d bce / dx = (x - t) / max((1 - x) x, EPSILON), torch's backward (finite at x = 0 and x = 1)."""
    return (x - t) / clamp_below((ONE - x) * x, BCE_GRAD_EPS)


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
    if a == ZERO:
        return ZERO
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


# --- poisson_nll_loss -------------------------------------------------------------------------------
# In float32 (CUDA's P32), full=True at a good fit of a large count (x near log t, t ~ 1000) sums terms
# of size t log t into a result of size 0.5 log(2 pi t), losing ~1e-4 of it per element (as torch's
# float32 kernel). Kept in float32 all the same: float64 would need t x, Stirling's term and its log in
# float64 (tens of float64 instructions per element, compute-bound on consumer GPUs), and these
# rounding errors, of either sign, largely cancel in a mean over many elements.
def stirling_point(t):
    """Stirling's term t log(t) - t + 0.5 log(2 pi t) of log(t!), 0 where t <= 1 (torch's full=True)."""
    if t <= ONE:
        return ZERO
    return t * log(t) - t + HALF * log(t) + HALF_LOG_2PI


def poisson_nll_log_point(x, t):
    """Poisson NLL of a log-rate x (log_input=True): exp(x) - t x."""
    return exp(x) - t * x


def poisson_nll_log_point_grad(x, t):
    """d / dx = exp(x) - t."""
    return exp(x) - t


def poisson_nll_point(x, t, eps):
    """Poisson NLL of a rate x (log_input=False): x - t log(x + eps)."""
    return x - t * log(x + eps)


def poisson_nll_point_grad(x, t, eps):
    """d / dx = 1 - t / (x + eps)."""
    return ONE - t / (x + eps)


def poisson_nll_log_full_point(x, t):
    """poisson_nll_log_point plus Stirling's term (full=True)."""
    return poisson_nll_log_point(x, t) + stirling_point(t)


def poisson_nll_full_point(x, t, eps):
    """poisson_nll_point plus Stirling's term (full=True)."""
    return poisson_nll_point(x, t, eps) + stirling_point(t)


# --- gaussian_nll_loss ------------------------------------------------------------------------------
# torch clamps var at eps in place under no_grad: the value sees max(var, eps), the gradient passes
# straight through the clamp (the derivatives below are taken at the clamped variance, times 1).
def gaussian_nll_point(r, v, eps):
    """0.5 (log(max(v, eps)) + r**2 / max(v, eps)) of the residual r = input - target and variance v."""
    vc = clamp_below(v, eps)
    return HALF * (log(vc) + r * r / vc)


def gaussian_nll_full_point(r, v, eps):
    """gaussian_nll_point plus 0.5 log(2 pi) (full=True)."""
    return gaussian_nll_point(r, v, eps) + HALF_LOG_2PI


def gaussian_nll_point_grad(r, v, eps):
    """d / d input = r / max(v, eps)."""
    return r / clamp_below(v, eps)


def gaussian_nll_point_grad_var(r, v, eps):
    """d / d var = 0.5 (1 / vc - r**2 / vc**2) at vc = max(v, eps) (straight through the clamp)."""
    vc = clamp_below(v, eps)
    return HALF * (ONE - r * r / vc) / vc


# --- soft_margin_loss -------------------------------------------------------------------------------
def soft_margin_point_e(x, y, e):
    """log(1 + exp(-y x)) = -log_sigmoid(y x) given e = exp(-|y x|); never overflows (torch's
    log1p(exp(.)) does)."""
    return -log_sigmoid_point_e(y * x, e)


def soft_margin_point_grad_e(x, y, e):
    """d / dx = -y sigmoid(-y x), given e = exp(-|y x|)."""
    return -y * sigmoid_point_e(-(y * x), e)


def soft_margin_point(x, y):
    """log(1 + exp(-y x)) (see soft_margin_point_e)."""
    return soft_margin_point_e(x, y, exp_neg_abs_point(y * x))


def soft_margin_point_grad(x, y):
    """d / dx = -y sigmoid(-y x)."""
    return soft_margin_point_grad_e(x, y, exp_neg_abs_point(y * x))


# --- sigmoid_focal_loss (torchvision.ops) -----------------------------------------------------------
# (1 - p_t)**gamma and its derivative gamma (1 - p_t)**(gamma - 1), as pairs (focal_powN, focal_dpowN)
# of q = 1 - p_t: the CPU kernels pick the pair for gamma once per block (a loop that selected among
# them per element evaluated every one of them), focal_power / focal_power_grad pick it per element.
# The derivative is 0 at q == 0, where the gradient's second term is dropped (p (1 - p) is 0 there).
def focal_pow0(q, gamma):
    """q**0 = 1 (0**0 included; NaN for NaN q)."""
    return ONE + ZERO * q


def focal_dpow0(q, gamma):
    """d q**0 / dq: 0."""
    return ZERO * gamma


def focal_pow1(q, gamma):
    """q**1."""
    return q


def focal_dpow1(q, gamma):
    """d q / dq = 1; 0 at q == 0."""
    return ONE if q != ZERO else ZERO


def focal_pow2(q, gamma):
    """q**2 (the usual gamma)."""
    return q * q


def focal_dpow2(q, gamma):
    """2 q."""
    return q + q


def focal_pow3(q, gamma):
    """q**3."""
    return q * q * q


def focal_dpow3(q, gamma):
    """3 q**2."""
    return (q + q + q) * q


def focal_pow_m1(q, gamma):
    """q**(gamma - 1) for q > 0 (one log, one exp), 0 at q == 0, NaN for q < 0 (as torch.pow of a negative
    base to a fractional power)."""
    if q == ZERO:
        return q
    return exp((gamma - ONE) * log(q))


def focal_pow(q, gamma):
    """q**gamma for any gamma, as q q**(gamma - 1): the exponential it shares with focal_dpow."""
    return q * focal_pow_m1(q, gamma)


def focal_dpow(q, gamma):
    """gamma q**(gamma - 1) for any gamma (0 at q == 0)."""
    return gamma * focal_pow_m1(q, gamma)


def focal_power(q, gamma):
    """q**gamma, by the pair for gamma (integer gammas 0 to 3 by multiplication)."""
    if gamma == TWO:
        return focal_pow2(q, gamma)
    if gamma == ZERO:
        return focal_pow0(q, gamma)
    if gamma == ONE:
        return focal_pow1(q, gamma)
    if gamma == THREE:
        return focal_pow3(q, gamma)
    return focal_pow(q, gamma)


def focal_power_grad(q, gamma):
    """gamma q**(gamma - 1), 0 at q == 0 and for gamma == 0 (see focal_power)."""
    if gamma == TWO:
        return focal_dpow2(q, gamma)
    if gamma == ZERO:
        return focal_dpow0(q, gamma)
    if gamma == ONE:
        return focal_dpow1(q, gamma)
    if gamma == THREE:
        return focal_dpow3(q, gamma)
    return focal_dpow(q, gamma)


def focal_alpha_t(t, alpha):
    """alpha t + (1 - alpha)(1 - t), or 1 where alpha < 0 (the weighting off)."""
    if alpha < ZERO:
        return ONE + ZERO * t
    return alpha * t + (ONE - alpha) * (ONE - t)


def focal_q_e(x, t, e):
    """1 - p_t = sigmoid(x) (1 - t) + sigmoid(-x) t, given e = exp(-|x|), without the cancellation of
    1 - p_t where p_t is close to 1."""
    return sigmoid_point_e(x, e) * (ONE - t) + sigmoid_point_e(-x, e) * t


def sigmoid_focal_point_qg_e(x, t, alpha, e, qg):
    """alpha_t qg bce_with_logits(x, t) given e = exp(-|x|) and qg = (1 - p_t)**gamma."""
    return focal_alpha_t(t, alpha) * bce_logits_point_e(x, t, ONE, e) * qg


def sigmoid_focal_point_grad_qg_e(x, t, alpha, e, qg, dqg):
    """d / dx = alpha_t ((p - t) qg + ce dqg p (1 - p) (1 - 2 t)), p = sigmoid(x), given e = exp(-|x|),
    qg = q**gamma and dqg = gamma q**(gamma - 1) (q = 1 - p_t, dq/dx = p (1 - p) (1 - 2 t)). The second
    term is dropped where dqg == 0 (at q == 0, and for gamma == 0): there its ce may be inf or NaN."""
    s = sigmoid_point_e(x, e)
    sm = sigmoid_point_e(-x, e)
    g = (s - t) * qg
    if dqg != ZERO:
        g += bce_logits_point_e(x, t, ONE, e) * dqg * (s * sm) * (ONE - (t + t))
    return focal_alpha_t(t, alpha) * g


def sigmoid_focal_point_e(x, t, alpha, gamma, e):
    """alpha_t (1 - p_t)**gamma bce_with_logits(x, t), p_t = p t + (1 - p)(1 - t), p = sigmoid(x), given
    e = exp(-|x|)."""
    return sigmoid_focal_point_qg_e(x, t, alpha, e, focal_power(focal_q_e(x, t, e), gamma))


def sigmoid_focal_point_grad_e(x, t, alpha, gamma, e):
    """d focal / dx given e = exp(-|x|) (see sigmoid_focal_point_grad_qg_e)."""
    q = focal_q_e(x, t, e)
    return sigmoid_focal_point_grad_qg_e(x, t, alpha, e, focal_power(q, gamma), focal_power_grad(q, gamma))


def sigmoid_focal_point(x, t, alpha, gamma):
    """The focal loss of logit x (see sigmoid_focal_point_e)."""
    return sigmoid_focal_point_e(x, t, alpha, gamma, exp_neg_abs_point(x))


def sigmoid_focal_point_grad(x, t, alpha, gamma):
    """d focal / dx (see sigmoid_focal_point_grad_e)."""
    return sigmoid_focal_point_grad_e(x, t, alpha, gamma, exp_neg_abs_point(x))


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
    stirling_point, poisson_nll_log_point, poisson_nll_log_point_grad, poisson_nll_point, poisson_nll_point_grad,
    poisson_nll_log_full_point, poisson_nll_full_point,
    gaussian_nll_point, gaussian_nll_full_point, gaussian_nll_point_grad, gaussian_nll_point_grad_var,
    soft_margin_point_e, soft_margin_point_grad_e, soft_margin_point, soft_margin_point_grad,
    focal_pow0, focal_dpow0, focal_pow1, focal_dpow1, focal_pow2, focal_dpow2, focal_pow3, focal_dpow3,
    focal_pow_m1, focal_pow, focal_dpow, focal_power, focal_power_grad, focal_alpha_t, focal_q_e,
    sigmoid_focal_point_qg_e, sigmoid_focal_point_grad_qg_e, sigmoid_focal_point_e, sigmoid_focal_point_grad_e,
    sigmoid_focal_point, sigmoid_focal_point_grad,
)


def compile_point_functions(compile_one, elementary, constants=None):
    """Compile every function of ``POINT_FUNCTIONS`` with ``compile_one`` and return them as a module.

    ``compile_one``: a decorator, e.g. ``fastloss._jit.device`` or ``numba.cuda.jit(device=True)``.
    ``elementary``: ``{"exp": ..., "log": ..., "log1p": ...}``, the elementary functions for that target.

    The plain functions call each other by name; each is re-bound to a namespace in which those names
    (and ``exp``/``log``/``log1p``, ``math`` and ``POINT_CONSTANTS``) are the compiled versions for the
    target, so the same source serves the CPU and CUDA. ``constants`` overrides entries of
    ``POINT_CONSTANTS``: ``point_constants(np.float32)`` for float32 arithmetic. The returned object is
    a module so that jitted kernels can call ``P.l1_point(r)`` (Numba resolves module attributes at
    compile time).
    """
    namespace = {"math": math, **POINT_CONSTANTS, **(constants or {}), **elementary}
    compiled = types.ModuleType(f"{__name__}.points")
    for fn in POINT_FUNCTIONS:
        rebound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
        rebound.__qualname__, rebound.__module__, rebound.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        namespace[fn.__name__] = compile_one(rebound)
        setattr(compiled, fn.__name__, namespace[fn.__name__])
    return compiled


#: What ``from .points import *`` gives the package: the one-point functions and their constants.
__all__ = [fn.__name__ for fn in POINT_FUNCTIONS] + list(POINT_CONSTANTS) + [
    "POINT_CONSTANTS", "POINT_FUNCTIONS", "compile_point_functions", "point_constants"]
