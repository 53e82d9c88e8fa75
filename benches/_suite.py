"""What every benchmark class of the suite shares: inputs from the registry, JIT warm-up, the peers.

The implementation is a benchmark *parameter*, so that every asv graph draws fastloss and its peers as
lines side by side (asv draws one line per parameter combination):

``fastloss``       fastloss on NumPy arrays;
``torch``          PyTorch CPU on fastloss's thread count: forward (no autograd), forward + backward;
``reference``      the family's float64 NumPy ``REFERENCE`` on float64 copies (it always computes value
                   and gradients, so it appears in the value-and-gradient benchmarks only);
``fastloss-cupy``  fastloss on CuPy arrays (Numba CUDA kernels), and
``torch-cuda``     PyTorch on the GPU: both synchronised after every call, and skipped without a GPU.

One module per loss family (``bench_<family>.py``) declares two classes from these bases (whose names
start with ``_``, so that asv does not take the bases for benchmarks): ``<Family>`` (``time_value``) and
``<Family>Grad`` (``time_value_and_grad``, ``peakmem_value_and_grad``; the value alone allocates nothing
worth measuring). Parameters: implementation x the family's losses (from the registry) x ``SIZES`` x
``DTYPES``; inputs are the family's ``BENCH[name](rng, dtype, size)``. ``setup`` raises
``NotImplementedError``, which asv reports as a skipped benchmark, where an implementation is missing
(no PyTorch, no GPU, no such loss in PyTorch, no family module). Every ``setup`` calls the measured
function once, so Numba's compilation (or loading from its cache) never lands inside a timing. Peak
memory is asv's (the process's peak RSS; host memory only), but every ``setup`` ends by resetting the
kernel's peak-RSS mark (Linux), so that ``peakmem_*`` is the memory held after setup plus the peak of
the measured call, not the temporaries of building the inputs or of the warm-up calls.
"""
import dataclasses
import importlib.util

import numpy as np

import fastloss
from fastloss import bench, bench_cases
from fastloss._registry import REGISTRY

#: elements of the largest input: overhead-bound (fits in L2) and bandwidth-bound (16 MiB of float32 per
#: array: with the other inputs and the gradient, beyond the 32 MiB L3 cache)
SIZES = [1 << 16, 1 << 22]
DTYPES = ["float32", "float64"]
IMPLS = ["fastloss", "torch", "reference", "fastloss-cupy", "torch-cuda"]
PARAM_NAMES = ["impl", "loss", "size", "dtype"]
#: asv's (min repeats, max repeats, max seconds) per round: enough samples for a median without the
#: slow peers (the float64 reference on 16 Mi elements takes about a second) stretching a full run
REPEAT = (1, 10, 2.0)


def params(family: str, impls=IMPLS, sizes=SIZES, dtypes=DTYPES) -> list:
    """asv parameter grid of ``family``: implementations x its registered losses x sizes x dtypes."""
    return [list(impls), sorted(n for n, s in REGISTRY.items() if s.family == family), list(sizes), list(dtypes)]


def make_case(name: str, size: int, dtype: str):
    """``(spec, case)`` of one benchmark; ``NotImplementedError`` (asv: skipped) without the family."""
    spec = REGISTRY[name]
    problem = bench.family_problem(spec)
    if problem:
        raise NotImplementedError(problem)
    return spec, spec.bench(np.random.default_rng(0), np.dtype(dtype), size)


def reset_peak_rss() -> None:
    """Reset the process's peak resident set size to its current size (``/proc/self/clear_refs``,
    Linux 4.0+; ``getrusage``'s ``ru_maxrss``, which asv reads, follows). A no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _torch():
    # imported in setup, not at module level: it would inflate every peakmem_ of fastloss
    if importlib.util.find_spec("torch") is None:
        raise NotImplementedError("PyTorch is not installed")
    import torch

    torch.set_num_threads(fastloss.get_num_threads())
    return torch


def _cupy():
    if importlib.util.find_spec("cupy") is None:
        raise NotImplementedError("CuPy is not installed")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise NotImplementedError("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise NotImplementedError(f"no usable CUDA device: {e}") from None
    return cupy


def cupy_case(case):
    """``(case on the GPU, synchronise)``: every NumPy array of ``case`` copied to CuPy."""
    cp = _cupy()

    def up(a):
        return cp.asarray(a) if isinstance(a, np.ndarray) else a

    on_gpu = dataclasses.replace(case, args=tuple(up(a) for a in case.args),
                                       kwargs={k: up(v) for k, v in case.kwargs.items()})
    return on_gpu, cp.cuda.get_current_stream().synchronize


def _synchronised(fn, sync):
    def call():
        out = fn()
        sync()
        return out

    return call


def implementation(impl: str, name: str, size: int, dtype: str) -> tuple:
    """``(value, value_and_grad)`` callables of one implementation on one loss's input, either
    ``None`` where it has no such operation; ``NotImplementedError`` where it is not available."""
    spec, case = make_case(name, size, dtype)
    pos = bench_cases.diff_positions(spec, case)
    if impl == "fastloss":
        return bench_cases.fastloss_calls(spec, case)
    if impl == "reference":
        return None, bench_cases.reference_call(spec, case)
    if impl in ("torch", "torch-cuda"):
        torch = _torch()
        device = None
        if impl == "torch-cuda":
            if not torch.cuda.is_available():
                raise NotImplementedError("PyTorch sees no CUDA device")
            device = "cuda"
        calls = bench_cases.torch_calls(torch, spec, case, pos, device=device)
        if calls is None:
            raise NotImplementedError(f"PyTorch has no equivalent of {name}")
        if device is None:
            return calls
        return tuple(_synchronised(c, torch.cuda.synchronize) for c in calls)
    if impl == "fastloss-cupy":
        on_gpu, sync = cupy_case(case)
        return tuple(_synchronised(c, sync) for c in bench_cases.fastloss_calls(spec, on_gpu))
    raise ValueError(f"unknown implementation {impl!r}")


class _Value:
    """The value alone: fastloss's, PyTorch's forward (the reference has none: skipped)."""

    param_names = PARAM_NAMES
    timeout = 600
    repeat = REPEAT

    def setup(self, impl, name, size, dtype):
        value, _ = implementation(impl, name, size, dtype)
        if value is None:
            raise NotImplementedError(f"{impl} computes value and gradients together")
        self.value = value
        self.value()  # warm-up: JIT compilation, PyTorch's lazy initialisation
        reset_peak_rss()

    def time_value(self, *params):
        self.value()


class _ValueAndGrad:
    """Value and gradient: fastloss's ``value_and_grad``, PyTorch's forward + backward, the reference."""

    param_names = PARAM_NAMES
    timeout = 600
    repeat = REPEAT

    def setup(self, impl, name, size, dtype):
        _, self.value_and_grad = implementation(impl, name, size, dtype)
        if impl != "reference":  # the reference has no first-call cost, and is slow on big inputs
            self.value_and_grad()
        reset_peak_rss()

    def time_value_and_grad(self, *params):
        self.value_and_grad()

    def peakmem_value_and_grad(self, *params):
        self.value_and_grad()
