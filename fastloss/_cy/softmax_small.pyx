"""The small-call fast paths of ``cross_entropy`` and ``nll_loss``, in C.

A training loop's typical call, ``cross_entropy(logits, targets)`` on a small batch, spends most of its
time around the kernel: in Python frames, NumPy's allocator and Numba's dispatcher (its unboxing of a
dozen arguments), each of them slower still when a torch step between two calls has evicted them from
the caches. :func:`cross_entropy_fast` and :func:`nll_fast` recognise the plain call in C, allocate
the results through NumPy's C API and call the softmax family's small-call kernel through its C entry
point (``_ce_index_small`` / ``_nll_small`` of :mod:`fastloss.families.softmax.ce_kernels`, handed over
by :mod:`fastloss.families.softmax.fast` through :func:`configure`). They return the result, or
``None`` for every call they do not serve, which then takes the general path with all of its checks.
:func:`ce_index_small` is the general path's door to the same kernel.

The plain call: ``(input, target)`` and at most ``reduction='mean'`` or ``'sum'``; ``input (N, C)``
float32 or float64 and ``target (N,)`` ``intp`` class indices, both exactly ``numpy.ndarray``,
C-contiguous, aligned, in native byte order, with ``0 < N`` and ``0 < N * C < min_chunk`` (for the
value of ``nll_loss``, which reads an element per row, ``N < min_chunk``); a gradient, if asked, of
ones (no ``grad_output``) into a new buffer (no ``out``). A class index out of range also gives
``None``: the general path raises its error.

The GIL is held throughout: a small call is over in microseconds, less than handing the GIL over and
taking it back costs when another thread runs Python.
"""
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc

import numpy as np

cnp.import_array()

ctypedef cnp.npy_intp intp

# The entries' signatures (:mod:`fastloss.families.softmax.fast`): every argument of the kernel, each
# array as a pointer and its length; ``result[0:2]`` receives the float64 sum and the 'mean' divisor,
# the return value is -1 or the first row whose class index is out of range.
# bad = ce(x, t, n, c, w, ignore_index, eps, g, gvec, n_gvec, mean, out, n_out, with_grad, inplace, loss,
#          n_loss, row, n_row, result)
ctypedef intp (*ce_entry_t)(void*, intp*, intp, intp, void*, intp, double, double, double*, intp, intp, void*,
                            intp, intp, intp, double*, intp, void*, intp, double*) noexcept nogil
# bad = nll(x, t, n, c, w, n_w, ignore_index, g, mean, out, n_out, with_grad, result)
ctypedef intp (*nll_entry_t)(void*, intp*, intp, intp, double*, intp, intp, double, intp, void*, intp, intp,
                             double*) noexcept nogil

cdef enum:
    CE = 0
    NLL = 1
    STACK_SCRATCH = 1024  # elements (float64) of the value-only scratch kept on the stack

cdef void* _entries[2][2]  # [loss][0: float32, 1: float64], NULL until first used
cdef object _address = None  # (loss, dtype index) -> the entry's address (compiles it on first use)
cdef object _partials = None  # fastloss._dispatch.float64_partials
cdef intp _min_chunk = 0
cdef intp _block = 0  # the elements of a block of rows of the cross-entropy kernel's scratch
cdef list _ones = [None, None]  # [dtype index]: read-only ones, the class weight of a plain call


def configure(address, partials, intp min_chunk, intp block):
    """Hand over the entries (``address(loss, dtype_index)``, loss 0 cross entropy, 1 nll; dtype 0
    float32, 1 float64), the per-thread float64-partials flag of the Dask backend, the size limit of a
    small call and the kernel's block of rows (its value-only scratch needs ``max(C, block)``)."""
    global _address, _partials, _min_chunk, _block
    _address, _partials, _min_chunk, _block = address, partials, min_chunk, block
    for i in range(2):
        _entries[i][0] = _entries[i][1] = NULL


cdef void* _entry(int loss, int dt) except NULL:
    cdef void* e = _entries[loss][dt]
    if e == NULL:
        e = <void*><size_t>_address(loss, dt)
        _entries[loss][dt] = e
    return e


cdef void* _ones_of(int dt, intp n) except NULL:
    """``n`` (or more) ones of the dtype."""
    cdef cnp.ndarray w = _ones[dt]
    if w is None or cnp.PyArray_DIM(w, 0) < n:
        w = np.ones(max(n, 1024), np.float32 if dt == 0 else np.float64)
        w.flags.writeable = False
        _ones[dt] = w
    return cnp.PyArray_DATA(w)


cdef int _plain(tuple args, dict kwargs, object grad, bint rows_only) except -2:
    """1 for a plain 'mean' call, 0 for 'sum', -1 for any other call (see the module)."""
    if len(args) != 2:
        return -1
    cdef int mean = 1
    if kwargs:
        if len(kwargs) != 1:
            return -1
        r = kwargs.get("reduction")
        if r == "sum":
            mean = 0
        elif r != "mean":
            return -1
    if grad is not None and (grad.grad_output is not None or grad.out is not None):
        return -1
    x, t = args
    if type(x) is not cnp.ndarray or type(t) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray ax = <cnp.ndarray>x
    cdef cnp.ndarray at = <cnp.ndarray>t
    if cnp.PyArray_NDIM(ax) != 2 or cnp.PyArray_NDIM(at) != 1:
        return -1
    cdef int typ = cnp.PyArray_TYPE(ax)
    if (typ != cnp.NPY_FLOAT32 and typ != cnp.NPY_FLOAT64) or cnp.PyArray_TYPE(at) != cnp.NPY_INTP:
        return -1
    # C-contiguous, aligned, native byte order: what the kernel's types say
    if not (cnp.PyArray_ISCARRAY_RO(ax) and cnp.PyArray_ISCARRAY_RO(at)):
        return -1
    cdef intp n = cnp.PyArray_DIM(ax, 0)
    cdef intp c = cnp.PyArray_DIM(ax, 1)
    if cnp.PyArray_DIM(at, 0) != n or n == 0 or c == 0 or (n if rows_only else n * c) >= _min_chunk:
        return -1
    if _partials.on:  # a Dask chunk: its value is a float64 partial sum (the general path's)
        return -1
    return mean


cdef object _answer(intp bad, double* result, int mean, int typ, object grad, object g):
    """A fast path's answer from its kernel's: ``None`` when a class index was out of range (``bad``),
    else the reduced loss as the general path forms it (a 0-d array of the input's dtype from
    ``result = (total, divisor)``), with ``grad`` as ``(value, (g,))``."""
    if bad >= 0:
        return None
    cdef double v = result[0]
    if mean:
        v = result[0] / result[1] if result[1] != 0.0 else float("nan")
    cdef cnp.ndarray a = cnp.PyArray_EMPTY(0, NULL, typ, 0)
    if typ == cnp.NPY_FLOAT32:
        (<float*>cnp.PyArray_DATA(a))[0] = <float>v
    else:
        (<double*>cnp.PyArray_DATA(a))[0] = v
    return a if grad is None else (a, (g,))


cdef intp _call_ce(ce_entry_t entry, cnp.ndarray x, cnp.ndarray t, void* w, intp ignore_index, double eps,
                   double g, double* gvec, intp n_gvec, int mean, void* out, intp n_out, bint with_grad,
                   bint inplace, double* loss, intp n_loss, double* result) except -2:
    """Call the cross-entropy entry on ``x (N, C)``, ``t (N,)``; a value alone (no ``with_grad``) gets
    the kernel's scratch for the exponentials of a block of rows, ``max(C, block)`` elements, on the
    stack when they fit there, else from the heap."""
    cdef intp n = cnp.PyArray_DIM(x, 0)
    cdef intp c = cnp.PyArray_DIM(x, 1)
    cdef double stack[STACK_SCRATCH]
    cdef void* scratch = stack
    cdef intp n_row = 0 if with_grad else max(c, _block)
    if n_row > STACK_SCRATCH:
        scratch = PyMem_Malloc(n_row * sizeof(double))
        if scratch == NULL:
            raise MemoryError()
    try:
        return entry(cnp.PyArray_DATA(x), <intp*>cnp.PyArray_DATA(t), n, c, w, ignore_index, eps, g, gvec, n_gvec,
                     mean, out, n_out, with_grad, inplace, loss, n_loss, scratch, n_row, result)
    finally:
        if scratch != <void*>stack:
            PyMem_Free(scratch)


cdef inline bint _fits(cnp.ndarray a, int typ):
    """``a`` is of type ``typ``, C-contiguous, aligned and in native byte order (the entries' types)."""
    return cnp.PyArray_TYPE(a) == typ and cnp.PyArray_ISCARRAY_RO(a)


def ce_index_small(cnp.ndarray x, cnp.ndarray t, cnp.ndarray w, intp ignore_index, double eps, double g,
                   cnp.ndarray gvec, bint mean, cnp.ndarray out, bint with_grad, bint inplace, cnp.ndarray loss):
    """The general path's call of the small cross-entropy kernel (``_ce_index_small``'s arguments as
    arrays, its scratch provided here) through the entry the fast path calls, so that both give the
    same bits: ``(total, den, bad)``. Every array must be C-contiguous, aligned, in native byte order
    and of the kernel's dtype (``x``'s for ``w`` and ``out``; ``intp`` for ``t``, float64 for ``gvec``
    and ``loss``),
    ``x`` of shape ``(N, C)`` with ``t (N,)`` and ``w (C,)``: ``TypeError`` or ``ValueError``
    otherwise (the driver's mistake, not the caller's)."""
    cdef int typ = cnp.PyArray_TYPE(x)
    if cnp.PyArray_NDIM(x) != 2 or (typ != cnp.NPY_FLOAT32 and typ != cnp.NPY_FLOAT64):
        raise TypeError("ce_index_small: x must be a 2-D float32 or float64 array")
    if not (_fits(x, typ) and _fits(t, cnp.NPY_INTP) and _fits(w, typ) and _fits(gvec, cnp.NPY_FLOAT64)
            and _fits(out, typ) and _fits(loss, cnp.NPY_FLOAT64)):
        raise TypeError("ce_index_small: an array is not C-contiguous, aligned and native of the kernel's dtype")
    cdef intp n = cnp.PyArray_DIM(x, 0)
    cdef intp c = cnp.PyArray_DIM(x, 1)
    cdef intp n_out = cnp.PyArray_SIZE(out), n_gvec = cnp.PyArray_SIZE(gvec), n_loss = cnp.PyArray_SIZE(loss)
    # the kernel writes what these say, unchecked: sizes that do not fit would write past the buffers
    if (cnp.PyArray_SIZE(t) != n or cnp.PyArray_SIZE(w) != c or (with_grad and n_out != n * c)
            or (n_gvec != 0 and n_gvec != n) or (n_loss != 0 and n_loss != n)):
        raise ValueError("ce_index_small: an array's size does not match the input's")
    cdef double result[2]
    cdef intp bad = _call_ce(<ce_entry_t>_entry(CE, typ == cnp.NPY_FLOAT64), x, t, cnp.PyArray_DATA(w), ignore_index,
                             eps, g, <double*>cnp.PyArray_DATA(gvec), n_gvec, mean, cnp.PyArray_DATA(out), n_out,
                             with_grad, inplace, <double*>cnp.PyArray_DATA(loss), n_loss, result)
    return result[0], result[1], bad


def cross_entropy_fast(tuple args, dict kwargs, grad):
    """``cross_entropy(input, target[, reduction=...])``'s plain small call: its value, or with
    ``grad`` ``(value, (gradient,))``; ``None`` for any other call."""
    cdef int mean = _plain(args, kwargs, grad, False)
    if mean < 0:
        return None
    cdef cnp.ndarray x = <cnp.ndarray>args[0], t = <cnp.ndarray>args[1]
    cdef int typ = cnp.PyArray_TYPE(x)
    cdef intp n = cnp.PyArray_DIM(x, 0)
    cdef intp c = cnp.PyArray_DIM(x, 1)
    cdef int dt = typ == cnp.NPY_FLOAT64
    cdef double result[2]
    cdef cnp.ndarray g = None
    cdef void* out = result  # (a value alone: no gradient buffer, nothing written there)
    if grad is not None:
        g = cnp.PyArray_EMPTY(2, cnp.PyArray_DIMS(x), typ, 0)
        out = cnp.PyArray_DATA(g)
    cdef intp bad = _call_ce(<ce_entry_t>_entry(CE, dt), x, t, _ones_of(dt, c), -100, 0.0, 1.0, result, 0, mean, out,
                             n * c if grad is not None else 0, grad is not None, False, result, 0, result)
    return _answer(bad, result, mean, typ, grad, g)


def nll_fast(tuple args, dict kwargs, grad):
    """``nll_loss(input, target[, reduction=...])``'s plain small call, as :func:`cross_entropy_fast`."""
    cdef int mean = _plain(args, kwargs, grad, grad is None)
    if mean < 0:
        return None
    cdef cnp.ndarray x = <cnp.ndarray>args[0], t = <cnp.ndarray>args[1]
    cdef int typ = cnp.PyArray_TYPE(x)
    cdef nll_entry_t entry = <nll_entry_t>_entry(NLL, typ == cnp.NPY_FLOAT64)
    cdef double result[2]
    cdef intp bad
    cdef cnp.ndarray g = None
    cdef void* out = result
    cdef intp n = cnp.PyArray_DIM(x, 0)
    cdef intp n_out = 0
    if grad is not None:
        g = cnp.PyArray_EMPTY(2, cnp.PyArray_DIMS(x), typ, 0)
        out, n_out = cnp.PyArray_DATA(g), n
    bad = entry(cnp.PyArray_DATA(x), <intp*>cnp.PyArray_DATA(t), n, cnp.PyArray_DIM(x, 1), result, 0, -100, 1.0, mean,
                out, n_out, grad is not None, result)
    return _answer(bad, result, mean, typ, grad, g)
