"""float64 NumPy references (the ground truth of the tests), the test and benchmark inputs, and the
PyTorch expressions of large-vocabulary cross entropy: ``REFERENCE``, ``CASES``, ``BENCH``, ``TORCH``."""
from __future__ import annotations

import math

import numpy as np

from ..._registry import Case


def _ref_logsumexp(z):
    m = np.max(z, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]


def ref_rows(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
             softcap=None, grad_output=None, loss_shape=None):
    """The loss of rows of logits ``x (R, C)`` and its gradient with respect to ``x``, float64.

    ``target``: class indices ``(R,)`` or probabilities ``(R, C)``. ``loss_shape``: the shape of
    ``reduction='none'`` (default ``(R,)``).
    """
    x = np.asarray(x, dtype=np.float64)
    n_rows, n_cls = x.shape
    loss_shape = (n_rows,) if loss_shape is None else tuple(loss_shape)
    z = x if softcap is None else softcap * np.tanh(x / softcap)
    w = np.ones(n_cls) if weight is None else np.asarray(weight, dtype=np.float64)
    e = float(label_smoothing)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        a = w * ((1 - e) * np.asarray(target, dtype=np.float64).reshape(n_rows, n_cls) + e / n_cls)
        u = np.ones(n_rows)
        denominator = float(n_rows)
    else:
        t = target.reshape(n_rows)
        valid = t != ignore_index
        onehot = (np.arange(n_cls) == np.where(valid, t, -1)[:, None]).astype(np.float64)
        a = (1 - e) * onehot * w + (e / n_cls) * w * valid[:, None]
        u = (onehot * w).sum(axis=1)
        denominator = float(u.sum())
    lse = _ref_logsumexp(z)
    p = np.exp(z - lse[:, None])
    loss = a.sum(axis=1) * lse - (a * z).sum(axis=1) + z_loss * u * lse ** 2
    if reduction == "none":
        value = loss.reshape(loss_shape)
        k = (np.ones(loss_shape) if grad_output is None else
             np.broadcast_to(np.asarray(grad_output, dtype=np.float64), loss_shape)).reshape(n_rows)
    else:
        g = 1.0 if grad_output is None else float(np.asarray(grad_output))
        value = loss.sum()
        k = np.full(n_rows, g)
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                value = value / denominator
            k = k / denominator if denominator else 0.0 * k
    dz = k[:, None] * (p * (a.sum(axis=1) + 2 * z_loss * u * lse)[:, None] - a)
    if softcap is not None:
        dz = dz * (1 - np.tanh(x / softcap) ** 2)
    return value, dz


def ref_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                      z_loss=0.0, softcap=None, grad_output=None):
    """``fastloss.cross_entropy`` with ``z_loss`` / ``softcap``: value and gradient, float64."""
    x = np.asarray(input, dtype=np.float64)
    axis = 0 if x.ndim == 1 else 1
    rows = np.moveaxis(x, axis, -1)
    t = np.asarray(target)
    if t.dtype.kind == "f":
        t = np.moveaxis(t, axis, -1).reshape(-1, x.shape[axis])
    loss_shape = () if x.ndim == 1 else (x.shape[0],) + x.shape[2:]
    value, dz = ref_rows(rows.reshape(-1, x.shape[axis]), t, weight, ignore_index, reduction, label_smoothing,
                         z_loss, softcap, grad_output, loss_shape)
    return value, (np.moveaxis(dz.reshape(rows.shape), -1, axis),)


def ref_linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                             ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_size=None,
                             grad_output=None):
    """``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` and the gradients of
    ``(input, linear_weight[, linear_bias])``, float64, with the whole logits."""
    x = np.asarray(input, dtype=np.float64)
    W = np.asarray(linear_weight, dtype=np.float64)
    x2 = x.reshape(-1, x.shape[-1])
    logits = x2 @ W.T
    if linear_bias is not None:
        logits = logits + np.asarray(linear_bias, dtype=np.float64)
    ig = -100 if ignore_index is None else ignore_index
    value, dz = ref_rows(logits, np.asarray(target).reshape(x2.shape[0], -1) if np.asarray(target).dtype.kind == "f"
                         else np.asarray(target).reshape(-1), weight, ig, reduction, label_smoothing, z_loss, softcap,
                         grad_output, () if x.ndim == 1 else (x.shape[0],))
    grads = ((dz @ W).reshape(x.shape), dz.T @ x2)
    if linear_bias is not None:
        grads += (dz.sum(axis=0),)
    return value, grads


REFERENCE = {"linear_cross_entropy": ref_linear_cross_entropy}


# ================================================================================================
# Test and benchmark inputs
# ================================================================================================
def _normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _index_targets(rng, n_cls, n, ignore=None, fraction=0.25, dtype=np.int64):
    t = rng.integers(0, n_cls, size=n)
    if ignore is not None:
        t = np.where(rng.random(n) < fraction, ignore, t)
    return np.asarray(t).astype(dtype)


def _prob_targets(rng, shape, dtype):
    z = rng.standard_normal(shape)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)).astype(dtype)


def _linear_ce_cases(rng, dtype):
    n, h, v = 6, 4, 9

    def xw(n_rows=n):
        return _normal(rng, (n_rows, h), dtype), _normal(rng, (v, h), dtype, 0.8)

    def bias():
        return _normal(rng, (v,), dtype, 0.5)

    w = rng.uniform(0.2, 2.0, v).astype(dtype)
    x, W = xw()
    cases = [Case((x, W, _index_targets(rng, v, n)), {"linear_bias": bias()}, "bias")]
    x, W = xw()
    cases.append(Case((x, W, _index_targets(rng, v, n, ignore=-100)),
                      {"weight": w, "label_smoothing": 0.2, "reduction": "sum", "chunk_size": 1},
                      "weight-ignore-smooth-sum-chunk1"))
    x, W = xw()
    cases.append(Case((x, W, _prob_targets(rng, (n, v), dtype)),
                      {"weight": w, "label_smoothing": 0.1, "reduction": "none", "chunk_size": 20},
                      "prob-weight-smooth-none-chunk20"))
    x, W = xw()
    cases.append(Case((x[0], W, np.array(3, dtype=np.int32)), {"z_loss": 1e-2, "softcap": 2.5}, "1d-zloss-softcap"))
    x, W = xw()
    cases.append(Case((x, W, _index_targets(rng, v, n, ignore=-100, dtype=np.int32)),
                      {"linear_bias": bias(), "weight": w, "z_loss": 0.1, "softcap": 3.0, "chunk_size": 4,
                       "label_smoothing": 0.1}, "bias-weight-ignore-zloss-softcap-classblocks"))
    x, W = xw()
    cases.append(Case((x, W, _prob_targets(rng, (n, v), dtype)),
                      {"softcap": 1.5, "z_loss": 0.05, "chunk_size": 10 ** 9, "linear_bias": bias()},
                      "prob-softcap-zloss-bigchunk"))
    x, W = xw(7)
    cases.append(Case((x, W, _index_targets(rng, v, 7, ignore=2)),
                      {"ignore_index": 2, "reduction": "none", "z_loss": 0.02, "chunk_size": 5}, "ignore2-none-classblocks"))
    x, W = xw()
    cases.append(Case((x, W, _index_targets(rng, v, n)), {"chunk_size": 2 * v, "softcap": 4.0}, "softcap-chunk2rows"))
    return cases


CASES = {"linear_cross_entropy": _linear_ce_cases}


def _bench_linear_ce(rng, dtype, size):
    """``(N, H, V)`` with ``V * H`` about ``size`` (the weight, the largest argument): (2048, 1024,
    32000) at the default headline size."""
    v = 32000 if size >= 32000 * 64 else max(8, int(math.sqrt(size)))
    h = max(4, size // v)
    n = 2048 if size >= 32000 * 64 else max(4, h)
    x = _normal(rng, (n, h), dtype)
    W = _normal(rng, (v, h), dtype, 1.0 / math.sqrt(h))
    return Case((x, W, _index_targets(rng, v, n)), {}, f"{n}x{h}x{v}")


BENCH = {"linear_cross_entropy": _bench_linear_ce}


def torch_cross_entropy(torch, input, target, weight=None, ignore_index=-100, reduction="mean",
                        label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The PyTorch expression of ``cross_entropy`` with ``z_loss`` and ``softcap``, by hand:
    ``z = s tanh(x / s)``, ``F.cross_entropy(z, ...)`` plus ``z_loss * w[t] * logsumexp(z) ** 2``."""
    F = torch.nn.functional
    z = input if softcap is None else softcap * torch.tanh(input / softcap)
    if not z_loss:
        return F.cross_entropy(z, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
    ce = F.cross_entropy(z, target, weight=weight, ignore_index=ignore_index, reduction="none",
                         label_smoothing=label_smoothing)
    dim = 0 if z.dim() == 1 else 1
    lse = torch.logsumexp(z, dim=dim)
    if target.is_floating_point():
        u = torch.ones_like(lse)
        denominator = lse.numel()
    else:
        valid = target != ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        u = (weight[safe] if weight is not None else torch.ones_like(lse)) * valid
        denominator = u.sum()
    rows = ce + z_loss * u * lse ** 2
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / denominator


def torch_linear_cross_entropy(torch, input, linear_weight, target, *, linear_bias=None, weight=None,
                               reduction="mean", ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
                               chunk_size=None):
    """torch 2.13's ``F.linear_cross_entropy``; with ``z_loss``/``softcap``, ``F.linear`` and the
    expression of :func:`torch_cross_entropy`."""
    F = torch.nn.functional
    if not z_loss and softcap is None:
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                      reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing)
    logits = F.linear(input, linear_weight, linear_bias)
    return torch_cross_entropy(torch, logits, target, weight, -100 if ignore_index is None else ignore_index,
                               reduction, label_smoothing, z_loss, softcap)


TORCH = {"linear_cross_entropy": torch_linear_cross_entropy}
