"""CUDA twin of the pointwise family: the same drivers as :mod:`fastloss.families.pointwise`, for GPU arrays.

The one-point functions are *not* rewritten here: the very functions of ``pointwise.POINT_FUNCTIONS``
are compiled with ``cuda.jit(device=True)`` (``compile_point_functions``), twice: for float64 data with
CUDA's float64 ``exp``/``log``/``log1p``, and for float32 data with the float32 ones (libdevice's
``__nv_expf`` etc., ``ex2.approx.f32``/``lg2.approx.f32`` at heart, several times faster than float64,
32-64x on consumer GPUs). The one-point formulas' constants are Python floats, so the cheap arithmetic
around them runs in float64 either way; the transcendentals, which dominate, run in the data's precision
(float32 results are within a few float32 ulps, far inside the project's 2e-5).

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
from numba import cuda, float32, float64, int64

from .. import _cuda_arrays as D
from .._cuda_arrays import TPB, incoming_at
from .pointwise import compile_point_functions


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


#: The one-point functions of pointwise.py, compiled as CUDA device functions for float64 and float32 data.
P64 = compile_point_functions(cuda.jit(device=True), _elementary(np.float64))
P32 = compile_point_functions(cuda.jit(device=True), _elementary(np.float32))

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
    kernel = cuda.jit(fn)
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


@cuda.jit
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


def _sum_axis(src, axis, out, scale=1.0):
    """``out`` (C-contiguous, ``src``'s shape without ``axis`` in its element count) = ``scale`` times the
    sum of the C-contiguous device array ``src`` over ``axis``."""
    shape = tuple(src.shape)
    n_mid, n_inner = shape[axis], math.prod(shape[axis + 1:])
    n = out.size
    if n:
        D.launch(_sum_middle_axis, D.blocks_for(n), src, D.reshape(src, (src.size,)), n_mid, n_inner, float(scale),
                 D.reshape(out, (n,)))
    return out


@cuda.jit
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


# --------------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------------
def _broadcast_operand(a, shape, like):
    """``a`` (a device array broadcastable to ``shape``, or ``None``) as ``(flat, q, p)``: element i of
    the flattened broadcast is ``flat[(i // q) % p]``; ``(like, 1, 0)`` for an absent operand.

    Exact without a copy of the broadcast when the axes along which ``a`` varies are contiguous (a
    full array, a scalar, ``(C,)`` against ``(N, C)``, ``(N, 1)`` against ``(N, C)``); any other
    broadcast is materialised on the device.
    """
    if a is None:
        return like, 1, 0
    shape = tuple(shape)
    a_shape = (1,) * (len(shape) - a.ndim) + tuple(a.shape)
    varying = [k for k, (m, full) in enumerate(zip(a_shape, shape)) if m != 1 and full != 1]
    if not varying:
        flat = D.reshape(D.contiguous(a), (a.size,))
        return (flat[:1], 1, 1) if a.size else (like, 1, 0)
    first, last = varying[0], varying[-1]
    if all(a_shape[k] == shape[k] for k in range(first, last + 1)):
        block = D.reshape(D.contiguous(a), a_shape)[
            tuple(slice(None) if first <= k <= last else slice(0, 1) for k in range(len(shape)))]
        block = D.contiguous(block)
        return D.reshape(block, (block.size,)), math.prod(shape[last + 1:]), math.prod(shape[first:last + 1])
    full = D.contiguous(D.broadcast_to(a, shape))
    return D.reshape(full, (full.size,)), 1, full.size


def _fast_operand(a, shape, like):
    """``a`` as ``(flat, mode)`` for the fast kernels (ABSENT, SCALAR or FULL), or ``None`` when it
    varies along some axes only (the broadcast kernels' case)."""
    if a is None or a.size == 0:
        return like, ABSENT
    if a.size == 1:
        return D.reshape(D.contiguous(a), (1,)), SCALAR
    if a.size == math.prod(shape) and np.broadcast_shapes(tuple(a.shape), tuple(shape)) == tuple(shape):
        return D.reshape(D.contiguous(a), (a.size,)), FULL
    return None


def _weight_sum(w, like):
    """float64 device buffer with ``sum(w)`` (w the same shape as the input)."""
    wf = D.reshape(D.contiguous(w), (w.size,))
    blocks = D.blocks_for(w.size)
    parts = D.partial_buffer(blocks if w.size else 0, like)
    if w.size:
        D.launch(_sum_pass, blocks, like, wf, parts)
    den = D.result_buffer(like, np.float64)
    D.finish_sum(parts, den)
    return den


def _ratio(num: float, den: float) -> float:
    """num / den with IEEE semantics (0 / 0 = NaN, x / 0 = +-inf), as torch's division."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def _pass(kind, x, t, *, a=0.0, weight=None, pos_weight=None, vout=None, gout=None, gscale=0.0,
          inc=None, den_buf=None, den_mode=NO_DEN):
    """Launch the fused pass over the C-contiguous ``x``; returns the per-block partial sums.

    ``vout``: per-element losses are stored there (reduction='none'); ``gout``: the gradient
    ``gscale * grad_output * w * d`` (divided per ``den_mode`` by ``den_buf[0]``) is stored there.
    """
    n = x.size
    xf = D.reshape(x, (n,))
    blocks = D.grid_blocks(n, x)
    parts = D.partial_buffer(blocks if n else 0, x)
    if not n:
        return parts
    inc = inc if inc is not None else D.Incoming(1.0, xf, -1)
    f32 = np.dtype(x.dtype) == np.float32
    tail = (vout is not None, D.reshape(vout, (n,)) if vout is not None else xf,
            gout is not None, float(gscale), *inc.args(), den_buf if den_buf is not None else parts,
            den_mode, D.reshape(gout, (n,)) if gout is not None else xf, parts)
    fast = [_fast_operand(o, x.shape, xf) for o in (t, weight, pos_weight)]
    if all(f is not None for f in fast):
        D.launch(_fast_f32 if f32 else _fast_f64, blocks, x, kind, float(a), xf, *fast[0], *fast[1], *fast[2],
                 *tail)
    else:
        D.launch(_broadcast_f32 if f32 else _broadcast_f64, blocks, x, kind, float(a), xf,
                 *_broadcast_operand(t, x.shape, xf), *_broadcast_operand(weight, x.shape, xf),
                 *_broadcast_operand(pos_weight, x.shape, xf), *tail)
    return parts


def _run(kind, x, t, reduction, grad, *, a=0.0, weight=None, pos_weight=None,
         weighted_mean=False, batch=None, scale=1.0):
    """Run the fused pass for one loss and shape its result as the API returns it.

    As the CPU family's ``_run``: ``reduction`` 'none', 'sum', 'mean' (by n, or by sum(weight) when
    ``weighted_mean``) or 'batchmean' (by ``batch``); ``scale`` multiplies the loss (the penalties'
    lam); ``t`` may be ``None`` (the penalties' 0). Returns the value, or ``(value, (grad,))`` when
    ``grad`` is a GradRequest.
    """
    x = D.contiguous(x)
    shape = tuple(x.shape)
    store = reduction == "none"
    divisor, den_buf, den_mode = 1.0, None, NO_DEN
    if reduction == "batchmean":
        divisor = float(batch)
    elif reduction == "mean" and weighted_mean:
        den_buf, den_mode = _weight_sum(weight, x), DIVIDE
    elif reduction == "mean":
        divisor = float(x.size)
    vout = D.empty(shape, x.dtype, x) if store else None
    gout = grad.out_for(0, x) if grad is not None else None
    inc = grad.incoming(shape if store else (), x) if grad is not None else None
    parts = _pass(kind, x, t, a=a, weight=weight, pos_weight=pos_weight, vout=vout, gout=gout,
                  gscale=_ratio(scale, divisor), inc=inc, den_buf=den_buf, den_mode=den_mode)
    if store:
        value = vout
    else:
        out = D.result_buffer(x)
        D.finish_sum(parts, out, den=divisor, den_buf=den_buf, factor=scale)
        value = D.scalar_view(out)
    return value if grad is None else (value, (gout,))


@D.on_input_device
def l1(x, t, w, reduction, grad):
    """l1_loss: ``w |x - t|``; weighted 'mean' is sum(w l) / sum(w), as torch 2.13."""
    return _run(L1, x, t, reduction, grad, weight=w, weighted_mean=w is not None)


@D.on_input_device
def mse(x, t, w, reduction, grad):
    """mse_loss: ``w (x - t)**2``; weighted 'mean' is sum(w l) / sum(w), as torch 2.13."""
    return _run(MSE, x, t, reduction, grad, weight=w, weighted_mean=w is not None)


@D.on_input_device
def smooth_l1(x, t, reduction, beta, grad):
    """smooth_l1_loss with threshold ``beta`` (beta = 0 is the L1 loss)."""
    return _run(SMOOTH_L1, x, t, reduction, grad, a=beta)


@D.on_input_device
def huber(x, t, w, reduction, delta, grad):
    """huber_loss with threshold ``delta``; weighted 'mean' is mean(w l), as torch 2.13."""
    return _run(HUBER, x, t, reduction, grad, a=delta, weight=w)


@D.on_input_device
def mape(x, t, reduction, grad):
    """mape_loss: ``|t - x| / max(|t|, eps)``."""
    return _run(MAPE, x, t, reduction, grad)


@D.on_input_device
def rmse(x, t, grad):
    """rmse_loss: ``sqrt(mean((x - t)**2))``, a 0-d result.

    Two passes: the root (kept in a float64 device buffer), then the gradient
    ``grad_output * (x - t) / (n * rmse)``, taken as 0 where rmse == 0 (the subgradient).
    """
    x = D.contiguous(x)
    n = x.size
    root = D.result_buffer(x, np.float64)
    D.finish_sum(_pass(MSE, x, t), root, den=float(n), root=True)
    value = D.scalar_view(D.astype(root, x.dtype))
    if grad is None:
        return value
    # d sqrt(m) / dx_i = (2 r_i / n) / (2 sqrt(m)): MSE's derivative 2 r, times 1 / (2 n), over rmse
    gout = grad.out_for(0, x)
    _pass(MSE, x, t, gout=gout, gscale=_ratio(0.5, n), inc=grad.incoming((), x), den_buf=root,
          den_mode=DIVIDE_OR_ZERO)
    return value, (gout,)


@D.on_input_device
def bce(x, t, w, reduction, grad):
    """binary_cross_entropy of probabilities ``x`` (logs clamped at -100); ``w`` broadcasts."""
    return _run(BCE, x, t, reduction, grad, weight=w)


@D.on_input_device
def bce_logits(x, t, w, pos_weight, reduction, grad):
    """binary_cross_entropy_with_logits; ``w`` and ``pos_weight`` broadcast to ``x``."""
    return _run(BCE_LOGITS, x, t, reduction, grad, weight=w, pos_weight=pos_weight)


@D.on_input_device
def kl_div(x, t, reduction, log_target, grad):
    """kl_div of log-probabilities ``x``; 'batchmean' divides the sum by ``x.shape[0]`` (1 for 0-d)."""
    kind = KL_DIV_LOG_TARGET if log_target else KL_DIV
    batch = x.shape[0] if x.ndim else 1
    return _run(kind, x, t, reduction, grad, batch=batch)


@D.on_input_device
def penalty(w, lam, p, grad):
    """``lam * sum(|w|)`` (p = 1) or ``lam / 2 * sum(w**2)`` (p = 2), with gradients ``lam sign(w)`` and
    ``lam w``."""
    if p == 1:
        return _run(L1, w, None, "sum", grad, scale=lam)
    return _run(MSE, w, None, "sum", grad, scale=0.5 * lam)


_POISSON_KINDS = {(True, False): POISSON_LOG, (True, True): POISSON_LOG_FULL, (False, False): POISSON,
                  (False, True): POISSON_FULL}


@D.on_input_device
def poisson_nll(x, t, log_input, full, eps, reduction, grad):
    """poisson_nll_loss: ``exp(x) - t x`` (log_input) or ``x - t log(x + eps)``, plus Stirling's term (full)."""
    return _run(_POISSON_KINDS[bool(log_input), bool(full)], x, t, reduction, grad, a=eps)


def _constant(value, like):
    """A one-element device array of ``like``'s dtype and library holding ``value``."""
    host = np.full((1,), value, dtype=np.dtype(like.dtype))
    if D.is_cupy(like):
        return D._cupy().asarray(host)
    return cuda.to_device(host)


@D.on_input_device
def gaussian_nll(x, t, var, full, eps, reduction, grad):
    """gaussian_nll_loss (see the CPU driver); ``var`` a float or a device array of a shape torch accepts.

    The gradient w.r.t. an array ``var`` is a second pass (GAUSSIAN_VAR) over the broadcast, summed
    over the one axis along which ``var`` broadcasts (if any).
    """
    x = D.contiguous(x)
    scalar = not hasattr(var, "shape")
    if scalar:
        vb = _constant(var, x)
    else:
        vb = D.contiguous(var)
        if tuple(vb.shape) != tuple(x.shape) and tuple(vb.shape) == tuple(x.shape[:-1]):
            vb = D.reshape(vb, tuple(vb.shape) + (1,))
    result = _run(GAUSSIAN_FULL if full else GAUSSIAN, x, t, reduction, grad, a=eps, pos_weight=vb)
    if grad is None or scalar:
        return result
    value, (gx,) = result
    gvar = grad.out_for(1, var)
    same = tuple(vb.shape) == tuple(x.shape)
    buf = gvar if same else D.empty(x.shape, x.dtype, x)
    store = reduction == "none"
    divisor = 1.0 if reduction != "mean" else float(x.size)
    _pass(GAUSSIAN_VAR, x, t, a=eps, pos_weight=vb, gout=buf, gscale=_ratio(1.0, divisor),
          inc=grad.incoming(tuple(x.shape) if store else (), x))
    if not same:
        axis = next(k for k, (m, n) in enumerate(zip(vb.shape, x.shape)) if m != n)
        _sum_axis(buf, axis, gvar)
    return value, (gx, gvar)


@D.on_input_device
def soft_margin(x, t, reduction, grad):
    """soft_margin_loss: ``log(1 + exp(-t x))``, evaluated without overflow."""
    return _run(SOFT_MARGIN, x, t, reduction, grad)


@D.on_input_device
def multilabel_soft_margin(x, t, w, reduction, grad):
    """multilabel_soft_margin_loss: per row the mean over the last axis of the weighted BCE of logits."""
    x = D.contiguous(x)
    shape = tuple(x.shape)
    n_classes = shape[-1]
    gout = grad.out_for(0, x) if grad is not None else None
    if reduction == "none":
        rows = shape[:-1]
        vout = D.empty(shape, x.dtype, x)
        inc = None
        if grad is not None:
            inc = grad.incoming(rows, x)
            if inc.step > 0:  # one value per row: spread along the classes
                per_row = D.reshape(inc.values, rows + (1,))
                full = D.contiguous(D.broadcast_to(per_row, shape))
                inc = D.Incoming(inc.scale, D.reshape(full, (full.size,)), 1)
        _pass(BCE_LOGITS, x, t, weight=w, vout=vout, gout=gout, gscale=_ratio(1.0, n_classes), inc=inc)
        value = D.empty(rows, x.dtype, x)
        _sum_axis(vout, len(shape) - 1, value, _ratio(1.0, n_classes))
    else:
        divisor = float(n_classes if reduction == "sum" else x.size)
        parts = _pass(BCE_LOGITS, x, t, weight=w, gout=gout, gscale=_ratio(1.0, divisor),
                      inc=grad.incoming((), x) if grad is not None else None)
        out = D.result_buffer(x)
        D.finish_sum(parts, out, den=divisor)
        value = D.scalar_view(out)
    return value if grad is None else (value, (gout,))


@D.on_input_device
def sigmoid_focal(x, t, alpha, gamma, reduction, grad):
    """torchvision's sigmoid_focal_loss: ``alpha_t (1 - p_t)**gamma bce_with_logits(x, t)``."""
    return _run(SIGMOID_FOCAL, x, t, reduction, grad, a=gamma, pos_weight=_constant(alpha, x))


# --------------------------------------------------------------------------------------------------
# log_loss (scikit-learn's)
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def divided(g, den_buf, den_mode):
    """``g / den_buf[0]`` (DIVIDE), or 0 where that denominator is 0 (DIVIDE_OR_ZERO), or ``g`` (NO_DEN)."""
    if den_mode == NO_DEN:
        return g
    d = den_buf[0]
    if den_mode == DIVIDE_OR_ZERO and d == 0.0:
        return 0.0
    return g / d


@cuda.jit(device=True)
def clipped(v, eps):
    """``clip(v, eps, 1 - eps)`` and whether the clip passes a gradient (``eps <= v <= 1 - eps``)."""
    if v < eps:
        return eps, False
    if v > 1.0 - eps:
        return 1.0 - eps, False
    return v, True


@cuda.jit
def _log_loss_rows(p, k, binary, cls, s, has_s, eps, want_grad, gs, gv, gstep, den_buf, den_mode, gout, parts):
    """``-s_r log(clip(P[r, y_r]))`` per row, P = ``p`` as ``(n, k)`` or, ``binary``, ``(1 - p, p)``.

    The gradient flows to the true class's probability only: ``-g s_r / clip(P[r, y_r])`` where the
    clip passes it (negated for the ``1 - p`` column of a binary ``p``); every other entry is 0.
    """
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    rows = cls.shape[0]
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        c = int64(cls[r])
        sr = float64(s[r]) if has_s else 1.0
        if binary:
            v = float64(p[r])
            q, inside = clipped(v if c == 1 else 1.0 - v, eps)
        else:
            q, inside = clipped(float64(p[r * k + c]), eps)
        acc += -sr * math.log(q)
        if want_grad:
            d = 0.0
            if inside:
                d = divided(-incoming_at(gs, gv, gstep, 0) * sr / q, den_buf, den_mode)
            if binary:
                gout[r] = d if c == 1 else -d
            else:
                for j in range(k):
                    gout[r * k + j] = d if j == c else 0.0
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


def _class_indices(y_true, labels, n_columns):
    """The class index of each ``y_true`` (sorted unique labels, or ``labels``), as scikit-learn.

    The label set must be known on the host: ``y_true`` (labels, small next to the probabilities) is
    copied there; the indices go back to the device.
    """
    yt = np.asarray(y_true.get() if D.is_cupy(y_true) else y_true.copy_to_host()).reshape(-1)
    classes = np.unique(np.asarray(labels) if labels is not None else yt)
    if classes.size != n_columns:
        where = "labels" if labels is not None else "y_true"
        raise ValueError(
            f"y_true and y_pred contain different number of classes: {classes.size} in {where} vs "
            f"{n_columns} columns of y_pred; pass the labels explicitly through the labels argument"
        )
    idx = np.searchsorted(classes, yt)
    if yt.size and (idx.max() >= classes.size or np.any(classes[np.minimum(idx, classes.size - 1)] != yt)):
        raise ValueError("y_true contains values not belonging to the passed labels")
    if D.is_cupy(y_true):
        return D._cupy().asarray(idx.astype(np.int64))
    return cuda.to_device(idx.astype(np.int64))


@D.on_input_device
def log_loss(y_true, y_pred, normalize, sample_weight, labels, grad):
    """scikit-learn 1.9's ``log_loss``: ``-sum_i s_i log(clip(p[i, y_i])) / sum_i s_i`` (the sum alone
    when not ``normalize``), clipped to ``[eps, 1 - eps]`` with ``eps`` the dtype's machine epsilon;
    a 1-D ``y_pred`` is the positive-class probability. Gradient with respect to ``y_pred``."""
    x = D.contiguous(y_pred)
    if x.ndim not in (1, 2):
        raise ValueError(f"y_pred must be (n,) or (n, k), got shape {tuple(x.shape)}")
    binary = x.ndim == 1
    n = int(x.shape[0])
    k = 2 if binary else int(x.shape[1])
    if y_true.size != n:
        raise ValueError(f"y_true has {y_true.size} labels for {n} rows of y_pred")
    lo_hi = D.value_range(x) if not D.is_cupy(x) else (float(x.min()), float(x.max())) if x.size else None
    if lo_hi is not None and (lo_hi[0] < 0.0 or lo_hi[1] > 1.0):
        bad = lo_hi[1] if lo_hi[1] > 1.0 else lo_hi[0]
        raise ValueError(f"y_pred must hold probabilities in [0, 1], found {bad}")
    cls = _class_indices(y_true, labels, k)
    s = None
    if sample_weight is not None:
        s = D.reshape(D.contiguous(D.astype(sample_weight, x.dtype)), (sample_weight.size,))
        if s.shape[0] != n:
            raise ValueError(f"sample_weight has {s.shape[0]} values for {n} rows of y_pred")
    den, den_buf, den_mode = 1.0, None, NO_DEN
    if normalize and s is not None:
        den_buf, den_mode = _weight_sum(s, x), DIVIDE
    elif normalize:
        den = float(n)
    gout = grad.out_for(0, y_pred) if grad is not None else None
    inc = grad.incoming((), x) if grad is not None else D.Incoming(1.0, x, -1)
    xf = D.reshape(x, (x.size,))
    blocks = D.blocks_for(n)
    parts = D.partial_buffer(blocks if n else 0, x)
    if n:
        scale, gv, gstep = inc.args()
        D.launch(_log_loss_rows, blocks, x, xf, k, binary, cls, s if s is not None else xf, s is not None,
                 float(np.finfo(x.dtype).eps), grad is not None, _ratio(scale, den), gv, gstep,
                 den_buf if den_buf is not None else parts, den_mode,
                 D.reshape(gout, (gout.size,)) if gout is not None else xf, parts)
    out = D.result_buffer(x)
    D.finish_sum(parts, out, den=den, den_buf=den_buf)
    value = D.scalar_view(out)
    return value if grad is None else (value, (gout,))
