"""linear_cross_entropy value + gradient at (N, H, V) = (2048, 1024, 32000) float32 on the CPU, beside
the peers, in one process (ratios are what to trust on a shared machine)::

    python benches/linear_ce_headline.py [--n 2048 --h 1024 --v 32000 --repeats 3]

Each row: median time of ``--repeats`` calls and the peak memory the call allocates beyond its inputs
(a child process per row, ``ru_maxrss`` after the inputs are built and the call compiled, minus the RSS
before the timed calls; torch's allocations are invisible to tracemalloc, so RSS for every row):

- ``numpy 3 products``: ``L = X @ W.T``, ``L @ W``, ``L.T @ X`` (the floor of any exact method);
- ``fastloss``: ``value_and_grad(linear_cross_entropy)`` (default chunk, and ``--chunk``);
- ``torch F.linear_cross_entropy`` fwd+bwd, reference path (``options=None``) and chunked
  (``LinearCrossEntropyOptions()``);
- ``torch F.linear + F.cross_entropy`` fwd+bwd;
- ``cross_entropy`` value+grad on the (N, V) logits with and without ``z_loss``/``softcap`` (the cost of
  the options).

The peak of a row includes the gradients it returns (``d input``, ``d W``: 4 bytes x (N + V) x H), as
every peer allocates them too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROWS = ["numpy3", "fastloss", "fastloss_chunk", "torch_ref", "torch_chunked", "torch_linear_ce", "ce", "ce_zloss_softcap"]


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _child(row, n, h, v, repeats, chunk, threads):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h), dtype=np.float32)
    W = (rng.standard_normal((v, h), dtype=np.float32) / np.sqrt(h)).astype(np.float32)
    t = rng.integers(0, v, n)
    if row in ("numpy3",):
        def call():
            L = x @ W.T
            L @ W
            L.T @ x
    elif row.startswith("fastloss") or row.startswith("ce"):
        import fastloss as fl

        fl.set_num_threads(threads)
        if row.startswith("ce"):
            logits = x @ W.T
            out = np.empty_like(logits)
            kw = dict(z_loss=1e-4, softcap=30.0) if row == "ce_zloss_softcap" else {}

            def call():
                fl.value_and_grad(fl.cross_entropy)(logits, t, out=out, **kw)
        else:
            kw = dict(chunk_size=chunk) if row == "fastloss_chunk" else {}

            def call():
                fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, **kw)
    else:
        import torch

        torch.set_num_threads(threads)
        tx, tW, tt = torch.as_tensor(x).requires_grad_(), torch.as_tensor(W).requires_grad_(), torch.as_tensor(t)
        F = torch.nn.functional

        def call():
            if row == "torch_linear_ce":
                loss = F.cross_entropy(F.linear(tx, tW), tt)
            else:
                opts = torch.nn.LinearCrossEntropyOptions() if row == "torch_chunked" else None
                loss = F.linear_cross_entropy(tx, tW, tt, options=opts)
            torch.autograd.grad(loss, [tx, tW])
    call()  # compile / warm up
    base = _rss_mb()
    _reset_peak()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"row": row, "time_s": statistics.median(times), "times": times, "peak_extra_mb": peak - base}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--h", type=int, default=1024)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=256 * 32000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.n, a.h, a.v, a.repeats, a.chunk, a.threads)))
        return
    logits_mb = a.n * a.v * 4 / 2**20
    print(f"(N, H, V) = ({a.n}, {a.h}, {a.v}) float32, {a.threads} threads; full logits {logits_mb:.0f} MB")
    results = {}
    for row in a.rows.split(","):
        cmd = [sys.executable, __file__, "--child", row, "--n", str(a.n), "--h", str(a.h), "--v", str(a.v),
               "--repeats", str(a.repeats), "--chunk", str(a.chunk), "--threads", str(a.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"{row:18s} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        results[row] = res
        ratio = res["time_s"] / results["numpy3"]["time_s"] if "numpy3" in results else float("nan")
        print(f"{row:18s} {res['time_s']:8.3f} s  x{ratio:5.2f} of numpy3   peak extra {res['peak_extra_mb']:8.1f} MB "
              f"({100 * res['peak_extra_mb'] / logits_mb:5.1f} % of the logits)", flush=True)


if __name__ == "__main__":
    main()
