# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython kernel of triplet_margin_loss, value and gradients of anchor, positive and negative in one pass.

Per row of ``d`` values, with ``u = a - p + eps``, ``v = a - n + eps`` and (``swap``) ``w = p - n + eps``
formed in the data's precision exactly as ``torch.pairwise_distance`` forms them::

    d_ap = ||u||_p,   d_an = ||v||_p   (swap: d_an = min(||v||_p, ||w||_p))
    loss = max(0, margin + d_ap - d_an)

The row is read from memory once: a first sweep computes the two (three) distances, a second sweep, over
the same row still in cache, writes the three gradients from them. Gradients follow torch's autograd at
every kink: ``clamp_min`` passes the gradient at 0, ``torch.minimum`` splits it in halves at a tie, and the
norm's backward is torch's ``norm_backward`` (0 where the norm is 0, ``sgn`` with ``sgn(0) = 0``, the
max-norm's gradient shared among the elements attaining the max).

Arguments of :func:`triplet_margin` follow the convention of :mod:`fastloss._cy.ranking`: C-contiguous
arrays of one dtype; ``loss`` empty to skip it; ``g`` empty (value only), one value (reduced loss) or one
value per row (``'none'``); gradient buffers written only when ``g`` is not empty (they may be the inputs
themselves); returns the float64 sum of the row losses (one partial per work item, added in a fixed order).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport NAN, fabs, isinf, pow, sqrt
from libc.stdlib cimport free

from fastloss._cy._common cimport (
    LANES, FASTLOSS_HAVE_OPENMP, clamp_min0, item_count, lanes_total, new_partials, rows_per_item, sgn,
    sum_f64, through_clamp_min0,
)


def openmp_enabled():
    """True when this extension was compiled with OpenMP (its loops then run on several threads)."""
    return bool(FASTLOSS_HAVE_OPENMP)


# Elements per block of the gradient sweep (3 local buffers of this size stay in L1).
cdef enum:
    ROW_BLOCK = 512


cdef enum:  # how the p-norm (p > 0) of a difference vector is computed and differentiated
    NORM_ONE = 0    # p == 1: sum |u|
    NORM_TWO = 1    # p == 2: sqrt(sum u^2)
    NORM_THREE = 2  # p == 3: (sum |u|^3)^(1/3), without a pow() per element
    NORM_POW = 3    # any other finite p > 0: (sum |u|^p)^(1/p)
    NORM_MAX = 4    # p == inf: max |u|


cdef int norm_kind(double p) noexcept nogil:
    """The NORM_* case of the order ``p > 0``."""
    if p == 1:
        return NORM_ONE
    if p == 2:
        return NORM_TWO
    if p == 3:
        return NORM_THREE
    if isinf(p):
        return NORM_MAX
    return NORM_POW


# --------------------------------------------------------------------------------------------------
# First sweep: one distance
# --------------------------------------------------------------------------------------------------
cdef double sum_sq_diff(const floating* x, const floating* y, Py_ssize_t d, floating eps) noexcept nogil:
    """``sum_j (x_j - y_j + eps)^2`` in float64 over LANES partial sums, each difference rounded as
    torch rounds it (in the data's precision)."""
    cdef double acc[LANES]
    cdef double tail = 0
    cdef floating u
    cdef Py_ssize_t j = 0, k
    for k in range(LANES):
        acc[k] = 0
    while j + LANES <= d:
        for k in range(LANES):
            u = (x[j + k] - y[j + k]) + eps
            acc[k] += <double>u * u
        j += LANES
    while j < d:
        u = (x[j] - y[j]) + eps
        tail += <double>u * u
        j += 1
    return lanes_total(acc) + tail


cdef floating max_abs_diff(
    const floating* x, const floating* y, Py_ssize_t d, floating eps, Py_ssize_t* share,
) noexcept nogil:
    """``max_j |u_j|`` of ``u = x - y + eps``, NaN if any ``u_j`` is NaN.

    ``share`` receives how many elements the gradient is shared among: those attaining the max, or the
    NaN elements when there are any (torch's mask ``|u| == norm or isnan(u)``).
    """
    cdef floating best = 0
    cdef floating au
    cdef Py_ssize_t j, ties = 0, nans = 0
    for j in range(d):
        au = fabs((x[j] - y[j]) + eps)
        if au != au:
            nans += 1
        elif au == best:
            ties += 1
        elif au > best:
            best = au
            ties = 1
    if nans > 0:
        share[0] = nans
        return <floating>NAN
    share[0] = ties
    return best


cdef floating row_distance(
    const floating* x, const floating* y, Py_ssize_t d, floating eps, int kind, double p,
    Py_ssize_t* share,
) noexcept nogil:
    """``||x - y + eps||_p`` of one row, accumulated in float64 and rounded to the data's precision
    (torch materialises the distance as a tensor of that precision). ``share``: see
    :func:`max_abs_diff` (set for NORM_MAX only)."""
    cdef Py_ssize_t j
    cdef double s = 0
    cdef floating u
    if kind == NORM_TWO:
        return <floating>sqrt(sum_sq_diff(x, y, d, eps))
    if kind == NORM_MAX:
        return max_abs_diff(x, y, d, eps, share)
    for j in range(d):
        u = (x[j] - y[j]) + eps
        if kind == NORM_ONE:
            s += fabs(u)
        elif kind == NORM_THREE:
            s += fabs(<double>u) * u * u
        else:
            s += pow(fabs(<double>u), p)
    if kind == NORM_ONE:
        return <floating>s
    if kind == NORM_THREE:
        return <floating>pow(s, 1.0 / 3.0)
    return <floating>pow(s, 1.0 / p)


# --------------------------------------------------------------------------------------------------
# Second sweep: the norm's backward (torch's norm_backward), element by element
# --------------------------------------------------------------------------------------------------
cdef floating norm_grad_scale(floating c, floating norm, int kind, double p, Py_ssize_t share) noexcept nogil:
    """The per-row factor ``k`` of the gradient of ``c * ||u||_p`` (see :func:`norm_grad1`).

    Where the norm is 0 the gradient is the subgradient 0 (torch masks it), except for ``p < 1``,
    where torch scales by ``norm^(1 - p)`` unmasked.
    """
    if kind == NORM_ONE:
        return c
    if kind == NORM_MAX:
        return c / share
    if kind == NORM_POW and p < 1:
        return c * <floating>pow(norm, 1 - p)
    if norm == 0:
        return 0
    if kind == NORM_TWO:
        return c / norm
    if kind == NORM_THREE:
        return c / (norm * norm)
    return c / <floating>pow(norm, p - 1)


cdef inline floating norm_grad1(floating u, floating norm, floating k, int kind, double p) noexcept nogil:
    """One element of ``d(c * ||u||_p)/du`` given the row factor ``k`` of :func:`norm_grad_scale`::

        p == 2: u k          p == 1: sgn(u) k          p == 3: u |u| k
        p > 2:  u |u|^(p-2) k          1 < p < 2: sgn(u) |u|^(p-1) k
        p < 1:  sgn(u) |u|^(p-1) k, 0 where u == 0
        p == inf: sgn(u) k where |u| == norm or u is NaN, else 0
    """
    cdef floating au = fabs(u)
    if kind == NORM_TWO:
        return u * k
    if kind == NORM_ONE:
        return sgn(u) * k
    if kind == NORM_THREE:
        return (u * au) * k
    if kind == NORM_POW:
        if p > 2:
            return (u * <floating>pow(au, p - 2)) * k
        if p > 1:
            return (sgn(u) * <floating>pow(au, p - 1)) * k
        return (sgn(u) * (0 if u == 0 else <floating>pow(au, p - 1))) * k
    return sgn(u) * (k * (au == norm or u != u))  # NORM_MAX


cdef void norm_grads_p2(
    const floating* x, const floating* y, Py_ssize_t m, floating eps, floating k, floating* out,
) noexcept nogil:
    """``out[j] = (x_j - y_j + eps) * k``: the p == 2 norm gradient, the common case, kept apart so that
    it vectorises."""
    cdef Py_ssize_t j
    for j in range(m):
        out[j] = ((x[j] - y[j]) + eps) * k


cdef void norm_grads(
    const floating* x, const floating* y, Py_ssize_t m, floating eps, int kind, double p,
    floating norm, floating k, floating* out,
) noexcept nogil:
    """``out[j] = norm_grad1(x_j - y_j + eps)`` for ``m`` consecutive elements."""
    cdef Py_ssize_t j
    if kind == NORM_TWO:
        norm_grads_p2(x, y, m, eps, k, out)
        return
    for j in range(m):
        out[j] = norm_grad1((x[j] - y[j]) + eps, norm, k, kind, p)


cdef void row_gradients(
    const floating* a, const floating* p, const floating* n, Py_ssize_t d, floating eps, bint swap,
    int kind, double pp, floating nu, floating nv, floating nw, floating ku, floating kv, floating kw,
    floating* ga, floating* gp, floating* gn,
) noexcept nogil:
    """The three gradient rows: ``ga = Gu + Gv``, ``gp = -Gu + Gw``, ``gn = -Gv - Gw`` with ``G`` the
    elementwise norm gradients of :func:`norm_grad1` (``Gw = 0`` without swap).

    By blocks of ROW_BLOCK: the norm gradients go to local buffers first (read-only loops over the
    inputs), then the sums are stored. So the loops vectorise, and a block of the inputs is wholly read
    before its gradients are written, which keeps in-place gradients (``ga`` being ``a``) correct.
    """
    cdef floating du[ROW_BLOCK]
    cdef floating dv[ROW_BLOCK]
    cdef floating dw[ROW_BLOCK]
    cdef Py_ssize_t j0 = 0, j, m
    while j0 < d:
        m = min(ROW_BLOCK, d - j0)
        norm_grads(a + j0, p + j0, m, eps, kind, pp, nu, ku, du)
        norm_grads(a + j0, n + j0, m, eps, kind, pp, nv, kv, dv)
        if swap:
            norm_grads(p + j0, n + j0, m, eps, kind, pp, nw, kw, dw)
            for j in range(m):
                ga[j0 + j] = du[j] + dv[j]
                gp[j0 + j] = dw[j] - du[j]
                gn[j0 + j] = -dv[j] - dw[j]
        else:
            for j in range(m):
                ga[j0 + j] = du[j] + dv[j]
                gp[j0 + j] = -du[j]
                gn[j0 + j] = -dv[j]
        j0 += m


# --------------------------------------------------------------------------------------------------
# One row, and the kernel
# --------------------------------------------------------------------------------------------------
cdef floating triplet_row(
    const floating* a, const floating* p, const floating* n, Py_ssize_t d,
    floating margin, floating eps, bint swap, int kind, double pp,
    floating gi, floating* ga, floating* gp, floating* gn,
) noexcept nogil:
    """Loss of one row; writes its three gradient rows unless ``ga`` is NULL.

    ``z = (margin + d_ap) - d_an`` (torch's order); the gradient ``dz`` (``gi`` where ``z >= 0``) flows
    to ``d_ap`` as ``dz`` and to ``d_an`` as ``-dz``; with swap, ``torch.minimum``'s backward sends it
    to the smaller of ``||v||`` and ``||w||``, half to each at a tie.
    """
    cdef Py_ssize_t su = 0, sv = 0, sw = 0
    cdef floating nu, nv, nw = 0, dn, z, dz, cv, cw = 0, half
    nu = row_distance(a, p, d, eps, kind, pp, &su)
    nv = row_distance(a, n, d, eps, kind, pp, &sv)
    dn = nv
    if swap:
        nw = row_distance(p, n, d, eps, kind, pp, &sw)
        dn = nv if (nv < nw or nv != nv) else nw  # torch.minimum: NaN wins
    z = (margin + nu) - dn
    if ga != NULL:
        dz = through_clamp_min0(gi, z)
        cv = -dz
        if swap:
            half = -dz / 2 if nv == nw else -dz
            cv = 0 if nv > nw else half
            cw = 0 if nv < nw else half
        row_gradients(
            a, p, n, d, eps, swap, kind, pp, nu, nv, nw,
            norm_grad_scale(dz, nu, kind, pp, su),
            norm_grad_scale(cv, nv, kind, pp, sv),
            norm_grad_scale(cw, nw, kind, pp, sw) if swap else 0,
            ga, gp, gn,
        )
    return clamp_min0(z)


cdef double triplet_rows(
    const floating* a, const floating* p, const floating* n, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t d,
    floating margin, floating eps, bint swap, int kind, double pp, floating gs, const floating* gv,
    floating* loss, floating* ga, floating* gp, floating* gn,
) noexcept nogil:
    """Rows ``i0 <= i < i1`` of ``(rows, d)`` arrays: their losses (stored unless ``loss`` is NULL),
    their gradients (unless ``ga`` is NULL) and the float64 sum of the losses."""
    cdef Py_ssize_t i
    cdef floating l
    cdef double s = 0
    for i in range(i0, i1):
        l = triplet_row(
            a + i * d, p + i * d, n + i * d, d, margin, eps, swap, kind, pp,
            gv[i] if gv != NULL else gs,
            ga + i * d if ga != NULL else NULL,
            gp + i * d if ga != NULL else NULL,
            gn + i * d if ga != NULL else NULL,
        )
        if loss != NULL:
            loss[i] = l
        s += l
    return s


def triplet_margin(
    const floating[:, ::1] a, const floating[:, ::1] p, const floating[:, ::1] n,
    double margin, double pnorm, double eps, bint swap,
    floating[::1] loss, const floating[::1] g,
    floating[:, ::1] ga, floating[:, ::1] gp, floating[:, ::1] gn, int num_threads,
):
    """Triplet margin loss of ``(rows, d)`` inputs, one loss per row; see the module docstring.

    ``p > 0``; ``d == 0`` needs a norm with an identity (the caller refuses ``p = inf`` there).
    """
    cdef Py_ssize_t rows = a.shape[0], d = a.shape[1], per = rows_per_item(d), count = item_count(rows, per)
    cdef Py_ssize_t b, i0
    cdef int kind = norm_kind(pnorm)
    cdef floating m = <floating>margin, e = <floating>eps
    cdef floating gs = g[0] if g.shape[0] > 0 else 0
    cdef const floating* gv = &g[0] if g.shape[0] > 1 else NULL
    cdef floating* pl = &loss[0] if loss.shape[0] > 0 else NULL
    cdef floating* pa = &ga[0, 0] if g.shape[0] > 0 else NULL
    cdef floating* pp = &gp[0, 0] if g.shape[0] > 0 else NULL
    cdef floating* pn = &gn[0, 0] if g.shape[0] > 0 else NULL
    cdef double* parts
    if rows == 0:
        return 0.0
    parts = new_partials(count)
    try:
        for b in prange(count, nogil=True, schedule="dynamic", num_threads=num_threads):
            i0 = b * per
            parts[b] = triplet_rows(&a[0, 0], &p[0, 0], &n[0, 0], i0, min(i0 + per, rows), d, m, e, swap, kind,
                                    pnorm, gs, gv, pl, pa, pp, pn)
        return sum_f64(parts, count)
    finally:
        free(parts)
