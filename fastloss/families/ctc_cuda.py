"""CUDA twin of the CTC family: ``ctc_loss`` with the semantics and recursion of
:mod:`fastloss.families.ctc` (torch 2.13), compiled from the same one-point functions.

One block per sequence, its threads over the positions ``s`` of the extended target (``2L + 1``), the
loop over frames inside with a barrier per frame. ``alpha`` (every frame, for the backward sweep; two
rows for the value alone), ``beta`` (two rows), the frame's posteriors and log-probabilities live in
float64 global scratch, one slice per block; every sum is float64.

Gradient of frame ``t``: every class gets ``exp(x) - gamma_start`` (threads over classes), then the
blank's posterior (a block sum over the even positions, in a fixed order) and each label's (the thread
of its first position adds the posteriors of the label's later positions, linked once per sequence)
complete their classes' entries: no atomics, results the same from run to run. A frame's
log-probabilities are copied to scratch before the barrier after which its gradient is written, so the
gradient may overwrite ``log_probs``.

Lengths and labels are checked and laid out on the host (:func:`fastloss._validation.ctc`, as torch
reads lengths on the host) and copied to the device: a few integers per sequence.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .. import _cuda_arrays as D
from .. import _cuda_reduce as _R
from .._cuda_arrays import incoming_at
from .ctc import INF, NEG_INF, compile_point_functions

_R.install(globals())  # group_sum, group_max, block_sum, block_max, WARP

def _sim_exp(x):
    """``math.exp`` with IEEE overflow: under the simulator it is Python's, which raises."""
    return math.exp(x) if x < 709.0 or x != x else INF


def _sim_log(x):
    """``math.log`` with IEEE results at 0 and below (-inf, NaN): Python's raises."""
    if x > 0.0 or x != x:
        return math.log(x)
    return NEG_INF if x == 0.0 else math.nan


#: The one-point functions of ctc.py as CUDA device functions (float64 arguments); under the simulator
#: with exp and log that keep the GPU's IEEE results where Python's raise.
P = compile_point_functions(cuda.jit(device=True), *((_sim_exp, _sim_log) if D.SIMULATOR else (math.exp, math.log)))
BUF = _R.BUF


@cuda.jit(device=True)
def label_at(labels, off, blank, s):
    """Class of position ``s`` of the extended target: the blank for even ``s``."""
    if s % 2 == 0:
        return blank
    return labels[off + s // 2]


@cuda.jit(device=True)
def may_skip(labels, off, s):
    """May a path jump from position ``s - 2`` to ``s`` (a label differing from the previous one)?"""
    return s % 2 == 1 and s >= 3 and labels[off + s // 2] != labels[off + s // 2 - 1]


@D.jit_kernel
def _ctc_blocks(lp, labels, offsets, il, tl, blank, zero_inf, want_grad, mean, reduce,
                alpha, beta, post, xrow, link, parts, loss_out, gs, gv, gstep, grad):
    """Sequence ``blockIdx.x``: its raw loss into ``parts`` (divided by its clamped target length for
    ``mean``) and, unless ``reduce``, into ``loss_out``; with ``want_grad``, its gradient frames."""
    buf = cuda.shared.array(BUF, float64)
    n = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    T = lp.shape[0]
    N = lp.shape[1]
    C = lp.shape[2]
    L = tl[n]
    S = 2 * L + 1
    Tn = il[n]
    off = offsets[n]
    if want_grad:
        # link[0, s]: the next position with position s's label (-1: none); link[1, s]: 1 at a label's
        # first position
        for s in range(tid, S, nth):
            nxt = -1
            first = 0
            if s % 2 == 1:
                first = 1
                c = labels[off + s // 2]
                j = s + 2
                while j < S and nxt < 0:
                    if labels[off + j // 2] == c:
                        nxt = j
                    j += 2
                j = s - 2
                while j >= 1 and first == 1:
                    if labels[off + j // 2] == c:
                        first = 0
                    j -= 2
            link[n, 0, s] = nxt
            link[n, 1, s] = first
    # ---- forward
    nll = 0.0
    if Tn == 0:
        nll = 0.0 if L == 0 else INF
    else:
        for s in range(tid, S, nth):
            v = NEG_INF
            if s < 2:
                v = float64(lp[0, n, label_at(labels, off, blank, s)])
            alpha[n, 0, s] = v
        cuda.syncthreads()
        for t in range(1, Tn):
            rp = t - 1 if want_grad else (t - 1) & 1
            rc = t if want_grad else t & 1
            for s in range(tid, S, nth):
                x2 = alpha[n, rp, s - 1] if s >= 1 else NEG_INF
                x3 = alpha[n, rp, s - 2] if may_skip(labels, off, s) else NEG_INF
                e = float64(lp[t, n, label_at(labels, off, blank, s)])
                alpha[n, rc, s] = P.lse3(alpha[n, rp, s], x2, x3) + e
            cuda.syncthreads()
        r = Tn - 1 if want_grad else (Tn - 1) & 1
        l2 = alpha[n, r, S - 2] if L > 0 else NEG_INF
        nll = -P.lse3(alpha[n, r, S - 1], l2, NEG_INF)
    dead = zero_inf and nll == INF
    loss = 0.0 if dead else nll
    if tid == 0:
        parts[n] = loss / max(L, 1) if mean else loss
        if not reduce:
            loss_out[n] = loss
    if not want_grad:
        return
    # ---- backward
    g = incoming_at(gs, gv, gstep, 0 if reduce else n)
    if mean:
        g = g / max(L, 1) / N
    t_end = 0 if dead else Tn
    for t in range(t_end - 1, -1, -1):
        rc = t & 1
        rn = (t + 1) & 1
        for c in range(tid, C, nth):
            xrow[n, c] = float64(lp[t, n, c])
        for s in range(tid, S, nth):
            e = float64(lp[t, n, label_at(labels, off, blank, s)])
            b = NEG_INF
            if t == Tn - 1:
                if s >= S - 2:
                    b = e
            else:
                y2 = beta[n, rn, s + 1] if s + 1 < S else NEG_INF
                y3 = beta[n, rn, s + 2] if s + 2 < S and may_skip(labels, off, s + 2) else NEG_INF
                b = P.lse3(beta[n, rn, s], y2, y3) + e
            beta[n, rc, s] = b
            post[n, s] = P.occupancy(alpha[n, t, s], b, nll, e)
        cuda.syncthreads()  # every read of frame t of log_probs is done: its gradient may overwrite it
        for c in range(tid, C, nth):
            x = xrow[n, c]
            grad[t, n, c] = P.grad_point(x, P.gamma_start(nll, x), g)
        part = 0.0
        for s in range(2 * tid, S, 2 * nth):
            part += post[n, s]
        total = block_sum(buf, part)  # its barriers also order the writes above before those below
        if tid == 0:
            x = xrow[n, blank]
            grad[t, n, blank] = P.grad_point(x, P.gamma_start(nll, x) + total, g)
        for s in range(tid, S, nth):
            if link[n, 1, s] == 1:
                total = post[n, s]
                j = link[n, 0, s]
                while j >= 0:
                    total += post[n, j]
                    j = link[n, 0, j]
                c = labels[off + s // 2]
                x = xrow[n, c]
                grad[t, n, c] = P.grad_point(x, P.gamma_start(nll, x) + total, g)
        cuda.syncthreads()
    for t in range(t_end, T):
        for c in range(tid, C, nth):
            grad[t, n, c] = 0.0


def _threads(width: int) -> int:
    """Threads per block: a power of two covering the longest extended target, whole warps, at most
    ``_R.MAX_THREADS``."""
    k = _R.WARP
    while k < width and k < _R.MAX_THREADS:
        k *= 2
    return k


@D.on_input_device
def ctc_loss(x, problem, blank, reduction, zero_infinity, grad):
    """The loss of device ``log_probs`` ``x`` and ``problem`` (:func:`fastloss._validation.ctc`); with
    ``grad``, ``(loss, (d log_probs,))``."""
    dtype = np.dtype(x.dtype)
    T, C = tuple(x.shape)[0], tuple(x.shape)[-1]
    n = problem.input_lengths.size
    il, tl = problem.input_lengths, problem.target_lengths
    reduce = reduction != "none"
    want = grad is not None
    out = grad.out_for(0, x) if want else None
    if n == 0:  # nothing to launch: an empty batch
        value = _empty_batch_value(x, dtype, reduction)
        return value if grad is None else (value, (out,))
    lp = D.reshape(D.contiguous(x), (T, n, C))
    width = int(2 * tl.max() + 1)
    rows = max(1, int(il.max())) if want else 2
    labels = _to_device(problem.labels if problem.labels.size else np.zeros(1, np.int64), x)
    offsets, il_d, tl_d = _to_device(problem.offsets, x), _to_device(il, x), _to_device(tl, x)
    alpha = D.empty((n, rows, width), np.float64, x)
    beta = D.empty((n, 2, width) if want else (1, 1, 1), np.float64, x)
    post = D.empty((n, width) if want else (1, 1), np.float64, x)
    xrow = D.empty((n, C) if want else (1, 1), np.float64, x)
    link = D.empty((n, 2, width) if want else (1, 1, 1), np.int64, x)
    parts = D.empty((n,), np.float64, x)
    loss = D.empty((n,), dtype, x)
    if want:
        g3 = D.reshape(out, (T, n, C))
        inc = grad.incoming(() if reduce or not problem.batched else (n,), lp)
    else:
        g3, inc = lp, D.Incoming(1.0, lp, -1)  # stand-ins of the right types, never read
    D.launch(_ctc_blocks, n, x, lp, labels, offsets, il_d, tl_d, int(blank), bool(zero_infinity), want,
             reduction == "mean", reduce, alpha, beta, post, xrow, link, parts, loss, *inc.args(), g3,
             threads=_threads(width))
    if reduce:
        result = D.result_buffer(x, dtype)
        D.finish_sum(parts, result, den=float(n) if reduction == "mean" else 1.0)
        value = D.scalar_view(result)
    else:
        value = loss if problem.batched else D.scalar_view(loss)
    return value if grad is None else (value, (out,))


def _empty_batch_value(like, dtype, reduction):
    """The loss of no sequences: ``(0,)`` for ``'none'``, 0 for ``'sum'``, NaN for ``'mean'``."""
    if reduction == "none":
        return D.empty((0,), dtype, like)
    return D.scalar_view(_to_device(np.array([0.0 if reduction == "sum" else math.nan], dtype=dtype), like))


def _to_device(host, like):
    """A small host array copied to ``like``'s library and device."""
    host = np.ascontiguousarray(host)
    if D.is_cupy(like):
        import cupy

        return cupy.asarray(host)
    return cuda.to_device(host)
