"""The CUDA kernel of ``cross_entropy`` (a row group per row; index or probability targets, class
weights, label smoothing) and the kernel of the mean's denominator ``sum_i w[t_i]``."""
from __future__ import annotations

import math

from numba import cuda, float64, int64, uint32, uint64

from ... import _cuda_rows as _rows
from ..._cuda_arrays import jit_kernel
from .rows import _ROW_JIT, BUF, CACHE, INDEX_TARGET, load_row, online_add, row_base, row_scale, \
    tail_share, cached_exp_sum, target_weight

_rows.install(globals())  # group_sum, block_sum, row_slots, row_sum, row_max, finish_partials, cast, WARP


@jit_kernel
def _target_weight_sum(t, w, has_w, ignore, parts, ticket, out):
    """The mean's denominator ``out[0] = sum_r w[t_r]`` over non-ignored targets (float64): per-block
    sums into ``parts``, added by the last block (``finish_partials``)."""
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    acc = 0.0
    for r in range(cuda.grid(1), t.shape[0], cuda.gridsize(1)):
        acc += target_weight(t, w, has_w, ignore, r)
    finish_partials(buf, last, acc, parts, ticket, out, 1.0, parts, False)


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


@jit_kernel(**_ROW_JIT)
def _ce_rows(x, R, C, K, G, kind, t, w, has_w, ignore, eps, reduce, loss_out, parts, ticket, out, den,
             with_grad, gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """Cross entropy per row: its loss into ``loss_out[r]`` (``reduce`` false), or summed: the blocks'
    partial sums into ``parts`` and their total over the denominator (``den_buf[0]`` if ``use_den_buf``
    else ``den``) into ``out[0]`` (``finish_partials``); with ``with_grad``, its gradient into ``gx``
    (which may be ``x``: every element is read before the same thread writes it, and ``x_t`` is taken
    by the thread that owns class t).

    ``t``: class indices per row (``kind == INDEX_TARGET``) or probabilities per element; ``w``: class
    weights (``has_w``), else any array of the data's dtype, only its type used.
    """
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
    mbuf = cuda.shared.array(BUF, x.dtype)
    cache = cuda.local.array(CACHE, x.dtype)
    tmp = cuda.local.array(1, x.dtype)
    ninf, zero, one = cast(tmp, -math.inf), cast(tmp, 0.0), cast(tmp, 1.0)
    keep, eps_c = cast(tmp, 1.0 - eps), cast(tmp, eps / C)
    lane, sub, start, step = row_slots(G)
    stride = G * K
    linear = kind != INDEX_TARGET or eps > 0.0
    index = kind == INDEX_TARGET
    acc = 0.0
    for first in range(start, R, step):
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
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, den_buf, use_den_buf)
