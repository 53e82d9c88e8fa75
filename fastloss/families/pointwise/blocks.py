"""The pointwise family's per-loss CPU kernels: each loss's block loop (values and derivatives of a block
of elements from its one-point functions), its chunk kernel (the block loop inlined into
:func:`.loops._chunk`) and, for the regression losses, its direct-path kernel.
"""
from __future__ import annotations

import numpy as np

from ..._jit import device, kernel
from ..._math import exp, expf, log, log1p, log1pf, logf
from .loops import _chunk, _chunk32, _direct
from .points import compile_point_functions, point_constants

#: The one-point functions compiled for the CPU (inlined into the loops below), in float64.
P = compile_point_functions(device, {"exp": exp, "log": log, "log1p": log1p}, point_constants(np.float64))
#: The same, in float32 arithmetic: BCE with logits, soft margin and the focal loss of float32 data,
#: whose exp and log1p in float64 made those losses compute-bound.
P32 = compile_point_functions(device, {"exp": expf, "log": logf, "log1p": log1pf}, point_constants(np.float32))


# --- (a) the block loops: f[j], d[j] = loss of element j and its derivative w.r.t. xs[j] ----------
# Uniform signature (a, xs, ts, pws, f, d): `a` the loss's scalar option (beta, delta), `ts` the
# target, `pws` the pos_weight (used by BCE-with-logits only). Arithmetic in float64.
@device
def _l1_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.l1_point(r)
        d[j] = P.l1_point_grad(r)


@device
def _mse_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.mse_point(r)
        d[j] = P.mse_point_grad(r)


@device
def _smooth_l1_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.smooth_l1_point(r, a)
        d[j] = P.smooth_l1_point_grad(r, a)


@device
def _huber_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r = np.float64(xs[j]) - np.float64(ts[j])
        f[j] = P.huber_point(r, a)
        d[j] = P.huber_point_grad(r, a)


@device
def _mape_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.mape_point(xj, tj)
        d[j] = P.mape_point_grad(xj, tj)


@device
def _bce_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.bce_point(xj, tj)
        d[j] = P.bce_point_grad(xj, tj)


@device
def _bce_logits_block(a, xs, ts, pws, f, d):
    # exp(-|x|) in a loop of its own (through f): with exp and log1p inlined in one loop body, their
    # polynomial constants outgrow the 16 vector registers and the loop ran 28% slower.
    for j in range(xs.size):
        f[j] = P.exp_neg_abs_point(np.float64(xs[j]))
    for j in range(xs.size):
        xj, tj, pj, e = np.float64(xs[j]), np.float64(ts[j]), np.float64(pws[j]), f[j]
        f[j] = P.bce_logits_point_e(xj, tj, pj, e)
        d[j] = P.bce_logits_point_grad_e(xj, tj, pj, e)


@device
def _bce_logits_f32_block(a, xs, ts, pws, f, d):
    # float32 data: the per-element terms in float32 (8 lanes, float32 exp / log1p: 2e-7 relative), into
    # float32 f, d (_chunk32); the sums and the chain rule that follow are float64.
    for j in range(xs.size):
        f[j] = P32.exp_neg_abs_point(xs[j])
    for j in range(xs.size):
        xj, tj, pj, e = xs[j], ts[j], pws[j], f[j]
        f[j] = P32.bce_logits_point_e(xj, tj, pj, e)
        d[j] = P32.bce_logits_point_grad_e(xj, tj, pj, e)


@device
def _kl_div_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.kl_div_point(xj, tj)
        d[j] = P.kl_div_point_grad(xj, tj)


@device
def _kl_div_log_target_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.kl_div_log_target_point(xj, tj)
        d[j] = P.kl_div_log_target_point_grad(xj, tj)


# Poisson NLL: one block per (log_input, full); `a` is eps.
@device
def _poisson_nll_log_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.poisson_nll_log_point(xj, tj)
        d[j] = P.poisson_nll_log_point_grad(xj, tj)


@device
def _poisson_nll_log_full_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.poisson_nll_log_full_point(xj, tj)
        d[j] = P.poisson_nll_log_point_grad(xj, tj)


@device
def _poisson_nll_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.poisson_nll_point(xj, tj, a)
        d[j] = P.poisson_nll_point_grad(xj, tj, a)


@device
def _poisson_nll_full_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        xj, tj = np.float64(xs[j]), np.float64(ts[j])
        f[j] = P.poisson_nll_full_point(xj, tj, a)
        d[j] = P.poisson_nll_point_grad(xj, tj, a)


# Gaussian NLL: the variance comes as the `pws` operand, eps as `a`. The gradient w.r.t. var is a pass
# of its own (_gaussian_nll_var_block: f is 0 there), run only when var is an array.
@device
def _gaussian_nll_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r, vj = np.float64(xs[j]) - np.float64(ts[j]), np.float64(pws[j])
        f[j] = P.gaussian_nll_point(r, vj, a)
        d[j] = P.gaussian_nll_point_grad(r, vj, a)


@device
def _gaussian_nll_full_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r, vj = np.float64(xs[j]) - np.float64(ts[j]), np.float64(pws[j])
        f[j] = P.gaussian_nll_full_point(r, vj, a)
        d[j] = P.gaussian_nll_point_grad(r, vj, a)


@device
def _gaussian_nll_var_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        r, vj = np.float64(xs[j]) - np.float64(ts[j]), np.float64(pws[j])
        f[j] = 0.0
        d[j] = P.gaussian_nll_point_grad_var(r, vj, a)


# Soft margin and focal loss: exp(-|.|) in a loop of its own, shared by value and derivative (as BCE
# with logits, whose loop ran 28% slower with exp and log1p inlined together).
@device
def _soft_margin_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        f[j] = P.exp_neg_abs_point(np.float64(ts[j]) * np.float64(xs[j]))
    for j in range(xs.size):
        xj, tj, e = np.float64(xs[j]), np.float64(ts[j]), f[j]
        f[j] = P.soft_margin_point_e(xj, tj, e)
        d[j] = P.soft_margin_point_grad_e(xj, tj, e)


@device
def _soft_margin_f32_block(a, xs, ts, pws, f, d):
    # float32 data: the per-element terms in float32 arithmetic, f and d float32 (as _bce_logits_f32_block)
    for j in range(xs.size):
        f[j] = P32.exp_neg_abs_point(ts[j] * xs[j])
    for j in range(xs.size):
        xj, tj, e = xs[j], ts[j], f[j]
        f[j] = P32.soft_margin_point_e(xj, tj, e)
        d[j] = P32.soft_margin_point_grad_e(xj, tj, e)


# Sigmoid focal loss: gamma as `a`, alpha as the `pws` operand (a constant). The power (1 - p_t)**gamma
# and its derivative come from the pair (power, dpower) chosen for gamma once per block,
# so that each loop evaluates one of them: gamma 0 to 3 by multiplication, any other by one log and
# one exp.
@device
def _focal_loop(power, dpower, gamma, xs, ts, pws, f, d):
    # f holds exp(-|x|) on entry
    for j in range(xs.size):
        xj, tj, alpha, e = np.float64(xs[j]), np.float64(ts[j]), np.float64(pws[j]), f[j]
        q = P.focal_q_e(xj, tj, e)
        qg, dqg = power(q, gamma), dpower(q, gamma)
        f[j] = P.sigmoid_focal_point_qg_e(xj, tj, alpha, e, qg)
        d[j] = P.sigmoid_focal_point_grad_qg_e(xj, tj, alpha, e, qg, dqg)


@device
def _focal_f32_loop(power, dpower, gamma, xs, ts, pws, f, d):
    # _focal_loop in float32 arithmetic (P32), f and d float32
    for j in range(xs.size):
        xj, tj, alpha, e = xs[j], ts[j], pws[j], f[j]
        q = P32.focal_q_e(xj, tj, e)
        qg, dqg = power(q, gamma), dpower(q, gamma)
        f[j] = P32.sigmoid_focal_point_qg_e(xj, tj, alpha, e, qg)
        d[j] = P32.sigmoid_focal_point_grad_qg_e(xj, tj, alpha, e, qg, dqg)


@device
def _focal_f32_general(gamma, xs, ts, pws, f, d):
    # any other gamma: q**(gamma - 1) (a log and an exp) in a loop of its own, into d; the power and its
    # derivative are q q**(gamma - 1) and gamma q**(gamma - 1) (focal_pow, focal_dpow)
    for j in range(xs.size):
        d[j] = P32.focal_pow_m1(P32.focal_q_e(xs[j], ts[j], f[j]), gamma)
    for j in range(xs.size):
        xj, tj, alpha, e, m = xs[j], ts[j], pws[j], f[j], d[j]
        q = P32.focal_q_e(xj, tj, e)
        qg, dqg = q * m, gamma * m
        f[j] = P32.sigmoid_focal_point_qg_e(xj, tj, alpha, e, qg)
        d[j] = P32.sigmoid_focal_point_grad_qg_e(xj, tj, alpha, e, qg, dqg)


@device
def _sigmoid_focal_block(a, xs, ts, pws, f, d):
    for j in range(xs.size):
        f[j] = P.exp_neg_abs_point(np.float64(xs[j]))
    if a == 2.0:
        _focal_loop(P.focal_pow2, P.focal_dpow2, a, xs, ts, pws, f, d)
    elif a == 1.0:
        _focal_loop(P.focal_pow1, P.focal_dpow1, a, xs, ts, pws, f, d)
    elif a == 3.0:
        _focal_loop(P.focal_pow3, P.focal_dpow3, a, xs, ts, pws, f, d)
    elif a == 0.0:
        _focal_loop(P.focal_pow0, P.focal_dpow0, a, xs, ts, pws, f, d)
    else:
        _focal_loop(P.focal_pow, P.focal_dpow, a, xs, ts, pws, f, d)


@device
def _sigmoid_focal_f32_block(a, xs, ts, pws, f, d):
    # float32 data: the per-element terms in float32 arithmetic, gamma rounded to float32 (as alpha)
    gamma = np.float32(a)
    for j in range(xs.size):
        f[j] = P32.exp_neg_abs_point(xs[j])
    if gamma == 2.0:
        _focal_f32_loop(P32.focal_pow2, P32.focal_dpow2, gamma, xs, ts, pws, f, d)
    elif gamma == 1.0:
        _focal_f32_loop(P32.focal_pow1, P32.focal_dpow1, gamma, xs, ts, pws, f, d)
    elif gamma == 3.0:
        _focal_f32_loop(P32.focal_pow3, P32.focal_dpow3, gamma, xs, ts, pws, f, d)
    elif gamma == 0.0:
        _focal_f32_loop(P32.focal_pow0, P32.focal_dpow0, gamma, xs, ts, pws, f, d)
    else:
        _focal_f32_general(gamma, xs, ts, pws, f, d)


# --- the direct path's per-element pairs (loss, derivative) and its chunk kernels ------------------
@device
def _l1_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.l1_point(r), P.l1_point_grad(r)


@device
def _mse_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.mse_point(r), P.mse_point_grad(r)


@device
def _smooth_l1_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.smooth_l1_point(r, a), P.smooth_l1_point_grad(r, a)


@device
def _huber_pair(a, xj, tj):
    r = np.float64(xj) - np.float64(tj)
    return P.huber_point(r, a), P.huber_point_grad(r, a)


@kernel(parallel=False)
def _l1_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_l1_pair, c, nchunks, a, gscale, x, t, gout)


@kernel(parallel=False)
def _mse_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_mse_pair, c, nchunks, a, gscale, x, t, gout)


@kernel(parallel=False)
def _smooth_l1_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_smooth_l1_pair, c, nchunks, a, gscale, x, t, gout)


@kernel(parallel=False)
def _huber_direct_chunk(c, nchunks, a, gscale, x, t, gout):
    return _direct(_huber_pair, c, nchunks, a, gscale, x, t, gout)


# Per loss, one small compiled function inlining _chunk with the loss's block loop; _run_chunks (below)
# runs it over the chunks in parallel threads. Every chunk function takes
# (c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout) and returns chunk c's float64 sum of
# w * f; the caller combines the chunks in order, so the result is deterministic for a given nchunks.
@kernel(parallel=False)
def _l1_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_l1_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _mse_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_mse_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _smooth_l1_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_smooth_l1_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _huber_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_huber_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _mape_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_mape_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _bce_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_bce_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _bce_logits_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_bce_logits_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _bce_logits_f32_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk32(_bce_logits_f32_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _kl_div_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_kl_div_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _kl_div_log_target_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_kl_div_log_target_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _poisson_nll_log_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_poisson_nll_log_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _poisson_nll_log_full_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_poisson_nll_log_full_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _poisson_nll_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_poisson_nll_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _poisson_nll_full_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_poisson_nll_full_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _gaussian_nll_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_gaussian_nll_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _gaussian_nll_full_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_gaussian_nll_full_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _gaussian_nll_var_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_gaussian_nll_var_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _soft_margin_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_soft_margin_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _soft_margin_f32_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk32(_soft_margin_f32_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _sigmoid_focal_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk(_sigmoid_focal_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


@kernel(parallel=False)
def _sigmoid_focal_f32_chunk(c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout):
    return _chunk32(_sigmoid_focal_f32_block, c, nchunks, a, gscale, x, t_op, w_op, pw_op, go_op, vout, gout)


#: The losses with a direct path (see loops._direct), by their general chunk function.
_DIRECT = {_l1_chunk: _l1_direct_chunk, _mse_chunk: _mse_direct_chunk,
           _smooth_l1_chunk: _smooth_l1_direct_chunk, _huber_chunk: _huber_direct_chunk}
