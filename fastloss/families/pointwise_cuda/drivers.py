"""The drivers of the CUDA pointwise family (the losses but log_loss): operands laid out for the fused
passes of :mod:`.kernels`, reductions, and the second passes of rmse and of gaussian_nll's ``var``."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ... import _cuda_arrays as D
from ... import _cuda_vector as V
from .kernels import (ABSENT, BCE, BCE_LOGITS, DIVIDE, DIVIDE_OR_ZERO, FULL, GAUSSIAN, GAUSSIAN_FULL,
                      GAUSSIAN_VAR, HUBER, KL_DIV, KL_DIV_LOG_TARGET, L1, MAPE, MSE, NO_DEN, POISSON,
                      POISSON_FULL, POISSON_LOG, POISSON_LOG_FULL, SCALAR, SIGMOID_FOCAL, SMOOTH_L1, SOFT_MARGIN,
                      _sum_middle_axis, _sum_pass, broadcast_kernel, fast_kernel)


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
    The kernel is the one compiled for this loss, dtype, operand layout and outputs (see
    :mod:`.kernels`); the fast one moves 16-byte vectors when every array it streams is 16-byte aligned.
    """
    n = x.size
    xf = D.reshape(x, (n,))
    if not n:
        return D.partial_buffer(0, x)
    inc = inc if inc is not None else D.Incoming(1.0, xf, -1)
    dtype = np.dtype(x.dtype).name
    store, want_grad = vout is not None, gout is not None
    vflat = D.reshape(vout, (n,)) if store else xf
    gflat = D.reshape(gout, (n,)) if want_grad else xf
    fast = [_fast_operand(o, x.shape, xf) for o in (t, weight, pos_weight)]
    if all(f is not None for f in fast):
        streamed = [xf] + [flat for flat, mode in fast if mode == FULL] + [vflat] * store + [gflat] * want_grad
        if want_grad and inc.step > 0:
            streamed.append(inc.values)
        width = V.width(x.dtype) if inc.step <= 1 and V.aligned(streamed) else 1
        kernel = fast_kernel(dtype, kind, fast[0][1], fast[1][1], fast[2][1], store, want_grad, width)
        operands = (fast[0][0], fast[1][0], fast[2][0])
        steps = n // width  # the last n % width elements: one each for the grid's first threads
    else:
        kernel = broadcast_kernel(dtype, kind, store, want_grad)
        operands = (*_broadcast_operand(t, x.shape, xf), *_broadcast_operand(weight, x.shape, xf),
                    *_broadcast_operand(pos_weight, x.shape, xf))
        steps = n
    blocks = D.grid_blocks(steps, x)
    iters = -(-steps // (blocks * D.TPB))  # steps per thread: the kernels' trip count
    parts = D.partial_buffer(blocks, x)
    D.launch(kernel, blocks, x, float(a), xf, *operands, vflat, float(gscale), *inc.args(),
             den_buf if den_buf is not None else parts, den_mode, gflat, iters, parts)
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

