"""Cross entropy and its gradient over logits larger than memory, with Dask.

The logits (``rows x classes`` float32) never exist whole: a deterministic generator makes each chunk of
``chunk_rows`` rows when Dask asks for it, ``fastloss.value_and_grad(fastloss.cross_entropy)`` runs the
fused kernel on it, and the gradient chunk goes straight to disk (a Zarr array) or is reduced to its
norm. Peak memory stays at a few chunks whatever ``rows`` is.

    python examples/dask_larger_than_memory.py --rows 2621440 --classes 4096    # 40 GiB of logits
    python examples/dask_larger_than_memory.py --rows 2000 --classes 50 --check  # tiny, checked in memory

Needs ``pip install ".[dask]"`` (dask[array], distributed, zarr).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time

import numpy as np

import dask
import dask.array as da

import fastloss as fl


def _logits_block(block_info=None, *, seed, classes, out_dtype):
    """The logits of one chunk of rows, from a generator seeded by the chunk's position."""
    info = block_info[None]
    (start, stop), _ = info["array-location"]
    rng = np.random.default_rng([seed, start])
    return rng.standard_normal((stop - start, classes), dtype=np.float32).astype(out_dtype, copy=False) * 3


def _targets_block(block_info=None, *, seed, classes):
    info = block_info[None]
    (start, stop), = info["array-location"]
    return np.random.default_rng([seed, start, 1]).integers(0, classes, stop - start, dtype=np.int32)


def make_inputs(rows, classes, chunk_rows, dtype=np.float32, seed=0):
    """Lazy logits ``(rows, classes)`` and class-index targets ``(rows,)``, chunked by rows."""
    row_chunks = da.core.normalize_chunks((chunk_rows,), (rows,))[0]
    logits = da.map_blocks(_logits_block, chunks=(row_chunks, (classes,)), dtype=dtype,
                           meta=np.empty((0, 0), dtype), seed=seed, classes=classes, out_dtype=np.dtype(dtype))
    targets = da.map_blocks(_targets_block, chunks=(row_chunks,), dtype=np.int32,
                            meta=np.empty((0,), np.int32), seed=seed, classes=classes)
    return logits, targets


def run(rows, classes, chunk_rows, store=None, label_smoothing=0.0, check=False, workers=None):
    logits, targets = make_inputs(rows, classes, chunk_rows)
    loss, grad = fl.value_and_grad(fl.cross_entropy)(logits, targets, label_smoothing=label_smoothing)
    if store is not None:
        import zarr

        out = zarr.open_array(store, mode="w", shape=grad.shape, chunks=grad.chunksize, dtype=grad.dtype)
        written = da.store(grad, out, lock=False, compute=False)
        t0 = time.perf_counter()
        value, _ = dask.compute(loss, written, num_workers=workers)
        elapsed = time.perf_counter() - t0
        summary = f"gradient stored in {store}"
    else:  # reduced: the gradient's squared norm, summed chunk by chunk
        t0 = time.perf_counter()
        value, norm2 = dask.compute(loss, (grad.astype(np.float64) ** 2).sum(), num_workers=workers)
        elapsed = time.perf_counter() - t0
        summary = f"|gradient|^2 = {float(norm2):.6g}"
    gib = rows * classes * 4 / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(f"cross entropy of {rows} x {classes} float32 logits ({gib:.3f} GiB), chunks of {chunk_rows} rows "
          f"({chunk_rows * classes * 4 / 2**20:.1f} MiB): loss = {float(value):.8f}; {summary}")
    print(f"time {elapsed:.2f} s, {gib / elapsed:.2f} GiB/s of logits, peak RSS {peak:.2f} GiB")
    if check:
        x, t = dask.compute(logits, targets)
        ev, eg = fl.value_and_grad(fl.cross_entropy)(x, t, label_smoothing=label_smoothing)
        g = np.asarray(__import__("zarr").open_array(store, mode="r")[:]) if store is not None else None
        assert abs(float(value) - float(ev)) <= 1e-6 * abs(float(ev)), (float(value), float(ev))
        if g is not None:
            np.testing.assert_allclose(g, eg, rtol=1e-6, atol=1e-9)
        print("check: equal to the in-memory call")
    return float(value)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_621_440, help="rows of logits (default: 40 GiB with 4096 classes)")
    ap.add_argument("--classes", type=int, default=4096)
    ap.add_argument("--chunk-rows", type=int, default=16_384, help="rows per chunk (default: 256 MiB chunks)")
    ap.add_argument("--store", help="a Zarr path for the gradient (default: a temporary one; 'none' reduces it)")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=None, help="threads (default: Dask's)")
    ap.add_argument("--check", action="store_true", help="compare with the in-memory call (small sizes only)")
    a = ap.parse_args(argv)
    if a.store == "none":
        return run(a.rows, a.classes, a.chunk_rows, None, a.label_smoothing, a.check, a.workers)
    if a.store:
        return run(a.rows, a.classes, a.chunk_rows, a.store, a.label_smoothing, a.check, a.workers)
    with tempfile.TemporaryDirectory() as d:
        return run(a.rows, a.classes, a.chunk_rows, f"{d}/grad.zarr", a.label_smoothing, a.check, a.workers)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
