"""``fastloss bench``: how fast every loss runs on this machine, against the memory bandwidth and the peers.

What it does, in order:

1. Measures the machine's memory bandwidth with two Numba kernels (parallel, on fastloss's threads): a
   *read* pass (the sum of a float64 array) and a STREAM *triad* pass (``a = b + s * c``, counted as
   three arrays moved, as STREAM does), over 256 MiB and 3 x 128 MiB; a few times at the start, then
   once more after every loss. The best measurement is the bandwidth: what the machine can do, and
   every loss is compared with it. Measurements that disagree by more than
   :data:`~fastloss.bench_timing.NOISE_LIMIT` (20 %) mark the run as *noisy*: something else used the
   machine, and the table and the JSON say so.
2. For each loss of the registry (``fastloss._registry.REGISTRY``) and each dtype, builds one realistic
   input with the family's ``BENCH[name](rng, dtype, size)``, compiles (one untimed call of the value
   and of ``value_and_grad``: the JIT warm-up), then times, *interleaved* (fastloss, peer, peer,
   fastloss, ... in rounds: :func:`~fastloss.bench_timing.time_interleaved`) so that load from
   elsewhere falls on all alike:

   - fastloss's value beside PyTorch CPU's forward (under ``torch.no_grad()``);
   - fastloss's value and gradient (``fastloss.value_and_grad``) beside the family's float64 NumPy
     ``REFERENCE`` on float64 copies of the same data (it always computes value and gradients) and
     PyTorch's forward + backward (``torch.autograd.grad``), on ``fastloss.get_num_threads()`` threads.

   Times are means over the repeats, with their relative standard deviation (the spread). A loss with
   an unreduced output is differentiated with a fixed random ``grad_output`` (the same for fastloss,
   the reference and PyTorch). Inputs larger than :data:`~fastloss.bench_cases.REFERENCE_ELEMENTS`
   (the headline's 1 GiB of logits) give the reference only their first rows, which would otherwise
   need about 16 GB: the errors are measured on those rows and the reference's time is scaled by the
   row count (noted).
3. Reports per loss and dtype: time; GB/s (the bytes the kernel must move: every input array read,
   except that ``nll_loss`` gathers one element per target, plus an unreduced output, plus
   ``grad_output`` and the gradients for value and gradient); the fraction of the measured bandwidth
   (read for the value, triad for value and gradient; over 100 % is marked and explained in a note);
   the speed-up over each peer; and the largest relative error against the float64 reference,
   ``max |got - ref| / max |ref|`` over the whole value or gradient (so that a zero in the reference
   does not blow the ratio up).

A loss whose family module is missing (or fails to import, or has no ``BENCH`` entry) is skipped with
a note; an error inside one loss is noted and the run goes on. Plug-in modules
(:data:`SECTION_MODULES`) add sections (a GPU run, small batches) that share the table, JSON and plot.

``--json`` prints one JSON object on stdout instead of the table::

    {
      "schema": "fastloss-bench/2",
      "versions": {"fastloss": str, "python": str, "numpy": str, "numba": str, "torch": str | null},
      "machine": {"cpu": str, "cores": int, "system": str},
      "threads": int,
      "settings": {"mode": "default" | "quick", "dtypes": [str, ...], "size_scale": float,
                   "budget_s": float, "sizes": {loss: int}},
      "noisy": bool,                     # bandwidth measurements disagreed by more than 20 %
      "noise": [str, ...],               # why (empty when not noisy)
      "bandwidth": {"method": "numba", "threads": int, "read_gbs": float, "triad_gbs": float,
                    "read_bytes": int, "triad_bytes": int, "read_samples_gbs": [float, ...],
                    "triad_samples_gbs": [float, ...], "read_spread": float, "triad_spread": float,
                    "noisy": bool, "noise_limit": float},
      "results": [ROW, ...],             # the CPU losses
      "skipped": [{"loss": str, "dtype": str | null, "reason": str}, ...],
      "sections": [{"name": str, "title": str, "peers": [str, str], "results": [ROW, ...],
                    "skipped": [...], "notes": [str, ...]}, ...]   # plug-in sections
    }

where ``ROW`` is ``{"loss": str, "dtype": str, "shape": [int, ...], "elements": int,
"value": MEASUREMENT, "value_and_grad": MEASUREMENT, "reference_rows": int | null, "wall_s": float,
"notes": [str, ...]}`` and ``MEASUREMENT`` is ``{"time_s" (mean), "median_s", "spread", "repeats",
"bytes", "gbs", "bw_fraction", "rel_err", "value_rel_err", "reference_time_s", "reference_spread",
"speedup_vs_reference", "torch_time_s", "torch_spread", "speedup_vs_torch", "torch_rel_err"}``:
``rel_err`` is the error of the value (in ``value``) or of the gradients (in ``value_and_grad``, whose
``value_rel_err`` is the error of the value computed with them), and ``torch_rel_err`` the same error
of PyTorch's result. Numbers that do not exist (no torch, no reference for the value alone, NaN) are
``null``. Speed-ups are peer time over fastloss time (means).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._registry import REGISTRY, LossSpec
from .bench_cases import (DEFAULT_SIZE, DTYPES, HEADLINE_SIZES, _numpy, bytes_moved, diff_positions,
                          fastloss_calls, grads_rel_err, import_torch, incoming_gradient, leading_rows,
                          loss_size, reference_call, reference_rows, rel_err, torch_calls)
from .bench_report import Measurement, Report, Row, _finite_or_null, format_table, write_plot
from .bench_timing import DEFAULT, QUICK, Bandwidth, BandwidthProbe, Settings, Timing, time_interleaved

# --------------------------------------------------------------------------------------------------
# One loss at one dtype
# --------------------------------------------------------------------------------------------------
def _measurement(timing: Timing, nbytes: int) -> Measurement:
    """A measurement whose ``bw_fraction`` is filled in once the run's bandwidth is known
    (:func:`set_bandwidth_fractions`)."""
    gbs = nbytes / timing.mean_s / 1e9
    return Measurement(timing.mean_s, timing.repeats, nbytes, gbs, math.nan, timing.median_s, timing.spread)


def set_bandwidth_fractions(rows: list, bw: Bandwidth) -> None:
    """Each measurement's fraction of the run's bandwidth: read for the value, triad for value and
    gradient. A fraction above 1 is possible (an input that partly fits in the caches, a bandwidth
    measurement slowed by other load) and is never left without a note."""
    for r in rows:
        for op, m, peak, kind in (("value", r.value, bw.read_gbs, "read"),
                                  ("v+grad", r.value_and_grad, bw.triad_gbs, "triad")):
            m.bw_fraction = m.gbs / peak
            if m.bw_fraction > 1:
                r.notes.append(f"{op} moved {100 * m.bw_fraction:.0f}% of the measured {kind} bandwidth: its "
                               f"arrays partly fit in the caches, or the bandwidth measurements were slowed "
                               f"by other load")


def bench_loss(spec: LossSpec, dtype: str, size: int, settings: Settings, torch, progress: "Progress") -> Row:
    """Time one loss at one dtype beside its peers (interleaved: :func:`time_interleaved`) and measure
    its errors (see the module docstring)."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    case = spec.bench(rng, np.dtype(dtype), size)
    pos = diff_positions(spec, case)
    label = f"{spec.name} {dtype}"
    x = case.args[pos[0]]

    progress.step(f"{label}: compiling")
    go = incoming_gradient(spec.fn(*case.args, **case.kwargs), rng)  # also the JIT warm-up of the value
    value, value_grad = fastloss_calls(spec, case, go)
    value_grad()  # JIT warm-up of value and gradient
    # the errors are measured where the reference runs: the whole input, or its first rows
    err_case, err_go = case, go
    ref_rows = reference_rows(case, pos[0])
    if ref_rows is not None:
        err_case, err_go = leading_rows(case, x.shape[0], ref_rows, go)
    calls = None if torch is None else torch_calls(torch, spec, case, pos, go)

    progress.step(f"{label}: value beside PyTorch")
    group = {"fastloss": value} | ({"torch": calls[0]} if calls else {})
    t_value, out = time_interleaved(group, settings, warmup=("torch",) if calls else ())
    out_value, t_out = out["fastloss"], out.get("torch")
    del out

    progress.step(f"{label}: value and gradient beside the reference and PyTorch")
    group = {"fastloss": value_grad, "reference": reference_call(spec, err_case, err_go)}
    group |= {"torch": calls[1]} if calls else {}
    t_vg, out = time_interleaved(group, settings, warmup=("torch",) if calls else ())
    out_vg, (ref_value, ref_grads), t_out_vg = out["fastloss"], out["reference"], out.get("torch")
    del out, group

    progress.step(f"{label}: errors")
    v_bytes, vg_bytes = bytes_moved(spec.name, case, out_value, out_vg[1], go)
    v, g = _measurement(t_value["fastloss"], v_bytes), _measurement(t_vg["fastloss"], vg_bytes)
    row = Row(spec.name, dtype, tuple(x.shape), int(x.size), v, g, reference_rows=ref_rows)
    if ref_rows is not None:
        sub_value, sub_value_grad = fastloss_calls(spec, err_case, err_go)
        out_value, out_vg = sub_value(), sub_value_grad()
        row.notes.append(f"float64 reference on the first {ref_rows} of {x.shape[0]} rows (the whole "
                         f"input needs too much memory): errors from those rows, its time scaled by rows")
    v.rel_err = v.value_rel_err = rel_err(out_value, ref_value)
    g.rel_err, g.value_rel_err = grads_rel_err(out_vg[1], ref_grads), rel_err(out_vg[0], ref_value)
    t_ref = t_vg["reference"]
    g.reference_time_s = t_ref.mean_s * (x.shape[0] / ref_rows if ref_rows else 1)
    g.reference_spread = t_ref.spread
    g.speedup_vs_reference = g.reference_time_s / g.time_s
    del out_value, out_vg

    if torch is not None and calls is None:
        row.notes.append("PyTorch has no such loss")
    if calls is not None:
        for m, t in ((v, t_value["torch"]), (g, t_vg["torch"])):
            m.torch_time_s, m.torch_spread, m.speedup_vs_torch = t.mean_s, t.spread, t.mean_s / m.time_s
        if err_case is not case:
            forward, forward_backward = torch_calls(torch, spec, err_case, pos, err_go)
            t_out, t_out_vg = forward(), forward_backward()
        v.torch_rel_err = rel_err(_numpy(t_out), ref_value)
        g.torch_rel_err = grads_rel_err([_numpy(t) for t in t_out_vg[1]], ref_grads)
    row.wall_s = time.perf_counter() - start
    return row


def family_problem(spec: LossSpec) -> Optional[str]:
    """Why ``spec`` cannot be benchmarked here (its family does not import, or has no BENCH entry),
    or ``None``."""
    try:
        module = spec.module
    except ImportError as e:
        hint = " (build the Cython extensions: python setup.py build_ext --inplace)" if "_cy" in str(e) else ""
        return f"family module fastloss.families.{spec.family} is not available: {e}{hint}"
    except Exception as e:  # a family module broken in any other way must not end the run either
        return f"family module fastloss.families.{spec.family} failed to import: {type(e).__name__}: {e}"
    if spec.name not in getattr(module, "BENCH", {}):
        return f"fastloss.families.{spec.family} has no BENCH entry for {spec.name}"
    return None


# --------------------------------------------------------------------------------------------------
# Progress on stderr
# --------------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr, redrawn in place with ``\\r`` (no dependency)."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.stream = stream if stream is not None else sys.stderr
        self._last = 0

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * min(self.done, self.total) // self.total
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last))
        self.stream.flush()
        self._last = len(line)
        self.done += 1

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------
STEPS_PER_LOSS = 4  # compiling, value beside torch, value and gradient beside the peers, errors



@dataclass
class Context:
    """What a plug-in section gets from the run: the threads, PyTorch (or ``None``), the settings,
    the progress bar, and the bandwidth probe (call ``probe.sample()`` between its own measurements
    to extend the run's noise check over its time)."""

    threads: int
    torch: object
    settings: Settings
    progress: "Progress"
    probe: BandwidthProbe


def run(names: list, settings: Settings, *, size: Optional[int] = None, use_torch: bool = True,
        progress_enabled: bool = False, sections: tuple = ()) -> Report:
    """Measure the bandwidth, then every loss in ``names`` at every dtype of ``settings``, measuring the
    bandwidth again after each loss; then the plug-in ``sections``: callables ``f(Context) -> Section``."""
    import fastloss

    threads = fastloss.get_num_threads()
    torch = import_torch(threads) if use_torch else None
    todo, skipped = [], []
    for name in names:
        problem = family_problem(REGISTRY[name])
        if problem:
            skipped.append({"loss": name, "dtype": None, "reason": problem})
        else:
            todo.extend((name, dt) for dt in settings.dtypes)
    progress = Progress(1 + STEPS_PER_LOSS * len(todo) + len(sections), progress_enabled)
    progress.step("memory bandwidth")
    probe = BandwidthProbe(settings.bandwidth_elements)
    for _ in range(settings.bandwidth_repeats):
        probe.sample()
    rows, extra = [], []
    try:
        for i, (name, dt) in enumerate(todo, 1):
            size_n = loss_size(name, size, settings.size_scale)
            try:
                rows.append(bench_loss(REGISTRY[name], dt, size_n, settings, torch, progress))
            except Exception as e:  # one broken loss must not end the run: note it and go on
                skipped.append({"loss": name, "dtype": dt, "reason": f"{type(e).__name__}: {e}"})
            progress.done = 1 + STEPS_PER_LOSS * i  # in step even when a loss stopped half-way
            gc.collect()  # the next loss's inputs should not meet this one's garbage
            probe.sample()  # the bandwidth again, between the losses: a busy machine shows here
        context = Context(threads, torch, settings, progress, probe)
        for make in sections:
            section = make(context)
            if section is not None:
                extra.append(section)
    finally:
        progress.close()
    bw = probe.result()
    probe.close()
    set_bandwidth_fractions(rows, bw)
    versions = {
        "fastloss": fastloss.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": importlib.import_module("numba").__version__,
        "torch": torch.__version__ if torch is not None else None,
    }
    sizes = {n: loss_size(n, size, settings.size_scale) for n in names}
    meta = {"mode": settings.mode, "dtypes": list(settings.dtypes), "size_scale": settings.size_scale,
            "budget_s": settings.budget_s, "sizes": sizes}
    return Report(versions, threads, meta, bw, rows, skipped, sections=extra)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {x}")
    return x


def _split(values) -> list:
    """``--opt a,b --opt c`` → ``['a', 'b', 'c']`` (order kept, duplicates dropped)."""
    out = []
    for v in values or ():
        for item in v.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


#: Optional sections of the report, one module each. A module here that exists provides
#: ``add_arguments(parser)`` (its own options, e.g. ``--device cuda`` or ``--small``) and
#: ``section(args, context) -> Section | None`` (``None`` when its option was not given), called after
#: the CPU losses with a :class:`Context`; its :class:`~fastloss.bench_report.Section` (rows of
#: :class:`~fastloss.bench_report.Row`) is printed, written to the JSON (``"sections"``) and plotted
#: with the rest. The modules are imported when the command line is built, so they must import nothing
#: heavy (no numba.cuda, no CuPy) at module level.
#: ``fastloss bench --device cuda`` (:mod:`fastloss.bench_cuda`, chosen in :mod:`fastloss.__main__`)
#: and ``fastloss bench --small`` (:mod:`fastloss.bench_small`) are modes of their own, not sections:
#: their measurements (GPU batches; per-call latency) share neither the CPU table's columns nor its
#: bandwidth fractions.
SECTION_MODULES: tuple = ()


def section_modules() -> list:
    """The :data:`SECTION_MODULES` present in this installation, imported."""
    return [importlib.import_module(name) for name in SECTION_MODULES if importlib.util.find_spec(name) is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastloss bench``, the plug-in sections' included."""
    parser.add_argument("--quick", action="store_true",
                        help="small inputs and few repeats: about 30 s once Numba's cache is warm")
    parser.add_argument("--loss", action="append", metavar="NAME",
                        help="a loss to run (repeatable, or a comma list); default: every loss")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help="float32, float64 or all (repeatable, or a comma list); default: float32")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads for fastloss's kernels and PyTorch (default: all cores)")
    parser.add_argument("--size", type=_positive_int, metavar="ELEMENTS",
                        help=f"elements of every loss's largest input (default: {DEFAULT_SIZE}, "
                             f"cross_entropy {HEADLINE_SIZES['cross_entropy']} = 8192x32000)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of the table (shape: "
                             "see the docstring of fastloss.bench)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also write a bar chart of the speed-ups (needs matplotlib: pip install 'fastloss[plot]')")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    parser.add_argument("--small", action="store_true",
                        help="time small calls instead (per-call mean beside torch; also after a torch step, "
                             "and with torch busy)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")
    # Shrinks every input (tests run the whole command on tiny arrays); not part of the interface.
    parser.add_argument("--size-scale", type=_positive_float, default=None, help=argparse.SUPPRESS)
    for module in section_modules():
        module.add_arguments(parser)


def default_order(names: list) -> list:
    """The headline losses first, then the others in the order given."""
    return [n for n in HEADLINE_SIZES if n in names] + [n for n in names if n not in HEADLINE_SIZES]


def check_arguments(parser: argparse.ArgumentParser, args) -> tuple:
    """Validate what argparse cannot; ``parser.error`` (exit 2) on bad input.

    Returns ``(loss names, dtypes)``.
    """
    valid = sorted(REGISTRY)
    names = _split(args.loss) or default_order(valid)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown loss {', '.join(map(repr, unknown))}; valid names: {', '.join(valid)}")
    dtypes = _split(args.dtype)
    if "all" in dtypes:
        dtypes = list(DTYPES)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        parser.error(f"unknown dtype {', '.join(map(repr, bad))}; use float32, float64 or all")
    if args.plot is not None:
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib, which is not installed: pip install 'fastloss[plot]'")
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            parser.error(f"--plot: folder {folder} does not exist")
    return names, dtypes


def measure(args, parser: argparse.ArgumentParser) -> Report:
    """The measurements ``fastloss bench`` makes with parsed ``args`` (``parser.error`` on bad ones)."""
    names, dtypes = check_arguments(parser, args)
    if args.threads is not None:
        import fastloss  # the public setter: it governs the Numba and the Cython kernels

        fastloss.set_num_threads(args.threads)
    base = QUICK if args.quick else DEFAULT
    settings = dataclasses.replace(base, dtypes=tuple(dtypes) or base.dtypes)
    if args.size_scale is not None:  # the hidden test knob shrinks the bandwidth arrays too
        settings = dataclasses.replace(
            settings, size_scale=settings.size_scale * args.size_scale,
            bandwidth_elements=max(1 << 12, int(settings.bandwidth_elements * args.size_scale)))
    progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    sections = tuple(functools.partial(module.section, args) for module in section_modules())
    return run(names, settings, size=args.size, use_torch=not args.no_torch, progress_enabled=progress,
               sections=sections)


def main(args, parser: argparse.ArgumentParser) -> int:
    """Run ``fastloss bench`` with parsed ``args``; returns the exit status."""
    if args.small:  # a mode of its own: per-call latency of small inputs (fastloss.bench_small)
        from . import bench_small

        names, dtypes = check_arguments(parser, args)
        return bench_small.main(args, names, dtypes)
    report = measure(args, parser)
    if args.plot is not None:  # before the output: a reader that stops early must not lose the plot
        write_plot(report, args.plot)
    if args.json:
        sys.stdout.write(json.dumps(_finite_or_null(report.to_json()), indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(format_table(report) + "\n")
        if args.plot is not None:
            sys.stdout.write(f"\nplot written to {args.plot}\n")
    sys.stdout.flush()  # here, where a closed pipe is handled, rather than at interpreter exit
    return 0
