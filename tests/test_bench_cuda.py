"""``fastloss bench --device cuda`` (fastloss/bench_cuda.py): help and refusal without a GPU, the output
formats, the batch timer. The measurements themselves need CuPy and a GPU (``cupy`` mark)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastloss import bench_cuda, bench_report, bench_timing
from fastloss.__main__ import main

#: Where the fastloss under test lives (the installed wheel in CI, not the unbuilt source tree).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bench_cuda.__file__)))


def _gpu_present() -> bool:
    return bench_cuda.gpu_problem() is None


def test_help_without_a_gpu_explains_the_device_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "cuda", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--device {cpu,cuda}" in out and "CuPy" in out and "copy bandwidth" in out and "Liger" in out


def test_help_and_cpu_bench_import_no_cuda():
    code = ("import sys\nfrom fastloss.__main__ import main\n"
            "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'numba.cuda' not in sys.modules and 'cupy' not in sys.modules\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(_gpu_present(), reason="a GPU with CuPy is present")
def test_without_a_gpu_it_exits_with_a_clear_message(capsys):
    assert main(["bench", "--device", "cuda", "--quick", "--loss", "mse_loss"]) == 1
    err = capsys.readouterr().err
    assert "fastloss bench --device cuda cannot run here" in err
    assert "CuPy" in err or "GPU" in err


def test_bad_arguments_are_refused_before_looking_for_a_gpu(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "cuda", "--loss", "no_such_loss"])
    assert exc.value.code == 2
    assert "unknown loss" in capsys.readouterr().err


def test_batch_timer_counts_the_calls_of_each_batch():
    calls, syncs = [], []
    t = bench_cuda.time_gpu(lambda: calls.append(1), lambda: syncs.append(1), bench_timing.QUICK)
    assert t.median_s > 0 and t.repeats >= bench_timing.QUICK.min_repeats
    assert len(calls) == t.repeats + 2  # two warm-up calls, then whole batches


def _report():
    m = bench_cuda.GPUMeasurement(1e-3, 100, 4_000_000, 4.0, 0.5, rel_err=1e-7, value_rel_err=1e-7,
                                  torch_time_s=2e-3, speedup_vs_torch=2.0, torch_rel_err=float("nan"))
    g = bench_cuda.GPUMeasurement(2e-3, 50, 8_000_000, 4.0, 0.5, rel_err=2e-7, liger_time_s=3e-3,
                                  speedup_vs_liger=1.5)
    row = bench_cuda.GPURow("cross_entropy", "float32", (8192, 32000), 8192 * 32000, m, g, notes=["a note"])
    return bench_cuda.GPUReport(
        {"fastloss": "0", "python": "3", "numpy": "2", "numba": "0.68", "cupy": "14", "numba_cuda": "0.30.4",
         "torch": None, "liger_kernel": None},
        {"name": "Some GPU", "copy_gbs": 4274.0, "copy_bytes": 1 << 29}, {"mode": "quick"}, [row],
        [{"loss": "mse_loss", "dtype": "float64", "reason": "broken"}])


def test_table_and_json_formats():
    text = bench_cuda.format_table(_report())
    assert "Some GPU" in text and "4274.0 GB/s" in text and "cross_entropy" in text
    assert "2x" in text and "1.5x" in text and "50%" in text and "a note" in text and "skipped mse_loss" in text
    data = json.loads(json.dumps(bench_report._finite_or_null(_report().to_json()), allow_nan=False))
    assert data["schema"] == bench_cuda.SCHEMA and data["device"]["copy_gbs"] == 4274.0
    assert data["results"][0]["value"]["torch_rel_err"] is None
    assert data["results"][0]["value_and_grad"]["speedup_vs_liger"] == 1.5


@pytest.mark.cupy
@pytest.mark.skipif(not _gpu_present(), reason="needs CuPy and a GPU")
def test_quick_run_on_a_gpu(capsys):
    assert main(["bench", "--device", "cuda", "--quick", "--loss", "mse_loss,cross_entropy", "--size-scale",
                 "0.01", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["loss"] for r in data["results"]} == {"mse_loss", "cross_entropy"}
    assert all(r["value_and_grad"]["rel_err"] < 1e-4 for r in data["results"])
