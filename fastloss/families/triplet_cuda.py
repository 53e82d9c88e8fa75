"""CUDA twin of the triplet family: ``triplet_margin_loss`` with the driver and semantics of
:mod:`fastloss.families.triplet` (torch 2.13).

Per row of ``D`` values, with ``u = a - p + eps``, ``v = a - n + eps`` and (``swap``) ``w = p - n + eps``::

    d_ap = ||u||_p,   d_an = ||v||_p   (swap: min(||v||_p, ||w||_p)),   loss = max(0, margin + d_ap - d_an)

One thread per row: a first sweep over the row computes the distances (float64), a second writes the
three gradients from them; each element is read before the same thread writes its gradients, so the
gradients may overwrite the inputs. Every order ``p`` of the CPU family is served: 1, 2, 3, any other
finite non-zero ``p``, ``+inf`` (max norm), ``-inf`` (min norm) and 0 (count of non-zero differences, no
gradient); the norm's backward is torch's (0 where the norm is 0, ``sgn(0) = 0``, the max/min norm's
gradient shared among the elements attaining it, ``torch.minimum`` splitting at a tie).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .. import _cuda_arrays as D
from .._cuda_arrays import TPB, incoming_at
from .ranking_cuda import Launch

block_sum, _ = D.block_reductions(globals())

# How the p-norm of a difference vector is computed and differentiated.
NORM_ONE, NORM_TWO, NORM_THREE, NORM_POW, NORM_MAX, NORM_MIN, NORM_COUNT = range(7)


def norm_kind(p: float) -> int:
    """The NORM_* case of the order ``p``."""
    if p == 1:
        return NORM_ONE
    if p == 2:
        return NORM_TWO
    if p == 3:
        return NORM_THREE
    if p == 0:
        return NORM_COUNT
    if math.isinf(p):
        return NORM_MAX if p > 0 else NORM_MIN
    return NORM_POW


@cuda.jit(device=True)
def sgn(v):
    """torch.sgn of a real number: -1, 0 or 1, and 0 for NaN."""
    if v > 0.0:
        return 1.0
    if v < 0.0:
        return -1.0
    return 0.0


@cuda.jit(device=True)
def diff(x, y, i, eps):
    """``x[i] - y[i] + eps`` in float64."""
    return (float64(x[i]) - float64(y[i])) + eps


@cuda.jit(device=True)
def row_distance(x, y, base, width, eps, kind, p):
    """``(||x - y + eps||_p, share)`` of one row; ``share`` (max/min norm) is how many elements its
    gradient is shared among: those attaining the extreme, or the NaN ones if there are any."""
    if kind == NORM_MAX or kind == NORM_MIN:
        best = 0.0 if kind == NORM_MAX else math.inf
        ties = 0
        nans = 0
        for j in range(width):
            au = abs(diff(x, y, base + j, eps))
            if au != au:
                nans += 1
            elif au == best:
                ties += 1
            elif (au > best) if kind == NORM_MAX else (au < best):
                best = au
                ties = 1
        if nans > 0:
            return math.nan, nans
        return best, ties
    s = 0.0
    for j in range(width):
        u = diff(x, y, base + j, eps)
        if kind == NORM_TWO:
            s += u * u
        elif kind == NORM_ONE:
            s += abs(u)
        elif kind == NORM_THREE:
            s += abs(u) * u * u
        elif kind == NORM_COUNT:
            s += 1.0 if u != 0.0 else 0.0
        else:
            s += abs(u) ** p
    if kind == NORM_TWO:
        return math.sqrt(s), 0
    if kind == NORM_ONE or kind == NORM_COUNT:
        return s, 0
    if kind == NORM_THREE:
        return s ** (1.0 / 3.0), 0
    return s ** (1.0 / p), 0


@cuda.jit(device=True)
def norm_grad_scale(c, norm, kind, p, share):
    """The row factor ``k`` of the gradient of ``c * ||u||_p`` (see :func:`norm_grad1`); 0 where the
    norm is 0 (torch masks it), except for ``p < 1``, which torch scales by ``norm^(1 - p)`` unmasked."""
    if kind == NORM_ONE:
        return c
    if kind == NORM_MAX or kind == NORM_MIN:
        return c / share
    if kind == NORM_COUNT:
        return 0.0
    if kind == NORM_POW and p < 1.0:
        return c * norm ** (1.0 - p)
    if norm == 0.0:
        return 0.0
    if kind == NORM_TWO:
        return c / norm
    if kind == NORM_THREE:
        return c / (norm * norm)
    return c / norm ** (p - 1.0)


@cuda.jit(device=True)
def norm_grad1(u, norm, k, kind, p):
    """One element of ``d(c ||u||_p)/du`` from the row factor ``k``::

        p == 2: u k      p == 1: sgn(u) k      p == 3: u |u| k      p > 2: u |u|^(p-2) k
        1 < p < 2: sgn(u) |u|^(p-1) k      p < 1: sgn(u) |u|^(p-1) k, 0 where u == 0
        p = +-inf: sgn(u) k where |u| == norm or u is NaN, else 0      p == 0: 0
    """
    au = abs(u)
    if kind == NORM_TWO:
        return u * k
    if kind == NORM_ONE:
        return sgn(u) * k
    if kind == NORM_THREE:
        return u * au * k
    if kind == NORM_POW:
        if p > 2.0:
            return u * au ** (p - 2.0) * k
        if p > 1.0:
            return sgn(u) * au ** (p - 1.0) * k
        if u == 0.0:
            return 0.0
        return sgn(u) * au ** (p - 1.0) * k
    if kind == NORM_MAX or kind == NORM_MIN:
        if au == norm or u != u:
            return sgn(u) * k
        return 0.0
    return 0.0


@cuda.jit
def _triplet_rows(a, p, n, rows, width, margin, eps, swap, kind, pp,
                  reduce, loss_out, want_grad, inv_den, gs, gv, gstep, ga, gp, gn, parts):
    """Triplet margin loss, one thread per row (flat C-order inputs of ``rows * width`` values).

    ``z = (margin + d_ap) - d_an``; ``dz = g`` where ``z >= 0`` flows to ``d_ap`` as ``dz`` and to
    ``d_an`` as ``-dz``; with swap, to the smaller of ``||v||`` and ``||w||`` (half each at a tie).
    """
    buf = cuda.shared.array(TPB, float64)
    acc = 0.0
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        base = r * width
        nu, su = row_distance(a, p, base, width, eps, kind, pp)
        nv, sv = row_distance(a, n, base, width, eps, kind, pp)
        nw, sw = 0.0, 0
        dn = nv
        if swap:
            nw, sw = row_distance(p, n, base, width, eps, kind, pp)
            if not (nv < nw or nv != nv):  # torch.minimum: NaN wins
                dn = nw
        z = (margin + nu) - dn
        loss = 0.0 if z < 0.0 else z
        acc += loss
        if not reduce:
            loss_out[r] = loss
        if want_grad:
            g = incoming_at(gs, gv, gstep, 0 if reduce else r) * inv_den
            dz = g if z >= 0.0 else 0.0
            cv = -dz
            cw = 0.0
            if swap:
                half = -dz / 2.0 if nv == nw else -dz
                cv = 0.0 if nv > nw else half
                cw = 0.0 if nv < nw else half
            ku = norm_grad_scale(dz, nu, kind, pp, su)
            kv = norm_grad_scale(cv, nv, kind, pp, sv)
            kw = norm_grad_scale(cw, nw, kind, pp, sw) if swap else 0.0
            for j in range(width):
                i = base + j
                du = norm_grad1(diff(a, p, i, eps), nu, ku, kind, pp)
                dv = norm_grad1(diff(a, n, i, eps), nv, kv, kind, pp)
                dw = norm_grad1(diff(p, n, i, eps), nw, kw, kind, pp) if swap else 0.0
                ga[i] = du + dv
                gp[i] = dw - du
                gn[i] = -dv - dw
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


@D.on_input_device
def triplet_margin(a, p, n, margin, pnorm, eps, swap, reduction, grad):
    """``max(0, margin + ||a - p + eps||_p - ||a - n + eps||_p)`` per row; gradients for ``(a, p, n)``.

    The loss has the inputs' shape without the last axis (a 0-d input is one row of one value).
    """
    shape = tuple(a.shape)
    width = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 1
    job = Launch((a, p, n), (), shape[:-1], reduction, grad, rows)
    A, P, N = job.inputs
    return job.run(_triplet_rows, A, P, N, rows, width, float(margin), float(eps), bool(swap),
                   norm_kind(float(pnorm)), float(pnorm), *job.grad_args(), *job.grads, job.parts)
