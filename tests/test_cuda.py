"""The CUDA families (``fastloss.families.*_cuda``) against the CPU path and the float64 REFERENCE.

There is no GPU in CI: the kernels run under Numba's CUDA simulator, with simulator device arrays
(``numba.cuda.to_device``) standing in for GPU arrays::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py

Without the simulator the module is skipped, unless a real GPU is present (then the same tests run on
it). Tests that need CuPy are marked ``cupy`` and skip cleanly without it. Shapes are small: the
simulator runs every GPU thread as a Python thread.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def _real_gpu() -> bool:
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - a broken CUDA install counts as no GPU
        return False


if not SIMULATED and not _real_gpu():
    pytest.skip("CUDA tests need NUMBA_ENABLE_CUDASIM=1 (set before numba is imported) or a GPU",
                allow_module_level=True)

from numba import cuda  # noqa: E402

import fastloss as fl  # noqa: E402
from fastloss import _cuda_arrays  # noqa: E402
from fastloss._registry import REGISTRY  # noqa: E402

from _helpers import (  # noqa: E402
    DTYPES, SEED, assert_close, case_params, diff_slots, slot_value, upcast,
)

try:
    import cupy

    _CUPY_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # ImportError, or CuPy without a driver
    cupy, _CUPY_GPU = None, False

needs_cupy = pytest.mark.skipif(not _CUPY_GPU, reason="needs CuPy and a GPU")


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator_threads():
    """The simulator polls its GPU threads from the main thread; a short GIL switch interval makes
    each launch about 8x faster (it changes scheduling only, never results)."""
    old = sys.getswitchinterval()
    if SIMULATED:
        sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(old)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def to_device(a):
    """NumPy arrays (any dtype, 0-d included) to device arrays; anything else unchanged."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.array(a, order="C"))
    return a


def host(a):
    """A device result back on the host, as a NumPy array."""
    if cupy is not None and isinstance(a, cupy.ndarray):
        return a.get()
    return np.asarray(a.copy_to_host())


def is_numba_device_array(a) -> bool:
    return any(c.__name__ in ("FakeCUDAArray", "DeviceNDArray") for c in type(a).__mro__)


def device_args(case):
    return tuple(to_device(a) for a in case.args), {k: to_device(v) for k, v in case.kwargs.items()}


def reference(spec, case, grad_output=None):
    args = tuple(upcast(a) for a in case.args)
    kwargs = {k: upcast(v) for k, v in case.kwargs.items()}
    return spec.reference(*args, grad_output=grad_output, **kwargs)


def as_tuple(grads, spec):
    """``grads`` as a tuple; ``spec`` a LossSpec or the number of gradients returned."""
    n = spec if isinstance(spec, int) else len(spec.diff)
    return tuple(grads) if n > 1 else (grads,)


def cuda_family(spec):
    """The loss's CUDA module, or a skip when it is not written yet."""
    try:
        return fl._dispatch.family("cuda", spec.family)
    except ImportError as exc:  # pragma: no cover - every family has its twin once complete
        pytest.skip(f"no CUDA twin for family {spec.family!r}: {exc}")


def _sampled_cases():
    """Every case in float64 and every other one in float32 (the simulator is slow; the kernels'
    logic does not depend on the dtype, which the float32 half still exercises for every loss)."""
    params = case_params(dtypes=(np.float64,))
    per_loss = {}
    for p in case_params(dtypes=(np.float32,)):
        name = p.values[0].name
        per_loss[name] = per_loss.get(name, -1) + 1
        if per_loss[name] % 2 == 0:
            params.append(p)
    return params


CASES = _sampled_cases()


def _default_grad_output_cases():
    """Every case in float32 and every other one in float64: the kernels' argument types depend on
    the dtype, the loss and its options, and the real-target compile test compiles what runs here."""
    params = case_params(dtypes=(np.float32,))
    params += [p for i, p in enumerate(case_params(dtypes=(np.float64,))) if i % 2]
    return params


# --------------------------------------------------------------------------------------------------
# Every registered loss: value and gradients against the CPU path and the REFERENCE
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_value_and_grad_match_cpu_and_reference(spec, dtype, case):
    cuda_family(spec)
    dargs, dkwargs = device_args(case)
    before = [host(a) for a in dargs if is_numba_device_array(a)]

    value = spec.fn(*dargs, **dkwargs)
    ref_value, _ = reference(spec, case)
    cpu_value = spec.fn(*case.args, **case.kwargs)
    assert is_numba_device_array(value), type(value)
    assert np.dtype(value.dtype) == dtype
    assert tuple(value.shape) == np.shape(ref_value)
    assert_close(host(value), ref_value, dtype, f"{spec.name} value vs reference")
    assert_close(host(value), cpu_value, dtype, f"{spec.name} value vs CPU")

    rng = np.random.default_rng(SEED)
    g = rng.uniform(0.5, 1.5, size=np.shape(ref_value))
    value2, grads = fl.value_and_grad(spec.fn)(*dargs, grad_output=to_device(np.asarray(g, dtype)), **dkwargs)
    ref_value2, ref_grads = reference(spec, case, grad_output=g)
    _, cpu_grads = fl.value_and_grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    assert_close(host(value2), ref_value2, dtype, f"{spec.name} value (value_and_grad)")
    slots = diff_slots(spec, case)  # an optional input left out (linear_bias=None) has no gradient
    grads, cpu_grads = as_tuple(grads, len(slots)), as_tuple(cpu_grads, len(slots))
    assert len(grads) == len(slots)
    for (pos, gr, rg, cg) in zip([s for _, s in slots], grads, ref_grads, cpu_grads):
        assert is_numba_device_array(gr), type(gr)
        assert tuple(gr.shape) == np.shape(slot_value(case, pos)) and np.dtype(gr.dtype) == dtype
        assert_close(host(gr), rg, dtype, f"{spec.name} gradient of argument {pos} vs reference")
        assert_close(host(gr), cg, dtype, f"{spec.name} gradient of argument {pos} vs CPU")

    after = [host(a) for a in dargs if is_numba_device_array(a)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)  # inputs are never modified


@pytest.mark.parametrize("spec,dtype,case", _default_grad_output_cases())
def test_default_or_scalar_grad_output_into_out_buffers(spec, dtype, case):
    """grad_output absent (ones) or a host number, gradients written into the caller's ``out=``
    buffers: the other forms of the incoming gradient, which kernels are typed for too."""
    cuda_family(spec)
    dargs, dkwargs = device_args(case)
    slots = diff_slots(spec, case)  # an optional input left out (linear_bias=None) has no gradient
    positions = [slot for _, slot in slots]
    outs = tuple(cuda.device_array(np.shape(slot_value(case, p)), dtype) for p in positions)
    ref_value, _ = reference(spec, case)
    scalar = 2.5 if len(case.id) % 2 else None  # both forms across the grid, one call per case
    g = np.full(np.shape(ref_value), 1.0 if scalar is None else scalar)
    kwargs = dict(dkwargs, out=outs if len(outs) > 1 else outs[0])
    if scalar is not None:
        kwargs["grad_output"] = scalar
    value, grads = fl.value_and_grad(spec.fn)(*dargs, **kwargs)
    ref_value, ref_grads = reference(spec, case, grad_output=g)
    assert_close(host(value), ref_value, dtype, f"{spec.name} value")
    for pos, gr, buf, rg in zip(positions, as_tuple(grads, len(slots)), outs, ref_grads):
        assert gr is buf, f"{spec.name}: gradient of argument {pos} not written into out="
        assert_close(host(gr), rg, dtype, f"{spec.name} gradient of argument {pos} vs reference")


def _first_half_cases():
    """One float16 case per loss (fastloss._half converts on the device; the kernels are float32's)."""
    seen, params = set(), []
    for p in case_params(dtypes=(np.float16,)):
        if p.values[0].name not in seen:
            seen.add(p.values[0].name)
            params.append(p)
    return params


@pytest.mark.parametrize("spec,dtype,case", _first_half_cases())
def test_float16_on_the_device(spec, dtype, case):
    """float16 device arrays: float16 value and gradients on the device, equal to the CPU's float16
    result to a float16 rounding (both run float32 kernels), the gradient into a float16 ``out=``."""
    cuda_family(spec)
    dargs, dkwargs = device_args(case)
    slots = diff_slots(spec, case)
    outs = tuple(cuda.device_array(np.shape(slot_value(case, s)), np.asarray(slot_value(case, s)).dtype)
                 for _, s in slots)
    value, grads = fl.value_and_grad(spec.fn)(*dargs, out=outs if len(outs) > 1 else outs[0], **dkwargs)
    cpu_value, cpu_grads = fl.value_and_grad(spec.fn)(*case.args, **case.kwargs)
    assert is_numba_device_array(value) and np.dtype(value.dtype) == np.asarray(cpu_value).dtype
    hv = host(value)
    np.testing.assert_allclose(hv.astype(np.float64), np.asarray(cpu_value, np.float64), rtol=2.0 ** -10,
                               atol=2.0 ** -20, err_msg=f"{spec.name} float16 value vs CPU")
    for buf, gr, cg in zip(outs, as_tuple(grads, len(slots)), as_tuple(cpu_grads, len(slots))):
        assert gr is buf and np.dtype(gr.dtype) == cg.dtype
        scale = float(np.max(np.abs(cg), initial=0.0))
        np.testing.assert_allclose(host(gr).astype(np.float64), cg.astype(np.float64), rtol=2.0 ** -10,
                                   atol=2.0 ** -10 * scale + 2.0 ** -20, err_msg=f"{spec.name} float16 grad")


# --------------------------------------------------------------------------------------------------
# Softmax family: both row kernels, every target kind, in place
# --------------------------------------------------------------------------------------------------
def _softmax_reference(name):
    from fastloss.families import softmax

    return softmax.REFERENCE[name]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_cls", [5, 37])  # one thread per row / one block per row
def test_cross_entropy_probabilities_weight_smoothing(dtype, n_cls):
    from fastloss.families import softmax_cuda

    assert (n_cls >= softmax_cuda.ROW_BLOCK_MIN_C) == (n_cls == 37)
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((4, n_cls))).astype(dtype)
    q = rng.dirichlet(np.ones(n_cls), size=4).astype(dtype)
    w = rng.uniform(0.2, 2.0, n_cls).astype(dtype)
    for reduction in ("mean", "none"):
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.15)
        value, grad = fl.value_and_grad(fl.cross_entropy)(to_device(x), to_device(q), **{**kw, "weight": to_device(w)})
        ref_value, (ref_grad,) = _softmax_reference("cross_entropy")(x.astype(np.float64), q.astype(np.float64),
                                                                     **{**kw, "weight": w.astype(np.float64)})
        assert_close(host(value), ref_value, dtype, "value")
        assert_close(host(grad), ref_grad, dtype, "gradient")


@pytest.mark.parametrize("n_cls", [5, 37])
def test_cross_entropy_gradient_in_place(n_cls):
    """``out=input`` overwrites the logits with their gradient, in both row kernels."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, n_cls))
    t = np.array([0, n_cls - 1, -100])
    dx = to_device(x)
    value, grad = fl.value_and_grad(fl.cross_entropy)(dx, to_device(t), label_smoothing=0.1, out=dx)
    assert grad is dx
    ref_value, (ref_grad,) = _softmax_reference("cross_entropy")(x, t, label_smoothing=0.1)
    assert_close(host(value), ref_value, np.float64, "value")
    assert_close(host(dx), ref_grad, np.float64, "gradient written over the input")


@pytest.mark.parametrize("name", ["log_softmax", "softmax"])
def test_softmax_block_rows_and_broadcast_grad_output(name):
    """The block-per-row kernel (40 classes), with a grad_output broadcast from one row."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 40))
    g = rng.standard_normal((1, 40))
    value, grad = fl.value_and_grad(getattr(fl, name))(to_device(x), grad_output=to_device(g))
    ref_value, (ref_grad,) = _softmax_reference(name)(x, grad_output=np.broadcast_to(g, x.shape))
    assert_close(host(value), ref_value, np.float64, "value")
    assert_close(host(grad), ref_grad, np.float64, "gradient")


def test_non_contiguous_device_inputs():
    """Strided device views are copied to contiguous buffers on the device, not refused."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 12))
    t = rng.standard_normal((4, 12))
    dx, dt = to_device(x)[:, ::2], to_device(t)[:, ::2]
    assert not dx.is_c_contiguous()
    value, grad = fl.value_and_grad(fl.mse_loss)(dx, dt)
    assert_close(host(value), np.mean((x[:, ::2] - t[:, ::2]) ** 2), np.float64, "mse value")
    assert_close(host(grad), 2 * (x[:, ::2] - t[:, ::2]) / x[:, ::2].size, np.float64, "mse gradient")
    logits = to_device(x)[:, 1::3]  # (4, 4), classes strided
    labels = np.array([0, 3, 1, 2])
    ref_value, _ = _softmax_reference("cross_entropy")(x[:, 1::3], labels)
    assert_close(host(fl.cross_entropy(logits, to_device(labels))), ref_value, np.float64, "ce value")


def test_results_are_deterministic():
    """Partial sums are combined in a fixed order: the same input gives the same bits."""
    rng = np.random.default_rng(5)
    x, t = to_device(rng.standard_normal(1000)), to_device(rng.standard_normal(1000))
    first = host(fl.mse_loss(x, t))
    assert all(host(fl.mse_loss(x, t)) == first for _ in range(3))


# --------------------------------------------------------------------------------------------------
# Results, grad_output and out= on the device
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_result_types(dtype):
    rng = np.random.default_rng(6)
    x, t = to_device(rng.standard_normal(6).astype(dtype)), to_device(rng.standard_normal(6).astype(dtype))
    reduced = fl.l1_loss(x, t)
    assert is_numba_device_array(reduced) and reduced.shape == () and np.dtype(reduced.dtype) == dtype
    assert float(host(reduced)) == pytest.approx(float(np.mean(np.abs(host(x) - host(t)))), rel=1e-6)
    per_element = fl.l1_loss(x, t, reduction="none")
    assert is_numba_device_array(per_element) and per_element.shape == (6,)
    _, grad = fl.value_and_grad(fl.l1_loss)(x, t)
    assert is_numba_device_array(grad) and grad.shape == (6,) and np.dtype(grad.dtype) == dtype


def test_grad_output_forms():
    """A host number, a device 0-d array and a device array broadcast to the loss's shape."""
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    dx, dt = to_device(x), to_device(t)
    vg = fl.value_and_grad(fl.mse_loss)
    _, g = vg(dx, dt, reduction="sum", grad_output=2.5)
    np.testing.assert_allclose(host(g), 2.5 * 2 * (x - t))
    _, g = vg(dx, dt, reduction="sum", grad_output=to_device(np.array(0.5)))
    np.testing.assert_allclose(host(g), 0.5 * 2 * (x - t))
    row = rng.standard_normal(4)
    _, g = vg(dx, dt, reduction="none", grad_output=to_device(row))
    np.testing.assert_allclose(host(g), row * 2 * (x - t))
    with pytest.raises(ValueError, match="does not broadcast"):
        vg(dx, dt, reduction="none", grad_output=to_device(np.ones(3)))


def test_out_buffers():
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal(5), rng.standard_normal(5)
    dx, dt = to_device(x), to_device(t)
    buf = cuda.device_array(5, np.float64)
    _, g = fl.value_and_grad(fl.mse_loss)(dx, dt, out=buf)
    assert g is buf
    np.testing.assert_allclose(host(buf), 2 * (x - t) / 5)
    with pytest.raises(ValueError, match="shape"):
        fl.value_and_grad(fl.mse_loss)(dx, dt, out=cuda.device_array(4, np.float64))
    with pytest.raises(TypeError, match="out must be"):
        fl.value_and_grad(fl.mse_loss)(dx, dt, out=np.empty(5))


# --------------------------------------------------------------------------------------------------
# Dispatch and validation with device arrays
# --------------------------------------------------------------------------------------------------
def test_mixed_host_and_device_is_a_type_error():
    x = np.ones(3)
    with pytest.raises(TypeError, match="host and device"):
        fl.mse_loss(to_device(x), x)
    with pytest.raises(TypeError, match="host and device"):
        fl.cross_entropy(to_device(np.ones((2, 3))), np.array([0, 1]))
    with pytest.raises(TypeError, match="host and device"):
        fl.value_and_grad(fl.mse_loss)(to_device(x), to_device(x), reduction="none", grad_output=np.ones(3))
    with pytest.raises(TypeError, match="host and device"):
        fl.value_and_grad(fl.mse_loss)(x, x, grad_output=to_device(np.array(1.0)))


class _ForeignGPUArray:
    """A stand-in for another library's GPU array on a given device (only its class is looked at)."""

    def __init__(self, index):
        self.device = type("Device", (), {"index": index})()

    @property
    def __cuda_array_interface__(self):  # pragma: no cover - never read by the device check
        raise AssertionError


def test_arrays_on_different_gpus_are_a_value_error():
    _cuda_arrays.check_same_device(a=_ForeignGPUArray(1), b=_ForeignGPUArray(1))
    with pytest.raises(ValueError, match="different GPUs"):
        _cuda_arrays.check_same_device(input=_ForeignGPUArray(0), target=_ForeignGPUArray(1))


def test_value_checks_on_device_arrays():
    """Class indices and BCE's range are checked on Numba device arrays (which lack min/max)."""
    with pytest.raises(IndexError, match="7"):
        fl.cross_entropy(to_device(np.zeros((3, 4))), to_device(np.array([0, 7, 1])))
    with pytest.raises(IndexError, match="-3"):
        fl.nll_loss(to_device(np.zeros((3, 4))), to_device(np.array([0, -3, -100])))
    assert np.isfinite(host(fl.nll_loss(to_device(np.zeros((3, 4))), to_device(np.array([0, 3, -100])))))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fl.binary_cross_entropy(to_device(np.array([0.5, 1.5])), to_device(np.array([0.0, 1.0])))
    nan_in = fl.binary_cross_entropy(to_device(np.array([0.5, np.nan])), to_device(np.array([0.0, 1.0])))
    assert np.isnan(host(nan_in))
    # integer targets are converted to the input's dtype on the device
    value = fl.mse_loss(to_device(np.array([1.0, 2.0])), to_device(np.array([0, 4], dtype=np.int32)))
    assert float(host(value)) == pytest.approx(2.5)


def test_import_fastloss_leaves_numba_cuda_and_cupy_alone():
    code = (
        "import sys, numpy as np, fastloss as fl\n"
        "fl.mse_loss(np.ones(3), np.zeros(3))\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda imported'\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fl.__file__)))  # the fastloss under test: the wheel in CI
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _run_without_simulator(code):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "FASTLOSS_RECORD_LAUNCHES")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fl.__file__)))  # the fastloss under test: the wheel in CI
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_unimportable_numba_cuda_is_one_clear_import_error():
    """A broken CUDA install fails at first GPU use with the versions and the fix, not a deep traceback."""
    code = (
        "import sys\n"
        "sys.modules['numba.cuda'] = None  # as if numba.cuda could not be imported\n"
        "import numpy as np, fastloss as fl\n"
        "class GPUArray:\n"
        "    __cuda_array_interface__ = {}\n"
        "try:\n"
        "    fl.mse_loss(GPUArray(), GPUArray())\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    done = _run_without_simulator(code)
    assert done.returncode == 0, done.stdout + done.stderr
    message = done.stdout
    for words in ("importing numba.cuda failed", "numba-cuda", "numpy", "fastloss[cuda12]", "NumPy < 2.5"):
        assert words in message, (words, message)


def test_numba_cuda_imports_where_numpy_lacks_row_stack():
    """numba-cuda 0.30 names np.row_stack (gone in NumPy 2.5): the import works, NumPy is left as it was."""
    code = (
        "import numpy as np\n"
        "if hasattr(np, 'row_stack'):\n"
        "    del np.row_stack  # NumPy 2.5\n"
        "from fastloss import _cuda_import\n"
        "assert _cuda_import.cuda.__name__ == 'numba.cuda'\n"
        "assert not hasattr(np, 'row_stack'), 'the temporary alias was left behind'\n"
    )
    done = _run_without_simulator(code)
    assert done.returncode == 0, done.stdout + done.stderr


def test_float_of_a_reduced_result():
    """``float()`` of a reduced loss works for Numba device arrays, as for CuPy's 0-d arrays."""
    x, t = np.array([1.0, 2.0, 4.0], np.float32), np.array([0.0, 0.0, 1.0], np.float32)
    value = fl.mse_loss(to_device(x), to_device(t))
    assert is_numba_device_array(value) and value.shape == ()
    assert float(value) == pytest.approx(14.0 / 3.0, rel=1e-6)
    assert int(fl.l1_loss(to_device(x), to_device(t), reduction="sum")) == 6
    v, _ = fl.value_and_grad(fl.cross_entropy)(to_device(np.zeros((2, 4))), to_device(np.array([1, 2])))
    assert float(v) == pytest.approx(np.log(4.0))
    # the result is still a device array that fastloss accepts back, e.g. as a grad_output
    _, g = fl.value_and_grad(fl.mse_loss)(to_device(x), to_device(t), grad_output=value)
    assert_close(host(g), float(value) * 2 * (x - t) / 3, np.float32, "gradient")


# --------------------------------------------------------------------------------------------------
# CuPy (real GPU only)
# --------------------------------------------------------------------------------------------------
@pytest.mark.cupy
@needs_cupy
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_in_cupy_out(dtype):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 300)).astype(dtype)
    t = rng.integers(0, 300, 8)
    with cupy.cuda.Stream():  # kernels launch on CuPy's current stream
        value, grad = fl.value_and_grad(fl.cross_entropy)(cupy.asarray(x), cupy.asarray(t), label_smoothing=0.1)
        assert isinstance(value, cupy.ndarray) and value.shape == () and value.dtype == dtype
        assert isinstance(grad, cupy.ndarray) and grad.shape == x.shape
        ref_value, (ref_grad,) = _softmax_reference("cross_entropy")(x.astype(np.float64), t, label_smoothing=0.1)
        assert_close(float(value), ref_value, dtype, "value")
        assert_close(grad.get(), ref_grad, dtype, "gradient")


@pytest.mark.cupy
@needs_cupy
def test_cupy_and_numba_arrays_are_not_mixed():
    with pytest.raises(TypeError):
        fl.mse_loss(cupy.ones(3), cuda.to_device(np.ones(3)))


def test_every_loss_has_a_cuda_twin():
    """Each family named in the registry has its CUDA module with the driver api.py calls."""
    for spec in REGISTRY.values():
        mod = cuda_family(spec)
        assert mod.__name__.endswith("_cuda")
