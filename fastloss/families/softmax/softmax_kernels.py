"""The ``log_softmax`` / ``softmax`` kernels (value and vector-Jacobian product) and the ``nll_loss``
kernel of the softmax family (CPU), in the layouts of :mod:`fastloss.families.softmax`."""
from __future__ import annotations

import numpy as np

from ..._math import log
from .rows import (_SHORT_ROWS, _chunk, _exp_same, _loop, _next_row, _row_dot, _row_exp_into, _row_max,
                   _row_scale, _row_sum, _row_sum_exp, _rows_to_tile, _short_block, _tile_blocks, _tile_exp,
                   _tile_max, _tile_sum_exp, _tile_to_rows)


# ================================================================================================
# log_softmax / softmax and their vector-Jacobian products
# ================================================================================================
@_loop
def _softmax_row(xs, m, nxt, ys, logarithm, gs, gxs, with_grad):
    """``ys = log_softmax(xs)`` (``logarithm``) or ``softmax(xs)`` given ``m = max(xs)``; returns the
    next row's maximum. ``with_grad``: also the vector-Jacobian product ``gxs = g - exp(y) * sum(g)``
    (log) or ``y * (g - sum(g * y))``, from ``ys`` and ``gs`` alone, so ``gxs`` may be ``xs``."""
    if logarithm:
        s, m_next = _row_sum_exp(xs, m, nxt)
        lse = ys.dtype.type(m + log(s))
        for c in range(xs.size):
            ys[c] = xs[c] - lse
    else:
        s, m_next = _row_exp_into(xs, ys, m, nxt)
        _row_scale(ys, 1.0 / s)
    if with_grad:
        if logarithm:
            sg = gs.dtype.type(_row_sum(gs))
            for c in range(ys.size):
                gxs[c] = gs[c] - _exp_same(ys[c]) * sg
        else:
            sgy = ys.dtype.type(_row_dot(gs, ys))
            for c in range(ys.size):
                gxs[c] = ys[c] * (gs[c] - sgy)
    return m_next


@_loop
def _softmax_rows(k, n_chunks, x, y, logarithm, g, gx, with_grad):
    """:func:`_softmax_row` for chunk ``k`` of ``n_chunks`` runs of rows of ``x (R, C)``; ``g``, ``gx``
    ``(R, C)`` when ``with_grad``."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    m = _row_max(x[lo]) if lo < hi else x.dtype.type(0)
    for i in range(lo, hi):
        gs = g[i] if with_grad else x[i, :0]
        gxs = gx[i] if with_grad else y[i, :0]
        m = _softmax_row(x[i], m, _next_row(x, i, hi), y[i], logarithm, gs, gxs, with_grad)


@_loop
def _softmax_tile(x, y, logarithm, g, gx, with_grad, n, lo, hi):
    """:func:`_softmax_row` along axis 1 for the positions ``lo:hi`` of batch ``n`` of ``(A, C, B)``."""
    m = _tile_max(x, n, lo, hi)
    if logarithm:
        s = _tile_sum_exp(x, n, lo, hi, m)
        lse = np.empty(hi - lo, dtype=y.dtype)
        for b in range(lse.size):
            lse[b] = m[b] + log(s[b])
        for c in range(x.shape[1]):
            xs = x[n, c, lo:hi]
            ys = y[n, c, lo:hi]
            for b in range(xs.size):
                ys[b] = xs[b] - lse[b]
    else:
        s = _tile_exp(x, y, n, lo, hi, m, False)
        r = np.empty(hi - lo, dtype=y.dtype)
        for b in range(r.size):
            r[b] = 1.0 / s[b]
        for c in range(x.shape[1]):
            ys = y[n, c, lo:hi]
            for b in range(ys.size):
                ys[b] *= r[b]
    if with_grad:
        _softmax_vjp_tile(y, logarithm, g, gx, n, lo, hi)


@_loop
def _softmax_vjp_tile(y, logarithm, g, gx, n, lo, hi):
    """The vector-Jacobian product of :func:`_softmax_tile` from ``y`` and ``g`` alone."""
    acc = np.zeros(hi - lo)
    for c in range(y.shape[1]):
        gs = g[n, c, lo:hi]
        ys = y[n, c, lo:hi]
        if logarithm:
            for b in range(gs.size):
                acc[b] += np.float64(gs[b])
        else:
            for b in range(gs.size):
                acc[b] += np.float64(gs[b]) * np.float64(ys[b])
    sums = acc.astype(y.dtype)
    for c in range(y.shape[1]):
        gs = g[n, c, lo:hi]
        ys = y[n, c, lo:hi]
        gxs = gx[n, c, lo:hi]
        if logarithm:
            for b in range(gs.size):
                gxs[b] = gs[b] - _exp_same(ys[b]) * sums[b]
        else:
            for b in range(gs.size):
                gxs[b] = ys[b] * (gs[b] - sums[b])


@_loop
def _softmax_channels(k, n_chunks, x, y, logarithm, g, gx, with_grad):
    """:func:`_softmax_tile` over chunk ``k`` of ``n_chunks`` of the tiles of ``x (A, C, B)``."""
    n_batch, n_cls, n_pos = x.shape
    blk, n_blk = _tile_blocks(n_cls, n_pos)
    first, last = _chunk(k, n_chunks, n_batch * n_blk)
    for item in range(first, last):
        n = item // n_blk
        lo = (item % n_blk) * blk
        _softmax_tile(x, y, logarithm, g, gx, with_grad, n, lo, min(lo + blk, n_pos))

# ================================================================================================
# Short rows (few classes): blocks of rows transposed into (1, C, rows) tiles (see .rows)
# ================================================================================================
@_loop
def _softmax_short(k, n_chunks, x, y, logarithm, g, gx, with_grad):
    """:func:`_softmax_rows` for rows of few classes."""
    n_rows = x.shape[0]
    first, last = _chunk(k, n_chunks, (n_rows + _SHORT_ROWS - 1) // _SHORT_ROWS)
    for blk in range(first, last):
        lo, hi = _short_block(blk, n_rows)
        tile = _rows_to_tile(x, lo, hi)
        ys = np.empty_like(tile)
        # the VJP reads only y and g: its result may overwrite the private logits tile
        gs = _rows_to_tile(g, lo, hi) if with_grad else tile
        _softmax_tile(tile, ys, logarithm, gs, tile, with_grad, 0, 0, hi - lo)
        if with_grad:
            _tile_to_rows(tile, gx, lo)
        _tile_to_rows(ys, y, lo)

# ================================================================================================
# nll_loss: one fused gather
# ================================================================================================
@_loop
def _nll_chunk(k, n_chunks, x, t, w, ignore_index, coef, out, with_grad, loss):
    """``nll_loss`` of chunk ``k`` of ``n_chunks`` of the batch of ``x (N, C, B)`` with class indices
    ``t (N, B)``: ``loss = -w_t x_t`` (0 where ignored; ``w`` empty means weights of 1), and with
    ``with_grad`` the gradient ``out`` (zero but ``-w_t coef`` at each target); the losses' sum.

    An ignored position adds 0 even where its logit is NaN; a zero weight times an infinite
    log-probability is NaN, as in PyTorch."""
    lo, hi = _chunk(k, n_chunks, x.shape[0])
    total = 0.0
    for i in range(lo, hi):
        for b in range(x.shape[2]):
            ti = t[i, b]
            li = 0.0
            if ti != ignore_index:
                li = -(1.0 if w.size == 0 else np.float64(w[ti])) * np.float64(x[i, ti, b])
                total += li
            loss[i, b] = li
        if with_grad:  # row i of x is read: out may be x itself (in place)
            row = out[i].reshape(-1)
            for j in range(row.size):
                row[j] = 0
            for b in range(x.shape[2]):
                ti = t[i, b]
                if ti != ignore_index:
                    out[i, ti, b] = -(1.0 if w.size == 0 else np.float64(w[ti])) * coef[i, b]
    return total
