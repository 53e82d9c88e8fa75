# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython kernels of the ranking and embedding losses: margin ranking, hinge embedding, cosine embedding.

Each kernel is one pass over its inputs that computes, as asked, the loss of every element (or row), the
gradients of the differentiated inputs, and the sum of the losses. Semantics are PyTorch 2.13's, operation
by operation: every intermediate that torch materialises as a tensor is rounded to the data's precision,
so kinks and NaN/inf fall where torch's do; sums over many values accumulate in float64.

Calling convention of the ``def`` kernels (the drivers in :mod:`fastloss.families.ranking` hold it):

- every array is C-contiguous and of one dtype, float32 or float64 (``floating``);
- ``loss``: the per-element (per-row) loss is written there, or an empty array to skip it;
- ``g``: the incoming gradient: empty for the value alone, one value for every element (a reduced loss;
  for ``'mean'`` already divided by the count), or one value per element (``reduction='none'``);
- gradient buffers: written when ``g`` is not empty; they may be the inputs themselves (in place), since
  every block of the inputs is read before its gradients are written;
- ``num_threads``: OpenMP threads of the ``prange`` loops (ignored by a build without OpenMP);
- returns the sum of the losses, accumulated in float64: one partial sum per work item, added in a fixed
  order at the end (see ``fastloss/_cy/_common.pxd``), so the result is the same on any thread count.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free
from libc.string cimport memcpy

from fastloss._cy._common cimport (
    CHUNK, FASTLOSS_HAVE_OPENMP, LANES, chunk_count, chunk_len, clamp_min0, item_count, lanes_total,
    new_partials, rows_per_item, sum_f64, through_clamp_min0,
)

# torch's EPSILON added to each squared norm in cosine_embedding_loss: ``constexpr float EPSILON = 1e-12``
# in aten/src/ATen/native/Loss.cpp, a float, so float64 data gets 1e-12 rounded to float32 too.
cdef double COSINE_EPS = <float>1e-12


def openmp_enabled():
    """True when this extension was compiled with OpenMP (its loops then run on several threads)."""
    return bool(FASTLOSS_HAVE_OPENMP)


# --------------------------------------------------------------------------------------------------
# margin_ranking_loss: l = max(0, -y * (x1 - x2) + margin)
# --------------------------------------------------------------------------------------------------
# Each work item first computes its losses and gradients into local buffers (loops that read the inputs
# and write only locals, with no reduction and no branch: they vectorise), then stores them and sums the
# losses from L1. Storing from locals also makes in-place gradients (out= the inputs) safe and as fast.
cdef inline floating margin_ranking_arg(floating x1, floating x2, floating y, floating margin) noexcept nogil:
    """``z = (-y) * (x1 - x2) + margin`` in torch's order of operations; the loss is clamp_min(z, 0)."""
    return -y * (x1 - x2) + margin


cdef void margin_ranking_block(
    const floating* x1, const floating* x2, const floating* y, Py_ssize_t n, floating margin,
    floating gs, const floating* gv, floating* loss, floating* dx1,
) noexcept nogil:
    """Losses of ``n`` consecutive elements into ``loss``, and unless ``dx1`` is NULL the gradient of
    ``x1`` (that of ``x2`` is its negation).

    Backward of torch's ops: ``dz = g`` where ``z >= 0``; ``d/dx1 = dz * (-y)``, ``d/dx2 = -(dz * (-y))``.
    The incoming gradient is ``gs`` for every element when ``gv`` is NULL, else ``gv[i]``.
    """
    cdef Py_ssize_t i
    cdef floating z
    if dx1 == NULL:
        for i in range(n):
            loss[i] = clamp_min0(margin_ranking_arg(x1[i], x2[i], y[i], margin))
    elif gv == NULL:
        for i in range(n):
            z = margin_ranking_arg(x1[i], x2[i], y[i], margin)
            loss[i] = clamp_min0(z)
            dx1[i] = through_clamp_min0(gs, z) * -y[i]
    else:
        for i in range(n):
            z = margin_ranking_arg(x1[i], x2[i], y[i], margin)
            loss[i] = clamp_min0(z)
            dx1[i] = through_clamp_min0(gv[i], z) * -y[i]


cdef double margin_ranking_chunk(
    const floating* x1, const floating* x2, const floating* y, Py_ssize_t n, floating margin,
    floating gs, const floating* gv, floating* loss, floating* g1, floating* g2,
) noexcept nogil:
    """One work item of at most CHUNK elements: the losses (stored unless ``loss`` is NULL), the
    gradients (unless ``g1`` is NULL) and the float64 sum of the losses."""
    cdef floating l[CHUNK]
    cdef floating d[CHUNK]
    cdef Py_ssize_t i
    margin_ranking_block(x1, x2, y, n, margin, gs, gv, l, d if g1 != NULL else NULL)
    if g1 != NULL:
        for i in range(n):
            g1[i] = d[i]
            g2[i] = -d[i]
    if loss != NULL:
        memcpy(loss, l, n * sizeof(floating))
    return sum_f64(l, n)


def margin_ranking(
    const floating[::1] x1, const floating[::1] x2, const floating[::1] y, double margin,
    floating[::1] loss, const floating[::1] g, floating[::1] g1, floating[::1] g2, int num_threads,
):
    """Margin ranking loss over flat arrays of ``n`` elements; see the module docstring for the arguments."""
    cdef Py_ssize_t n = x1.shape[0], count = chunk_count(n), c, lo
    cdef floating m = <floating>margin
    cdef floating gs = g[0] if g.shape[0] > 0 else 0
    cdef const floating* gv = &g[0] if g.shape[0] > 1 else NULL
    cdef floating* pl = &loss[0] if loss.shape[0] > 0 else NULL
    cdef floating* p1 = &g1[0] if g.shape[0] > 0 else NULL
    cdef floating* p2 = &g2[0] if g.shape[0] > 0 else NULL
    cdef double* parts
    if n == 0:
        return 0.0
    parts = new_partials(count)
    try:
        for c in prange(count, nogil=True, schedule="dynamic", num_threads=num_threads):
            lo = c * CHUNK
            parts[c] = margin_ranking_chunk(
                &x1[lo], &x2[lo], &y[lo], chunk_len(c, n), m, gs,
                gv + lo if gv != NULL else NULL,
                pl + lo if pl != NULL else NULL,
                p1 + lo if p1 != NULL else NULL,
                p2 + lo if p2 != NULL else NULL,
            )
        return sum_f64(parts, count)
    finally:
        free(parts)


# --------------------------------------------------------------------------------------------------
# hinge_embedding_loss: l = where(y != 1, max(0, margin - x), 0) + where(y != -1, x, 0)
# --------------------------------------------------------------------------------------------------
# Both terms are computed for every element and the target only selects between finished values: a
# comparison made only for some targets is one the compiler may not hoist (it could raise an FP flag),
# and the loop would keep its unpredictable branches instead of vectorising.
cdef inline floating hinge_embedding1(floating x, floating y, floating margin) noexcept nogil:
    """The loss of one element; both terms are added for a target that is neither 1 nor -1, as torch."""
    cdef floating below = clamp_min0(margin - x)
    return (below if y != 1 else 0) + (x if y != -1 else 0)


cdef inline floating hinge_embedding_grad1(floating x, floating y, floating margin, floating g) noexcept nogil:
    """``d/dx``: ``-g`` where ``y != 1`` and ``margin - x >= 0`` (clamp_min passes its kink, NaN blocks
    it), plus ``g`` where ``y != -1``. The two conditions are combined as integers (no nested branch)."""
    cdef bint pushed = (y != 1) & (margin - x >= 0)
    cdef bint linear = y != -1
    return (-g if pushed else 0) + (g if linear else 0)


cdef void hinge_embedding_block(
    const floating* x, const floating* y, Py_ssize_t n, floating margin,
    floating gs, const floating* gv, floating* loss, floating* dx,
) noexcept nogil:
    """Losses of ``n`` consecutive elements into ``loss`` and, unless ``dx`` is NULL, their gradients
    (``gv`` NULL: the incoming gradient is ``gs`` for every element).

    Separate loops for the losses and the gradients (the block is in L1 for the second): GCC does not
    if-convert the selects of both in one loop body, and the branches would stay.
    """
    cdef Py_ssize_t i
    for i in range(n):
        loss[i] = hinge_embedding1(x[i], y[i], margin)
    if dx == NULL:
        return
    if gv == NULL:
        for i in range(n):
            dx[i] = hinge_embedding_grad1(x[i], y[i], margin, gs)
    else:
        for i in range(n):
            dx[i] = hinge_embedding_grad1(x[i], y[i], margin, gv[i])


cdef double hinge_embedding_chunk(
    const floating* x, const floating* y, Py_ssize_t n, floating margin,
    floating gs, const floating* gv, floating* loss, floating* gx,
) noexcept nogil:
    """One work item: the losses (stored unless ``loss`` is NULL), the gradient (unless ``gx`` is NULL)
    and the float64 sum of the losses."""
    cdef floating l[CHUNK]
    cdef floating d[CHUNK]
    hinge_embedding_block(x, y, n, margin, gs, gv, l, d if gx != NULL else NULL)
    if gx != NULL:
        memcpy(gx, d, n * sizeof(floating))
    if loss != NULL:
        memcpy(loss, l, n * sizeof(floating))
    return sum_f64(l, n)


def hinge_embedding(
    const floating[::1] x, const floating[::1] y, double margin,
    floating[::1] loss, const floating[::1] g, floating[::1] gx, int num_threads,
):
    """Hinge embedding loss over flat arrays of ``n`` elements; see the module docstring for the arguments."""
    cdef Py_ssize_t n = x.shape[0], count = chunk_count(n), c, lo
    cdef floating m = <floating>margin
    cdef floating gs = g[0] if g.shape[0] > 0 else 0
    cdef const floating* gv = &g[0] if g.shape[0] > 1 else NULL
    cdef floating* pl = &loss[0] if loss.shape[0] > 0 else NULL
    cdef floating* px = &gx[0] if g.shape[0] > 0 else NULL
    cdef double* parts
    if n == 0:
        return 0.0
    parts = new_partials(count)
    try:
        for c in prange(count, nogil=True, schedule="dynamic", num_threads=num_threads):
            lo = c * CHUNK
            parts[c] = hinge_embedding_chunk(
                &x[lo], &y[lo], chunk_len(c, n), m, gs,
                gv + lo if gv != NULL else NULL,
                pl + lo if pl != NULL else NULL,
                px + lo if px != NULL else NULL,
            )
        return sum_f64(parts, count)
    finally:
        free(parts)


# --------------------------------------------------------------------------------------------------
# cosine_embedding_loss, per row: cos = <x1, x2> / sqrt((|x1|^2 + eps) * (|x2|^2 + eps)), eps = float(1e-12);
# l = 1 - cos where y == 1, max(0, cos - margin) where y == -1, 0 for any other target
# --------------------------------------------------------------------------------------------------
cdef void row_dot_products(const floating* x1, const floating* x2, Py_ssize_t d, double* sums) noexcept nogil:
    """``sums = (<x1, x2>, <x1, x1>, <x2, x2>)`` of one row, in float64 over LANES partial sums each."""
    cdef double sp[LANES]
    cdef double s1[LANES]
    cdef double s2[LANES]
    cdef double a, b
    cdef Py_ssize_t j = 0, k
    for k in range(LANES):
        sp[k] = 0
        s1[k] = 0
        s2[k] = 0
    while j + LANES <= d:
        for k in range(LANES):
            a = x1[j + k]
            b = x2[j + k]
            sp[k] += a * b
            s1[k] += a * a
            s2[k] += b * b
        j += LANES
    sums[0] = lanes_total(sp)
    sums[1] = lanes_total(s1)
    sums[2] = lanes_total(s2)
    while j < d:
        a = x1[j]
        b = x2[j]
        sums[0] += a * b
        sums[1] += a * a
        sums[2] += b * b
        j += 1


cdef floating cosine_embedding_row(
    const floating* x1, const floating* x2, Py_ssize_t d, floating y, floating margin,
    floating gi, floating* g1, floating* g2,
) noexcept nogil:
    """Loss of one row of ``d`` values; writes its gradients into ``g1``, ``g2`` unless they are NULL.

    The three sums accumulate in float64 and are rounded to the data's precision, as the tensors
    ``prod_sum``, ``mag_square1``, ``mag_square2`` of torch are; the rest follows torch's operations
    (an overflow of ``mag_square1 * mag_square2`` in float32 included). The backward is torch's chain
    rule written out for the row:

        gcos  = -g (y == 1)  or  g where cos - margin >= 0 (y == -1)  or  0
        gprod = gcos / denom,   gdenom = -gcos * (cos / denom),   gsq = gdenom / (2 denom)
        d/dx1 = gprod * x2 + 2 (gsq * m2) * x1,   d/dx2 = gprod * x1 + 2 (gsq * m1) * x2
    """
    cdef Py_ssize_t j
    cdef double sums[3]
    cdef floating a, b, prod, m1, m2, denom, cos, gcos, gprod, gsq, b1, b2
    cdef floating eps = <floating>COSINE_EPS
    row_dot_products(x1, x2, d, sums)
    prod = <floating>sums[0]
    m1 = <floating>sums[1] + eps
    m2 = <floating>sums[2] + eps
    denom = <floating>sqrt(m1 * m2)  # a double sqrt rounded once is the correctly rounded float sqrt
    cos = prod / denom
    if g1 != NULL:
        gcos = (-gi if y == 1 else 0) + (through_clamp_min0(gi, cos - margin) if y == -1 else 0)
        gprod = gcos / denom
        gsq = (-gcos * (cos / denom)) / (2 * denom)
        b1 = 2 * (gsq * m2)
        b2 = 2 * (gsq * m1)
        for j in range(d):
            a = x1[j]
            b = x2[j]
            g1[j] = gprod * b + b1 * a
            g2[j] = gprod * a + b2 * b
    if y == 1:
        return 1 - cos
    if y == -1:
        return clamp_min0(cos - margin)
    return 0


cdef double cosine_embedding_rows(
    const floating* x1, const floating* x2, const floating* y, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t d,
    floating margin, floating gs, const floating* gv, floating* loss, floating* g1, floating* g2,
) noexcept nogil:
    """Rows ``i0 <= i < i1`` of ``(n, d)`` arrays: their losses (stored unless ``loss`` is NULL), their
    gradients (unless ``g1`` is NULL) and the float64 sum of the losses."""
    cdef Py_ssize_t i
    cdef floating l
    cdef double s = 0
    for i in range(i0, i1):
        l = cosine_embedding_row(
            x1 + i * d, x2 + i * d, d, y[i], margin, gv[i] if gv != NULL else gs,
            g1 + i * d if g1 != NULL else NULL,
            g2 + i * d if g2 != NULL else NULL,
        )
        if loss != NULL:
            loss[i] = l
        s += l
    return s


def cosine_embedding(
    const floating[:, ::1] x1, const floating[:, ::1] x2, const floating[::1] y, double margin,
    floating[::1] loss, const floating[::1] g, floating[:, ::1] g1, floating[:, ::1] g2, int num_threads,
):
    """Cosine embedding loss of ``(n, d)`` inputs, one loss per row; see the module docstring."""
    cdef Py_ssize_t n = x1.shape[0], d = x1.shape[1], per = rows_per_item(d), count = item_count(n, per), b, i0
    cdef floating m = <floating>margin
    cdef floating gs = g[0] if g.shape[0] > 0 else 0
    cdef const floating* gv = &g[0] if g.shape[0] > 1 else NULL
    cdef floating* pl = &loss[0] if loss.shape[0] > 0 else NULL
    cdef floating* p1 = &g1[0, 0] if g.shape[0] > 0 else NULL
    cdef floating* p2 = &g2[0, 0] if g.shape[0] > 0 else NULL
    cdef double* parts
    if n == 0:
        return 0.0
    parts = new_partials(count)
    try:
        for b in prange(count, nogil=True, schedule="dynamic", num_threads=num_threads):
            i0 = b * per
            parts[b] = cosine_embedding_rows(&x1[0, 0], &x2[0, 0], &y[0], i0, min(i0 + per, n), d, m, gs, gv,
                                             pl, p1, p2)
        return sum_f64(parts, count)
    finally:
        free(parts)
