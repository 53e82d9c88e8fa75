"""``fastloss bench``: argument handling, the JSON and table outputs, the plot, on tiny inputs.

Most tests run the command in-process on fake losses (a fake family module injected into
``sys.modules``), so that what the command reports can be checked against numbers known here: bytes
moved, errors against the reference, which peer is missing. One test runs every real loss whose family
is available. Timings are never asserted on.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import fastloss
from fastloss import bench, bench_cases, bench_report, bench_timing
from fastloss.__main__ import main
from fastloss._registry import REGISTRY, Case, LossSpec

try:
    import torch
except ImportError:  # pragma: no cover - CI installs torch
    torch = None

FAKE_FAMILY = "_bench_fake"
TINY = ["--size-scale", "1e-3", "--progress", "never"]  # 16 Mi default elements -> ~16 thousand


# --------------------------------------------------------------------------------------------------
# A fake family: mean squared error written plainly in NumPy, in several variants
# --------------------------------------------------------------------------------------------------
def _mse_value_and_grad(x, t, scale=1.0):
    r = x.astype(np.float64) - t
    return scale * np.mean(r * r), 2.0 * scale * r / r.size


def _make_fake(name, scale=1.0):
    """A registered-looking loss ``name(input, target, *, _grad=None)``: ``scale * mean((x - t)**2)``."""

    def fn(input, target, *, _grad=None):
        value, g = _mse_value_and_grad(input, target, scale)
        value = np.array(value, dtype=input.dtype)
        if _grad is None:
            return value
        return value, ((g * _grad.scalar()).astype(input.dtype),)

    fn.__name__ = name
    spec = LossSpec(name, fn, ("input",), FAKE_FAMILY)
    fn._fastloss_spec = spec
    return spec


def _reference(input, target, grad_output=None):
    value, g = _mse_value_and_grad(np.asarray(input, np.float64), np.asarray(target, np.float64))
    return value, (g,)


def _bench_case(rng, dtype, size):
    x = rng.standard_normal(size).astype(dtype)
    t = rng.standard_normal(size).astype(dtype)
    return Case((x, t), {}, f"n{size}")


def _make_fake_none(name, honest=True):
    """``name(input, target, *, _grad=None)``: the unreduced ``(x - t)**2``; the dishonest variant
    ignores ``grad_output``."""

    def fn(input, target, *, _grad=None):
        r = input.astype(np.float64) - target
        value = (r * r).astype(input.dtype)
        if _grad is None:
            return value
        incoming = _grad.array(r.shape, np.float64) if honest else 1.0
        return value, ((2.0 * r * incoming).astype(input.dtype),)

    fn.__name__ = name
    spec = LossSpec(name, fn, ("input",), FAKE_FAMILY)
    fn._fastloss_spec = spec
    return spec


def _reference_none(input, target, grad_output=None):
    r = np.asarray(input, np.float64) - target
    incoming = 1.0 if grad_output is None else grad_output
    return r * r, (2.0 * r * incoming,)


def _broken_case(rng, dtype, size):
    raise RuntimeError("this BENCH entry is broken on purpose")


@pytest.fixture
def fake_losses(monkeypatch):
    """Registers fake_mse (correct, PyTorch peer), fake_wrong (1 % off), fake_untorched (no PyTorch
    equivalent), fake_broken (BENCH raises), fake_none and fake_none_deaf (unreduced; the deaf one
    ignores grad_output) and fake_orphan (family module missing)."""
    specs = {
        "fake_mse": _make_fake("fake_mse"),
        "fake_wrong": _make_fake("fake_wrong", scale=1.01),
        "fake_untorched": _make_fake("fake_untorched"),
        "fake_broken": _make_fake("fake_broken"),
        "fake_none": _make_fake_none("fake_none"),
        "fake_none_deaf": _make_fake_none("fake_none_deaf", honest=False),
    }
    mod = types.ModuleType(f"fastloss.families.{FAKE_FAMILY}")
    mod.REFERENCE = {n: _reference for n in specs} | {"fake_none": _reference_none, "fake_none_deaf": _reference_none}
    mod.BENCH = {n: _bench_case for n in specs} | {"fake_broken": _broken_case}
    mse = lambda torch, x, t: torch.nn.functional.mse_loss(x, t)  # noqa: E731
    mse_none = lambda torch, x, t: torch.nn.functional.mse_loss(x, t, reduction="none")  # noqa: E731
    mod.TORCH = {"fake_mse": mse, "fake_wrong": mse, "fake_untorched": None, "fake_broken": mse,
                 "fake_none": mse_none, "fake_none_deaf": mse_none}
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    orphan = _make_fake("fake_orphan")
    specs["fake_orphan"] = LossSpec("fake_orphan", orphan.fn, ("input",), "_bench_no_such_family")
    for name, spec in specs.items():
        monkeypatch.setitem(REGISTRY, name, spec)
    return specs


@pytest.fixture
def restore_threads():
    n = fastloss.get_num_threads()
    yield
    fastloss.set_num_threads(n)


def run_json(capsys, *args):
    assert main(["bench", "--json", *TINY, *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def by_loss(report):
    return {(r["loss"], r["dtype"]): r for r in report["results"]}


# --------------------------------------------------------------------------------------------------
# Bad arguments: a message and exit status 2
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["bench", "--loss", "no_such_loss"], "valid names: binary_cross_entropy"),
    (["bench", "--loss", "mse_loss,nope"], "unknown loss 'nope'"),
    (["bench", "--dtype", "float16"], "unknown dtype 'float16'"),
    (["bench", "--threads", "0"], "positive integer"),
    (["bench", "--threads", "two"], "positive integer"),
    (["bench", "--size", "-5"], "positive integer"),
    (["bench", "--frobnicate"], "unrecognized arguments"),
    pytest.param(["bench", "--plot", "/no/such/folder/speedups.png"], "does not exist",
                 marks=pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                          reason="without matplotlib --plot fails earlier (tested below)")),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().err


def test_plot_without_matplotlib_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--plot", str(tmp_path / "s.png")])
    assert exc.value.code == 2
    assert "matplotlib" in capsys.readouterr().err


def test_unknown_loss_from_the_command_line():
    """The real console entry (``python -m fastloss``) exits 2 and lists the valid names."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastloss.__file__)))
    proc = subprocess.run([sys.executable, "-m", "fastloss", "bench", "--loss", "nope"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "unknown loss 'nope'" in proc.stderr
    assert all(name in proc.stderr for name in fastloss.losses())
    assert proc.stdout == ""


def test_loss_and_dtype_lists_are_parsed():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--loss", "mse_loss,l1_loss", "--loss", "mse_loss", "--loss", "kl_div",
                              "--dtype", "all"])
    assert bench.check_arguments(parser, args) == (["mse_loss", "l1_loss", "kl_div"], ["float32", "float64"])
    args = parser.parse_args([])
    names, dtypes = bench.check_arguments(parser, args)
    assert names[0] == "cross_entropy" and sorted(names) == sorted(REGISTRY)  # the headline first
    assert dtypes == []  # the mode's default dtypes


def test_headline_is_in_the_default_run():
    assert bench_timing.DEFAULT.dtypes == ("float32",)
    assert bench_cases.loss_size("cross_entropy", None, 1.0) == 8192 * 32000
    assert bench_cases.loss_size("mse_loss", None, 1.0) == bench_cases.DEFAULT_SIZE
    assert bench_cases.loss_size("cross_entropy", 1000, 0.5) == 500


# --------------------------------------------------------------------------------------------------
# What the command reports, checked against numbers known here
# --------------------------------------------------------------------------------------------------
def test_json_shape_and_contents(fake_losses, capsys):
    report = run_json(capsys, "--loss", "fake_mse,fake_wrong,fake_untorched,fake_broken,fake_orphan",
                      "--dtype", "float32,float64")
    assert report["schema"] == "fastloss-bench/2"
    assert set(report) == {"schema", "versions", "machine", "threads", "settings", "noisy", "noise", "bandwidth",
                           "results", "skipped", "sections"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert isinstance(report["noisy"], bool) and report["noisy"] == bool(report["noise"])
    assert report["versions"]["fastloss"] == fastloss.__version__
    assert report["settings"]["dtypes"] == ["float32", "float64"]
    bw = report["bandwidth"]
    assert bw["method"] == "numba" and bw["read_gbs"] > 0 and bw["triad_gbs"] > 0
    # measured at the start (bandwidth_repeats) and once after each loss tried (4 losses x 2 dtypes)
    assert len(bw["read_samples_gbs"]) == bench_timing.DEFAULT.bandwidth_repeats + 8
    assert bw["read_gbs"] == max(bw["read_samples_gbs"]) and bw["triad_gbs"] == max(bw["triad_samples_gbs"])
    assert bw["noisy"] == (max(bw["read_spread"], bw["triad_spread"]) > 0.2) == report["noisy"]

    rows = by_loss(report)
    assert set(rows) == {(n, d) for n in ("fake_mse", "fake_wrong", "fake_untorched") for d in ("float32", "float64")}
    n = bench_cases.loss_size("fake_mse", None, 1e-3)
    for (name, dtype), row in rows.items():
        item = np.dtype(dtype).itemsize
        assert row["shape"] == [n] and row["elements"] == n
        v, g = row["value"], row["value_and_grad"]
        assert v["bytes"] == 2 * n * item  # input and target read
        assert g["bytes"] == 3 * n * item  # ... and the gradient written
        for m in (v, g):
            assert m["time_s"] > 0 and m["repeats"] >= 1 and m["median_s"] > 0 and m["spread"] >= 0
            assert m["gbs"] == pytest.approx(m["bytes"] / m["time_s"] / 1e9)
            if m["bw_fraction"] > 1:  # never over 100% without a note
                assert any("of the measured" in n for n in row["notes"])
        assert v["bw_fraction"] == pytest.approx(v["gbs"] / bw["read_gbs"])
        assert g["bw_fraction"] == pytest.approx(g["gbs"] / bw["triad_gbs"])
        assert v["reference_time_s"] is None and v["speedup_vs_reference"] is None
        assert g["speedup_vs_reference"] == pytest.approx(g["reference_time_s"] / g["time_s"])

    # errors against the float64 reference: small for the honest fake, 1 % for the wrong one
    tol = {"float32": 1e-6, "float64": 1e-13}
    for dtype in ("float32", "float64"):
        ok, wrong = rows["fake_mse", dtype], rows["fake_wrong", dtype]
        assert ok["value"]["rel_err"] < tol[dtype] and ok["value_and_grad"]["rel_err"] < tol[dtype]
        assert wrong["value"]["rel_err"] == pytest.approx(0.01, rel=1e-3)
        assert wrong["value_and_grad"]["rel_err"] == pytest.approx(0.01, rel=1e-3)
        assert wrong["value_and_grad"]["value_rel_err"] == pytest.approx(0.01, rel=1e-3)

    skipped = {(s["loss"], s["dtype"]): s["reason"] for s in report["skipped"]}
    assert set(skipped) == {("fake_broken", "float32"), ("fake_broken", "float64"), ("fake_orphan", None)}
    assert "broken on purpose" in skipped["fake_broken", "float32"]
    assert "fastloss.families._bench_no_such_family is not available" in skipped["fake_orphan", None]


def test_unreduced_loss_gets_a_random_incoming_gradient(fake_losses, capsys):
    """An unreduced output is differentiated with a random grad_output, read by the kernel: a loss that
    ignores it shows a large gradient error."""
    rows = by_loss(run_json(capsys, "--loss", "fake_none,fake_none_deaf", "--dtype", "float64"))
    n = bench_cases.loss_size("fake_none", None, 1e-3)
    honest, deaf = rows["fake_none", "float64"], rows["fake_none_deaf", "float64"]
    assert honest["value"]["bytes"] == 3 * 8 * n  # input, target read; output written
    assert honest["value_and_grad"]["bytes"] == 5 * 8 * n  # ... grad_output read, gradient written
    assert honest["value"]["rel_err"] < 1e-15 and honest["value_and_grad"]["rel_err"] < 1e-15
    assert deaf["value_and_grad"]["rel_err"] > 0.1
    if torch is not None:
        assert honest["value_and_grad"]["torch_rel_err"] < 1e-12


def test_reference_on_leading_rows_for_huge_inputs(fake_losses, monkeypatch, capsys):
    monkeypatch.setattr(bench_cases, "REFERENCE_ELEMENTS", 100)
    rows = by_loss(run_json(capsys, "--loss", "fake_none,fake_wrong", "--dtype", "float64"))
    for name in ("fake_none", "fake_wrong"):
        row = rows[name, "float64"]
        assert row["reference_rows"] == 100
        assert any("first 100 of" in note for note in row["notes"])
        assert row["value_and_grad"]["reference_time_s"] > 0
    assert rows["fake_none", "float64"]["value_and_grad"]["rel_err"] < 1e-15
    assert rows["fake_wrong", "float64"]["value"]["rel_err"] == pytest.approx(0.01, rel=1e-3)
    assert main(["bench", *TINY, "--loss", "fake_none", "--no-torch"]) == 0
    table = capsys.readouterr().out
    assert "~" in next(line for line in table.splitlines() if line.split()[:1] == ["v+grad"])


def test_leading_rows_cuts_positional_arrays_of_that_length():
    x, t, w = np.zeros((6, 4)), np.arange(6), np.ones(4)
    go = np.ones((6, 4))
    case, g = bench_cases.leading_rows(Case((x, t, 2.5), {"weight": w}), 6, 2, go)
    assert case.args[0].shape == (2, 4) and list(case.args[1]) == [0, 1] and case.args[2] == 2.5
    assert case.kwargs["weight"] is w and g.shape == (2, 4)
    assert bench_cases.reference_rows(Case((x, t)), 0, limit=24) is None
    assert bench_cases.reference_rows(Case((x, t)), 0, limit=9) == 2


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_torch_peer(fake_losses, capsys):
    rows = by_loss(run_json(capsys, "--loss", "fake_mse,fake_untorched", "--dtype", "all"))
    for dtype in ("float32", "float64"):
        v, g = rows["fake_mse", dtype]["value"], rows["fake_mse", dtype]["value_and_grad"]
        assert v["speedup_vs_torch"] == pytest.approx(v["torch_time_s"] / v["time_s"])
        assert g["speedup_vs_torch"] == pytest.approx(g["torch_time_s"] / g["time_s"])
        assert v["torch_rel_err"] < 1e-5 and g["torch_rel_err"] < 1e-5  # torch agrees with the reference
        untorched = rows["fake_untorched", dtype]
        assert untorched["value"]["torch_time_s"] is None and untorched["value_and_grad"]["speedup_vs_torch"] is None
        assert "PyTorch has no such loss" in untorched["notes"]


def test_no_torch_option(fake_losses, capsys):
    report = run_json(capsys, "--loss", "fake_mse", "--no-torch")
    assert report["versions"]["torch"] is None
    assert report["results"][0]["value"]["torch_time_s"] is None


def test_threads_option(fake_losses, restore_threads, capsys):
    report = run_json(capsys, "--loss", "fake_mse", "--threads", "1", "--no-torch")
    assert report["threads"] == 1 and report["bandwidth"]["threads"] == 1
    assert fastloss.get_num_threads() == 1


def test_table_and_progress(fake_losses, capsys):
    assert main(["bench", *TINY, "--progress", "always", "--loss", "fake_mse,fake_orphan", "--no-torch"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "memory bandwidth (Numba kernels" in out
    header = next(line for line in out.splitlines() if line.startswith("loss"))
    assert header.split() == ["loss", "dtype", "shape", "op", "time", "±", "GB/s", "%bw", "vs", "ref", "vs", "torch",
                              "rel", "err"]
    first = out.splitlines()[0]
    assert first.startswith(f"fastloss {fastloss.__version__} bench (default): numpy ")
    assert out.splitlines()[1].startswith("machine: ")
    assert any(line.startswith("fake_mse") and "float32" in line for line in out.splitlines())
    assert any(line.split()[:1] == ["v+grad"] for line in out.splitlines())
    assert "skipped fake_orphan:" in out
    assert "\r[" in err and "fake_mse float32" in err  # the progress bar went to stderr only
    assert "\r" not in out


def test_plot_writes_a_png(fake_losses, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    assert main(["bench", *TINY, "--loss", "fake_mse,fake_untorched", "--dtype", "all", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {path}" in capsys.readouterr().out


def test_json_stdout_is_pure_json_with_plot(fake_losses, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    report = run_json(capsys, "--loss", "fake_mse", "--no-torch", "--plot", str(tmp_path / "p.png"))
    assert report["results"][0]["loss"] == "fake_mse"


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------
def test_rel_err():
    assert bench_cases.rel_err(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
    assert bench_cases.rel_err(np.float32(3.0), 3.0) == 0.0
    assert bench_cases.rel_err(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert np.isnan(bench_cases.rel_err(np.array([np.nan]), np.array([1.0])))
    assert bench_cases.rel_err(np.array([1e-3]), np.array([0.0])) == pytest.approx(1e-3)  # absolute at zero
    assert bench_cases.rel_err(np.array([np.inf, 2.0]), np.array([np.inf, 4.0])) == pytest.approx(0.5)
    assert bench_cases.rel_err(np.array([-np.inf, 4.0]), np.array([np.inf, 4.0])) == np.inf
    assert bench_cases.rel_err(np.float32(1.5), np.float64(1.0)) == pytest.approx(0.5)


def test_memory_bandwidth_counts_bytes_as_stream():
    bw = bench_timing.memory_bandwidth(1 << 14, repeats=2)
    passes = bench_timing.BANDWIDTH_PASSES
    assert bw.read_bytes == passes * 8 * (1 << 14) and bw.triad_bytes == passes * 3 * 8 * (1 << 13)
    assert bw.read_gbs > 0 and bw.triad_gbs > 0


@pytest.mark.parametrize("threads", [1, 3])
def test_numba_bandwidth_kernels_compute_what_they_claim(threads):
    x = np.arange(1000, dtype=np.float64)
    assert bench_timing._read_pass(x, threads, 3) == pytest.approx(3 * x.sum())
    a, b, c = np.zeros(1001), np.arange(1001.0), np.ones(1001)
    bench_timing._triad_pass(a, b, c, 3.0, threads, 2)
    np.testing.assert_array_equal(a, b + 4.0 * c)  # the last pass uses scalar + 1


def test_a_family_that_fails_to_import_is_skipped(monkeypatch):
    spec = _make_fake("fake_x")

    def failing_import(exc):
        def module(self):
            raise exc

        return property(module)

    monkeypatch.setattr(LossSpec, "module", failing_import(SyntaxError("invalid syntax (softmax.py, line 3)")))
    assert bench.family_problem(spec) == ("family module fastloss.families._bench_fake failed to import: "
                                          "SyntaxError: invalid syntax (softmax.py, line 3)")
    monkeypatch.setattr(LossSpec, "module", failing_import(ImportError("No module named 'fastloss._cy.ranking'")))
    assert bench.family_problem(spec).endswith("(build the Cython extensions: python setup.py build_ext --inplace)")


def _available_real_losses():
    return [n for n in sorted(REGISTRY) if not REGISTRY[n].family.startswith("_bench")
            and bench.family_problem(REGISTRY[n]) is None]


@pytest.mark.slow
def test_every_available_real_loss_runs(capsys):
    """The bench and the families' BENCH/REFERENCE/TORCH tables fit together, on tiny inputs."""
    names = _available_real_losses()
    if not names:
        pytest.skip("no loss family is available yet")
    report = run_json(capsys, "--quick", "--loss", ",".join(names))  # float32: float64 is the same path
    errors = [s for s in report["skipped"] if s["dtype"] is not None]
    assert errors == []
    rows = by_loss(report)
    assert set(rows) == {(n, "float32") for n in names}
    for (name, dtype), row in rows.items():
        # loose: this checks that bench, BENCH, REFERENCE and TORCH fit together; test_losses does the maths
        assert row["value"]["rel_err"] < 1e-3, name
        assert row["value_and_grad"]["rel_err"] < 1e-3, name
        if row["value"]["torch_time_s"] is not None:
            assert row["value_and_grad"]["torch_rel_err"] < 1e-3, name


# --------------------------------------------------------------------------------------------------
# Trust: interleaving, spread, noise, fractions over 100 %, closed pipes
# --------------------------------------------------------------------------------------------------
def test_interleaved_rounds_alternate_and_count():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b"), "c": lambda: order.append("c")}
    settings = bench_timing.Settings(budget_s=10.0, min_repeats=3, max_repeats=3)
    timings, _ = bench_timing.time_interleaved(calls, settings, warmup=("b",))
    assert order == ["b", "a", "b", "c", "c", "b", "a", "a", "b", "c"]  # warm-up, then rounds both ways
    assert all(t.repeats == 3 for t in timings.values())


def test_slow_rounds_stop_early_fast_ones_do_not(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench_timing.time, "perf_counter", lambda: clock[0])

    def taking(seconds):
        def call():
            clock[0] += seconds
        return call

    settings = bench_timing.Settings(budget_s=0.2, min_repeats=3, max_repeats=15)
    fast, _ = bench_timing.time_interleaved({"f": taking(0.1), "peer": taking(1.0)}, settings)
    assert fast["f"].repeats == 3  # rounds of 1.1 s: slower than the budget, still min_repeats of them
    slow, _ = bench_timing.time_interleaved({"f": taking(0.1), "peer": taking(6.0)}, settings)
    assert slow["f"].repeats == 1 and slow["peer"].mean_s == pytest.approx(6.0)


def test_timing_reports_mean_and_spread():
    t = bench_timing.Timing.of([1.0, 2.0, 6.0])
    assert t.mean_s == 3.0 and t.median_s == 2.0 and t.min_s == 1.0
    assert t.spread == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1) / 3.0)
    assert bench_timing.Timing.of([0.5]).spread == 0.0


def _fake_probe(monkeypatch, reads):
    """BandwidthProbe whose successive read measurements are ``reads`` (then the last, repeated)."""
    seq = iter(reads)

    def sample(self):
        value = next(seq, reads[-1])
        self.read.append(value)
        self.triad.append(value * 0.8)

    monkeypatch.setattr(bench_timing.BandwidthProbe, "sample", sample)


def test_disagreeing_bandwidth_flags_the_run_noisy(fake_losses, monkeypatch, capsys):
    _fake_probe(monkeypatch, [50.0, 49.0, 51.0, 50.0, 50.0, 20.0])  # a drop after the one loss
    report = run_json(capsys, "--loss", "fake_mse", "--no-torch")
    assert report["noisy"] is True and report["bandwidth"]["noisy"] is True
    assert report["bandwidth"]["read_gbs"] == 51.0
    assert report["bandwidth"]["read_spread"] == pytest.approx(31 / 51)
    assert "from 20.0 to 51.0 GB/s" in report["noise"][0]
    _fake_probe(monkeypatch, [50.0, 49.0, 51.0, 50.0, 50.0, 20.0])
    assert main(["bench", *TINY, "--loss", "fake_mse", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "NOISY RUN: " in out and "rerun on a quiet machine" in out


def test_agreeing_bandwidth_is_not_noisy(fake_losses, monkeypatch, capsys):
    _fake_probe(monkeypatch, [50.0, 49.0, 51.0, 50.0, 50.0, 45.0])
    report = run_json(capsys, "--loss", "fake_mse", "--no-torch")
    assert report["noisy"] is False and report["noise"] == []
    assert main(["bench", *TINY, "--loss", "fake_mse", "--no-torch"]) == 0
    assert "NOISY" not in capsys.readouterr().out


def test_fraction_over_100_percent_has_a_note(fake_losses, monkeypatch, capsys):
    _fake_probe(monkeypatch, [1e-6])  # a "bandwidth" every loss beats
    report = run_json(capsys, "--loss", "fake_mse", "--no-torch")
    row = report["results"][0]
    assert row["value"]["bw_fraction"] > 1
    assert any(n.startswith("value moved") and "of the measured read bandwidth" in n for n in row["notes"])
    assert main(["bench", *TINY, "--loss", "fake_mse", "--no-torch"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("fake_mse"))
    assert "%*" in line and "fake_mse float32: value moved" in out


def test_plug_in_section_shares_the_outputs(fake_losses, monkeypatch, capsys, tmp_path):
    """A section module (as bench_cuda / bench_small will be) adds an option and a table."""
    mod = types.ModuleType("fastloss._bench_plugin_fake")
    mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)

    def add_arguments(parser):
        parser.add_argument("--fake-section", action="store_true")

    def section(args, context):
        if not args.fake_section:
            return None
        spec = REGISTRY["fake_mse"]
        row = bench.bench_loss(spec, "float64", 1000, context.settings, None, context.progress)
        context.probe.sample()
        return bench_report.Section("fake", "fake section: fake_mse on another device", rows=[row],
                                    notes=["a note of the section"], peers=("vs ref", "vs other"),
                                    bandwidth_fractions=False)

    mod.add_arguments, mod.section = add_arguments, section
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(bench, "SECTION_MODULES", (mod.__name__, "fastloss._no_such_section"))
    report = run_json(capsys, "--loss", "fake_mse", "--no-torch", "--fake-section")
    (sec,) = report["sections"]
    assert sec["name"] == "fake" and sec["results"][0]["loss"] == "fake_mse" and sec["peers"][1] == "vs other"
    assert main(["bench", *TINY, "--loss", "fake_mse", "--no-torch", "--fake-section"]) == 0
    out = capsys.readouterr().out
    assert "fake section: fake_mse on another device" in out and "a note of the section" in out
    assert "vs other" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(["bench", *TINY, "--loss", "fake_mse", "--no-torch", "--fake-section",
                     "--plot", str(tmp_path / "p.png")]) == 0
        capsys.readouterr()
    assert run_json(capsys, "--loss", "fake_mse", "--no-torch")["sections"] == []


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_closed_pipe_ends_quietly(fmt):
    """``fastloss bench ... | head -c 0``: the reader is gone before the output; no traceback, and the
    exit status a shell gives a process ended by SIGPIPE (or 0)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastloss.__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "fastloss", "bench", *TINY, "--loss", "l1_loss", "--no-torch",
                             *fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader exits at once
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141), err


def test_head_of_json_in_a_shell(tmp_path):
    """The issue's command, as a shell runs it (small inputs): exit 0 or 141, no traceback."""
    if not os.path.exists("/bin/bash"):
        pytest.skip("no bash")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastloss.__file__)))
    cmd = (f"set -o pipefail; '{sys.executable}' -m fastloss bench --quick --json {' '.join(TINY)} "
           f"--loss l1_loss,mse_loss --no-torch 2>err.txt | head -c 600 > head.txt")
    proc = subprocess.run(["/bin/bash", "-c", cmd], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode in (0, 141)
    assert "Traceback" not in (tmp_path / "err.txt").read_text()
    assert (tmp_path / "head.txt").read_text().startswith("{")
