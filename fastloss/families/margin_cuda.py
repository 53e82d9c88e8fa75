"""CUDA twin of the margin family: ``multi_margin_loss`` and ``multilabel_margin_loss`` with the drivers
and semantics of :mod:`fastloss.families.margin` (torch 2.13), for GPU arrays.

The one-point maths is :func:`fastloss.families.margin.margin_point` itself, compiled here as a device
function; ``z`` and its term are in the data's precision (float32 maths for float32 data, as PyTorch),
each thread's share of a row is summed in that precision and the shares are added in float64 by warp
shuffles (:mod:`fastloss._cuda_reduce`). Per-row values are float64; each block leaves one float64
partial of the loss and one block adds the partials in a fixed order (deterministic).

* ``multi_margin_loss``: a *group* of ``G`` lanes per row (``G`` a power of two: the row's width up to
  a warp, several rows per block; longer rows up to ``ROW_THREADS`` lanes, a block per row). Every
  lane reads ``x_y``, strides over the row's other classes (coalesced) writing their gradients
  ``c h'(z_i)`` in the same pass, and the group adds the lanes' loss and gradient shares; lane 0 then
  writes the loss and ``-sum`` at ``y``. ``x_y`` is read by every lane before the reduction that
  precedes its write, so the gradient may overwrite the input.
* ``multilabel_margin_loss``: a block per row (its threads stride over the classes). The row's list
  ends at its first ``-1`` (a block maximum); ``mark`` (an int32 scratch of the input's size) holds
  ``-1`` for the classes not listed and, for each listed class, how many classes violate it, summed
  over its listings. Per listed target ``j``: every thread adds ``h(1 - x_{t_j} + x_i)`` over its
  unlisted classes and counts them, the block adds the counts, thread 0 adds them to ``mark``. The
  gradient pass then writes ``-c mark_i`` at listed classes and ``c * #{j violated by i}`` at the
  others (recounted per class, ``O(L)`` each: the same work as the loss pass, no per-class storage).
  That pass reads other classes' logits while threads write gradients, so a gradient written over
  the input (``out=``) is computed from a copy of it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int32, int64, uint32, uint64

from .. import _cuda_arrays as D
from .. import _cuda_reduce as _R
from .. import _cuda_rows as _rows
from .._cuda_arrays import incoming_at
from .._cuda_rows import MAX_ROW_BLOCKS, PER_THREAD, ROW_THREADS, launch_shape, row_group
from .margin import margin_point

_rows.install(globals())  # group_sum, block_sum, block_max, row_slots, row_sum, finish_partials, cast, WARP

#: The one-point maths of the CPU kernels, as a device function.
point = cuda.jit(device=True)(margin_point)

#: Threads per block when a block holds several rows (groups of at most a warp).
ROWS_BLOCK = 8 if D.SIMULATOR else 256
BUF = _R.BUF


def block_threads(C: int) -> int:
    """Threads of the block-per-row kernel: about ``PER_THREAD`` classes each, a warp at least."""
    g = WARP
    while g * PER_THREAD < C and g < ROW_THREADS:
        g *= 2
    return g


# --------------------------------------------------------------------------------------------------
# multi_margin_loss
# --------------------------------------------------------------------------------------------------
@D.jit_kernel
def _multi_margin_rows(x, R, C, G, t, w, has_w, margin, squared, reduce, loss_out, parts, ticket, out, den,
                       with_grad, gs, gv, gstep, inv_den, gx):
    """``w_y / C * sum_{i != y} h(margin - x_y + x_i)`` per row (``loss_out[r]``, or the block's partial
    sum into ``parts``); with ``with_grad``, its gradient into ``gx`` (which may be ``x``). ``w``: class
    weights (``has_w``), else any array of the data's dtype, never read."""
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    tmp = cuda.local.array(1, x.dtype)
    zero, one = cast(tmp, 0.0), cast(tmp, 1.0)
    lane, sub, start, step = row_slots(G)
    acc = 0.0
    for first in range(start, R, step):
        r = first + sub
        live = r < R
        s, d = zero, zero
        y = int64(0)
        base = int64(0)
        wy = 0.0
        if live:
            y = int64(t[r])
            base = int64(r) * C
            wy = (float64(w[y]) if has_w else 1.0) / C
            a = cast(tmp, margin - float64(x[uint64(base + y)]))
            c = zero
            if with_grad:
                c = cast(tmp, incoming_at(gs, gv, gstep, 0 if reduce else r) * inv_den * wy)
            i = int64(lane)
            while i < C:
                if i != y:
                    h, dh = point(a + x[uint64(base + i)], squared, zero, one)
                    s += h
                    if with_grad:
                        g = c * dh
                        gx[uint64(base + i)] = g
                        d += g
                i += G
        S = row_sum(buf, float64(s), G)
        Dy = 0.0
        if with_grad:
            Dy = row_sum(buf, float64(d), G)
        if live and lane == 0:
            loss = S * wy
            if reduce:
                acc += loss
            else:
                loss_out[r] = loss
            if with_grad:
                gx[uint64(base + y)] = -Dy
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, parts, False)


# --------------------------------------------------------------------------------------------------
# multilabel_margin_loss
# --------------------------------------------------------------------------------------------------
@D.jit_kernel
def _multilabel_rows(x, R, C, t, mark, reduce, loss_out, parts, ticket, out, den, with_grad, gs, gv, gstep, inv_den, gx):
    """``1 / C * sum_{j listed} sum_{i not listed} h(1 - x_{t_j} + x_i)`` per row, a block per row
    (see the module docstring); ``mark``: int32 scratch of ``R * C``; ``gx`` must not be ``x``."""
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    tmp = cuda.local.array(1, x.dtype)
    zero, one = cast(tmp, 0.0), cast(tmp, 1.0)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    acc = 0.0
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        base = int64(r) * C
        # the list's length: its first negative entry (C if none)
        end = C
        j = int64(tid)
        while j < C:
            if t[uint64(base + j)] < 0:
                end = j
                break
            j += T
        L = int64(-block_max(buf, float64(-end)))
        i = int64(tid)
        while i < C:
            mark[uint64(base + i)] = -1
            i += T
        cuda.syncthreads()
        j = int64(tid)
        while j < L:
            mark[uint64(base + int64(t[uint64(base + j)]))] = 0  # a repeated target writes 0 twice
            j += T
        cuda.syncthreads()
        s = 0.0
        for j in range(L):
            a = one - x[uint64(base + int64(t[uint64(base + j)]))]
            part, n = zero, zero
            i = int64(tid)
            while i < C:
                if mark[uint64(base + i)] < 0:  # listed classes stay >= 0 while thread 0 counts
                    h, dh = point(a + x[uint64(base + i)], False, zero, one)
                    part += h
                    n += dh
                i += T
            s += float64(part)
            if with_grad:
                nj = block_sum(buf, float64(n))
                if tid == 0:
                    tj = int64(t[uint64(base + j)])
                    mark[uint64(base + tj)] += int32(nj)
        S = block_sum(buf, s)
        if tid == 0:
            loss = S / C
            if reduce:
                acc += loss
            else:
                loss_out[r] = loss
        if with_grad:
            cuda.syncthreads()  # thread 0's counts in mark
            c = incoming_at(gs, gv, gstep, 0 if reduce else r) * inv_den / C
            cd = cast(tmp, c)
            i = int64(tid)
            while i < C:
                m = mark[uint64(base + i)]
                if m >= 0:
                    gx[uint64(base + i)] = -c * float64(m)
                else:
                    xi = x[uint64(base + i)]
                    cnt = zero
                    for j in range(L):
                        a = one - x[uint64(base + int64(t[uint64(base + j)]))]
                        h, dh = point(a + xi, False, zero, one)
                        cnt += dh
                    gx[uint64(base + i)] = cd * cnt
                i += T
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, parts, False)


# --------------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------------
def _device_copy(a):
    """A new C-contiguous copy of device array ``a`` on its device."""
    if D.is_cupy(a):
        return a.copy()
    out = D.empty(a.shape, a.dtype, a)
    if a.size:
        out.copy_to_device(a, stream=D.stream_for(a))
    return out


class _Rows:
    """Flat views, the loss and gradient buffers and the incoming gradient of one call."""

    def __init__(self, x, t, n, n_cls, loss_shape, reduction, grad, copy_for_out):
        xc = D.contiguous(x)
        self.grad, self.reduce = grad, reduction != "none"
        self.gx = grad.out_for(0, x) if grad is not None else None
        if copy_for_out and grad is not None and grad.out is not None:
            xc = _device_copy(xc)  # the kernel reads other classes' logits while writing gradients
        size = n * n_cls
        self.x, self.xf = xc, D.reshape(xc, (size,))
        self.tf = D.reshape(D.contiguous(t), (t.size,))
        self.gxf = D.reshape(self.gx, (size,)) if self.gx is not None else self.xf
        self.loss_shape = tuple(loss_shape)
        self.loss, self.loss_flat = None, self.xf  # a stand-in, never written when reduced
        if not self.reduce:
            self.loss = D.empty(self.loss_shape or (1,), xc.dtype, xc)
            self.loss_flat = D.reshape(self.loss, (n,))
        shape = () if self.reduce else self.loss_shape
        self.inc = grad.incoming(shape, self.xf) if grad is not None else D.Incoming(1.0, self.xf, -1)
        self.n = n
        self.inv_den = 1.0 / n if reduction == "mean" and n else 1.0
        self.den = (float(n) if n else math.nan) if reduction == "mean" else 1.0
        self.out = D.result_buffer(self.x) if self.reduce else self.xf  # a stand-in for 'none'
        self.ticket = _R.ticket(self.x)

    def result(self, parts):
        """The value (the 0-d ``out`` its kernel summed into; ``parts`` is empty when there was no row
        and no launch) and gradient."""
        if self.reduce:
            if not parts.shape[0]:
                D.empty_sum(self.out, den=self.den)
            value = D.scalar_view(self.out)
        else:
            value = self.loss if self.loss_shape else D.scalar_view(self.loss)
        return value if self.grad is None else (value, (self.gx,))


def _rows_of(x):
    n = int(x.shape[0]) if x.ndim == 2 else 1
    return n, (int(tuple(x.shape)[-1]) if x.ndim else 1)


@D.on_input_device
def multi_margin(x, t, p, margin, w, reduction, grad):
    """``multi_margin_loss`` of device arrays: ``x`` ``(N, C)``, ``(C,)`` or ``()``; ``t`` ``(N,)`` or ``()``."""
    n, n_cls = _rows_of(x)
    rows = _Rows(x, t, n, n_cls, tuple(t.shape), reduction, grad, False)
    has_w = w is not None
    wf = D.contiguous(w) if has_w else rows.xf
    G = row_group(n_cls)
    blocks, threads = launch_shape(n, G, ROWS_BLOCK)
    parts = _R.scratch(blocks if n else 0, rows.x, "parts")
    if n:
        D.launch(_multi_margin_rows, blocks, rows.x, rows.xf, n, n_cls, G, rows.tf, wf, has_w, float(margin),
                 p == 2, rows.reduce, rows.loss_flat, parts, rows.ticket, rows.out, rows.den, grad is not None, *rows.inc.args(), rows.inv_den,
                 rows.gxf, threads=threads)
    return rows.result(parts)


@D.on_input_device
def multilabel_margin(x, t, reduction, grad):
    """``multilabel_margin_loss`` of device arrays: ``x`` and ``t`` ``(N, C)``, ``(C,)`` or ``()``."""
    n, n_cls = _rows_of(x)
    rows = _Rows(x, t, n, n_cls, (n,) if x.ndim == 2 else (), reduction, grad, True)
    blocks = max(1, min(MAX_ROW_BLOCKS, n))
    parts = _R.scratch(blocks if n else 0, rows.x, "parts")
    if n:
        mark = D.empty((n * n_cls,), np.int32, rows.x)
        D.launch(_multilabel_rows, blocks, rows.x, rows.xf, n, n_cls, rows.tf, mark, rows.reduce, rows.loss_flat,
                 parts, rows.ticket, rows.out, rows.den, grad is not None, *rows.inc.args(), rows.inv_den, rows.gxf,
                 threads=block_threads(n_cls))
    return rows.result(parts)
