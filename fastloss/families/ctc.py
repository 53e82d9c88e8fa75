"""The CTC family on the CPU: ``ctc_loss`` (PyTorch 2.13's ``torch.nn.functional.ctc_loss``).

Recursion. Sequence ``n`` has ``T_n`` frames and a target of ``L`` labels; its extended target ``y'``
has ``2L + 1`` positions, ``y'_s`` the blank for even ``s`` and label ``s // 2`` for odd ``s``.
With ``e_t(s) = log_probs[t, n, y'_s]`` (torch's conventions, so that edge cases agree with it)::

    alpha_0(0) = e_0(0),  alpha_0(1) = e_0(1),  alpha_0(s > 1) = -inf
    alpha_t(s) = logsumexp(alpha_{t-1}(s), alpha_{t-1}(s-1), [alpha_{t-1}(s-2) if skip(s)]) + e_t(s)
    beta_{T_n-1}(2L) = e(2L),  beta_{T_n-1}(2L-1) = e(2L-1),  the rest -inf
    beta_t(s)  = logsumexp(beta_{t+1}(s), beta_{t+1}(s+1), [beta_{t+1}(s+2) if skip(s+2)]) + e_t(s)
    loss = -logsumexp(alpha_{T_n-1}(2L), alpha_{T_n-1}(2L-1))

``skip(s)``: ``s`` odd, ``s >= 3`` and ``y'_s != y'_{s-2}`` (a repeated label needs a blank between).
Both ``alpha`` and ``beta`` include frame ``t``'s emission, so the posterior probability that frame
``t`` sits at position ``s`` is ``exp(alpha_t(s) + beta_t(s) + loss - e_t(s))``; ``gamma[t, c]``
adds it over the positions of class ``c``. The gradient torch returns (its autograd formula assumes
``log_probs`` came out of a log-softmax) is ``(exp(log_probs[t, n, c]) - gamma[t, c]) * g_n`` for
``t < T_n``, 0 beyond. torch writes ``gamma`` as ``exp(log(sum) + loss - log_probs)``, which is NaN
wherever ``log_probs`` is ``-inf`` or the loss is ``inf``; so is this kernel's (``acc`` below).
``zero_infinity`` zeroes an infinite loss and its whole gradient.

Kernel. Each sequence is one serial pass (``nogil``), chunks of sequences are shared among threads by
:func:`fastloss._jit.run_chunks` (DEVELOPING.md, "Threads"); chunks depend on the work only, so results
do not depend on the thread count. The loop over ``s`` of each frame is branch-free (selects, the
vectorisable ``exp``/``log`` of :mod:`fastloss._math`) and vectorises; ``alpha`` of every frame is kept
for the backward sweep (``T_n x (2L + 3)`` float64 per sequence; two rows for the value alone), ``beta``
two rows. Every sum is float64 whatever the data's dtype. The backward sweep reads frame ``t`` of
``log_probs`` before it writes frame ``t`` of the gradient, so the gradient may overwrite the input.

Layout: kernel, driver, then REFERENCE / CASES / BENCH / TORCH.
"""
from __future__ import annotations

import math
import types

import numpy as np

from .. import _jit
from .._dispatch import scalar_result
from .._math import exp, log
from .._registry import Case

NEG_INF = -math.inf
INF = math.inf

#: Work (frames x extended-target positions, plus frames x classes for the gradient) below which a
#: call runs on the calling thread alone, and the least work of each further chunk: one unit costs
#: a few ns (three exps and a log), so 2**15 units are 50-150 us, several times a chunk's handover.
MIN_CHUNK = 1 << 15
#: At most this many chunks (fixed: results never depend on the thread count).
MAX_CHUNKS = 16


# ==================================================================================================
# One-point functions (plain Python: compiled for the CPU below and for CUDA in ctc_cuda.py, with
# ``exp``/``log`` bound to each target's; see compile_point_functions)
# ==================================================================================================
def lse3(x1, x2, x3):
    """``log(exp(x1) + exp(x2) + exp(x3))``, -inf when all three are (torch's order of comparisons:
    NaN in ``x1`` wins, NaN elsewhere propagates through its exp)."""
    m = x1
    m = x2 if x2 > m else m
    m = x3 if x3 > m else m
    m = 0.0 if m == NEG_INF else m
    return log(exp(x1 - m) + exp(x2 - m) + exp(x3 - m)) + m


def occupancy(a, b, nll, e):
    """Posterior probability of one (frame, position) from its alpha, beta (both with the frame's
    emission ``e``) and the sequence's loss ``nll``."""
    return exp(a + b + nll - e)


def gamma_start(nll, x):
    """What torch's ``exp(-inf + nll - x)`` adds to a class's posterior: 0, or NaN where ``x`` is -inf
    or the loss is inf or NaN (then torch's gradient is NaN, also for classes no path emits)."""
    return 0.0 if nll - x < INF else math.nan


def grad_point(x, gamma, g):
    """torch's gradient of one log-probability ``x`` whose class has posterior ``gamma``."""
    return (exp(x) - gamma) * g


POINT_FUNCTIONS = (lse3, occupancy, gamma_start, grad_point)


def compile_point_functions(compile_one, exp_fn, log_fn):
    """The functions of ``POINT_FUNCTIONS`` compiled by ``compile_one`` with ``exp``/``log`` bound to
    ``exp_fn``/``log_fn``, as a module (kernels call ``P.lse3(...)``)."""
    namespace = {"math": math, "NEG_INF": NEG_INF, "INF": INF, "exp": exp_fn, "log": log_fn}
    compiled = types.ModuleType(f"{__name__}.points")
    for fn in POINT_FUNCTIONS:
        rebound = types.FunctionType(fn.__code__, namespace, fn.__name__)
        rebound.__qualname__, rebound.__module__, rebound.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        namespace[fn.__name__] = compile_one(rebound)
        setattr(compiled, fn.__name__, namespace[fn.__name__])
    return compiled


#: The one-point functions for the CPU kernel: fastloss._math's vectorisable exp and log.
P = compile_point_functions(_jit.device, exp, log)


# ==================================================================================================
# Kernel
# ==================================================================================================
@_jit.device
def _alpha_step(prev, cur, e, skip, S):
    """alpha of one frame (row ``cur``, position s at column s + 2) from the previous (``prev``)."""
    cur[0] = NEG_INF
    cur[1] = NEG_INF
    for s in range(S):
        x3 = prev[s] if skip[s] else NEG_INF
        cur[s + 2] = P.lse3(prev[s + 2], prev[s + 1], x3) + e[s]


@_jit.device
def _beta_step(nxt, cur, e, skip, S):
    """beta of one frame (row ``cur``, position s at column s) from the next frame's (``nxt``)."""
    for s in range(S):
        y3 = nxt[s + 2] if skip[s + 2] else NEG_INF
        cur[s] = P.lse3(nxt[s], nxt[s + 1], y3) + e[s]
    cur[S] = NEG_INF
    cur[S + 1] = NEG_INF


@_jit.kernel(parallel=False)
def _sequences(k, nchunks, lp, labels, offsets, il, tl, blank, zero_inf, coef, want_grad, grad, losses):
    """Losses (and gradients) of sequences ``[k N / nchunks, (k + 1) N / nchunks)``.

    ``lp``: (T, N, C) C-contiguous log-probabilities; ``labels``/``offsets``/``il``/``tl``: see
    :class:`fastloss._validation.CtcProblem`; ``coef[n]``: the incoming gradient of sequence n's raw
    loss; ``grad``: (T, N, C) (unused without ``want_grad``); ``losses[n]``: the raw losses (float64,
    after ``zero_infinity``).
    """
    T, N, C = lp.shape
    lo = k * N // nchunks
    hi = (k + 1) * N // nchunks
    t_max = 1
    width = 3
    for n in range(lo, hi):
        t_max = max(t_max, il[n])
        width = max(width, 2 * tl[n] + 3)
    # alpha rows: position s at column s + 2, columns 0 and 1 hold -inf (alpha_{t-1}(-1), (-2));
    # beta rows: position s at column s, columns 2L + 1 and 2L + 2 hold -inf
    # The recursions run on pairs of separate rows (a select on `skip` between two rows of one 2-D
    # array kept LLVM from vectorising the loop: 3-4x slower); alpha's rows are copied out for the
    # backward sweep.
    alpha = np.empty((t_max if want_grad else 1, width))
    ra, rb = np.empty(width), np.empty(width)
    ba, bb = np.empty(width), np.empty(width)
    e = np.empty(width)
    ext = np.zeros(width, dtype=np.int64)
    skip = np.zeros(width, dtype=np.bool_)
    acc = np.empty(C)
    for n in range(lo, hi):
        L = tl[n]
        S = 2 * L + 1
        Tn = il[n]
        off = offsets[n]
        for s in range(S):
            ext[s] = blank if s % 2 == 0 else labels[off + s // 2]
        for s in range(width):
            skip[s] = s < S and s % 2 == 1 and s >= 3 and ext[s] != ext[s - 2]
        # ---- forward
        if Tn == 0:
            nll = 0.0 if L == 0 else INF
        else:
            for j in range(S + 2):
                ra[j] = NEG_INF
            ra[2] = lp[0, n, blank]
            if L > 0:
                ra[3] = lp[0, n, ext[1]]
            if want_grad:
                a = alpha[0]
                for j in range(S + 2):
                    a[j] = ra[j]
            for t in range(1, Tn):
                row = lp[t, n]
                for s in range(S):
                    e[s] = row[ext[s]]
                if t & 1:  # frame t's row: rb for odd t, ra for even t
                    _alpha_step(ra, rb, e, skip, S)
                else:
                    _alpha_step(rb, ra, e, skip, S)
                if want_grad:
                    a = alpha[t]
                    cur = rb if t & 1 else ra
                    for j in range(S + 2):
                        a[j] = cur[j]
            last = rb if (Tn - 1) & 1 else ra
            l2 = last[S] if L > 0 else NEG_INF
            nll = -P.lse3(last[S + 1], l2, NEG_INF)
        dead = zero_inf and nll == INF
        losses[n] = 0.0 if dead else nll
        if not want_grad:
            continue
        # ---- backward: beta, then gamma and the gradient of frame t
        gn = coef[n]
        t_end = 0 if dead else Tn
        for t in range(t_end - 1, -1, -1):
            row = lp[t, n]
            for s in range(S):
                e[s] = row[ext[s]]
            cur = bb if t & 1 else ba  # frame t's row: bb for odd t, ba for even t
            if t == Tn - 1:
                for s in range(S + 2):
                    cur[s] = NEG_INF
                cur[S - 1] = e[S - 1]
                if L > 0:
                    cur[S - 2] = e[S - 2]
            elif t & 1:
                _beta_step(ba, bb, e, skip, S)
            else:
                _beta_step(bb, ba, e, skip, S)
            a = alpha[t]
            for c in range(C):
                acc[c] = P.gamma_start(nll, row[c])
            for s in range(S):  # vectorises; the scatter below cannot
                e[s] = P.occupancy(a[s + 2], cur[s], nll, e[s])
            for s in range(S):
                acc[ext[s]] += e[s]
            out = grad[t, n]
            for c in range(C):
                out[c] = P.grad_point(row[c], acc[c], gn)
        for t in range(t_end, T):
            out = grad[t, n]
            for c in range(C):
                out[c] = 0.0


# ==================================================================================================
# Driver
# ==================================================================================================
def _incoming(grad, problem, reduction, n):
    """float64 ``(N,)``: the gradient flowing into each sequence's raw loss."""
    if reduction == "none":
        shape = (n,) if problem.batched else ()
        return np.ascontiguousarray(np.broadcast_to(grad.array(shape, np.float64), shape)).reshape(n)
    g = grad.scalar()
    if reduction == "sum":
        return np.full(n, g)
    return g / np.maximum(problem.target_lengths, 1).astype(np.float64) / max(n, 1)


def reduce(losses, problem, reduction, dtype):
    """The loss in ``reduction`` from the float64 raw losses."""
    if reduction == "none":
        return losses.astype(dtype).reshape(losses.shape if problem.batched else ())
    if reduction == "sum":
        return scalar_result(math.fsum(losses), dtype)
    n = losses.size
    per_label = losses / np.maximum(problem.target_lengths, 1)
    return scalar_result(math.fsum(per_label) / n if n else math.nan, dtype)


def ctc_loss(x, problem, blank, reduction, zero_infinity, grad):
    """The loss of ``log_probs`` ``x`` and ``problem`` (:func:`fastloss._validation.ctc`); with ``grad``,
    ``(loss, (d log_probs,))``."""
    dtype = x.dtype
    T, C = x.shape[0], x.shape[-1]
    n = problem.input_lengths.size
    lp = np.ascontiguousarray(x).reshape(T, n, C)
    if lp.flags.writeable:  # one kernel type whatever the caller's flags
        lp = lp.view()
        lp.flags.writeable = False
    losses = np.empty(n)
    il, tl = problem.input_lengths, problem.target_lengths
    work = int(np.sum(il * (2 * tl + 1)))
    if grad is not None:
        out = grad.out_for(0, x)
        coef = _incoming(grad, problem, reduction, n)
        g3 = out.reshape(T, n, C)
        work += T * n * C
    else:
        out = None
        coef = np.zeros(n)
        g3 = np.empty((0, 0, 0), dtype=dtype)
    args = (lp, problem.labels, problem.offsets, il, tl, int(blank), bool(zero_infinity), coef, grad is not None,
            g3, losses)
    chunks = max(1, min(n, MAX_CHUNKS, work // MIN_CHUNK))
    if chunks == 1:
        _sequences(0, 1, *args)
    else:
        _jit.run_chunks(_sequences, chunks, *args)
    value = reduce(losses, problem, reduction, dtype)
    return value if grad is None else (value, (out,))


# ==================================================================================================
# REFERENCE / CASES / BENCH / TORCH
# ==================================================================================================
def _logsumexp(values):
    """float64 log-sum-exp of a sequence of numbers; -inf for none or all -inf."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or np.max(a) == -np.inf:
        return -np.inf
    m = np.max(a)
    return float(np.log(np.sum(np.exp(a - m))) + m)


def _sequence_ref(lp, y, blank):
    """``(loss, gamma)`` of one sequence: ``lp`` (T_n, C) float64, ``y`` its labels. ``gamma[t, c]``
    is the posterior probability that frame t emits class c (textbook alpha-beta, beta *without*
    frame t's emission)."""
    Tn, C = lp.shape
    ext = np.full(2 * len(y) + 1, blank)
    ext[1::2] = y
    S = ext.size
    if Tn == 0:
        return (0.0 if len(y) == 0 else np.inf), np.zeros((0, C))

    def allowed(s, step):  # may a path step from position s - step to s?
        return step < 2 or (ext[s] != blank and s >= 2 and ext[s] != ext[s - 2])

    alpha = np.full((Tn, S), -np.inf)
    alpha[0, 0] = lp[0, ext[0]]
    if S > 1:
        alpha[0, 1] = lp[0, ext[1]]
    for t in range(1, Tn):
        for s in range(S):
            terms = [alpha[t - 1, s - d] for d in (0, 1, 2) if s - d >= 0 and allowed(s, d)]
            alpha[t, s] = _logsumexp(terms) + lp[t, ext[s]]
    beta = np.full((Tn, S), -np.inf)  # log P(frames after t | position s at t)
    beta[Tn - 1, S - 1] = 0.0
    if S > 1:
        beta[Tn - 1, S - 2] = 0.0
    for t in range(Tn - 2, -1, -1):
        for s in range(S):
            terms = [beta[t + 1, s + d] + lp[t + 1, ext[s + d]] for d in (0, 1, 2)
                     if s + d < S and allowed(s + d, d)]
            beta[t, s] = _logsumexp(terms)
    log_z = _logsumexp(alpha[Tn - 1, S - 2:]) if S > 1 else alpha[Tn - 1, 0]
    gamma = np.zeros((Tn, C))
    if np.isfinite(log_z):
        post = np.exp(alpha + beta - log_z)
        for s in range(S):
            gamma[:, ext[s]] += post[:, s]
    return -log_z, gamma


def ctc_loss_ref(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                 zero_infinity=False, grad_output=None):
    """float64 reference of ctc_loss and of torch's gradient w.r.t. log_probs."""
    lp = np.asarray(log_probs, dtype=np.float64)
    batched = lp.ndim == 3
    if not batched:
        lp = lp[:, None, :]
    T, N, C = lp.shape
    il = np.asarray(input_lengths, dtype=np.int64).reshape(N)
    tl = np.asarray(target_lengths, dtype=np.int64).reshape(N)
    t = np.asarray(targets, dtype=np.int64)
    if t.ndim == 2:
        ys = [t[n, :tl[n]] for n in range(N)]
    else:
        ends = np.cumsum(tl)
        ys = [t[ends[n] - tl[n]:ends[n]] for n in range(N)]
    losses = np.zeros(N)
    gammas = []
    for n in range(N):
        losses[n], gamma = _sequence_ref(lp[:il[n], n], ys[n], blank)
        gammas.append(gamma)
    dead = zero_infinity & np.isinf(losses)
    losses = np.where(dead, 0.0, losses)
    if reduction == "none":
        value = losses if batched else losses.reshape(())
    elif reduction == "sum":
        value = float(np.sum(losses))
    else:
        value = float(np.mean(losses / np.maximum(tl, 1))) if N else float("nan")
    g = np.ones(()) if grad_output is None else np.asarray(grad_output, dtype=np.float64)
    g = np.broadcast_to(g, (N,) if reduction == "none" and batched else ()).reshape(-1)
    coef = np.broadcast_to(g, (N,)).copy()
    if reduction == "mean":
        coef = coef / np.maximum(tl, 1) / N
    grad = np.zeros_like(lp)
    for n in range(N):
        if dead[n]:
            continue
        frames = slice(0, il[n])
        # torch's gradient is NaN on the frames of an infinite loss (exp(-inf + inf))
        post = gammas[n] if np.isfinite(losses[n]) else np.nan
        grad[frames, n] = (np.exp(lp[frames, n]) - post) * coef[n]
    return value, (grad if batched else grad[:, 0],)


REFERENCE = {"ctc_loss": ctc_loss_ref}


def _log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _log_probs(rng, shape, dtype):
    """Log-probabilities (a log-softmax over the last axis), as a network's output would be."""
    return _log_softmax(2.0 * rng.standard_normal(shape)).astype(dtype)


def _padded(rng, tl, S, C, blank, pad=0):
    """(N, S) targets: random labels (not ``blank``) within each length, ``pad`` beyond."""
    labels = [c for c in range(C) if c != blank]
    t = np.full((len(tl), S), pad, dtype=np.int64)
    for n, length in enumerate(tl):
        t[n, :length] = rng.choice(labels, size=length)
    return t


def ctc_cases(rng, dtype):
    """Cases never have T == N, nor 1-D targets of length T (the Dask tests chunk every array whose
    first axis is as long as the first argument's)."""
    cases = []
    # padded, random lengths
    T, N, C, S = 12, 5, 6, 4
    tl = rng.integers(1, S + 1, N)
    il = rng.integers(2 * S + 1, T + 1, N)
    x = _log_probs(rng, (T, N, C), dtype)
    t = _padded(rng, tl, S, C, 0)
    cases.append(Case((x, t, il, tl), {}, "padded-mean"))
    cases.append(Case((x, t, il, tl), {"reduction": "sum"}, "padded-sum"))
    cases.append(Case((x, _padded(rng, tl, S, C, 0, pad=-1), il, tl), {"reduction": "none"}, "padded-none"))
    # concatenated targets, lengths as int32 arrays
    T, N, C = 10, 3, 5
    tl = np.array([3, 0, 2], dtype=np.int32)
    il = np.array([10, 4, 7], dtype=np.int32)
    t = rng.integers(1, C, int(tl.sum())).astype(np.int32)
    cases.append(Case((_log_probs(rng, (T, N, C), dtype), t, il, tl), {"reduction": "none"}, "concatenated"))
    cases.append(Case((_log_probs(rng, (T, N, C), dtype), t, il, tl), {}, "concatenated-mean"))
    # repeated labels: [1, 1, 2, 2, 2] needs 8 frames; 7 are too few (inf)
    T, C = 9, 4
    x = _log_probs(rng, (T, 3, C), dtype)
    t = np.array([[1, 1, 2, 2, 2], [3, 3, 3, 0, 0], [1, 1, 2, 2, 2]])
    il, tl = np.array([8, 5, 7]), np.array([5, 3, 5])
    cases.append(Case((x, t, il, tl), {"reduction": "none"}, "repeats-infeasible"))
    cases.append(Case((x, t, il, tl), {"reduction": "none", "zero_infinity": True}, "zero-infinity-none"))
    cases.append(Case((x, t, il, tl), {"zero_infinity": True}, "zero-infinity-mean"))
    cases.append(Case((x, t, il, tl), {"reduction": "sum"}, "infeasible-sum"))
    # blank last, empty targets, an empty input, lengths as lists
    T, N, C = 7, 4, 5
    x = _log_probs(rng, (T, N, C), dtype)
    t = np.array([[0, 1, 2], [3, 3, 3], [2, 2, 2], [1, 0, 1]])
    cases.append(Case((x, t, [7, 6, 0, 3], [3, 0, 0, 2]), {"blank": 4, "reduction": "none"}, "blank-last"))
    cases.append(Case((x, t, [7, 6, 0, 0], [3, 1, 0, 1]), {"blank": 4, "zero_infinity": True}, "empty-inputs"))
    # unbatched: int, 0-d array and one-element lengths
    T, C = 8, 5
    x = _log_probs(rng, (T, C), dtype)
    t = np.array([2, 3, 3])
    cases.append(Case((x, t, 8, 3), {"reduction": "none"}, "unbatched-int"))
    cases.append(Case((x, t, np.array(6), np.array(3)), {}, "unbatched-0d"))
    cases.append(Case((x, t, [5], [3]), {"reduction": "sum", "blank": 1}, "unbatched-list"))
    return cases


CASES = {"ctc_loss": ctc_cases}


def ctc_bench(rng, dtype, size, T=200, C=50, S=40):
    """``(T, N, C)`` log-probabilities of about ``size`` elements (at most 256 sequences: the float64
    reference loops in Python), targets of ``S/2..S`` labels padded to S, inputs of ``0.8 T..T`` frames."""
    n = max(1, min(256, size // (T * C)))
    x = _log_probs(rng, (T, n, C), np.float64).astype(dtype)
    tl = rng.integers(S // 2, S + 1, n)
    il = rng.integers(int(0.8 * T), T + 1, n)
    return Case((x, _padded(rng, tl, S, C, 0), il, tl), {}, f"{T}x{n}x{C}")


BENCH = {"ctc_loss": ctc_bench}


def _torch_ctc(torch, log_probs, targets, input_lengths, target_lengths, *args, **kwargs):
    """torch's ctc_loss; its lengths are tensors or sequences, never plain ints (the unbatched cases')."""

    def lengths(v):
        return v if torch.is_tensor(v) or isinstance(v, (list, tuple)) else torch.as_tensor(np.asarray(v, np.int64))

    return torch.nn.functional.ctc_loss(log_probs, targets, lengths(input_lengths), lengths(target_lengths),
                                        *args, **kwargs)


TORCH = {"ctc_loss": _torch_ctc}


def _renormalised(args, kwargs):
    """``ctc_loss``'s arguments with log_probs passed through a log-softmax over the classes."""
    return (_log_softmax(np.asarray(args[0], dtype=np.float64)),) + tuple(args[1:]), kwargs


#: What the gradient of each loss here is the derivative of, for finite differences: torch's CTC
#: gradient is that of ``ctc_loss(log_softmax(log_probs))`` at normalised log_probs.
GRADIENT_OF = {"ctc_loss": _renormalised}
