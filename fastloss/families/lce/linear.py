"""``linear_cross_entropy`` on the CPU: the chunked schedule of BLAS products around the row kernels
(whole rows split in one class slice per thread, or class blocks with an online log-sum-exp when one
row exceeds the chunk)."""
from __future__ import annotations

import numpy as np

from ... import _jit
from .drivers import _coefficients, _readonly, _reduce, _run_chunks, _Targets
from .row_kernels import _block_grad_chunk, _block_stats_chunk, _finish_rows, _rows


#: Default chunk: the extra memory of linear_cross_entropy (the chunk of logits and the per-thread
#: ``d input`` partials) is at most this fraction of the full (N, V) logits (and at least one row).
CHUNK_FRACTION = 0.045
#: A chunk of whole rows (three products per chunk) is taken when at least this many rows (or all of
#: them) fit the default chunk; below it, class blocks across many rows (:func:`_class_blocks`: four
#: products, one of them a recomputation of the logits) are faster. Every whole-row chunk streams all of
#: ``W`` twice and ``d W`` in and out, and BLAS re-packs ``W`` for each: at (2048, 1024, 32000) on 2
#: cores, chunks of 86 rows made the products 1.6x the three whole products, class blocks of (2048 rows,
#: 1,400 classes) 1.33x.
WHOLE_ROWS = 512
#: The most rows of one class block: enough for BLAS to run at its full speed on every product.
BLOCK_ROWS = 4096
#: Logits of at most this many elements (4 MiB of float32) are one chunk by default.
SMALL_LOGITS = 1 << 20
#: Explicit ``chunk_size`` and the GPU: a chunk of fewer rows than this is not worth its products' overhead unless
#: the logits are small anyway (then the whole problem is one chunk).
MIN_CHUNK_ROWS = 64
#: Products of at most this many multiply-adds (``N * H * V``) run on the calling thread alone, BLAS as
#: it is: the class slices' threads and the BLAS thread limit cost 0.3 ms a call (three thread
#: hand-offs and threadpoolctl's calls), more than such products take (``fastloss bench --small``:
#: (25, 25, 25) 0.20 ms instead of 0.51, (64, 64, 64) 0.40 instead of 0.75). Not above: OpenBLAS runs
#: products of more than 2**18 multiply-adds on its own threads, and those, unlimited, made (64, 64,
#: 256) 8 ms instead of 0.9 on 2 cores.
PARALLEL_PRODUCTS = 1 << 18


def _row_chunk(n_rows, n_cls, chunk_size):
    """Rows of a chunk of whole rows (the GPU's, and an explicit ``chunk_size``'s on the CPU): at most
    ``chunk_size`` logits (at least one row); by default :data:`CHUNK_FRACTION` of the logits, at
    least :data:`MIN_CHUNK_ROWS` rows."""
    if chunk_size is None:
        rows = max(min(n_rows, MIN_CHUNK_ROWS), int(CHUNK_FRACTION * n_rows))
        return max(1, min(rows, n_rows))
    return max(1, min(n_rows, chunk_size // max(n_cls, 1)))


def _chunk_shape(n_rows, n_cls, chunk_size, n_hid=0, n_slices=1):
    """``(rows, width)`` of linear_cross_entropy's chunk of logits on the CPU; ``width < n_cls`` means
    class blocks (:func:`_class_blocks`). An explicit ``chunk_size`` holds at most that many logits:
    whole rows when one fits, else one row in blocks of ``chunk_size`` classes. The default keeps to
    :data:`CHUNK_FRACTION` of the logits (beside a row of each thread's ``d input`` partial): whole
    rows when :data:`WHOLE_ROWS` of them (or all) fit, else blocks of classes across up to
    :data:`BLOCK_ROWS` rows; logits of at most :data:`SMALL_LOGITS` elements are one chunk."""
    if chunk_size is not None:
        if chunk_size >= n_cls:
            return _row_chunk(n_rows, n_cls, chunk_size), n_cls
        return 1, chunk_size
    if n_rows * n_cls <= SMALL_LOGITS:
        return max(1, n_rows), n_cls
    budget = CHUNK_FRACTION * n_rows * n_cls
    rows = int(budget / (n_cls + (n_slices * n_hid if n_slices > 1 else 0)))
    if rows >= min(n_rows, WHOLE_ROWS):
        return min(rows, n_rows), n_cls
    rows = min(n_rows, BLOCK_ROWS)
    return rows, max(1, min(n_cls, int(budget / rows)))


def _fortran_operand(m):
    """``(operand, trans)`` such that ``op(operand) = m.T`` with ``operand`` F-contiguous (no copy
    for C- or F-contiguous ``m``)."""
    if m.flags.c_contiguous:
        return m.T, 0
    if m.flags.f_contiguous:
        return m, 1
    return np.asfortranarray(m.T), 0


def _gemm(c, a, b, beta):
    """``c = a @ b + beta * c`` for C-contiguous ``c`` (``beta`` 0 or 1), no temporary of ``c``'s size:
    SciPy's BLAS ``gemm`` on the Fortran views ``c.T = b.T @ a.T + beta * c.T``; without SciPy,
    NumPy's matmul (by blocks of rows of ``c`` to add)."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - SciPy is a dependency
        blas = None
    if blas is not None and c.size:
        gemm = blas.sgemm if c.dtype == np.float32 else blas.dgemm
        op_a, trans_a = _fortran_operand(b)
        op_b, trans_b = _fortran_operand(a)
        r = gemm(1.0, op_a, op_b, beta=beta, c=c.T, trans_a=trans_a, trans_b=trans_b, overwrite_c=1)
        if not np.shares_memory(r, c):  # pragma: no cover - SciPy copies only a c it cannot use
            c[...] = r.T
        return
    if not beta:  # pragma: no cover
        np.matmul(a, b, out=c)
        return
    step = max(1, (1 << 20) // max(c.shape[1], 1))  # pragma: no cover
    for lo in range(0, c.shape[0], step):  # pragma: no cover
        c[lo:lo + step] += a[lo:lo + step] @ b


def linear_cross_entropy(x, W, t, b, w, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size, grad):
    """Driver of ``fastloss.linear_cross_entropy``: ``x (N, H)`` or ``(H,)``, ``W (V, H)``, ``b (V,)``
    or ``None``; ``t`` class indices ``(N,)``/``()`` or probabilities ``(N, V)``/``(V,)``."""
    dtype = x.dtype
    n_hid = x.shape[-1]
    n_cls = W.shape[0]
    loss_shape = () if x.ndim == 1 else (x.shape[0],)
    x2 = np.ascontiguousarray(x).reshape(-1, n_hid)
    n_rows = x2.shape[0]
    Wc = np.ascontiguousarray(W)
    tg = _Targets(t, w, n_rows, n_cls, dtype, ignore_index)
    has_bias = b is not None
    bias = _readonly(np.ascontiguousarray(b)) if has_bias else tg.w
    rows, width = _chunk_shape(n_rows, n_cls, chunk_size, n_hid, _slice_count(n_cls))
    loss = np.zeros(n_rows)
    with_grad = grad is not None
    coef = _coefficients(grad, reduction, tg.denominator, n_rows, loss_shape) if with_grad else loss
    args = (float(softcap or 0.0), tg.prob)
    eps, lam = float(label_smoothing), float(z_loss)
    if with_grad:
        outs = [grad.out_for(0, x), grad.out_for(1, W)] + ([grad.out_for(2, b)] if has_bias else [])
        # gradient buffers that overlap an input still to be read are filled through a temporary;
        # the input itself as its own gradient (in place) is safe for rows of x when whole rows are
        # done (x's rows of a chunk are last read before their gradient is written)
        own_x = outs[0].ctypes.data == x2.ctypes.data and width == n_cls
        work = []
        for k, o in enumerate(outs):
            inputs = [a for a in (x2, Wc, b) if a is not None]
            clash = any(np.may_share_memory(o, a) for a in inputs) and not (k == 0 and own_x
                                                                              and not np.may_share_memory(o, Wc))
            work.append(np.empty(o.shape, dtype) if clash else o)
        dx2 = work[0].reshape(n_rows, n_hid)
        dW = work[1]
        if width == n_cls or not (n_rows and n_cls):  # class blocks write d W's rows outright
            dW[...] = 0
        db = np.zeros(n_cls) if has_bias else None
    buf = np.empty(rows * width, dtype=dtype)
    if n_rows and n_cls:
        if width == n_cls and rows >= n_rows and not _parallel(n_rows, n_hid, n_cls):
            _one_chunk(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, buf,
                       (dx2, dW, db) if with_grad else None)
        elif width == n_cls:
            _sliced_chunks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, buf,
                           (dx2, dW, db) if with_grad else None)
        else:
            _class_blocks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, width, buf,
                          (dx2, dW, db) if with_grad else None)
    elif with_grad:
        dx2[...] = 0
    value = _reduce(loss, reduction, tg.denominator, dtype, loss_shape)
    if not with_grad:
        return value
    if has_bias:
        work[2][...] = db
    for o, wk in zip(outs, work):
        if wk is not o:
            o[...] = wk
    return value, tuple(outs)


_BLAS_CONTROLLER = []


def _single_threaded_blas():
    """threadpoolctl's limit of BLAS to the calling thread (``restore_original_limits()`` undoes it),
    or ``None`` where threadpoolctl is not installed.

    The controller (which inspects every loaded native library: milliseconds, and more Python objects
    with PyTorch loaded) is made once per process and reused by every call."""
    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _BLAS_CONTROLLER.append(None)
        else:
            _BLAS_CONTROLLER.append(ThreadpoolController())
    controller = _BLAS_CONTROLLER[0]
    return None if controller is None else controller.limit(limits=1, user_api="blas")


def _slice_count(n_cls):
    """The most class slices :func:`_sliced_chunks` makes: one per thread."""
    return max(1, min(_jit.get_num_threads(), n_cls))


def _in_parallel(n, fn):
    """``fn(0), ..., fn(n - 1)`` on :func:`fastloss._jit.run_chunks`'s threads (``fn`` releases the GIL)."""
    _jit.run_chunks(lambda k, _n: fn(k), n)


def _parallel(n_rows, n_hid, n_cls):
    """Whether the products are worth threads of their own (:data:`PARALLEL_PRODUCTS`)."""
    return n_rows * n_hid * n_cls > PARALLEL_PRODUCTS and _jit.get_num_threads() > 1


_WHOLE_ROW = np.zeros(1, dtype=np.int64)  # one class slice starting at 0 (and a chunk's base 0)


def _one_chunk(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, buf, grads):
    """linear_cross_entropy of small products (not :func:`_parallel`) in one chunk of every row, on the
    calling thread: ``z = x W^T`` into ``buf``, the row kernel turns it into ``G`` in place, then
    ``d W = G^T x``, ``d x = G W`` (which may overwrite ``x``: read last) and ``d b`` = the column sums."""
    n_rows, n_cls = x2.shape[0], Wc.shape[0]
    z = buf[:n_rows * n_cls].reshape(n_rows, n_cls)
    np.matmul(x2, Wc.T, out=z)
    _rows(0, 1, buf, buf, n_rows, _WHOLE_ROW, np.full(1, n_cls, dtype=np.int64), _WHOLE_ROW, True, bias, has_bias,
          *args, tg.t, tg.q, tg.w, tg.wsum, tg.ignore_index, eps, lam, coef, grads is not None, loss)
    if grads is None:
        return
    dx2, dW, db = grads
    np.matmul(z.T, x2, out=dW)
    np.matmul(z, Wc, out=dx2)
    if db is not None:
        db += np.add.reduce(z, axis=0, dtype=np.float64)


def _sliced_chunks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, buf, grads):
    """linear_cross_entropy by chunks of whole rows, each row split into one class slice per thread.

    Per chunk: thread ``k`` computes its slice of the logits (``x @ W[slice].T``, a single-threaded
    BLAS call), the row kernel turns the rows into their gradient ``G`` (rows split among the threads),
    then thread ``k`` does ``d W[slice] += G[:, slice].T @ x`` and ``G[:, slice] @ W[slice]`` (summed
    into ``d x``). BLAS's own threads would synchronise inside every product, which for the long
    ``K = V`` product of ``d x`` on a small chunk costs more than the product (measured 5-7x slower at
    64 rows on a busy 2-core machine); single-threaded calls on disjoint slices never wait for each other.
    Without threadpoolctl (to keep BLAS to one thread) one slice takes the whole rows and BLAS threads.
    """
    n_rows, n_hid = x2.shape
    n_cls = Wc.shape[0]
    limits = _single_threaded_blas() if _parallel(n_rows, n_hid, n_cls) else None
    try:
        n_slices = _slice_count(n_cls) if limits is not None else 1
        col0s = np.array([k * n_cls // n_slices for k in range(n_slices)], dtype=np.int64)
        widths = np.diff(np.append(col0s, n_cls)).astype(np.int64)
        bases = col0s * rows  # slice k of a chunk of n <= rows rows: n * widths[k] elements from here
        partial = np.empty((n_slices, rows, n_hid), dtype=x2.dtype) if grads is not None else None
        for lo in range(0, n_rows, rows):
            hi = min(n_rows, lo + rows)
            n = hi - lo
            xc = x2[lo:hi]
            segs = [buf[bases[k]:bases[k] + n * widths[k]].reshape(n, widths[k]) for k in range(n_slices)]
            cls = [slice(col0s[k], col0s[k] + widths[k]) for k in range(n_slices)]
            _in_parallel(n_slices, lambda k: np.matmul(xc, Wc[cls[k]].T, out=segs[k]))
            _run_chunks(_rows, n, n_cls, buf, buf, n, bases, widths, col0s, True, bias, has_bias, *args,
                        tg.t[lo:hi] if not tg.prob else tg.t, tg.q[lo:hi] if tg.prob else tg.q, tg.w, tg.wsum,
                        tg.ignore_index, eps, lam, coef[lo:hi], grads is not None, loss[lo:hi])
            if grads is None:
                continue
            dx2, dW, db = grads

            def backward(k):
                _gemm(dW[cls[k]], segs[k].T, xc, 1.0)
                np.matmul(segs[k], Wc[cls[k]], out=partial[k, :n])
                if db is not None:
                    db[cls[k]] += np.add.reduce(segs[k], axis=0, dtype=np.float64)

            _in_parallel(n_slices, backward)
            # x's rows of this chunk were last read above: d x may overwrite them (in place)
            np.sum(partial[:, :n], axis=0, out=dx2[lo:hi])
    finally:
        if limits is not None:
            limits.restore_original_limits()


def _class_blocks(x2, Wc, tg, bias, has_bias, args, eps, lam, coef, loss, rows, width, buf, grads):
    """linear_cross_entropy in blocks of ``width`` classes across ``rows`` rows: a statistics sweep
    (online log-sum-exp), then, for the gradient, a sweep recomputing each block of logits.

    Every product is one SciPy BLAS ``gemm`` (:func:`_gemm`), the sums over blocks by ``beta = 1``:
    NumPy's matmul has no ``beta`` (its sums need temporaries and more, smaller products), and mixing
    the two libraries leaves one's idle threads spinning against the other's (measured 1.6x slower
    on 2 cores). A block spanning every row writes its ``d W`` rows outright."""
    n_rows, n_cls = x2.shape[0], Wc.shape[0]
    cap, prob = args
    stats = np.zeros((n_rows, 6))
    stats[:, 0] = -np.inf
    t_of = (lambda lo, hi: tg.t) if prob else (lambda lo, hi: tg.t[lo:hi])
    q_of = (lambda lo, hi: tg.q[lo:hi]) if prob else (lambda lo, hi: tg.q)

    def blocks():
        for lo in range(0, n_rows, rows):
            hi = min(n_rows, lo + rows)
            for col0 in range(0, n_cls, width):
                cw = min(width, n_cls - col0)
                zb = buf[:(hi - lo) * cw].reshape(hi - lo, cw)
                _gemm(zb, x2[lo:hi], Wc[col0:col0 + cw].T, 0.0)
                yield lo, hi, col0, cw, zb

    for lo, hi, col0, cw, zb in blocks():
        _run_chunks(_block_stats_chunk, hi - lo, cw, zb, col0, bias, has_bias, cap, prob, t_of(lo, hi), q_of(lo, hi),
                    tg.w, eps, n_cls, stats[lo:hi])
    gsum = np.zeros(n_rows)
    kk = np.zeros(n_rows)
    _finish_rows(prob, tg.t, tg.w, tg.wsum, tg.ignore_index, eps, n_cls, lam, coef, stats, loss, gsum, kk)
    if grads is None:
        return
    dx2, dW, db = grads
    for lo, hi, col0, cw, zb in blocks():
        _run_chunks(_block_grad_chunk, hi - lo, cw, zb, col0, bias, has_bias, cap, prob, t_of(lo, hi), q_of(lo, hi),
                    tg.w, eps, n_cls, tg.ignore_index, stats[lo:hi], gsum[lo:hi], kk[lo:hi])
        _gemm(dW[col0:col0 + cw], zb.T, x2[lo:hi], float(lo > 0))
        _gemm(dx2[lo:hi], zb, Wc[col0:col0 + cw], float(col0 > 0))
        if has_bias:
            db[col0:col0 + cw] += np.add.reduce(zb, axis=0, dtype=np.float64)
