"""scikit-learn's ``log_loss`` on GPU arrays: one thread per row reads the true class's probability."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64

from ... import _cuda_arrays as D
from ..._cuda_arrays import TPB, incoming_at
from .drivers import _ratio, _weight_sum
from .kernels import DIVIDE, NO_DEN, gradient_factor

block_sum, _ = D.block_reductions(globals())


@cuda.jit(device=True)
def clipped(v, eps):
    """``clip(v, eps, 1 - eps)`` and whether the clip passes a gradient (``eps <= v <= 1 - eps``)."""
    if v < eps:
        return eps, False
    if v > 1.0 - eps:
        return 1.0 - eps, False
    return v, True


@D.jit_kernel
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
                d = gradient_factor(-incoming_at(gs, gv, gstep, 0) * sr / q, den_buf, den_mode)
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
