"""float64 NumPy references, test cases, benchmark inputs and PyTorch expressions of the softmax
family (``REFERENCE``, ``CASES``, ``BENCH``, ``TORCH``; see DEVELOPING.md)."""
from __future__ import annotations

import math

import numpy as np

from ..._registry import Case


# ================================================================================================
# float64 NumPy references (ground truth for the tests)
# ================================================================================================
def _ref_log_softmax_along(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _ref_grad_output(grad_output, shape):
    return np.ones(shape) if grad_output is None else np.broadcast_to(np.asarray(grad_output, np.float64), shape)


def _ref_log_softmax(input, axis=-1, grad_output=None):
    x = np.asarray(input, dtype=np.float64)
    y = _ref_log_softmax_along(x, axis)
    g = _ref_grad_output(grad_output, y.shape)
    return y, (g - np.exp(y) * np.sum(g, axis=axis, keepdims=True),)


def _ref_softmax(input, axis=-1, grad_output=None):
    x = np.asarray(input, dtype=np.float64)
    p = np.exp(_ref_log_softmax_along(x, axis))
    g = _ref_grad_output(grad_output, p.shape)
    return p, (p * (g - np.sum(g * p, axis=axis, keepdims=True)),)


def _ref_classes_last(x):
    """Classes on the last axis: ``(C,)`` stays, ``(N, C, d...)`` becomes ``(N, d..., C)``."""
    return x if x.ndim == 1 else np.moveaxis(x, 1, -1)


def _ref_classes_back(a, ndim):
    return a if ndim == 1 else np.moveaxis(a, -1, 1)


def _ref_index_weights(t, n_cls, w, ignore_index):
    """Per position and class: ``w_c [c == t]`` (0 where ignored), and the valid mask."""
    t = np.asarray(t)
    valid = t != ignore_index
    onehot = (np.arange(n_cls) == np.where(valid, t, -1)[..., None]).astype(np.float64)
    return onehot * w, valid


def _ref_reduce(loss, reduction, denominator, grad_output):
    """Reduced value and the per-position factor on the loss gradient."""
    if reduction == "none":
        return loss, _ref_grad_output(grad_output, loss.shape)
    g = 1.0 if grad_output is None else float(np.asarray(grad_output))
    if reduction == "sum":
        return loss.sum(), np.full(loss.shape, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        return loss.sum() / denominator, np.full(loss.shape, g / denominator if denominator else 0.0)


def _ref_nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", grad_output=None):
    x = _ref_classes_last(np.asarray(input, dtype=np.float64))
    n_cls = x.shape[-1]
    w = np.ones(n_cls) if weight is None else np.asarray(weight, dtype=np.float64)
    a, _ = _ref_index_weights(target, n_cls, w, ignore_index)
    loss = -np.sum(a * x, axis=-1)
    value, k = _ref_reduce(loss, reduction, a.sum(), grad_output)
    return value, (_ref_classes_back(-k[..., None] * a, np.ndim(input)),)


def _ref_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                       grad_output=None):
    """``l = -sum_c a_c logp_c``; its gradient through the log-softmax chain rule."""
    x = _ref_classes_last(np.asarray(input, dtype=np.float64))
    n_cls = x.shape[-1]
    w = np.ones(n_cls) if weight is None else np.asarray(weight, dtype=np.float64)
    e = float(label_smoothing)
    if np.asarray(target).dtype.kind == "f":
        q = _ref_classes_last(np.asarray(target, dtype=np.float64))
        a = w * ((1 - e) * q + e / n_cls)
        denominator = float(np.prod(a.shape[:-1]))  # the number of positions
    else:
        onehot_w, valid = _ref_index_weights(target, n_cls, w, ignore_index)
        a = (1 - e) * onehot_w + (e / n_cls) * w * valid[..., None]
        denominator = onehot_w.sum()
    logp = _ref_log_softmax_along(x, -1)
    loss = -np.sum(a * logp, axis=-1)
    value, k = _ref_reduce(loss, reduction, denominator, grad_output)
    dlogp = -k[..., None] * a
    grad = dlogp - np.exp(logp) * np.sum(dlogp, axis=-1, keepdims=True)
    return value, (_ref_classes_back(grad, np.ndim(input)),)


REFERENCE = {
    "log_softmax": _ref_log_softmax,
    "softmax": _ref_softmax,
    "nll_loss": _ref_nll_loss,
    "cross_entropy": _ref_cross_entropy,
}


# ================================================================================================
# Test and benchmark inputs
# ================================================================================================
def _logits(rng, shape, dtype, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _targets(rng, n_cls, shape, dtype=np.int64, ignore=None, fraction=0.25):
    """Class indices of ``shape``; with ``ignore``, about ``fraction`` of them set to it."""
    t = rng.integers(0, n_cls, size=shape)
    if ignore is not None:
        t = np.where(rng.random(shape) < fraction, ignore, t)
    return np.asarray(t).astype(dtype)


def _probabilities(rng, shape, dtype):
    """Random class probabilities along axis 1 (axis 0 of a 1-D shape)."""
    z = rng.standard_normal(shape)
    p = np.exp(_ref_log_softmax_along(z, 0 if len(shape) == 1 else 1))
    return p.astype(dtype)


def _softmax_cases(rng, dtype):
    return [
        Case((_logits(rng, (5, 7), dtype),), {}, "2d"),
        Case((_logits(rng, (3, 4, 5), dtype),), {"axis": 1}, "3d-axis1"),
        Case((_logits(rng, (6,), dtype), 0), {}, "1d"),
        Case((_logits(rng, (2, 3, 4), dtype),), {"axis": 0}, "3d-axis0"),
        Case((_logits(rng, (3, 37), dtype),), {"axis": -1}, "2d-37"),
    ]


def _nll_cases(rng, dtype):
    def logp(shape):
        return _ref_log_softmax_along(rng.standard_normal(shape), 0 if len(shape) == 1 else 1).astype(dtype)

    w = rng.uniform(0.2, 2.0, 5).astype(dtype)
    return [
        Case((logp((6, 5)), _targets(rng, 5, (6,))), {}, "2d"),
        Case((logp((5,)), np.array(3)), {}, "1d"),
        Case((logp((6, 5)), _targets(rng, 5, (6,), np.int32, ignore=2)),
             {"weight": w, "ignore_index": 2, "reduction": "sum"}, "weight-ignore-sum"),
        Case((logp((2, 5, 3, 2)), _targets(rng, 5, (2, 3, 2), np.uint8, ignore=255)),
             {"ignore_index": 255, "reduction": "none", "weight": w}, "4d-none"),
        Case((logp((3, 5, 4)), _targets(rng, 5, (3, 4), ignore=-100)), {"weight": w}, "3d-mean"),
    ]


def _cross_entropy_cases(rng, dtype):
    w = rng.uniform(0.2, 2.0, 5).astype(dtype)
    return [
        Case((_logits(rng, (6, 5), dtype), _targets(rng, 5, (6,))), {}, "2d"),
        Case((_logits(rng, (7,), dtype), np.array(4, dtype=np.int16)), {}, "1d"),
        Case((_logits(rng, (6, 5), dtype), _targets(rng, 5, (6,), np.int32, ignore=1)),
             {"weight": w, "ignore_index": 1}, "weight-ignore"),
        Case((_logits(rng, (6, 5), dtype), _targets(rng, 5, (6,), ignore=-100)),
             {"weight": w, "label_smoothing": 0.2, "reduction": "sum"}, "weight-ignore-smooth-sum"),
        Case((_logits(rng, (4, 37), dtype), _targets(rng, 37, (4,))),
             {"label_smoothing": 0.1, "reduction": "none"}, "smooth-none-37"),
        Case((_logits(rng, (2, 5, 3, 2), dtype), _targets(rng, 5, (2, 3, 2), np.uint8, ignore=255)),
             {"ignore_index": 255, "weight": w, "label_smoothing": 0.3}, "4d-weight-ignore-smooth"),
        Case((_logits(rng, (3, 5, 4), dtype), _targets(rng, 5, (3, 4))), {"reduction": "none"}, "3d-none"),
        Case((_logits(rng, (4, 5), dtype), _probabilities(rng, (4, 5), dtype)),
             {"weight": w, "label_smoothing": 0.1}, "prob-weight-smooth"),
        Case((_logits(rng, (2, 5, 3), dtype), _probabilities(rng, (2, 5, 3), dtype)),
             {"reduction": "none"}, "prob-3d-none"),
        Case((_logits(rng, (5,), dtype), _probabilities(rng, (5,), dtype)), {"reduction": "sum"}, "prob-1d-sum"),
    ]


CASES = {
    "log_softmax": _softmax_cases,
    "softmax": _softmax_cases,
    "nll_loss": _nll_cases,
    "cross_entropy": _cross_entropy_cases,
}


def _bench_shape(size):
    """``(N, C)`` with about ``size`` elements: a 32000-class vocabulary once there is room for it."""
    n_cls = 32000 if size >= 8 * 32000 else max(2, int(math.sqrt(size)))
    return max(1, size // n_cls), n_cls


def _bench_logits(rng, dtype, size):
    n, n_cls = _bench_shape(size)
    return _logits(rng, (n, n_cls), dtype), n_cls


def _bench_cross_entropy(rng, dtype, size):
    x, n_cls = _bench_logits(rng, dtype, size)
    return Case((x, _targets(rng, n_cls, (x.shape[0],))), {}, f"{x.shape[0]}x{n_cls}")


def _bench_nll(rng, dtype, size):
    x, n_cls = _bench_logits(rng, dtype, size)
    return Case((_ref_log_softmax_along(x.astype(np.float64), 1).astype(dtype), _targets(rng, n_cls, (x.shape[0],))),
                {}, f"{x.shape[0]}x{n_cls}")


def _bench_softmax(rng, dtype, size):
    x, n_cls = _bench_logits(rng, dtype, size)
    return Case((x,), {"axis": -1}, f"{x.shape[0]}x{n_cls}")


BENCH = {
    "log_softmax": _bench_softmax,
    "softmax": _bench_softmax,
    "nll_loss": _bench_nll,
    "cross_entropy": _bench_cross_entropy,
}


def _torch_log_softmax(torch, input, axis=-1):
    return torch.nn.functional.log_softmax(input, dim=axis)


def _torch_softmax(torch, input, axis=-1):
    return torch.nn.functional.softmax(input, dim=axis)


def _torch_nll_loss(torch, *args, **kwargs):
    return torch.nn.functional.nll_loss(*args, **kwargs)


def _torch_cross_entropy(torch, *args, **kwargs):
    return torch.nn.functional.cross_entropy(*args, **kwargs)


#: The PyTorch expression of each loss: the softmaxes spell the axis ``dim``, the losses are
#: ``torch.nn.functional.<name>`` itself.
TORCH = {
    "log_softmax": _torch_log_softmax,
    "softmax": _torch_softmax,
    "nll_loss": _torch_nll_loss,
    "cross_entropy": _torch_cross_entropy,
}
