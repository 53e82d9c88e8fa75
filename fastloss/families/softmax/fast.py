"""Small-call fast paths of ``cross_entropy`` and ``nll_loss``: the plain call straight to its kernel.

A training loop's typical call, ``cross_entropy(logits, targets)`` on a small batch, spends most of its
time in the layers around the kernel (argument checks, routing, dispatch, the driver's choices), not in
the kernel. :data:`FAST` maps a loss's name to a function ``fast(args, kwargs, grad)`` which the
registry (:func:`fastloss._registry.loss`) tries first: it recognises, in one pass of cheap tests,
the plain call this module serves — NumPy arrays, ``input (N, C)`` float32/float64 C-contiguous below
:data:`.drivers.MIN_CHUNK` elements (for the value of ``nll_loss``, rows), ``target (N,)`` C-contiguous ``intp`` class indices, no other
argument than ``reduction='mean'``/``'sum'``, a gradient (if asked) of ones into a new buffer — and
calls the very small-call kernel the general path calls with the same arguments, so the results are
the same bits. It returns ``None`` for every other call (which then takes the general path, with all
of its checks), and also when a class index is out of range: the general path then raises its error.
"""
from __future__ import annotations

import numpy as np

from .ce_kernels import _ce_index_small, _nll_small, small_scratch
from .drivers import _NO_ROWS, _NO_WEIGHT, MIN_CHUNK, _empty, _ones, _reduce

_NDARRAY = np.ndarray
# NumPy's dtypes of native byte order are singletons: identity is the cheapest test (another
# byte order is another object, and takes the general path)
_INTP, _F32, _F64 = np.dtype(np.intp), np.dtype(np.float32), np.dtype(np.float64)


def _plain(args, kwargs, grad, rows_only=False):
    """``(x, t, mean)`` of a plain small call (see the module), else ``None``; ``rows_only``: below
    :data:`.drivers.MIN_CHUNK` rows, whatever the classes (a value of ``nll_loss`` reads one element
    per row)."""
    if len(args) != 2:
        return None
    mean = True
    if kwargs:
        if len(kwargs) != 1 or "reduction" not in kwargs:
            return None
        r = kwargs["reduction"]
        if r == "sum":
            mean = False
        elif r != "mean":
            return None
    if grad is not None and (grad.grad_output is not None or grad.out is not None):
        return None
    x, t = args
    if type(x) is not _NDARRAY or type(t) is not _NDARRAY or x.ndim != 2 or t.ndim != 1:
        return None
    n, n_cls = x.shape
    dtype = x.dtype
    if (t.dtype is not _INTP or (dtype is not _F32 and dtype is not _F64) or t.shape[0] != n or n == 0 or n_cls == 0
            or (n if rows_only else n * n_cls) >= MIN_CHUNK or not (x.flags.c_contiguous and t.flags.c_contiguous)):
        return None
    return x, t, mean


def _result(total, den, mean, dtype):
    """The reduced value, as the general path's :func:`.drivers._reduce` forms it."""
    return _reduce(_NO_ROWS, total, "mean" if mean else "sum", den, dtype, ())


def cross_entropy_fast(args, kwargs, grad):
    """``cross_entropy(input, target[, reduction=...])``'s plain small call, or ``None``."""
    plain = _plain(args, kwargs, grad)
    if plain is None:
        return None
    x, t, mean = plain
    dtype = x.dtype
    n_cls = x.shape[1]
    if grad is None:
        flat, row = _empty(dtype, 1), small_scratch(x.shape[0], n_cls, dtype)
    else:  # the kernel writes the gradient flat
        flat, row = np.empty(x.size, dtype), _empty(dtype, 1)
    total, den, bad = _ce_index_small(x, t, _ones(n_cls, dtype), -100, 0.0, 1.0, _NO_ROWS, mean, flat,
                                      grad is not None, False, _NO_ROWS, row)
    if bad >= 0:
        return None
    value = _result(total, den, mean, dtype)
    return value if grad is None else (value, (flat.reshape(x.shape),))


def nll_fast(args, kwargs, grad):
    """``nll_loss(input, target[, reduction=...])``'s plain small call, or ``None``."""
    plain = _plain(args, kwargs, grad, rows_only=grad is None)
    if plain is None:
        return None
    x, t, mean = plain
    dtype = x.dtype
    out = _empty(dtype, 2) if grad is None else np.empty(x.shape, dtype)
    total, den, bad = _nll_small(x, t, _NO_WEIGHT, -100, 1.0, mean, out, grad is not None)
    if bad >= 0:
        return None
    value = _result(total, den, mean, dtype)
    return value if grad is None else (value, (out,))


FAST = {"cross_entropy": cross_entropy_fast, "nll_loss": nll_fast}
