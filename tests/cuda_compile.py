"""Compile every recorded CUDA kernel launch for real GPUs, without a GPU.

The CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, as CI runs the CUDA tests) executes kernels as Python
and never type-checks the branches a launch does not take, so kernels that cannot compile on a real
GPU pass there. With ``FASTLOSS_RECORD_LAUNCHES=FILE`` set, :func:`fastloss._cuda_arrays.launch`
appends each distinct (kernel, argument Numba types) it launches to ``FILE`` (JSON lines). This script,
run in a process *without* the simulator, compiles each of them with numba-cuda's compiler and NVVM
(``numba.cuda.compile_ptx``, which needs no GPU) for every compute capability asked::

    python tests/cuda_compile.py launches.jsonl --cc 7.5 8.0 9.0

Exit status: 0 when everything compiled; 1 when something failed (each failure is listed with the
start of its error); 3 when this environment cannot compile for CUDA at all (no numba-cuda or no NVVM:
``pip install "numba-cuda[cu12]"``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor

NO_COMPILER = 3
_ARRAY = re.compile(r"^array\((\w+), (\d+)d, ([CFA])\)$")


def parse_type(name: str):
    """The Numba type whose ``str`` is ``name`` (arrays and scalars, as the recorder writes them)."""
    from numba.core import types

    m = _ARRAY.match(name)
    if m:
        return types.Array(parse_type(m.group(1)), int(m.group(2)), m.group(3))
    if name == "bool":
        return types.boolean
    ty = getattr(types, name, None)
    if not isinstance(ty, types.Type):
        raise ValueError(f"cannot rebuild the Numba type {name!r}")
    return ty


def find_kernel(locator: dict):
    """The kernel (a CUDA dispatcher) that ``locator`` names (see ``_cuda_arrays.kernel_locator``)."""
    if "factory" in locator:
        module, qualname = locator["factory"]
        obj = _attribute(importlib.import_module(module), qualname)
        return obj(*locator["key"])
    module, qualname = locator["function"]
    return _attribute(importlib.import_module(module), qualname)


def _attribute(obj, qualname):
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def describe(entry) -> str:
    loc = entry["kernel"]
    where = ".".join(loc["factory"]) + repr(tuple(loc["key"])) if "factory" in loc else ".".join(loc["function"])
    return f"{where}({', '.join(entry['types'])})"


class _TargetDevice:
    """Stands in for the current GPU where numba-cuda asks it for a compute capability."""

    def __init__(self, cc):
        self.compute_capability = cc


def target(cc) -> None:
    """Compile for compute capability ``cc`` in this process.

    numba-cuda compiles the device functions a kernel calls for the current device's compute
    capability (``get_current_device()``), which needs a driver; without a GPU there is none, so the
    target's is given instead. Device functions are then cached per argument types for that target,
    hence one compute capability per process.
    """
    from numba.cuda import dispatcher

    dispatcher.get_current_device = lambda: _TargetDevice(cc)


def compile_entry(entry, ccs):
    """Compile one recorded launch for each compute capability; ``[(cc, error text)]`` of the failures."""
    from numba import cuda

    failures = []
    try:
        kernel = find_kernel(entry["kernel"])
        sig = tuple(parse_type(t) for t in entry["types"])
        opts = getattr(kernel, "targetoptions", {}) or {}
        kw = {k: opts[k] for k in ("fastmath", "lineinfo", "debug", "opt") if k in opts}
    except Exception as exc:  # a kernel that cannot be found or a type that cannot be rebuilt
        return [("any", f"{type(exc).__name__}: {exc}")]
    for cc in ccs:
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc, **kw)
            if ".entry" not in ptx:
                failures.append((cc, "no kernel entry in the PTX"))
        except Exception as exc:
            failures.append((cc, f"{type(exc).__name__}: {exc}"))
    return failures


def _compile_chunk(args):
    chunk, cc = args
    target(cc)
    return [(entry, compile_entry(entry, [cc])) for entry in chunk]


def can_compile() -> str | None:
    """``None`` when numba-cuda with NVVM can compile here, else why not."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: the simulator cannot compile for real GPUs"
    try:
        from numba import cuda
        from numba.core import types

        def probe(x):
            x[0] = 1.0

        cuda.compile_ptx(probe, (types.float32[::1],), cc=(7, 5))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def load(path):
    with open(path, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    unique = {json.dumps(e, sort_keys=True): e for e in entries}
    return list(unique.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", help="JSON-lines file written with FASTLOSS_RECORD_LAUNCHES")
    parser.add_argument("--cc", nargs="+", default=["7.5", "8.0", "9.0"], help="compute capabilities")
    parser.add_argument("-j", "--jobs", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--min-kernels", type=int, default=1,
                        help="fail when fewer distinct kernels were recorded (a recording that did not run)")
    args = parser.parse_args(argv)
    why = can_compile()
    if why is not None:
        print(f"cannot compile for CUDA here: {why}", file=sys.stderr)
        return NO_COMPILER
    ccs = [tuple(int(p) for p in c.split(".")) for c in args.cc]
    entries = load(args.record)
    kernels = {json.dumps(e["kernel"], sort_keys=True) for e in entries}
    if len(kernels) < args.min_kernels:
        print(f"only {len(kernels)} distinct kernels recorded in {args.record}; expected at least "
              f"{args.min_kernels}: did the CUDA tests run with FASTLOSS_RECORD_LAUNCHES set?", file=sys.stderr)
        return 1
    # Chunks grouped by kernel: a worker types each kernel's device functions once.
    entries.sort(key=lambda e: json.dumps(e["kernel"], sort_keys=True))
    jobs = max(1, args.jobs)
    size = -(-len(entries) // jobs)
    chunks = [entries[i:i + size] for i in range(0, len(entries), size)]
    start = time.perf_counter()
    # a fresh process per task: one compute capability per process (see target())
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        parts = list(pool.map(_compile_chunk, [(c, cc) for cc in ccs for c in chunks]))
    merged = {}
    for part in parts:
        for entry, failures in part:
            merged.setdefault(json.dumps(entry, sort_keys=True), (entry, []))[1].extend(failures)
    failed = [(entry, f) for entry, f in merged.values() if f]
    print(f"compiled {len(entries)} launch signatures of {len(kernels)} kernels for "
          f"{', '.join(f'sm_{a}{b}' for a, b in ccs)} in {time.perf_counter() - start:.0f} s: "
          f"{len(failed)} failed")
    for entry, failures in failed:
        print(f"FAILED {describe(entry)}")
        for cc, err in failures:
            first = " | ".join(line.strip() for line in err.strip().splitlines()[:6])
            print(f"    {cc}: {first[:1200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
