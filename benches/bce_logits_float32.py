"""float32 binary_cross_entropy_with_logits: the float32-arithmetic kernel against the float64-arithmetic
one on the same float32 data, timed alternately in one process (value + gradient into a reused buffer).

    PYTHONPATH=. python benches/bce_logits_float32.py [n] [rounds]
"""
import os
import sys
import time

import numpy as np

import fastloss as fl
from fastloss.families import pointwise as pw


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    t = (rng.uniform(size=n) < 0.5).astype(np.float32)
    buf = np.empty_like(x)
    vg = fl.value_and_grad(fl.binary_cross_entropy_with_logits)

    def new():
        vg(x, t, out=buf)

    def old():  # the float64-arithmetic kernel through the general chunk routine, as before
        pw._fused(pw._bce_logits_chunk, x, t, gscale=1.0 / n, gout=buf)


    runs = {"float32 arithmetic (now)": new, "float64 arithmetic (before)": old}
    times = {name: [] for name in runs}
    for f in runs.values():
        f()
    for _ in range(rounds):
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    load = os.getloadavg()[0]
    print(f"n = {n} float32, median of {rounds} alternating rounds, load average {load:.2f}"
          + (" (UNDER LOAD)" if load > 2 else ""))
    for name, ts in times.items():
        m = float(np.median(ts))
        print(f"  {name}: {m * 1e3:8.2f} ms  {n / m / 1e9:6.2f} Gelem/s")


if __name__ == "__main__":
    main()
