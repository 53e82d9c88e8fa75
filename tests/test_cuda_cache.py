"""Every CUDA kernel is kept in Numba's on-disk cache on real GPUs, and no two can share a cache entry.

Issue 9 asks for a first call within 1 s of a fresh process once the cache is warm: that needs
``cache=True`` on every kernel (``fastloss._cuda_arrays.jit_kernel``). The simulator caches nothing, so
the check runs in a process without it (numba-cuda imports and builds its cache objects without a
GPU). Numba finds a kernel's cache entry by module and ``__qualname__`` and checks its bytecode and
closure but not its globals: two kernels made from one template with different bound globals and one
name would load each other's code, which the second test rules out.
"""
from __future__ import annotations

import pytest

from _helpers import probe_without_simulator

PROBE = r"""
import importlib, json
from numba.cuda.dispatcher import CUDACache, CUDADispatcher
from fastloss import _cuda_arrays as D
modules = ["fastloss._cuda_arrays", "fastloss.families.ctc_cuda", "fastloss.families.lce_cuda",
           "fastloss.families.margin_cuda", "fastloss.families.ranking_cuda", "fastloss.families.triplet_cuda",
           "fastloss.families.pointwise_cuda.kernels", "fastloss.families.pointwise_cuda.logloss",
           "fastloss.families.softmax_cuda.ce_kernels", "fastloss.families.softmax_cuda.softmax_kernels"]
from fastloss.families.pointwise_cuda import kernels as PK  # kernels made per key: make a few
for width in (1, 4):
    PK.fast_kernel("float32", PK.MSE, PK.FULL, PK.ABSENT, PK.SCALAR, False, True, width)
PK.fast_kernel("float64", PK.BCE_LOGITS, PK.FULL, PK.FULL, PK.FULL, True, True, 2)
PK.broadcast_kernel("float32", PK.HUBER, True, False)
kernels = {}
for name in modules:
    mod = importlib.import_module(name)
    for attr, value in vars(mod).items():
        if isinstance(value, CUDADispatcher) and not value.targetoptions.get("device"):
            kernels[id(value)] = (f"{name}.{attr}", value)
for k in D.KERNELS:
    kernels.setdefault(id(k), (f"{k.py_func.__module__}.{k.py_func.__qualname__}", k))
print(json.dumps([{"where": where, "cached": isinstance(k._cache, CUDACache), "made": any(k is m for m in D.KERNELS),
                   "key": [k.py_func.__module__, k.py_func.__qualname__], "code": id(k.py_func.__code__),
                   "globals": id(k.py_func.__globals__)} for where, k in kernels.values()]))
"""


@pytest.fixture(scope="module")
def kernels():
    found = probe_without_simulator(PROBE)
    assert len(found) >= 20, f"only {len(found)} kernels found: the probe's module list is out of date"
    return found


def test_every_kernel_is_cached_on_disk(kernels):
    uncached = [k["where"] for k in kernels if not (k["cached"] and k["made"])]
    assert not uncached, f"kernels not made by _cuda_arrays.jit_kernel (no on-disk cache): {uncached}"


def test_no_two_kernels_share_a_cache_entry(kernels):
    seen = {}
    for k in kernels:
        key = tuple(k["key"])
        other = seen.setdefault(key, k)
        assert other is k or (other["code"], other["globals"]) == (k["code"], k["globals"]), (
            f"{other['where']} and {k['where']} share the cache entry {'.'.join(key)}")
