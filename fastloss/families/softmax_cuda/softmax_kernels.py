"""The CUDA kernels of ``log_softmax`` and ``softmax`` (a row group per row) and of ``nll_loss`` (a
thread per row for the value, a warp per line with the gradient)."""
from __future__ import annotations

import math

from numba import cuda, float64, int64, uint32, uint64

from ... import _cuda_rows as _rows
from ..._cuda_arrays import jit_kernel
from ..._cuda_arrays import incoming_at
from .rows import _ROW_JIT, BUF, CACHE, cached_exp_sum, load_row, row_base, row_scale, tail_pass, tail_share, \
    target_weight

_rows.install(globals())  # group_sum, block_sum, row_slots, row_sum, row_max, finish_partials, cast, WARP


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


@jit_kernel(**_ROW_JIT)
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
    lane, sub, start, step = row_slots(G)
    stride = G * K
    for first in range(start, R, step):
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


@jit_kernel
def _nll_rows(x, C, K, t, w, has_w, ignore, reduce, loss_out, parts, ticket, out, den, den_buf, use_den_buf):
    """NLL value, one thread per row: ``-w[t_r] x[r, t_r]`` (0 where ignored); one read per row. Summed
    (``reduce``): the total over the denominator into ``out[0]`` (see ``_ce_rows``)."""
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
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
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, den_buf, use_den_buf)


@jit_kernel
def _nll_lines(x, L, J, C, K, t, w, has_w, ignore, reduce, loss_out, parts, ticket, out, den,
               gs, gv, gstep, inv_den, den_buf, use_den_buf, gx):
    """NLL value and gradient over *lines* of ``J`` contiguous elements (coalesced writes of the whole,
    mostly zero, gradient): ``gx = -w[t] scale`` at the target class, 0 elsewhere; the element at the
    target adds the row's loss.

    ``K == 1``: line ``l`` is row ``l`` (``J = C``, element ``j`` is class ``j``). ``K > 1``: line
    ``l = o C + c`` is class ``c`` of rows ``o K .. o K + K - 1`` (``J = K``); one division per line.
    Each line is walked by a warp (a grid-stride loop over lines, lanes over its elements). Summed
    (``reduce``): the total over the denominator into ``out[0]`` (see ``_ce_rows``).
    """
    buf = cuda.shared.array(BUF, float64)
    last = cuda.shared.array(1, uint32)
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
    if reduce:
        finish_partials(buf, last, acc, parts, ticket, out, den, den_buf, use_den_buf)
