"""Argument checks shared by every loss, each with one wording (the contract, docs/contract.md §4).

All checks run before any kernel and never modify their arguments. They use only ``.shape`` and
``.dtype`` except where the values themselves must be checked (class indices, BCE's [0, 1] range); those
use the array's own ``min``/``max`` so they work for NumPy and CuPy alike (Numba device arrays, which
have neither, use a small reduction kernel of :mod:`fastloss._cuda_arrays`).
"""
from __future__ import annotations

import numpy as np

REDUCTIONS = ("none", "mean", "sum")
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def reduction(value, allowed=REDUCTIONS) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"reduction={value!r} is not valid; use one of {', '.join(map(repr, allowed))}")
    return value


def prediction(name: str, a):
    """A prediction must be a float32 or float64 array (``TypeError`` otherwise)."""
    dt = np.dtype(a.dtype)
    if dt not in FLOATS:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {dt}")
    return a


def common_float(**preds):
    """Check several predictions and return their common dtype (float32 only if all are float32)."""
    for name, a in preds.items():
        prediction(name, a)
    return np.result_type(*[a.dtype for a in preds.values()])


def as_float(name: str, a, dtype):
    """Convert a target or weight to ``dtype``: bool, integer and float data are accepted, complex,
    string and object arrays are a ``TypeError``. Never modifies ``a`` (a copy when the dtype changes).
    """
    if a is None:
        return None
    dt = np.dtype(a.dtype)
    if dt.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {dt}")
    if dt == dtype:
        return a
    dev = _numba_device_helpers(a)
    return dev.astype(a, dtype) if dev is not None else a.astype(dtype)


def same_shape(name1: str, a, name2: str, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name1} and {name2} must have the same shape, got {name1} {tuple(a.shape)} and "
            f"{name2} {tuple(b.shape)}"
        )


def broadcastable(name: str, a, shape, to: str = "input") -> None:
    try:
        ok = np.broadcast_shapes(tuple(a.shape), tuple(shape)) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(a.shape)} does not broadcast to the {to}'s shape {tuple(shape)}")


def nonnegative(name: str, value) -> float:
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def positive(name: str, value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {value}")
    return value


def in_closed_unit(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def values_in_unit_interval(name: str, a) -> None:
    """BCE's input and target: every value in [0, 1]. NaN passes and propagates (the contract: NaN in the data is
    never an error), although PyTorch's BCE kernel refuses it."""
    if a.size == 0:
        return
    dev = _numba_device_helpers(a)
    if isinstance(a, np.ndarray):
        # One parallel Numba pass counting the values outside [0, 1] (NaN not counted) instead of
        # min(), max() and a NaN-filtering copy: this check runs on every BCE call.
        from .families.pointwise import values_outside_unit_interval

        if not values_outside_unit_interval(a):
            return
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    elif dev is not None:
        lo_hi = dev.value_range(a)  # of the non-NaN values
        if lo_hi is None:
            return
        lo, hi = lo_hi
    else:
        lo, hi = float(a.min()), float(a.max())
    # NaN makes min/max NaN; test the non-NaN values then (NaN is data, not an error).
    if lo != lo or hi != hi:
        xp = _namespace(a)
        finite = a[~xp.isnan(a)]
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
    if lo < 0.0 or hi > 1.0:
        bad = lo if lo < 0.0 else hi
        raise ValueError(f"{name} must hold probabilities in [0, 1], found {bad}")


def class_indices(name: str, target, n_classes: int, ignore_index: int) -> None:
    """Integer class targets in ``[0, n_classes)`` or equal to ``ignore_index`` (``IndexError`` naming
    the first bad value otherwise, as PyTorch)."""
    dt = np.dtype(target.dtype)
    if dt.kind not in "iu":
        raise TypeError(f"{name} of class indices must be an integer array, got dtype {dt}")
    if target.size == 0:
        return
    dev = _numba_device_helpers(target)
    if dev is not None:
        lo, hi = dev.value_range(target)
        if 0 <= lo and hi < n_classes:
            return
        value = dev.first_outside(target, 0, n_classes, ignore_index)
        if value is not None:
            class_index_error(name, value, n_classes, ignore_index)
        return
    lo, hi = int(target.min()), int(target.max())
    if 0 <= lo and hi < n_classes:
        return
    xp = _namespace(target)
    bad = (target < 0) | (target >= n_classes)
    bad &= target != ignore_index
    if bool(bad.any()):
        class_index_error(name, target[bad].ravel()[0], n_classes, ignore_index)


def class_index_error(name: str, value, n_classes: int, ignore_index: int):
    """Raise the ``IndexError`` of a class index ``value`` outside ``[0, n_classes)``."""
    raise IndexError(f"{name} {int(value)} is out of bounds for {n_classes} classes (ignore_index={ignore_index})")


def _numba_device_helpers(a):
    """:mod:`fastloss._cuda_arrays` for Numba device arrays (also the CUDA simulator's), which have no
    ``astype``/``min``/``max`` of their own; ``None`` for NumPy and CuPy arrays. Imports nothing for
    host arrays."""
    if isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] == "cupy":
        return None
    from ._dispatch import is_device_array

    if not is_device_array(a):
        return None
    from . import _cuda_arrays

    return _cuda_arrays


def _namespace(a):
    if isinstance(a, np.ndarray):
        return np
    import importlib

    return importlib.import_module(type(a).__module__.split(".")[0])


def pointwise(x, t, w=None, *, weight: str = "same", names=("input", "target", "weight")):
    """The usual check of a pointwise loss: float prediction ``x``; ``t`` of the same shape, converted
    to ``x``'s dtype; optional ``w`` of the same shape (``weight='same'``) or broadcastable to it
    (``weight='broadcast'``). Returns ``(x, t, w)``."""
    xn, tn, wn = names
    prediction(xn, x)
    t = as_float(tn, t, x.dtype)
    same_shape(xn, x, tn, t)
    if w is not None:
        w = as_float(wn, w, x.dtype)
        if weight == "same":
            same_shape(xn, x, wn, w)
        else:
            broadcastable(wn, w, x.shape)
    return x, t, w


def nonnegative_values(name: str, a) -> None:
    """Every value of the array ``a`` is >= 0 (NaN passes: data, not an error); ``ValueError`` otherwise."""
    if a.size == 0:
        return
    dev = _numba_device_helpers(a)
    if dev is not None:
        lo_hi = dev.value_range(a)  # of the non-NaN values
        bad = lo_hi is not None and lo_hi[0] < 0.0
    else:
        bad = bool((a < 0).any())
    if bad:
        raise ValueError(f"{name} has negative entry/entries")


def gaussian_var(x, var):
    """``gaussian_nll_loss``'s ``var``: a Python float (>= 0), or an array (converted to ``x``'s dtype,
    every value >= 0) of ``x``'s shape, of ``x.shape[:-1]``, or of ``x``'s shape with exactly one
    dimension of size 1 where ``x``'s differs (torch 2.13's rules). Returns the float or the array."""
    if not hasattr(var, "shape"):
        v = float(var)
        if v < 0:
            raise ValueError(f"var has negative entry/entries, got {v}")
        return v
    var = as_float("var", var, x.dtype)
    nonnegative_values("var", var)
    vs, xs = tuple(var.shape), tuple(x.shape)
    if vs != xs and not (xs and vs == xs[:-1]):
        differing = [m for n, m in zip(xs, vs) if n != m]
        if len(vs) != len(xs) or differing != [1]:
            raise ValueError(f"var of shape {vs} is of incorrect size for input of shape {xs}: use input's shape, "
                             f"input's shape without its last dimension, or a dimension of size 1 where they differ")
    return var


def _float_target_message(x, t, want) -> str:
    """Why a float target of the wrong shape was refused: float targets are class probabilities of
    ``input``'s shape; a float array of the index shape is most likely class indices stored as floats."""
    got, shape = tuple(t.shape), tuple(x.shape)
    if got == want:
        return (f"target of dtype {np.dtype(t.dtype)} and shape {got} looks like class indices stored as floats: "
                f"class indices must be integers (convert with target.astype(numpy.int64)); a float target "
                f"holds class probabilities and must have input's shape {shape}")
    return (f"a float target holds class probabilities and must have input's shape {shape}, got target {got} "
            f"(class indices must be an integer array of shape {want})")


def classification(x, t, w, ignore_index, *, probabilities_allowed: bool = True):
    """Check ``(input, target, weight)`` of ``cross_entropy``/``nll_loss``; classes on axis 1.

    ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``. ``target`` holds integer class indices
    of shape ``()``, ``(N,)`` or ``(N, d1, ..., dk)``, or (where allowed) float class probabilities of
    ``input``'s shape, converted to ``input``'s dtype. ``weight`` is ``(C,)``. Returns ``(x, t, w)``.
    """
    prediction("input", x)
    if x.ndim == 0:
        raise ValueError("input must have at least 1 dimension (classes), got a 0-d array")
    n_classes = x.shape[0] if x.ndim == 1 else x.shape[1]
    tdt = np.dtype(t.dtype)
    want = () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])
    if tdt.kind == "f" and probabilities_allowed:
        if tuple(t.shape) != tuple(x.shape):
            raise ValueError(_float_target_message(x, t, want))
        t = as_float("target", t, x.dtype)
    else:
        if tdt.kind not in "iu":
            if tdt.kind == "f":  # nll_loss: class indices only
                raise TypeError(f"target holds class indices, which must be integers, got dtype {tdt}: "
                                f"convert it with target.astype(numpy.int64)")
            raise TypeError(
                f"target must hold integer class indices{' or float probabilities' if probabilities_allowed else ''}, "
                f"got dtype {tdt}"
            )
        if tuple(t.shape) != want:
            raise ValueError(
                f"input of shape {tuple(x.shape)} needs class-index target of shape {want}, "
                f"got target {tuple(t.shape)}"
            )
        if not isinstance(t, np.ndarray):
            # NumPy targets are range-checked by the CPU drivers, in the pass over the targets they make
            # anyway, before any kernel writes (fastloss.families.softmax._index_targets)
            class_indices("target", t, n_classes, int(ignore_index))
    if w is not None:
        w = as_float("weight", w, x.dtype)
        if tuple(w.shape) != (n_classes,):
            raise ValueError(f"weight must have shape ({n_classes},) for {n_classes} classes, got {tuple(w.shape)}")
    return x, t, w


def large_vocabulary_options(z_loss, softcap):
    """``z_loss >= 0`` and ``softcap`` either ``None`` or ``> 0`` (``ValueError`` otherwise).
    Returns ``(float(z_loss), None or float(softcap))``."""
    z_loss = float(z_loss)
    if not z_loss >= 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss}")
    if softcap is not None:
        softcap = float(softcap)
        if not softcap > 0:
            raise ValueError(f"softcap must be greater than 0 (or None), got {softcap}")
    return z_loss, softcap


def chunk_size(value):
    """``None`` or an integer ``>= 1`` (``ValueError`` otherwise; ``TypeError`` for a non-integer)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"chunk_size must be an integer or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"chunk_size must be at least 1, got {value}")
    return int(value)


def linear_classification(x, lw, t, b, w, ignore_index):
    """Check ``linear_cross_entropy``'s ``(input, linear_weight, target, linear_bias, weight)``.

    ``input (N, H)`` or ``(H,)`` and ``linear_weight (V, H)`` of one float dtype, ``linear_bias (V,)``
    of that dtype; ``target`` class indices ``(N,)`` (``()`` for a 1-D input) in ``[0, V)`` or
    ``ignore_index``, or float probabilities ``(N, V)`` (``(V,)``) converted to input's dtype;
    ``weight (V,)``. Shapes are checked before class indices. Returns ``(t, w)``.
    """
    prediction("input", x)
    prediction("linear_weight", lw)
    if b is not None:
        prediction("linear_bias", b)
    dtypes = {np.dtype(a.dtype) for a in (x, lw, b) if a is not None}
    if len(dtypes) > 1:
        raise TypeError(f"input, linear_weight and linear_bias must have one dtype, got {', '.join(map(str, dtypes))}")
    xs, ws = tuple(x.shape), tuple(lw.shape)  # tuples: device arrays' shapes refuse [-1]
    if x.ndim not in (1, 2):
        raise ValueError(f"input must be (N, H) or (H,), got shape {tuple(x.shape)}")
    if lw.ndim != 2 or ws[1] != xs[-1]:
        raise ValueError(
            f"linear_weight must be (V, {xs[-1]}) for input of shape {tuple(x.shape)}, "
            f"got linear_weight {tuple(lw.shape)}"
        )
    n_cls = ws[0]
    if b is not None and tuple(b.shape) != (n_cls,):
        raise ValueError(f"linear_bias must have shape ({n_cls},) for linear_weight {tuple(lw.shape)}, got {tuple(b.shape)}")
    if w is not None:
        w = as_float("weight", w, x.dtype)
        if tuple(w.shape) != (n_cls,):
            raise ValueError(f"weight must have shape ({n_cls},) for {n_cls} classes, got {tuple(w.shape)}")
    rows = () if x.ndim == 1 else (xs[0],)
    tdt = np.dtype(t.dtype)
    if tdt.kind == "f":
        if tuple(t.shape) != rows + (n_cls,):
            raise ValueError(
                f"probability target must have shape {rows + (n_cls,)} for input {tuple(x.shape)} and "
                f"linear_weight {tuple(lw.shape)}, got target {tuple(t.shape)}"
            )
        t = as_float("target", t, x.dtype)
    else:
        if tdt.kind not in "iu":
            raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {tdt}")
        if tuple(t.shape) != rows:
            raise ValueError(f"input of shape {tuple(x.shape)} needs class-index target of shape {rows}, got {tuple(t.shape)}")
        class_indices("target", t, n_cls, int(ignore_index))
    return t, w
