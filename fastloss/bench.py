"""``fastloss bench``: how fast every loss runs on this machine, against the memory bandwidth and the peers.

What it does, in order:

1. Measures the machine's memory bandwidth with two Numba kernels (parallel, on fastloss's threads): a
   *read* pass (the sum of a float64 array) and a STREAM *triad* pass (``a = b + s * c``, counted as
   three arrays moved, as STREAM does), over 256 MiB and 3 x 128 MiB; a few times at the start, then
   once more after every loss. The best measurement is the bandwidth: what the machine can do, and
   every loss is compared with it. Measurements that disagree by more than :data:`NOISE_LIMIT` (20 %)
   mark the run as *noisy*: something else used the machine, and the table and the JSON say so.
2. For each loss of the registry (``fastloss._registry.REGISTRY``) and each dtype, builds one realistic
   input with the family's ``BENCH[name](rng, dtype, size)``, compiles (one untimed call of the value
   and of ``value_and_grad``: the JIT warm-up), then times, *interleaved* (fastloss, peer, peer,
   fastloss, ... in rounds: :func:`time_interleaved`) so that load from elsewhere falls on all alike:

   - fastloss's value beside PyTorch CPU's forward (under ``torch.no_grad()``);
   - fastloss's value and gradient (``fastloss.value_and_grad``) beside the family's float64 NumPy
     ``REFERENCE`` on float64 copies of the same data (it always computes value and gradients) and
     PyTorch's forward + backward (``torch.autograd.grad``), on ``fastloss.get_num_threads()`` threads.

   Times are means over the repeats, with their relative standard deviation (the spread). A loss with
   an unreduced output is differentiated with a fixed random ``grad_output`` (the same for fastloss,
   the reference and PyTorch). Inputs larger than :data:`REFERENCE_ELEMENTS` (the headline's 1 GiB of
   logits) give the reference only their first rows, which would otherwise need about 16 GB: the errors
   are measured on those rows and the reference's time is scaled by the row count (noted).
3. Reports per loss and dtype: time; GB/s (the bytes the kernel must move: every input array read,
   except that ``nll_loss`` gathers one element per target, plus an unreduced output, plus
   ``grad_output`` and the gradients for value and gradient); the fraction of the measured bandwidth
   (read for the value, triad for value and gradient; over 100 % is marked and explained in a note);
   the speed-up over each peer; and the largest relative error against the float64 reference,
   ``max |got - ref| / max |ref|`` over the whole value or gradient (so that a zero in the reference
   does not blow the ratio up).

A loss whose family module is missing (or fails to import, or has no ``BENCH`` entry) is skipped with
a note; an error inside one loss is noted and the run goes on. Plug-in modules
(:data:`SECTION_MODULES`) add sections (a GPU run, small batches) that share the table, JSON and plot.

``--json`` prints one JSON object on stdout instead of the table::

    {
      "schema": "fastloss-bench/2",
      "versions": {"fastloss": str, "python": str, "numpy": str, "numba": str, "torch": str | null},
      "machine": {"cpu": str, "cores": int, "system": str},
      "threads": int,
      "settings": {"mode": "default" | "quick", "dtypes": [str, ...], "size_scale": float,
                   "budget_s": float, "sizes": {loss: int}},
      "noisy": bool,                     # bandwidth measurements disagreed by more than 20 %
      "noise": [str, ...],               # why (empty when not noisy)
      "bandwidth": {"method": "numba", "threads": int, "read_gbs": float, "triad_gbs": float,
                    "read_bytes": int, "triad_bytes": int, "read_samples_gbs": [float, ...],
                    "triad_samples_gbs": [float, ...], "read_spread": float, "triad_spread": float,
                    "noisy": bool, "noise_limit": float},
      "results": [ROW, ...],             # the CPU losses
      "skipped": [{"loss": str, "dtype": str | null, "reason": str}, ...],
      "sections": [{"name": str, "title": str, "peers": [str, str], "results": [ROW, ...],
                    "skipped": [...], "notes": [str, ...]}, ...]   # plug-in sections
    }

where ``ROW`` is ``{"loss": str, "dtype": str, "shape": [int, ...], "elements": int,
"value": MEASUREMENT, "value_and_grad": MEASUREMENT, "reference_rows": int | null, "wall_s": float,
"notes": [str, ...]}`` and ``MEASUREMENT`` is ``{"time_s" (mean), "median_s", "spread", "repeats",
"bytes", "gbs", "bw_fraction", "rel_err", "value_rel_err", "reference_time_s", "reference_spread",
"speedup_vs_reference", "torch_time_s", "torch_spread", "speedup_vs_torch", "torch_rel_err"}``:
``rel_err`` is the error of the value (in ``value``) or of the gradients (in ``value_and_grad``, whose
``value_rel_err`` is the error of the value computed with them), and ``torch_rel_err`` the same error
of PyTorch's result. Numbers that do not exist (no torch, no reference for the value alone, NaN) are
``null``. Speed-ups are peer time over fastloss time (means).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import importlib.util
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from numba import prange

from . import _jit
from ._registry import REGISTRY, LossSpec, value_and_grad

# --------------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------------
#: Elements of the largest argument of every loss: 16 Mi float32 is 64 MiB per array, far beyond the
#: caches, so the kernels stream from memory as they do in training.
DEFAULT_SIZE = 1 << 24

#: The headline, always in the default run: cross entropy over a 32000-word vocabulary for 8192 tokens,
#: 1 GiB of float32 logits (BENCH["cross_entropy"] turns this size into an (8192, 32000) input).
HEADLINE_SIZES = {"cross_entropy": 8192 * 32000,
                  # (N, H, V) = (2048, 1024, 32000): BENCH sizes linear_cross_entropy by its weight, V * H
                  "linear_cross_entropy": 32000 * 1024}

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Settings:
    """How long and how big: one instance for the default run and one for ``--quick``."""

    mode: str = "default"
    dtypes: tuple = ("float32",)
    size_scale: float = 1.0
    budget_s: float = 0.2  # seconds spent repeating one measurement (after its warm-up call)
    min_repeats: int = 3
    max_repeats: int = 15
    bandwidth_elements: int = 1 << 25  # float64: 256 MiB read, 3 x 128 MiB triad: beyond every cache
    bandwidth_repeats: int = 5  # the best of several resists a busy machine


DEFAULT = Settings()
QUICK = Settings(mode="quick", size_scale=1 / 8, budget_s=0.05, min_repeats=2, max_repeats=5)


def loss_size(name: str, size: Optional[int], scale: float) -> int:
    """Elements of ``name``'s benchmark input: ``size`` if given, else its default, times ``scale``."""
    base = size if size is not None else HEADLINE_SIZES.get(name, DEFAULT_SIZE)
    return max(1, int(base * scale))


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Wall times of repeated calls of one function. ``mean_s`` is what the bench reports (a user pays
    the mean, not the median); ``spread`` is the relative standard deviation, ``stdev / mean``."""

    mean_s: float
    median_s: float
    min_s: float
    spread: float
    repeats: int

    @classmethod
    def of(cls, times: list) -> "Timing":
        mean = statistics.fmean(times)
        stdev = statistics.stdev(times) if len(times) > 1 else 0.0
        return cls(mean, statistics.median(times), min(times), stdev / mean if mean > 0 else 0.0, len(times))


#: A round of calls slower than this (seconds) may end the repeats before ``min_repeats`` rounds.
SLOW_ROUND_S = 5.0


def time_interleaved(calls: dict, settings: Settings, *, warmup=()):
    """Time several functions in alternation: ``{name: fn}`` → ``({name: Timing}, {name: last result})``.

    Each round calls every function once, in the given order on even rounds and reversed on odd ones,
    so that a burst of load from another process, or the machine's clock changing, falls on fastloss
    and its peers alike instead of on whichever was timed during it. The functions named in
    ``warmup`` are called once, untimed, first: PyTorch initialises autograd and picks kernels on its
    first call, fastloss's first call may load Numba's cache. (The NumPy reference has no such cost
    and on the headline input one call takes seconds: it goes without.)

    Rounds repeat for ``settings.budget_s`` seconds per function, at least ``min_repeats`` and at most
    ``max_repeats`` times, except that rounds longer than :data:`SLOW_ROUND_S` stop once twice that
    budget has gone by: a slow peer measured once or twice is still a fair comparison, and the run
    stays within its time.
    """
    for name in warmup:
        calls[name]()
    times = {name: [] for name in calls}
    results = dict.fromkeys(calls)
    budget = settings.budget_s * len(calls)
    order = list(calls)
    start = time.perf_counter()
    rounds = 0
    while True:
        for name in (order if rounds % 2 == 0 else order[::-1]):
            results[name] = None  # free the previous result before the next call allocates its own
            t0 = time.perf_counter()
            results[name] = calls[name]()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
        elapsed = time.perf_counter() - start
        if rounds >= settings.max_repeats:
            break
        if rounds >= settings.min_repeats and elapsed >= budget:
            break
        if elapsed > 2 * budget and elapsed / rounds > SLOW_ROUND_S:
            break
    return {name: Timing.of(t) for name, t in times.items()}, results


def time_call(fn: Callable, settings: Settings, *, warmup: bool = True):
    """:func:`time_interleaved` of one function: ``(Timing, last result)``."""
    timings, results = time_interleaved({"f": fn}, settings, warmup=("f",) if warmup else ())
    return timings["f"], results["f"]


# --------------------------------------------------------------------------------------------------
# Memory bandwidth (Numba kernels)
# --------------------------------------------------------------------------------------------------
@_jit.kernel
def _read_pass(x, nthreads, passes):
    """``passes`` sums of ``x``, each thread over its own contiguous part: reads ``passes * x.nbytes``.

    The passes repeat inside one parallel region so that waking the threads (milliseconds on a busy
    machine) is paid once; each thread's part is far larger than the caches, so every pass streams
    from memory.
    """
    n = x.size
    partial = np.zeros(nthreads)
    for t in prange(nthreads):
        lo = t * n // nthreads
        hi = (t + 1) * n // nthreads
        xs = x[lo:hi]  # a slice, then range(len): the loop vectorises (PERF-NOTES, point 3)
        s = 0.0
        for _ in range(passes):
            for i in range(hi - lo):
                s += xs[i]
        partial[t] = s
    return partial.sum()


@_jit.kernel
def _triad_pass(a, b, c, scalar, nthreads, passes):
    """STREAM triad ``a = b + scalar * c``, ``passes`` times (see :func:`_read_pass`)."""
    n = a.size
    for t in prange(nthreads):
        lo = t * n // nthreads
        hi = (t + 1) * n // nthreads
        a_, b_, c_ = a[lo:hi], b[lo:hi], c[lo:hi]
        for p in range(passes):
            s = scalar + p  # a different result per pass: no pass can be optimised away
            for i in range(hi - lo):
                a_[i] = b_[i] + s * c_[i]


#: Repeated bandwidth measurements of one run that disagree by more than this (the slowest more than
#: 20 % below the fastest) mark the run as noisy: something else used the memory or the cores.
NOISE_LIMIT = 0.20


@dataclass
class Bandwidth:
    """The machine's memory bandwidth: the best of every measurement of the run, and their spread."""

    read_gbs: float
    triad_gbs: float
    read_bytes: int
    triad_bytes: int
    threads: int
    method: str = "numba"
    read_samples_gbs: list = field(default_factory=list)
    triad_samples_gbs: list = field(default_factory=list)

    @property
    def read_spread(self) -> float:
        """``(max - min) / max`` of the read measurements: 0 when they agree."""
        return _disagreement(self.read_samples_gbs)

    @property
    def triad_spread(self) -> float:
        return _disagreement(self.triad_samples_gbs)

    @property
    def noisy(self) -> bool:
        return max(self.read_spread, self.triad_spread) > NOISE_LIMIT

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"read_spread": self.read_spread, "triad_spread": self.triad_spread,
                                           "noisy": self.noisy, "noise_limit": NOISE_LIMIT}


def _disagreement(samples: list) -> float:
    return (max(samples) - min(samples)) / max(samples) if len(samples) > 1 and max(samples) > 0 else 0.0


#: passes over the arrays per timed kernel call
BANDWIDTH_PASSES = 4


class BandwidthProbe:
    """The bandwidth kernels' arrays, kept for the whole run, so that the bandwidth is measured again
    between the losses (:meth:`sample`): the run's bandwidth is the best of all measurements, and
    measurements that disagree say the machine was busy (:data:`NOISE_LIMIT`)."""

    def __init__(self, n: int):
        self.threads = _jit.get_num_threads()
        self.x = np.ones(n)  # written once: every page is mapped before it is timed
        m = n // 2
        self.a, self.b, self.c = np.zeros(m), np.ones(m), np.full(m, 2.0)
        _read_pass(self.x[:1024], self.threads, 1)  # compile (or load from Numba's cache)
        _triad_pass(self.a[:1024], self.b[:1024], self.c[:1024], 3.0, self.threads, 1)
        self.read_bytes = BANDWIDTH_PASSES * self.x.nbytes
        self.triad_bytes = BANDWIDTH_PASSES * 3 * self.a.nbytes
        self.read, self.triad = [], []

    def sample(self) -> None:
        """One read and one triad measurement, appended to the run's samples (in GB/s)."""
        t = _timed(_read_pass, self.x, self.threads, BANDWIDTH_PASSES)
        self.read.append(self.read_bytes / t / 1e9)
        t = _timed(_triad_pass, self.a, self.b, self.c, 3.0, self.threads, BANDWIDTH_PASSES)
        self.triad.append(self.triad_bytes / t / 1e9)

    def result(self) -> Bandwidth:
        return Bandwidth(max(self.read), max(self.triad), self.read_bytes, self.triad_bytes, self.threads,
                         read_samples_gbs=list(self.read), triad_samples_gbs=list(self.triad))

    def close(self) -> None:
        self.x = self.a = self.b = self.c = None


def memory_bandwidth(n: int, repeats: int) -> Bandwidth:
    """Best-of-``repeats`` read and triad bandwidth over float64 arrays of ``n`` (read) and ``n // 2``
    (triad, three arrays) elements, in GB/s (1e9 bytes per second). The triad counts three arrays
    moved per pass, as STREAM does (the write-allocate read of ``a`` is not counted)."""
    probe = BandwidthProbe(n)
    for _ in range(repeats):
        probe.sample()
    return probe.result()


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Inputs, bytes moved and errors
# --------------------------------------------------------------------------------------------------
#: Largest input (elements) the float64 reference gets whole. The references are written for clarity,
#: with a float64 temporary per step: on the headline's 262 M logits one call needs about 16 GB. Above
#: this size the reference runs on the input's first rows (see :func:`reference_rows`).
REFERENCE_ELEMENTS = 1 << 25


def _arrays(case) -> list:
    """Every NumPy array among a case's positional and keyword arguments."""
    return [a for a in (*case.args, *case.kwargs.values()) if isinstance(a, np.ndarray)]


def diff_positions(spec: LossSpec, case) -> list:
    """Positions in ``case.args`` of the differentiated inputs (``spec.diff``), in ``diff`` order."""
    params = inspect.signature(spec.fn).parameters
    names = list(params)
    # an optional differentiated input the case leaves out (linear_cross_entropy's linear_bias=None)
    # has no gradient
    diff = [d for d in spec.diff
            if names.index(d) < len(case.args) or case.kwargs.get(d) is not None or params[d].default is not None]
    positions = [names.index(d) for d in diff]
    missing = [d for d, p in zip(diff, positions) if p >= len(case.args)]
    if missing:
        raise ValueError(f"BENCH case of {spec.name} passes {', '.join(missing)} by keyword; pass it positionally")
    return positions


def as_float64(case):
    """The case with every floating-point array converted to float64 (exact for float32 data)."""

    def up(a):
        return a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a

    return dataclasses.replace(case, args=tuple(up(a) for a in case.args),
                               kwargs={k: up(v) for k, v in case.kwargs.items()})


def incoming_gradient(value, rng):
    """The ``grad_output`` of the benchmark: ``None`` (that is 1) for a reduced loss, a fixed random
    array for an unreduced output (with ones, softmax's gradient is exactly zero, so its error says
    nothing)."""
    value = np.asarray(value)
    if value.ndim == 0:
        return None
    return rng.standard_normal(value.shape).astype(value.dtype)


def reference_rows(case, pos: int, limit: Optional[int] = None) -> Optional[int]:
    """How many leading rows of ``case.args[pos]`` the reference gets, or ``None`` for all of them
    (when the input has at most ``limit`` elements, default :data:`REFERENCE_ELEMENTS`)."""
    limit = REFERENCE_ELEMENTS if limit is None else limit
    x = case.args[pos]
    if x.size <= limit or x.ndim == 0:
        return None
    return max(1, limit // (x.size // x.shape[0]))


def leading_rows(case, n: int, rows: int, grad_output=None):
    """``(case, grad_output)`` cut to their first ``rows`` rows: every positional array and
    ``grad_output`` whose first axis has length ``n``. Keyword arrays (per-class weights) stay whole."""

    def cut(a):
        return a[:rows] if isinstance(a, np.ndarray) and a.ndim and a.shape[0] == n else a

    return dataclasses.replace(case, args=tuple(cut(a) for a in case.args)), cut(grad_output)


#: Losses whose value reads only part of an input: ``name -> position of that input``. The NLL loss
#: gathers one log-probability per target (the next argument); reading the whole ``(N, C)`` input is
#: not needed.
GATHERED_INPUTS = {"nll_loss": 0}


def bytes_read(name: str, case) -> int:
    """Bytes the value must read: every input array, except where a loss gathers from one
    (:data:`GATHERED_INPUTS`: one element per target)."""
    total = sum(a.nbytes for a in _arrays(case))
    pos = GATHERED_INPUTS.get(name)
    if pos is not None:
        x, target = case.args[pos], case.args[pos + 1]
        total += np.size(target) * x.itemsize - x.nbytes
    return total


def bytes_moved(name: str, case, value, grads, grad_output=None) -> tuple:
    """``(value_bytes, value_and_grad_bytes)``: what the value reads (:func:`bytes_read`) plus an
    unreduced output written; value and gradient also read ``grad_output`` and write the gradients."""
    read = bytes_read(name, case)
    out = np.asarray(value).nbytes if np.ndim(value) > 0 else 0
    incoming = 0 if grad_output is None else grad_output.nbytes
    return read + out, read + out + incoming + sum(np.asarray(g).nbytes for g in grads)


def rel_err(got, want) -> float:
    """``max |got - want| / max |want|`` over all elements; equal values (also NaN against NaN and
    infinities of one sign) count as no error, and the scale is taken over the finite ``want``.

    One float64 temporary on the common (finite) path: this runs on gigabyte gradients.
    """
    got, want = np.asarray(got), np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf; handled below
        diff = np.asarray(np.subtract(got, want, dtype=np.float64))  # 0-d inputs give a scalar
    np.abs(diff, out=diff)
    worst = float(diff.max(initial=0.0))
    scale = max(float(want.max(initial=0.0)), -float(want.min(initial=0.0)))
    if not (math.isfinite(worst) and math.isfinite(scale)):  # NaN or inf somewhere: the careful path
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        worst = float(np.max(np.where(same, 0.0, diff), initial=0.0))
        scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
    return worst / scale if scale > 0 else worst


def grads_rel_err(got, want) -> float:
    """The worst :func:`rel_err` over several gradients."""
    return max((rel_err(g, w) for g, w in zip(got, want)), default=0.0)


def _as_tuple(grads) -> tuple:
    """``value_and_grad`` returns one array for one differentiated input, a tuple for several."""
    return (grads,) if isinstance(grads, np.ndarray) else tuple(grads)


# --------------------------------------------------------------------------------------------------
# The callables: fastloss, the reference, PyTorch
# --------------------------------------------------------------------------------------------------
def fastloss_calls(spec: LossSpec, case, grad_output=None):
    """``(value, value_and_grad)`` closures of fastloss on ``case``; ``value_and_grad`` returns
    ``(value, grads)`` with ``grads`` a tuple in ``spec.diff`` order."""
    vg = value_and_grad(spec.fn)

    def value():
        return spec.fn(*case.args, **case.kwargs)

    def value_grad():
        v, g = vg(*case.args, grad_output=grad_output, **case.kwargs)
        return v, _as_tuple(g)

    return value, value_grad


def reference_call(spec: LossSpec, case, grad_output=None):
    """A closure of the float64 reference on float64 copies of ``case``: ``(value, grads)``."""
    c64 = as_float64(case)
    g64 = None if grad_output is None else grad_output.astype(np.float64)

    def reference():
        v, g = spec.reference(*c64.args, grad_output=g64, **c64.kwargs)
        return v, _as_tuple(g)

    return reference


def import_torch(threads: int):
    """PyTorch on ``threads`` threads, or ``None`` when it is not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    torch.set_num_threads(threads)
    return torch


def to_torch(torch, a, requires_grad: bool = False, device=None):
    """A NumPy array as a tensor sharing its memory (integer arrays as int64, PyTorch's index type),
    or copied to ``device`` when one is given; anything else unchanged."""
    if not isinstance(a, np.ndarray):
        return a
    if a.dtype.kind in "iu":
        a = a.astype(np.int64, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device is not None:
        t = t.to(device)
    return t.requires_grad_(True) if requires_grad else t


def torch_calls(torch, spec: LossSpec, case, diff_pos: list, grad_output=None, device=None):
    """``(forward, forward_backward)`` closures computing the loss in PyTorch (on ``device``, default
    the CPU), or ``None`` when PyTorch has no such loss. ``forward_backward`` returns ``(value, grads)``
    as tensors, the gradients from ``torch.autograd.grad`` with ``grad_output`` (default: ones). The
    calls do not synchronise a GPU device: the caller does."""
    f = spec.torch_fn()
    if f is None:
        return None
    kwargs = {k: to_torch(torch, v, device=device) for k, v in case.kwargs.items()}
    plain = [to_torch(torch, a, device=device) for a in case.args]
    leaves = [to_torch(torch, a, requires_grad=i in diff_pos, device=device) for i, a in enumerate(case.args)]
    inputs = [leaves[i] for i in diff_pos]
    incoming = None if grad_output is None else to_torch(torch, grad_output, device=device)

    def forward():
        with torch.no_grad():
            return f(torch, *plain, **kwargs)

    def forward_backward():
        value = f(torch, *leaves, **kwargs)
        g = torch.ones_like(value) if incoming is None else incoming
        grads = torch.autograd.grad(value, inputs, grad_outputs=g)
        return value.detach(), grads

    return forward, forward_backward


def _numpy(t):
    return t.detach().numpy()


# --------------------------------------------------------------------------------------------------
# One loss at one dtype
# --------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One operation (value, or value and gradient) of one loss, with its peers. Times are means over
    repeats; ``*spread`` the relative standard deviation of those repeats."""

    time_s: float
    repeats: int
    bytes: int
    gbs: float
    bw_fraction: float
    median_s: float = math.nan
    spread: float = math.nan
    rel_err: float = math.nan
    value_rel_err: float = math.nan
    reference_time_s: Optional[float] = None
    reference_spread: Optional[float] = None
    speedup_vs_reference: Optional[float] = None
    torch_time_s: Optional[float] = None
    torch_spread: Optional[float] = None
    speedup_vs_torch: Optional[float] = None
    torch_rel_err: Optional[float] = None


@dataclass
class Row:
    loss: str
    dtype: str
    shape: tuple
    elements: int
    value: Measurement
    value_and_grad: Measurement
    reference_rows: Optional[int] = None  # the reference ran on these leading rows only (None: all)
    wall_s: float = 0.0  # time spent on this row, compilation and peers included
    notes: list = field(default_factory=list)


def _measurement(timing: Timing, nbytes: int) -> Measurement:
    """A measurement whose ``bw_fraction`` is filled in once the run's bandwidth is known
    (:func:`set_bandwidth_fractions`)."""
    gbs = nbytes / timing.mean_s / 1e9
    return Measurement(timing.mean_s, timing.repeats, nbytes, gbs, math.nan, timing.median_s, timing.spread)


def set_bandwidth_fractions(rows: list, bw: Bandwidth) -> None:
    """Each measurement's fraction of the run's bandwidth: read for the value, triad for value and
    gradient. A fraction above 1 is possible (an input that partly fits in the caches, a bandwidth
    measurement slowed by other load) and is never left without a note."""
    for r in rows:
        for op, m, peak, kind in (("value", r.value, bw.read_gbs, "read"),
                                  ("v+grad", r.value_and_grad, bw.triad_gbs, "triad")):
            m.bw_fraction = m.gbs / peak
            if m.bw_fraction > 1:
                r.notes.append(f"{op} moved {100 * m.bw_fraction:.0f}% of the measured {kind} bandwidth: its "
                               f"arrays partly fit in the caches, or the bandwidth measurements were slowed "
                               f"by other load")


def bench_loss(spec: LossSpec, dtype: str, size: int, settings: Settings, torch, progress: "Progress") -> Row:
    """Time one loss at one dtype beside its peers (interleaved: :func:`time_interleaved`) and measure
    its errors (see the module docstring)."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    case = spec.bench(rng, np.dtype(dtype), size)
    pos = diff_positions(spec, case)
    label = f"{spec.name} {dtype}"
    x = case.args[pos[0]]

    progress.step(f"{label}: compiling")
    go = incoming_gradient(spec.fn(*case.args, **case.kwargs), rng)  # also the JIT warm-up of the value
    value, value_grad = fastloss_calls(spec, case, go)
    value_grad()  # JIT warm-up of value and gradient
    # the errors are measured where the reference runs: the whole input, or its first rows
    err_case, err_go = case, go
    ref_rows = reference_rows(case, pos[0])
    if ref_rows is not None:
        err_case, err_go = leading_rows(case, x.shape[0], ref_rows, go)
    calls = None if torch is None else torch_calls(torch, spec, case, pos, go)

    progress.step(f"{label}: value beside PyTorch")
    group = {"fastloss": value} | ({"torch": calls[0]} if calls else {})
    t_value, out = time_interleaved(group, settings, warmup=("torch",) if calls else ())
    out_value, t_out = out["fastloss"], out.get("torch")
    del out

    progress.step(f"{label}: value and gradient beside the reference and PyTorch")
    group = {"fastloss": value_grad, "reference": reference_call(spec, err_case, err_go)}
    group |= {"torch": calls[1]} if calls else {}
    t_vg, out = time_interleaved(group, settings, warmup=("torch",) if calls else ())
    out_vg, (ref_value, ref_grads), t_out_vg = out["fastloss"], out["reference"], out.get("torch")
    del out, group

    progress.step(f"{label}: errors")
    v_bytes, vg_bytes = bytes_moved(spec.name, case, out_value, out_vg[1], go)
    v, g = _measurement(t_value["fastloss"], v_bytes), _measurement(t_vg["fastloss"], vg_bytes)
    row = Row(spec.name, dtype, tuple(x.shape), int(x.size), v, g, reference_rows=ref_rows)
    if ref_rows is not None:
        sub_value, sub_value_grad = fastloss_calls(spec, err_case, err_go)
        out_value, out_vg = sub_value(), sub_value_grad()
        row.notes.append(f"float64 reference on the first {ref_rows} of {x.shape[0]} rows (the whole "
                         f"input needs too much memory): errors from those rows, its time scaled by rows")
    v.rel_err = v.value_rel_err = rel_err(out_value, ref_value)
    g.rel_err, g.value_rel_err = grads_rel_err(out_vg[1], ref_grads), rel_err(out_vg[0], ref_value)
    t_ref = t_vg["reference"]
    g.reference_time_s = t_ref.mean_s * (x.shape[0] / ref_rows if ref_rows else 1)
    g.reference_spread = t_ref.spread
    g.speedup_vs_reference = g.reference_time_s / g.time_s
    del out_value, out_vg

    if torch is not None and calls is None:
        row.notes.append("PyTorch has no such loss")
    if calls is not None:
        for m, t in ((v, t_value["torch"]), (g, t_vg["torch"])):
            m.torch_time_s, m.torch_spread, m.speedup_vs_torch = t.mean_s, t.spread, t.mean_s / m.time_s
        if err_case is not case:
            forward, forward_backward = torch_calls(torch, spec, err_case, pos, err_go)
            t_out, t_out_vg = forward(), forward_backward()
        v.torch_rel_err = rel_err(_numpy(t_out), ref_value)
        g.torch_rel_err = grads_rel_err([_numpy(t) for t in t_out_vg[1]], ref_grads)
    row.wall_s = time.perf_counter() - start
    return row


def family_problem(spec: LossSpec) -> Optional[str]:
    """Why ``spec`` cannot be benchmarked here (its family does not import, or has no BENCH entry),
    or ``None``."""
    try:
        module = spec.module
    except ImportError as e:
        hint = " (build the Cython extensions: python setup.py build_ext --inplace)" if "_cy" in str(e) else ""
        return f"family module fastloss.families.{spec.family} is not available: {e}{hint}"
    except Exception as e:  # a family module broken in any other way must not end the run either
        return f"family module fastloss.families.{spec.family} failed to import: {type(e).__name__}: {e}"
    if spec.name not in getattr(module, "BENCH", {}):
        return f"fastloss.families.{spec.family} has no BENCH entry for {spec.name}"
    return None


# --------------------------------------------------------------------------------------------------
# Progress on stderr
# --------------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr, redrawn in place with ``\\r`` (no dependency)."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.stream = stream if stream is not None else sys.stderr
        self._last = 0

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * min(self.done, self.total) // self.total
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last))
        self.stream.flush()
        self._last = len(line)
        self.done += 1

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------
STEPS_PER_LOSS = 4  # compiling, value beside torch, value and gradient beside the peers, errors


def machine() -> dict:
    """What the numbers were measured on: processor, logical cores, operating system."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}"}


@dataclass
class Section:
    """One table of the report. The CPU losses are the main section; plug-in modules (see
    :data:`SECTION_MODULES`) add their own, which share the table, JSON and plot output."""

    name: str  # "cpu", "cuda", "small", ...: a JSON key and the plot's label suffix
    title: str  # a line above the section's table
    rows: list = field(default_factory=list)  # Row objects: the columns of the main table
    skipped: list = field(default_factory=list)  # {"loss", "dtype", "reason"}
    notes: list = field(default_factory=list)  # lines printed under the section's table
    peers: tuple = ("vs ref", "vs torch")  # the two speed-up columns' headings
    bandwidth_fractions: bool = True  # False: %bw is not meaningful here (printed as "-")

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "peers": list(self.peers),
                "results": [_row_json(r) for r in self.rows], "skipped": self.skipped, "notes": self.notes}


def _row_json(r: "Row") -> dict:
    return dataclasses.asdict(r) | {"shape": list(r.shape)}


@dataclass
class Report:
    versions: dict
    threads: int
    settings: dict
    bandwidth: Bandwidth
    rows: list
    skipped: list
    machine: dict = field(default_factory=machine)
    sections: list = field(default_factory=list)  # extra Sections from plug-ins, after the main one

    @property
    def noisy(self) -> bool:
        return self.bandwidth.noisy

    def noise(self) -> list:
        """Why the run is flagged noisy (empty when it is not)."""
        bw, out = self.bandwidth, []
        for kind, samples, spread in (("read", bw.read_samples_gbs, bw.read_spread),
                                      ("triad", bw.triad_samples_gbs, bw.triad_spread)):
            if spread > NOISE_LIMIT:
                out.append(f"the {len(samples)} {kind} bandwidth measurements ranged from {min(samples):.1f} "
                           f"to {max(samples):.1f} GB/s ({100 * spread:.0f}% apart; over "
                           f"{100 * NOISE_LIMIT:.0f}% means other work shared the machine, or its memory "
                           "bandwidth drifted by itself, as a virtual machine's can)")
        return out

    def to_json(self) -> dict:
        return {
            "schema": "fastloss-bench/2",
            "versions": self.versions,
            "machine": self.machine,
            "threads": self.threads,
            "settings": self.settings,
            "noisy": self.noisy,
            "noise": self.noise(),
            "bandwidth": self.bandwidth.to_json(),
            "results": [_row_json(r) for r in self.rows],
            "skipped": self.skipped,
            "sections": [sec.to_json() for sec in self.sections],
        }


@dataclass
class Context:
    """What a plug-in section gets from the run: the threads, PyTorch (or ``None``), the settings,
    the progress bar, and the bandwidth probe (call ``probe.sample()`` between its own measurements
    to extend the run's noise check over its time)."""

    threads: int
    torch: object
    settings: Settings
    progress: "Progress"
    probe: BandwidthProbe


def run(names: list, settings: Settings, *, size: Optional[int] = None, use_torch: bool = True,
        progress_enabled: bool = False, sections: tuple = ()) -> Report:
    """Measure the bandwidth, then every loss in ``names`` at every dtype of ``settings``, measuring the
    bandwidth again after each loss; then the plug-in ``sections``: callables ``f(Context) -> Section``."""
    import fastloss

    threads = fastloss.get_num_threads()
    torch = import_torch(threads) if use_torch else None
    todo, skipped = [], []
    for name in names:
        problem = family_problem(REGISTRY[name])
        if problem:
            skipped.append({"loss": name, "dtype": None, "reason": problem})
        else:
            todo.extend((name, dt) for dt in settings.dtypes)
    progress = Progress(1 + STEPS_PER_LOSS * len(todo) + len(sections), progress_enabled)
    progress.step("memory bandwidth")
    probe = BandwidthProbe(settings.bandwidth_elements)
    for _ in range(settings.bandwidth_repeats):
        probe.sample()
    rows, extra = [], []
    try:
        for i, (name, dt) in enumerate(todo, 1):
            size_n = loss_size(name, size, settings.size_scale)
            try:
                rows.append(bench_loss(REGISTRY[name], dt, size_n, settings, torch, progress))
            except Exception as e:  # one broken loss must not end the run: note it and go on
                skipped.append({"loss": name, "dtype": dt, "reason": f"{type(e).__name__}: {e}"})
            progress.done = 1 + STEPS_PER_LOSS * i  # in step even when a loss stopped half-way
            gc.collect()  # the next loss's inputs should not meet this one's garbage
            probe.sample()  # the bandwidth again, between the losses: a busy machine shows here
        context = Context(threads, torch, settings, progress, probe)
        for make in sections:
            section = make(context)
            if section is not None:
                extra.append(section)
    finally:
        progress.close()
    bw = probe.result()
    probe.close()
    set_bandwidth_fractions(rows, bw)
    versions = {
        "fastloss": fastloss.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": importlib.import_module("numba").__version__,
        "torch": torch.__version__ if torch is not None else None,
    }
    sizes = {n: loss_size(n, size, settings.size_scale) for n in names}
    meta = {"mode": settings.mode, "dtypes": list(settings.dtypes), "size_scale": settings.size_scale,
            "budget_s": settings.budget_s, "sizes": sizes}
    return Report(versions, threads, meta, bw, rows, skipped, sections=extra)


# --------------------------------------------------------------------------------------------------
# Output: table and plot
# --------------------------------------------------------------------------------------------------
def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}x"


def _fmt_err(x: Optional[float]) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _fmt_fraction(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{100 * x:.0f}%" + ("*" if x > 1 else "")  # over 100%: a note explains it


def header(report: Report) -> list:
    """The lines above the table: versions and mode, machine, bandwidth, and the noise verdict. The
    README's sample output starts with these lines."""
    v, bw, m = report.versions, report.bandwidth, report.machine
    mode = report.settings.get("mode", "default")
    lines = [
        f"fastloss {v['fastloss']} bench ({mode}): numpy {v['numpy']}, numba {v['numba']}, "
        f"torch {v['torch'] or 'not installed'}, {report.threads} thread(s)",
        f"machine: {m['cpu']}, {m['cores']} logical cores, {m['system']}",
        f"memory bandwidth (Numba kernels, {bw.threads} thread(s), best of {len(bw.read_samples_gbs)} "
        f"measurements through the run): read {bw.read_gbs:.1f} GB/s (spread {100 * bw.read_spread:.0f}%), "
        f"triad {bw.triad_gbs:.1f} GB/s (spread {100 * bw.triad_spread:.0f}%)",
    ]
    if mode == "quick":
        lines.append(f"--quick: inputs at {report.settings['size_scale']:g} of the default size, partly in cache")
    if report.noisy:
        lines.append("NOISY RUN: " + "; ".join(report.noise()) + ". The times and ratios below are not "
                     "reliable: rerun on a quiet machine.")
    return lines


def section_table(rows: list, peers: tuple = ("vs ref", "vs torch"), bandwidth_fractions: bool = True) -> list:
    """The table of ``rows`` (:class:`Row`), one line per operation."""
    head = ("loss", "dtype", "shape", "op", "time", "±", "GB/s", "%bw", *peers, "rel err")
    body = []
    for r in rows:
        shape = "x".join(map(str, r.shape)) or "()"
        ref_mark = "~" if r.reference_rows else ""  # the reference's time was scaled from its first rows
        for op, m, first in (("value", r.value, True), ("v+grad", r.value_and_grad, False)):
            body.append((r.loss if first else "", r.dtype if first else "", shape if first else "", op,
                         _fmt_time(m.time_s), f"{100 * m.spread:.0f}%", f"{m.gbs:.1f}",
                         _fmt_fraction(m.bw_fraction) if bandwidth_fractions else "-",
                         ref_mark + _fmt_ratio(m.speedup_vs_reference) if m.speedup_vs_reference else "-",
                         _fmt_ratio(m.speedup_vs_torch), _fmt_err(m.rel_err)))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    right = set(range(4, len(head)))

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)]


LEGEND = [
    "time     mean of repeats, after a warm-up call; fastloss and its peers timed in alternation",
    "±        relative standard deviation of fastloss's repeats",
    "GB/s     bytes moved per second: inputs read (nll_loss: one element per target), an unreduced",
    "         output written; for v+grad also its grad_output read and the gradients written",
    "%bw      of the measured read bandwidth (value) or triad bandwidth (v+grad); * over 100%: see notes",
    "vs ref   the float64 NumPy reference's time over fastloss's; it computes value and gradients,",
    "         so only v+grad is compared (~: timed on the first rows and scaled, see the notes)",
    "vs torch PyTorch CPU forward (value) or forward+backward (v+grad) time over fastloss's",
    "rel err  max |fastloss - ref| / max |ref| of the value (value) or the gradients (v+grad)",
]


def format_table(report: Report) -> str:
    """The human-readable report: the header, the main table, its legend and notes, then each
    plug-in section's table and notes."""
    lines = [*header(report), "", *section_table(report.rows), "", *LEGEND]
    notes = [f"{r.loss} {r.dtype}: {n}" for r in report.rows for n in r.notes]
    notes += [f"skipped {', '.join(who)}: {reason}" for reason, who in _skipped_by_reason(report.skipped).items()]
    if notes:
        lines += ["", "notes:", *("  " + n for n in notes)]
    for sec in report.sections:
        lines += ["", sec.title, "", *section_table(sec.rows, sec.peers, sec.bandwidth_fractions)]
        notes = [*sec.notes, *(f"{r.loss} {r.dtype}: {n}" for r in sec.rows for n in r.notes)]
        notes += [f"skipped {', '.join(who)}: {reason}" for reason, who in _skipped_by_reason(sec.skipped).items()]
        if notes:
            lines += ["", "notes:", *("  " + n for n in notes)]
    return "\n".join(lines)


def _skipped_by_reason(skipped: list) -> dict:
    """``{reason: ["loss dtype", ...]}``: a missing family is one note, not one per loss."""
    out = {}
    for s in skipped:
        out.setdefault(s["reason"], []).append(s["loss"] + (f" {s['dtype']}" if s["dtype"] else ""))
    return out


def _finite_or_null(obj):
    """The JSON tree with NaN and infinities replaced by ``null`` (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_title(report: Report) -> str:
    v, m = report.versions, report.machine
    title = (f"fastloss {v['fastloss']} bench ({report.settings.get('mode', 'default')} run), "
             f"{report.threads} thread(s)\n{m['cpu']}, {m['cores']} cores; memory read "
             f"{report.bandwidth.read_gbs:.1f} GB/s, triad {report.bandwidth.triad_gbs:.1f} GB/s")
    return title + ("\nNOISY RUN: bandwidth measurements disagreed, ratios unreliable" if report.noisy else "")


def write_plot(report: Report, path: str) -> None:
    """A horizontal bar chart of fastloss's speed-ups over each peer, written as a PNG: every bar starts
    at 1x (no difference) and runs right for a speed-up, left for a slow-down, on a log scale, with its
    value written at its end. One group of bars per loss and dtype, plug-in sections included."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    series = [
        ("value vs PyTorch forward", lambda r: r.value.speedup_vs_torch),
        ("value+grad vs PyTorch forward+backward", lambda r: r.value_and_grad.speedup_vs_torch),
        ("value+grad vs float64 NumPy reference", lambda r: r.value_and_grad.speedup_vs_reference),
    ]
    labelled = [(f"{r.loss} ({r.dtype})", r) for r in report.rows]
    for sec in report.sections:
        labelled += [(f"{r.loss} ({r.dtype}, {sec.name})", r) for r in sec.rows]
    labelled = labelled[::-1]  # barh draws bottom-up: keep the table's order top-down
    y = np.arange(len(labelled))
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10.0, 2.2 + 0.5 * max(len(labelled), 1)))
    values = []
    for k, (title, get) in enumerate(series):
        ys = y + ((len(series) - 1) / 2 - k) * height
        pts = [(yy, get(r)) for yy, (_, r) in zip(ys, labelled) if get(r)]  # a missing peer: no bar
        if not pts:
            ax.barh([], [], height, label=title)
            continue
        yy, vals = zip(*pts)
        values += vals
        ax.barh(yy, [v - 1.0 for v in vals], height, left=1.0, label=title)  # from 1x, either way
        for yv, v in pts:
            ax.text(v * (1.04 if v >= 1 else 1 / 1.04), yv, f"{v:.0f}x" if v >= 10 else f"{v:.2g}x", va="center",
                    ha="left" if v >= 1 else "right", fontsize=7)
    lo = min([0.5, *values]) / 1.6
    hi = max([2.0, *values]) * 1.6
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, [label for label, _ in labelled], fontsize=8)
    ax.set_xlabel("speed-up of fastloss: peer time / fastloss time (log scale; left of 1x the peer is faster)")
    ax.set_title(plot_title(report), fontsize=9)
    ax.grid(axis="x", which="major", linewidth=0.3)
    fig.tight_layout()
    # below the figure, whatever its height; "tight" grows the saved image to take it in
    fig.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(series), frameon=False)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {x}")
    return x


def _split(values) -> list:
    """``--opt a,b --opt c`` → ``['a', 'b', 'c']`` (order kept, duplicates dropped)."""
    out = []
    for v in values or ():
        for item in v.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


#: Optional sections of the report, one module each. A module here that exists provides
#: ``add_arguments(parser)`` (its own options, e.g. ``--device cuda`` or ``--small``) and
#: ``section(args, context) -> Section | None`` (``None`` when its option was not given), called after
#: the CPU losses with a :class:`Context`; its :class:`Section` (rows of :class:`Row`) is printed,
#: written to the JSON (``"sections"``) and plotted with the rest. The modules are imported when the
#: command line is built, so they must import nothing heavy (no numba.cuda, no CuPy) at module level.
#: ``fastloss bench --device cuda`` (:mod:`fastloss.bench_cuda`, chosen in :mod:`fastloss.__main__`)
#: and ``fastloss bench --small`` (:mod:`fastloss.bench_small`) are modes of their own, not sections:
#: their measurements (GPU batches; per-call latency) share neither the CPU table's columns nor its
#: bandwidth fractions.
SECTION_MODULES: tuple = ()


def section_modules() -> list:
    """The :data:`SECTION_MODULES` present in this installation, imported."""
    return [importlib.import_module(name) for name in SECTION_MODULES if importlib.util.find_spec(name) is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastloss bench``, the plug-in sections' included."""
    parser.add_argument("--quick", action="store_true",
                        help="small inputs and few repeats: about 30 s once Numba's cache is warm")
    parser.add_argument("--loss", action="append", metavar="NAME",
                        help="a loss to run (repeatable, or a comma list); default: every loss")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help="float32, float64 or all (repeatable, or a comma list); default: float32")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads for fastloss's kernels and PyTorch (default: all cores)")
    parser.add_argument("--size", type=_positive_int, metavar="ELEMENTS",
                        help=f"elements of every loss's largest input (default: {DEFAULT_SIZE}, "
                             f"cross_entropy {HEADLINE_SIZES['cross_entropy']} = 8192x32000)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of the table (shape: "
                             "see the docstring of fastloss.bench)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also write a bar chart of the speed-ups (needs matplotlib: pip install 'fastloss[plot]')")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    parser.add_argument("--small", action="store_true",
                        help="time small calls instead (per-call mean beside torch; also after a torch step, "
                             "and with torch busy)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")
    # Shrinks every input (tests run the whole command on tiny arrays); not part of the interface.
    parser.add_argument("--size-scale", type=_positive_float, default=None, help=argparse.SUPPRESS)
    for module in section_modules():
        module.add_arguments(parser)


def default_order(names: list) -> list:
    """The headline losses first, then the others in the order given."""
    return [n for n in HEADLINE_SIZES if n in names] + [n for n in names if n not in HEADLINE_SIZES]


def check_arguments(parser: argparse.ArgumentParser, args) -> tuple:
    """Validate what argparse cannot; ``parser.error`` (exit 2) on bad input.

    Returns ``(loss names, dtypes)``.
    """
    valid = sorted(REGISTRY)
    names = _split(args.loss) or default_order(valid)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown loss {', '.join(map(repr, unknown))}; valid names: {', '.join(valid)}")
    dtypes = _split(args.dtype)
    if "all" in dtypes:
        dtypes = list(DTYPES)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        parser.error(f"unknown dtype {', '.join(map(repr, bad))}; use float32, float64 or all")
    if args.plot is not None:
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib, which is not installed: pip install 'fastloss[plot]'")
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            parser.error(f"--plot: folder {folder} does not exist")
    return names, dtypes


def measure(args, parser: argparse.ArgumentParser) -> Report:
    """The measurements ``fastloss bench`` makes with parsed ``args`` (``parser.error`` on bad ones)."""
    names, dtypes = check_arguments(parser, args)
    if args.threads is not None:
        import fastloss  # the public setter: it governs the Numba and the Cython kernels

        fastloss.set_num_threads(args.threads)
    base = QUICK if args.quick else DEFAULT
    settings = dataclasses.replace(base, dtypes=tuple(dtypes) or base.dtypes)
    if args.size_scale is not None:  # the hidden test knob shrinks the bandwidth arrays too
        settings = dataclasses.replace(
            settings, size_scale=settings.size_scale * args.size_scale,
            bandwidth_elements=max(1 << 12, int(settings.bandwidth_elements * args.size_scale)))
    progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    sections = tuple(functools.partial(module.section, args) for module in section_modules())
    return run(names, settings, size=args.size, use_torch=not args.no_torch, progress_enabled=progress,
               sections=sections)


def main(args, parser: argparse.ArgumentParser) -> int:
    """Run ``fastloss bench`` with parsed ``args``; returns the exit status."""
    if args.small:  # a mode of its own: per-call latency of small inputs (fastloss.bench_small)
        from . import bench_small

        names, dtypes = check_arguments(parser, args)
        return bench_small.main(args, names, dtypes)
    report = measure(args, parser)
    if args.plot is not None:  # before the output: a reader that stops early must not lose the plot
        write_plot(report, args.plot)
    if args.json:
        sys.stdout.write(json.dumps(_finite_or_null(report.to_json()), indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(format_table(report) + "\n")
        if args.plot is not None:
            sys.stdout.write(f"\nplot written to {args.plot}\n")
    sys.stdout.flush()  # here, where a closed pipe is handled, rather than at interpreter exit
    return 0
