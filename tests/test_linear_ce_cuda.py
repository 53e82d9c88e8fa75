"""The CUDA twin of large-vocabulary cross entropy (:mod:`fastloss.families.lce_cuda`) against the CPU
path and the float64 reference, under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) or on a GPU;
and its kernels compiled for real GPUs (sm_75/80/90) where numba-cuda with NVVM is installed and the
simulator is off. The registry-wide CUDA tests (tests/test_cuda.py) run every CASES entry too.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastloss as fl
from fastloss.families import lce

from _helpers import assert_close

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def _gpu():
    if SIMULATED:
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # pragma: no cover
        return False


needs_device = pytest.mark.skipif(not _gpu(), reason="needs NUMBA_ENABLE_CUDASIM=1 or a GPU")


def _dev(a):
    from numba import cuda

    return cuda.to_device(np.array(a, order="C")) if isinstance(a, np.ndarray) else a


def _host(a):
    return np.asarray(a.copy_to_host())


@pytest.fixture(autouse=True)
def _fast_simulator_threads():
    old = sys.getswitchinterval()
    if SIMULATED:
        sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(old)


@needs_device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kind", [((5, 21), "index"), ((5, 21), "prob"), ((21,), "index"), ((2, 7, 3), "index"),
                                        ((2, 7, 3), "prob")])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_options_on_device(dtype, shape, kind, reduction):
    rng = np.random.default_rng(len(shape) * 7 + (kind == "prob"))
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    n_cls = shape[0] if len(shape) == 1 else shape[1]
    if kind == "prob":
        t = np.moveaxis(lce._prob_targets(rng, (shape[0],) + shape[2:] + (n_cls,), dtype), -1, 1)
    else:
        tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = lce._index_targets(rng, n_cls, int(np.prod(tshape)), ignore=-100 if tshape else None).reshape(tshape)
    w = rng.uniform(0.5, 2.0, n_cls).astype(dtype)
    kw = dict(weight=w, label_smoothing=0.1, z_loss=0.05, softcap=3.0, reduction=reduction)
    g = np.asarray(rng.uniform(0.5, 1.5, np.shape(fl.cross_entropy(x, t, **kw)))).astype(dtype)
    v, gx = fl.value_and_grad(fl.cross_entropy)(_dev(x), _dev(t), grad_output=_dev(g),
                                                **{k: _dev(a) for k, a in kw.items()})
    cv, cg = fl.value_and_grad(fl.cross_entropy)(x, t, grad_output=g, **kw)
    assert np.dtype(v.dtype) == dtype and tuple(gx.shape) == x.shape
    assert_close(_host(v), cv, dtype, "value vs CPU")
    assert_close(_host(gx), cg, dtype, "grad vs CPU")
    v1 = fl.cross_entropy(_dev(x), _dev(t), **{k: _dev(a) for k, a in kw.items()})
    assert_close(_host(v1), cv, dtype, "value alone vs CPU")


@needs_device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk", [None, 1, 21, 50])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_linear_cross_entropy_on_device(dtype, chunk, kind):
    rng = np.random.default_rng(3)
    n, h, v = 5, 4, 21
    x = rng.standard_normal((n, h)).astype(dtype)
    W = rng.standard_normal((v, h)).astype(dtype)
    b = rng.standard_normal(v).astype(dtype)
    w = rng.uniform(0.5, 2.0, v).astype(dtype)
    t = lce._prob_targets(rng, (n, v), dtype) if kind == "prob" else np.array([1, -100, 3, 20, 0])
    kw = dict(weight=w, label_smoothing=0.1, z_loss=0.01, softcap=2.0, reduction="mean")
    val, grads = fl.value_and_grad(fl.linear_cross_entropy)(_dev(x), _dev(W), _dev(t), linear_bias=_dev(b),
                                                            chunk_size=chunk, **{k: _dev(a) for k, a in kw.items()})
    cv, cgrads = fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, linear_bias=b, **kw)
    assert_close(_host(val), cv, dtype, "value vs CPU")
    assert len(grads) == 3
    for a, c in zip(grads, cgrads):
        assert np.dtype(a.dtype) == dtype
        assert_close(_host(a), c, dtype, "grad vs CPU")
    val2, (dx, dW) = fl.value_and_grad(fl.linear_cross_entropy)(_dev(x[0]), _dev(W), _dev(np.array(4)),
                                                                reduction="none")
    rv, (rdx, rdW) = lce.ref_linear_cross_entropy(x[0].astype(np.float64), W.astype(np.float64), np.int64(4),
                                                  reduction="none")
    assert tuple(val2.shape) == () and tuple(dx.shape) == (h,)
    assert_close(_host(val2), rv, dtype, "1-d value")
    assert_close(_host(dW), rdW, dtype, "1-d grad of linear_weight")


_COMPILE = r"""
import sys, numpy as np
from numba import cuda, types as T
from numba.cuda import dispatcher
cc = tuple(int(v) for v in sys.argv[1].split('.'))
class _Dev:
    compute_capability = cc
dispatcher.get_current_device = lambda: _Dev()  # no GPU here: compile for the target asked
from fastloss.families import lce_cuda as L
arr = lambda dt: T.Array(dt, 1, 'C')
for ft in (T.float32, T.float64):
    for tt in (T.int64, T.uint8, ft):
        sig = (arr(ft), T.int64, T.int64, arr(ft), T.boolean, arr(ft), T.boolean, ft, T.boolean, T.boolean,
               arr(tt), arr(ft), arr(ft), T.boolean, arr(T.float64), T.int64, T.float64, T.float64,
               arr(T.float64), T.int64, T.float64, arr(ft), T.int64, T.boolean, T.float64, arr(T.float64), T.boolean)
        ptx, _ = cuda.compile_ptx(L.rows_kernel(np.float32 if ft == T.float32 else np.float64).py_func, sig, cc=cc)
        body = ptx[ptx.index('.entry'):]
        assert 'shfl.sync' in body, 'the block reductions use warp shuffles'
        if ft == T.float32:
            assert 'ex2.approx' in body, 'float32 data: single-precision exponentials'
for fn, sig in [(L._product, (arr(T.float32), arr(T.float32), arr(T.float32), T.int64, T.int64, T.int64,
                              T.boolean, T.boolean, T.float64)),
                (L._column_sums, (arr(T.float32), T.int64, T.int64, arr(T.float64))),
                (L._target_weights, (arr(T.int64), arr(T.float32), T.boolean, T.int64, arr(T.float64)))]:
    cuda.compile_ptx(fn.py_func, sig, cc=cc)
print('ok')
"""


def _can_compile():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = "from numba import cuda, types as T\ncuda.compile_ptx(lambda x: None, (T.float32[::1],), cc=(7, 5))"
    try:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0
    except Exception:  # pragma: no cover
        return False


@pytest.mark.parametrize("cc", ["7.5", "8.0", "9.0"])
def test_kernels_compile_for_real_gpus(cc):
    """The simulator never compiles; NVVM does (in a process without the simulator)."""
    if not _can_compile():
        pytest.skip("numba-cuda with NVVM is not installed here")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fl.__file__)))  # the fastloss under test: the wheel in CI
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _COMPILE, cc], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
