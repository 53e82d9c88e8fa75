"""The Dask backend beside the direct call: cross entropy's value and gradient over in-memory logits.

asv: ``DaskCrossEntropy.time_value_and_grad`` with ``path`` = ``direct`` (one call on the whole NumPy
array, ``fastloss.get_num_threads()`` threads, a new gradient array as a caller gets by default),
``direct-out`` (the same into a reused ``out=`` buffer: no page faults, the kernel alone), ``dask``
(the same array as a Dask array of 64 MiB chunks, ``dask.persist`` on as many Dask threads: the value
and the gradient's chunks held in memory, as the direct call's arrays are) or ``dask-store`` (each
chunk's gradient copied by ``da.store`` into one reused array), and ``peakmem_*`` of all four. The
target: ``dask`` at >= 80 % of ``direct``'s throughput. Skipped (``NotImplementedError``) where Dask is
not installed.

By hand: ``benches/dask_throughput.py`` (three losses, both schedulers, interleaved, one process) and
``examples/dask_larger_than_memory.py`` (logits generated chunk by chunk; peak RSS and throughput against
the in-memory kernel):

    python benches/bench_dask.py                        # in-memory: direct vs Dask, 512 MiB of logits
    python benches/bench_dask.py --rows 2621440 --stream  # 40 GiB generated chunk by chunk (not in CI)
"""
from __future__ import annotations

import time

import numpy as np

import fastloss

CLASSES = 4096
CHUNK_ROWS = 4096  # 64 MiB of float32 logits per chunk


def _inputs(rows, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, CLASSES), dtype=np.float32)
    t = rng.integers(0, CLASSES, rows, dtype=np.int64)
    return x, t


class DaskCrossEntropy:
    params = [["direct", "direct-out", "dask", "dask-store"], [4 * CHUNK_ROWS]]
    param_names = ["path", "rows"]
    timeout = 300

    def setup(self, path, rows):
        try:
            import dask
            import dask.array as da
        except ImportError:
            raise NotImplementedError("dask is not installed") from None
        self.dask, self.da = dask, da
        self.x, self.t = _inputs(rows)
        self.out = np.empty_like(self.x)
        self.out.fill(0)  # the pages exist: both paths write into touched memory
        self.vg = fastloss.value_and_grad(fastloss.cross_entropy)
        self.X = da.from_array(self.x, chunks=(CHUNK_ROWS, CLASSES))
        self.time_value_and_grad(path, rows)  # compile / load the kernels

    def time_value_and_grad(self, path, rows):
        if path == "direct":
            return self.vg(self.x, self.t)
        if path == "direct-out":
            return self.vg(self.x, self.t, out=self.out)
        value, grad = self.vg(self.X, self.t)
        if path == "dask":
            return self.dask.persist(value, grad, scheduler="threads", num_workers=fastloss.get_num_threads())
        stored = self.da.store(grad, self.out, lock=False, compute=False)
        return self.dask.compute(value, stored, scheduler="threads", num_workers=fastloss.get_num_threads())

    def peakmem_value_and_grad(self, path, rows):
        self.time_value_and_grad(path, rows)


def main(argv=None):
    import argparse
    import os
    import sys

    ap = argparse.ArgumentParser(description="Dask beside the direct call (cross entropy, value + gradient)")
    ap.add_argument("--rows", type=int, default=8 * CHUNK_ROWS)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stream", action="store_true",
                    help="the larger-than-memory case: logits generated chunk by chunk, gradient reduced")
    a = ap.parse_args(argv)
    if a.stream:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
        import dask_larger_than_memory as ex

        ex.run(a.rows, CLASSES, 4 * CHUNK_ROWS, store=None)  # 256 MiB chunks
        return
    bench = DaskCrossEntropy()
    gib = a.rows * CLASSES * 4 / 2**30
    best = {}
    for path in ("direct", "direct-out", "dask", "dask-store"):
        bench.setup(path, a.rows)
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            bench.time_value_and_grad(path, a.rows)
            times.append(time.perf_counter() - t0)
        best[path] = min(times)
        print(f"{path:>10}: {best[path]:.3f} s, {gib / best[path]:.2f} GiB/s of logits "
              f"({fastloss.get_num_threads()} threads, {a.rows} x {CLASSES} float32)")
    print(f"dask / direct throughput: {best['direct'] / best['dask']:.0%} (target >= 80 %)")


if __name__ == "__main__":
    main()
