"""CUDA twin of the ranking family: ``margin_ranking_loss``, ``hinge_embedding_loss``,
``cosine_embedding_loss``, with the drivers and semantics of :mod:`fastloss.families.ranking` (torch 2.13).

* margin ranking and hinge embedding: one grid-stride kernel over the elements, value and gradients
  in the same pass, in the data's precision (float32 maths for float32 data: a compare, a select
  and a multiply per element leave nothing to gain from float64);
* cosine embedding: a *group* of ``G`` lanes per row (``G`` the power of two >= the row's width, at
  most a warp; several short rows share a warp): lanes stride over the row (coalesced reads), each
  adds its share of the three dot products in the data's precision, the group adds the lanes' shares
  in float64 by warp shuffles; every lane then writes its elements' gradients from the row's sums.
  Each element is read before the same lane writes its gradients, so gradients may overwrite inputs.

Loss sums are float64; each block leaves one partial and one block adds them in a fixed order
(deterministic). The kinks follow torch's autograd: ``clamp_min(z, 0)`` passes the gradient where
``z >= 0`` and blocks it where ``z`` is NaN.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, uint32, uint64

from .. import _cuda_arrays as D
from .. import _cuda_reduce as _R
from .. import _cuda_rows as _rows
from .._cuda_arrays import incoming_at
from .._cuda_rows import launch_shape
from .ranking import COSINE_EPS  # torch's float32 EPSILON: one definition for both backends

_rows.install(globals())  # group_sum, block_sum, row_slots, finish_partials, cast, WARP

# Kinds of the element-wise kernel.
MARGIN_RANKING, HINGE_EMBEDDING = 0, 1
#: Threads per block of the row kernels (several groups of at most a warp each).
ROWS_BLOCK = 8 if D.SIMULATOR else 256
BUF = _R.BUF


def row_launch(rows: int, width: int):
    """``(G, blocks, threads)`` of a row kernel: ``G`` lanes per row, several rows per block."""
    G = _R.group_size(width)
    return (G, *launch_shape(rows, G, ROWS_BLOCK))


@cuda.jit(device=True)
def element_loss_grad(kind, x1, x2, y, margin, g, zero):
    """``(loss, d/dx1, d/dx2)`` of one element given its incoming gradient ``g`` (all in one dtype).

    margin ranking: ``max(0, -y (x1 - x2) + margin)``; hinge embedding (``x2`` unused):
    ``max(0, margin - x1)`` where ``y != 1`` plus ``x1`` where ``y != -1`` (both for other targets).
    """
    if kind == MARGIN_RANKING:
        z = -y * (x1 - x2) + margin
        d = zero
        if z >= zero:
            d = -y * g
        return (z if not z < zero else zero), d, -d
    loss = zero
    d = zero
    if y != 1:
        h = margin - x1
        loss += h if not h < zero else zero
        if h >= zero:
            d -= g
    if y != -1:
        loss += x1
        d += g
    return loss, d, zero


@D.jit_kernel
def _elementwise(kind, x1, x2, y, margin, reduce, loss_out, want_grad, inv_den, gs, gv, gstep, g1, g2, parts, ticket,
                 out, den):
    """Value and gradients of an element-wise loss in the data's precision; summed (``reduce``), the
    float64 total over ``den`` into ``out[0]`` (``finish_partials``: block sums in ``parts``)."""
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    tmp = cuda.local.array(1, x1.dtype)
    zero = cast(tmp, 0.0)
    m = cast(tmp, margin)
    g_red = cast(tmp, incoming_at(gs, gv, gstep, 0) * inv_den)  # the reduced loss's gradient
    acc = 0.0
    for i in range(cuda.grid(1), x1.shape[0], cuda.gridsize(1)):
        g = g_red if reduce else cast(tmp, incoming_at(gs, gv, gstep, i) * inv_den)
        loss, d1, d2 = element_loss_grad(kind, x1[i], x2[i], y[i], m, g, zero)
        acc += float64(loss)
        if not reduce:
            loss_out[i] = loss
        if want_grad:
            g1[i] = d1
            if kind == MARGIN_RANKING:
                g2[i] = d2
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, parts, False)


@D.jit_kernel
def _cosine_rows(x1, x2, y, rows, width, G, margin, reduce, loss_out, want_grad, inv_den, gs, gv, gstep,
                 g1, g2, parts, ticket, out, den):
    """Cosine embedding loss, ``G`` lanes per row of ``width`` values (flat C-order inputs).

    ``cos = <x1, x2> / sqrt((|x1|^2 + eps) (|x2|^2 + eps))``; loss ``1 - cos`` (y == 1),
    ``max(0, cos - margin)`` (y == -1), else 0. Backward, as torch's chain rule for the row::

        gcos = -g (y == 1), g where cos - margin >= 0 (y == -1), else 0
        gprod = gcos / denom,  gsq = -gcos cos / denom / (2 denom)
        d/dx1 = gprod x2 + 2 gsq m2 x1,   d/dx2 = gprod x1 + 2 gsq m1 x2

    Every lane runs the same number of row iterations (rows past the end are masked): the group
    reductions need every lane (see :mod:`fastloss._cuda_reduce`).
    """
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    tmp = cuda.local.array(1, x1.dtype)
    zero = cast(tmp, 0.0)
    lane, sub, start, step = row_slots(G)
    acc = 0.0
    for first in range(start, rows, step):
        r = first + sub
        live = r < rows
        base = r * width
        end = base + width
        # each lane's share of the three sums in the data's precision, the group's in float64
        sp, s1, s2 = zero, zero, zero
        if live:
            i = base + lane
            while i < end:
                a = x1[uint64(i)]
                b = x2[uint64(i)]
                sp += a * b
                s1 += a * a
                s2 += b * b
                i += G
        prod = group_sum(buf, float64(sp), G)
        m1 = group_sum(buf, float64(s1), G) + COSINE_EPS
        m2 = group_sum(buf, float64(s2), G) + COSINE_EPS
        if not live:
            continue
        denom = math.sqrt(m1 * m2)
        cos = prod / denom
        yr = float64(y[r])
        loss = 0.0
        if yr == 1.0:
            loss = 1.0 - cos
        elif yr == -1.0:
            loss = cos - margin
            if loss < 0.0:
                loss = 0.0
        if lane == 0:
            acc += loss
            if not reduce:
                loss_out[r] = loss
        if want_grad:
            g = incoming_at(gs, gv, gstep, 0 if reduce else r) * inv_den
            gcos = 0.0
            if yr == 1.0:
                gcos = -g
            elif yr == -1.0 and cos - margin >= 0.0:
                gcos = g
            gprod = gcos / denom
            gsq = (-gcos * (cos / denom)) / (2.0 * denom)
            cp = cast(tmp, gprod)
            b1 = cast(tmp, 2.0 * gsq * m2)
            b2 = cast(tmp, 2.0 * gsq * m1)
            i = base + lane
            while i < end:
                a = x1[uint64(i)]
                b = x2[uint64(i)]
                g1[uint64(i)] = cp * b + b1 * a
                g2[uint64(i)] = cp * a + b2 * b
                i += G
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, parts, False)


# --------------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------------
class Launch:
    """What every ranking/triplet driver prepares: flat C-contiguous inputs of one dtype, the loss and
    gradient buffers, the incoming gradient and the partial-sum buffer.

    ``inputs``: the differentiated inputs (all of the same shape); ``loss_shape``: shape of the
    per-element/per-row loss; ``work``: how many items the kernel walks (elements or rows).
    """

    def __init__(self, inputs, others, loss_shape, reduction, grad, work, blocks=None):
        dt = np.result_type(*[a.dtype for a in inputs])
        self.like = inputs[0]
        self.inputs = [D.reshape(D.contiguous(D.astype(a, dt)), (a.size,)) for a in inputs]
        self.others = [D.reshape(D.contiguous(D.astype(a, dt)), (a.size,)) for a in others]
        self.dtype, self.reduction, self.grad = dt, reduction, grad
        self.reduce = reduction != "none"
        self.count = int(np.prod(loss_shape, dtype=np.int64))
        self.loss, self.loss_flat = None, self.inputs[0]  # a stand-in, never written when reduced
        if not self.reduce:
            self.loss = D.empty((1,) if not loss_shape else loss_shape, dt, self.like)
            if self.count:
                self.loss_flat = D.reshape(self.loss, (self.count,))
        self.results = [grad.out_for(i, a) for i, a in enumerate(inputs)] if grad is not None else None
        self.grads = [D.reshape(g, (g.size,)) for g in self.results] if grad is not None else list(self.inputs)
        inc = grad.incoming(() if self.reduce else tuple(loss_shape), self.inputs[0]) if grad is not None else None
        self.inc = inc if inc is not None else D.Incoming(1.0, self.inputs[0], -1)
        self.inv_den = 1.0 / self.count if reduction == "mean" and self.count else 1.0
        self.blocks = D.blocks_for(work) if blocks is None else blocks
        self.parts = _R.scratch(self.blocks if work else 0, self.like, "parts")
        self.loss_shape = tuple(loss_shape)
        # the summed loss (the kernel's last block writes it), or a stand-in for 'none'
        self.out = D.result_buffer(self.like, dt) if self.reduce else self.inputs[0]
        self.den = float(self.count) if reduction == "mean" else 1.0
        self.ticket = _R.ticket(self.like)

    def run(self, kernel, *args, threads=D.TPB):
        """Launch ``kernel`` (when there is work; it writes a summed loss itself) and return the API's result."""
        if self.parts.shape[0]:
            D.launch(kernel, self.blocks, self.like, *args, threads=threads)
        if self.reduce:
            if not self.parts.shape[0]:
                D.empty_sum(self.out, den=self.den)
            value = D.scalar_view(self.out)
        else:
            value = self.loss if self.loss_shape else D.scalar_view(self.loss)
        return value if self.grad is None else (value, tuple(self.results))

    def sum_args(self):
        """``(parts, ticket, out, den)``: the kernels' last arguments (see ``_cuda_rows.finish_partials``)."""
        return self.parts, self.ticket, self.out, self.den

    def grad_args(self):
        """``(reduce, loss_out, want_grad, inv_den, gs, gv, gstep)`` of the kernels."""
        return (self.reduce, self.loss_flat, self.grad is not None, self.inv_den, *self.inc.args())


@D.on_input_device
def margin_ranking(x1, x2, y, margin, reduction, grad):
    """``max(0, -y * (x1 - x2) + margin)`` element-wise; gradients for ``(x1, x2)``."""
    job = Launch((x1, x2), (y,), x1.shape, reduction, grad, x1.size)
    a, b = job.inputs
    return job.run(_elementwise, MARGIN_RANKING, a, b, job.others[0], float(margin), *job.grad_args(),
                   job.grads[0], job.grads[1], *job.sum_args())


@D.on_input_device
def hinge_embedding(x, y, margin, reduction, grad):
    """``where(y != 1, max(0, margin - x), 0) + where(y != -1, x, 0)`` element-wise; gradient for ``x``."""
    job = Launch((x,), (y,), x.shape, reduction, grad, x.size)
    a = job.inputs[0]
    return job.run(_elementwise, HINGE_EMBEDDING, a, a, job.others[0], float(margin), *job.grad_args(),
                   job.grads[0], job.grads[0], *job.sum_args())


@D.on_input_device
def cosine_embedding(x1, x2, y, margin, reduction, grad):
    """Per row: ``1 - cos`` where ``y == 1``, ``max(0, cos - margin)`` where ``y == -1``, else 0.

    ``x1``, ``x2``: ``(N, D)`` or ``(D,)``; ``y``: ``(N,)`` or ``()``; gradients for ``(x1, x2)``.
    """
    shape = tuple(x1.shape)  # a plain tuple: device arrays' shapes refuse negative indices
    width = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    G, blocks, threads = row_launch(rows, width)
    job = Launch((x1, x2), (y,), shape[:-1], reduction, grad, rows, blocks)
    a, b = job.inputs
    return job.run(_cosine_rows, a, b, job.others[0], rows, width, G, float(margin), *job.grad_args(),
                   job.grads[0], job.grads[1], *job.sum_args(), threads=threads)
