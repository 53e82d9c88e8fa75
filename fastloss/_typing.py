"""Type aliases of the public signatures.

Losses take NumPy arrays (or anything :func:`numpy.asarray` accepts) and GPU arrays (CuPy, or anything
with ``__cuda_array_interface__``), and return arrays of the input's library.
"""
from __future__ import annotations

from typing import Any, Protocol, Union

import numpy as np
import numpy.typing as npt


class CudaArray(Protocol):
    """A GPU array: CuPy's, Numba's device arrays, or any object with ``__cuda_array_interface__``."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...


#: What a loss accepts: NumPy arrays, array-likes, or GPU arrays.
ArrayIn = Union[npt.ArrayLike, CudaArray]
#: What a loss returns: a NumPy array (0-d when reduced) for host inputs, a GPU array for GPU inputs.
Array = Union[np.ndarray, CudaArray]
