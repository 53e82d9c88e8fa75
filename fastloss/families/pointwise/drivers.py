"""The pointwise family's drivers, called by :mod:`fastloss.api` with checked NumPy arrays."""
from __future__ import annotations

import math

import numpy as np

from ..._dispatch import scalar_result
from .blocks import (_DIRECT, _bce_chunk, _bce_logits_chunk, _bce_logits_f32_chunk, _gaussian_nll_chunk,
                     _gaussian_nll_full_chunk, _gaussian_nll_var_chunk, _huber_chunk, _kl_div_chunk,
                     _kl_div_log_target_chunk, _l1_chunk, _mape_chunk, _mse_chunk, _poisson_nll_chunk,
                     _poisson_nll_full_chunk, _poisson_nll_log_chunk, _poisson_nll_log_full_chunk,
                     _sigmoid_focal_chunk, _sigmoid_focal_f32_chunk, _smooth_l1_chunk, _soft_margin_chunk,
                     _soft_margin_f32_chunk)
from .loops import (_broadcast_operand, _constant_operand, _flat, _nchunks, _outside_unit_interval_chunk,
                    _run_chunks, _sum_chunk)


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


_POISSON = {(True, False): _poisson_nll_log_chunk, (True, True): _poisson_nll_log_full_chunk,
            (False, False): _poisson_nll_chunk, (False, True): _poisson_nll_full_chunk}


def poisson_nll(x, t, log_input, full, eps, reduction, grad):
    """poisson_nll_loss: ``exp(x) - t x`` (log_input) or ``x - t log(x + eps)``, plus Stirling's term of
    ``log(t!)`` where ``t > 1`` (full)."""
    return _run(_POISSON[bool(log_input), bool(full)], x, t, reduction, grad, a=eps)


def gaussian_var_operand(x, var):
    """``var`` (a float, or an array of one of the shapes torch accepts) as an array that broadcasts to
    ``x``: a 0-d array of x's dtype for a float; ``var[..., None]`` for ``x.shape[:-1]`` (torch's
    unsqueeze); the array itself otherwise."""
    if not hasattr(var, "shape"):
        return np.asarray(var, dtype=x.dtype)
    if tuple(var.shape) != tuple(x.shape) and tuple(var.shape) == tuple(x.shape[:-1]):
        return var.reshape(tuple(var.shape) + (1,))
    return var


def gaussian_nll(x, t, var, full, eps, reduction, grad):
    """gaussian_nll_loss: ``0.5 (log(max(v, eps)) + (x - t)**2 / max(v, eps))`` (+ 0.5 log(2 pi), full).

    ``var``: a float (gradient w.r.t. ``x`` alone) or an array (gradients w.r.t. ``(x, var)``). The
    gradient w.r.t. var is a second pass over the broadcast, summed over var's broadcast axes.
    """
    vb = gaussian_var_operand(x, var)
    chunk = _gaussian_nll_full_chunk if full else _gaussian_nll_chunk
    result = _run(chunk, x, t, reduction, grad, a=eps, pos_weight=vb)
    if grad is None or not hasattr(var, "shape"):
        return result
    value, (gx,) = result
    gvar = grad.out_for(1, var)
    same = tuple(vb.shape) == tuple(x.shape)
    buf = gvar if same else np.empty(x.shape, dtype=x.dtype)
    if reduction == "none":
        _fused(_gaussian_nll_var_chunk, x, t, a=eps, pos_weight=vb, grad_output=grad.array(x.shape, x.dtype),
               gscale=1.0, gout=buf)
    else:
        divisor = 1.0 if reduction == "sum" else float(x.size)
        _fused(_gaussian_nll_var_chunk, x, t, a=eps, pos_weight=vb, gscale=_ratio(grad.scalar(), divisor),
               gout=buf)
    if not same:
        axes = tuple(k for k, (m, n) in enumerate(zip(vb.shape, x.shape)) if m != n)
        gvar.reshape(vb.shape)[...] = buf.sum(axis=axes, keepdims=True, dtype=np.float64)
    return value, (gx, gvar)


def soft_margin(x, t, reduction, grad):
    """soft_margin_loss: ``log(1 + exp(-t x))``, evaluated without overflow."""
    return _run(_soft_margin_f32_chunk if x.dtype == np.float32 else _soft_margin_chunk, x, t, reduction, grad)


def multilabel_soft_margin(x, t, w, reduction, grad):
    """multilabel_soft_margin_loss: per row, the mean over the classes (last axis) of the weighted BCE of
    logits; then 'none' (one value per row), 'mean' over rows or 'sum'."""
    chunk = _bce_logits_f32_chunk if x.dtype == np.float32 else _bce_logits_chunk
    n_classes = x.shape[-1]
    gout = grad.out_for(0, x) if grad is not None else None
    if reduction == "none":
        values = np.empty(x.shape, dtype=x.dtype)
        # grad_output has one value per row: as (..., 1) it is a broadcast operand without a copy
        go = grad.array(x.shape[:-1], x.dtype)[..., None] if grad is not None else None
        _fused(chunk, x, t, weight=w, values=values, grad_output=go, gscale=_ratio(1.0, n_classes), gout=gout)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = (values.sum(axis=-1, dtype=np.float64) / n_classes).astype(x.dtype)
    else:
        divisor = float(n_classes if reduction == "sum" else x.size)
        gscale = _ratio(grad.scalar(), divisor) if grad is not None else 0.0
        total = _fused(chunk, x, t, weight=w, gscale=gscale, gout=gout)
        value = scalar_result(_ratio(total, divisor), x.dtype)
    return value if grad is None else (value, (gout,))


def sigmoid_focal(x, t, alpha, gamma, reduction, grad):
    """torchvision's sigmoid_focal_loss: ``alpha_t (1 - p_t)**gamma bce_with_logits(x, t)``."""
    chunk = _sigmoid_focal_f32_chunk if x.dtype == np.float32 else _sigmoid_focal_chunk
    return _run(chunk, x, t, reduction, grad, a=gamma,
                pos_weight=np.asarray(alpha, dtype=x.dtype))
