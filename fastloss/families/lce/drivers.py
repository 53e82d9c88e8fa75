"""The driver of ``cross_entropy`` with ``z_loss`` / ``softcap``, and what it shares with
``linear_cross_entropy``'s (:mod:`.linear`): targets as the row kernels take them, each row's gradient
coefficient, the reduction, and the thread pool the row kernels run on."""
from __future__ import annotations

import math

import numpy as np

from ... import _jit
from ..._dispatch import scalar_result
from ..softmax.drivers import _n_chunks, _ones, _readonly
from ..softmax.rows import _index_scan
from .row_kernels import _rows

#: Rows of fewer elements than this in all run on the calling thread.
_MIN_PARALLEL = 1 << 15


def _run_chunks(chunk, n_rows, n_cls, *args):
    """``chunk(c, nchunks, *args)`` for every chunk of rows, on :func:`fastloss._jit.run_chunks`'s threads."""
    nchunks = max(1, min(_jit.get_num_threads(), n_rows, (n_rows * max(n_cls, 1)) // _MIN_PARALLEL))
    return _jit.run_chunks(chunk, nchunks, *args)


_NO_INDEX = np.zeros(0, dtype=np.intp)


class _Targets:
    """Class-index or probability targets, class weights and the ``'mean'`` denominator, as the row
    kernels take them (stand-in arrays for what a kind of target does not use)."""

    def __init__(self, t, w, n_rows, n_cls, dtype, ignore_index):
        self.prob = t.dtype.kind == "f"
        self.ignore_index = int(ignore_index)
        if w is None:  # (cached ones: a small call spends its time in such set-up)
            self.w, self.wsum = _ones(n_cls, dtype), float(n_cls)
        else:
            self.w = _readonly(np.ascontiguousarray(w, dtype=dtype))
            self.wsum = float(np.sum(self.w, dtype=np.float64))
        if self.prob:
            self.q = _readonly(np.ascontiguousarray(t, dtype=dtype).reshape(n_rows, n_cls))
            self.t = _NO_INDEX
            self.denominator = float(n_rows) if n_rows * n_cls else 0.0
        else:
            self.t = np.ascontiguousarray(t, dtype=np.intp).reshape(n_rows)
            self.q = np.zeros((1, 0), dtype=dtype)
            # the 'mean' divisor: the weights of the targets that are not ignored (the class indices
            # were checked before: no bad one is left to report)
            self.denominator = _index_scan(self.t, self.w, self.ignore_index, n_cls)[0] if n_cls else 0.0


def _coefficients(grad, reduction, denominator, n_rows, loss_shape):
    """Each row's factor on its loss gradient: ``grad_output`` (per row for ``'none'``), over the
    ``'mean'`` denominator."""
    if reduction == "none":
        return np.array(np.broadcast_to(grad.array(loss_shape, np.float64), loss_shape), dtype=np.float64).reshape(n_rows)
    g = grad.scalar()
    if reduction == "mean":
        g = g / denominator if denominator != 0 else 0.0
    return np.full(n_rows, g)


def _reduce(loss, reduction, denominator, dtype, shape):
    if reduction == "none":
        return loss.reshape(shape).astype(dtype)
    total = math.fsum(loss) if loss.size < 4096 else float(np.sum(loss))
    if reduction == "sum":
        return scalar_result(total, dtype)
    return scalar_result(total / denominator if denominator != 0 else math.nan, dtype)


def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, z_loss, softcap, grad):
    """Driver of ``fastloss.cross_entropy`` with ``z_loss`` and/or ``softcap``: classes on axis 1
    (axis 0 of a 1-D input); input ``(N, C, d...)`` runs as rows of ``C`` with the classes moved last."""
    cls_axis = 0 if x.ndim == 1 else 1
    n_cls = x.shape[cls_axis]
    loss_shape = () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])
    rows = np.ascontiguousarray(np.moveaxis(x, cls_axis, -1)).reshape(-1, n_cls)
    n_rows = rows.shape[0]
    tgt = t
    if t.dtype.kind == "f":
        tgt = np.moveaxis(t, cls_axis, -1)
    tg = _Targets(tgt, w, n_rows, n_cls, x.dtype, ignore_index)
    loss = np.zeros(n_rows)
    moved = x.ndim > 2  # the gradient is made as rows of classes, then moved back into ``out``
    out = None
    z = np.empty((0, n_cls), dtype=x.dtype)  # value only: the kernel uses a private row
    copy, src, coef = True, rows, loss
    if grad is not None:
        out = grad.out_for(0, x)
        coef = _coefficients(grad, reduction, tg.denominator, n_rows, loss_shape)
        if moved:
            z = np.empty_like(rows)
        else:
            z = out.reshape(n_rows, n_cls)
            if out.ctypes.data == rows.ctypes.data:  # in place: the logits are already in ``z``
                copy = False
            elif np.may_share_memory(out, rows):
                src = rows.copy()
    if n_rows and n_cls:
        whole = np.zeros(1, dtype=np.int64)  # one slice per row: the whole row
        # chunks as plain cross entropy's (up to softmax.MAX_CHUNKS, whatever the thread count): a thread
        # descheduled on a busy machine delays one small chunk, not half the call
        _jit.run_chunks(_rows, _n_chunks(n_rows * n_cls, n_rows), _readonly(src).reshape(-1), z.reshape(-1), n_rows,
                        whole, np.full(1, n_cls, dtype=np.int64), whole, not copy, tg.w, False, float(softcap or 0.0),
                        tg.prob, tg.t, tg.q, tg.w, tg.wsum, tg.ignore_index, float(label_smoothing), float(z_loss),
                        coef, grad is not None, loss)
    elif grad is not None:
        z[...] = 0
    value = _reduce(loss, reduction, tg.denominator, x.dtype, loss_shape)
    if grad is None:
        return value
    if moved:
        out[...] = np.moveaxis(z.reshape((x.shape[0],) + tuple(x.shape[2:]) + (n_cls,)), -1, 1)
    return value, (out,)
