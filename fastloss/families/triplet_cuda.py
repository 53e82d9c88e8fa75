"""CUDA twin of the triplet family: ``triplet_margin_loss`` with the driver and semantics of
:mod:`fastloss.families.triplet` (torch 2.13).

Per row of ``D`` values, with ``u = a - p + eps``, ``v = a - n + eps`` and (``swap``) ``w = p - n + eps``::

    d_ap = ||u||_p,   d_an = ||v||_p   (swap: min(||v||_p, ||w||_p)),   loss = max(0, margin + d_ap - d_an)

A group of ``G`` lanes per row (``G`` the power of two >= the row's width, at most a warp; short rows
share a warp): a first sweep, lanes striding over the row (coalesced reads), adds each lane's share
of the three distances' sums, which the group adds in float64 by warp shuffles; a second sweep
writes the three gradients from them. Each element is read before the same lane writes its
gradients, so the gradients may overwrite the inputs. For ``p == 2`` (the default) the per-element
maths is in the data's precision (float32 for float32 data, each lane's share of ``sum u^2`` too);
other orders use float64 per element. Every order ``p`` of the CPU family is served: 1, 2, 3, any other
finite non-zero ``p``, ``+inf`` (max norm), ``-inf`` (min norm) and 0 (count of non-zero differences, no
gradient); the norm's backward is torch's (0 where the norm is 0, ``sgn(0) = 0``, the max/min norm's
gradient shared among the elements attaining it, ``torch.minimum`` splitting at a tie).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, uint32, uint64

from .. import _cuda_arrays as D
from .. import _cuda_rows as _rows
from .._cuda_arrays import incoming_at
from .ranking_cuda import BUF, Launch, row_launch

_rows.install(globals())  # group_sum, group_max, block_sum, row_slots, finish_partials, cast, WARP

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
def lane_distance(x, y, i0, end, G, eps, eps_d, kind, p, zero):
    """One lane's share of ``||x - y + eps||_p`` over its elements ``i0, i0 + G, ... < end``:
    ``(sum, best, ties, nans)`` where ``sum`` is the share of the norm's sum (float64; p == 2 adds
    ``u^2`` in the data's precision, ``eps_d`` being ``eps`` in that dtype) and, for the max/min
    norms, ``best`` the extreme |u|, ``ties`` how many attain it and ``nans`` the NaN count."""
    s = 0.0
    s_d = zero
    best = 0.0 if kind != NORM_MIN else math.inf
    ties = 0.0
    nans = 0.0
    i = i0
    while i < end:
        if kind == NORM_TWO:
            u_d = (x[uint64(i)] - y[uint64(i)]) + eps_d
            s_d += u_d * u_d
        else:
            u = diff(x, y, uint64(i), eps)
            au = abs(u)
            if kind == NORM_ONE:
                s += au
            elif kind == NORM_THREE:
                s += au * u * u
            elif kind == NORM_COUNT:
                s += 1.0 if u != 0.0 else 0.0
            elif kind == NORM_POW:
                s += au ** p
            elif au != au:
                nans += 1.0
            elif au == best:
                ties += 1.0
            elif (au > best) if kind == NORM_MAX else (au < best):
                best = au
                ties = 1.0
        i += G
    return s + float64(s_d), best, ties, nans


@cuda.jit(device=True)
def group_distance(buf, G, kind, p, s, best, ties, nans):
    """``(||u||_p, share)`` of a row from its lanes' shares (every lane of the group calls it);
    ``share`` (max/min norm) is how many elements its gradient is shared among: those attaining the
    extreme, or the NaN ones if there are any."""
    if kind == NORM_MAX or kind == NORM_MIN:
        top = group_max(buf, best if kind == NORM_MAX else -best, G)
        top = top if kind == NORM_MAX else -top
        share = group_sum(buf, ties if best == top else 0.0, G)
        nan_count = group_sum(buf, nans, G)
        if nan_count > 0.0:
            return math.nan, nan_count
        return top, share
    s = group_sum(buf, s, G)
    if kind == NORM_TWO:
        return math.sqrt(s), 0.0
    if kind == NORM_ONE or kind == NORM_COUNT:
        return s, 0.0
    if kind == NORM_THREE:
        return s ** (1.0 / 3.0), 0.0
    return s ** (1.0 / p), 0.0


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


@D.jit_kernel
def _triplet_rows(a, p, n, rows, width, G, margin, eps, swap, kind, pp,
                  reduce, loss_out, want_grad, inv_den, gs, gv, gstep, ga, gp, gn, parts, ticket, out, den):
    """Triplet margin loss, ``G`` lanes per row (flat C-order inputs of ``rows * width`` values).

    ``z = (margin + d_ap) - d_an``; ``dz = g`` where ``z >= 0`` flows to ``d_ap`` as ``dz`` and to
    ``d_an`` as ``-dz``; with swap, to the smaller of ``||v||`` and ``||w||`` (half each at a tie).
    Every lane runs the same number of row iterations (rows past the end are masked): the group
    reductions need every lane.
    """
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    tmp = cuda.local.array(1, a.dtype)
    zero = cast(tmp, 0.0)
    eps_d = cast(tmp, eps)
    lane, sub, start, step = row_slots(G)
    acc = 0.0
    for first in range(start, rows, step):
        r = first + sub
        live = r < rows
        base = r * width
        i0 = base + lane
        end = base + width if live else base
        s, best, ties, nans = lane_distance(a, p, i0, end, G, eps, eps_d, kind, pp, zero)
        nu, su = group_distance(buf, G, kind, pp, s, best, ties, nans)
        s, best, ties, nans = lane_distance(a, n, i0, end, G, eps, eps_d, kind, pp, zero)
        nv, sv = group_distance(buf, G, kind, pp, s, best, ties, nans)
        nw, sw = 0.0, 0.0
        dn = nv
        if swap:
            s, best, ties, nans = lane_distance(p, n, i0, end, G, eps, eps_d, kind, pp, zero)
            nw, sw = group_distance(buf, G, kind, pp, s, best, ties, nans)
            if not (nv < nw or nv != nv):  # torch.minimum: NaN wins
                dn = nw
        if not live:
            continue
        z = (margin + nu) - dn
        loss = 0.0 if z < 0.0 else z
        if lane == 0:
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
            i = i0
            if kind == NORM_TWO:
                # d||u||_2 / du = u / ||u||: per element in the data's precision
                ku_d, kv_d, kw_d = cast(tmp, ku), cast(tmp, kv), cast(tmp, kw)
                while i < end:
                    j = uint64(i)
                    du = ((a[j] - p[j]) + eps_d) * ku_d
                    dv = ((a[j] - n[j]) + eps_d) * kv_d
                    dw = zero
                    if swap:
                        dw = ((p[j] - n[j]) + eps_d) * kw_d
                    ga[j] = du + dv
                    gp[j] = dw - du
                    gn[j] = -dv - dw
                    i += G
            else:
                while i < end:
                    j = uint64(i)
                    du = norm_grad1(diff(a, p, j, eps), nu, ku, kind, pp)
                    dv = norm_grad1(diff(a, n, j, eps), nv, kv, kind, pp)
                    dw = norm_grad1(diff(p, n, j, eps), nw, kw, kind, pp) if swap else 0.0
                    ga[j] = du + dv
                    gp[j] = dw - du
                    gn[j] = -dv - dw
                    i += G
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, parts, False)


@D.on_input_device
def triplet_margin(a, p, n, margin, pnorm, eps, swap, reduction, grad):
    """``max(0, margin + ||a - p + eps||_p - ||a - n + eps||_p)`` per row; gradients for ``(a, p, n)``.

    The loss has the inputs' shape without the last axis (a 0-d input is one row of one value).
    """
    shape = tuple(a.shape)
    width = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 1
    G, blocks, threads = row_launch(rows, width)
    job = Launch((a, p, n), (), shape[:-1], reduction, grad, rows, blocks)
    A, P, N = job.inputs
    return job.run(_triplet_rows, A, P, N, rows, width, G, float(margin), float(eps), bool(swap),
                   norm_kind(float(pnorm)), float(pnorm), *job.grad_args(), *job.grads, *job.sum_args(), threads=threads)
