"""Pointwise value + gradient bandwidth against a STREAM triad, timed alternately in one process.

    PYTHONPATH=. python benches/pointwise_bandwidth.py [n] [rounds]

The triad a = b + s c runs over three 200 MB float64 arrays in a Numba ``prange`` kernel on
``numba.get_num_threads()`` threads (3 * 200 MB moved). Each loss runs value + gradient on n float32
elements (default 50M) with ``out=`` reused and counts 2 reads (input, target) + 1 write (gradient).
Rounds alternate triad and losses, so that the machine's drifting bandwidth hits both alike; the
fraction is the median over rounds of (loss GB/s) / (triad GB/s of the same round).
"""
import os
import sys
import time

import numba
import numpy as np
from numba import prange

import fastloss as fl


@numba.njit(parallel=True, fastmath=True, cache=False)
def triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    m = 200_000_000 // 8
    a, b, c = np.zeros(m), np.ones(m), np.full(m, 2.0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    out = np.empty_like(x)
    losses = {name: fl.value_and_grad(getattr(fl, name)) for name in ("mse_loss", "l1_loss", "smooth_l1_loss")}
    runs = {"triad": lambda: triad(a, b, c, 3.0)}
    runs.update({name: (lambda vg=vg: vg(x, y, out=out)) for name, vg in losses.items()})
    for f in runs.values():  # compile and fault in the pages
        f()
    bytes_moved = {"triad": 3 * a.nbytes, **{name: 3 * x.nbytes for name in losses}}
    gbs = {name: [] for name in runs}
    for _ in range(rounds):
        for name, f in runs.items():
            gbs[name].append(bytes_moved[name] / timed(f) / 1e9)
    load = os.getloadavg()[0]
    print(f"threads {numba.get_num_threads()}, n = {n} float32, {rounds} alternating rounds, "
          f"load average {load:.2f}" + (" (UNDER LOAD: trust the ratios only)" if load > 2 else ""))
    triad_gbs = np.array(gbs["triad"])
    print(f"  {'triad':16s} {np.median(triad_gbs):6.1f} GB/s")
    for name in losses:
        g = np.array(gbs[name])
        print(f"  {name:16s} {np.median(g):6.1f} GB/s  {100 * np.median(g / triad_gbs):5.1f} % of the triad")


if __name__ == "__main__":
    main()
