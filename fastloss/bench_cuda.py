"""``fastloss bench --device cuda``: every loss on CuPy arrays, against the GPU's copy bandwidth and the peers.

What it does, in order:

1. Measures the GPU's copy bandwidth: a device-to-device copy of a large float64 array (256 MiB by
   default), best of a few repeats timed with CUDA events, counting read + write (2 x the bytes).
2. For each loss and dtype, builds the family's ``BENCH`` input on the host, moves it to the GPU
   (CuPy), and times, as the mean over batches of back-to-back calls with the device synchronised
   around each batch (so the Python launch overhead is included, as users pay it):

   - fastloss's value, and its value and gradient with a reused ``out=`` buffer;
   - PyTorch CUDA forward (``torch.no_grad()``) and forward + backward (``torch.autograd.grad``) on the
     same memory (DLPack), when torch with CUDA is importable;
   - Liger-Kernel's cross entropy (forward + backward) for ``cross_entropy``, when importable.

   A loss with an unreduced output is differentiated with a fixed random ``grad_output``, as in the
   CPU bench. The error is ``max |got - ref| / max |ref|`` against the family's float64 NumPy
   ``REFERENCE`` on the host (on the first rows only for inputs above the CPU bench's limit).
3. Reports per loss and dtype the time, GB/s (the bytes the CPU bench counts: inputs read, an unreduced
   output, ``grad_output`` and gradients written), the fraction of the copy bandwidth, the speed-up over
   torch and Liger, and the errors.

Options are those of ``fastloss bench`` (``--quick``, ``--loss``, ``--dtype``, ``--size``, ``--json``,
``--plot``, ``--no-torch``, ``--progress``); ``--threads`` only sets the host's threads. ``--json``
prints ``{"schema": "fastloss-bench-cuda/1", "versions", "device": {"name", "copy_gbs", "copy_bytes"},
"settings", "results": [{"loss", "dtype", "shape", "elements", "value": M, "value_and_grad": M,
"reference_rows", "notes"}], "skipped"}`` with ``M = {"time_s", "repeats", "bytes", "gbs",
"bw_fraction", "rel_err", "value_rel_err", "torch_time_s", "speedup_vs_torch", "torch_rel_err",
"liger_time_s", "speedup_vs_liger"}`` (``null`` where a number does not exist).

Without CuPy or a GPU it prints why and exits with status 1; ``--help`` needs neither.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ._registry import REGISTRY, value_and_grad
from .bench import Progress, check_arguments, family_problem
from .bench_cases import (bytes_moved, diff_positions, grads_rel_err, incoming_gradient, leading_rows, loss_size,
                          reference_call, reference_rows, rel_err)
from .bench_report import Measurement, Row, _finite_or_null, _fmt_time
from .bench_timing import DEFAULT, QUICK, Timing

SCHEMA = "fastloss-bench-cuda/1"
#: Calls per timed batch: enough that one synchronisation does not dominate small calls.
MIN_BATCH_S = 2e-3


def gpu_problem() -> Optional[str]:
    """Why the GPU bench cannot run here (no CuPy, no GPU, no working numba-cuda), or ``None``."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed: pip install 'fastloss[cuda12]' (or 'fastloss[cuda13]' with a CUDA 13 driver)"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy finds no GPU"
    except Exception as exc:  # CuPy without a driver raises its own runtime errors
        return f"CuPy finds no usable GPU ({type(exc).__name__}: {exc})"
    try:
        from . import _cuda_arrays  # noqa: F401  (the clear ImportError of a broken numba-cuda)
    except ImportError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------------
# Timing on the GPU
# --------------------------------------------------------------------------------------------------
def time_gpu(fn: Callable, sync: Callable, settings) -> Timing:
    """Seconds per call of ``fn`` over batches of back-to-back calls, the device synchronised before and
    after each batch (the host's launch overhead is part of the time, as users pay it). The bench reports
    the mean over batches (``mean_s``); ``repeats`` counts the timed calls."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-7)
    batch = max(1, min(1000, int(math.ceil(MIN_BATCH_S / one))))
    times, start = [], time.perf_counter()
    while True:
        sync()
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / batch)
        elapsed = time.perf_counter() - start
        if len(times) >= settings.max_repeats or elapsed > 2 * settings.budget_s:
            break
        if len(times) >= settings.min_repeats and elapsed >= settings.budget_s:
            break
    return dataclasses.replace(Timing.of(times), repeats=len(times) * batch)


def copy_bandwidth(cupy, elements: int, repeats: int) -> tuple:
    """``(GB/s, bytes)`` of a device-to-device copy of ``elements`` float64, read + write counted."""
    src = cupy.ones(elements, dtype=cupy.float64)
    dst = cupy.empty_like(src)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    dst[...] = src  # warm-up
    best = math.inf
    for _ in range(max(1, repeats)):
        start.record()
        dst[...] = src
        stop.record()
        stop.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    moved = 2 * src.nbytes
    return moved / best / 1e9, moved


# --------------------------------------------------------------------------------------------------
# One loss
# --------------------------------------------------------------------------------------------------
@dataclass
class GPUMeasurement(Measurement):
    """:class:`fastloss.bench_report.Measurement` on the GPU, with Liger-Kernel as one more peer."""

    liger_time_s: Optional[float] = None
    speedup_vs_liger: Optional[float] = None


class GPURow(Row):
    """:class:`fastloss.bench_report.Row` of GPU measurements (``wall_s`` unused)."""


def _to_gpu(cupy, case):
    def up(a):
        return cupy.asarray(a) if isinstance(a, np.ndarray) else a

    return dataclasses.replace(case, args=tuple(up(a) for a in case.args),
                               kwargs={k: up(v) for k, v in case.kwargs.items()})


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _measure(timing, nbytes, copy_gbs) -> GPUMeasurement:
    gbs = nbytes / timing.mean_s / 1e9
    return GPUMeasurement(timing.mean_s, timing.repeats, nbytes, gbs, gbs / copy_gbs)


def _torch_cuda(use_torch: bool):
    if not use_torch or importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch if torch.cuda.is_available() else None


def _liger_cross_entropy():
    """Liger-Kernel's functional cross entropy, or ``None`` when it is not importable."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception:
        return None
    return liger_cross_entropy


def bench_loss_gpu(cupy, spec, dtype, size, settings, copy_gbs, torch, liger, progress) -> GPURow:
    rng = np.random.default_rng(0)
    case = spec.bench(rng, np.dtype(dtype), size)
    pos = diff_positions(spec, case)
    label = f"{spec.name} {dtype}"
    gcase = _to_gpu(cupy, case)
    sync = cupy.cuda.get_current_stream().synchronize

    progress.step(f"{label}: fastloss")
    value0 = spec.fn(*gcase.args, **gcase.kwargs)
    go = incoming_gradient(_host(value0), rng)
    ggo = None if go is None else cupy.asarray(go)
    outs = tuple(cupy.empty_like(gcase.args[p]) for p in pos)
    vg = value_and_grad(spec.fn)
    out_arg = outs if len(outs) > 1 else outs[0]

    def value():
        return spec.fn(*gcase.args, **gcase.kwargs)

    def value_grad():
        return vg(*gcase.args, grad_output=ggo, out=out_arg, **gcase.kwargs)

    t_value = time_gpu(value, sync, settings)
    t_vg = time_gpu(value_grad, sync, settings)
    v_bytes, vg_bytes = bytes_moved(spec.name, case, _host(value0), [_host(o) for o in outs], go)
    v, g = _measure(t_value, v_bytes, copy_gbs), _measure(t_vg, vg_bytes, copy_gbs)
    x = case.args[pos[0]]
    row = GPURow(spec.name, dtype, tuple(x.shape), int(x.size), v, g)

    progress.step(f"{label}: float64 reference")
    err_case, err_go = case, go
    row.reference_rows = reference_rows(case, pos[0])
    if row.reference_rows is not None:
        err_case, err_go = leading_rows(case, x.shape[0], row.reference_rows, go)
        row.notes.append(f"errors from the first {row.reference_rows} of {x.shape[0]} rows (float64 reference)")
    ecase = _to_gpu(cupy, err_case)
    got_v, got_g = vg(*ecase.args, grad_output=None if err_go is None else cupy.asarray(err_go), **ecase.kwargs)
    got_g = (got_g,) if len(pos) == 1 else tuple(got_g)
    ref_v, ref_g = reference_call(spec, err_case, err_go)()
    v.rel_err = v.value_rel_err = rel_err(_host(value()) if err_case is case else _host(got_v), ref_v)
    g.value_rel_err = rel_err(_host(got_v), ref_v)
    g.rel_err = grads_rel_err([_host(a) for a in got_g], ref_g)
    del got_v, got_g

    progress.step(f"{label}: torch")
    f = spec.torch_fn() if torch is not None else None
    if torch is not None and f is None:
        row.notes.append("PyTorch has no such loss")
    if f is not None:
        def tt(a, grad=False):
            if hasattr(a, "__cuda_array_interface__"):
                t = torch.from_dlpack(a)
                t = t.long() if t.dtype in (torch.int32, torch.int16, torch.uint8, torch.int8) else t
                return t.detach().clone().requires_grad_(True) if grad else t
            return a

        plain = [tt(a) for a in gcase.args]
        leaves = [tt(a, i in pos) for i, a in enumerate(gcase.args)]
        kwargs = {k: tt(w) for k, w in gcase.kwargs.items()}
        tgo = None if ggo is None else torch.from_dlpack(ggo)

        def t_forward():
            with torch.no_grad():
                return f(torch, *plain, **kwargs)

        def t_forward_backward():
            val = f(torch, *leaves, **kwargs)
            return val, torch.autograd.grad(val, [leaves[i] for i in pos],
                                            grad_outputs=torch.ones_like(val) if tgo is None else tgo)

        tsync = torch.cuda.synchronize
        t_f, t_fb = time_gpu(t_forward, tsync, settings), time_gpu(t_forward_backward, tsync, settings)
        v.torch_time_s, v.speedup_vs_torch = t_f.mean_s, t_f.mean_s / t_value.mean_s
        g.torch_time_s, g.speedup_vs_torch = t_fb.mean_s, t_fb.mean_s / t_vg.mean_s
        if err_case is case:
            _, tg = t_forward_backward()
            g.torch_rel_err = grads_rel_err([t.detach().cpu().double().numpy() for t in tg], ref_g)

    if liger is not None and torch is not None and spec.name == "cross_entropy":
        progress.step(f"{label}: Liger-Kernel")
        try:
            logits = torch.from_dlpack(gcase.args[0]).detach().clone().requires_grad_(True)
            target = torch.from_dlpack(gcase.args[1]).long()
            kw = {k: w for k, w in case.kwargs.items() if k in ("reduction", "label_smoothing", "ignore_index")}

            def l_forward_backward():  # Liger writes the gradient over its input's storage
                val = liger(logits, target, **kw)
                return torch.autograd.grad(val, [logits])

            t_l = time_gpu(l_forward_backward, torch.cuda.synchronize, settings)
            g.liger_time_s, g.speedup_vs_liger = t_l.mean_s, t_l.mean_s / t_vg.mean_s
        except Exception as exc:  # a Liger version with another signature must not end the run
            row.notes.append(f"Liger-Kernel failed: {type(exc).__name__}: {exc}")
    return row


# --------------------------------------------------------------------------------------------------
# The run and its output
# --------------------------------------------------------------------------------------------------
@dataclass
class GPUReport:
    versions: dict
    device: dict
    settings: dict
    rows: list
    skipped: list

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "versions": self.versions, "device": self.device, "settings": self.settings,
                "results": [dataclasses.asdict(r) | {"shape": list(r.shape)} for r in self.rows],
                "skipped": self.skipped}


def run(names, settings, *, size=None, use_torch=True, progress_enabled=False) -> GPUReport:
    import cupy

    import fastloss

    torch = _torch_cuda(use_torch)
    liger = _liger_cross_entropy() if torch is not None else None
    todo, skipped = [], []
    for name in names:
        problem = family_problem(REGISTRY[name])
        if problem:
            skipped.append({"loss": name, "dtype": None, "reason": problem})
        else:
            todo.extend((name, dt) for dt in settings.dtypes)
    progress = Progress(1 + 4 * len(todo), progress_enabled)
    progress.step("copy bandwidth")
    copy_gbs, copy_bytes = copy_bandwidth(cupy, settings.bandwidth_elements, settings.bandwidth_repeats)
    rows = []
    try:
        for i, (name, dt) in enumerate(todo, 1):
            try:
                rows.append(bench_loss_gpu(cupy, REGISTRY[name], dt, loss_size(name, size, settings.size_scale),
                                           settings, copy_gbs, torch, liger, progress))
            except Exception as exc:  # one broken loss must not end the run
                skipped.append({"loss": name, "dtype": dt, "reason": f"{type(exc).__name__}: {exc}"})
            progress.done = 1 + 4 * i
            cupy.get_default_memory_pool().free_all_blocks()
    finally:
        progress.close()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    versions = {"fastloss": fastloss.__version__, "python": platform.python_version(), "numpy": np.__version__,
                "numba": importlib.import_module("numba").__version__, "cupy": cupy.__version__,
                "numba_cuda": _version("numba-cuda"), "torch": torch.__version__ if torch is not None else None,
                "liger_kernel": _version("liger-kernel") if liger is not None else None}
    meta = {"mode": settings.mode, "dtypes": list(settings.dtypes), "size_scale": settings.size_scale,
            "budget_s": settings.budget_s, "sizes": {n: loss_size(n, size, settings.size_scale) for n in names}}
    device = {"name": name, "copy_gbs": copy_gbs, "copy_bytes": copy_bytes}
    return GPUReport(versions, device, meta, rows, skipped)


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _ratio(x):
    return "-" if x is None else f"{x:.3g}x"


def format_table(report: GPUReport) -> str:
    v, d = report.versions, report.device
    lines = [
        f"fastloss {v['fastloss']} bench --device cuda on {d['name']}: cupy {v['cupy']}, numba-cuda "
        f"{v['numba_cuda']}, torch {v['torch'] or 'not available'}, liger-kernel {v['liger_kernel'] or 'not available'}",
        f"copy bandwidth (device to device, read + write, best of repeats): {d['copy_gbs']:.1f} GB/s",
        "",
    ]
    head = ("loss", "dtype", "shape", "op", "time", "GB/s", "%copy", "vs torch", "vs liger", "rel err")
    body = []
    for r in report.rows:
        shape = "x".join(map(str, r.shape)) or "()"
        for op, m, first in (("value", r.value, True), ("v+grad", r.value_and_grad, False)):
            err = "-" if m.rel_err is None or math.isnan(m.rel_err) else f"{m.rel_err:.1e}"
            body.append((r.loss if first else "", r.dtype if first else "", shape if first else "", op,
                         _fmt_time(m.time_s), f"{m.gbs:.1f}", f"{100 * m.bw_fraction:.0f}%",
                         _ratio(m.speedup_vs_torch), _ratio(m.speedup_vs_liger), err))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i >= 4 else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines += [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)]
    lines += [
        "",
        "time      mean over batches of back-to-back calls (device synchronised around each batch),",
        "          Python launch overhead included; v+grad writes into a reused out= buffer",
        "GB/s      bytes moved per second (inputs read, unreduced output written; v+grad also grad_output",
        "          read and gradients written)",
        "%copy     of the measured device-to-device copy bandwidth",
        "vs torch  PyTorch CUDA forward (value) or forward+backward (v+grad) time over fastloss's",
        "vs liger  Liger-Kernel cross entropy forward+backward time over fastloss's (cross_entropy only)",
        "rel err   max |fastloss - ref| / max |ref| against the float64 NumPy reference",
    ]
    notes = [f"{r.loss} {r.dtype}: {n}" for r in report.rows for n in r.notes]
    notes += [f"skipped {s['loss']}{' ' + s['dtype'] if s['dtype'] else ''}: {s['reason']}" for s in report.skipped]
    if notes:
        lines += ["", "notes:", *("  " + n for n in notes)]
    return "\n".join(lines)


def write_plot(report: GPUReport, path: str) -> None:
    """Bars of fastloss's speed-ups over torch (value, v+grad) and Liger, per loss and dtype (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("value vs torch CUDA forward", lambda r: r.value.speedup_vs_torch),
              ("value+grad vs torch CUDA forward+backward", lambda r: r.value_and_grad.speedup_vs_torch),
              ("value+grad vs Liger-Kernel", lambda r: r.value_and_grad.speedup_vs_liger)]
    rows = report.rows[::-1]
    y = np.arange(len(rows))
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9.0, 1.8 + 0.42 * max(len(rows), 1)))
    for k, (title, get) in enumerate(series):
        ax.barh(y + ((len(series) - 1) / 2 - k) * height, [get(r) or 0.0 for r in rows], height, label=title)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{r.loss} ({r.dtype})" for r in rows], fontsize=8)
    ax.set_xlabel("speed-up of fastloss (peer time / fastloss time, log scale)")
    ax.set_title(f"fastloss bench --device cuda: {report.device['name']}, copy {report.device['copy_gbs']:.0f} GB/s",
                 fontsize=10)
    fig.tight_layout()
    fig.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(series), frameon=False)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(args, parser) -> int:
    """Run ``fastloss bench --device cuda`` with parsed ``args``; returns the exit status."""
    names, dtypes = check_arguments(parser, args)
    problem = gpu_problem()
    if problem is not None:
        print(f"fastloss bench --device cuda cannot run here: {problem}", file=sys.stderr)
        return 1
    base = QUICK if args.quick else DEFAULT
    settings = dataclasses.replace(base, dtypes=tuple(dtypes) or base.dtypes)
    if args.size_scale is not None:
        settings = dataclasses.replace(
            settings, size_scale=settings.size_scale * args.size_scale,
            bandwidth_elements=max(1 << 12, int(settings.bandwidth_elements * args.size_scale)))
    progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    report = run(names, settings, size=args.size, use_torch=not args.no_torch, progress_enabled=progress)
    if args.json:
        json.dump(_finite_or_null(report.to_json()), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    if args.plot is not None:
        write_plot(report, args.plot)
        if not args.json:
            print(f"\nplot written to {args.plot}")
    return 0
