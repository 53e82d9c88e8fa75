"""Dask over in-memory NumPy chunks beside the direct call: value + gradient throughput, one process.

The target (issue 14): ``fastloss.value_and_grad(loss)`` on a Dask array of in-memory chunks of >= 64 MB
reaches >= 80 % of the direct call's throughput on the same data with the same threads.

What is timed, alternately (round-robin, ``--repeat`` rounds, medians reported):

``direct``
    one call on the whole NumPy arrays, ``fastloss.get_num_threads()`` threads, a new gradient array
    (what a caller gets by default). The reference of every ratio.
``direct-out``
    the same into a reused ``out=`` buffer: the kernel without the page faults of a fresh gradient.
``threads``
    the Dask array (chunks of ``--chunk-mb``) computed with ``dask.persist`` on Dask's threaded
    scheduler with ``num_workers = get_num_threads()``: one chunk per worker thread, each chunk's kernels
    serial (fastloss sets Numba's thread count to 1 inside Dask's worker threads). The value and the
    gradient's chunks stay in memory, as the direct call's arrays do.
``sync``
    the same graph on the synchronous scheduler: one chunk after another in the calling thread, each on
    fastloss's own threads (Numba ``prange`` / fastloss's pool).
``threads-store``
    ``threads``, with every gradient chunk copied by ``da.store`` into one reused in-memory array (the
    copy a caller pays to get one contiguous gradient).

Each Dask path also pays for building and optimising the graph: a caller does too.

    python benches/dask_throughput.py                        # ~1 GiB per loss input, 64 MiB chunks
    python benches/dask_throughput.py --gib 2 --chunk-mb 128 --repeat 7
    python benches/dask_throughput.py --loss cross_entropy --paths direct,threads,sync

Run it on a quiet machine; the ratios come from one process, the paths interleaved, so a drift of the
machine's bandwidth hits every path alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import dask
import dask.array as da

import fastloss as fl

LOSSES = ("cross_entropy", "mse_loss", "binary_cross_entropy_with_logits")
PATHS = ("direct", "direct-out", "threads", "sync", "threads-store")


def make_case(loss, gib, chunk_mb, classes, seed=0):
    """``(args, dask_args, kwargs, input_bytes)``: NumPy arguments of about ``gib`` GiB of float32
    predictions, and the same arrays as Dask arrays cut along the rows into chunks of >= ``chunk_mb``
    MiB of predictions (the last one may be smaller)."""
    rng = np.random.default_rng(seed)
    if loss == "cross_entropy":
        rows = max(1, int(gib * 2**30 // (4 * classes)))
        x = rng.standard_normal((rows, classes), dtype=np.float32)
        x *= 3
        t = rng.integers(0, classes, rows, dtype=np.int64)
        chunk_rows = max(1, -(-chunk_mb * 2**20 // (4 * classes)))
        args = (x, t)
        dargs = (da.from_array(x, chunks=(chunk_rows, classes)), da.from_array(t, chunks=chunk_rows))
    else:
        n = int(gib * 2**30 // 4)
        x = rng.standard_normal(n, dtype=np.float32)
        if loss == "mse_loss":
            t = rng.standard_normal(n, dtype=np.float32)
        else:
            t = rng.random(n, dtype=np.float32)
        chunk = max(1, -(-chunk_mb * 2**20 // 4))
        args = (x, t)
        dargs = tuple(da.from_array(a, chunks=chunk) for a in args)
    return args, dargs, {}, x.nbytes


class Runner:
    def __init__(self, loss, args, dargs, kwargs):
        self.vg = fl.value_and_grad(getattr(fl, loss))
        self.args, self.dargs, self.kwargs = args, dargs, kwargs
        self.threads = fl.get_num_threads()
        self.out = np.zeros_like(args[0])  # touched: no page faults in direct-out / threads-store
        self.held = None

    def __call__(self, path):
        self.held = None  # free the previous result first: every path starts from the same memory
        if path == "direct":
            self.held = self.vg(*self.args, **self.kwargs)
        elif path == "direct-out":
            self.held = self.vg(*self.args, out=self.out, **self.kwargs)
        elif path in ("threads", "sync"):
            value, grad = self.vg(*self.dargs, **self.kwargs)
            opts = {"scheduler": "threads", "num_workers": self.threads} if path == "threads" else \
                {"scheduler": "synchronous"}
            self.held = dask.persist(value, grad, **opts)
        elif path == "threads-store":
            value, grad = self.vg(*self.dargs, **self.kwargs)
            stored = da.store(grad, self.out, lock=False, compute=False)
            self.held = dask.compute(value, stored, scheduler="threads", num_workers=self.threads)
        else:
            raise ValueError(path)
        return self.held

    def value(self, path):
        v = self(path)[0]
        v = v.compute(scheduler="synchronous") if hasattr(v, "compute") else v
        self.held = None
        return float(v)


def bench(loss, a, out=sys.stdout):
    args, dargs, kwargs, nbytes = make_case(loss, a.gib, a.chunk_mb, a.classes)
    run = Runner(loss, args, dargs, kwargs)
    nchunks = dargs[0].numblocks[0]
    print(f"\n{loss}: {args[0].shape} float32 ({nbytes / 2**30:.2f} GiB), {nchunks} chunks of "
          f"{dargs[0].chunks[0][0] * nbytes / args[0].shape[0] / 2**20:.0f} MiB, {run.threads} threads",
          file=out, flush=True)
    ref = None
    for path in a.paths:  # warm-up (compilation, cache loading) and the values
        v = run.value(path)
        ref = v if ref is None else ref
        if not np.isclose(v, ref, rtol=1e-6, atol=0):
            raise AssertionError(f"{loss} {path}: value {v!r} != direct {ref!r}")
    times = {p: [] for p in a.paths}
    for _ in range(a.repeat):
        for path in a.paths:
            t0 = time.perf_counter()
            run(path)
            times[path].append(time.perf_counter() - t0)
            run.held = None
    base = statistics.median(times[a.paths[0]])
    rows = {}
    for path in a.paths:
        med = statistics.median(times[path])
        rows[path] = {"median_s": med, "min_s": min(times[path]), "gib_s": nbytes / 2**30 / med,
                      "ratio": base / med}
        print(f"  {path:>14}: median {med:.3f} s (min {min(times[path]):.3f}), "
              f"{nbytes / 2**30 / med:5.2f} GiB/s of predictions, {base / med:6.1%} of {a.paths[0]}",
              file=out, flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of float32 predictions per loss (default 1)")
    ap.add_argument("--chunk-mb", type=int, default=64, help="MiB of predictions per Dask chunk (default 64)")
    ap.add_argument("--classes", type=int, default=32000, help="cross entropy's classes (default 32000)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="fastloss.set_num_threads (default: as is)")
    ap.add_argument("--loss", default=",".join(LOSSES), help="comma-separated losses")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help="comma-separated, the first is the reference of the ratios (default: "
                         + ",".join(PATHS) + ")")
    a = ap.parse_args(argv)
    a.paths = a.paths.split(",")
    if a.threads:
        fl.set_num_threads(a.threads)
    results = {loss: bench(loss, a) for loss in a.loss.split(",")}
    print("\nDask / direct throughput (target >= 80 %):")
    for loss, rows in results.items():
        print(f"  {loss:>34}: " + ", ".join(f"{p} {r['ratio']:.0%}" for p, r in rows.items() if p != a.paths[0]))
    return results


if __name__ == "__main__":
    main()
