"""Which backend an array belongs to, and where each family's kernels for that backend live.

A backend is ``"cpu"`` (NumPy arrays, and anything ``numpy.asarray`` accepts) or ``"cuda"`` (CuPy arrays,
objects exposing ``__cuda_array_interface__`` such as Numba device arrays, and the Numba CUDA
simulator's device arrays). GPU arrays are recognised by their class, so CuPy is never imported for a
caller who never used it.
"""
from __future__ import annotations

import importlib
import numbers
import threading

import numpy as np

CPU = "cpu"
CUDA = "cuda"


def is_device_array(a) -> bool:
    """True for GPU arrays (CuPy, ``__cuda_array_interface__``, Numba's simulator device arrays)."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    mod = type(a).__module__
    return mod.startswith("cupy") or mod.startswith("numba.cuda.simulator")


def is_dask_array(a) -> bool:
    """True for ``dask.array.Array`` (and subclasses), recognised by class: Dask is never imported."""
    return any(c.__name__ == "Array" and c.__module__.startswith("dask.array") for c in type(a).__mro__)


def backend_of(**arrays) -> str:
    """The one backend of all array arguments (``None`` and Python numbers are neutral).

    Raises ``TypeError`` naming the arguments when host and device arrays are mixed.
    """
    host, dev = [], []
    for name, a in arrays.items():
        if a is None or isinstance(a, (numbers.Number, np.generic)):
            continue
        (dev if is_device_array(a) else host).append(name)
    if host and dev:
        raise TypeError(
            f"host and device arrays mixed: {', '.join(dev)} on the GPU, {', '.join(host)} on the host; "
            "move them to one device first"
        )
    if dev:
        from . import _cuda_arrays

        _cuda_arrays.check_same_device(**{k: arrays[k] for k in dev})
        return CUDA
    return CPU


def as_host_array(a):
    """``numpy.asarray`` for the CPU backend (a copy only where ``a`` is not already an ndarray)."""
    return a if isinstance(a, np.ndarray) else np.asarray(a)


def prepare(**arrays):
    """Detect the backend of the named arguments and turn each into an array of that backend.

    Returns ``(backend, list_of_arrays)`` in argument order; ``None`` stays ``None``.
    """
    values = list(arrays.values())
    ndarray = np.ndarray
    for a in values:
        if a is not None and type(a) is not ndarray:
            break
    else:  # the common case, without any probing (a plain loop: this runs on every call)
        return CPU, values
    backend = backend_of(**arrays)
    if backend == CPU:
        return backend, [None if a is None else as_host_array(a) for a in arrays.values()]
    from . import _cuda_arrays

    return backend, [None if a is None else _cuda_arrays.as_device_array(a) for a in arrays.values()]


_FAMILY_MODULES = {}


def family(backend: str, name: str):
    """The module holding family ``name``'s kernels for ``backend`` (CUDA modules import lazily)."""
    key = (backend, name)
    mod = _FAMILY_MODULES.get(key)
    if mod is None:
        suffix = "" if backend == CPU else "_cuda"
        mod = importlib.import_module(f"fastloss.families.{name}{suffix}")
        _FAMILY_MODULES[key] = mod
    return mod


# Set (per thread) by the Dask backend while it runs a loss on one chunk: the chunk's reduced value is
# then its float64 partial sum, which fastloss._dask adds up exactly before rounding to the dtype.
class _Partials(threading.local):
    on = False  # the default as a class attribute: reading it raises and catches nothing


float64_partials = _Partials()


def scalar_result(value, dtype):
    """A reduced loss as a 0-d NumPy array of the input's dtype (``float(result)`` works)."""
    if float64_partials.on:
        return np.array(value, dtype=np.float64)
    return np.array(value, dtype=dtype)
