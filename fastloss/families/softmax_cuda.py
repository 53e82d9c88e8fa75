"""CUDA twin of the softmax family: ``log_softmax``, ``softmax``, ``nll_loss``, ``cross_entropy``.

Same drivers and semantics as :mod:`fastloss.families.softmax` (PyTorch 2.13), for GPU arrays.

Layout. The input is viewed as ``(O, C, K)`` in C order: ``C`` the classes (the softmax axis), ``O`` the
axes before it and ``K`` those after it. A *row* is ``x[o, :, k]``; its elements lie ``K`` apart, and
row ``r = o * K + k`` is element ``r`` of the loss for ``reduction='none'`` (the target's C order).

Row kernels. A row belongs to a *group* of ``G`` threads (``G`` a power of two, see :func:`row_group`):

* ``K == 1`` and ``C <= WARP``: ``G`` = the power of two >= C, one class per lane, several rows per
  warp; reductions are ``G``-lane shuffles.
* ``K == 1``, longer rows: ``G`` lanes stride over the row (about ``PER_THREAD`` classes each, coalesced
  reads), a part of a warp (shuffles only) or up to ``ROW_THREADS`` (512) threads (one block per row: shuffles within
  warps, one shared-memory exchange across them).
* ``K > 1``: ``G = 1``; neighbouring threads take neighbouring ``k``, so each class's reads are
  coalesced across the warp.

Each thread keeps its first ``CACHE`` elements of the row in registers (a fully unrolled local
array), so those are read from global memory once: 16 x 512 covers 8,192 classes. Elements beyond
(the *tail*, e.g. most of 32,000 or 128,256 classes) are read once in an online max/sum pass and once more, from L2,
when the outputs are written. Every thread of a block runs the same number of row iterations (rows
past the end are masked), since the block-wide reductions need all of them (see
:mod:`fastloss._cuda_reduce`).

Arithmetic in the data's precision per element (float32 ``exp`` is libdevice's ``expf``, a few FMAs
around ``ex2.approx``), with the row maximum ``M`` subtracted first. Sums: each thread adds its
exponentials in the data's precision (at most ``CACHE`` plus the tail's share, e.g. 63 terms for
32,000 classes), then the threads' partial sums are added in float64; the row's ``log S`` is float64.
Per-row values (losses, scales) are float64 and rounded once when stored; each block leaves one
float64 partial sum of the loss and one block adds the partials in a fixed order (deterministic).

With ``lse = M + log S``, ``p_c = exp(x_c - M) / S``:

* ``log_softmax = (x_c - M) - log S``; both terms are of one sign (``x_c - M <= 0 <= log S``), so no
  cancellation in float32. Backward: ``g_c - p_c sum(g)``.
* ``softmax = p_c``. Backward: ``p_c (g_c - sum(g p))``.
* cross entropy with weight ``a_c`` on ``-log p_c`` (index targets:
  ``a_c = (1 - e) w_t [c == t] + e w_c / C``; probabilities: ``a_c = w_c ((1 - e) q_c + e / C)``) and
  ``B = sum a_c``: loss ``B lse - sum a_c x_c``, gradient ``p_c B - a_c`` times the row's scale.
  The smoothing / probability sums are kept as ``A = sum a'_c x_c`` in float64 and used as
  ``A - B M`` (so large logits cancel exactly).

``reduction='mean'`` of class-index targets divides by ``sum_i w[t_i]`` over non-ignored targets, which
a small kernel computes from the targets alone (one block when they are few), so the fused kernel can
scale the gradient without a host round trip.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64, uint64

from .. import _cuda_arrays as D
from .. import _cuda_reduce as _R
from .._cuda_arrays import incoming_at

_R.install(globals())  # group_sum, group_max, block_sum, block_max, WARP

#: Elements of its row a thread keeps in registers (a compile-time length: the loops over it unroll).
#: 16 x 512 threads cover 8,192 classes; longer rows read the rest twice, the second time from L2.
#: Why not 32 x 1024 (32,768 classes, what a 128 KB row needs): ptxas (sm_90) puts the cross-entropy
#: kernel at 128 registers with 16 and spills 0.9 KB per thread at 64 (1024-thread blocks) with 32.
CACHE = 4 if D.SIMULATOR else 16
#: Most threads per row (a power of two); a block of that many holds one row.
ROW_THREADS = 16 if D.SIMULATOR else 512
#: Classes per lane aimed at by :func:`row_group` for rows longer than a warp.
PER_THREAD = 2 if D.SIMULATOR else 8
#: Threads per block when a block holds several rows (groups of at most a warp).
ROWS_BLOCK = 16 if D.SIMULATOR else 256
#: Rows of at least this many classes (K == 1) take more than a warp: up to ROW_THREADS.
ROW_BLOCK_MIN_C = WARP * PER_THREAD + 1
#: At most this many blocks per launch (they stride over the rows beyond); also the partials' length.
MAX_ROW_BLOCKS = 3 if D.SIMULATOR else 8192
#: Register limit of the row kernels: a block of ROW_THREADS threads must fit the 64K registers of an SM.
_ROW_JIT = {} if D.SIMULATOR else {"max_registers": 65536 // ROW_THREADS}
#: Up to this many targets, the mean's denominator is summed by one block (one launch).
ONE_BLOCK_TARGETS = 1 << 16

# Kinds of target of the cross-entropy kernel.
INDEX_TARGET, PROB_TARGET = 0, 1
BUF = _R.BUF


def row_group(C: int, K: int) -> int:
    """Threads per row ``G`` (a power of two): see the module docstring."""
    if K != 1:
        return 1
    if C <= WARP:
        return _R.group_size(C)
    g = 1
    while g * PER_THREAD < C and g < ROW_THREADS:
        g *= 2
    return g


def launch_shape(R: int, G: int):
    """``(blocks, threads)`` of a row kernel over ``R`` rows in groups of ``G`` threads: a block of
    ``G`` threads per row when ``G`` exceeds a warp (the block reductions span the whole block), else
    ``ROWS_BLOCK`` threads holding several rows (their reductions stay within a warp)."""
    threads = G if G > WARP else ROWS_BLOCK
    per_block = threads // G
    return max(1, min(MAX_ROW_BLOCKS, -(-R // per_block))), threads


# --------------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def cast(tmp, v):
    """``v`` converted to the data's dtype (``tmp``: a one-element local array of that dtype)."""
    tmp[0] = v
    return tmp[0]


@cuda.jit(device=True)
def row_base(r, C, K):
    """Flat index of row ``r``'s class 0; one division per row, none for K == 1."""
    if K == 1:
        return r * C
    o = r // K
    return o * C * K + (r - o * K)


@cuda.jit(device=True)
def row_max(mbuf, v, G):
    """Maximum over the row's group of ``G`` threads (a warp's part, or the whole block)."""
    if G <= WARP:
        return group_max(mbuf, v, G)
    return block_max(mbuf, v)


@cuda.jit(device=True)
def row_sum(buf, v, G):
    """Sum over the row's group of ``G`` threads (float64 ``v``)."""
    if G <= WARP:
        return group_sum(buf, v, G)
    return block_sum(buf, v)


@cuda.jit(device=True)
def load_row(x, i0, end, stride, live, cache, ninf):
    """Fill ``cache[j]`` with the thread's ``j``-th element of the row, flat index ``i0 + j stride``
    (``-inf`` from ``end`` on, or for a row not ``live``); return their maximum (NaN never becomes a
    maximum). Indices step by addition and are unsigned (no wrap-around of negative indices)."""
    m = ninf
    i = i0
    for j in range(CACHE):
        v = ninf
        if live and i < end:
            v = x[uint64(i)]
        cache[j] = v
        if v > m:
            m = v
        i += stride
    return m


@cuda.jit(device=True)
def online_add(m, s, v, one):
    """Add ``v`` to a running (max ``m``, sum ``s`` of exp(x - m)) in the data's precision.

    ``-inf`` values add nothing (even while ``m`` is still ``-inf``, where exp(v - m) would be NaN);
    a NaN makes ``s`` NaN, which then reaches every output of the row, as in PyTorch.
    """
    if v > m:
        return v, s * math.exp(m - v) + one
    if m > v or v != v:
        return m, s + math.exp(v - m)
    return m, s + one  # v == m, both finite (or both +inf, where s then is unused: M is +inf)


@cuda.jit(device=True)
def tail_pass(x, i0, end, stride, live, m, zero, one):
    """Online (max, sum) over the thread's elements beyond the cache (``i0 + j stride``,
    ``j >= CACHE``), starting from the cache's maximum ``m``; returns ``(m, s)``,
    ``s = sum exp(x - m)``."""
    s = zero
    if live:
        i = i0 + CACHE * stride
        while i < end:
            m, s = online_add(m, s, x[uint64(i)], one)
            i += stride
    return m, s


@cuda.jit(device=True)
def tail_share(mt, st, M, zero):
    """The tail's ``sum exp(x - M)`` from its online pair (0 when it is empty, never 0 * inf)."""
    if st == zero:
        return zero
    return st * math.exp(mt - M)


@cuda.jit(device=True)
def cached_exp_sum(cache, M, zero, keep):
    """``sum_j exp(cache[j] - M)`` in the data's precision; with ``keep`` false the cache is
    overwritten with the exponentials (read again by the gradient)."""
    s = zero
    for j in range(CACHE):
        e = math.exp(cache[j] - M)
        if not keep:
            cache[j] = e
        s += e
    return s


@cuda.jit(device=True)
def row_scale(reduce, scale, gv, gstep, r, inv_den, den_buf, use_den_buf):
    """Incoming gradient of row ``r``'s loss: grad_output of the row (of the 0-d loss when
    ``reduce``), divided by the mean's denominator (``1 / inv_den``, or ``den_buf[0]``)."""
    g = incoming_at(scale, gv, gstep, 0 if reduce else r) * inv_den
    if use_den_buf:
        g = g / den_buf[0]
    return g


@cuda.jit(device=True)
def leave_partial(buf, acc, parts):
    """The block's sum of the threads' ``acc`` into ``parts[blockIdx.x]`` (all threads call it)."""
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


# --------------------------------------------------------------------------------------------------
# log_softmax / softmax
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def out_and_vjp(v, log, M, log_s, inv_s, y, i, with_grad, gs, gv, gstep, sg, gx):
    """Element ``i``'s output and (``with_grad``) VJP; ``v`` is ``x_i`` for log_softmax and already
    ``exp(x_i - M)`` for softmax."""
    if log:
        y[i] = (v - M) - log_s
        if with_grad:
            p = math.exp(v - M) * inv_s
            gx[i] = incoming_at(gs, gv, gstep, i) - float64(p) * sg
    else:
        p = v * inv_s
        y[i] = p
        if with_grad:
            gx[i] = float64(p) * (incoming_at(gs, gv, gstep, i) - sg)


@cuda.jit(**_ROW_JIT)
def _softmax_rows(x, R, C, K, G, log, y, with_grad, gs, gv, gstep, gx):
    """``y = (log_)softmax(x)`` per row and, with ``with_grad``, ``gx`` = its VJP with the incoming
    ``g`` (``g - p sum(g)`` for log_softmax, ``p (g - sum(g p))`` for softmax).

    Each element is read before the same thread writes it, so ``gx`` (not ``y``) may be ``x``.
    """
    buf = cuda.shared.array(BUF, float64)
    mbuf = cuda.shared.array(BUF, x.dtype)
    cache = cuda.local.array(CACHE, x.dtype)
    tmp = cuda.local.array(1, x.dtype)
    ninf, zero, one = cast(tmp, -math.inf), cast(tmp, 0.0), cast(tmp, 1.0)
    tid = cuda.threadIdx.x
    lane = tid & (G - 1)
    per_block = cuda.blockDim.x // G
    sub = tid // G
    stride = G * K
    for first in range(cuda.blockIdx.x * per_block, R, cuda.gridDim.x * per_block):
        r = first + sub
        live = r < R
        base = row_base(r, C, K) if live else 0
        i0, end = base + lane * K, base + C * K
        m = load_row(x, i0, end, stride, live, cache, ninf)
        mt, st = tail_pass(x, i0, end, stride, live, m, zero, one)
        M = row_max(mbuf, mt, G)
        s = cached_exp_sum(cache, M, zero, log) + tail_share(mt, st, M, zero)
        S = row_sum(buf, float64(s), G)
        log_s = cast(tmp, math.log(S))
        inv_s = cast(tmp, 1.0 / S)
        # sum(g) (log_softmax) or sum(g p) (softmax), in float64: g is read as float64 anyway
        sg = 0.0
        if with_grad:
            part = 0.0
            i = i0
            while live and i < end:
                g = incoming_at(gs, gv, gstep, i)
                part += g if log else g * float64(math.exp(x[uint64(i)] - M) * inv_s)
                i += stride
            sg = row_sum(buf, part, G)
        if live:
            i = i0
            for j in range(CACHE):
                if i < end:
                    out_and_vjp(cache[j], log, M, log_s, inv_s, y, uint64(i), with_grad, gs, gv, gstep, sg, gx)
                i += stride
            while i < end:
                v = x[uint64(i)] if log else math.exp(x[uint64(i)] - M)
                out_and_vjp(v, log, M, log_s, inv_s, y, uint64(i), with_grad, gs, gv, gstep, sg, gx)
                i += stride


def _layout(shape, axis):
    """``(O, C, K)`` of ``shape`` around ``axis``."""
    O = int(np.prod(shape[:axis], dtype=np.int64))
    K = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return O, int(shape[axis]), K


def _softmax_driver(x, axis, grad, log):
    x = D.contiguous(x)
    O, C, K = _layout(x.shape, axis)
    y = D.empty(x.shape, x.dtype, x)
    gx = grad.out_for(0, x) if grad is not None else None
    n = x.size
    if n:
        xf, yf = D.reshape(x, (n,)), D.reshape(y, (n,))
        inc = grad.incoming(x.shape, xf) if grad is not None else D.Incoming(1.0, xf, -1)
        gxf = D.reshape(gx, (n,)) if gx is not None else yf
        R, G = O * K, row_group(C, K)
        blocks, threads = launch_shape(R, G)
        D.launch(_softmax_rows, blocks, x, xf, R, C, K, G, log, yf, grad is not None, *inc.args(), gxf,
                 threads=threads)
    if grad is None:
        return y
    return y, (gx,)


@D.on_input_device
def log_softmax(x, axis, grad):
    """``log_softmax(x)`` along ``axis``; with ``grad``, also ``g - softmax(x) * sum(g)``."""
    return _softmax_driver(x, axis, grad, True)


@D.on_input_device
def softmax(x, axis, grad):
    """``softmax(x)`` along ``axis``; with ``grad``, also ``p * (g - sum(g * p))``."""
    return _softmax_driver(x, axis, grad, False)


# --------------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def target_weight(t, w, has_w, ignore, r):
    """``w[t_r]`` (1 without weights), 0 for an ignored target."""
    ti = int64(t[r])
    if ti == ignore:
        return 0.0
    if has_w:
        return float64(w[ti])
    return 1.0


@cuda.jit
def _target_weight_sum(t, w, has_w, ignore, parts):
    """Per-block sums of ``w[t_r]`` over non-ignored targets (the mean's denominator): with one
    block, ``parts[0]`` is the denominator itself."""
    buf = cuda.shared.array(BUF, float64)
    acc = 0.0
    for r in range(cuda.grid(1), t.shape[0], cuda.gridsize(1)):
        acc += target_weight(t, w, has_w, ignore, r)
    leave_partial(buf, acc, parts)


@cuda.jit(device=True)
def class_coef(kind, t, w, has_w, keep, eps_c, one, tmp, i, c):
    """``a'_c``: the weight of class ``c`` (flat element ``i``) in the smoothing / probability sums, in
    the data's precision (``keep = 1 - e``, ``eps_c = e / C``, ``one`` = 1, all of that dtype): ``w_c``
    for index targets (the ``e / C`` factor is applied per row), ``w_c ((1 - e) q_c + e / C)`` for
    probabilities. ``t`` is converted through ``tmp`` so that an integer ``t`` (whose kernels never
    take this branch) cannot widen the result to float64."""
    a = w[c] if has_w else one
    if kind != INDEX_TARGET:
        a = a * (keep * cast(tmp, t[uint64(i)]) + eps_c)
    return a


@cuda.jit(**_ROW_JIT)
def _ce_rows(x, R, C, K, G, kind, t, w, has_w, ignore, eps, reduce, loss_out, parts,
             with_grad, gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """Cross entropy per row: its loss into ``loss_out[r]`` (``reduce`` false) or the block's partial
    sum into ``parts``; with ``with_grad``, its gradient into ``gx`` (which may be ``x``: every element
    is read before the same thread writes it, and ``x_t`` is taken by the thread that owns class t).

    ``t``: class indices per row (``kind == INDEX_TARGET``) or probabilities per element; ``w``: class
    weights (``has_w``), else any array of the data's dtype, only its type used.
    """
    buf = cuda.shared.array(BUF, float64)
    mbuf = cuda.shared.array(BUF, x.dtype)
    cache = cuda.local.array(CACHE, x.dtype)
    tmp = cuda.local.array(1, x.dtype)
    ninf, zero, one = cast(tmp, -math.inf), cast(tmp, 0.0), cast(tmp, 1.0)
    keep, eps_c = cast(tmp, 1.0 - eps), cast(tmp, eps / C)
    tid = cuda.threadIdx.x
    lane = tid & (G - 1)
    per_block = cuda.blockDim.x // G
    sub = tid // G
    stride = G * K
    linear = kind != INDEX_TARGET or eps > 0.0
    index = kind == INDEX_TARGET
    acc = 0.0
    for first in range(cuda.blockIdx.x * per_block, R, cuda.gridDim.x * per_block):
        r = first + sub
        live = r < R
        ti = int64(t[r]) if live and index else -1
        ignored = index and ti == ignore
        read = live and not ignored
        base = row_base(r, C, K) if live else 0
        i0, end = base + lane * K, base + C * K
        it = base + ti * K  # flat index of x_t (meaningful for index targets only)
        m = load_row(x, i0, end, stride, read, cache, ninf)
        # x_t, where this thread holds class t (the owner also writes the row's loss)
        xt = 0.0
        owner = False
        if read and index:
            for j in range(CACHE):
                if i0 + j * stride == it:
                    xt = float64(cache[j])
                    owner = True
        # tail: online (max, sum), x_t, and the linear sums of its classes
        A, B = 0.0, 0.0
        st = zero
        mt = m
        if read:
            i = i0 + CACHE * stride
            c = lane + CACHE * G
            while i < end:
                v = x[uint64(i)]
                mt, st = online_add(mt, st, v, one)
                if index and i == it:
                    xt = float64(v)
                    owner = True
                if linear:
                    a = float64(class_coef(kind, t, w, has_w, keep, eps_c, one, tmp, i, c))
                    A += a * float64(v)
                    B += a
                i += stride
                c += G
        if linear and read:
            for j in range(CACHE):
                i = i0 + j * stride
                if i < end:
                    a = float64(class_coef(kind, t, w, has_w, keep, eps_c, one, tmp, i, lane + j * G))
                    A += a * float64(cache[j])
                    B += a
        M = row_max(mbuf, mt, G)
        s = cached_exp_sum(cache, M, zero, False) + tail_share(mt, st, M, zero)
        S = row_sum(buf, float64(s), G)
        if linear:
            A = row_sum(buf, A, G)
            B = row_sum(buf, B, G)
        if index and not has_w:
            B = float64(C)  # sum of the smoothing weights w_c: exactly C without weights
        log_s = math.log(S)
        Mf = float64(M)
        wt = target_weight(t, w, has_w, ignore, r) if read and index else 0.0
        # the row's loss: index  (1 - e) w_t (log S - (x_t - M)) + e / C (B log S - (A - B M));
        #                 probabilities  B log S - (A - B M)
        if (owner if index else (lane == 0 and live)):
            if index:
                loss = (1.0 - eps) * wt * (log_s - (xt - Mf))
                if eps > 0.0:
                    loss += eps / C * (B * log_s - (A - B * Mf))
            else:
                loss = B * log_s - (A - B * Mf)
            if reduce:
                acc += loss
            else:
                loss_out[r] = loss
        elif index and ignored and lane == 0 and not reduce:
            loss_out[r] = 0.0
        if with_grad and live:
            # d_c = k (p_c B' - a_c), p_c = e_c / S with e_c = exp(x_c - M) (held in the cache):
            #   index          B' = (1 - e) w_t + e B / C,  a_c = (1 - e) w_t [c == t] + e w_c / C
            #   probabilities  B' = B,                      a_c = w_c ((1 - e) q_c + e / C)
            # alpha = k B' / S, hit = k (1 - e) w_t, beta a'_c = k e w_c / C or k a_c: data precision.
            k = 0.0
            if not ignored:
                k = row_scale(reduce, gs, gv, gstep, r, inv_den, den_buf, use_den_buf)
            if index:
                alpha = cast(tmp, k * ((1.0 - eps) * wt + eps / C * B) / S)
                hit = cast(tmp, k * (1.0 - eps) * wt)
                beta = cast(tmp, k * eps / C)
            else:
                alpha = cast(tmp, k * B / S)
                hit = zero
                beta = cast(tmp, k)
            i = i0
            for j in range(CACHE):
                if i < end:
                    d = cache[j] * alpha
                    if linear:
                        d -= beta * class_coef(kind, t, w, has_w, keep, eps_c, one, tmp, i, lane + j * G)
                    if i == it:
                        d -= hit
                    gx[uint64(i)] = zero if ignored else d
                i += stride
            c = lane + CACHE * G
            while i < end:
                d = zero
                if not ignored:
                    d = math.exp(x[uint64(i)] - M) * alpha
                    if linear:
                        d -= beta * class_coef(kind, t, w, has_w, keep, eps_c, one, tmp, i, c)
                    if i == it:
                        d -= hit
                gx[uint64(i)] = d
                i += stride
                c += G
    leave_partial(buf, acc, parts)


def _class_layout(x):
    """``(O, C, K)`` of a classification input: classes on axis 1, or axis 0 for a 1-D input."""
    return _layout(x.shape, 0 if x.ndim == 1 else 1)


def _none_shape(x):
    """Shape of ``reduction='none'``: the input without its class axis."""
    return () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])


def _none_value(loss_rows, x):
    return D.scalar_view(loss_rows) if x.ndim == 1 else loss_rows


def _index_denominator(tf, wf, has_w, ignore_index, like):
    """float64 device buffer holding ``sum_i w[t_i]`` over non-ignored targets (mean's denominator):
    one block writes it directly when the targets are few, else per-block partials and a final sum."""
    R = tf.shape[0]
    den = _R.scratch(1, like, "denominator")
    if R <= ONE_BLOCK_TARGETS:
        D.launch(_target_weight_sum, 1, like, tf, wf, has_w, ignore_index, den, threads=_R.MAX_THREADS)
        return den
    blocks = D.blocks_for(R)
    parts = _R.scratch(blocks, like, "denominator parts")
    D.launch(_target_weight_sum, blocks, like, tf, wf, has_w, ignore_index, parts)
    D.finish_sum(parts, den)
    return den


def _reduced_value(parts, x, den=1.0, den_buf=None):
    """The 0-d result: ``sum(parts) / den`` (or ``/ den_buf[0]``) in ``x``'s dtype."""
    out = D.result_buffer(x)
    D.finish_sum(parts, out, den=den, den_buf=den_buf)
    return D.scalar_view(out)


class _Rows:
    """The flat views and buffers every classification driver starts from."""

    def __init__(self, x, t, w, reduction, grad, target_per_element=False):
        self.x = D.contiguous(x)
        O, self.C, self.K = _class_layout(self.x)
        self.R = O * self.K
        n = self.x.size
        self.xf = D.reshape(self.x, (n,))
        self.tf = D.reshape(D.contiguous(t), (n if target_per_element else self.R,))
        self.has_w = w is not None
        self.wf = D.contiguous(w) if self.has_w else self.xf  # a stand-in, never read
        self.reduce = reduction != "none"
        self.loss_rows, self.loss_flat = None, self.xf  # a stand-in, never written when reduced
        if not self.reduce:
            self.loss_rows = D.empty((1,) if self.x.ndim == 1 else _none_shape(self.x), self.x.dtype, self.x)
            self.loss_flat = D.reshape(self.loss_rows, (self.R,))
        self.gx = grad.out_for(0, self.x) if grad is not None else None
        self.gxf = D.reshape(self.gx, (n,)) if self.gx is not None else self.xf
        shape = () if self.reduce else _none_shape(self.x)
        self.inc = grad.incoming(shape, self.xf) if grad is not None else D.Incoming(1.0, self.xf, -1)

    def index_denominator(self, ignore_index):
        return _index_denominator(self.tf, self.wf, self.has_w, ignore_index, self.x)

    def result(self, parts, grad, den=1.0, den_buf=None):
        value = _reduced_value(parts, self.x, den, den_buf) if self.reduce else _none_value(self.loss_rows, self.x)
        return value if grad is None else (value, (self.gx,))


@D.on_input_device
def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, grad):
    """Cross entropy of logits ``x`` (classes on axis 1) with index or probability targets ``t``."""
    kind = PROB_TARGET if np.dtype(t.dtype).kind == "f" else INDEX_TARGET
    rows = _Rows(x, t, w, reduction, grad, target_per_element=kind == PROB_TARGET)
    C, K, R = rows.C, rows.K, rows.R
    # The mean's denominator: the sum of target weights (index targets), or the number of rows.
    den_buf, den = None, 1.0
    if reduction == "mean":
        if kind == INDEX_TARGET:
            den_buf = rows.index_denominator(ignore_index)
        else:
            den = float(R)
    G = row_group(C, K)
    blocks, threads = launch_shape(R, G)
    work = R and C
    parts = _R.scratch(blocks if work else 0, rows.x, "parts")
    if work:
        D.launch(_ce_rows, blocks, rows.x, rows.xf, R, C, K, G, kind, rows.tf, rows.wf, rows.has_w,
                 int(ignore_index), float(label_smoothing), rows.reduce, rows.loss_flat, parts,
                 grad is not None, *rows.inc.args(), 1.0 / den if den else math.inf,
                 den_buf if den_buf is not None else parts, den_buf is not None, rows.gxf, threads=threads)
    return rows.result(parts, grad, den, den_buf)


# --------------------------------------------------------------------------------------------------
# nll_loss
# --------------------------------------------------------------------------------------------------
@cuda.jit
def _nll_rows(x, C, K, t, w, has_w, ignore, reduce, loss_out, parts):
    """NLL value, one thread per row: ``-w[t_r] x[r, t_r]`` (0 where ignored); one read per row."""
    buf = cuda.shared.array(BUF, float64)
    R = t.shape[0]
    acc = 0.0
    for r in range(cuda.grid(1), R, cuda.gridsize(1)):
        loss = 0.0
        ti = int64(t[r])
        if ti != ignore:
            loss = -target_weight(t, w, has_w, ignore, r) * float64(x[row_base(r, C, K) + ti * K])
        if reduce:
            acc += loss
        else:
            loss_out[r] = loss
    leave_partial(buf, acc, parts)


@cuda.jit
def _nll_lines(x, L, J, C, K, t, w, has_w, ignore, reduce, loss_out, parts,
               gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """NLL value and gradient over *lines* of ``J`` contiguous elements (coalesced writes of the whole,
    mostly zero, gradient): ``gx = -w[t] scale`` at the target class, 0 elsewhere; the element at the
    target adds the row's loss.

    ``K == 1``: line ``l`` is row ``l`` (``J = C``, element ``j`` is class ``j``). ``K > 1``: line
    ``l = o C + c`` is class ``c`` of rows ``o K .. o K + K - 1`` (``J = K``); one division per line.
    Each line is walked by a warp (a grid-stride loop over lines, lanes over its elements).
    """
    buf = cuda.shared.array(BUF, float64)
    lane = cuda.threadIdx.x & (WARP - 1)
    warp = cuda.grid(1) // WARP
    warps = cuda.gridsize(1) // WARP
    acc = 0.0
    for line in range(warp, L, warps):
        base = line * J
        if K == 1:
            ti = int64(t[line])
            k = 0.0
            wt = 0.0
            if ti != ignore:
                wt = target_weight(t, w, has_w, ignore, line)
                k = -wt * row_scale(reduce, gs, gv, gstep, line, inv_den, den_buf, use_den_buf)
            for j in range(lane, J, WARP):
                d = 0.0
                if j == ti:
                    d = k
                    loss = -wt * float64(x[base + j])
                    if reduce:
                        acc += loss
                    else:
                        loss_out[line] = loss
                gx[base + j] = d
            if ti == ignore and lane == 0 and not reduce:
                loss_out[line] = 0.0
        else:
            o = line // C
            c = line - o * C
            for j in range(lane, J, WARP):
                r = o * K + j
                ti = int64(t[r])
                d = 0.0
                if ti == c and ti != ignore:
                    wt = target_weight(t, w, has_w, ignore, r)
                    d = -wt * row_scale(reduce, gs, gv, gstep, r, inv_den, den_buf, use_den_buf)
                    loss = -wt * float64(x[base + j])
                    if reduce:
                        acc += loss
                    else:
                        loss_out[r] = loss
                elif ti == ignore and c == 0 and not reduce:
                    loss_out[r] = 0.0
                gx[base + j] = d
    leave_partial(buf, acc, parts)


@D.on_input_device
def nll(x, t, w, ignore_index, reduction, grad):
    """Negative log-likelihood of log-probabilities ``x`` (classes on axis 1), class-index ``t``.

    The value alone reads one element per row (a thread per row); with the gradient, a warp per line
    writes the whole (mostly zero) gradient with coalesced stores and adds up the loss too.
    """
    rows = _Rows(x, t, w, reduction, grad)
    C, K, R, n = rows.C, rows.K, rows.R, rows.x.size
    den_buf = rows.index_denominator(ignore_index) if reduction == "mean" else None
    ignore = int(ignore_index)
    if grad is None:
        blocks = D.blocks_for(R)
        parts = _R.scratch(blocks if R and C else 0, rows.x, "parts")
        if R and C:
            D.launch(_nll_rows, blocks, rows.x, rows.xf, C, K, rows.tf, rows.wf, rows.has_w, ignore, rows.reduce,
                     rows.loss_flat, parts)
    else:
        L, J = (R, C) if K == 1 else (n // K if K else 0, K)
        threads = ROWS_BLOCK
        blocks = max(1, min(MAX_ROW_BLOCKS, -(-L * WARP // threads)))
        parts = _R.scratch(blocks if n else 0, rows.x, "parts")
        if n:
            D.launch(_nll_lines, blocks, rows.x, rows.xf, L, J, C, K, rows.tf, rows.wf, rows.has_w, ignore,
                     rows.reduce, rows.loss_flat, parts, *rows.inc.args(), 1.0,
                     den_buf if den_buf is not None else parts, den_buf is not None, rows.gxf, threads=threads)
    return rows.result(parts, grad, 1.0, den_buf)
