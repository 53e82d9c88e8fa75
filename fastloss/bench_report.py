"""How ``fastloss bench`` reports: the measurements of one loss (:class:`Measurement`, :class:`Row`),
the report's sections and the whole report with its JSON (:class:`Section`, :class:`Report`), and its
outputs: the table (:func:`header`, :func:`section_table`, :data:`LEGEND`, :func:`format_table`) and
the plot (:func:`write_plot`).

The command itself is :mod:`fastloss.bench`; the JSON's shape is in its docstring.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .bench_timing import NOISE_LIMIT, Bandwidth

# --------------------------------------------------------------------------------------------------
# What is reported
# --------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One operation (value, or value and gradient) of one loss, with its peers. Times are means over
    repeats; ``*spread`` the relative standard deviation of those repeats."""

    time_s: float
    repeats: int
    bytes: int
    gbs: float
    bw_fraction: float
    median_s: float = math.nan
    spread: float = math.nan
    rel_err: float = math.nan
    value_rel_err: float = math.nan
    reference_time_s: Optional[float] = None
    reference_spread: Optional[float] = None
    speedup_vs_reference: Optional[float] = None
    torch_time_s: Optional[float] = None
    torch_spread: Optional[float] = None
    speedup_vs_torch: Optional[float] = None
    torch_rel_err: Optional[float] = None


@dataclass
class Row:
    loss: str
    dtype: str
    shape: tuple
    elements: int
    value: Measurement
    value_and_grad: Measurement
    reference_rows: Optional[int] = None  # the reference ran on these leading rows only (None: all)
    wall_s: float = 0.0  # time spent on this row, compilation and peers included
    notes: list = field(default_factory=list)


def machine() -> dict:
    """What the numbers were measured on: processor, logical cores, operating system."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}"}


@dataclass
class Section:
    """One table of the report. The CPU losses are the main section; plug-in modules (see
    :data:`fastloss.bench.SECTION_MODULES`) add their own, which share the table, JSON and plot output."""

    name: str  # "cpu", "cuda", "small", ...: a JSON key and the plot's label suffix
    title: str  # a line above the section's table
    rows: list = field(default_factory=list)  # Row objects: the columns of the main table
    skipped: list = field(default_factory=list)  # {"loss", "dtype", "reason"}
    notes: list = field(default_factory=list)  # lines printed under the section's table
    peers: tuple = ("vs ref", "vs torch")  # the two speed-up columns' headings
    bandwidth_fractions: bool = True  # False: %bw is not meaningful here (printed as "-")

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "peers": list(self.peers),
                "results": [_row_json(r) for r in self.rows], "skipped": self.skipped, "notes": self.notes}


def _row_json(r: "Row") -> dict:
    return dataclasses.asdict(r) | {"shape": list(r.shape)}


@dataclass
class Report:
    versions: dict
    threads: int
    settings: dict
    bandwidth: Bandwidth
    rows: list
    skipped: list
    machine: dict = field(default_factory=machine)
    sections: list = field(default_factory=list)  # extra Sections from plug-ins, after the main one

    @property
    def noisy(self) -> bool:
        return self.bandwidth.noisy

    def noise(self) -> list:
        """Why the run is flagged noisy (empty when it is not)."""
        bw, out = self.bandwidth, []
        for kind, samples, spread in (("read", bw.read_samples_gbs, bw.read_spread),
                                      ("triad", bw.triad_samples_gbs, bw.triad_spread)):
            if spread > NOISE_LIMIT:
                out.append(f"the {len(samples)} {kind} bandwidth measurements ranged from {min(samples):.1f} "
                           f"to {max(samples):.1f} GB/s ({100 * spread:.0f}% apart; over "
                           f"{100 * NOISE_LIMIT:.0f}% means other work shared the machine, or its memory "
                           "bandwidth drifted by itself, as a virtual machine's can)")
        return out

    def to_json(self) -> dict:
        return {
            "schema": "fastloss-bench/2",
            "versions": self.versions,
            "machine": self.machine,
            "threads": self.threads,
            "settings": self.settings,
            "noisy": self.noisy,
            "noise": self.noise(),
            "bandwidth": self.bandwidth.to_json(),
            "results": [_row_json(r) for r in self.rows],
            "skipped": self.skipped,
            "sections": [sec.to_json() for sec in self.sections],
        }


# --------------------------------------------------------------------------------------------------
# Output: table and plot
# --------------------------------------------------------------------------------------------------
def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}x"


def _fmt_err(x: Optional[float]) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _fmt_fraction(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{100 * x:.0f}%" + ("*" if x > 1 else "")  # over 100%: a note explains it


def header(report: Report) -> list:
    """The lines above the table: versions and mode, machine, bandwidth, and the noise verdict. The
    README's sample output starts with these lines."""
    v, bw, m = report.versions, report.bandwidth, report.machine
    mode = report.settings.get("mode", "default")
    lines = [
        f"fastloss {v['fastloss']} bench ({mode}): numpy {v['numpy']}, numba {v['numba']}, "
        f"torch {v['torch'] or 'not installed'}, {report.threads} thread(s)",
        f"machine: {m['cpu']}, {m['cores']} logical cores, {m['system']}",
        f"memory bandwidth (Numba kernels, {bw.threads} thread(s), best of {len(bw.read_samples_gbs)} "
        f"measurements through the run): read {bw.read_gbs:.1f} GB/s (spread {100 * bw.read_spread:.0f}%), "
        f"triad {bw.triad_gbs:.1f} GB/s (spread {100 * bw.triad_spread:.0f}%)",
    ]
    if mode == "quick":
        lines.append(f"--quick: inputs at {report.settings['size_scale']:g} of the default size, partly in cache")
    if report.noisy:
        lines.append("NOISY RUN: " + "; ".join(report.noise()) + ". The times and ratios below are not "
                     "reliable: rerun on a quiet machine.")
    return lines


def section_table(rows: list, peers: tuple = ("vs ref", "vs torch"), bandwidth_fractions: bool = True) -> list:
    """The table of ``rows`` (:class:`Row`), one line per operation."""
    head = ("loss", "dtype", "shape", "op", "time", "±", "GB/s", "%bw", *peers, "rel err")
    body = []
    for r in rows:
        shape = "x".join(map(str, r.shape)) or "()"
        ref_mark = "~" if r.reference_rows else ""  # the reference's time was scaled from its first rows
        for op, m, first in (("value", r.value, True), ("v+grad", r.value_and_grad, False)):
            body.append((r.loss if first else "", r.dtype if first else "", shape if first else "", op,
                         _fmt_time(m.time_s), f"{100 * m.spread:.0f}%", f"{m.gbs:.1f}",
                         _fmt_fraction(m.bw_fraction) if bandwidth_fractions else "-",
                         ref_mark + _fmt_ratio(m.speedup_vs_reference) if m.speedup_vs_reference else "-",
                         _fmt_ratio(m.speedup_vs_torch), _fmt_err(m.rel_err)))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    right = set(range(4, len(head)))

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)]


LEGEND = [
    "time     mean of repeats, after a warm-up call; fastloss and its peers timed in alternation",
    "±        relative standard deviation of fastloss's repeats",
    "GB/s     bytes moved per second: inputs read (nll_loss: one element per target), an unreduced",
    "         output written; for v+grad also its grad_output read and the gradients written",
    "%bw      of the measured read bandwidth (value) or triad bandwidth (v+grad); * over 100%: see notes",
    "vs ref   the float64 NumPy reference's time over fastloss's; it computes value and gradients,",
    "         so only v+grad is compared (~: timed on the first rows and scaled, see the notes)",
    "vs torch PyTorch CPU forward (value) or forward+backward (v+grad) time over fastloss's",
    "rel err  max |fastloss - ref| / max |ref| of the value (value) or the gradients (v+grad)",
]


def format_table(report: Report) -> str:
    """The human-readable report: the header, the main table, its legend and notes, then each
    plug-in section's table and notes."""
    lines = [*header(report), "", *section_table(report.rows), "", *LEGEND]
    notes = [f"{r.loss} {r.dtype}: {n}" for r in report.rows for n in r.notes]
    notes += [f"skipped {', '.join(who)}: {reason}" for reason, who in _skipped_by_reason(report.skipped).items()]
    if notes:
        lines += ["", "notes:", *("  " + n for n in notes)]
    for sec in report.sections:
        lines += ["", sec.title, "", *section_table(sec.rows, sec.peers, sec.bandwidth_fractions)]
        notes = [*sec.notes, *(f"{r.loss} {r.dtype}: {n}" for r in sec.rows for n in r.notes)]
        notes += [f"skipped {', '.join(who)}: {reason}" for reason, who in _skipped_by_reason(sec.skipped).items()]
        if notes:
            lines += ["", "notes:", *("  " + n for n in notes)]
    return "\n".join(lines)


def _skipped_by_reason(skipped: list) -> dict:
    """``{reason: ["loss dtype", ...]}``: a missing family is one note, not one per loss."""
    out = {}
    for s in skipped:
        out.setdefault(s["reason"], []).append(s["loss"] + (f" {s['dtype']}" if s["dtype"] else ""))
    return out


def _finite_or_null(obj):
    """The JSON tree with NaN and infinities replaced by ``null`` (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_title(report: Report) -> str:
    v, m = report.versions, report.machine
    title = (f"fastloss {v['fastloss']} bench ({report.settings.get('mode', 'default')} run), "
             f"{report.threads} thread(s)\n{m['cpu']}, {m['cores']} cores; memory read "
             f"{report.bandwidth.read_gbs:.1f} GB/s, triad {report.bandwidth.triad_gbs:.1f} GB/s")
    return title + ("\nNOISY RUN: bandwidth measurements disagreed, ratios unreliable" if report.noisy else "")


def write_plot(report: Report, path: str) -> None:
    """A horizontal bar chart of fastloss's speed-ups over each peer, written as a PNG: every bar starts
    at 1x (no difference) and runs right for a speed-up, left for a slow-down, on a log scale, with its
    value written at its end. One group of bars per loss and dtype, plug-in sections included."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    series = [
        ("value vs PyTorch forward", lambda r: r.value.speedup_vs_torch),
        ("value+grad vs PyTorch forward+backward", lambda r: r.value_and_grad.speedup_vs_torch),
        ("value+grad vs float64 NumPy reference", lambda r: r.value_and_grad.speedup_vs_reference),
    ]
    labelled = [(f"{r.loss} ({r.dtype})", r) for r in report.rows]
    for sec in report.sections:
        labelled += [(f"{r.loss} ({r.dtype}, {sec.name})", r) for r in sec.rows]
    labelled = labelled[::-1]  # barh draws bottom-up: keep the table's order top-down
    y = np.arange(len(labelled))
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10.0, 2.2 + 0.5 * max(len(labelled), 1)))
    values = []
    for k, (title, get) in enumerate(series):
        ys = y + ((len(series) - 1) / 2 - k) * height
        pts = [(yy, get(r)) for yy, (_, r) in zip(ys, labelled) if get(r)]  # a missing peer: no bar
        if not pts:
            ax.barh([], [], height, label=title)
            continue
        yy, vals = zip(*pts)
        values += vals
        ax.barh(yy, [v - 1.0 for v in vals], height, left=1.0, label=title)  # from 1x, either way
        for yv, v in pts:
            ax.text(v * (1.04 if v >= 1 else 1 / 1.04), yv, f"{v:.0f}x" if v >= 10 else f"{v:.2g}x", va="center",
                    ha="left" if v >= 1 else "right", fontsize=7)
    lo = min([0.5, *values]) / 1.6
    hi = max([2.0, *values]) * 1.6
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, [label for label, _ in labelled], fontsize=8)
    ax.set_xlabel("speed-up of fastloss: peer time / fastloss time (log scale; left of 1x the peer is faster)")
    ax.set_title(plot_title(report), fontsize=9)
    ax.grid(axis="x", which="major", linewidth=0.3)
    fig.tight_layout()
    # below the figure, whatever its height; "tight" grows the saved image to take it in
    fig.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(series), frameon=False)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
