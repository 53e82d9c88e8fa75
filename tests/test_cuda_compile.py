"""Every CUDA kernel compiles for real GPUs (sm_75, sm_80, sm_90) with the argument types it is launched with.

CI has no GPU and the CUDA simulator never type-checks a branch it does not take, so a kernel can pass
every simulator test and still fail to compile on a GPU (as the whole GPU path once did). This test
takes every (kernel, argument types) launched by the CUDA test grid (``test_cuda.py``) under the
simulator, recorded by ``fastloss._cuda_arrays.launch`` (see ``conftest.py``), and compiles each with
numba-cuda's compiler and NVVM from pip wheels in a process without the simulator
(``cuda_compile.py``; no GPU needed).

When the session already ran the whole grid under the simulator (``.ci/run``), its recording is used;
otherwise the grid is run here first, in a subprocess under the simulator. Without numba-cuda and NVVM
the test skips, unless ``FASTLOSS_REQUIRE_CUDA_COMPILE=1`` (set by ``.ci/run``), where it fails.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import conftest

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["7.5", "8.0", "9.0"]
#: Fewer distinct kernels than this means the recording did not happen (there are far more).
MIN_KERNELS = 10


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "FASTLOSS_RECORD_LAUNCHES")}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def _record_grid(path):
    """Run the CUDA test grid under the simulator in a subprocess, recording its launches to ``path``."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", conftest.GRID_FILE],
        cwd=HERE, env=_env(NUMBA_ENABLE_CUDASIM="1", FASTLOSS_RECORD_LAUNCHES=path),
        capture_output=True, text=True, timeout=3 * 3600,
    )
    assert done.returncode == 0, f"the CUDA test grid failed under the simulator:\n{done.stdout[-6000:]}{done.stderr[-3000:]}"


@pytest.mark.slow
def test_every_launched_kernel_compiles_for_real_gpus(tmp_path):
    required = os.environ.get("FASTLOSS_REQUIRE_CUDA_COMPILE", "") == "1"
    script = os.path.join(HERE, "cuda_compile.py")
    probe = subprocess.run([sys.executable, "-c", "import cuda_compile, sys; why = cuda_compile.can_compile(); "
                            "print(why or ''); sys.exit(3 if why else 0)"],
                           cwd=HERE, env=_env(), capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:
        why = (probe.stdout + probe.stderr).strip()[-2000:]
        if required:
            pytest.fail(f"FASTLOSS_REQUIRE_CUDA_COMPILE=1 but this environment cannot compile for CUDA: {why}")
        pytest.skip(f"numba-cuda with NVVM is needed (pip install 'numba-cuda[cu12]'): {why}")

    if conftest.grid_recorded():
        record = conftest.SESSION_RECORD
    else:
        record = str(tmp_path / "launches.jsonl")
        _record_grid(record)
    done = subprocess.run(
        [sys.executable, script, record, "--cc", *TARGETS, "--min-kernels", str(MIN_KERNELS)],
        cwd=HERE, env=_env(), capture_output=True, text=True, timeout=3 * 3600,
    )
    print(done.stdout[-3000:])
    assert done.returncode == 0, f"kernels that do not compile for real GPUs:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}"


@pytest.mark.slow
def test_fast_pointwise_kernel_ptx_streams_float32_without_integer_division():
    """The contiguous pointwise pass of binary_cross_entropy_with_logits for float32 data (the kernel
    specialised for that loss, 16-byte vectors): no 64-bit integer division or modulo (its loop indexes
    operands directly), float32 exponentials (``ex2.approx``), float32 maths: per element the float32
    exp and log1p are some 30 f32 FMAs and no float64 FMA at all (the one-point functions' constants,
    the option and the gradient's factor are float32; only the running sum and a few per-thread
    factors are float64: a handful of ``mul.f64``). A float64 exp or log1p would add more than 10 f64
    FMAs per element (see ``ptx_pointwise.py`` for the kernels' signatures and the other losses)."""
    code = (
        "import json, re, sys\n"
        "import cuda_compile as c\n"
        "why = c.can_compile()\n"
        "if why: print(why); sys.exit(3)\n"
        "c.target((9, 0))\n"
        "from numba import cuda\n"
        "import ptx_pointwise as pp\n"
        "from fastloss.families.pointwise_cuda import kernels as pc\n"
        "kernel = pc.fast_kernel('float32', pc.BCE_LOGITS, pc.FULL, pc.ABSENT, pc.ABSENT, False, True, 4)\n"
        "ptx, _ = cuda.compile_ptx(kernel.py_func, pp.signature('float32', False), cc=(9, 0))\n"
        "print(json.dumps({op: len(re.findall(op, ptx)) for op in "
        "(r'div\\.[su]64', r'rem\\.[su]64', r'ex2\\.approx[.\\w]*\\.f32', r'fma\\.rn[.\\w]*\\.f32', r'fma\\.rn\\.f64',\n"
        "r'mul\\.[\\w.]*f64')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=_env(), capture_output=True, text=True,
                          timeout=1800)
    if done.returncode == 3:
        if os.environ.get("FASTLOSS_REQUIRE_CUDA_COMPILE", "") == "1":
            pytest.fail(f"cannot compile for CUDA: {done.stdout}")
        pytest.skip(f"numba-cuda with NVVM is needed: {done.stdout.strip()[-500:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts[r"div\.[su]64"] == 0 and counts[r"rem\.[su]64"] == 0, counts
    assert counts[r"ex2\.approx[.\w]*\.f32"] > 0, counts
    assert counts[r"fma\.rn[.\w]*\.f32"] > 100 and counts[r"fma\.rn\.f64"] == 0, counts
    assert counts[r"mul\.[\w.]*f64"] <= 4, counts
