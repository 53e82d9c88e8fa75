"""The CUDA twin of ``ctc_loss`` (:mod:`fastloss.families.ctc_cuda`) beyond the registry-wide CUDA tests
(tests/test_cuda.py runs every CASES entry): extended targets longer than a block (threads stride over
the positions), many repeated labels (the posterior chains), the gradient written over ``log_probs``,
an empty batch and deterministic results. Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) or on
a GPU; the launches are recorded for the real-target compile test like test_cuda.py's.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import fastloss as fl
from fastloss.families import ctc

from _helpers import assert_close

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def _gpu():
    if SIMULATED:
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - a broken CUDA install counts as no GPU
        return False


pytestmark = pytest.mark.skipif(not _gpu(), reason="needs NUMBA_ENABLE_CUDASIM=1 or a GPU")


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator_threads():
    old = sys.getswitchinterval()
    if SIMULATED:
        sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(old)


def _dev(a):
    from numba import cuda

    return cuda.to_device(np.array(a, order="C")) if isinstance(a, np.ndarray) else a


def _host(a):
    return np.asarray(a.copy_to_host())


def _log_probs(rng, shape, dtype):
    x = 2.0 * rng.standard_normal(shape)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_long_targets_with_repeats(dtype):
    """2L + 1 = 29 positions: more than a simulated block's threads; labels drawn from {1, 2}."""
    rng = np.random.default_rng(1)
    T, N, C, S = 40, 3, 4, 14
    x = _log_probs(rng, (T, N, C), dtype)
    tl = np.array([14, 9, 12])
    targets = np.zeros((N, S), dtype=np.int64)
    for n in range(N):
        targets[n, :tl[n]] = rng.integers(1, 3, tl[n])
    il = np.array([40, 33, 20])  # the third is probably too short: inf and NaN as torch
    for reduction in ("none", "mean"):
        g = rng.uniform(0.5, 1.5, N) if reduction == "none" else 0.8
        want_value, (want_grad,) = ctc.ctc_loss_ref(x.astype(np.float64), targets, il, tl, reduction=reduction,
                                                    grad_output=g)
        value, grad = fl.value_and_grad(fl.ctc_loss)(_dev(x), _dev(targets), _dev(il), _dev(tl), reduction=reduction,
                                                     grad_output=_dev(np.asarray(g, dtype)))
        assert_close(_host(value), want_value, dtype, "value")
        assert_close(_host(grad), want_grad, dtype, "gradient")


def test_gradient_in_place_on_the_device():
    rng = np.random.default_rng(2)
    x = _log_probs(rng, (9, 2, 5), np.float64)
    targets = np.array([[1, 2, 2], [3, 0, 0]])
    want_value, want_grad = fl.value_and_grad(fl.ctc_loss)(x, targets, [9, 7], [3, 1], blank=4)
    buf = _dev(x)
    value, grad = fl.value_and_grad(fl.ctc_loss)(buf, _dev(targets), [9, 7], [3, 1], blank=4, out=buf)
    assert grad is buf
    assert_close(_host(value), want_value, np.float64, "value")
    assert_close(_host(buf), want_grad, np.float64, "gradient written over log_probs")


def test_empty_batch_and_determinism():
    x = _dev(np.zeros((3, 0, 4)))
    t = _dev(np.zeros((0, 2), dtype=np.int64))
    assert _host(fl.ctc_loss(x, t, [], [], reduction="none")).shape == (0,)
    assert float(fl.ctc_loss(x, t, [], [], reduction="sum")) == 0.0
    assert np.isnan(float(fl.ctc_loss(x, t, [], [])))
    rng = np.random.default_rng(3)
    x = _dev(_log_probs(rng, (12, 3, 6), np.float64))
    t = _dev(np.array([[1, 1, 2, 2], [5, 4, 3, 3], [2, 2, 2, 2]]))
    first = fl.value_and_grad(fl.ctc_loss)(x, t, [12, 12, 11], [4, 4, 4])
    again = fl.value_and_grad(fl.ctc_loss)(x, t, [12, 12, 11], [4, 4, 4])
    assert float(first[0]) == float(again[0])
    np.testing.assert_array_equal(_host(first[1]), _host(again[1]))


def test_host_lengths_and_errors_with_device_arrays():
    x = _dev(np.log(np.full((4, 2, 3), 1 / 3)))
    t = _dev(np.array([[1, 2], [2, 0]]))
    with pytest.raises(TypeError, match="host and device"):
        fl.ctc_loss(x, t, np.array([4, 4]), np.array([2, 1]))
    with pytest.raises(IndexError, match="blank"):
        fl.ctc_loss(x, _dev(np.array([[1, 0], [2, 0]])), [4, 4], [2, 1])
    with pytest.raises(ValueError, match="at most T"):
        fl.ctc_loss(x, t, _dev(np.array([5, 4])), _dev(np.array([2, 1])))
