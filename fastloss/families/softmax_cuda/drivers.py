"""The drivers of the CUDA softmax family, called by :mod:`fastloss.api`: the input as rows (see
:mod:`fastloss.families.softmax_cuda`), the output and gradient buffers, the mean's denominator, and the
launches of :mod:`.softmax_kernels` and :mod:`.ce_kernels`."""
from __future__ import annotations

import math

import numpy as np

from ... import _cuda_arrays as D
from ... import _cuda_reduce as _R
from ..._cuda_rows import MAX_ROW_BLOCKS, WARP, launch_shape, row_group
from .ce_kernels import _ce_rows, _target_weight_sum
from .rows import INDEX_TARGET, PROB_TARGET, ROWS_BLOCK, _layout
from .softmax_kernels import _nll_lines, _nll_rows, _softmax_rows


def _softmax_driver(x, axis, grad, log):
    x = D.contiguous(x)
    O, C, K = _layout(x.shape, axis)
    y = D.empty(x.shape, x.dtype, x)
    gx = grad.out_for(0, x) if grad is not None else None
    n = x.size
    if n:
        xf, yf = D.reshape(x, (n,)), D.reshape(y, (n,))
        inc = grad.incoming(x.shape, xf) if grad is not None else D.Incoming(1.0, xf, -1)
        gxf = D.reshape(gx, (n,)) if gx is not None else yf
        R, G = O * K, row_group(C, K)
        blocks, threads = launch_shape(R, G, ROWS_BLOCK)
        D.launch(_softmax_rows, blocks, x, xf, R, C, K, G, log, yf, grad is not None, *inc.args(), gxf,
                 threads=threads)
    if grad is None:
        return y
    return y, (gx,)


@D.on_input_device
def log_softmax(x, axis, grad):
    """``log_softmax(x)`` along ``axis``; with ``grad``, also ``g - softmax(x) * sum(g)``."""
    return _softmax_driver(x, axis, grad, True)


@D.on_input_device
def softmax(x, axis, grad):
    """``softmax(x)`` along ``axis``; with ``grad``, also ``p * (g - sum(g * p))``."""
    return _softmax_driver(x, axis, grad, False)


def _class_layout(x):
    """``(O, C, K)`` of a classification input: classes on axis 1, or axis 0 for a 1-D input."""
    return _layout(x.shape, 0 if x.ndim == 1 else 1)


def _none_shape(x):
    """Shape of ``reduction='none'``: the input without its class axis."""
    return () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])


def _none_value(loss_rows, x):
    return D.scalar_view(loss_rows) if x.ndim == 1 else loss_rows


def _index_denominator(tf, wf, has_w, ignore_index, like):
    """float64 device buffer holding ``sum_i w[t_i]`` over non-ignored targets (mean's denominator),
    summed in one launch (per-block sums added by the last block)."""
    R = tf.shape[0]
    den = _R.scratch(1, like, "denominator")
    blocks = D.blocks_for(R)
    parts = _R.scratch(blocks, like, "denominator parts")
    D.launch(_target_weight_sum, blocks, like, tf, wf, has_w, ignore_index, parts, _R.ticket(like), den)
    return den


class _Rows:
    """The flat views and buffers every classification driver starts from."""

    def __init__(self, x, t, w, reduction, grad, target_per_element=False):
        self.x = D.contiguous(x)
        O, self.C, self.K = _class_layout(self.x)
        self.R = O * self.K
        n = self.x.size
        self.xf = D.reshape(self.x, (n,))
        self.tf = D.reshape(D.contiguous(t), (n if target_per_element else self.R,))
        self.has_w = w is not None
        self.wf = D.contiguous(w) if self.has_w else self.xf  # a stand-in, never read
        self.reduce = reduction != "none"
        # the summed loss (its kernel's last block writes it) or a stand-in, never written, for 'none'
        self.out = D.result_buffer(self.x) if self.reduce else self.xf
        self.ticket = _R.ticket(self.x)
        self.loss_rows, self.loss_flat = None, self.xf  # a stand-in, never written when reduced
        if not self.reduce:
            self.loss_rows = D.empty((1,) if self.x.ndim == 1 else _none_shape(self.x), self.x.dtype, self.x)
            self.loss_flat = D.reshape(self.loss_rows, (self.R,))
        self.gx = grad.out_for(0, self.x) if grad is not None else None
        self.gxf = D.reshape(self.gx, (n,)) if self.gx is not None else self.xf
        shape = () if self.reduce else _none_shape(self.x)
        self.inc = grad.incoming(shape, self.xf) if grad is not None else D.Incoming(1.0, self.xf, -1)

    def index_denominator(self, ignore_index):
        return _index_denominator(self.tf, self.wf, self.has_w, ignore_index, self.x)

    def result(self, grad):
        """The value (the 0-d ``out`` its kernel summed into, or the per-row losses) and gradient."""
        value = D.scalar_view(self.out) if self.reduce else _none_value(self.loss_rows, self.x)
        return value if grad is None else (value, (self.gx,))


@D.on_input_device
def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, grad):
    """Cross entropy of logits ``x`` (classes on axis 1) with index or probability targets ``t``."""
    kind = PROB_TARGET if np.dtype(t.dtype).kind == "f" else INDEX_TARGET
    rows = _Rows(x, t, w, reduction, grad, target_per_element=kind == PROB_TARGET)
    C, K, R = rows.C, rows.K, rows.R
    # The mean's denominator: the sum of target weights (index targets), or the number of rows.
    den_buf, den = None, 1.0
    if reduction == "mean":
        if kind == INDEX_TARGET:
            den_buf = rows.index_denominator(ignore_index)
        else:
            den = float(R)
    G = row_group(C, K)
    blocks, threads = launch_shape(R, G, ROWS_BLOCK)
    work = R and C
    parts = _R.scratch(blocks if work else 0, rows.x, "parts")
    if work:
        D.launch(_ce_rows, blocks, rows.x, rows.xf, R, C, K, G, kind, rows.tf, rows.wf, rows.has_w,
                 int(ignore_index), float(label_smoothing), rows.reduce, rows.loss_flat, parts, rows.ticket,
                 rows.out, den, grad is not None, *rows.inc.args(), 1.0 / den if den else math.inf,
                 den_buf if den_buf is not None else parts, den_buf is not None, rows.gxf, threads=threads)
    elif rows.reduce:
        D.empty_sum(rows.out, den, den_buf)
    return rows.result(grad)


@D.on_input_device
def nll(x, t, w, ignore_index, reduction, grad):
    """Negative log-likelihood of log-probabilities ``x`` (classes on axis 1), class-index ``t``.

    The value alone reads one element per row (a thread per row); with the gradient, a warp per line
    writes the whole (mostly zero) gradient with coalesced stores and adds up the loss too.
    """
    rows = _Rows(x, t, w, reduction, grad)
    C, K, R, n = rows.C, rows.K, rows.R, rows.x.size
    den_buf = rows.index_denominator(ignore_index) if reduction == "mean" else None
    ignore = int(ignore_index)
    if grad is None:
        blocks = D.blocks_for(R)
        parts = _R.scratch(blocks if R and C else 0, rows.x, "parts")
        if R and C:
            D.launch(_nll_rows, blocks, rows.x, rows.xf, C, K, rows.tf, rows.wf, rows.has_w, ignore, rows.reduce,
                     rows.loss_flat, parts, rows.ticket, rows.out, 1.0, den_buf if den_buf is not None else parts,
                     den_buf is not None)
        elif rows.reduce:
            D.empty_sum(rows.out, 1.0, den_buf)
    else:
        L, J = (R, C) if K == 1 else (n // K if K else 0, K)
        threads = ROWS_BLOCK
        blocks = max(1, min(MAX_ROW_BLOCKS, -(-L * WARP // threads)))
        parts = _R.scratch(blocks if n else 0, rows.x, "parts")
        if n:
            D.launch(_nll_lines, blocks, rows.x, rows.xf, L, J, C, K, rows.tf, rows.wf, rows.has_w, ignore,
                     rows.reduce, rows.loss_flat, parts, rows.ticket, rows.out, 1.0, *rows.inc.args(), 1.0,
                     den_buf if den_buf is not None else parts, den_buf is not None, rows.gxf, threads=threads)
        elif rows.reduce:
            D.empty_sum(rows.out, 1.0, den_buf)
    return rows.result(grad)
