"""CUDA twin of the softmax family: ``log_softmax``, ``softmax``, ``nll_loss``, ``cross_entropy``.

Same drivers and semantics as :mod:`fastloss.families.softmax` (PyTorch 2.13), for GPU arrays.

Layout. The input is viewed as ``(O, C, K)`` in C order: ``C`` the classes (the softmax axis), ``O`` the
axes before it and ``K`` those after it. A *row* is ``x[o, :, k]``; its elements lie ``K`` apart, and
row ``r = o * K + k`` is element ``r`` of the loss for ``reduction='none'`` (the target's C order).

Two row kernels per loss, chosen by shape:

* **one block per row** (``K == 1`` and ``C >= ROW_BLOCK_MIN_C``): the block's threads stride over the
  row, so reads are coalesced; the row maximum and sum of exponentials are kept *online* per thread
  (``m``, ``s`` with ``s = sum exp(x - m)``) and merged through shared memory, so the value needs one
  read of the row and the gradient one more.
* **one thread per row** (small ``C``, or ``K > 1`` where neighbouring threads read neighbouring ``k``,
  which is coalesced too): the same online pass in registers.

Everything is accumulated in float64 (float32 data is widened on load) and rounded once when stored.
The gradient is written in the same kernel as the value. Reductions: each block leaves one float64
partial sum, and one block adds the partials in a fixed order (deterministic, no float atomics).
``reduction='mean'`` of class-index targets divides by ``sum_i w[t_i]`` over non-ignored targets,
which a first small kernel computes from the targets alone, so the fused kernel can scale the gradient.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64

from .. import _cuda_arrays as D
from .._cuda_arrays import TPB, incoming_at

block_sum, block_max = D.block_reductions(globals())

#: Rows of at least this many classes (and K == 1) get a block each; fewer, a thread each.
ROW_BLOCK_MIN_C = 2 * TPB
#: At most this many blocks for the block-per-row kernels (they stride over the rows beyond).
MAX_ROW_BLOCKS = 3 if D.SIMULATOR else 8192

# Kinds of target of the cross-entropy kernels.
INDEX_TARGET, PROB_TARGET = 0, 1


# --------------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def online_add(m, s, v):
    """Add ``v`` to the running (max ``m``, sum ``s`` of exp(x - m)); returns the new pair.

    NaN never becomes the maximum (``v > m`` is false) but makes ``s`` NaN, and a row of -inf gives
    exp(-inf + inf) = NaN: both propagate to every output of the row, as in PyTorch.
    """
    if v > m:
        return v, s * math.exp(m - v) + 1.0
    return m, s + math.exp(v - m)


@cuda.jit(device=True)
def block_logsumexp(buf, m, s):
    """log(sum exp) of a row from each thread's online pair (every thread gets it)."""
    big = block_max(buf, m)
    total = block_sum(buf, s * math.exp(m - big) if m > -math.inf else s)
    return big + math.log(total)


@cuda.jit(device=True)
def row_scale(reduce, scale, gv, gstep, r, inv_den, den_buf, use_den_buf):
    """Incoming gradient of row ``r``'s loss: grad_output of the row (of the 0-d loss when
    ``reduce``), divided by the mean's denominator (``1 / inv_den``, or ``den_buf[0]``)."""
    g = incoming_at(scale, gv, gstep, 0 if reduce else r) * inv_den
    if use_den_buf:
        g = g / den_buf[0]
    return g


# --------------------------------------------------------------------------------------------------
# log_softmax / softmax
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def softmax_out(v, lse, log):
    """log_softmax (``log``) or softmax of one element, given its row's log-sum-exp."""
    if log:
        return v - lse
    return math.exp(v - lse)


@cuda.jit(device=True)
def softmax_vjp(g, p, sg, log):
    """Vector-Jacobian product at one element: ``g - p * sum(g)`` for log_softmax,
    ``p * (g - sum(g * p))`` for softmax (``sg`` is that row sum)."""
    if log:
        return g - p * sg
    return p * (g - sg)


@cuda.jit
def _softmax_rows_thread(x, C, K, log, y, with_grad, gs, gv, gstep, gx):
    """One thread per row: ``y = (log_)softmax(x)`` and, with ``with_grad``, ``gx`` its VJP."""
    R = x.shape[0] // C
    for r in range(cuda.grid(1), R, cuda.gridsize(1)):
        base = (r // K) * C * K + r % K
        m, s = -math.inf, 0.0
        for c in range(C):
            m, s = online_add(m, s, float64(x[base + c * K]))
        lse = m + math.log(s)
        sg = 0.0
        if with_grad:
            for c in range(C):
                i = base + c * K
                g = incoming_at(gs, gv, gstep, i)
                sg += g if log else g * math.exp(float64(x[i]) - lse)
        for c in range(C):
            i = base + c * K
            v = float64(x[i])
            y[i] = softmax_out(v, lse, log)
            if with_grad:
                gx[i] = softmax_vjp(incoming_at(gs, gv, gstep, i), math.exp(v - lse), sg, log)


@cuda.jit
def _softmax_rows_block(x, C, log, y, with_grad, gs, gv, gstep, gx):
    """One block per row of a ``(R, C)`` layout (K == 1): as :func:`_softmax_rows_thread`."""
    buf = cuda.shared.array(TPB, float64)
    tid = cuda.threadIdx.x
    R = x.shape[0] // C
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        base = r * C
        m, s = -math.inf, 0.0
        for c in range(tid, C, TPB):
            m, s = online_add(m, s, float64(x[base + c]))
        lse = block_logsumexp(buf, m, s)
        sg = 0.0
        if with_grad:
            part = 0.0
            for c in range(tid, C, TPB):
                g = incoming_at(gs, gv, gstep, base + c)
                part += g if log else g * math.exp(float64(x[base + c]) - lse)
            sg = block_sum(buf, part)
        for c in range(tid, C, TPB):
            i = base + c
            v = float64(x[i])
            y[i] = softmax_out(v, lse, log)
            if with_grad:
                gx[i] = softmax_vjp(incoming_at(gs, gv, gstep, i), math.exp(v - lse), sg, log)


def _layout(shape, axis):
    """``(O, C, K)`` of ``shape`` around ``axis``."""
    O = int(np.prod(shape[:axis], dtype=np.int64))
    K = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return O, int(shape[axis]), K


def _uses_row_blocks(C, K):
    return K == 1 and C >= ROW_BLOCK_MIN_C


def _softmax_driver(x, axis, grad, log):
    x = D.contiguous(x)
    O, C, K = _layout(x.shape, axis)
    y = D.empty(x.shape, x.dtype, x)
    gx = grad.out_for(0, x) if grad is not None else None
    if x.size:
        n = x.size
        xf, yf = D.reshape(x, (n,)), D.reshape(y, (n,))
        inc = grad.incoming(x.shape, x) if grad is not None else D.Incoming(1.0, xf, -1)
        gxf = D.reshape(gx, (n,)) if gx is not None else yf
        with_grad = grad is not None
        if _uses_row_blocks(C, K):
            D.launch(_softmax_rows_block, min(O, MAX_ROW_BLOCKS), x, xf, C, log, yf, with_grad, *inc.args(), gxf)
        else:
            D.launch(_softmax_rows_thread, D.blocks_for(O * K), x, xf, C, K, log, yf, with_grad, *inc.args(), gxf)
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


# --------------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def target_of(t, r):
    """Class index of row ``r`` as int64 (targets may be of any integer dtype, uint64 included)."""
    return int64(t[r])


@cuda.jit(device=True)
def target_weight(t, w, has_w, ignore, r):
    """``w[t_r]`` (1 without weights), 0 for an ignored target."""
    ti = target_of(t, r)
    if ti == ignore:
        return 0.0
    if has_w:
        return float64(w[ti])
    return 1.0


@cuda.jit
def _target_weight_sum(t, w, has_w, ignore, parts):
    """Per-block partial sums of ``w[t_r]`` over non-ignored targets: the mean's denominator."""
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    for r in range(cuda.grid(1), t.shape[0], cuda.gridsize(1)):
        acc += target_weight(t, w, has_w, ignore, r)
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


@cuda.jit(device=True)
def class_weight(w, has_w, c):
    """``w[c]``, 1 without weights."""
    if has_w:
        return float64(w[c])
    return 1.0


@cuda.jit(device=True)
def smoothed(t, eps, C, i):
    """The smoothed probability target ``q = (1 - eps) t + eps / C`` of flat element ``i``."""
    return (1.0 - eps) * float64(t[i]) + eps / C


@cuda.jit(device=True)
def ce_row_pass(kind, x, t, w, has_w, ignore, eps, C, K, r, c_lo, c_step):
    """A thread's share of row ``r``'s one read: online ``(m, s)`` and the linear sums ``(A, B)`` over
    classes ``c_lo, c_lo + c_step, ...``:

    index targets: ``A = sum_c w_c x_c``, ``B = sum_c w_c`` (needed with label smoothing only);
    probability targets: ``A = sum_c w_c q_c x_c``, ``B = sum_c w_c q_c``.
    An ignored row is not read (``s = 1`` keeps its log finite).
    """
    if kind == INDEX_TARGET and target_of(t, r) == ignore:
        return 0.0, 1.0, 0.0, 0.0
    linear = kind != INDEX_TARGET or eps > 0.0
    base = (r // K) * C * K + r % K
    m, s, A, B = -math.inf, 0.0, 0.0, 0.0
    for c in range(c_lo, C, c_step):
        i = base + c * K
        v = float64(x[i])
        m, s = online_add(m, s, v)
        if linear:
            wq = class_weight(w, has_w, c)
            if kind != INDEX_TARGET:
                wq *= smoothed(t, eps, C, i)
            A += wq * v
            B += wq
    return m, s, A, B


@cuda.jit(device=True)
def ce_row_loss(kind, eps, C, wt, xt, lse, A, B):
    """A row's cross entropy from its log-sum-exp and linear sums (see :func:`ce_row_pass`).

    index: ``-(1 - eps) w_t (x_t - lse) - eps / C (A - B lse)``; probabilities: ``-(A - B lse)``.
    The smoothing term is left out when ``eps == 0`` (so that 0 * inf cannot make a NaN).
    """
    if kind == INDEX_TARGET:
        loss = -(1.0 - eps) * wt * (xt - lse)
        if eps > 0.0:
            loss -= eps / C * (A - B * lse)
        return loss
    return B * lse - A


@cuda.jit(device=True)
def ce_write_grad(kind, x, t, w, has_w, ignore, eps, C, K, r, c_lo, c_step, lse, wt, B, scale, gx):
    """Write row ``r``'s gradient at classes ``c_lo, c_lo + c_step, ...``, times ``scale``:

    index: ``p_c ((1 - eps) w_t + eps / C B) - (1 - eps) w_t [c == t] - eps / C w_c`` (0 if ignored);
    probabilities: ``p_c B - w_c q_c``; ``p = softmax(x)``.
    Each element is read before it is written by the same thread, so ``gx`` may be ``x``.
    """
    base = (r // K) * C * K + r % K
    ti = target_of(t, r) if kind == INDEX_TARGET else -1
    ignored = kind == INDEX_TARGET and ti == ignore
    for c in range(c_lo, C, c_step):
        i = base + c * K
        if ignored:
            gx[i] = 0.0
            continue
        p = math.exp(float64(x[i]) - lse)
        wc = class_weight(w, has_w, c)
        if kind == INDEX_TARGET:
            d = p * ((1.0 - eps) * wt + eps / C * B) - eps / C * wc
            if c == ti:
                d -= (1.0 - eps) * wt
        else:
            d = p * B - wc * smoothed(t, eps, C, i)
        gx[i] = scale * d


@cuda.jit(device=True)
def ce_target_logit(kind, x, t, ignore, C, K, r):
    """The logit ``x_t`` at row ``r``'s index target (0 if ignored, or for probability targets)."""
    if kind != INDEX_TARGET:
        return 0.0
    ti = target_of(t, r)
    if ti == ignore:
        return 0.0
    return float64(x[(r // K) * C * K + ti * K + r % K])


@cuda.jit(device=True)
def ce_total_weight(kind, has_w, C, B):
    """B of an index target's smoothing term: ``sum_c w_c``, simply C without weights."""
    if kind == INDEX_TARGET and not has_w:
        return float64(C)
    return B


@cuda.jit
def _ce_rows_thread(x, C, K, kind, t, w, has_w, ignore, eps, reduce, loss_out, parts,
                    with_grad, gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """Cross entropy, one thread per row: the row's loss into ``loss_out[r]`` (``reduce`` false) or
    this block's partial sum into ``parts``; with ``with_grad``, the row's gradient into ``gx``."""
    buf = cuda.shared.array(TPB, float64)
    R = x.shape[0] // C
    acc = 0.0
    for r in range(cuda.grid(1), R, cuda.gridsize(1)):
        m, s, A, B = ce_row_pass(kind, x, t, w, has_w, ignore, eps, C, K, r, 0, 1)
        B = ce_total_weight(kind, has_w, C, B)
        lse = m + math.log(s)
        wt = target_weight(t, w, has_w, ignore, r) if kind == INDEX_TARGET else 0.0
        xt = ce_target_logit(kind, x, t, ignore, C, K, r)
        loss = ce_row_loss(kind, eps, C, wt, xt, lse, A, B)
        if kind == INDEX_TARGET and target_of(t, r) == ignore:
            loss = 0.0
        if reduce:
            acc += loss
        else:
            loss_out[r] = loss
        if with_grad:
            scale = row_scale(reduce, gs, gv, gstep, r, inv_den, den_buf, use_den_buf)
            ce_write_grad(kind, x, t, w, has_w, ignore, eps, C, K, r, 0, 1, lse, wt, B, scale, gx)
    if reduce:
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            parts[cuda.blockIdx.x] = total


@cuda.jit
def _ce_rows_block(x, C, kind, t, w, has_w, ignore, eps, reduce, loss_out, parts,
                   with_grad, gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """Cross entropy, one block per row of a ``(R, C)`` layout: as :func:`_ce_rows_thread`."""
    buf = cuda.shared.array(TPB, float64)
    tid = cuda.threadIdx.x
    R = x.shape[0] // C
    acc = 0.0
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        m, s, A, B = ce_row_pass(kind, x, t, w, has_w, ignore, eps, C, 1, r, tid, TPB)
        lse = block_logsumexp(buf, m, s)
        if kind != INDEX_TARGET or eps > 0.0:
            A = block_sum(buf, A)
            B = block_sum(buf, B)
        B = ce_total_weight(kind, has_w, C, B)
        wt = target_weight(t, w, has_w, ignore, r) if kind == INDEX_TARGET else 0.0
        xt = ce_target_logit(kind, x, t, ignore, C, 1, r)
        if tid == 0:
            loss = ce_row_loss(kind, eps, C, wt, xt, lse, A, B)
            if kind == INDEX_TARGET and target_of(t, r) == ignore:
                loss = 0.0
            if reduce:
                acc += loss
            else:
                loss_out[r] = loss
        if with_grad:
            cuda.syncthreads()  # every thread has read x[t_r] before gx (possibly x itself) is written
            scale = row_scale(reduce, gs, gv, gstep, r, inv_den, den_buf, use_den_buf)
            ce_write_grad(kind, x, t, w, has_w, ignore, eps, C, 1, r, tid, TPB, lse, wt, B, scale, gx)
    if reduce:
        total = block_sum(buf, acc)
        if tid == 0:
            parts[cuda.blockIdx.x] = total


def _class_layout(x):
    """``(O, C, K)`` of a classification input: classes on axis 1, or axis 0 for a 1-D input."""
    return _layout(x.shape, 0 if x.ndim == 1 else 1)


def _none_shape(x):
    """Shape of ``reduction='none'``: the input without its class axis."""
    return () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])


def _row_buffer(x):
    """The per-row loss of ``reduction='none'`` (a 1-element buffer for a 1-D input)."""
    return D.empty((1,) if x.ndim == 1 else _none_shape(x), x.dtype, x)


def _none_value(loss_rows, x):
    return D.scalar_view(loss_rows) if x.ndim == 1 else loss_rows


def _index_denominator(tf, wf, has_w, ignore_index, like):
    """float64 device buffer holding ``sum_i w[t_i]`` over non-ignored targets (mean's denominator)."""
    blocks = D.blocks_for(tf.shape[0])
    parts = D.partial_buffer(blocks, like)
    D.launch(_target_weight_sum, blocks, like, tf, wf, has_w, ignore_index, parts)
    den = D.result_buffer(like, np.float64)
    D.finish_sum(parts, den)
    return den


def _reduced_value(parts, x, den=1.0, den_buf=None):
    """The 0-d result: ``sum(parts) / den`` (or ``/ den_buf[0]``) in ``x``'s dtype."""
    out = D.result_buffer(x)
    D.finish_sum(parts, out, den=den, den_buf=den_buf)
    return D.scalar_view(out)


def _inverse(den):
    return 1.0 / den if den else math.inf


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
        self.loss_rows = _row_buffer(self.x)
        self.loss_flat = D.reshape(self.loss_rows, (self.R,))
        self.gx = grad.out_for(0, self.x) if grad is not None else None
        self.gxf = D.reshape(self.gx, (n,)) if self.gx is not None else self.xf
        shape = () if self.reduce else _none_shape(self.x)
        self.inc = grad.incoming(shape, self.x) if grad is not None else D.Incoming(1.0, self.xf, -1)

    def index_denominator(self, ignore_index):
        return _index_denominator(self.tf, self.wf, self.has_w, ignore_index, self.x)

    def result(self, parts, grad, den=1.0, den_buf=None):
        value = _reduced_value(parts, self.x, den, den_buf) if self.reduce else _none_value(self.loss_rows, self.x)
        return value if grad is None else (value, (self.gx,))


@D.on_input_device
def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, grad):
    """Cross entropy of logits ``x`` (classes on axis 1) with index or probability targets ``t``."""
    kind = PROB_TARGET if np.dtype(t.dtype).kind == "f" else INDEX_TARGET
    eps = float(label_smoothing)
    rows = _Rows(x, t, w, reduction, grad, target_per_element=kind == PROB_TARGET)
    C, K, R = rows.C, rows.K, rows.R
    # The mean's denominator: the sum of target weights (index targets), or the number of rows.
    den_buf, den = None, 1.0
    if reduction == "mean":
        if kind == INDEX_TARGET:
            den_buf = rows.index_denominator(ignore_index)
        else:
            den = float(R)
    by_blocks = _uses_row_blocks(C, K)
    blocks = min(R, MAX_ROW_BLOCKS) if by_blocks else D.blocks_for(R)
    parts = D.partial_buffer(blocks if R and C else 0, rows.x)
    if R and C:
        args = (kind, rows.tf, rows.wf, rows.has_w, int(ignore_index), eps, rows.reduce, rows.loss_flat, parts,
                grad is not None, *rows.inc.args(), _inverse(den), den_buf if den_buf is not None else parts,
                den_buf is not None, rows.gxf)
        if by_blocks:
            D.launch(_ce_rows_block, blocks, rows.x, rows.xf, C, *args)
        else:
            D.launch(_ce_rows_thread, blocks, rows.x, rows.xf, C, K, *args)
    return rows.result(parts, grad, den, den_buf)


# --------------------------------------------------------------------------------------------------
# nll_loss
# --------------------------------------------------------------------------------------------------
@cuda.jit
def _nll_rows(x, C, K, t, w, has_w, ignore, reduce, loss_out, parts):
    """NLL value, one thread per row: ``-w[t_r] x[r, t_r]`` (0 where ignored)."""
    buf = cuda.shared.array(TPB, float64)
    R = t.shape[0]
    acc = 0.0
    for r in range(cuda.grid(1), R, cuda.gridsize(1)):
        loss = 0.0
        ti = target_of(t, r)
        if ti != ignore:
            loss = -target_weight(t, w, has_w, ignore, r) * float64(x[(r // K) * C * K + ti * K + r % K])
        if reduce:
            acc += loss
        else:
            loss_out[r] = loss
    if reduce:
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            parts[cuda.blockIdx.x] = total


@cuda.jit
def _nll_elements(x, C, K, t, w, has_w, ignore, reduce, loss_out, parts,
                  gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """NLL value and gradient, one thread per *element* (coalesced writes of the whole gradient):
    ``gx[o, c, k] = -w[t] * scale`` where ``c == t[o, k]``, else 0; the element at the target also
    adds the row's loss."""
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        c = (i // K) % C
        r = (i // (C * K)) * K + i % K
        ti = target_of(t, r)
        d = 0.0
        if ti != ignore and ti == c:
            wt = target_weight(t, w, has_w, ignore, r)
            loss = -wt * float64(x[i])
            d = -wt * row_scale(reduce, gs, gv, gstep, r, inv_den, den_buf, use_den_buf)
            if reduce:
                acc += loss
            else:
                loss_out[r] = loss
        elif ti == ignore and c == 0 and not reduce:
            loss_out[r] = 0.0
        gx[i] = d
    if reduce:
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            parts[cuda.blockIdx.x] = total


@D.on_input_device
def nll(x, t, w, ignore_index, reduction, grad):
    """Negative log-likelihood of log-probabilities ``x`` (classes on axis 1), class-index ``t``.

    The value alone reads one element per row (a thread per row); with the gradient, a thread per
    element writes the whole (mostly zero) gradient with coalesced stores and adds up the loss too.
    """
    rows = _Rows(x, t, w, reduction, grad)
    C, K, R, n = rows.C, rows.K, rows.R, rows.x.size
    den_buf = rows.index_denominator(ignore_index) if reduction == "mean" else None
    ignore = int(ignore_index)
    if grad is None:
        blocks = D.blocks_for(R)
        parts = D.partial_buffer(blocks if R else 0, rows.x)
        if R:
            D.launch(_nll_rows, blocks, rows.x, rows.xf, C, K, rows.tf, rows.wf, rows.has_w, ignore, rows.reduce,
                     rows.loss_flat, parts)
    else:
        blocks = D.blocks_for(n)
        parts = D.partial_buffer(blocks if n else 0, rows.x)
        if n:
            D.launch(_nll_elements, blocks, rows.x, rows.xf, C, K, rows.tf, rows.wf, rows.has_w, ignore,
                     rows.reduce, rows.loss_flat, parts, *rows.inc.args(), 1.0,
                     den_buf if den_buf is not None else parts, den_buf is not None, rows.gxf)
    return rows.result(parts, grad, 1.0, den_buf)
