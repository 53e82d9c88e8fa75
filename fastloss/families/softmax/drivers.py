"""Drivers of the softmax family on the CPU (called by :mod:`fastloss.api` with checked NumPy arrays):
the layout of the call, the gradient buffer and coefficients, the chunks, and the reduction."""
from __future__ import annotations

import math

import numpy as np

from ... import _jit
from ... import _validation as V
from ..._cy import softmax_small
from ..._dispatch import scalar_result
from .ce_kernels import (_ce_index_channels, _ce_index_rows, _ce_index_short, _ce_prob_channels,
                         _ce_prob_rows, _ce_prob_short, _ce_prob_small)
from .rows import _SHORT_CLASSES, _SHORT_ROWS, _index_scan, _tile_blocks
from .softmax_kernels import _nll_chunk, _softmax_channels, _softmax_rows, _softmax_short


def _split_axis(shape, axis):
    """``(A, C, B)``: the elements before ``axis``, along it, and after it."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _gradient_buffer(grad, x, xc):
    """``(out, xc, inplace)``: the gradient buffer for input ``x`` (``xc``: ``x``'s data, C-contiguous).

    ``inplace`` when the caller asked for the gradient in ``x`` itself (then ``x`` is C-contiguous and
    ``xc`` a view of it); an ``out`` overlapping the logits in any other way gets them copied first, so
    no kernel reads what it has overwritten.
    """
    out = grad.out_for(0, x)
    if grad.out is None:  # a new array: shares nothing with the logits
        return out, xc, False
    if out is x or (x.flags.c_contiguous and out.ctypes.data == x.ctypes.data):
        return out, xc, True
    if np.may_share_memory(out, xc):
        xc = xc.copy()
    return out, xc, False


#: Elements of work below which a call runs on the calling thread alone, and the least work of each
#: further chunk. A chunk handed to a pool thread costs about 10-20 us (waking the thread, the GIL
#: handover, Numba's argument unboxing), measured on the 2-core build machine; the serial kernels move
#: 0.5-2 ns per element (cross entropy, softmax), so 2**16 elements (30-130 us of work) is where a
#: second thread starts to pay: see DEVELOPING.md, "Threads".
MIN_CHUNK = 1 << 16

#: At most this many chunks per call: a few per thread balance a machine where other processes hold
#: cores (a descheduled thread delays only the chunk it holds). Fixed, not derived from the thread
#: count, so that the chunks, and every result, are the same whatever ``set_num_threads`` says.
MAX_CHUNKS = 16


def _n_chunks(work, units):
    """Chunks for ``work`` elements of work made of ``units`` indivisible pieces (rows, tiles, blocks)."""
    return max(1, min(units, MAX_CHUNKS, work // MIN_CHUNK))


def _run(kernel, work, units, *args):
    """Run the chunk kernel ``kernel(k, n_chunks, *args)`` over its chunks; the float64 total of the
    losses it returns, summed in chunk order."""
    n = _n_chunks(work, units)
    if n == 1:
        return kernel(0, 1, *args)
    parts = _jit.run_chunks(kernel, n, *args)
    return None if parts[0] is None else math.fsum(parts)


def _reduce(loss, total, reduction, denominator, dtype, shape):
    """The float64 per-position ``loss`` (whose sum is ``total``) reduced as ``reduction``
    (``'mean'`` divides by ``denominator``, NaN when it is 0, as PyTorch), in ``dtype``; ``'none'``
    gives ``shape``."""
    if reduction == "none":
        return loss.reshape(shape).astype(dtype)
    if reduction == "sum":
        return scalar_result(total, dtype)
    return scalar_result(total / denominator if denominator != 0 else math.nan, dtype)


def _coefficients(grad, reduction, denominator, loss_shape, shape):
    """Each position's factor on its loss gradient (float64, of ``shape``): ``grad_output`` (per
    position for ``'none'``), over ``denominator`` for ``'mean'``. The kernels zero it where a target
    is ignored."""
    if reduction == "none":
        return np.array(np.broadcast_to(grad.array(loss_shape, np.float64), loss_shape)).reshape(shape)
    g = grad.scalar()
    if reduction == "mean":
        g = g / denominator if denominator != 0 else 0.0
    coef = np.empty(shape)
    coef.fill(g)
    return coef


def _index_targets(t, x3, w, ignore_index):
    """Class indices ``t`` as C-contiguous ``intp`` of shape ``(N, B)``, and PyTorch's 'mean' divisor.

    Raises ``IndexError`` naming the first index outside ``[0, C)`` that is not ``ignore_index``."""
    n, n_cls, n_pos = x3.shape
    tk = t if t.dtype == np.intp and t.flags.c_contiguous else np.ascontiguousarray(t, dtype=np.intp)
    tk = tk.reshape(n, n_pos)
    den, bad = _index_scan(tk.reshape(-1), w, ignore_index, n_cls)
    if bad >= 0:
        V.class_index_error("target", t.reshape(-1)[bad], n_cls, ignore_index)
    return tk, den


_ONES = {}


def _ones(n, dtype):
    """A read-only array of ``n`` ones of ``dtype`` (cached): the class weight of a call without one."""
    key = (n, dtype)
    a = _ONES.get(key)
    if a is None:
        if len(_ONES) > 64:
            _ONES.clear()
        a = _ONES[key] = _readonly(np.ones(n, dtype=dtype))
    return a


def _class_view(x):
    """``x`` as ``(N, C, B)`` (C-contiguous; a ``(C,)`` input is ``(1, C, 1)``) and the loss's shape."""
    xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    shape = x.shape
    if len(shape) == 1:
        return xc.reshape(1, shape[0], 1), ()
    if len(shape) == 2:
        return xc.reshape(shape[0], shape[1], 1), (shape[0],)
    return xc.reshape(shape[0], shape[1], math.prod(shape[2:])), (shape[0],) + shape[2:]


def cross_entropy(x, t, w, ignore_index, reduction, label_smoothing, grad):
    """Driver of ``fastloss.cross_entropy``: index targets (any integer dtype) or probabilities."""
    shape = x.shape
    if 0 < x.size < MIN_CHUNK and (len(shape) <= 2 or math.prod(shape[2:]) == 1):
        return _cross_entropy_small(x, t, w, ignore_index, reduction, label_smoothing, grad)
    x3, loss_shape = _class_view(x)
    n, n_cls, n_pos = x3.shape
    probabilities = t.dtype.kind == "f"
    # a class weight of ones stands in for "no weight": one compiled kernel serves both
    if w is None:
        wc, wsum = _ones(n_cls, x.dtype), float(n_cls)
    else:
        wc = _readonly(np.ascontiguousarray(w))
        wsum = float(np.sum(wc, dtype=np.float64))
    if probabilities:
        tk = np.ascontiguousarray(t).reshape(x3.shape)
        denominator = float(n * n_pos) if x3.size else 0.0  # PyTorch: 'mean' of an empty input is NaN
    else:
        tk, denominator = _index_targets(t, x3, wc, ignore_index)
    # without classes every target is ignore_index (or the targets are empty): no kernel, losses 0
    loss = np.empty((n, n_pos)) if x3.size else np.zeros((n, n_pos))
    # without a gradient, an empty buffer and coefficients the kernels do not read stand in (one
    # compiled kernel for value and gradient: half the compile time)
    xk, out, out3, coef, inplace = x3, None, _no_gradient(x3), loss, False
    if grad is not None:
        out, xk, inplace = _gradient_buffer(grad, x, x3)
        out3 = out.reshape(x3.shape)
        coef = _coefficients(grad, reduction, denominator, loss_shape, loss.shape)
    total = 0.0
    if x3.size:
        total = _run_cross_entropy(_readonly(xk), _readonly(tk), wc, wsum, ignore_index, label_smoothing, coef,
                                   out3, grad is not None, inplace, loss, probabilities)
    value = _reduce(loss, total, reduction, denominator, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


def _run_cross_entropy(x3, t, w, wsum, ignore_index, eps, coef, out3, with_grad, inplace, loss, probabilities):
    """Pick the short-row, row (one position per ``n``) or channel kernel and run it; the losses' sum."""
    n, n_cls, n_pos = x3.shape
    work = x3.size
    if n_pos > 1:
        units = n * _tile_blocks(n_cls, n_pos)[1]
        if probabilities:
            return _run(_ce_prob_channels, work, units, x3, t, w, eps, coef, out3, with_grad, inplace, loss)
        return _run(_ce_index_channels, work, units, x3, t, w, wsum, ignore_index, eps, coef, out3, with_grad,
                    inplace, loss)
    x2, out2, coef1, loss1 = x3[:, :, 0], out3[:, :, 0], coef[:, 0], loss[:, 0]
    t2 = t[:, :, 0] if probabilities else t[:, 0]
    if n_cls <= _SHORT_CLASSES:
        units = -(-n // _SHORT_ROWS)
        if probabilities:
            return _run(_ce_prob_short, work, units, x2, t2, w, eps, coef1, out2, with_grad, loss1)
        return _run(_ce_index_short, work, units, x2, t2, w, wsum, ignore_index, eps, coef1, out2, with_grad, loss1)
    if probabilities:
        return _run(_ce_prob_rows, work, n, x2, t2, w, eps, coef1, out2, with_grad, inplace, loss1)
    return _run(_ce_index_rows, work, n, x2, t2, w, wsum, ignore_index, eps, coef1, out2, with_grad, inplace, loss1)


#: The stand-in of an absent per-row array of the small-call kernels (no per-row losses or incoming
#: gradients): an empty array of the type of the real one, so that one compiled kernel serves both.
_NO_ROWS = np.empty(0)


def _cross_entropy_small(x, t, w, ignore_index, reduction, eps, grad):
    """:func:`cross_entropy` of a call below :data:`MIN_CHUNK` elements with one position per row: one
    kernel call on the calling thread, which also checks the class indices and forms the 'mean'
    divisor, and with as few steps around it as it takes (they, not the kernel, dominate such a call).

    Class indices go to the C entry of :func:`.ce_kernels._ce_index_small`, as the plain call's fast
    path does (one compiled kernel: the same bits). The probability kernel gets the caller's arrays as
    they are (writeable or not): a read-only input compiles its own specialisation once, where a
    read-only view made on every call would cost each call."""
    shape = x.shape
    n_cls = shape[0] if len(shape) == 1 else shape[1]
    loss_shape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    wc = _ones(n_cls, x.dtype) if w is None else _readonly(np.ascontiguousarray(w))
    none = reduction == "none"
    loss = np.empty(x.size // n_cls) if none else _NO_ROWS
    g, gvec, out, inplace = 1.0, _NO_ROWS, None, False
    with_grad = grad is not None
    if with_grad:
        if grad.out is None:
            out = np.empty(shape, x.dtype)
        else:
            out, xc, inplace = _gradient_buffer(grad, x, xc)
        if none:
            gvec = np.array(np.broadcast_to(grad.array(loss_shape, np.float64), loss_shape)).reshape(-1)
        else:
            g = grad.scalar()
    # (a reshape costs a small call about as much as a tenth of its kernel: only where needed)
    x2 = xc if xc.ndim == 2 else xc.reshape(-1, n_cls)
    prob = t.dtype.kind == "f"
    # the probability kernel takes the gradient as rows (its scratch row unused with it), the index kernel flat
    if with_grad:
        if prob:
            o2, row = out if out.ndim == 2 else out.reshape(-1, n_cls), _empty(x.dtype, 1)
        else:
            o2 = out.reshape(-1)
    elif prob:  # no gradient buffer; the kernel's scratch row of exponentials
        o2, row = _empty(x.dtype, 2), np.empty(n_cls, x.dtype)
    else:  # no gradient buffer (the index kernel's scratch comes with its C call)
        o2 = _empty(x.dtype, 1)
    if prob:
        q = np.ascontiguousarray(t).reshape(x2.shape)
        total, den, _ = _ce_prob_small(x2, q, wc, eps, g, gvec, reduction == "mean", o2, with_grad, inplace, loss,
                                       row)
    else:
        tk = (t if t.dtype == np.intp and t.flags.c_contiguous else np.ascontiguousarray(t, dtype=np.intp))
        tk = tk if tk.ndim == 1 else tk.reshape(-1)
        # the kernel's machine code may assume aligned arrays: the rare unaligned one is copied, and an
        # unaligned gradient buffer gets the gradient copied in from an aligned one
        spill = None
        if with_grad and not o2.flags.aligned:
            spill, o2, inplace = o2, np.empty_like(o2), False
        x2, tk, wc = _aligned(x2), _aligned(tk), _aligned(wc)
        total, den, bad = softmax_small.ce_index_small(x2, tk, wc, ignore_index, eps, g, gvec, reduction == "mean",
                                                        o2, with_grad, inplace, loss)
        if bad >= 0:
            V.class_index_error("target", t.reshape(-1)[bad], n_cls, ignore_index)
        if spill is not None:
            spill[...] = o2
    value = _reduce(loss, total, reduction, den, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


def _aligned(a):
    """``a``, or an aligned copy of it if it is not aligned."""
    return a if a.flags.aligned else a.copy()


def _readonly(a):
    """A read-only view of ``a``: the kernels see every input with one type whether the caller's array
    was writeable or not (Numba compiles a kernel once per argument type)."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


_NO_GRADIENT = {}


def _no_gradient(x):
    """The stand-in gradient buffer of a value-only call: an empty array of ``x``'s dtype and rank."""
    return _empty(x.dtype, x.ndim)


def _empty(dtype, ndim):
    """An empty array of ``dtype`` and ``ndim`` dimensions (cached): a stand-in kernels do not read."""
    key = (dtype, ndim)
    a = _NO_GRADIENT.get(key)
    if a is None:
        a = _NO_GRADIENT[key] = np.empty((0,) + (1,) * (ndim - 1), dtype=dtype)
    return a

def nll(x, t, w, ignore_index, reduction, grad):
    """Driver of ``fastloss.nll_loss``: one fused gather of the target log-probabilities."""
    x3, loss_shape = _class_view(x)
    n, n_cls, n_pos = x3.shape
    wk = _NO_WEIGHT if w is None else _readonly(np.ascontiguousarray(w, dtype=np.float64))
    tk, denominator = _index_targets(t, x3, wk, ignore_index)
    loss = np.empty((n, n_pos))
    out, out3, coef = None, _no_gradient(x3), loss
    if grad is not None:
        out, x3, _ = _gradient_buffer(grad, x, x3)
        out3 = out.reshape(x3.shape)
        coef = _coefficients(grad, reduction, denominator, loss_shape, loss.shape)
    total = 0.0
    if loss.size:
        work = x3.size if grad is not None else loss.size
        total = _run(_nll_chunk, work, n, _readonly(x3), _readonly(tk), wk, ignore_index, coef, out3,
                     grad is not None, loss)
    elif out is not None:
        out[...] = 0
    value = _reduce(loss, total, reduction, denominator, x.dtype, loss_shape)
    return value if grad is None else (value, (out,))


_NO_WEIGHT = _readonly(np.empty(0))


def _softmax_driver(x, axis, grad, logarithm):
    """``log_softmax`` / ``softmax`` of ``x`` along ``axis``, and the vector-Jacobian product."""
    a, c, b = _split_axis(x.shape, axis)
    xc = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(a, c, b)
    y = np.empty(x.shape, dtype=x.dtype)
    y3 = y.reshape(a, c, b)
    g3 = gx3 = _no_gradient(xc)  # stand-ins, not read without a gradient
    gx = None
    if grad is not None:
        g3 = np.ascontiguousarray(np.broadcast_to(grad.array(x.shape, x.dtype), x.shape)).reshape(a, c, b)
        # once a row's (or tile's) y is written the kernels read only y and g: gx may be the input
        gx, xc, _ = _gradient_buffer(grad, x, xc)
        gx3 = gx.reshape(a, c, b)
    xc, g3 = _readonly(xc), _readonly(g3)
    if x.size:
        with_grad = grad is not None
        work = x.size
        if b == 1 and c <= _SHORT_CLASSES:
            _run(_softmax_short, work, -(-a // _SHORT_ROWS), xc[:, :, 0], y3[:, :, 0], logarithm, g3[:, :, 0],
                 gx3[:, :, 0], with_grad)
        elif b == 1:
            _run(_softmax_rows, work, a, xc[:, :, 0], y3[:, :, 0], logarithm, g3[:, :, 0], gx3[:, :, 0], with_grad)
        else:
            _run(_softmax_channels, work, a * _tile_blocks(c, b)[1], xc, y3, logarithm, g3, gx3, with_grad)
    return y if grad is None else (y, (gx,))


def log_softmax(x, axis, grad):
    """Driver of ``fastloss.log_softmax``."""
    return _softmax_driver(x, axis, grad, True)


def softmax(x, axis, grad):
    """Driver of ``fastloss.softmax``."""
    return _softmax_driver(x, axis, grad, False)
