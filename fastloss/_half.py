"""float16 inputs (contract §3): computed in float32, accumulated in float64, returned in float16.

Every loss takes float16 arrays through this one module rather than through float16 twins of each
kernel: the ``@loss`` wrapper (:mod:`fastloss._registry`) sends a call holding a float16 array here,
which converts each float16 array argument to float32, runs the loss's float32 path (whose sums are
accumulated in float64, as for every float32 input) and rounds the results to float16:

* the value, when every differentiated input present is float16 (a float16 prediction beside a
  float32 one promotes to float32, as ``numpy.result_type`` and torch do);
* each gradient, when its own input is float16 (a gradient has its input's dtype); a caller's float16
  ``out=`` buffer receives the rounded gradient, also when it is the input itself (in place).

This is what torch does on the CPU for float16 (arithmetic in float32 "opmath"), so values agree with
torch to float16 rounding. The price is one conversion pass over each float16 argument and one over
each result: float16 data is converted rather than read by the kernels directly. Integer arrays
(class indices, lengths) and Python numbers pass through unchanged. Device arrays (CuPy, Numba) are
converted on their device.
"""
from __future__ import annotations

import numbers

import numpy as np

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)


def is_half(a) -> bool:
    """True for an array (NumPy, CuPy, Numba device, any byte order) of dtype float16."""
    dt = getattr(a, "dtype", None)
    return dt is not None and getattr(dt, "char", None) == "e" and not isinstance(a, np.generic)


def _astype(a, dtype):
    if isinstance(a, np.ndarray):
        return a.astype(dtype)
    from ._dispatch import is_device_array

    if is_device_array(a):
        from . import _cuda_arrays

        return _cuda_arrays.astype(a, dtype)
    return a


def _up(a):
    return _astype(a, F32) if is_half(a) else a


def _down(a):
    """A float32 result rounded to float16 (a reduced device result keeps its ``float()``)."""
    if np.dtype(a.dtype) != F32:  # a float64 partial sum of the Dask backend stays exact
        return a
    if isinstance(a, (np.ndarray, np.generic)):
        return a.astype(F16)
    from . import _cuda_arrays

    if _cuda_arrays.is_cupy(a):
        return a.astype(F16)
    out = _cuda_arrays.astype(_cuda_arrays.reshape(a, (max(a.size, 1),)) if a.ndim == 0 else a, F16)
    return _cuda_arrays.scalar_view(out) if a.ndim == 0 else out


def _store(g, out):
    """Round gradient ``g`` into the caller's float16 buffer ``out`` (which may be an input)."""
    if isinstance(out, np.ndarray):
        np.copyto(out, g, casting="unsafe")
        return out
    from . import _cuda_arrays

    half = _cuda_arrays.astype(g, F16)
    if _cuda_arrays.is_cupy(out):
        out[...] = half
    else:
        out.copy_to_device(half)
    return out


def call(fn, spec, args, kwargs, grad):
    """Run loss ``fn`` (the undecorated public function) on float16 arguments; see the module doc."""
    from ._registry import GradRequest

    diffs = _diff_inputs(spec, args, kwargs)
    half_value = bool(diffs) and all(is_half(a) for a in diffs)
    args32 = tuple(_up(a) for a in args)
    kwargs32 = {k: _up(v) for k, v in kwargs.items()}
    if grad is None:
        value = fn(*args32, _grad=None, **kwargs32)
        return _down(value) if half_value else value

    outs = grad.out if isinstance(grad.out, (tuple, list)) else (grad.out,)
    outs = tuple(outs) + (None,) * (len(diffs) - len(outs))
    # a float16 buffer cannot take the float32 kernels' output: they write a fresh float32 one,
    # rounded into the caller's buffer below; float32/float64 buffers go to the kernels as given
    outs32 = tuple(None if is_half(o) else o for o in outs)
    out32 = outs32 if isinstance(grad.out, (tuple, list)) else outs32[0]
    value, grads = fn(*args32, _grad=GradRequest(_up(grad.grad_output), out32), **kwargs32)
    rounded = []
    for a, g, o in zip(diffs, grads, outs):
        if is_half(o):
            rounded.append(_store(g, o))
        elif is_half(a):
            rounded.append(_down(g))
        else:
            rounded.append(g)
    return (_down(value) if half_value else value), tuple(rounded)


def _diff_inputs(spec, args, kwargs) -> list:
    """The differentiated inputs present in the call, in ``spec.diff`` order (as the kernels' grads):
    an optional one left out (None) or given as a number (``gaussian_nll_loss``'s float ``var``) has no
    gradient."""
    found = []
    for name, pos in zip(spec.diff, spec.diff_positions):
        a = args[pos] if pos is not None and pos < len(args) else kwargs.get(name)
        if a is not None and not isinstance(a, (numbers.Number, np.generic)):
            found.append(a)
    return found
