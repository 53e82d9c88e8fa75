"""What ``fastloss bench`` measures with: the run's settings (:class:`Settings`, :data:`DEFAULT`,
:data:`QUICK`), interleaved timing of fastloss beside its peers (:class:`Timing`,
:func:`time_interleaved`, :func:`time_call`), and the machine's memory bandwidth (the Numba read and
triad passes, :class:`Bandwidth`, :class:`BandwidthProbe`, :func:`memory_bandwidth`).

The command itself is :mod:`fastloss.bench`.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numba import prange

from . import _jit

# --------------------------------------------------------------------------------------------------
# How long and how big
# --------------------------------------------------------------------------------------------------
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
