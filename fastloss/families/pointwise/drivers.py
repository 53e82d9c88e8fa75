"""The pointwise family's drivers, called by :mod:`fastloss.api` with checked NumPy arrays."""
from __future__ import annotations

import math

import numpy as np

from ..._dispatch import scalar_result
from .blocks import (_DIRECT, _bce_chunk, _bce_logits_chunk, _bce_logits_f32_chunk, _huber_chunk,
                     _kl_div_chunk, _kl_div_log_target_chunk, _l1_chunk, _mape_chunk, _mse_chunk,
                     _smooth_l1_chunk)
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
