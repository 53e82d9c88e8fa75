"""CUDA twin of :mod:`fastloss.families.lce`: ``cross_entropy`` with ``z_loss`` / ``softcap`` and
``linear_cross_entropy``, for GPU arrays (same drivers, same maths; see that module's docstring for the
derivation of the gradient).

Row kernel. One block per row (a grid-stride loop over rows). The block's threads stride over the
row's classes (coalesced); each keeps an online maximum and sum of ``exp(z - m)`` of its elements,
with ``z = softcap(x + bias)`` computed in the data's precision (``math.exp`` / ``math.tanh`` on float32
compile to the single-precision paths) and the sums in float64. The threads' pairs and linear sums are
merged by :mod:`fastloss._cuda_reduce`'s block reductions (warp shuffles and one shared-memory step
across warps; shared-memory trees under the CUDA simulator).
A second sweep over the row (from L2) writes the gradient, each element read before the same thread
writes it, so the gradient may overwrite the logits (``linear_cross_entropy``'s chunk buffer).

Each row's loss goes to a float64 per-row buffer; one block then adds them in a fixed order
(deterministic), divided by the ``'mean'`` denominator, which a small kernel computes from the targets
(no host synchronisation).

``linear_cross_entropy``: per chunk of rows, cuBLAS products through CuPy (``matmul`` for the logits
and ``d input``, a ``gemm`` accumulating ``d W``). Numba device arrays (no BLAS of their own) use a
plain tiled product kernel instead: correct, not fast; pass CuPy arrays for speed.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int64

from .. import _cuda_arrays as D
from .. import _cuda_reduce as _R
from .._cuda_arrays import TPB, incoming_at
from .lce.linear import _row_chunk

_R.install(globals())  # group_sum, group_max, block_sum, block_max, WARP

#: At most this many blocks for the block-per-row kernel (it strides over the rows beyond).
MAX_ROW_BLOCKS = 3 if D.SIMULATOR else 8192
#: Length of the shared buffers the block reductions take (at least :data:`fastloss._cuda_reduce.BUF`).
RBUF = max(TPB, _R.BUF)


# --------------------------------------------------------------------------------------------------
# One-point functions (the data's precision)
# --------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def softcap_point(v, cap, has_cap):
    """``cap * tanh(v / cap)`` (``v`` itself without a softcap), in ``v``'s precision."""
    if has_cap:
        return cap * math.tanh(v / cap)
    return v


@cuda.jit(device=True)
def capped(x, i, bias, c, has_bias, cap, has_cap):
    """The (bias-added, softcapped) logit of flat element ``i`` of class ``c``."""
    v = x[i]
    if has_bias:
        v += bias[c]
    return softcap_point(v, cap, has_cap)


@cuda.jit(device=True)
def safe_log(v):
    """``log(v)`` with IEEE results at 0 (-inf) and below (NaN), which the simulator's ``math.log``
    raises for (an ignored row's empty sum is 0)."""
    if v > 0.0:
        return math.log(v)
    if v == 0.0:
        return -math.inf
    return math.nan


@cuda.jit(device=True)
def class_weight(w, has_w, c):
    if has_w:
        return float64(w[c])
    return 1.0


# --------------------------------------------------------------------------------------------------
# The row kernel
# --------------------------------------------------------------------------------------------------
def _make_rows(ft, name):
    """The row kernel for data of Numba type ``ft`` (float32 or float64): ``ft(...)`` rounds the
    per-row factors to the data's type so the per-element maths stays in it. ``name``: the
    module-level name it is bound to (so that tools can find it by its qualified name)."""

    def rows(x, C, K, gx, with_grad, bias, has_bias, cap, has_cap, prob, t, q, w, has_w, wsum_buf, ignore, eps,
             lam, loss_out, row0, gs, gv, gstep, reduce, inv_den, den_buf, use_den_buf):
        """Loss (float64, into ``loss_out[r]``) and, ``with_grad``, gradient (into ``gx``, which may
        be ``x``) of every row ``r`` of the ``(O, C, K)`` layout of ``x``; row ``r`` reads the incoming
        gradient of loss element ``row0 + r`` (element 0 when ``reduce``)."""
        buf = cuda.shared.array(RBUF, float64)
        tid = cuda.threadIdx.x
        R = x.shape[0] // C
        e_c = eps / C
        wsum = wsum_buf[0] if has_w else float64(C)
        for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
            base = (r // K) * C * K + r % K
            ti = int64(-1)
            ignored = False
            if not prob:
                ti = int64(t[r])
                ignored = ti == ignore
            # the target's logit, read by every thread before any gradient is written
            zt = 0.0
            wt = 0.0
            if not prob and not ignored:
                zt = float64(capped(x, base + ti * K, bias, ti, has_bias, cap, has_cap))
                wt = class_weight(w, has_w, ti)
            m = ft(-math.inf)
            s = 0.0
            lin_a = 0.0
            lin_b = 0.0
            if not ignored:
                for c in range(tid, C, TPB):
                    i = base + c * K
                    z = capped(x, i, bias, c, has_bias, cap, has_cap)
                    if z > m:
                        s = s * float64(math.exp(m - z)) + 1.0
                        m = z
                    else:
                        s += float64(math.exp(z - m))
                    if prob:
                        a = class_weight(w, has_w, c) * ((1.0 - eps) * float64(q[i]) + e_c)
                        lin_a += a * float64(z)
                        lin_b += a
                    elif eps > 0.0:
                        lin_a += class_weight(w, has_w, c) * float64(z)
            big = block_max(buf, float64(m))
            mine = s * math.exp(float64(m) - big) if m > -math.inf else s
            total = block_sum(buf, mine)
            if ignored:  # not read: a finite stand-in log-sum-exp, and a gradient of 0
                big, total = 0.0, 1.0
            if prob or eps > 0.0:
                lin_a = block_sum(buf, lin_a)
            if prob:
                lin_b = block_sum(buf, lin_b)
            lse = big + safe_log(total)
            # the loss and the factor on p_c (see lce's docstring): S = sum_c a_c, u = w_t (or 1)
            if prob:
                big_s = lin_b
                u = 1.0
                loss = lin_b * lse - lin_a
            else:
                big_s = (1.0 - eps) * wt + e_c * wsum
                u = wt
                loss = (1.0 - eps) * wt * (lse - zt)
                if eps > 0.0:
                    loss += e_c * (wsum * lse - lin_a)
            if lam > 0.0:
                loss += lam * u * lse * lse
            if ignored:
                loss = 0.0
            if tid == 0:
                loss_out[r] = loss
            if with_grad:
                k = incoming_at(gs, gv, gstep, 0 if reduce else row0 + r) * inv_den
                if use_den_buf:
                    k = k / den_buf[0]
                if ignored:
                    k = 0.0
                fac = ft(k * (big_s + 2.0 * lam * u * lse) / total)
                mm = ft(big)
                for c in range(tid, C, TPB):
                    i = base + c * K
                    z = capped(x, i, bias, c, has_bias, cap, has_cap)
                    if prob:
                        a = class_weight(w, has_w, c) * ((1.0 - eps) * float64(q[i]) + e_c)
                    else:
                        a = e_c * class_weight(w, has_w, c)
                        if c == ti:
                            a += (1.0 - eps) * wt
                    d = math.exp(z - mm) * fac - ft(k * a) if not ignored else ft(0.0)
                    if has_cap:
                        rr = z / cap
                        d *= 1 - rr * rr
                    gx[i] = d
            cuda.syncthreads()  # every thread is done with row r (and buf) before the next row

    rows.__name__ = rows.__qualname__ = name
    return D.jit_kernel(rows)


# compiled on their first launch
_rows_float32 = _make_rows(float32, "_rows_float32")
_rows_float64 = _make_rows(float64, "_rows_float64")


def rows_kernel(dtype):
    """The row kernel for float32 or float64 data."""
    return _rows_float32 if np.dtype(dtype) == np.float32 else _rows_float64


@D.jit_kernel
def _target_weights(t, w, has_w, ignore, parts):
    """Per-block partial sums of ``w[t_r]`` over non-ignored targets (the ``'mean'`` denominator)."""
    buf = cuda.shared.array(RBUF, float64)
    acc = 0.0
    for r in range(cuda.grid(1), t.shape[0], cuda.gridsize(1)):
        ti = int64(t[r])
        if ti != ignore:
            acc += class_weight(w, has_w, ti)
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


class _Run:
    """Targets, weights, the loss buffer and the incoming gradient of one call, as the kernel takes them."""

    def __init__(self, like, t, w, n_rows, ignore_index, reduction, grad, loss_shape, prob):
        self.like = like
        self.prob = prob
        self.has_w = w is not None
        # Without class weights the kernels still take a 1-D array of the data's dtype there (never read):
        # a kernel argument's Numba type must not depend on the call's options.
        self.w = D.contiguous(w) if self.has_w else D.empty((1,), like.dtype, like)
        self.loss_rows = D.empty((max(n_rows, 1),), np.float64, like)
        self.wsum_buf = self.loss_rows  # a stand-in: the kernel reads it only with class weights
        if self.has_w:  # sum_c w_c (label smoothing), left on the device
            self.wsum_buf = D.result_buffer(like, np.float64)
            D.finish_sum(D.astype(self.w, np.float64), self.wsum_buf)
        self.ignore = int(ignore_index)
        self.reduction = reduction
        self.reduce = reduction != "none"
        self.n_rows = n_rows
        self.loss_shape = loss_shape
        self.den, self.den_buf = 1.0, None
        if reduction == "mean":
            if prob:
                self.den = float(n_rows)
            elif n_rows:
                blocks = D.blocks_for(n_rows)
                parts = D.partial_buffer(blocks, like)
                D.launch(_target_weights, blocks, like, t, self.w, self.has_w, self.ignore, parts)
                self.den_buf = D.result_buffer(like, np.float64)
                D.finish_sum(parts, self.den_buf)
            else:
                self.den = 0.0
        shape = () if self.reduce else loss_shape
        self.inc = grad.incoming(shape, like) if grad is not None else D.Incoming(1.0, like, -1)

    def launch_rows(self, x, C, K, gx, with_grad, bias, has_bias, cap, t, q, eps, lam, row0, n_rows):
        if not n_rows or not C:
            return
        dt = np.dtype(x.dtype).type
        has_cap = cap is not None
        loss_view = self.loss_rows[row0:row0 + n_rows]
        D.launch(rows_kernel(x.dtype), min(n_rows, MAX_ROW_BLOCKS), x, x, int(C), int(K), gx, bool(with_grad), bias,
                 bool(has_bias), dt(cap if has_cap else 1.0), has_cap, bool(self.prob), t, q, self.w, self.has_w,
                 self.wsum_buf, self.ignore, float(eps), float(lam), loss_view, int(row0), *self.inc.args(),
                 self.reduce, 1.0 / self.den if self.den else math.inf,
                 self.den_buf if self.den_buf is not None else self.loss_rows, self.den_buf is not None)

    def value(self, dtype):
        like = self.like
        if not self.reduce:
            rows = D.astype(self.loss_rows, dtype)
            if self.n_rows == 0:
                return D.empty(self.loss_shape, dtype, like)
            return D.scalar_view(rows) if self.loss_shape == () else D.reshape(rows, self.loss_shape)
        out = D.result_buffer(like, dtype)
        if self.n_rows == 0:
            D.empty_sum(out, den=self.den if self.reduction == "mean" else 1.0)
        else:
            D.finish_sum(self.loss_rows[:self.n_rows], out, den=self.den if self.den_buf is None else 1.0,
                         den_buf=self.den_buf)
        return D.scalar_view(out)


def _class_layout(x):
    axis = 0 if x.ndim == 1 else 1
    shape = tuple(x.shape)
    O = int(np.prod(shape[:axis], dtype=np.int64))
    K = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return O, int(shape[axis]), K


@D.on_input_device
def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, z_loss, softcap, grad):
    """``cross_entropy`` with ``z_loss`` / ``softcap`` for GPU arrays (classes on axis 1)."""
    x = D.contiguous(x)
    O, C, K = _class_layout(x)
    R = O * K
    n = x.size
    prob = np.dtype(t.dtype).kind == "f"
    loss_shape = () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])
    tf = D.reshape(D.contiguous(t), (n if prob else R,))
    run = _Run(x, tf, w, R, ignore_index, reduction, grad, loss_shape, prob)
    xf = D.reshape(x, (n,))
    gx = grad.out_for(0, x) if grad is not None else None
    gxf = D.reshape(gx, (n,)) if gx is not None else xf
    run.launch_rows(xf, C, K, gxf, grad is not None, xf, False, softcap, tf, tf if prob else xf,
                    float(label_smoothing), z_loss, 0, R)
    value = run.value(x.dtype)
    return value if grad is None else (value, (gx,))


# --------------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------------
@D.jit_kernel
def _product(a, b, c, M, N, Kd, a_t, b_t, beta):
    """``c (M, N) = beta * c + op(a) @ op(b)`` on flat C-ordered arrays, ``op`` a transpose when
    ``a_t``/``b_t``; one output per thread (grid-stride), float64 accumulation. For Numba device
    arrays, which have no BLAS; CuPy arrays use cuBLAS."""
    for idx in range(cuda.grid(1), M * N, cuda.gridsize(1)):
        i = idx // N
        j = idx % N
        acc = 0.0
        for k in range(Kd):
            av = a[k * M + i] if a_t else a[i * Kd + k]
            bv = b[j * Kd + k] if b_t else b[k * N + j]
            acc += float64(av) * float64(bv)
        if beta != 0.0:
            acc += float64(c[idx])
        c[idx] = acc


def _matmul(a, b, c, a_t=False, b_t=False, accumulate=False):
    """``c = op(a) @ op(b)`` (``c +=`` when ``accumulate``) for 2-D C-contiguous ``a``, ``b``, ``c``:
    cuBLAS through CuPy for CuPy arrays (a ``gemm`` with ``beta = 1`` to accumulate: no temporary),
    else the :func:`_product` kernel."""
    if D.is_cupy(c):
        cp = D._cupy()
        if accumulate:
            from cupy import cublas

            cublas.gemm("T" if a_t else "N", "T" if b_t else "N", a, b, out=c, alpha=1.0, beta=1.0)
        else:
            cp.matmul(a.T if a_t else a, b.T if b_t else b, out=c)
        return
    M, N = c.shape
    Kd = a.shape[0] if a_t else a.shape[1]
    size = M * N
    if size:
        D.launch(_product, D.blocks_for(size), c, D.reshape(a, (a.size,)), D.reshape(b, (b.size,)),
                 D.reshape(c, (size,)), int(M), int(N), int(Kd), bool(a_t), bool(b_t), 1.0 if accumulate else 0.0)


@D.jit_kernel
def _zero(a):
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = 0


@D.jit_kernel
def _column_sums(g, R, V, acc):
    """``acc[c] += sum_r g[r, c]`` (float64) for a flat ``(R, V)`` chunk of gradients."""
    for c in range(cuda.grid(1), V, cuda.gridsize(1)):
        s = 0.0
        for r in range(R):
            s += float64(g[r * V + c])
        acc[c] += s


def _zeros(a):
    if a.size:
        D.launch(_zero, D.blocks_for(a.size), a, D.reshape(a, (a.size,)))


@D.on_input_device
def linear_cross_entropy(x, W, t, b, w, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size, grad):
    """``linear_cross_entropy`` for GPU arrays: chunks of rows, one product each, the row kernel in
    place, and the two gradient products. Class blocks are not needed on a GPU's memory for the
    vocabularies of today; a ``chunk_size`` below ``V`` gives one row per chunk."""
    dtype = np.dtype(x.dtype)
    H = int(tuple(x.shape)[-1])
    V = int(W.shape[0])
    x2 = D.reshape(D.contiguous(x), (x.shape[0] if x.ndim == 2 else 1, H))
    N = int(x2.shape[0])
    Wc = D.contiguous(W)
    prob = np.dtype(t.dtype).kind == "f"
    tc = D.contiguous(t)
    tf = D.reshape(tc, (N * V,) if prob else (N,))
    loss_shape = () if x.ndim == 1 else (N,)
    run = _Run(x2, tf, w, N, ignore_index, reduction, grad, loss_shape, prob)
    has_bias = b is not None
    bias = D.contiguous(b) if has_bias else D.reshape(x2, (x2.size,))  # 1-D either way (same kernel type)
    eps = float(label_smoothing)
    rows = _row_chunk(N, V, max(chunk_size, V) if chunk_size is not None else None)
    with_grad = grad is not None
    if with_grad:
        dx = grad.out_for(0, x)
        dW = grad.out_for(1, W)
        db = grad.out_for(2, b) if has_bias else None
        dx2 = D.reshape(dx, (N, H))
        _zeros(dW)
        db64 = D.empty((V,), np.float64, x2) if has_bias else None
        if has_bias:
            _zeros(db64)
    if N and V:
        buf = D.empty((rows * V,), dtype, x2)
        for lo in range(0, N, rows):
            hi = min(N, lo + rows)
            n = hi - lo
            zb2 = D.reshape(buf[:n * V], (n, V))
            _matmul(x2[lo:hi], Wc, zb2, b_t=True)
            zf = D.reshape(zb2, (n * V,))
            t_chunk = tf[lo * V:hi * V] if prob else tf[lo:hi]
            run.launch_rows(zf, V, 1, zf, with_grad, bias, has_bias, softcap, t_chunk, t_chunk if prob else zf, eps,
                            z_loss, lo, n)
            if with_grad:
                _matmul(zb2, x2[lo:hi], dW, a_t=True, accumulate=True)
                _matmul(zb2, Wc, dx2[lo:hi])
                if has_bias:
                    D.launch(_column_sums, D.blocks_for(V), x2, zf, n, V, db64)
    elif with_grad:
        _zeros(dx)
    value = run.value(dtype)
    if not with_grad:
        return value
    if has_bias:
        cast = D.astype(db64, dtype)
        _copy_into(cast, db)
    return value, ((dx, dW, db) if has_bias else (dx, dW))


@D.jit_kernel
def _copy(src, dst):
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


def _copy_into(src, dst):
    if dst.size:
        D.launch(_copy, D.blocks_for(dst.size), dst, D.reshape(src, (src.size,)), D.reshape(dst, (dst.size,)))
