"""The ranking family: ``margin_ranking_loss``, ``hinge_embedding_loss``, ``cosine_embedding_loss``.

Semantics are PyTorch 2.13's; the kernels are Cython (:mod:`fastloss._cy.ranking`), one fused pass each
for the value and every gradient. Layout of this module:

1. **Glue to the Cython kernels**, shared with the triplet family: torch's dtype promotion, C-contiguous
   views, the incoming gradient, gradient buffers, reduced results.
2. **Drivers** called by :mod:`fastloss.api`.
3. **REFERENCE / CASES / BENCH / TORCH** tables (float64 NumPy ground truth, test and benchmark inputs).

Precision: every intermediate that torch materialises as a tensor (``x1 - x2``, a row's ``prod_sum`` and
``mag_square``, ``cos``) is rounded to the data's dtype, so kinks and NaN/inf land where torch's do;
sums over many values (a row's dot products, the reduction) accumulate in float64.
"""
from __future__ import annotations

import numpy as np

from .._cy import ranking as _cy
from .._dispatch import scalar_result
from .._jit import get_num_threads
from .._registry import Case

# ==================================================================================================
# 1. Glue to the Cython kernels
# ==================================================================================================
#: Below this much work (elements touched) a kernel runs on one thread: waking a second thread costs
#: more than it saves.
SERIAL_BELOW = 1 << 15

#: torch's EPSILON added to each squared norm in cosine_embedding_loss: ``constexpr float EPSILON = 1e-12``
#: (aten/src/ATen/native/Loss.cpp), so 1e-12 rounded to float32 whatever the data's dtype.
COSINE_EPS = float(np.float32(1e-12))


def threads_for(work: int) -> int:
    """Threads for a kernel touching ``work`` elements: ``fastloss.get_num_threads()``, read now."""
    return 1 if work < SERIAL_BELOW else get_num_threads()


def compute_dtype(*arrays) -> np.dtype:
    """torch's type promotion among the float arrays (integer and boolean arrays take no part)."""
    return np.result_type(*[a.dtype for a in arrays if a.dtype.kind == "f"])


def as_rows(a, dtype, rows: int, width: int):
    """``a`` as a C-contiguous ``(rows, width)`` array of ``dtype`` (a copy only where needed)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(rows, width)


def as_flat(a, dtype):
    """``a`` as a C-contiguous 1-D array of ``dtype`` (a copy only where needed)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def nothing(dtype, ndim: int = 1):
    """An empty array: tells a kernel to skip an output (or that no gradient is wanted)."""
    return np.empty((0,) * ndim, dtype=dtype)


def incoming_gradient(grad, reduction: str, shape, dtype):
    """The incoming gradient in the kernels' form: a 1-D C-contiguous array of ``dtype``.

    Empty when ``grad`` is None (value only); one value for a reduced loss (divided by the number of
    loss elements for ``'mean'``) or for a ``grad_output`` broadcast from one value; otherwise one
    value per loss element, in C order.
    """
    if grad is None:
        return nothing(dtype)
    if reduction == "none":
        g = grad.array(tuple(shape), dtype)
        if g.size > 1 and not any(g.strides):  # one value broadcast everywhere: keep it scalar
            return np.ascontiguousarray(g.reshape(-1)[:1])
        return np.ascontiguousarray(g, dtype=dtype).reshape(-1)
    g = grad.scalar()
    count = int(np.prod(shape))
    if reduction == "mean" and count:
        g = g / count
    return np.array([g], dtype=dtype)


def gradient_buffers(grad, inputs, dtype):
    """``(results, work)``: the arrays returned as gradients (the caller's ``out`` or new arrays, in each
    input's own dtype) and the arrays of the compute ``dtype`` the kernel writes into (the same
    arrays, except for an input whose dtype was promoted)."""
    results = [grad.out_for(i, x) for i, x in enumerate(inputs)]
    work = [r if r.dtype == dtype else np.empty(r.shape, dtype=dtype) for r in results]
    return results, work


def finish_gradients(results, work):
    """Cast promoted gradients back into their inputs' dtype (as torch's autograd does)."""
    for r, w in zip(results, work):
        if r is not w:
            np.copyto(r, w, casting="same_kind")
    return tuple(results)


def reduced(total: float, reduction: str, count: int, dtype):
    """The reduced loss from the float64 sum of ``count`` losses (``'mean'`` of nothing is NaN)."""
    if reduction == "mean":
        total = total / count if count else float("nan")
    return scalar_result(total, dtype)


def loss_array(reduction: str, shape, dtype):
    """The per-element loss buffer for ``reduction='none'``, else None."""
    return np.empty(shape, dtype=dtype) if reduction == "none" else None


def loss_for_kernel(loss, dtype):
    """:func:`loss_array`'s buffer as a kernel takes it: flat, or empty to skip the per-element loss."""
    return nothing(dtype) if loss is None else loss.reshape(-1)


def loss_result(loss, total: float, reduction: str, count: int, dtype):
    """What the loss returns: the per-element array for ``'none'``, else the reduced 0-d array."""
    return loss if loss is not None else reduced(total, reduction, count, dtype)


# ==================================================================================================
# 2. Drivers
# ==================================================================================================
def margin_ranking(x1, x2, y, margin, reduction, grad):
    """``max(0, -y * (x1 - x2) + margin)`` element-wise; gradients for ``(x1, x2)``.

    The loss's dtype is torch's promotion of ``x1``, ``x2`` and a float ``y``; each gradient has its
    input's dtype.
    """
    dt = compute_dtype(x1, x2, y)
    if x1.dtype == x2.dtype != dt:
        # Only a float target promotes: torch rounds x1 - x2 in the inputs' dtype first. The kernel gets
        # that difference and zeros, and -y * (d - 0) + margin is then torch's value exactly.
        a = as_flat(np.subtract(x1, x2), dt)
        b = np.zeros_like(a)
    else:
        a, b = as_flat(x1, dt), as_flat(x2, dt)
    t = as_flat(y, dt)
    loss = loss_array(reduction, x1.shape, dt)
    g = incoming_gradient(grad, reduction, x1.shape, dt)
    results, work = gradient_buffers(grad, (x1, x2), dt) if grad is not None else (None, [nothing(dt)] * 2)
    total = _cy.margin_ranking(
        a, b, t, float(margin), loss_for_kernel(loss, dt), g,
        work[0].reshape(-1), work[1].reshape(-1), threads_for(3 * a.size),
    )
    value = loss_result(loss, total, reduction, a.size, dt)
    return value if grad is None else (value, finish_gradients(results, work))


def hinge_embedding(x, y, margin, reduction, grad):
    """``where(y != 1, max(0, margin - x), 0) + where(y != -1, x, 0)`` element-wise; gradient for ``x``."""
    dt = x.dtype
    a, t = as_flat(x, dt), as_flat(y, dt)
    loss = loss_array(reduction, x.shape, dt)
    g = incoming_gradient(grad, reduction, x.shape, dt)
    results, work = gradient_buffers(grad, (x,), dt) if grad is not None else (None, [nothing(dt)])
    total = _cy.hinge_embedding(
        a, t, float(margin), loss_for_kernel(loss, dt), g, work[0].reshape(-1), threads_for(2 * a.size),
    )
    value = loss_result(loss, total, reduction, a.size, dt)
    return value if grad is None else (value, finish_gradients(results, work))


def cosine_embedding(x1, x2, y, margin, reduction, grad):
    """Per row: ``1 - cos`` where ``y == 1``, ``max(0, cos - margin)`` where ``y == -1``, else 0.

    ``x1``, ``x2``: ``(N, D)`` or ``(D,)``; ``y``: ``(N,)`` or ``()``; gradients for ``(x1, x2)``.
    """
    dt = compute_dtype(x1, x2)
    width = x1.shape[-1]
    rows = int(np.prod(x1.shape[:-1]))
    a, b = as_rows(x1, dt, rows, width), as_rows(x2, dt, rows, width)
    t = as_flat(y, dt)
    loss = loss_array(reduction, x1.shape[:-1], dt)
    g = incoming_gradient(grad, reduction, x1.shape[:-1], dt)
    if grad is not None:
        results, work = gradient_buffers(grad, (x1, x2), dt)
        w1, w2 = (w.reshape(rows, width) for w in work)
    else:
        w1 = w2 = nothing(dt, 2)
    total = _cy.cosine_embedding(
        a, b, t, float(margin), loss_for_kernel(loss, dt), g, w1, w2, threads_for(2 * a.size),
    )
    value = loss_result(loss, total, reduction, rows, dt)
    return value if grad is None else (value, finish_gradients(results, work))


# ==================================================================================================
# 3. REFERENCE / CASES / BENCH / TORCH
# ==================================================================================================
def reduce_ref(loss, reduction):
    """float64 'none' / 'mean' / 'sum' of a loss array (the mean of nothing is NaN)."""
    if reduction == "none":
        return loss
    total = float(np.sum(loss))
    if reduction == "sum":
        return total
    return total / loss.size if loss.size else float("nan")


def incoming_ref(grad_output, shape, reduction):
    """float64 incoming gradient broadcast to the loss's ``shape`` (``'mean'`` divides by its size)."""
    g = np.ones(()) if grad_output is None else np.asarray(grad_output, dtype=np.float64)
    if reduction == "mean":
        g = g / max(int(np.prod(shape)), 1)
    return np.broadcast_to(g, shape)


def clamp_min0_ref(z):
    """torch.clamp_min(z, 0) (NaN stays NaN)."""
    return np.where(z < 0, 0.0, z)


def _f64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def margin_ranking_ref(x1, x2, y, margin=0.0, reduction="mean", grad_output=None):
    """float64 reference: ``l = max(0, -y (x1 - x2) + margin)``; ``dl/dx1 = -y [z >= 0]``."""
    x1, x2, y = _f64(x1, x2, y)
    z = -y * (x1 - x2) + margin
    g = incoming_ref(grad_output, z.shape, reduction)
    dz = np.where(z >= 0, g, 0.0)  # torch passes the gradient at the kink z == 0
    return reduce_ref(clamp_min0_ref(z), reduction), (dz * -y, dz * y)


def hinge_embedding_ref(x, y, margin=1.0, reduction="mean", grad_output=None):
    """float64 reference: ``max(0, margin - x)`` where ``y != 1`` plus ``x`` where ``y != -1``."""
    x, y = _f64(x, y)
    r = margin - x
    loss = np.where(y != 1, clamp_min0_ref(r), 0.0) + np.where(y != -1, x, 0.0)
    g = incoming_ref(grad_output, x.shape, reduction)
    dx = np.where(y != 1, -np.where(r >= 0, g, 0.0), 0.0) + np.where(y != -1, g, 0.0)
    return reduce_ref(loss, reduction), (dx,)


def cosine_embedding_ref(x1, x2, y, margin=0.0, reduction="mean", grad_output=None):
    """float64 reference, with the textbook derivative ``dcos/dx1 = x2 / denom - cos x1 / m1``."""
    x1, x2, y = _f64(x1, x2, y)
    prod = np.sum(x1 * x2, axis=-1)
    m1 = np.sum(x1 * x1, axis=-1) + COSINE_EPS
    m2 = np.sum(x2 * x2, axis=-1) + COSINE_EPS
    denom = np.sqrt(m1 * m2)
    cos = prod / denom
    loss = np.where(y == 1, 1 - cos, np.where(y == -1, clamp_min0_ref(cos - margin), 0.0))
    g = incoming_ref(grad_output, cos.shape, reduction)
    gcos = np.where(y == 1, -g, 0.0) + np.where(y == -1, np.where(cos - margin >= 0, g, 0.0), 0.0)
    gcos, cos, denom, m1, m2 = (np.asarray(v)[..., None] for v in (gcos, cos, denom, m1, m2))
    d1 = gcos * (x2 / denom - cos * x1 / m1)
    d2 = gcos * (x1 / denom - cos * x2 / m2)
    return reduce_ref(loss, reduction), (d1, d2)


REFERENCE = {
    "margin_ranking_loss": margin_ranking_ref,
    "hinge_embedding_loss": hinge_embedding_ref,
    "cosine_embedding_loss": cosine_embedding_ref,
}


def _signs(rng, shape, dtype=np.float64):
    return rng.choice(np.array([-1, 1]), size=shape).astype(dtype)


def margin_ranking_cases(rng, dtype):
    def x(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return [
        Case((x(8), x(8), _signs(rng, 8, dtype)), {}, "1d-mean"),
        Case((x(4, 5), x(4, 5), _signs(rng, (4, 5), dtype)), {"margin": 0.5, "reduction": "sum"}, "2d-sum"),
        Case((x(2, 3, 4), x(2, 3, 4), _signs(rng, (2, 3, 4), dtype)), {"margin": 0.3, "reduction": "none"}, "3d-none"),
        Case((x(6), x(6), _signs(rng, 6, np.int8)), {"margin": -0.2}, "int-target"),
        Case((x(5, 2), x(5, 2), rng.uniform(-2, 2, (5, 2)).astype(dtype)), {"margin": 0.1, "reduction": "none"},
             "any-target"),
        Case((x(), x(), np.array(-1.0, dtype)), {"margin": 0.25, "reduction": "sum"}, "0d"),
        Case((x(0), x(0), x(0)), {"reduction": "sum"}, "empty"),
    ]


def hinge_embedding_cases(rng, dtype):
    def x(*shape):
        return (2 * rng.standard_normal(shape)).astype(dtype)

    mixed = rng.choice(np.array([-1.0, 1.0, 0.0, 0.5]), size=(3, 4)).astype(dtype)  # torch adds both terms for 0, 0.5
    return [
        Case((x(10), _signs(rng, 10, dtype)), {}, "1d-mean"),
        Case((x(3, 4), mixed), {"margin": 0.5, "reduction": "sum"}, "any-target-sum"),
        Case((x(2, 3, 2), _signs(rng, (2, 3, 2), dtype)), {"margin": 2.0, "reduction": "none"}, "3d-none"),
        Case((x(7), _signs(rng, 7, np.int64)), {"margin": 1.5}, "int-target"),
        Case((x(0, 3), x(0, 3)), {"reduction": "sum"}, "empty"),
    ]


def cosine_embedding_cases(rng, dtype):
    def x(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return [
        Case((x(6, 5), x(6, 5), _signs(rng, 6, dtype)), {}, "2d-mean"),
        Case((x(5, 3), x(5, 3), _signs(rng, 5, dtype)), {"margin": -0.3, "reduction": "sum"}, "2d-sum"),
        Case((x(4, 7), x(4, 7), _signs(rng, 4, dtype)), {"margin": 0.2, "reduction": "none"}, "2d-none"),
        Case((x(8), x(8), np.array(-1.0, dtype)), {"margin": -0.5, "reduction": "none"}, "1d"),
        Case((x(5, 4), x(5, 4), np.array([1, -1, 0, 2, -1], dtype=np.int32)), {"reduction": "none"}, "any-target"),
        Case((x(0, 4), x(0, 4), x(0)), {"reduction": "sum"}, "empty"),
    ]


CASES = {
    "margin_ranking_loss": margin_ranking_cases,
    "hinge_embedding_loss": hinge_embedding_cases,
    "cosine_embedding_loss": cosine_embedding_cases,
}


def _bench_elementwise(n_inputs):
    def bench(rng, dtype, size):
        xs = tuple(rng.standard_normal(size, dtype=np.float32).astype(dtype, copy=False) for _ in range(n_inputs))
        return Case((*xs, _signs(rng, size, dtype)), {}, f"n={size}")

    return bench


def cosine_embedding_bench(rng, dtype, size, width=256):
    width = min(width, size)
    rows = max(1, size // width)
    x1 = rng.standard_normal((rows, width), dtype=np.float32).astype(dtype, copy=False)
    x2 = rng.standard_normal((rows, width), dtype=np.float32).astype(dtype, copy=False)
    return Case((x1, x2, _signs(rng, rows, dtype)), {"margin": 0.1}, f"{rows}x{width}")


BENCH = {
    "margin_ranking_loss": _bench_elementwise(2),
    "hinge_embedding_loss": _bench_elementwise(1),
    "cosine_embedding_loss": cosine_embedding_bench,
}

#: torch.nn.functional.<name>(*tensors, **kwargs) is the PyTorch expression of each of these losses.
TORCH: dict = {}
