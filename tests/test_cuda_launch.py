"""How CuPy arrays reach the kernels on a real GPU (``fastloss._cuda_arrays._kernel_arg``), without a GPU.

numba-cuda 0.30 launches with a cuda.core ``StridedMemoryView`` as it is; fastloss makes one per
C-contiguous CuPy array (from its DLPack export) instead of a ``DeviceNDArray`` per array and launch.
The real-target compile test compiles the argument types that ``launch`` *records* (from the arrays
themselves), so the view's Numba type must be exactly the recorded one, and its pointer, shape and
strides the array's. NumPy arrays export DLPack too, so a NumPy subclass that fastloss takes for a CuPy
array (by its module's name) stands in for one here. The simulator has no such views, so the checks run
in a process without it.
"""
from __future__ import annotations

import pytest

from _helpers import probe_without_simulator

PROBE = r"""
import json
import numpy as np
from fastloss import _cuda_arrays as D
from numba.cuda.typing.typeof import typeof

class FakeCupy(np.ndarray):
    pass
FakeCupy.__module__ = "cupy._core.core"

wrapped_cai = []
D._wrap_cai = lambda a: wrapped_cai.append(a) or "cai"
base = np.arange(60, dtype=np.float32)
cases = {"f32 2-d": base.reshape(6, 10), "f64 1-d": np.arange(7.0), "int64": np.arange(5), "int32": np.arange(5, dtype=np.int32),
         "uint8": np.arange(5, dtype=np.uint8), "empty": np.zeros((0, 4), np.float32), "row slice": base.reshape(6, 10)[2:4],
         "offset 1-d": base[3:], "3-d": base.reshape(3, 4, 5)}
out = {"smv": D._SMV is not None, "cases": {}}
for name, a in cases.items():
    fake = a.view(FakeCupy)
    assert D.is_cupy(fake)
    v = D._kernel_arg(fake)
    out["cases"][name] = {"view": type(v).__name__, "type": str(typeof(v)), "recorded": D.numba_type_name(fake),
                          "ptr": int(v.ptr) == a.ctypes.data, "shape": list(v.shape) == list(a.shape),
                          "strides": list(v._layout.strides_in_bytes or a.strides) == list(a.strides)}
strided = base.reshape(6, 10)[:, ::2].view(FakeCupy)
out["strided"] = D._kernel_arg(strided) == "cai" and wrapped_cai[-1] is strided
out["numba_array_untouched"] = D._kernel_arg(base) is base
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe():
    return probe_without_simulator(PROBE)


def test_numba_cuda_offers_strided_memory_views(probe):
    assert probe["smv"], "numba-cuda no longer launches with cuda.core StridedMemoryView (fastloss pins 0.30.x)"


def test_contiguous_cupy_arrays_go_as_views_typed_as_recorded(probe):
    for name, case in probe["cases"].items():
        assert case["view"] == "StridedMemoryView", (name, case)
        if name == "empty":  # NumPy calls a 0-size array's layout 'A' (zero strides); no kernel reads it
            assert case["type"].replace(", C)", ", A)") == case["recorded"], (name, case)
        else:
            assert case["type"] == case["recorded"], (name, case)
        assert case["ptr"] and case["shape"] and case["strides"], (name, case)


def test_strided_cupy_arrays_go_through_the_interface_and_numba_arrays_as_they_are(probe):
    assert probe["strided"]
    assert probe["numba_array_untouched"]
