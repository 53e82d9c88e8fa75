"""The kernels of the CUDA pointwise family: the one-point maths compiled for CUDA and the fused passes.

The one-point functions are *not* rewritten here: the very functions of ``pointwise.POINT_FUNCTIONS``
are compiled with ``cuda.jit(device=True)`` (``compile_point_functions``), twice: for float64 data with
CUDA's float64 ``exp``/``log``/``log1p``, and for float32 data with the float32 ones (libdevice's
``__nv_expf`` etc., ``ex2.approx.f32``/``lg2.approx.f32`` at heart, several times faster than float64,
32-64x on consumer GPUs). Each compilation binds the formulas' constants in its precision
(``point_constants``), so with float32 arguments the one-point maths is float32 throughout
(``tests/test_cuda_points.py`` reads the PTX); a float64 argument (an option, an absent operand's
default) widens what it touches.

Two grid-stride kernels per precision serve every loss. Each thread walks elements ``i, i + gridsize,
...``; per element it evaluates the loss ``f`` and its derivative ``d``, stores ``w * f`` for
``reduction='none'`` and the gradient ``gscale * grad_output * w * d`` in the same pass, and adds ``w *
f`` to a float64 running sum. The block's threads combine their sums in shared memory, each block leaves
one partial, and one more block adds the partials in a fixed order: deterministic, no float atomics.

* ``_fast_*`` (the common case): every operand other than the input (target, weight, pos_weight) is
  absent, a single value, or a full C-contiguous array of the input's shape, read at the element's own
  index: no integer division or modulo anywhere in the loop, whose loads coalesce.
* ``_broadcast_*`` (rarer): operands broadcast along some axes, ``(flat, q, p)`` as on the CPU: element
  ``i`` reads ``flat[(i // q) % p]`` (64-bit division, one per operand and element).

The loss is a kernel argument tested once per element; every thread of a launch takes the same branch,
so it costs a few uniform instructions next to the memory traffic that bounds the kernel.
"""
from __future__ import annotations

import math
import types

import numpy as np
from numba import cuda, float32, float64

from ... import _cuda_arrays as D
from ..._cuda_arrays import TPB, incoming_at
from ..pointwise import compile_point_functions, point_constants



def _ieee(fn, dtype):
    """``fn`` of a NumPy scalar of ``dtype``, for the simulator: CUDA's exp/log return inf and -inf where
    Python's ``math`` raises (log(0), exp(1000)); NumPy gives the same IEEE results, in the same precision."""

    def ieee(v):
        with np.errstate(all="ignore"):
            return fn(dtype(v))

    ieee.__name__ = fn.__name__
    return ieee


@cuda.jit(device=True)
def _exp32(v):
    return math.exp(float32(v))


@cuda.jit(device=True)
def _log32(v):
    return math.log(float32(v))


@cuda.jit(device=True)
def _log1p32(v):
    return math.log1p(float32(v))


def _elementary(dtype):
    """The elementary functions of the one-point maths for data of ``dtype`` on this target."""
    if D.SIMULATOR:
        return {name: _ieee(getattr(np, name), dtype) for name in ("exp", "log", "log1p")}
    if dtype == np.float32:
        return {"exp": _exp32, "log": _log32, "log1p": _log1p32}
    return {"exp": math.exp, "log": math.log, "log1p": math.log1p}


#: The one-point functions of pointwise.py, compiled as CUDA device functions for float64 and float32 data:
#: P32 with float32 constants, so that with float32 arguments each is float32 arithmetic throughout.
P64 = compile_point_functions(cuda.jit(device=True), _elementary(np.float64), point_constants(np.float64))
P32 = compile_point_functions(cuda.jit(device=True), _elementary(np.float32), point_constants(np.float32))

block_sum, _ = D.block_reductions(globals())

# Loss ids (a branch taken the same way by every thread of a launch).
L1, MSE, SMOOTH_L1, HUBER, MAPE, BCE, BCE_LOGITS, KL_DIV, KL_DIV_LOG_TARGET = range(9)
(POISSON_LOG, POISSON_LOG_FULL, POISSON, POISSON_FULL, GAUSSIAN, GAUSSIAN_FULL, GAUSSIAN_VAR, SOFT_MARGIN,
 SIGMOID_FOCAL) = range(9, 18)

# How a gradient is divided by a denominator held on the device (den_buf[0]).
NO_DEN, DIVIDE, DIVIDE_OR_ZERO = 0, 1, 2

# How the fast kernels read an operand: absent (its neutral value), one value for all, one per element.
ABSENT, SCALAR, FULL = 0, 1, 2


def _specialise(template, name, **bindings):
    """``template`` compiled with some of its globals bound (e.g. ``P`` to the float32 functions).

    Module-level kernels and device functions are built this way from one written template (as
    ``_cuda_arrays.block_reductions`` does); kernels carry their module-level name for the real-target
    compile test (``_fastloss_locator``).
    """
    namespace = dict(globals())
    namespace.update(bindings)
    fn = types.FunctionType(template.__code__, namespace, name, template.__defaults__)
    fn.__qualname__, fn.__doc__ = name, template.__doc__
    return fn


def _kernel(template, name, **bindings):
    fn = _specialise(template, name, **bindings)
    # The block reductions bound to the kernel's own namespace: the simulator swaps ``cuda`` in the
    # kernel's globals for the launch, and a block_sum reading another namespace's ``cuda`` races
    # (see _cuda_arrays.block_reductions).
    fn.__globals__["block_sum"] = D.block_reductions(fn.__globals__)[0]
    kernel = D.jit_kernel(fn)
    kernel._fastloss_locator = {"function": [__name__, name]}
    return kernel


def _point(kind, a, x, t, pw):
    """``(loss, d loss / d x)`` of one element for loss ``kind``.

    ``a``: beta, delta, eps (Poisson, Gaussian) or gamma (focal); ``pw``: pos_weight, the variance
    (Gaussian) or alpha (focal). GAUSSIAN_VAR gives ``(0, d loss / d var)``.
    """
    if kind == L1:
        return P.l1_point(x - t), P.l1_point_grad(x - t)
    if kind == MSE:
        return P.mse_point(x - t), P.mse_point_grad(x - t)
    if kind == SMOOTH_L1:
        return P.smooth_l1_point(x - t, a), P.smooth_l1_point_grad(x - t, a)
    if kind == HUBER:
        return P.huber_point(x - t, a), P.huber_point_grad(x - t, a)
    if kind == MAPE:
        return P.mape_point(x, t), P.mape_point_grad(x, t)
    if kind == BCE:
        return P.bce_point(x, t), P.bce_point_grad(x, t)
    if kind == BCE_LOGITS:
        return P.bce_logits_point(x, t, pw), P.bce_logits_point_grad(x, t, pw)
    if kind == KL_DIV:
        return P.kl_div_point(x, t), P.kl_div_point_grad(x, t)
    if kind == KL_DIV_LOG_TARGET:
        return P.kl_div_log_target_point(x, t), P.kl_div_log_target_point_grad(x, t)
    if kind == POISSON_LOG:
        return P.poisson_nll_log_point(x, t), P.poisson_nll_log_point_grad(x, t)
    if kind == POISSON_LOG_FULL:
        return P.poisson_nll_log_full_point(x, t), P.poisson_nll_log_point_grad(x, t)
    if kind == POISSON:
        return P.poisson_nll_point(x, t, a), P.poisson_nll_point_grad(x, t, a)
    if kind == POISSON_FULL:
        return P.poisson_nll_full_point(x, t, a), P.poisson_nll_point_grad(x, t, a)
    if kind == GAUSSIAN:
        return P.gaussian_nll_point(x - t, pw, a), P.gaussian_nll_point_grad(x - t, pw, a)
    if kind == GAUSSIAN_FULL:
        return P.gaussian_nll_full_point(x - t, pw, a), P.gaussian_nll_point_grad(x - t, pw, a)
    if kind == GAUSSIAN_VAR:
        return 0.0, P.gaussian_nll_point_grad_var(x - t, pw, a)
    if kind == SOFT_MARGIN:
        return P.soft_margin_point(x, t), P.soft_margin_point_grad(x, t)
    return P.sigmoid_focal_point(x, t, pw, a), P.sigmoid_focal_point_grad(x, t, pw, a)


point64 = cuda.jit(device=True)(_specialise(_point, "point64", P=P64))
point32 = cuda.jit(device=True)(_specialise(_point, "point32", P=P32))


@cuda.jit(device=True)
def gradient_factor(gscale, den_buf, den_mode):
    """``gscale / den_buf[0]`` (DIVIDE), 0 where that denominator is 0 (DIVIDE_OR_ZERO: rmse's
    subgradient), or ``gscale`` (NO_DEN): read and divided once per thread, not per element."""
    if den_mode == NO_DEN:
        return gscale
    d = den_buf[0]
    if den_mode == DIVIDE_OR_ZERO and d == 0.0:
        return 0.0
    return gscale / d


@cuda.jit(device=True)
def at(flat, mode, i, absent):
    """Operand value of element ``i`` for the fast kernels (see ABSENT, SCALAR, FULL)."""
    if mode == FULL:
        return flat[i]
    if mode == SCALAR:
        return flat[0]
    return absent


@cuda.jit(device=True)
def operand(flat, q, p, i, absent):
    """Element ``i`` of a broadcast operand ``(flat, q, p)``; ``absent`` when ``p == 0``."""
    if p == 0:
        return absent
    return flat[(i // q) % p]


def _fast(kind, a, x, t, tm, w, wm, pw, pwm, store, vout, want_grad, gscale, gs, gv, gstep, den_buf, den_mode,
          gout, parts):
    """One fused pass of loss ``kind`` over the flat input ``x``; operands read per ``tm``, ``wm``,
    ``pwm`` (ABSENT, SCALAR or FULL).

    ``store``: write ``w * f`` to ``vout`` (reduction='none'). ``want_grad``: write
    ``gscale * grad_output_i * w * d`` (divided per ``den_mode``) to ``gout``, which may be ``x``
    itself: each element is read before the same thread writes it. Leaves this block's float64 sum
    of ``w * f`` in ``parts[blockIdx]``. A while loop: ``range`` with a step divides to count its trips.
    """
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    factor = gradient_factor(gscale, den_buf, den_mode) if want_grad else 0.0
    n = x.shape[0]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        wi = at(w, wm, i, 1.0)
        f, d = point(kind, a, x[i], at(t, tm, i, 0.0), at(pw, pwm, i, 1.0))
        v = wi * f
        acc += v
        if store:
            vout[i] = v
        if want_grad:
            gout[i] = factor * incoming_at(gs, gv, gstep, i) * wi * d
        i += stride
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


def _broadcast(kind, a, x, t, tq, tp, w, wq, wp, pw, pwq, pwp, store, vout, want_grad, gscale, gs, gv, gstep,
               den_buf, den_mode, gout, parts):
    """As the fast pass, with broadcast operands ``(flat, q, p)`` (see :func:`operand`)."""
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    factor = gradient_factor(gscale, den_buf, den_mode) if want_grad else 0.0
    n = x.shape[0]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        wi = operand(w, wq, wp, i, 1.0)
        f, d = point(kind, a, x[i], operand(t, tq, tp, i, 0.0), operand(pw, pwq, pwp, i, 1.0))
        v = wi * f
        acc += v
        if store:
            vout[i] = v
        if want_grad:
            gout[i] = factor * incoming_at(gs, gv, gstep, i) * wi * d
        i += stride
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


_fast_f64 = _kernel(_fast, "_fast_f64", point=point64)
_fast_f32 = _kernel(_fast, "_fast_f32", point=point32)
_broadcast_f64 = _kernel(_broadcast, "_broadcast_f64", point=point64)
_broadcast_f32 = _kernel(_broadcast, "_broadcast_f32", point=point32)


@D.jit_kernel
def _sum_middle_axis(src, n_mid, n_inner, scale, out):
    """``out[a, b] = scale * sum_k src[a, k, b]`` for the flat C-contiguous ``src`` of shape
    ``(n_outer, n_mid, n_inner)``, summed in float64: one thread per output element."""
    n = out.shape[0]
    j = cuda.grid(1)
    stride = cuda.gridsize(1)
    while j < n:
        a = j // n_inner
        b = j - a * n_inner
        acc = 0.0
        base = a * n_mid * n_inner + b
        for k in range(n_mid):
            acc += float64(src[base + k * n_inner])
        out[j] = acc * scale
        j += stride


@D.jit_kernel
def _sum_pass(x, parts):
    """Per-block float64 sums of the flat array ``x`` (the denominator sum(weight) of a weighted mean)."""
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    n = x.shape[0]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        acc += float64(x[i])
        i += stride
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total

