"""What every benchmark class of the suite shares: inputs from the registry, JIT warm-up, the peers.

One module per loss family (``bench_<family>.py``) declares three classes from these bases (whose
names start with ``_``, so that asv does not take the bases themselves for benchmarks):

``<Family>``           fastloss itself: ``time_*`` of the value and of ``value_and_grad``, ``peakmem_*`` of
                       ``value_and_grad`` (the value allocates nothing worth measuring);
``<Family>Reference``  the family's float64 NumPy ``REFERENCE`` (value and gradients), on float64 copies;
``<Family>Torch``      PyTorch CPU forward and forward + backward (skipped when torch is not importable).

Parameters are the family's losses (from ``fastloss._registry.REGISTRY``) x ``SIZES`` x ``DTYPES``; the
inputs are the family's ``BENCH[name](rng, dtype, size)``. ``setup`` raises ``NotImplementedError``, which
asv reports as a skipped benchmark, when a family module (or PyTorch, or a PyTorch equivalent) is
missing. Every ``setup`` calls the measured function once, so Numba's compilation (or loading from its
cache) never lands inside a timing. Peak memory is asv's (the process's peak RSS), but every ``setup``
ends by resetting the kernel's peak-RSS mark (Linux), so that ``peakmem_*`` is the memory held after
setup (the inputs, the libraries) plus the peak of the measured call, not the temporaries of building
the inputs or of the warm-up calls.
"""
import numpy as np

import fastloss
from fastloss import bench
from fastloss._registry import REGISTRY

#: elements of the largest input: overhead-bound (fits in L2) and bandwidth-bound (16 MiB of float32 per
#: array: with the other inputs and the gradient, beyond the 32 MiB L3 cache)
SIZES = [1 << 16, 1 << 22]
DTYPES = ["float32", "float64"]
PARAM_NAMES = ["loss", "size", "dtype"]
#: asv's (min repeats, max repeats, max seconds) per round: enough samples for a median without the
#: slow peers (the float64 reference on 16 Mi elements takes about a second) stretching a full run
REPEAT = (1, 10, 2.0)


def params(family: str) -> list:
    """asv parameter grid of ``family``: its registered losses x sizes x dtypes."""
    return [sorted(n for n, s in REGISTRY.items() if s.family == family), SIZES, DTYPES]


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


class _Loss:
    """fastloss's value and value and gradient of one loss."""

    param_names = PARAM_NAMES
    timeout = 600
    repeat = REPEAT

    def setup(self, name, size, dtype):
        self.spec, self.case = make_case(name, size, dtype)
        self.vg = fastloss.value_and_grad(self.spec.fn)
        self._value()  # JIT warm-up: compile, or load Numba's cache
        self._value_and_grad()
        reset_peak_rss()

    def _value(self):
        return self.spec.fn(*self.case.args, **self.case.kwargs)

    def _value_and_grad(self):
        return self.vg(*self.case.args, **self.case.kwargs)

    def time_value(self, *params):
        self._value()

    def time_value_and_grad(self, *params):
        self._value_and_grad()

    def peakmem_value_and_grad(self, *params):
        self._value_and_grad()


class _Reference:
    """The family's float64 NumPy reference (always value and gradients): the baseline fastloss beats."""

    param_names = PARAM_NAMES
    timeout = 600
    repeat = REPEAT

    def setup(self, name, size, dtype):
        spec, case = make_case(name, size, dtype)
        self.reference = spec.reference
        self.case = bench.as_float64(case)
        reset_peak_rss()

    def time_reference(self, *params):
        self.reference(*self.case.args, **self.case.kwargs)



class _Torch:
    """PyTorch CPU on fastloss's thread count: forward (no autograd) and forward + backward."""

    param_names = PARAM_NAMES
    timeout = 600
    repeat = REPEAT

    def setup(self, name, size, dtype):
        try:
            import torch  # imported here, not at module level: it would inflate every peakmem_ of fastloss
        except ImportError:
            raise NotImplementedError("PyTorch is not installed") from None
        torch.set_num_threads(fastloss.get_num_threads())
        spec, case = make_case(name, size, dtype)
        calls = bench.torch_calls(torch, spec, case, bench.diff_positions(spec, case))
        if calls is None:
            raise NotImplementedError(f"PyTorch has no equivalent of {name}")
        self.forward, self.forward_backward = calls
        self.forward()  # warm-up: lazy initialisation of PyTorch's kernels
        self.forward_backward()
        reset_peak_rss()

    def time_forward(self, *params):
        self.forward()

    def time_forward_backward(self, *params):
        self.forward_backward()

    def peakmem_forward_backward(self, *params):
        self.forward_backward()
