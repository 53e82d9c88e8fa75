"""The softmax family on Dask arrays whose class axis is chunked (used by :mod:`fastloss._dask`).

No chunk is ever merged with another along the classes. For ``log_softmax``, ``softmax`` and
``cross_entropy``, each chunk first gives each row's ``(max, sum of exp(x - max))`` over its classes;
Dask's tree reduction combines these pairs into the row's log-sum-exp, ``lse = m + log(s)``. A second
pass over each chunk then writes its values and gradients from ``lse`` alone:

- ``log_softmax``: ``x - lse``; gradient ``g - exp(x - lse) * sum_c g``.
- ``softmax``: ``p = exp(x - lse)``; gradient ``p * (g - sum_c g p)``.
- ``cross_entropy``, index targets ``t``, smoothing ``e``, class weights ``w`` (``W = sum_c w_c``):
  ``l = -(1 - e) w_t (x_t - lse) - e / C * sum_c w_c (x_c - lse)``; its gradient is
  ``p_c ((1 - e) w_t + e W / C) - (1 - e) w_t [c = t] - e w_c / C``; ignored rows give 0.
- ``cross_entropy``, probability targets: with ``q = (1 - e) target + e / C``,
  ``l = -sum_c w_c q_c (x_c - lse)``, gradient ``p_c sum_k w_k q_k - w_c q_c``.
- ``nll_loss`` is elementwise in the classes: ``-w_t x_t`` from the chunk holding class ``t``.

Each chunk's part of a row's loss is summed over the class chunks in float64 by Dask, then reduced as
the in-memory call does (the same global denominator as :mod:`fastloss._dask`). Options this module
does not know (``z_loss``, ``softcap``) make the caller merge the class axis instead.
"""
from __future__ import annotations

import numpy as np

import dask.array as da

from . import _dask

LOSSES = ("log_softmax", "softmax", "cross_entropy", "nll_loss")


def handles(call, mode) -> bool:
    """Whether this module computes ``call`` (an :class:`fastloss._dask._Call`) with chunked classes."""
    if call.name not in LOSSES or not isinstance(call.meta, np.ndarray):  # CuPy chunks: classes merged
        return False
    p = call.params
    if p.get("z_loss") not in (None, 0, 0.0) or p.get("softcap") is not None:
        return False
    if "target" in call.arrays and call.labels.get("target") is None:
        return False
    return mode in ("none", "sum", "mean")


def _f64(a):
    return a.astype(np.float64, copy=False)


def _pair_chunk(x, axis, keepdims, computing_meta=False):
    if computing_meta:
        return x
    x = _f64(x)
    m = np.max(x, axis=axis, keepdims=True) if x.size else np.full(x.shape[:axis[0]] + (1,) + x.shape[axis[0] + 1:], -np.inf)
    shift = np.where(np.isfinite(m), m, 0.0)
    s = np.sum(np.exp(x - shift), axis=axis, keepdims=True)
    return {"m": m, "s": s, "shift": shift}


def _pair_combine(pairs, axis, keepdims, computing_meta=False):
    if computing_meta:
        return pairs
    pairs = _flatten(pairs)
    m = pairs[0]["m"]
    for p in pairs[1:]:
        m = np.maximum(m, p["m"])
    shift = np.where(np.isfinite(m), m, 0.0)
    s = sum(p["s"] * np.exp(p["shift"] - shift) for p in pairs)
    return {"m": m, "s": s, "shift": shift}


def _pair_aggregate(pairs, axis, keepdims, computing_meta=False):
    if computing_meta:
        return pairs
    p = _pair_combine(pairs, axis, keepdims)
    with np.errstate(divide="ignore", invalid="ignore"):
        # a row of -inf (or a NaN) gives -inf (or NaN), as the in-memory kernels
        return np.where(np.isnan(p["m"]) | (p["m"] == np.inf), p["m"], p["shift"] + np.log(p["s"]))


def _flatten(x):
    if isinstance(x, dict):
        return [x]
    out = []
    for y in x:
        out += _flatten(y)
    return out


def log_sum_exp(x, axis):
    """Each row's log-sum-exp along ``axis`` (kept, length 1), float64, from per-chunk (max, sum-exp)."""
    return da.reduction(x, _pair_chunk, _pair_aggregate, combine=_pair_combine, axis=axis, keepdims=True,
                        dtype=np.float64, concatenate=False, meta=_dask._empty_like(x._meta, (0,) * x.ndim, np.float64))


def run(call, mode, res):
    """Values (and gradients) of ``call`` with the class axis ``'c'`` left in its chunks."""
    if call.name in ("log_softmax", "softmax"):
        return _softmax(call)
    return _classification(call, mode)


# -- log_softmax / softmax ------------------------------------------------------------------------
def _softmax(call):
    x = call.to_dask("input")
    lab = call.labels["input"]
    axis = lab.index("c")
    dtype = np.dtype(x.dtype)
    lse = log_sum_exp(x, axis)
    rl = tuple("c1" if s == "c" else s for s in lab)  # lse: one column per row, broadcast to each chunk
    meta = _dask._empty_like(x._meta, (0,) * x.ndim, dtype)
    fn = _log_softmax_block if call.name == "log_softmax" else _softmax_block
    value = da.blockwise(fn, lab, x, lab, lse, rl, dtype=dtype, meta=meta, concatenate=True)
    if call.grad is None:
        return value
    go = call.grad.grad_output
    if go is None:
        g = da.ones(x.shape, dtype=dtype, chunks=x.chunks, meta=x._meta)
    else:
        g = call.grad_output_operand(go, None, single=False)[0]
    if call.name == "log_softmax":
        gsum = g.sum(axis=axis, keepdims=True, dtype=np.float64)
        grad = da.blockwise(_log_softmax_grad, lab, x, lab, lse, rl, g, lab, gsum, rl,
                            dtype=dtype, meta=meta, concatenate=True)
    else:
        gp = da.blockwise(_softmax_gp, lab, x, lab, lse, rl, g, lab, dtype=np.float64,
                          meta=_dask._empty_like(x._meta, (0,) * x.ndim, np.float64), concatenate=True)
        dot = gp.sum(axis=axis, keepdims=True, dtype=np.float64)
        grad = da.blockwise(_softmax_grad, lab, x, lab, lse, rl, g, lab, dot, rl,
                            dtype=dtype, meta=meta, concatenate=True)
    return value, (grad,)


def _log_softmax_block(x, lse):
    return (_f64(x) - lse).astype(x.dtype)


def _softmax_block(x, lse):
    return np.exp(_f64(x) - lse).astype(x.dtype)


def _log_softmax_grad(x, lse, g, gsum):
    return (_f64(g) - np.exp(_f64(x) - lse) * gsum).astype(x.dtype)


def _softmax_gp(x, lse, g):
    return _f64(g) * np.exp(_f64(x) - lse)


def _softmax_grad(x, lse, g, dot):
    return (np.exp(_f64(x) - lse) * (_f64(g) - dot)).astype(x.dtype)


# -- cross_entropy / nll_loss ---------------------------------------------------------------------
def _classification(call, mode):
    name, p = call.name, call.params
    x = call.to_dask("input")
    lab = call.labels["input"]
    dtype = call.dtype
    ax = lab.index("c")
    n_cls = x.shape[ax]
    tl = call.labels["target"]
    t = call.to_dask("target")
    prob = np.dtype(t.dtype).kind == "f"
    cls = da.arange(n_cls, chunks=(call.chunks["c"],))
    # the class weights are small: every chunk gets them whole (its own columns, and w[t] of its rows)
    w_ops = [call.whole_dask("weight").astype(dtype), ("s_w",)] if call.arrays.get("weight") is not None else [None, None]
    ce = name == "cross_entropy"
    opts = dict(prob=prob, ce=ce, e=float(p.get("label_smoothing") or 0.0) if ce else 0.0,
                ignore=int(p.get("ignore_index", -100)), n_cls=n_cls, axis=ax)
    rl = tuple("c1" if s == "c" else s for s in lab)  # one column per row, broadcast to each chunk
    lse_ops = [log_sum_exp(x, ax), rl] if ce else [None, None]
    f64_meta = _dask._empty_like(x._meta, (0,) * x.ndim, np.float64)
    common = [x, lab, t, tl, cls, ("c",), *w_ops, *lse_ops]
    # each chunk's part of each row's loss (a length-1 class axis), summed over the class chunks
    parts = da.blockwise(_loss_part, lab, *common, adjust_chunks={"c": 1}, dtype=np.float64, meta=f64_meta,
                         concatenate=True, **opts)
    reduced = mode != "none"
    denominator = _dask._denominator(call, mode) if reduced else None
    if reduced:
        value = _dask._finish(_dask._sum_chunks(parts), denominator, mode, name, dtype)
    else:
        value = parts.sum(axis=ax, dtype=np.float64).astype(dtype)
    if call.grad is None:
        return value
    go = call.grad.grad_output
    if reduced:
        scale = _dask._incoming_scalar(go)
        coef_ops = _dask._operand(scale / denominator if mode == "mean" else scale)
    elif go is None:
        coef_ops = [1.0, None]
    else:
        coef_ops = call.grad_output_operand(go, None, single=False)
    if prob and ce:  # sum_k w_k q_k of each row, over all the class chunks
        wq = da.blockwise(_wq_part, lab, *common, adjust_chunks={"c": 1}, dtype=np.float64, meta=f64_meta,
                          concatenate=True, **opts).sum(axis=ax, keepdims=True, dtype=np.float64)
        wq_ops = [wq, rl]
    else:
        wq_ops = [None, None]
    grad = da.blockwise(_grad_block, lab, *common, *wq_ops, *coef_ops, dtype=x.dtype,
                        meta=_dask._empty_like(x._meta, (0,) * x.ndim, x.dtype), concatenate=True, **opts)
    return value, (grad,)


def _class_shape(cls, ndim, axis):
    shape = [1] * ndim
    shape[axis] = cls.size
    return shape


def _weights(w, cls, ndim, axis):
    """``(w_c of this chunk's classes, broadcastable; the whole weight vector or None)``."""
    if w is None:
        return np.ones(_class_shape(cls, ndim, axis)), None
    wf = _f64(w)
    return wf[cls].reshape(_class_shape(cls, ndim, axis)), wf


def _targets(t, cls, ndim, ignore, n_cls, axis):
    """Index targets: the one-hot mask of this chunk's classes, the kept rows, and the targets."""
    t = np.asarray(t)
    bad = (t != ignore) & ((t < 0) | (t >= n_cls))
    if np.any(bad):  # the in-memory call's error, raised when the chunk is computed
        raise IndexError(f"Target {int(t[bad].flat[0])} is out of bounds.")
    kept = np.expand_dims(t != ignore, axis)
    te = np.expand_dims(t, axis)
    onehot = (te == cls.reshape(_class_shape(cls, ndim, axis))) & kept
    return onehot, kept, te


def _loss_part(x, t, cls, w, lse, *, prob, ce, e, ignore, n_cls, axis):
    logp = _f64(x) - lse if ce else _f64(x)
    wb, _ = _weights(w, cls, x.ndim, axis)
    with np.errstate(invalid="ignore"):
        if prob:
            q = (1.0 - e) * _f64(t) + e / n_cls
            return -np.sum(wb * q * logp, axis=axis, keepdims=True)
        onehot, kept, _ = _targets(t, cls, x.ndim, ignore, n_cls, axis)
        # the target's term from the chunk holding its class: a NaN in another column does not leak
        part = -(1.0 - e) * np.sum(np.where(onehot, wb * logp, 0.0), axis=axis, keepdims=True)
        if e:
            part = part + np.where(kept, -(e / n_cls) * np.sum(wb * logp, axis=axis, keepdims=True), 0.0)
        return part


def _wq_part(x, t, cls, w, lse, *, prob, ce, e, ignore, n_cls, axis):
    wb, _ = _weights(w, cls, x.ndim, axis)
    return np.sum(wb * ((1.0 - e) * _f64(t) + e / n_cls), axis=axis, keepdims=True)


def _grad_block(x, t, cls, w, lse, wq, coef, *, prob, ce, e, ignore, n_cls, axis):
    wb, wf = _weights(w, cls, x.ndim, axis)
    coef = np.asarray(coef, dtype=np.float64)
    if coef.ndim:
        coef = np.expand_dims(coef, axis)
    if prob:  # d/dx_c of -sum_k w_k q_k logp_k
        q = (1.0 - e) * _f64(t) + e / n_cls
        g = np.exp(_f64(x) - lse) * wq - wb * q
        return (g * coef).astype(x.dtype)
    onehot, kept, te = _targets(t, cls, x.ndim, ignore, n_cls, axis)
    if not ce:  # nll: -w_t at the target's column
        return (-np.where(onehot, wb, 0.0) * coef).astype(x.dtype)
    # w_t of each row (the whole weight vector: the target's column may lie in another chunk)
    wt = np.ones(te.shape) if wf is None else wf[np.where(kept, te, 0)]
    w_sum = float(n_cls) if wf is None else float(np.sum(wf))
    p = np.exp(_f64(x) - lse)
    g = p * ((1.0 - e) * wt + e * w_sum / n_cls) - (1.0 - e) * np.where(onehot, wt, 0.0) - (e / n_cls) * wb
    return np.where(kept, g * coef, 0.0).astype(x.dtype)
