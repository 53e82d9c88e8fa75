"""16-byte vector loads and stores for the CUDA kernels that stream contiguous arrays.

A GPU moves memory in 32-byte sectors; a warp whose threads each load one float32 issues one 128-byte
request per instruction, and the kernel then spends as many load/store instructions as elements. With
``ld.global.v4.f32`` (``ld.global.v2.f64``) each thread moves 16 bytes per instruction: a quarter (a
half) of the memory instructions and address computations for the same bytes, which is what lets a
streaming kernel with a few arithmetic instructions per element reach the memory bandwidth.

What this module gives a kernel module:

* :func:`width` -- the elements of one 16-byte vector of a dtype (4 float32, 2 float64).
* :func:`loader` / :func:`storer` -- for a vector width ``w``, device functions
  ``load(src, i, lanes)`` (``lanes[0:w] = src[i:i + w]``, one ``w``-wide aligned load) and
  ``store(dst, i, lanes)`` (``dst[i:i + w] = lanes[0:w]``, one aligned store). ``src``/``dst`` are 1-D
  C-contiguous device arrays whose data pointer is aligned to ``w`` elements (see :func:`aligned`) and
  ``i`` a multiple of ``w``; ``lanes`` a ``cuda.local.array(w, dtype)`` indexed with constants only (a
  ``for k in range(w)`` loop that the compiler unrolls), so that it lives in registers, never in local
  memory. Width 1 gives plain scalar loads and stores: a kernel written over ``w`` lanes serves the
  unaligned case with the same source.
* :func:`aligned` -- the host-side check: every array's device pointer a multiple of ``nbytes``.

On a GPU the loads and stores are Numba intrinsics that bitcast the element pointer to
``<w x T>*`` and load/store it with ``align`` ``w * itemsize`` (NVVM then emits ``ld.global.v4.f32``
and friends). The CUDA simulator cannot run intrinsics: there, plain Python twins copy element by
element, so the simulator checks the kernels' values and the real-target compile checks the
intrinsics.
"""
from __future__ import annotations

import functools

import numpy as np

from . import _cuda_arrays as D

#: Bytes of one vector access (the widest global load or store a thread can issue).
VECTOR_BYTES = 16


def width(dtype) -> int:
    """Elements of ``dtype`` in one 16-byte vector (4 for float32, 2 for float64)."""
    return max(1, VECTOR_BYTES // np.dtype(dtype).itemsize)


def data_pointer(a) -> int:
    """The address of ``a``'s first element (a device address; a host one under the simulator)."""
    if D.is_cupy(a):
        return int(a.data.ptr)
    ary = getattr(a, "_ary", None)  # the simulator's arrays wrap a NumPy array
    if ary is not None and D._is_simulated(a):
        return int(ary.ctypes.data)
    return int(a.__cuda_array_interface__["data"][0] or 0)


def aligned(arrays, nbytes: int = VECTOR_BYTES) -> bool:
    """True when the data pointer of every array in ``arrays`` is a multiple of ``nbytes``."""
    return all(data_pointer(a) % nbytes == 0 for a in arrays)


# --------------------------------------------------------------------------------------------------
# Simulator twins: element by element, the same results
# --------------------------------------------------------------------------------------------------
def _python_loader(w):
    def load(src, i, lanes):
        for k in range(w):
            lanes[k] = src[i + k]

    return load


def _python_storer(w):
    def store(dst, i, lanes):
        for k in range(w):
            dst[i + k] = lanes[k]

    return store


# --------------------------------------------------------------------------------------------------
# GPU intrinsics
# --------------------------------------------------------------------------------------------------
def _vector_pointer(context, builder, array_type, array, index, w):
    """``&array[index]`` as a pointer to ``<w x T>`` (``array`` 1-D C-contiguous, no wraparound)."""
    from llvmlite import ir

    data = context.make_array(array_type)(context, builder, value=array).data
    element = builder.gep(data, [index])
    return builder.bitcast(element, ir.VectorType(context.get_data_type(array_type.dtype), w).as_pointer())


def _check(what, array, lanes):
    from numba.core import types
    from numba.core.errors import NumbaTypeError

    for name, a in (("array", array), ("lanes", lanes)):
        if not (isinstance(a, types.Array) and a.ndim == 1):
            raise NumbaTypeError(f"{what}: {name} must be a 1-D array, got {a}")
    if array.dtype != lanes.dtype:
        raise NumbaTypeError(f"{what}: array of {array.dtype} and lanes of {lanes.dtype}")


def _gpu_copier(w, load):
    """The intrinsic ``copy(array, i, lanes)`` moving ``w`` elements between ``array[i:i + w]`` (the
    global side: one ``w``-wide access, aligned to its ``w * itemsize`` bytes) and ``lanes[0:w]``:
    into the lanes when ``load``, out of them otherwise."""
    from numba.core import types
    from numba.cuda.extending import intrinsic

    what = "vector load" if load else "vector store"

    @intrinsic
    def copy(typingctx, array, i, lanes):
        _check(what, array, lanes)

        def codegen(context, builder, sig, args):
            array_ty, i_ty, lanes_ty = sig.args
            a, index, held = args
            index = context.cast(builder, index, i_ty, types.intp)
            itemsize = context.get_abi_sizeof(context.get_data_type(array_ty.dtype))
            zero = context.get_constant(types.intp, 0)
            wide = (_vector_pointer(context, builder, array_ty, a, index, w), w * itemsize)
            narrow = (_vector_pointer(context, builder, lanes_ty, held, zero, w), itemsize)
            (src, src_align), (dst, dst_align) = (wide, narrow) if load else (narrow, wide)
            builder.store(builder.load(src, align=src_align), dst, align=dst_align)
            return context.get_dummy_value()

        return types.none(array, i, lanes), codegen

    return copy


@functools.lru_cache(maxsize=None)
def loader(w: int):
    """``load(src, i, lanes)``: ``lanes[0:w] = src[i:i + w]`` in one aligned ``w``-wide load (see the module)."""
    return _python_loader(w) if D.SIMULATOR else _gpu_copier(w, True)


@functools.lru_cache(maxsize=None)
def storer(w: int):
    """``store(dst, i, lanes)``: ``dst[i:i + w] = lanes[0:w]`` in one aligned ``w``-wide store (see the module)."""
    return _python_storer(w) if D.SIMULATOR else _gpu_copier(w, False)
