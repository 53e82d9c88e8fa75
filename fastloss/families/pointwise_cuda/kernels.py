"""The kernels of the CUDA pointwise family: the one-point maths compiled for CUDA and the fused passes.

The one-point functions are *not* rewritten here: the very functions of ``pointwise.POINT_FUNCTIONS``
are compiled with ``cuda.jit(device=True)`` (``compile_point_functions``), twice: for float64 data with
CUDA's float64 ``exp``/``log``/``log1p``, and for float32 data with the float32 ones (libdevice's
``__nv_expf`` etc., ``ex2.approx.f32``/``lg2.approx.f32`` at heart, several times faster than float64,
32-64x on consumer GPUs). Each compilation binds the formulas' constants in its precision
(``point_constants``), so with float32 arguments the one-point maths is float32 throughout
(``tests/test_cuda_points.py`` reads the PTX); a float64 argument (an option, an absent operand's
default) widens what it touches.

Two passes serve every loss, each written once as a template and compiled per loss and per case
(``_cuda_arrays.kernel_factory``: built on first use, once per key, so only the combinations a program
calls are ever compiled). Each thread walks its share of the elements; per element it evaluates the
loss ``f`` and its derivative ``d``, stores ``w * f`` for ``reduction='none'`` and the gradient
``gscale * grad_output * w * d`` in the same pass (all in the data's precision), and adds ``w * f`` to a
float64 running sum. The block's threads combine their sums in shared memory, each block leaves one
partial, and one more block adds the partials in a fixed order: deterministic, no float atomics.

* :func:`fast_kernel` (the common case): every operand other than the input (target, weight,
  pos_weight) is absent, a single value, or a full C-contiguous array of the input's shape, read at the
  element's own index: no integer division or modulo anywhere. Keyed on the dtype, the loss, the three
  operands' modes, ``store``, ``want_grad`` and the vector width: the loss's branch of :func:`_point`
  and the mode tests are constants that the compiler folds, so a kernel holds only its own loss's maths
  (MSE's has no ``ex2``/``lg2``). When every array it streams is 16-byte aligned (the drivers check the
  device pointers), each thread moves 4 float32 or 2 float64 elements per load and store
  (:mod:`fastloss._cuda_vector`); otherwise the same template with width 1.
* :func:`broadcast_kernel` (rarer): operands broadcast along some axes, ``(flat, q, p)`` as on the CPU:
  element ``i`` reads ``flat[(i // q) % p]`` (64-bit division, one per operand and element). Keyed on
  the dtype, the loss, ``store`` and ``want_grad``; the operands' layout stays a kernel argument.

What stays a runtime argument is uniform and read once per thread: the loss's parameter ``a``, the
gradient's scale and denominator (``den_mode``) and the incoming gradient's form (``gstep``).
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np
from numba import cuda, float32, float64

from ... import _cuda_arrays as D
from ... import _cuda_vector as V
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

# Loss ids (compile-time constants of the specialised kernels, see _point).
L1, MSE, SMOOTH_L1, HUBER, MAPE, BCE, BCE_LOGITS, KL_DIV, KL_DIV_LOG_TARGET = range(9)
(POISSON_LOG, POISSON_LOG_FULL, POISSON, POISSON_FULL, GAUSSIAN, GAUSSIAN_FULL, GAUSSIAN_VAR, SOFT_MARGIN,
 SIGMOID_FOCAL) = range(9, 18)
N_KINDS = 18

# How a gradient is divided by a denominator held on the device (den_buf[0]).
NO_DEN, DIVIDE, DIVIDE_OR_ZERO = 0, 1, 2

# How the fast kernels read an operand: absent (its neutral value), one value for all, one per element.
ABSENT, SCALAR, FULL = 0, 1, 2


def _specialise(template, name, **bindings):
    """``template`` compiled with some of its globals bound (e.g. ``P`` to the float32 functions).

    Specialised kernels and device functions are built this way from one written template (as
    ``_cuda_arrays.block_reductions`` does): each binding is a constant of the compiled code, and the
    branches it decides are folded away. The kernel factories give each kernel the key that rebuilds
    it in a fresh process (the real-target compile test).
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
    return D.jit_kernel(fn)


def _point(a, x, t, pw):
    """``(loss, d loss / d x)`` of one element for the loss ``KIND`` (a constant bound per specialisation:
    the compiler keeps the one branch taken and drops the others, their transcendentals included).

    ``a``: beta, delta, eps (Poisson, Gaussian) or gamma (focal); ``pw``: pos_weight, the variance
    (Gaussian) or alpha (focal). GAUSSIAN_VAR gives ``(0, d loss / d var)``.
    """
    if KIND == L1:
        return P.l1_point(x - t), P.l1_point_grad(x - t)
    if KIND == MSE:
        return P.mse_point(x - t), P.mse_point_grad(x - t)
    if KIND == SMOOTH_L1:
        return P.smooth_l1_point(x - t, a), P.smooth_l1_point_grad(x - t, a)
    if KIND == HUBER:
        return P.huber_point(x - t, a), P.huber_point_grad(x - t, a)
    if KIND == MAPE:
        return P.mape_point(x, t), P.mape_point_grad(x, t)
    if KIND == BCE:
        return P.bce_point(x, t), P.bce_point_grad(x, t)
    if KIND == BCE_LOGITS:
        return P.bce_logits_point(x, t, pw), P.bce_logits_point_grad(x, t, pw)
    if KIND == KL_DIV:
        return P.kl_div_point(x, t), P.kl_div_point_grad(x, t)
    if KIND == KL_DIV_LOG_TARGET:
        return P.kl_div_log_target_point(x, t), P.kl_div_log_target_point_grad(x, t)
    if KIND == POISSON_LOG:
        return P.poisson_nll_log_point(x, t), P.poisson_nll_log_point_grad(x, t)
    if KIND == POISSON_LOG_FULL:
        return P.poisson_nll_log_full_point(x, t), P.poisson_nll_log_point_grad(x, t)
    if KIND == POISSON:
        return P.poisson_nll_point(x, t, a), P.poisson_nll_point_grad(x, t, a)
    if KIND == POISSON_FULL:
        return P.poisson_nll_full_point(x, t, a), P.poisson_nll_point_grad(x, t, a)
    if KIND == GAUSSIAN:
        return P.gaussian_nll_point(x - t, pw, a), P.gaussian_nll_point_grad(x - t, pw, a)
    if KIND == GAUSSIAN_FULL:
        return P.gaussian_nll_full_point(x - t, pw, a), P.gaussian_nll_point_grad(x - t, pw, a)
    if KIND == GAUSSIAN_VAR:
        return ZERO, P.gaussian_nll_point_grad_var(x - t, pw, a)
    if KIND == SOFT_MARGIN:
        return P.soft_margin_point(x, t), P.soft_margin_point_grad(x, t)
    return P.sigmoid_focal_point(x, t, pw, a), P.sigmoid_focal_point_grad(x, t, pw, a)


_DTYPES = {"float32": (float32, P32), "float64": (float64, P64)}


@functools.lru_cache(maxsize=None)
def point_function(dtype: str, kind: int):
    """The device function ``(a, x, t, pw) -> (loss, derivative)`` of loss ``kind`` for ``dtype`` data."""
    if kind not in range(N_KINDS):
        raise ValueError(f"unknown pointwise loss id {kind!r}")
    return cuda.jit(device=True)(_specialise(_point, f"point_{dtype}_{kind}", P=_DTYPES[dtype][1], KIND=kind,
                                             ZERO=point_constants(dtype)["ZERO"]))


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
def operand(flat, q, p, i, absent):
    """Element ``i`` of a broadcast operand ``(flat, q, p)``; ``absent`` when ``p == 0``."""
    if p == 0:
        return absent
    return float64(flat[(i // q) % p])


def _fast(a, x, t, w, pw, vout, gscale, gs, gv, gstep, den_buf, den_mode, gout, iters, parts):
    """One fused pass of loss ``KIND`` over the flat input ``x``, ``W`` consecutive elements per step.

    Bound per specialisation (see :func:`fast_kernel`): ``KIND``, ``DTYPE``, the operand modes ``TM``,
    ``WM``, ``PWM`` of target, weight, pos_weight (ABSENT: its neutral value; SCALAR: ``flat[0]`` for
    every element; FULL: one per element, read at the element's own index), ``STORE`` (write ``w * f``
    to ``vout``: reduction='none'), ``WANT_GRAD`` (write ``gscale * grad_output_i * w * d``, divided per
    ``den_mode``, to ``gout``, which may be ``x`` itself: a step loads its elements before it stores)
    and the width ``W``: thread ``i`` of the grid takes elements ``[W i, W i + W)``, then ``W`` times
    the grid size further, ``iters`` times (a trip count from the host: a grid-stride ``while`` loop
    is unrolled by LLVM behind a 64-bit division that counts its trips); every FULL array is read and
    every output written with one ``W``-wide access per step (16-byte ``ld.global.v4.f32`` /
    ``v2.f64`` when the host found every pointer 16-byte aligned; ``W = 1``, plain scalar accesses,
    otherwise). The last ``n % W`` elements go one each to the grid's first threads.

    Leaves this block's float64 sum of ``w * f`` in ``parts[blockIdx]``. Every per-element operation is
    in the data's precision ``DTYPE`` (float32 data: float32 arithmetic and transcendentals, see the
    module docstring): the loss's parameter ``a`` and the gradient's factor are rounded to it once per
    thread; only the running sum is float64.
    """
    buf = cuda.shared.array(TPB, float64)
    xs = cuda.local.array(W, DTYPE)  # the lanes of one step; constant indices only: registers
    ts = cuda.local.array(W, DTYPE)
    ws = cuda.local.array(W, DTYPE)
    pws = cuda.local.array(W, DTYPE)
    gvs = cuda.local.array(W, DTYPE)
    vs = cuda.local.array(W, DTYPE)
    ds = cuda.local.array(W, DTYPE)
    acc = 0.0
    ad = DTYPE(a)
    factor = gradient_factor(gscale, den_buf, den_mode) if WANT_GRAD else 0.0
    # operands equal for every element, read once per thread
    t_all = DTYPE(t[0]) if TM == SCALAR else DTYPE(0.0)
    w_all = DTYPE(w[0]) if WM == SCALAR else DTYPE(1.0)
    pw_all = DTYPE(pw[0]) if PWM == SCALAR else DTYPE(1.0)
    g_all = DTYPE(factor * incoming_at(gs, gv, gstep, 0)) if WANT_GRAD else DTYPE(0.0)  # gstep <= 0
    g_each = DTYPE(factor * gs)  # times grad_output_i (gstep > 0)
    n = x.shape[0]
    n_steps = n // W  # W is a power of two: a shift
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    for _ in range(iters):
        if i < n_steps:
            j = i * W
            vload(x, j, xs)
            if TM == FULL:
                vload(t, j, ts)
            if WM == FULL:
                vload(w, j, ws)
            if PWM == FULL:
                vload(pw, j, pws)
            if WANT_GRAD and gstep > 0:
                vload(gv, j, gvs)
            for k in range(W):
                wk = ws[k] if WM == FULL else w_all
                f, d = point(ad, xs[k], ts[k] if TM == FULL else t_all, pws[k] if PWM == FULL else pw_all)
                v = wk * f
                acc += float64(v)
                vs[k] = v
                if WANT_GRAD:
                    ds[k] = (g_each * gvs[k] if gstep > 0 else g_all) * wk * d
            if STORE:
                vstore(vout, j, vs)
            if WANT_GRAD:
                vstore(gout, j, ds)
        i += stride
    j = n_steps * W + cuda.grid(1)
    if W > 1 and j < n:
        wk = w[j] if WM == FULL else w_all
        f, d = point(ad, x[j], t[j] if TM == FULL else t_all, pw[j] if PWM == FULL else pw_all)
        v = wk * f
        acc += float64(v)
        if STORE:
            vout[j] = v
        if WANT_GRAD:
            gout[j] = (g_each * gv[j] if gstep > 0 else g_all) * wk * d
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


def _broadcast(a, x, t, tq, tp, w, wq, wp, pw, pwq, pwp, vout, gscale, gs, gv, gstep, den_buf, den_mode, gout,
               iters, parts):
    """As the fast pass (``W = 1``, arithmetic in ``DTYPE``), with broadcast operands ``(flat, q, p)``
    (see :func:`operand`)."""
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    ad = DTYPE(a)
    factor = gradient_factor(gscale, den_buf, den_mode) if WANT_GRAD else 0.0
    n = x.shape[0]
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    for _ in range(iters):
        if i < n:
            wi = DTYPE(operand(w, wq, wp, i, 1.0))
            f, d = point(ad, x[i], DTYPE(operand(t, tq, tp, i, 0.0)), DTYPE(operand(pw, pwq, pwp, i, 1.0)))
            v = wi * f
            acc += float64(v)
            if STORE:
                vout[i] = v
            if WANT_GRAD:
                gout[i] = DTYPE(factor * incoming_at(gs, gv, gstep, i)) * wi * d
        i += stride
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


def _check_key(dtype, kind, store, want_grad):
    if dtype not in _DTYPES or kind not in range(N_KINDS) or not isinstance(store, bool) or \
            not isinstance(want_grad, bool):
        raise ValueError(f"bad pointwise kernel key {(dtype, kind, store, want_grad)!r}")


@D.kernel_factory
def fast_kernel(dtype, kind, tm, wm, pwm, store, want_grad, width):
    """The fast pass (:func:`_fast`) for ``dtype`` ('float32' or 'float64') data, loss ``kind``, operand
    modes ``tm``, ``wm``, ``pwm``, ``store``, ``want_grad`` and vector width ``width`` (1, or
    ``_cuda_vector.width(dtype)``), compiled for exactly that: built on first use, once per key."""
    _check_key(dtype, kind, store, want_grad)
    if not all(m in (ABSENT, SCALAR, FULL) for m in (tm, wm, pwm)) or width not in (1, V.width(dtype)):
        raise ValueError(f"bad operand modes or width {(tm, wm, pwm, width)!r}")
    return _kernel(_fast, f"_fast_{dtype}_{kind}_{tm}{wm}{pwm}_{int(store)}{int(want_grad)}_w{width}",
                   point=point_function(dtype, kind), DTYPE=_DTYPES[dtype][0], TM=tm, WM=wm, PWM=pwm,
                   STORE=store, WANT_GRAD=want_grad, W=width, vload=V.loader(width), vstore=V.storer(width))


@D.kernel_factory
def broadcast_kernel(dtype, kind, store, want_grad):
    """The broadcast pass (:func:`_broadcast`) for ``dtype`` data, loss ``kind``, ``store`` and
    ``want_grad``, built on first use, once per key."""
    _check_key(dtype, kind, store, want_grad)
    return _kernel(_broadcast, f"_broadcast_{dtype}_{kind}_{int(store)}{int(want_grad)}",
                   point=point_function(dtype, kind), DTYPE=_DTYPES[dtype][0], STORE=store, WANT_GRAD=want_grad)


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

