"""The pointwise family's float64 NumPy references (the tests' ground truth) and PyTorch expressions."""
from __future__ import annotations

import numpy as np

# The references are the ground truth of the tests: plain float64 NumPy, one line per formula, written
# independently of the one-point functions (np.where instead of branches).


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


def _expit(x):
    """sigmoid without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def ref_poisson_nll_loss(input, target, log_input=True, full=False, eps=1e-8, reduction="mean", grad_output=None):
    x, t = np.asarray(input, np.float64), np.asarray(target, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_input:
            loss, d = np.exp(x) - t * x, np.exp(x) - t
        else:
            loss, d = x - t * np.log(x + eps), 1 - t / (x + eps)
        if full:
            loss = loss + np.where(t > 1, t * np.log(t) - t + 0.5 * np.log(2 * np.pi * t), 0.0)
    return _ref_reduce(loss, d, reduction, grad_output)


def ref_gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean", grad_output=None):
    x, t = np.asarray(input, np.float64), np.asarray(target, np.float64)
    scalar = not hasattr(var, "shape")
    v = np.asarray(var, np.float64)
    vb = v[..., None] if (not scalar and v.shape != x.shape and v.shape == x.shape[:-1]) else v
    vc = np.maximum(vb, eps)
    r = x - t
    loss = 0.5 * (np.log(vc) + r * r / vc) + (0.5 * np.log(2 * np.pi) if full else 0.0)
    value, (gx,) = _ref_reduce(loss, r / vc, reduction, grad_output)
    if scalar:
        return value, (gx,)
    _, (gv,) = _ref_reduce(loss, np.broadcast_to(0.5 * (1 / vc - r * r / vc ** 2), x.shape), reduction, grad_output)
    axes = tuple(k for k, (m, n) in enumerate(zip(vb.shape, x.shape)) if m != n)
    return value, (gx, np.sum(gv, axis=axes, keepdims=True).reshape(v.shape))


def ref_soft_margin_loss(input, target, reduction="mean", grad_output=None):
    x, t = np.asarray(input, np.float64), np.asarray(target, np.float64)
    return _ref_reduce(np.logaddexp(0.0, -t * x), -t * _expit(-t * x), reduction, grad_output)


def ref_multilabel_soft_margin_loss(input, target, weight=None, reduction="mean", grad_output=None):
    x, t, w = np.asarray(input, np.float64), np.asarray(target, np.float64), _w(weight, input)
    n_classes = x.shape[-1]
    loss = w * (t * np.logaddexp(0.0, -x) + (1 - t) * np.logaddexp(0.0, x))
    d = w * (_expit(x) - t) / n_classes
    rows = loss.sum(axis=-1) / n_classes
    if reduction == "none":
        go = 1.0 if grad_output is None else np.asarray(grad_output, np.float64)[..., None]
        return rows, (go * d,)
    go = 1.0 if grad_output is None else float(np.asarray(grad_output))
    if reduction == "sum":
        return np.float64(rows.sum()), (go * d,)
    return np.float64(rows.mean()), (go * d / rows.size,)


def ref_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none", grad_output=None):
    x, t = np.asarray(inputs, np.float64), np.asarray(targets, np.float64)
    p, pm = _expit(x), _expit(-x)
    ce = (1 - t) * np.maximum(x, 0) + t * np.maximum(-x, 0) + np.log1p(np.exp(-np.abs(x)))  # softplus(x) - t x
    q = p * (1 - t) + pm * t  # 1 - p_t
    at = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        dq = np.where(q > 0, gamma * q ** (gamma - 1), 0.0) if gamma != 0 else np.zeros_like(x)
    loss = at * ce * q ** gamma
    d = at * ((p - t) * q ** gamma + ce * dq * p * pm * (1 - 2 * t))
    return _ref_reduce(loss, d, reduction, grad_output)


REFERENCE = {
    "l1_loss": ref_l1_loss, "mse_loss": ref_mse_loss, "smooth_l1_loss": ref_smooth_l1_loss,
    "huber_loss": ref_huber_loss, "mape_loss": ref_mape_loss, "rmse_loss": ref_rmse_loss,
    "binary_cross_entropy": ref_binary_cross_entropy,
    "binary_cross_entropy_with_logits": ref_binary_cross_entropy_with_logits,
    "kl_div": ref_kl_div, "log_loss": ref_log_loss, "l1_penalty": ref_l1_penalty, "l2_penalty": ref_l2_penalty,
    "poisson_nll_loss": ref_poisson_nll_loss, "gaussian_nll_loss": ref_gaussian_nll_loss,
    "soft_margin_loss": ref_soft_margin_loss, "multilabel_soft_margin_loss": ref_multilabel_soft_margin_loss,
    "sigmoid_focal_loss": ref_sigmoid_focal_loss,
}


# --- PyTorch expressions of the losses torch.nn.functional lacks ----------------------------------
def _torch_reduce(loss, reduction):
    return loss if reduction == "none" else (loss.sum() if reduction == "sum" else loss.mean())


def torch_mape_loss(torch, input, target, reduction="mean"):
    eps = float(np.finfo(np.float64).eps)
    return _torch_reduce(torch.abs(target - input) / torch.clamp(torch.abs(target), min=eps), reduction)


def torch_rmse_loss(torch, input, target):
    return torch.sqrt(torch.nn.functional.mse_loss(input, target))


def torch_sigmoid_focal_loss(torch, inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss as its documentation defines it (torchvision need not be installed)."""
    p = torch.sigmoid(inputs)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _torch_reduce(loss, reduction)


TORCH = {
    "mape_loss": torch_mape_loss,
    "rmse_loss": torch_rmse_loss,
    "l1_penalty": lambda torch, w, lam=1.0: lam * torch.sum(torch.abs(w)),
    "l2_penalty": lambda torch, w, lam=1.0: lam / 2 * torch.sum(w * w),
    "sigmoid_focal_loss": torch_sigmoid_focal_loss,
    "log_loss": None,  # tested against sklearn.metrics.log_loss in tests/test_pointwise.py
}
