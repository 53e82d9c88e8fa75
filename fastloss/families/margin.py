"""The row-wise margin family on the CPU: ``multi_margin_loss`` and ``multilabel_margin_loss``.

Semantics are PyTorch 2.13's ``torch.nn.functional`` (formulas in :mod:`fastloss.api`). The input is
seen as ``(N, C)`` rows of classes (a ``(C,)`` input is one row, a 0-d input one row of one class);
value and gradient of a row come from one fused pass over it.

One-point maths. Both losses add ``max(0, z)**p`` over the pairs (target, other class) of a row, with
``z = margin - x_y + x_i`` (multilabel: margin 1, ``p = 1``). :func:`margin_point` gives that term and
its derivative, ``(0, 0)`` where ``z <= 0`` *or NaN*: PyTorch's kernels test ``z > 0``, so a NaN
logit adds nothing (and gets no gradient) instead of turning the loss NaN. It is written once and
compiled for these loops (``_jit.device``) and for the CUDA twin (``cuda.jit(device=True)``).

multi_margin_loss. Row ``r`` with target ``y``: ``l = w_y / C * sum_{i != y} h(z_i)``; gradient
``w_y / C * h'(z_i)`` at ``i != y`` and minus their sum at ``y``. The sum over ``i != y`` is two plain
loops, over the classes before ``y`` and after it (no test of ``i == y`` per element: each loop
vectorises). ``z`` is formed in the data's precision (as PyTorch) from ``a = margin - x_y``; terms are
summed in that precision over blocks of :data:`_BLOCK` classes, the blocks' sums in float64. Rows of
at most :data:`SHORT_CLASSES` classes take one plain loop per row instead (:func:`_multi_margin_short`,
the target's term masked): there the per-row cost of the runs outweighs their arithmetic.

multilabel_margin_loss. Row ``r`` lists its targets ``t_0, t_1, ...`` up to the first ``-1`` (or the
end of the row); ``l = 1 / C * sum_j sum_{i not a target} h(1 - x_{t_j} + x_i)``, a duplicated target
counted once per listing (as PyTorch). A private copy of the row with every target set to ``-inf``
stands in for the "not a target" test: ``z`` is then ``-inf`` or NaN there, which :func:`margin_point`
drops, so the loop over ``i`` for one ``j`` has no mask and vectorises; it also counts, per class,
how many ``j`` it violates (the gradient ``count_i / C``) and, per ``j``, how many classes violate it
(the target's gradient, ``-count_j / C`` per listing).

In place. Every kernel reads what a row needs (``x_y``, the targets' logits) before it writes the
row's gradient, and each gradient element is written after its own logit was read, so ``out=input``
is safe.

Threads. The kernels are serial (``nogil``) over chunk ``k`` of ``n_chunks`` runs of rows; a call of
fewer than :data:`MIN_CHUNK` elements runs on the calling thread, a bigger one shares its chunks
among the calling thread and the pool of :func:`fastloss._jit.run_chunks`. Chunks depend on the size
of the work only and their losses are summed in chunk order, so results do not depend on the thread
count. Class indices are range-checked in a first pass over the targets, before any kernel writes.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _jit
from .. import _validation as V
from .._dispatch import scalar_result
from .._registry import Case


# ================================================================================================
# One-point maths (compiled for the CPU here and for CUDA in margin_cuda)
# ================================================================================================
def margin_point(z, squared, zero, one):
    """``(max(0, z)**p, d/dz)`` with ``p = 2`` when ``squared`` else 1; ``(0, 0)`` where ``z <= 0`` or
    ``z`` is NaN (PyTorch's ``if z > 0``). ``zero`` and ``one`` are of ``z``'s type, so that float32
    data stays float32."""
    if z > zero:
        if squared:
            return z * z, z + z
        return z, one
    return zero, zero


_point = _jit.device(margin_point)
_loop = _jit.kernel(parallel=False)

#: Terms summed in the data's precision before the partial sum joins a float64 total: float64
#: accumulators would halve the float32 lanes (measured 2x slower), and 256 float32 terms keep the
#: relative error near 1e-7 (as the softmax family's blocks).
_BLOCK = 256


# ================================================================================================
# multi_margin_loss
# ================================================================================================
@_jit.device
def _multi_margin_side(xs, os, a, squared, c, with_grad):
    """Over a run of classes ``xs`` (none of them the target): ``(sum_i h(a + xs[i]), sum_i os[i])``
    in float64; with ``with_grad`` also ``os[i] = c * h'(a + xs[i])`` (``os`` may be ``xs``)."""
    zero = xs.dtype.type(0)
    one = xs.dtype.type(1)
    s = 0.0
    d = 0.0
    for lo in range(0, xs.size, _BLOCK):
        xb = xs[lo:lo + _BLOCK]
        sb = zero
        db = zero
        if with_grad:
            ob = os[lo:lo + _BLOCK]
            for i in range(xb.size):
                h, dh = _point(a + xb[i], squared, zero, one)
                g = c * dh
                ob[i] = g
                sb += h
                db += g
        else:
            for i in range(xb.size):
                h, _ = _point(a + xb[i], squared, zero, one)
                sb += h
        s += sb
        d += db
    return s, d


@_loop
def _multi_margin_rows(k, n_chunks, x, t, w, margin, squared, coef, out, with_grad, loss):
    """``multi_margin_loss`` of chunk ``k`` of ``n_chunks`` runs of rows of ``x (N, C)`` with targets
    ``t (N,)`` (in range) and class weights ``w (C,)`` into ``loss (N,)`` (float64); ``with_grad``: the
    gradient times ``coef (N,)`` into ``out`` (may be ``x``). Returns the chunk's float64 loss sum."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    n_cls = x.shape[1]
    no_row = np.empty(0, dtype=out.dtype)  # a stand-in for out[r] without a gradient
    total = 0.0
    for r in range(lo, hi):
        xs = x[r]
        y = t[r]
        wy = np.float64(w[y]) / n_cls
        a = xs.dtype.type(margin - np.float64(xs[y]))
        os = out[r] if with_grad else no_row
        c = xs.dtype.type(coef[r] * wy if with_grad else 0.0)
        s1, d1 = _multi_margin_side(xs[:y], os[:y], a, squared, c, with_grad)
        s2, d2 = _multi_margin_side(xs[y + 1:], os[y + 1:], a, squared, c, with_grad)
        if with_grad:
            os[y] = -(d1 + d2)
        li = (s1 + s2) * wy
        loss[r] = li
        total += li
    return total


@_loop
def _multi_margin_short(k, n_chunks, x, t, w, margin, squared, coef, out, with_grad, loss):
    """:func:`_multi_margin_rows` for rows of at most :data:`SHORT_CLASSES` classes: one plain loop per
    row, the target's term masked (the run-splitting of the long rows costs more than it saves here)."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    n_cls = x.shape[1]
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    total = 0.0
    for r in range(lo, hi):
        y = t[r]
        wy = np.float64(w[y]) / n_cls
        a = x.dtype.type(margin - np.float64(x[r, y]))
        c = x.dtype.type(coef[r] * wy if with_grad else 0.0)
        s = zero
        d = zero
        for i in range(n_cls):
            h, dh = _point(a + x[r, i], squared, zero, one)
            if i == y:
                h = zero
                dh = zero
            s += h
            if with_grad:
                g = c * dh
                out[r, i] = g
                d += g
        if with_grad:
            out[r, y] = -d
        li = np.float64(s) * wy
        loss[r] = li
        total += li
    return total


# ================================================================================================
# multilabel_margin_loss
# ================================================================================================
@_loop
def _multilabel_pass(masked, counts, a, with_grad):
    """One listed target (``a = 1 - x_t``) against every class of the row: ``(sum_i h(a + masked[i]),
    number of violating classes)``, float64; with ``with_grad`` also ``counts[i] += 1`` where class
    ``i`` violates it. ``masked`` is the row with its targets at ``-inf`` (never violating)."""
    zero = masked.dtype.type(0)
    one = masked.dtype.type(1)
    s = 0.0
    n = 0.0
    for lo in range(0, masked.size, _BLOCK):
        mb = masked[lo:lo + _BLOCK]
        sb = zero
        nb = zero
        if with_grad:
            cb = counts[lo:lo + _BLOCK]
            for i in range(mb.size):
                h, dh = _point(a + mb[i], False, zero, one)
                cb[i] += dh
                sb += h
                nb += dh
        else:
            for i in range(mb.size):
                h, _ = _point(a + mb[i], False, zero, one)
                sb += h
        s += sb
        n += nb
    return s, n


@_loop
def _multilabel_rows(k, n_chunks, x, t, coef, out, with_grad, loss):
    """``multilabel_margin_loss`` of chunk ``k`` of ``n_chunks`` runs of rows of ``x (N, C)`` with
    target lists ``t (N, C)`` (in ``[-1, C)``) into ``loss (N,)``; ``with_grad``: the gradient times
    ``coef (N,)`` into ``out`` (may be ``x``). Returns the chunk's float64 loss sum."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    n_cls = x.shape[1]
    masked = np.empty(n_cls, dtype=x.dtype)
    counts = np.empty(n_cls, dtype=x.dtype)
    per_target = np.empty(n_cls)
    ninf = x.dtype.type(-np.inf)
    one = x.dtype.type(1)
    total = 0.0
    for r in range(lo, hi):
        xs = x[r]
        ts = t[r]
        n_t = 0
        while n_t < n_cls and ts[n_t] >= 0:
            n_t += 1
        for i in range(n_cls):
            masked[i] = xs[i]
        for j in range(n_t):
            masked[ts[j]] = ninf
        if with_grad:
            counts[:] = 0
        s = 0.0
        for j in range(n_t):
            sj, nj = _multilabel_pass(masked, counts, one - xs[ts[j]], with_grad)
            s += sj
            per_target[j] = nj
        li = s / n_cls
        loss[r] = li
        total += li
        if with_grad:  # every read of the row is done: out may be x
            c = coef[r] / n_cls
            os = out[r]
            cd = os.dtype.type(c)
            for i in range(n_cls):
                os[i] = cd * counts[i]  # 0 at the targets (never violating)
            for j in range(n_t):
                os[ts[j]] = np.float64(os[ts[j]]) - c * per_target[j]
    return total


# ================================================================================================
# Shared loop helpers
# ================================================================================================
@_jit.device
def _chunk(k, n_chunks, n_rows):
    """Rows ``[lo, hi)`` of chunk ``k`` of ``n_chunks`` equal chunks."""
    return k * n_rows // n_chunks, (k + 1) * n_rows // n_chunks


@_loop
def _first_outside(t, low, high):
    """Position of the first value of the flat integer ``t`` outside ``[low, high)``, or -1."""
    for i in range(t.size):
        if t[i] < low or t[i] >= high:
            return i
    return -1


# ================================================================================================
# Drivers (called by fastloss.api with checked NumPy arrays)
# ================================================================================================
#: Elements below which a call runs on the calling thread alone, and the least work of each further
#: chunk: as the softmax family's (a few ns of work per element here, 10-20 us per handed-off chunk).
MIN_CHUNK = 1 << 16
#: At most this many chunks per call (fixed, so that results do not depend on the thread count).
MAX_CHUNKS = 16
#: Rows of at most this many classes take the plain row loop of :func:`_multi_margin_short`.
SHORT_CLASSES = 32


def _run(kernel, n_rows, n_cls, *args):
    """Run ``kernel(k, n_chunks, *args)`` over its chunks of rows; the losses' float64 sum, in chunk order."""
    n = max(1, min(n_rows, MAX_CHUNKS, (n_rows * n_cls) // MIN_CHUNK))
    if n == 1:
        return kernel(0, 1, *args)
    return math.fsum(_jit.run_chunks(kernel, n, *args))


def _readonly(a):
    """A read-only view: the kernels see every input with one type, writeable or not (one compilation)."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def _rows(x, n, n_cls):
    """``x`` as C-contiguous ``(N, C)`` rows (a view where it already is contiguous)."""
    xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    return xc.reshape(n, n_cls)


def _indices(t, shape):
    """Class indices as C-contiguous ``intp`` of ``shape``."""
    tk = t if t.dtype == np.intp and t.flags.c_contiguous else np.ascontiguousarray(t, dtype=np.intp)
    return tk.reshape(shape)


def _check_range(t, tk, low, n_cls, end_marker):
    bad = _first_outside(tk.reshape(-1), low, n_cls)
    if bad >= 0:
        V.margin_index_error(t.reshape(-1)[bad], n_cls, end_marker)


def _gradient_buffer(grad, x, x2):
    """``(out, x2)``: the gradient buffer for ``x`` and the rows the kernel reads. An ``out`` that
    overlaps the input other than as the input itself gets the rows copied first."""
    out = grad.out_for(0, x)
    if grad.out is not None and not (out is x or out.ctypes.data == x2.ctypes.data) \
            and np.may_share_memory(out, x2):
        x2 = x2.copy()
    return out, x2


def _coefficients(grad, reduction, n, loss_shape):
    """Each row's factor on its loss gradient (float64, ``(N,)``): ``grad_output`` (per row for
    ``'none'``), over ``N`` for ``'mean'``."""
    if reduction == "none":
        return np.ascontiguousarray(np.broadcast_to(grad.array(loss_shape, np.float64), loss_shape)).reshape(n)
    g = grad.scalar()
    if reduction == "mean":
        g = g / n if n else 0.0
    return np.full(n, g)


def _reduce(loss, total, reduction, dtype, loss_shape):
    """The float64 row losses (sum ``total``) reduced; ``'mean'`` of no rows is NaN (as PyTorch's
    other losses: its margin kernels leave that result uninitialised)."""
    if reduction == "none":
        return loss.reshape(loss_shape).astype(dtype)
    if reduction == "sum":
        return scalar_result(total, dtype)
    return scalar_result(total / loss.size if loss.size else math.nan, dtype)


_ONES: dict = {}


def _ones(n, dtype):
    """Read-only class weights of ones (cached): one compiled kernel for calls with and without weights."""
    key = (n, np.dtype(dtype))
    a = _ONES.get(key)
    if a is None:
        if len(_ONES) > 64:
            _ONES.clear()
        a = _ONES[key] = _readonly(np.ones(n, dtype=dtype))
    return a


def multi_margin(x, t, p, margin, w, reduction, grad):
    """Driver of ``fastloss.multi_margin_loss``: ``x`` ``(N, C)``, ``(C,)`` or ``()``; ``t`` ``(N,)`` or ``()``."""
    n = x.shape[0] if x.ndim == 2 else 1
    n_cls = x.shape[-1] if x.ndim else 1
    x2 = _rows(x, n, n_cls)
    tk = _indices(t, (n,))
    _check_range(t, tk, 0, n_cls, False)
    wk = _ones(n_cls, x.dtype) if w is None else _readonly(np.ascontiguousarray(w))
    loss_shape = tuple(t.shape)
    loss = np.empty(n)
    out, out2, coef = None, np.empty((0, n_cls), dtype=x.dtype), loss
    if grad is not None:
        out, x2 = _gradient_buffer(grad, x, x2)
        out2 = out.reshape(n, n_cls)
        coef = _coefficients(grad, reduction, n, loss_shape)
    total = 0.0
    if n:
        kernel = _multi_margin_short if n_cls <= SHORT_CLASSES else _multi_margin_rows
        total = _run(kernel, n, n_cls, _readonly(x2), _readonly(tk), wk, float(margin), p == 2, coef,
                     out2, grad is not None, loss)
    value = _reduce(loss, total, reduction, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


def multilabel_margin(x, t, reduction, grad):
    """Driver of ``fastloss.multilabel_margin_loss``: ``x`` and ``t`` ``(N, C)``, ``(C,)`` or ``()``."""
    n = x.shape[0] if x.ndim == 2 else 1
    n_cls = x.shape[-1] if x.ndim else 1
    x2 = _rows(x, n, n_cls)
    tk = _indices(t, (n, n_cls))
    _check_range(t, tk, -1, n_cls, True)
    loss_shape = (n,) if x.ndim == 2 else ()
    loss = np.empty(n)
    out, out2, coef = None, np.empty((0, n_cls), dtype=x.dtype), loss
    if grad is not None:
        out, x2 = _gradient_buffer(grad, x, x2)
        out2 = out.reshape(n, n_cls)
        coef = _coefficients(grad, reduction, n, loss_shape)
    total = 0.0
    if n:
        total = _run(_multilabel_rows, n, n_cls, _readonly(x2), _readonly(tk), coef, out2, grad is not None, loss)
    value = _reduce(loss, total, reduction, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


# ================================================================================================
# float64 NumPy references (ground truth for the tests)
# ================================================================================================
def _ref_rows(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1] if x.ndim else 1)


def _ref_reduce(loss, reduction, grad_output, shape):
    """``(value, per-row factor on the gradient)`` of the row losses ``loss`` (``'none'``: ``shape``)."""
    n = loss.size
    if reduction == "none":
        g = np.ones(shape) if grad_output is None else np.broadcast_to(np.asarray(grad_output, np.float64), shape)
        return loss.reshape(shape), np.asarray(g, dtype=np.float64).reshape(n)
    g = 1.0 if grad_output is None else float(np.asarray(grad_output))
    if reduction == "sum":
        return loss.sum(), np.full(n, g)
    return (loss.sum() / n if n else math.nan), np.full(n, g / n if n else 0.0)


def _ref_multi_margin_loss(input, target, p=1, margin=1.0, weight=None, reduction="mean", grad_output=None):
    x = _ref_rows(input)
    n, n_cls = x.shape
    t = np.asarray(target).reshape(n).astype(np.intp)
    rows = np.arange(n)
    z = margin - x[rows, t][:, None] + x
    with np.errstate(invalid="ignore"):
        hit = (z > 0) & (np.arange(n_cls)[None, :] != t[:, None])
    h = np.where(hit, z ** p, 0.0)
    dh = np.where(hit, p * z ** (p - 1), 0.0)
    wy = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)[t]
    loss = wy * h.sum(axis=1) / n_cls
    value, k = _ref_reduce(loss, reduction, grad_output, np.shape(target))
    g = (k * wy / n_cls)[:, None] * dh
    g[rows, t] = -g.sum(axis=1)
    return value, (g.reshape(np.shape(input)),)


def _ref_multilabel_margin_loss(input, target, reduction="mean", grad_output=None):
    x = _ref_rows(input)
    n, n_cls = x.shape
    t = np.asarray(target).reshape(n, n_cls)
    loss = np.zeros(n)
    dz = np.zeros((n, n_cls))  # d loss_r / d x_r
    for r in range(n):
        ends = np.flatnonzero(t[r] < 0)
        listed = t[r, :ends[0] if ends.size else n_cls]
        other = np.ones(n_cls, dtype=bool)
        other[listed] = False
        with np.errstate(invalid="ignore"):
            z = 1.0 - x[r, listed][:, None] + x[r][None, :]
            hit = (z > 0) & other[None, :]
        loss[r] = np.where(hit, z, 0.0).sum() / n_cls
        dz[r] = hit.sum(axis=0) / n_cls
        np.add.at(dz[r], listed, -hit.sum(axis=1) / n_cls)
    value, k = _ref_reduce(loss, reduction, grad_output, (n,) if np.ndim(input) == 2 else ())
    return value, ((k[:, None] * dz).reshape(np.shape(input)),)


REFERENCE = {
    "multi_margin_loss": _ref_multi_margin_loss,
    "multilabel_margin_loss": _ref_multilabel_margin_loss,
}


# ================================================================================================
# Test and benchmark inputs
# ================================================================================================
def _logits(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _target_lists(rng, n, n_cls, most, dtype=np.int64, ends=True):
    """``(n, n_cls)`` target lists: up to ``most`` random classes per row (duplicates possible), then
    -1 and random leftovers after it (which must be ignored)."""
    t = rng.integers(0, n_cls, size=(n, n_cls))
    if ends:
        lengths = rng.integers(0, most + 1, size=n)
        for r, m in enumerate(lengths):
            if m < n_cls:
                t[r, m] = -1
    return t.astype(dtype)


def _multi_margin_cases(rng, dtype):
    w = rng.uniform(0.2, 2.0, 5).astype(dtype)
    return [
        Case((_logits(rng, (6, 5), dtype), rng.integers(0, 5, 6)), {}, "2d"),
        Case((_logits(rng, (6, 5), dtype), rng.integers(0, 5, 6).astype(np.int32)),
             {"p": 2, "margin": 0.7, "weight": w, "reduction": "sum"}, "p2-weight-sum"),
        Case((_logits(rng, (7,), dtype), np.array(3, dtype=np.int16)), {"margin": 2.0}, "1d"),
        Case((_logits(rng, (4, 37), dtype), rng.integers(0, 37, 4).astype(np.uint8)),
             {"reduction": "none", "margin": 1.5}, "none-37"),
        Case((_logits(rng, (5, 5), dtype), rng.integers(0, 5, 5)),
             {"p": 2, "weight": w, "reduction": "none"}, "p2-weight-none"),
        Case((_logits(rng, (), dtype), np.array(0)), {"reduction": "sum"}, "0d"),
    ]


def _multilabel_margin_cases(rng, dtype):
    lists = _target_lists(rng, 6, 5, 3)
    lists[0] = [-1, 2, 0, 1, 4]  # no target at all
    lists[1] = [2, 2, 0, -1, 3]  # a duplicated target
    lists[2] = [4, 3, 2, 1, 0]  # every class listed, no -1
    return [
        Case((_logits(rng, (6, 5), dtype), lists), {}, "2d"),
        Case((_logits(rng, (6, 5), dtype), lists.astype(np.int32)), {"reduction": "none"}, "none"),
        Case((_logits(rng, (8,), dtype), np.array([3, 0, 6, -1, 1, 2, 2, 7])), {"reduction": "sum"}, "1d"),
        Case((_logits(rng, (4, 37), dtype), _target_lists(rng, 4, 37, 9, np.int16)), {}, "37"),
    ]


CASES = {
    "multi_margin_loss": _multi_margin_cases,
    "multilabel_margin_loss": _multilabel_margin_cases,
}


def _bench_shape(size):
    """``(N, C)`` of about ``size`` elements: 1000 classes once there is room for them."""
    n_cls = 1000 if size >= 8 * 1000 else max(2, int(math.sqrt(size)))
    return max(1, size // n_cls), n_cls


def _bench_multi_margin(rng, dtype, size):
    n, n_cls = _bench_shape(size)
    return Case((_logits(rng, (n, n_cls), dtype), rng.integers(0, n_cls, n)), {}, f"{n}x{n_cls}")


def _bench_multilabel_margin(rng, dtype, size):
    n, n_cls = _bench_shape(size)
    t = rng.integers(0, n_cls, size=(n, n_cls))
    t[:, min(8, n_cls - 1):] = -1  # up to 8 labels per row
    return Case((_logits(rng, (n, n_cls), dtype), t), {}, f"{n}x{n_cls}-8labels")


BENCH = {
    "multi_margin_loss": _bench_multi_margin,
    "multilabel_margin_loss": _bench_multilabel_margin,
}
