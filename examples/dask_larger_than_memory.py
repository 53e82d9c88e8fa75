"""Cross entropy and its gradient over logits larger than memory, with Dask, measured.

The logits (``rows x classes`` float32) never exist whole: a deterministic generator makes each chunk of
rows when Dask asks for it, ``fastloss.value_and_grad(fastloss.cross_entropy)`` runs the fused kernel on
it, and the gradient chunk is either reduced at once to its squared norm (the default: nothing of the
gradient outlives its chunk) or written to disk into a Zarr array (``--store PATH``). Peak memory stays
at a few chunks whatever the size.

What it reports, against the issue's targets (peak RSS <= 4 chunks + 1 GiB; throughput >= 70 % of the
in-memory kernel's, the generator's own time excluded):

* the in-memory kernel: ``value_and_grad(cross_entropy)`` on one chunk-sized NumPy array, called
  directly with ``fastloss.get_num_threads()`` threads (a new gradient array, as the Dask chunks get);
* the Dask run: wall time, the generator's own time (every chunk's generation is timed; their sum
  divided by the worker count is the share of the wall time it took), and the throughput of the rest
  (logits bytes / (wall - generator share)) as a fraction of the in-memory kernel's;
* the peak RSS of the run (``getrusage``'s high-water mark, reset just before the run through
  ``/proc/self/clear_refs`` on Linux), beside the bound.

    python examples/dask_larger_than_memory.py --gib 40                  # 40 GiB of logits, gradient reduced
    python examples/dask_larger_than_memory.py --gib 4 --store /tmp/g.zarr  # gradient to disk (4 GiB free)
    python examples/dask_larger_than_memory.py --rows 2000 --classes 50 --check  # tiny, checked in memory

Storing the gradient needs as much free disk as the logits (it is float32, stored uncompressed: random
logits' gradients do not compress); the script refuses to start when the disk lacks the room.

Needs ``pip install ".[dask]"`` (dask[array], distributed, zarr).
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import sys
import threading
import time

import numpy as np

import dask
import dask.array as da

import fastloss as fl

GIB = 2**30


class GeneratorClock:
    """The summed seconds spent generating chunks, from any thread."""

    def __init__(self):
        self.seconds = 0.0
        self.chunks = 0
        self._lock = threading.Lock()

    def add(self, s):
        with self._lock:
            self.seconds += s
            self.chunks += 1


CLOCK = GeneratorClock()  # the generator's own time
SINK = GeneratorClock()  # the reduction's (the default sink), reported apart


_TABLES = {}
_TABLES_LOCK = threading.Lock()
_TABLE_ROWS = 251  # a prime: row i of the logits is table row (i * 7919) % 251


def _table(seed, classes):
    """251 rows of normal logits (x3), made once per (seed, classes): 251 x classes float32."""
    key = (seed, classes)
    with _TABLES_LOCK:
        if key not in _TABLES:
            t = np.random.default_rng([seed, classes]).standard_normal((_TABLE_ROWS, classes), dtype=np.float32)
            t *= 3
            _TABLES[key] = t
        return _TABLES[key]


def logits_chunk(start, stop, classes, seed=0, dtype=np.float32):
    """Rows ``start:stop`` of the logits: the same numbers whatever the chunking. Each row is one of 251
    random rows, picked by its global index (the kernels' cost does not depend on the values; a
    per-element random generator would take several times the kernel's own time, and the issue asks
    for the kernel's throughput with the generator's time excluded: the cheaper it is, the smaller the
    error of that exclusion)."""
    t0 = time.perf_counter()
    pick = (np.arange(start, stop, dtype=np.int64) * 7919) % _TABLE_ROWS
    x = np.take(_table(seed, classes), pick, axis=0).astype(dtype, copy=False)
    CLOCK.add(time.perf_counter() - t0)
    return x


def targets_chunk(start, stop, classes, seed=0):
    """Class indices of rows ``start:stop``: a multiplicative hash of the global row index."""
    rows = np.arange(start, stop, dtype=np.uint64)
    return (((rows * np.uint64(2654435761) + np.uint64(seed)) >> np.uint64(7)) % np.uint64(classes)).astype(np.int32)


def _logits_block(block_info=None, *, seed, classes, out_dtype):
    (start, stop), _ = block_info[None]["array-location"]
    return logits_chunk(start, stop, classes, seed, out_dtype)


def _targets_block(block_info=None, *, seed, classes):
    (start, stop), = block_info[None]["array-location"]
    return targets_chunk(start, stop, classes, seed)


def make_inputs(rows, classes, chunk_rows, dtype=np.float32, seed=0):
    """Lazy logits ``(rows, classes)`` and class-index targets ``(rows,)``, chunked by rows."""
    row_chunks = da.core.normalize_chunks((chunk_rows,), (rows,))[0]
    logits = da.map_blocks(_logits_block, chunks=(row_chunks, (classes,)), dtype=dtype,
                           meta=np.empty((0, 0), dtype), seed=seed, classes=classes, out_dtype=np.dtype(dtype))
    targets = da.map_blocks(_targets_block, chunks=(row_chunks,), dtype=np.int32,
                            meta=np.empty((0,), np.int32), seed=seed, classes=classes)
    return logits, targets


def _squared_norm(blocks):
    """The squared Euclidean norm of a row chunk's gradient blocks (a list along the class axis), ``(1,)``:
    fastloss's L2 penalty (``sum(g**2) / 2``, float32 accumulated in float64 by a fast kernel, no
    temporary) times 2."""
    t0 = time.perf_counter()
    r = np.array([2.0 * math.fsum(float(fl.l2_penalty(g)) for g in blocks)])
    SINK.add(time.perf_counter() - t0)
    return r


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_gib():
    try:
        import psutil

        return psutil.Process().memory_info().rss / GIB
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def in_memory_kernel(chunk_rows, classes, label_smoothing, repeat=3):
    """Seconds of the direct call on one chunk-sized array (median of ``repeat``; new gradient each)."""
    x = logits_chunk(0, chunk_rows, classes)
    t = targets_chunk(0, chunk_rows, classes)
    vg = fl.value_and_grad(fl.cross_entropy)
    vg(x, t, label_smoothing=label_smoothing)  # compile / load the kernels
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = vg(x, t, label_smoothing=label_smoothing)
        times.append(time.perf_counter() - t0)
        del r
    gen = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        del x
        x = logits_chunk(0, chunk_rows, classes)
        gen.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.median(gen)


def _zarr_array(path, shape, chunks, dtype):
    """An uncompressed Zarr array at ``path`` (the gradient of random logits does not compress)."""
    import zarr

    if hasattr(zarr, "create_array"):  # zarr 3
        return zarr.create_array(path, shape=shape, chunks=chunks, dtype=dtype, compressors=None, overwrite=True)
    return zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype=dtype, compressor=None)


def graph(rows, classes, chunk_rows, store, label_smoothing):
    """``(loss, sink, summary)``: the lazy loss, and the gradient stored (``store``) or reduced."""
    logits, targets = make_inputs(rows, classes, chunk_rows)
    loss, grad = fl.value_and_grad(fl.cross_entropy)(logits, targets, label_smoothing=label_smoothing)
    if store == "discard":  # each chunk's gradient is computed with its value, then dropped
        return loss, None, "gradient computed and dropped chunk by chunk"
    if store is not None:
        out = _zarr_array(store, grad.shape, grad.chunksize, grad.dtype)
        return loss, da.store(grad, out, lock=False, compute=False), f"gradient stored in {store}"
    # blockwise with concatenate=False: the class axis is contracted, and Dask would otherwise copy each
    # gradient chunk into a new array (concatenate3) before handing it over, even when it is one block
    sink = da.blockwise(_squared_norm, "i", grad, "ij", concatenate=False, adjust_chunks={"i": 1},
                        dtype=np.float64, meta=np.empty((0,), np.float64))
    return loss, sink, "gradient reduced to its squared norm, chunk by chunk"


def run(rows, classes, chunk_rows, store=None, label_smoothing=0.0, check=False, workers=None,
        scheduler="threads"):
    """Value and gradient of cross entropy over generated logits; returns a dict of what was measured."""
    workers = workers or fl.get_num_threads()
    chunk_rows = min(chunk_rows, rows)
    logits_bytes = rows * classes * 4
    chunk_bytes = chunk_rows * classes * 4
    if store not in (None, "discard"):
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(store)) or ".").free
        if free < logits_bytes * 1.05 + GIB:
            raise SystemExit(f"storing the gradient needs {logits_bytes / GIB:.1f} GiB on disk, "
                             f"{free / GIB:.1f} GiB are free: reduce --gib, or leave --store out (reduced)")
    kernel_s, gen_chunk_s = in_memory_kernel(chunk_rows, classes, label_smoothing)
    kernel_gib_s = chunk_bytes / GIB / kernel_s

    opts = {"scheduler": "threads", "num_workers": workers} if scheduler == "threads" else \
        {"scheduler": "synchronous"}
    # the chunks' calls (a 'sum' with float64 partials) may use kernels the direct call did not
    # compile: two chunks through the same graph first, so that no compilation lands in the timing
    dask.compute(*graph(min(rows, 2 * chunk_rows), classes, chunk_rows, None, label_smoothing)[:2], **opts)
    if store == "discard":
        graph(min(rows, 2 * chunk_rows), classes, chunk_rows, store, label_smoothing)[0].compute(**opts)
    loss, sink, summary = graph(rows, classes, chunk_rows, store, label_smoothing)
    CLOCK.seconds, CLOCK.chunks = 0.0, 0
    SINK.seconds, SINK.chunks = 0.0, 0
    rss0 = _rss_gib()
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    value, sunk = dask.compute(loss, sink, **opts) if sink is not None else (loss.compute(**opts), None)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    par = workers if scheduler == "threads" else 1
    gen_share = CLOCK.seconds / par
    rest = max(wall - gen_share, 1e-9)
    bound = 4 * chunk_bytes / GIB + 1
    r = {
        "loss": float(value), "rows": rows, "classes": classes, "chunk_rows": chunk_rows,
        "logits_gib": logits_bytes / GIB, "chunk_mib": chunk_bytes / 2**20, "workers": workers,
        "scheduler": scheduler, "wall_s": wall, "generator_s": CLOCK.seconds, "generator_share_s": gen_share,
        "gib_s": logits_bytes / GIB / rest, "kernel_gib_s": kernel_gib_s, "ratio": logits_bytes / GIB / rest / kernel_gib_s,
        "peak_rss_gib": peak, "rss_before_gib": rss0, "peak_reset": reset, "bound_gib": bound,
    }
    if store is None:
        r["sink_s"] = SINK.seconds
        r["gib_s_without_sink"] = logits_bytes / GIB / max(rest - SINK.seconds / par, 1e-9)
        summary += f": |g|^2 = {float(np.sum(sunk)):.6g}"
    print(f"cross entropy of {rows} x {classes} float32 logits ({r['logits_gib']:.2f} GiB) in "
          f"{-(-rows // chunk_rows)} chunks of {chunk_rows} rows ({r['chunk_mib']:.0f} MiB), {scheduler} "
          f"scheduler, {workers} workers: loss = {float(value):.8f}; {summary}")
    print(f"in-memory kernel on one chunk: {kernel_s:.3f} s = {kernel_gib_s:.2f} GiB/s "
          f"(generating that chunk: {gen_chunk_s:.3f} s)")
    print(f"Dask run: {wall:.2f} s wall, generator {CLOCK.seconds:.2f} s over {CLOCK.chunks} chunks "
          f"(share of the wall time {gen_share:.2f} s); the rest {rest:.2f} s = {r['gib_s']:.2f} GiB/s "
          f"= {r['ratio']:.0%} of the in-memory kernel (target >= 70 %)")
    if store is None:
        print(f"  of which the reduction (a second read of each gradient chunk): {SINK.seconds:.2f} s; "
              f"without it {r['gib_s_without_sink']:.2f} GiB/s = {r['gib_s_without_sink'] / kernel_gib_s:.0%}")
    print(f"peak RSS {peak:.2f} GiB (before the run {rss0:.2f} GiB{'' if reset else ', peak mark not reset'}); "
          f"bound 4 chunks + 1 GiB = {bound:.2f} GiB: {'within' if peak <= bound else 'ABOVE'}")
    if check:
        x, t = dask.compute(*make_inputs(rows, classes, chunk_rows))
        ev, eg = fl.value_and_grad(fl.cross_entropy)(x, t, label_smoothing=label_smoothing)
        assert abs(float(value) - float(ev)) <= 1e-6 * abs(float(ev)), (float(value), float(ev))
        if store not in (None, "discard"):
            import zarr

            np.testing.assert_allclose(np.asarray(zarr.open_array(store, mode="r")[:]), eg, rtol=1e-6, atol=1e-9)
        elif store is None:
            np.testing.assert_allclose(np.sum(sunk), 2.0 * float(fl.l2_penalty(eg)), rtol=1e-6)
        print("check: equal to the in-memory call")
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--gib", type=float, default=None, help="GiB of float32 logits (default 40)")
    size.add_argument("--rows", type=int, default=None, help="rows of logits (instead of --gib)")
    ap.add_argument("--classes", type=int, default=32000)
    ap.add_argument("--chunk-mb", type=float, default=256, help="MiB of logits per chunk (default 256)")
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (instead of --chunk-mb)")
    ap.add_argument("--store", help="a Zarr path for the gradient ('tmp': a temporary one; default or "
                                    "'none': the gradient reduced to its squared norm; 'discard': computed and dropped)")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=None, help="Dask threads (default: fastloss.get_num_threads())")
    ap.add_argument("--scheduler", choices=("threads", "sync"), default="threads")
    ap.add_argument("--check", action="store_true", help="compare with the in-memory call (small sizes only)")
    a = ap.parse_args(argv)
    rows = a.rows if a.rows is not None else max(1, int((40 if a.gib is None else a.gib) * GIB // (4 * a.classes)))
    chunk_rows = a.chunk_rows or max(1, int(a.chunk_mb * 2**20 // (4 * a.classes)))
    common = dict(label_smoothing=a.label_smoothing, check=a.check, workers=a.workers, scheduler=a.scheduler)
    if a.store in (None, "none"):
        return run(rows, a.classes, chunk_rows, None, **common)
    if a.store == "discard":
        return run(rows, a.classes, chunk_rows, "discard", **common)
    if a.store != "tmp":
        return run(rows, a.classes, chunk_rows, a.store, **common)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return run(rows, a.classes, chunk_rows, f"{d}/grad.zarr", **common)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
