"""``fastloss bench --small``: per-call latency of small calls, beside PyTorch.

A training loop calls its loss thousands of times on small batches; there the fixed costs of a call
(argument checks, dispatch, waking threads) matter more than bandwidth. For every loss at a few small
sizes this times ``value_and_grad`` and PyTorch's forward + backward as the **mean** over hundreds of
calls (a stall on a busy machine shows in the mean, a median hides it), alternately in one process,
three times: alone; with a PyTorch step between two calls (a matrix product and a ``tanh``: the
rhythm of a training loop, whose model leaves the caches cold for the loss), only the calls timed;
and while a Python thread keeps PyTorch's intra-op threads busy with matrix products (a loss computed
beside a model).
"""
from __future__ import annotations

import inspect
import threading
import time

import numpy as np

from ._registry import REGISTRY, value_and_grad

#: Elements of the largest argument: 64 rows of 10 classes up to 4096 elements and one bigger size.
SIZES = (640, 4096, 65536)


def _diff_positions(spec, case):
    """Positions in ``case.args`` of the differentiable arguments the case passes (an optional one,
    such as ``linear_cross_entropy``'s ``linear_bias``, may be absent)."""
    names = list(inspect.signature(spec.fn).parameters)
    return [names.index(d) for d in spec.diff if names.index(d) < len(case.args)]


def _to_torch(torch, a, requires_grad=False):
    if not isinstance(a, np.ndarray):
        return a
    if a.dtype.kind in "iu":
        a = a.astype(np.int64)
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.requires_grad_(True) if requires_grad else t


def _calls(spec, case, torch):
    """``(fastloss value_and_grad, torch forward+backward or None)`` closures on ``case``."""
    vg = value_and_grad(spec.fn)

    def ours():
        return vg(*case.args, **case.kwargs)

    f = spec.torch_fn() if torch is not None else None
    if f is None:
        return ours, None
    pos = _diff_positions(spec, case)
    leaves = [_to_torch(torch, a, requires_grad=i in pos) for i, a in enumerate(case.args)]
    inputs = [leaves[i] for i in pos]
    kwargs = {k: _to_torch(torch, v) for k, v in case.kwargs.items()}

    def theirs():
        value = f(torch, *leaves, **kwargs)
        return torch.autograd.grad(value, inputs, grad_outputs=torch.ones_like(value))

    return ours, theirs


def mean_call_time(fn, calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls (after a few warm-up calls)."""
    for _ in range(max(3, calls // 20)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def mean_call_time_after(fn, step, calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls, each after ``step()`` (not timed)."""
    for _ in range(max(3, calls // 20)):
        step()
        fn()
    total = 0.0
    for _ in range(calls):
        step()
        start = time.perf_counter()
        fn()
        total += time.perf_counter() - start
    return total / calls


class _TorchStep:
    """One step of a small model: a (256, 256) product and a ``tanh``, on PyTorch's threads."""

    def __init__(self, torch):
        self.torch, self.a = torch, torch.randn(256, 256)

    def __call__(self):
        self.a = self.torch.tanh(self.a @ self.a * 0.01)


class _BusyTorch:
    """A thread running PyTorch matrix products back to back (PyTorch releases the GIL inside them, so
    its intra-op threads compete with fastloss's for the cores)."""

    def __init__(self, torch):
        self.torch, self.stop = torch, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        a = self.torch.randn(256, 256)
        while not self.stop.is_set():
            a = self.torch.tanh(a @ a * 0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run(names=None, dtype="float32", sizes=SIZES, calls=300, torch=None):
    """Rows ``(loss, shape, fastloss_s, torch_s, fastloss_step_s, torch_step_s, fastloss_busy_s,
    torch_busy_s)`` (seconds per call: alone, after a PyTorch step, beside busy PyTorch threads;
    ``None`` where PyTorch has no such loss or is absent)."""
    rows = []
    for name in names or sorted(REGISTRY):
        spec = REGISTRY[name]
        for size in sizes:
            case = spec.bench(np.random.default_rng(0), np.dtype(dtype), size)
            ours, theirs = _calls(spec, case, torch)
            ours()  # compile
            shape = tuple(np.shape(case.args[_diff_positions(spec, case)[0]]))
            times = []
            for mode in ("alone", "step", "busy"):
                if mode != "alone" and torch is None:
                    times += [None, None]
                    continue
                if mode == "step":
                    step = _TorchStep(torch)
                    timer = lambda f: mean_call_time_after(f, step, calls)  # noqa: E731
                else:
                    timer = lambda f: mean_call_time(f, calls)  # noqa: E731
                with _BusyTorch(torch) if mode == "busy" else _Nothing():
                    t_ours = timer(ours)
                    t_theirs = timer(theirs) if theirs is not None else None
                    # alternate once more so that drifting load hits both alike
                    t_ours = (t_ours + timer(ours)) / 2
                times += [t_ours, t_theirs]
            rows.append((name, shape, *times))
    return rows


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def format_rows(rows) -> str:
    def us(t):
        return "-" if t is None else f"{t * 1e6:.1f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{b / a:.2f}x"

    head = ["loss", "shape"]
    for mode in ("", "step: ", "busy: "):
        head += [f"{mode}fastloss us", f"{mode}torch us", f"{mode}speedup"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for name, shape, *times in rows:
        cells = [name, "x".join(map(str, shape)) or "()"]
        for ours, theirs in zip(times[::2], times[1::2]):
            cells += [us(ours), us(theirs), ratio(ours, theirs)]
        lines.append(" | ".join(cells))
    return "\n".join(lines) + "\n\nmean time per value_and_grad call vs torch forward + backward; " \
                              "'step': a torch step (256x256 product, tanh) before each call, not timed; " \
                              "'busy': a thread keeps torch's intra-op threads busy meanwhile"


def main(args, names, dtypes) -> int:
    """The ``--small`` section of ``fastloss bench``: print the table; returns the exit status."""
    torch = None
    if not getattr(args, "no_torch", False):
        try:
            import torch
        except ImportError:
            torch = None
    calls = 100 if getattr(args, "quick", False) else 300
    sizes = (640, 4096) if getattr(args, "quick", False) else SIZES
    for dtype in (dtypes or ["float32"]):
        print(f"small calls, {dtype}")
        print(format_rows(run(names or None, dtype, sizes, calls, torch)))
    return 0
