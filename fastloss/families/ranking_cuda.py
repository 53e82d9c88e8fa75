"""CUDA twin of the ranking family: ``margin_ranking_loss``, ``hinge_embedding_loss``,
``cosine_embedding_loss``, with the drivers and semantics of :mod:`fastloss.families.ranking` (torch 2.13).

* margin ranking and hinge embedding: one grid-stride kernel over the elements, value and gradients
  in the same pass;
* cosine embedding: one thread per row (the row's three dot products in float64, then its gradients
  from them, each element read before the same thread writes it, so gradients may overwrite inputs).

Sums are float64; each block leaves one partial and one block adds them in a fixed order
(deterministic). The kinks follow torch's autograd: ``clamp_min(z, 0)`` passes the gradient where
``z >= 0`` and blocks it where ``z`` is NaN.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .. import _cuda_arrays as D
from .._cuda_arrays import TPB, incoming_at
from .ranking import COSINE_EPS  # torch's float32 EPSILON: one definition for both backends

block_sum, _ = D.block_reductions(globals())

# Kinds of the element-wise kernel.
MARGIN_RANKING, HINGE_EMBEDDING = 0, 1


@cuda.jit(device=True)
def clamp_min0(z):
    """``torch.clamp_min(z, 0)``: NaN stays NaN (``NaN < 0`` is false)."""
    if z < 0.0:
        return 0.0
    return z


@cuda.jit(device=True)
def through_clamp_min0(g, z):
    """The gradient ``g`` of ``clamp_min(z, 0)`` passed back to ``z`` (where ``z >= 0``, kink included)."""
    if z >= 0.0:
        return g
    return 0.0


@cuda.jit(device=True)
def element_loss_grad(kind, x1, x2, y, margin, g):
    """``(loss, d/dx1, d/dx2)`` of one element given its incoming gradient ``g``.

    margin ranking: ``max(0, -y (x1 - x2) + margin)``; hinge embedding (``x2`` unused):
    ``max(0, margin - x1)`` where ``y != 1`` plus ``x1`` where ``y != -1`` (both for other targets).
    """
    if kind == MARGIN_RANKING:
        z = -y * (x1 - x2) + margin
        d = through_clamp_min0(g, z) * -y
        return clamp_min0(z), d, -d
    loss = 0.0
    d = 0.0
    if y != 1.0:
        loss += clamp_min0(margin - x1)
        d -= through_clamp_min0(g, margin - x1)
    if y != -1.0:
        loss += x1
        d += g
    return loss, d, 0.0


@cuda.jit
def _elementwise(kind, x1, x2, y, margin, reduce, loss_out, want_grad, inv_den, gs, gv, gstep, g1, g2, parts):
    """Value and gradients of an element-wise loss; the block's float64 loss sum into ``parts``."""
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x1.shape[0], cuda.gridsize(1)):
        g = incoming_at(gs, gv, gstep, 0 if reduce else i) * inv_den
        loss, d1, d2 = element_loss_grad(kind, float64(x1[i]), float64(x2[i]), float64(y[i]), margin, g)
        acc += loss
        if not reduce:
            loss_out[i] = loss
        if want_grad:
            g1[i] = d1
            if kind == MARGIN_RANKING:
                g2[i] = d2
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


@cuda.jit
def _cosine_rows(x1, x2, y, width, margin, reduce, loss_out, want_grad, inv_den, gs, gv, gstep, g1, g2, parts):
    """Cosine embedding loss, one thread per row of ``width`` values (flat C-order inputs).

    ``cos = <x1, x2> / sqrt((|x1|^2 + eps) (|x2|^2 + eps))``; loss ``1 - cos`` (y == 1),
    ``max(0, cos - margin)`` (y == -1), else 0. Backward, as torch's chain rule for the row::

        gcos = -g (y == 1), g where cos - margin >= 0 (y == -1), else 0
        gprod = gcos / denom,  gsq = -gcos cos / denom / (2 denom)
        d/dx1 = gprod x2 + 2 gsq m2 x1,   d/dx2 = gprod x1 + 2 gsq m1 x2
    """
    buf = cuda.shared.array(TPB, float64)
    rows = y.shape[0]
    acc = 0.0
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        base = r * width
        prod, s1, s2 = 0.0, 0.0, 0.0
        for j in range(width):
            a = float64(x1[base + j])
            b = float64(x2[base + j])
            prod += a * b
            s1 += a * a
            s2 += b * b
        m1 = s1 + COSINE_EPS
        m2 = s2 + COSINE_EPS
        denom = math.sqrt(m1 * m2)
        cos = prod / denom
        yr = float64(y[r])
        loss = 0.0
        if yr == 1.0:
            loss = 1.0 - cos
        elif yr == -1.0:
            loss = clamp_min0(cos - margin)
        acc += loss
        if not reduce:
            loss_out[r] = loss
        if want_grad:
            g = incoming_at(gs, gv, gstep, 0 if reduce else r) * inv_den
            gcos = 0.0
            if yr == 1.0:
                gcos = -g
            elif yr == -1.0:
                gcos = through_clamp_min0(g, cos - margin)
            gprod = gcos / denom
            gsq = (-gcos * (cos / denom)) / (2.0 * denom)
            b1 = 2.0 * gsq * m2
            b2 = 2.0 * gsq * m1
            for j in range(width):
                a = float64(x1[base + j])
                b = float64(x2[base + j])
                g1[base + j] = gprod * b + b1 * a
                g2[base + j] = gprod * a + b2 * b
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


# --------------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------------
class Launch:
    """What every ranking/triplet driver prepares: flat C-contiguous inputs of one dtype, the loss and
    gradient buffers, the incoming gradient and the partial-sum buffer.

    ``inputs``: the differentiated inputs (all of the same shape); ``loss_shape``: shape of the
    per-element/per-row loss; ``work``: how many items the kernel walks (elements or rows).
    """

    def __init__(self, inputs, others, loss_shape, reduction, grad, work):
        dt = np.result_type(*[a.dtype for a in inputs])
        self.like = inputs[0]
        self.inputs = [D.reshape(D.contiguous(D.astype(a, dt)), (a.size,)) for a in inputs]
        self.others = [D.reshape(D.contiguous(D.astype(a, dt)), (a.size,)) for a in others]
        self.dtype, self.reduction, self.grad = dt, reduction, grad
        self.reduce = reduction != "none"
        self.count = int(np.prod(loss_shape, dtype=np.int64))
        self.loss = D.empty((1,) if not loss_shape else loss_shape, dt, self.like)
        self.loss_flat = D.reshape(self.loss, (self.count,)) if self.count else self.inputs[0]
        self.results = [grad.out_for(i, a) for i, a in enumerate(inputs)] if grad is not None else None
        self.grads = [D.reshape(g, (g.size,)) for g in self.results] if grad is not None else list(self.inputs)
        inc = grad.incoming(() if self.reduce else tuple(loss_shape), self.like) if grad is not None else None
        self.inc = inc if inc is not None else D.Incoming(1.0, self.inputs[0], -1)
        self.inv_den = 1.0 / self.count if reduction == "mean" and self.count else 1.0
        self.blocks = D.blocks_for(work)
        self.parts = D.partial_buffer(self.blocks if work else 0, self.like)
        self.loss_shape = tuple(loss_shape)

    def run(self, kernel, *args):
        """Launch ``kernel`` (when there is work) and return the API's result."""
        if self.parts.shape[0]:
            D.launch(kernel, self.blocks, self.like, *args)
        if self.reduce:
            out = D.result_buffer(self.like, self.dtype)
            den = float(self.count) if self.reduction == "mean" else 1.0
            D.finish_sum(self.parts, out, den=den)
            value = D.scalar_view(out)
        else:
            value = self.loss if self.loss_shape else D.scalar_view(self.loss)
        return value if self.grad is None else (value, tuple(self.results))

    def grad_args(self):
        """``(reduce, loss_out, want_grad, inv_den, gs, gv, gstep)`` of the kernels."""
        return (self.reduce, self.loss_flat, self.grad is not None, self.inv_den, *self.inc.args())


@D.on_input_device
def margin_ranking(x1, x2, y, margin, reduction, grad):
    """``max(0, -y * (x1 - x2) + margin)`` element-wise; gradients for ``(x1, x2)``."""
    job = Launch((x1, x2), (y,), x1.shape, reduction, grad, x1.size)
    a, b = job.inputs
    return job.run(_elementwise, MARGIN_RANKING, a, b, job.others[0], float(margin), *job.grad_args(),
                   job.grads[0], job.grads[1], job.parts)


@D.on_input_device
def hinge_embedding(x, y, margin, reduction, grad):
    """``where(y != 1, max(0, margin - x), 0) + where(y != -1, x, 0)`` element-wise; gradient for ``x``."""
    job = Launch((x,), (y,), x.shape, reduction, grad, x.size)
    a = job.inputs[0]
    return job.run(_elementwise, HINGE_EMBEDDING, a, a, job.others[0], float(margin), *job.grad_args(),
                   job.grads[0], job.grads[0], job.parts)


@D.on_input_device
def cosine_embedding(x1, x2, y, margin, reduction, grad):
    """Per row: ``1 - cos`` where ``y == 1``, ``max(0, cos - margin)`` where ``y == -1``, else 0.

    ``x1``, ``x2``: ``(N, D)`` or ``(D,)``; ``y``: ``(N,)`` or ``()``; gradients for ``(x1, x2)``.
    """
    shape = tuple(x1.shape)  # a plain tuple: device arrays' shapes refuse negative indices
    width = shape[-1]
    job = Launch((x1, x2), (y,), shape[:-1], reduction, grad, int(np.prod(shape[:-1], dtype=np.int64)))
    a, b = job.inputs
    return job.run(_cosine_rows, a, b, job.others[0], width, float(margin), *job.grad_args(),
                   job.grads[0], job.grads[1], job.parts)
