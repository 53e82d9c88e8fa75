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
    """A prediction must be a float32 or float64 array (``TypeError`` otherwise); float16 arrays never
    reach the checks (fastloss._half converts them to float32 first)."""
    dt = np.dtype(a.dtype)
    if dt not in FLOATS:
        raise TypeError(f"{name} must be a float16, float32 or float64 array, got dtype {dt}")
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
        lo, hi = (float(v) for v in _min_max(a))
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
    lo, hi = (int(v) for v in _min_max(target))
    if 0 <= lo and hi < n_classes:
        return
    bad = (target < 0) | (target >= n_classes)
    bad &= target != ignore_index
    if bool(bad.any()):
        class_index_error(name, target[bad].ravel()[0], n_classes, ignore_index)


def class_index_error(name: str, value, n_classes: int, ignore_index: int):
    """Raise the ``IndexError`` of a class index ``value`` outside ``[0, n_classes)``."""
    raise IndexError(f"{name} {int(value)} is out of bounds for {n_classes} classes (ignore_index={ignore_index})")


def _min_max(a):
    """``(a.min(), a.max())``; for a CuPy array both come back in one device-to-host copy, so a check
    waits for the GPU once, not twice."""
    if type(a).__module__.split(".")[0] == "cupy":
        xp = _namespace(a)
        return tuple(xp.stack((a.min(), a.max())).tolist())
    return a.min(), a.max()


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


def _margin_input(x):
    """``input`` of the margin losses: float, ``(N, C)``, ``(C,)`` or 0-d (one class), ``C > 0``.
    Returns ``(N, C)``, the rows and classes it holds."""
    prediction("input", x)
    shape = tuple(x.shape)
    if x.ndim > 2 or (x.ndim and shape[-1] == 0):
        raise ValueError(f"input must be (N, C) or (C,) with C > 0 classes (N may be 0), got shape {shape}")
    if x.ndim == 2:
        return shape
    return 1, (shape[0] if shape else 1)


def _margin_target_dtype(t):
    tdt = np.dtype(t.dtype)
    if tdt.kind not in "iu":
        hint = ": convert it with target.astype(numpy.int64)" if tdt.kind == "f" else ""
        raise TypeError(f"target holds class indices, which must be integers, got dtype {tdt}{hint}")


def multi_margin(x, t, w, p):
    """Check ``multi_margin_loss``'s ``(input, target, weight, p)``: ``input`` as
    :func:`_margin_input`; ``target`` integer class indices of ``N`` elements, ``(N,)`` or ``()``;
    ``weight (C,)`` (converted to input's dtype); ``p`` 1 or 2 (``ValueError``). Device targets are
    range-checked here; NumPy targets by the CPU driver, before any kernel writes. Returns ``(t, w, p)``."""
    if isinstance(p, (bool, np.bool_)) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    n, n_cls = _margin_input(x)
    _margin_target_dtype(t)
    if t.ndim > 1 or t.size != n:
        raise ValueError(f"input of shape {tuple(x.shape)} needs a class-index target of shape ({n},) or, "
                         f"for one sample, (), got target {tuple(t.shape)}")
    if w is not None:
        w = as_float("weight", w, x.dtype)
        if tuple(w.shape) != (n_cls,):
            raise ValueError(f"weight must have shape ({n_cls},) for {n_cls} classes, got {tuple(w.shape)}")
    if not isinstance(t, np.ndarray):
        margin_targets(t, n_cls, False)
    return t, w, int(p)


def multilabel_margin(x, t):
    """Check ``multilabel_margin_loss``'s ``(input, target)``: ``input`` as :func:`_margin_input`,
    ``target`` integer class indices of input's shape, each in ``[-1, C)`` (device arrays here, NumPy
    arrays by the CPU driver)."""
    _, n_cls = _margin_input(x)
    _margin_target_dtype(t)
    if tuple(t.shape) != tuple(x.shape):
        raise ValueError(f"target must have input's shape {tuple(x.shape)}, got target {tuple(t.shape)}")
    if not isinstance(t, np.ndarray):
        margin_targets(t, n_cls, True)
    return t


def margin_targets(t, n_classes: int, end_marker: bool) -> None:
    """Class indices of a margin loss in ``[0, n_classes)``, or ``-1`` where ``end_marker``
    (``IndexError`` naming the first bad value). For device arrays; NumPy targets are checked by the
    CPU drivers in a pass they make anyway."""
    if t.size == 0:
        return
    low = -1 if end_marker else 0
    dev = _numba_device_helpers(t)
    if dev is not None:
        lo, hi = dev.value_range(t)
        if lo >= low and hi < n_classes:
            return
        margin_index_error(dev.first_outside(t, low, n_classes, low), n_classes, end_marker)
    lo, hi = (int(v) for v in _min_max(t))
    if lo >= low and hi < n_classes:
        return
    bad = (t < low) | (t >= n_classes)
    margin_index_error(t[bad].ravel()[0], n_classes, end_marker)


def margin_index_error(value, n_classes: int, end_marker: bool):
    """Raise the ``IndexError`` of a margin loss's class index ``value`` out of range."""
    if end_marker:
        raise IndexError(f"target {int(value)} is out of bounds for {n_classes} classes (class indices in "
                         f"[0, {n_classes}), -1 ends a row's list)")
    raise IndexError(f"target {int(value)} is out of bounds for {n_classes} classes")


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


# --------------------------------------------------------------------------------------------------
# ctc_loss
# --------------------------------------------------------------------------------------------------
def host_integers(name: str, a) -> np.ndarray:
    """Integer data (an int, a sequence of ints, a host or device array) as a host int64 array.

    Lengths and CTC targets are read on the host, as torch reads them (a device array is copied: a few
    integers per sequence). Floats, booleans and other types are a ``TypeError``.
    """
    from ._dispatch import is_device_array

    if is_device_array(a):
        host = a.get() if hasattr(a, "get") and not hasattr(a, "copy_to_host") else a.copy_to_host()
        host = np.asarray(host)
    elif isinstance(a, (bool, np.bool_)):
        raise TypeError(f"{name} must hold integers, got {type(a).__name__}")
    else:
        try:
            host = np.asarray(a)
        except Exception:  # ragged sequences and the like
            raise TypeError(f"{name} must be an integer, a sequence of integers or an integer array") from None
    if host.dtype.kind not in "iu" and not (host.size == 0 and host.dtype.kind == "f" and not isinstance(a, np.ndarray)):
        raise TypeError(f"{name} must hold integers, got dtype {host.dtype}")
    return host.astype(np.int64, copy=False)


class CtcProblem:
    """``ctc_loss``'s checked arguments: ``batched``, the lengths and the labels on the host (int64).

    ``labels`` holds every sequence's target labels back to back (padding dropped), sequence ``n``'s
    at ``labels[offsets[n]:offsets[n] + target_lengths[n]]``.
    """

    __slots__ = ("batched", "input_lengths", "target_lengths", "offsets", "labels")

    def __init__(self, batched, input_lengths, target_lengths, offsets, labels):
        self.batched = batched
        self.input_lengths = np.ascontiguousarray(input_lengths, dtype=np.int64)
        self.target_lengths = np.ascontiguousarray(target_lengths, dtype=np.int64)
        self.offsets, self.labels = offsets, labels


def ctc(x, targets, input_lengths, target_lengths, blank) -> CtcProblem:
    """Check ``ctc_loss``'s arguments (contract §4) and return a :class:`CtcProblem`.

    ``x`` (log-probabilities) is ``(T, N, C)`` with targets ``(N, S)`` (padded) or 1-D (concatenated,
    of ``sum(target_lengths)`` labels) and 1-D lengths of ``N``; or unbatched ``(T, C)`` with targets
    1-D of exactly the target length (or ``(1, S)``, as torch) and lengths an int, a 0-d array or one
    element. Lengths must be non-negative, input lengths at most ``T``, padded target lengths at most
    ``S`` (``ValueError``); a label inside a target length outside ``[0, C)`` or equal to ``blank`` is an
    ``IndexError``; ``blank`` outside ``[0, C)`` a ``ValueError``. Padding is never read.
    """
    prediction("log_probs", x)
    shape = tuple(x.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"log_probs must be (T, N, C) or unbatched (T, C), got shape {shape}")
    batched = len(shape) == 3
    T, C = shape[0], shape[-1]
    N = shape[1] if batched else 1
    if isinstance(blank, (bool, np.bool_)) or not isinstance(blank, (int, np.integer)):
        raise TypeError(f"blank must be an integer, got {type(blank).__name__}")
    blank = int(blank)
    if not 0 <= blank < C:
        raise ValueError(f"blank {blank} is not a class of log_probs with {C} classes (shape {shape})")
    tdt = np.dtype(targets.dtype)
    if tdt.kind not in "iu":
        raise TypeError(f"targets must hold integer class indices, got dtype {tdt}")
    il = host_integers("input_lengths", input_lengths)
    tl = host_integers("target_lengths", target_lengths)
    for name, lengths in (("input_lengths", il), ("target_lengths", tl)):
        if batched and lengths.shape != (N,):
            raise ValueError(f"{name} must have shape ({N},) for log_probs of shape {shape}, got {lengths.shape}")
        if not batched and (lengths.ndim > 1 or lengths.size != 1):
            raise ValueError(f"{name} must be an int or hold one length for unbatched log_probs of shape {shape}, "
                             f"got shape {lengths.shape}")
    il, tl = il.reshape(N), tl.reshape(N)
    tshape = tuple(targets.shape)
    padded = len(tshape) == 2
    if len(tshape) not in (1, 2) or (padded and tshape[0] != N):
        want = f"({N}, S) or 1-D" if batched else "1-D or (1, S)"
        raise ValueError(f"targets must be {want} for log_probs of shape {shape}, got shape {tshape}")
    if N and int(il.min()) < 0:
        raise ValueError(f"input_lengths must be non-negative, got {int(il.min())}")
    if N and int(tl.min()) < 0:
        raise ValueError(f"target_lengths must be non-negative, got {int(tl.min())}")
    if N and int(il.max()) > T:
        raise ValueError(f"input_lengths must be at most T = {T} (log_probs of shape {shape}), got {int(il.max())}")
    if padded and N and int(tl.max()) > tshape[1]:
        raise ValueError(f"target_lengths must be at most S = {tshape[1]} (targets of shape {tshape}), "
                         f"got {int(tl.max())}")
    if not padded and int(tl.sum()) != tshape[0]:
        raise ValueError(f"target_lengths add up to {int(tl.sum())}, but the concatenated targets hold "
                         f"{tshape[0]} labels (shape {tshape})")
    offsets = np.zeros(N, dtype=np.int64)
    if N > 1:
        np.cumsum(tl[:-1], out=offsets[1:])
    t = host_integers("targets", targets)
    if padded:
        labels = t[np.arange(tshape[1]) < tl[:, None]]  # row by row: the first tl[n] labels of each
    else:
        labels = t.reshape(-1)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.size:
        bad = (labels < 0) | (labels >= C) | (labels == blank)
        if bad.any():
            value = int(labels[bad][0])
            why = "is the blank" if value == blank else f"is out of bounds for {C} classes"
            raise IndexError(f"target label {value} {why} (blank={blank}, log_probs of shape {shape})")
    return CtcProblem(batched, il, tl, offsets, labels)
