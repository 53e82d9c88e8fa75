"""The triplet family: ``triplet_margin_loss`` (Cython kernel :mod:`fastloss._cy.triplet`).

``l = max(0, margin + d(a, p) - d(a, n))`` per row, with ``d(x, y) = ||x - y + eps||_p`` over the last
axis (``torch.pairwise_distance``: eps is added to the difference) and, with ``swap=True``,
``d(a, n)`` replaced by ``min(d(a, n), d(p, n))``. PyTorch 2.13's semantics: any order ``p > 0``
(``p = inf`` is the max norm; the API refuses ``p <= 0``), inputs of any number of dimensions (the loss
has their shape without the last axis), gradients at kinks as torch's autograd. The kernel reads each
row once and writes value and all three gradients from the distances it computed; distances accumulate
in float64 and are rounded to the data's dtype, as torch's tensors are (so float32 rows whose squares
overflow float32 keep a finite distance here, where torch's float32 norm gives inf).

Layout: driver, then REFERENCE / CASES / BENCH / TORCH. The glue to the Cython kernels is shared with the
ranking family (:mod:`fastloss.families.ranking`).
"""
from __future__ import annotations

import math

import numpy as np

from .._cy import triplet as _cy
from .._registry import Case
from .ranking import (
    as_rows, compute_dtype, finish_gradients, gradient_buffers, incoming_gradient, incoming_ref, loss_array,
    loss_for_kernel, loss_result, nothing, reduce_ref, threads_for,
)


# ==================================================================================================
# Driver
# ==================================================================================================
def rows_and_width(shape):
    """``(rows, width)`` of inputs of ``shape`` viewed as rows of their last axis (a 0-d input is one
    row of one value, as torch's norm over ``dim=-1`` of a 0-d tensor)."""
    width = shape[-1] if shape else 1
    return int(np.prod(shape[:-1])), width


def triplet_margin(a, p, n, margin, pnorm, eps, swap, reduction, grad):
    """``max(0, margin + ||a - p + eps||_p - ||a - n + eps||_p)`` per row; gradients for ``(a, p, n)``.

    The loss has the inputs' shape without the last axis and torch's promotion of their dtypes; each
    gradient has its input's dtype.
    """
    dt = compute_dtype(a, p, n)
    rows, width = rows_and_width(a.shape)
    A, P, N = (as_rows(x, dt, rows, width) for x in (a, p, n))
    loss_shape = a.shape[:-1]
    loss = loss_array(reduction, loss_shape, dt)
    g = incoming_gradient(grad, reduction, loss_shape, dt)
    if grad is not None:
        results, work = gradient_buffers(grad, (a, p, n), dt)
        ga, gp, gn = (w.reshape(rows, width) for w in work)
    else:
        ga = gp = gn = nothing(dt, 2)
    total = _cy.triplet_margin(
        A, P, N, float(margin), float(pnorm), float(eps), bool(swap),
        loss_for_kernel(loss, dt), g, ga, gp, gn, threads_for(3 * A.size),
    )
    value = loss_result(loss, total, reduction, rows, dt)
    return value if grad is None else (value, finish_gradients(results, work))


# ==================================================================================================
# REFERENCE / CASES / BENCH / TORCH
# ==================================================================================================
def pnorm_ref(u, p):
    """``torch.linalg.vector_norm(u, p, dim=-1)`` in float64, ``p > 0``."""
    au = np.abs(u)
    if p == math.inf:
        return np.max(au, axis=-1)
    return np.sum(au**p, axis=-1) ** (1.0 / p)


def pnorm_grad_ref(u, norm, c, p):
    """``c * d||u||_p / du``: torch's ``norm_backward`` (``torch/csrc/autograd/FunctionsManual.cpp``),
    written for NumPy; ``norm`` and ``c`` have ``u``'s shape without the last axis."""
    norm, c = norm[..., None], c[..., None]
    s = np.sign(u)  # np.sign(nan) is nan where torch's sgn is 0; the reference gets no NaN
    au = np.abs(u)
    with np.errstate(divide="ignore", invalid="ignore"):
        if p == 1:
            return s * c
        if p == 2:
            return c * np.where(norm == 0, 0.0, u / norm)
        if math.isinf(p):
            mask = (au == norm) | np.isnan(au)
            return s * (c / np.sum(mask, axis=-1, keepdims=True) * mask)
        if p < 1:
            return s * np.where(u == 0, 0.0, au ** (p - 1)) * c * norm ** (1 - p)
        scale = np.where(norm == 0, 0.0, c / norm ** (p - 1))
        return (s * au ** (p - 1) if p < 2 else u * au ** (p - 2)) * scale


def triplet_margin_ref(anchor, positive, negative, margin=1.0, p=2.0, eps=1e-6, swap=False, reduction="mean",
                       grad_output=None):
    """float64 reference of triplet_margin_loss and its three gradients (torch's autograd rules)."""
    a, pos, neg = (np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (anchor, positive, negative))
    scalar = np.ndim(anchor) == 0
    u, v, w = a - pos + eps, a - neg + eps, pos - neg + eps
    du, dv, dw = pnorm_ref(u, p), pnorm_ref(v, p), pnorm_ref(w, p)
    dn = np.minimum(dv, dw) if swap else dv
    z = margin + du - dn
    g = incoming_ref(grad_output, z.shape, reduction)
    dz = np.where(z >= 0, g, 0.0)
    if swap:  # torch.minimum's backward: to the smaller, half to each at a tie
        share = np.where(dv == dw, -dz / 2, -dz)
        cv, cw = np.where(dv > dw, 0.0, share), np.where(dv < dw, 0.0, share)
    else:
        cv, cw = -dz, np.zeros_like(dz)
    gu, gv, gw = pnorm_grad_ref(u, du, dz, p), pnorm_grad_ref(v, dv, cv, p), pnorm_grad_ref(w, dw, cw, p)
    grads = (gu + gv, gw - gu, -gv - gw)
    if scalar:
        grads = tuple(gr.reshape(()) for gr in grads)
    return reduce_ref(np.where(z < 0, 0.0, z), reduction), grads


REFERENCE = {"triplet_margin_loss": triplet_margin_ref}


def triplet_margin_cases(rng, dtype):
    def x(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def triple(*shape):
        return x(*shape), x(*shape), x(*shape)

    return [
        Case(triple(6, 5), {}, "p2-mean"),
        Case(triple(5, 4), {"p": 1.0, "margin": 0.5, "reduction": "sum"}, "p1-sum"),
        Case(triple(4, 6), {"p": 3.0, "reduction": "none"}, "p3-none"),
        Case(triple(5, 3), {"p": 1.5, "margin": 2.0, "reduction": "none"}, "p1.5"),
        Case(triple(4, 5), {"p": 0.5, "margin": 3.0, "reduction": "sum"}, "p0.5"),
        Case(triple(4, 5), {"p": 4.5, "eps": 0.0}, "p4.5-eps0"),
        Case(triple(5, 4), {"p": math.inf, "reduction": "none"}, "pinf"),
        Case(triple(7, 4), {"swap": True, "margin": 0.8, "reduction": "none"}, "swap"),
        Case(triple(5, 3), {"swap": True, "p": 1.0, "reduction": "sum"}, "swap-p1"),
        Case(triple(6), {"margin": 2.5, "reduction": "none"}, "1d"),
        Case(triple(2, 3, 4), {"margin": 0.5, "reduction": "none"}, "3d"),
        Case(triple(0, 4), {"reduction": "sum"}, "empty"),
    ]


CASES = {"triplet_margin_loss": triplet_margin_cases}


def triplet_margin_bench(rng, dtype, size, width=512):
    width = min(width, size)
    rows = max(1, size // width)
    a, p, n = (rng.standard_normal((rows, width), dtype=np.float32).astype(dtype, copy=False) for _ in range(3))
    return Case((a, p, n), {}, f"{rows}x{width}")


BENCH = {"triplet_margin_loss": triplet_margin_bench}

#: torch.nn.functional.triplet_margin_loss(*tensors, **kwargs) is the PyTorch expression.
TORCH: dict = {}
