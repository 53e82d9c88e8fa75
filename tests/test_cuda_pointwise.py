"""The specialised CUDA pointwise kernels, path by path: the 16-byte vector kernel and its scalar twin.

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) the vector loads are plain Python twins, so these
tests check the values of both paths (a grid of 24 threads: several steps per thread, and every
remainder ``n % 4`` of the scalar tail) against the float64 REFERENCE and the CPU path, and which
path each call took. A last test compiles specialised kernels for sm_90 in a process without the
simulator and reads their PTX: vector loads, no 64-bit division, each loss's own transcendentals only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import needs_device

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))

DTYPES = (np.float32, np.float64)


@pytest.fixture
def widths(monkeypatch):
    """The vector widths of the fast pointwise kernels launched during a test, in launch order."""
    from fastloss import _cuda_arrays

    seen = []
    launch = _cuda_arrays.launch

    def spy(kernel, *args, **kwargs):
        loc = getattr(kernel, "_fastloss_locator", {})
        if loc.get("factory", [None, None])[1] == "fast_kernel":
            seen.append(loc["key"][-1])
        elif loc.get("factory", [None, None])[1] == "broadcast_kernel":
            seen.append("broadcast")
        return launch(kernel, *args, **kwargs)

    monkeypatch.setattr(_cuda_arrays, "launch", spy)
    return seen


def _device(host, offset):
    """``host`` on the device, starting ``offset`` elements into its buffer (offset 1: not 16-byte aligned)."""
    from numba import cuda

    flat = np.zeros(host.size + offset, host.dtype)
    flat[offset:] = host.ravel()
    return cuda.to_device(flat)[offset:].reshape(host.shape)


def _host(a):
    return np.asarray(a.copy_to_host())


#: loss -> (its public name, extra keyword arguments, how to draw (input, target) of a dtype)
LOSSES = {
    "mse": ("mse_loss", {}, lambda rng, n: (rng.standard_normal(n), rng.standard_normal(n))),
    "bce_logits": ("binary_cross_entropy_with_logits", {},
                   lambda rng, n: (3 * rng.standard_normal(n), rng.uniform(0, 1, n))),
    "smooth_l1": ("smooth_l1_loss", {"beta": 0.5}, lambda rng, n: (rng.standard_normal(n), rng.standard_normal(n))),
}


def _check(name, x, t, kwargs, dx, dt, dkwargs, dtype, in_place=False):
    import fastloss as fl
    from fastloss._registry import REGISTRY
    from _helpers import assert_close

    spec = REGISTRY[name]
    out = {"out": dx} if in_place else {}
    value, grad = fl.value_and_grad(spec.fn)(dx, dt, **dkwargs, **out)
    ref_value, (ref_grad,) = spec.reference(x.astype(np.float64), t.astype(np.float64),
                                            **{k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
                                               for k, v in kwargs.items()})
    cpu_value, cpu_grad = fl.value_and_grad(spec.fn)(x, t, **kwargs)
    if in_place:
        assert grad is dx
    assert np.dtype(value.dtype) == dtype and np.dtype(grad.dtype) == dtype
    assert_close(_host(value), ref_value, dtype, f"{name} value vs reference")
    assert_close(_host(value), cpu_value, dtype, f"{name} value vs CPU")
    assert_close(_host(grad), ref_grad, dtype, f"{name} gradient vs reference")
    assert_close(_host(grad), cpu_grad, dtype, f"{name} gradient vs CPU")


@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("rem", [0, 1, 2, 3])
def test_vector_and_scalar_paths_match_reference(widths, dtype, loss, reduction, rem):
    """Aligned arrays take the vector kernel, an input one element into its buffer the scalar one;
    both agree with the reference for every remainder ``n % 4`` (the vector kernel's scalar tail)."""
    from fastloss import _cuda_vector as V

    name, extra, draw = LOSSES[loss]
    rng = np.random.default_rng(rem)
    n = 4 * 24 * 2 + rem  # two vector steps per simulated thread, then the tail
    x, t = (a.astype(dtype) for a in draw(rng, n))
    kwargs = dict(extra, reduction=reduction)
    for offset, expected in ((0, V.width(dtype)), (1, 1)):
        dx, dt = _device(x, offset), _device(t, 0)
        assert V.aligned([dx]) == (offset == 0)
        del widths[:]
        _check(name, x, t, kwargs, dx, dt, kwargs, dtype)
        assert widths and set(widths) == {expected}, (offset, widths)


@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1])
def test_in_place_gradient_and_full_operands(widths, dtype, offset):
    """The gradient written over the input (``out=input``), with a full weight and pos_weight: five
    streamed arrays on the vector path (aligned) and on the scalar one (input one element in)."""
    from fastloss import _cuda_vector as V

    rng = np.random.default_rng(11)
    shape = (5, 39)  # 195 elements: n % 4 = 3
    x, t = (3 * rng.standard_normal(shape)).astype(dtype), rng.uniform(0, 1, shape).astype(dtype)
    w, pw = rng.uniform(0.5, 2, shape).astype(dtype), rng.uniform(0.5, 2, shape).astype(dtype)
    for reduction in ("none", "mean"):
        kwargs = dict(weight=w, pos_weight=pw, reduction=reduction)
        dkwargs = dict(weight=_device(w, 0), pos_weight=_device(pw, 0), reduction=reduction)
        del widths[:]
        _check("binary_cross_entropy_with_logits", x, t, kwargs, _device(x, offset), _device(t, 0), dkwargs,
               dtype, in_place=True)
        assert set(widths) == {V.width(dtype) if offset == 0 else 1}, widths


@needs_device
def test_unaligned_output_buffer_takes_the_scalar_path(widths):
    """Alignment is checked on every streamed array, the caller's ``out=`` buffer included."""
    import fastloss as fl
    from numba import cuda

    rng = np.random.default_rng(12)
    x, t = rng.standard_normal(101).astype(np.float32), rng.standard_normal(101).astype(np.float32)
    out = cuda.to_device(np.zeros(102, np.float32))[1:]
    _, g = fl.value_and_grad(fl.mse_loss)(_device(x, 0), _device(t, 0), out=out)
    assert g is out and widths == [1]
    np.testing.assert_allclose(_host(out), 2 * (x.astype(np.float64) - t) / x.size, rtol=2e-5, atol=1e-9)


@needs_device
def test_broadcast_operands_take_the_broadcast_kernel(widths):
    import fastloss as fl
    from _helpers import assert_close

    rng = np.random.default_rng(13)
    x, t = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    w = rng.uniform(0.5, 2, 5)
    value = fl.binary_cross_entropy_with_logits(_device(x, 0), _device(rng.uniform(0, 1, (6, 5)), 0),
                                                weight=_device(w, 0))
    assert widths == ["broadcast"] and np.isfinite(_host(value))
    del widths[:]
    value = fl.huber_loss(_device(x, 0), _device(t, 0), weight=_device(np.broadcast_to(w, (6, 5)).copy(), 0))
    assert widths == [2]  # float64 data, a full weight: the vector kernel
    r = np.abs(x - t)
    assert_close(_host(value), np.mean(w * np.where(r <= 1.0, 0.5 * r * r, r - 0.5)), np.float64, "huber")


@needs_device
def test_alignment_of_device_arrays():
    from numba import cuda

    from fastloss import _cuda_vector as V

    base = cuda.to_device(np.zeros(16, np.float32))
    assert V.width(np.float32) == 4 and V.width(np.float64) == 2
    assert V.aligned([base]) and V.aligned([base[4:]]) and not V.aligned([base[1:]])
    assert not V.aligned([base, base[2:]]) and V.aligned([base[2:]], nbytes=8)
    assert V.data_pointer(base[3:]) - V.data_pointer(base) == 12


@needs_device
def test_kernel_keys_are_checked():
    """A factory key outside the kernels' cases is refused before anything compiles."""
    from fastloss.families.pointwise_cuda import kernels as K

    with pytest.raises(ValueError):
        K.fast_kernel("float32", K.MSE, K.FULL, K.ABSENT, K.ABSENT, False, True, 2)  # float32 vectors are 4 wide
    with pytest.raises(ValueError):
        K.fast_kernel("float16", K.MSE, K.FULL, K.ABSENT, K.ABSENT, False, True, 1)
    with pytest.raises(ValueError):
        K.broadcast_kernel("float64", K.N_KINDS, False, True)


# --------------------------------------------------------------------------------------------------
# PTX of the specialised kernels for a real GPU (no GPU needed)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_specialised_pointwise_kernels_compile_to_vector_streams():
    import fastloss  # the subprocesses import the same fastloss as this test (the installed wheel in CI)

    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "FASTLOSS_RECORD_LAUNCHES")}
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, env.get("PYTHONPATH")]))
    probe = subprocess.run([sys.executable, "-c", "import cuda_compile, sys; why = cuda_compile.can_compile(); "
                            "print(why or ''); sys.exit(3 if why else 0)"],
                           cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:
        if os.environ.get("FASTLOSS_REQUIRE_CUDA_COMPILE", "") == "1":
            pytest.fail(f"cannot compile for CUDA: {probe.stdout}{probe.stderr}")
        pytest.skip(f"numba-cuda with NVVM is needed: {(probe.stdout + probe.stderr).strip()[-500:]}")
    done = subprocess.run([sys.executable, os.path.join(HERE, "ptx_pointwise.py")], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])

    # the broadcast kernel divides (flat[(i // q) % p]): the pattern finds 64-bit divisions where they are
    assert report["mse_f32_broadcast"]["div64"] > 0, report["mse_f32_broadcast"]
    for name, counts in report.items():
        assert counts["local"] == 0, (name, counts)  # the lanes live in registers
        if name.endswith("broadcast"):
            continue
        assert counts["div64"] == 0, (name, counts)
        if "_f32_v4" in name:
            assert counts["ld_v4_f32"] >= 2 and counts["st_v4_f32"] >= 1, (name, counts)
        elif "_f64_v2" in name:
            assert counts["ld_v2_f64"] >= 2 and counts["st_v2_f64"] >= 1, (name, counts)
        else:  # the scalar fallback
            assert counts["ld_v4_f32"] == counts["ld_v2_f64"] == 0, (name, counts)
    # the loss is a compile-time constant: each kernel holds its own loss's maths only
    for name in ("bce_logits_f32_v4", "bce_logits_f32_scalar"):
        assert report[name]["ex2_f32"] > 0, (name, report[name])
    for name in ("mse_f32_v4", "mse_f32_scalar", "mse_none_f32_v4", "smooth_l1_f32_v4"):
        assert report[name]["ex2_f32"] == 0 and report[name]["lg2_f32"] == 0, (name, report[name])
