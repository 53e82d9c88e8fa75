"""The CUDA twin of the margin family (:mod:`fastloss.families.margin_cuda`) beyond the registry grid of
``test_cuda.py``: gradients written over the input, NaN and inf, empty batches, class indices checked
on the device, and both multi-margin paths (lanes of a warp per row, a block per row).

Runs under ``NUMBA_ENABLE_CUDASIM=1`` (or on a GPU); skipped otherwise.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") != "1":
    try:
        from numba import cuda as _cuda

        _gpu = _cuda.is_available()
    except Exception:  # pragma: no cover - a broken CUDA install counts as no GPU
        _gpu = False
    if not _gpu:
        pytest.skip("CUDA tests need NUMBA_ENABLE_CUDASIM=1 or a GPU", allow_module_level=True)

from numba import cuda  # noqa: E402

import fastloss as fl  # noqa: E402
from fastloss.families import margin as M  # noqa: E402
from fastloss.families import margin_cuda as MC  # noqa: E402

from _helpers import assert_close  # noqa: E402


def dev(a):
    return cuda.to_device(np.array(a, order="C"))


def host(a):
    return np.asarray(a.copy_to_host())


def _lists(rng, n, n_cls):
    t = M._target_lists(rng, n, n_cls, 4)
    t[0, :3] = [1, 1, -1]  # a duplicate
    t[1, 0] = -1  # no target
    return t


@pytest.mark.parametrize("n_cls", [3, 37])  # lanes of a warp per row / a block per row
def test_multi_margin_paths_and_gradient_in_place(n_cls):
    assert (MC.row_group(n_cls) > MC.WARP) == (n_cls == 37)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, n_cls))
    t = rng.integers(0, n_cls, 5)
    w = rng.uniform(0.5, 2.0, n_cls)
    ref, (rg,) = M.REFERENCE["multi_margin_loss"](x, t, p=2, margin=0.5, weight=w)
    dx = dev(x)
    value, g = fl.value_and_grad(fl.multi_margin_loss)(dx, dev(t), p=2, margin=0.5, weight=dev(w), out=dx)
    assert g is dx
    assert_close(host(value), ref, np.float64, "value")
    assert_close(host(dx), rg, np.float64, "gradient written over the input")


def test_multilabel_gradient_in_place():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 9)).astype(np.float32)
    t = _lists(rng, 4, 9)
    ref, (rg,) = M.REFERENCE["multilabel_margin_loss"](x.astype(np.float64), t, reduction="sum")
    dx = dev(x)
    value, g = fl.value_and_grad(fl.multilabel_margin_loss)(dx, dev(t), reduction="sum", out=dx)
    assert g is dx
    assert_close(host(value), ref, np.float32, "value")
    assert_close(host(dx), rg, np.float32, "gradient written over the input")


def test_nan_and_inf_as_the_cpu():
    x = np.array([[0.1, np.nan, 0.4, 0.8], [0.1, np.inf, 0.4, 0.8], [np.nan, 0.2, 0.4, 0.8]])
    t = np.array([0, 0, 0])
    lists = np.array([[0, -1, 0, 0], [0, 2, -1, 0], [0, 1, -1, 0]])
    for name, target, kw in (("multi_margin_loss", t, {"p": 2}), ("multi_margin_loss", t, {}),
                             ("multilabel_margin_loss", lists, {})):
        f = fl.value_and_grad(getattr(fl, name))
        value, g = f(dev(x), dev(target), reduction="none", **kw)
        cpu_value, cpu_g = f(x, target, reduction="none", **kw)
        np.testing.assert_allclose(host(value), cpu_value, rtol=1e-12)
        np.testing.assert_allclose(host(g), cpu_g, rtol=1e-12)


@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_empty_batch(name):
    x = np.zeros((0, 3))
    t = np.zeros((0,) if name == "multi_margin_loss" else (0, 3), dtype=np.int64)
    f = getattr(fl, name)
    assert host(f(dev(x), dev(t), reduction="none")).shape == (0,)
    assert float(host(f(dev(x), dev(t), reduction="sum"))) == 0.0
    assert np.isnan(float(host(f(dev(x), dev(t)))))
    _, g = fl.value_and_grad(f)(dev(x), dev(t))
    assert g.shape == (0, 3)


def test_class_indices_are_checked_on_the_device():
    with pytest.raises(IndexError, match="target 4 is out of bounds for 4 classes"):
        fl.multi_margin_loss(dev(np.zeros((2, 4))), dev(np.array([0, 4])))
    with pytest.raises(IndexError, match="target -1 is out of bounds"):
        fl.multi_margin_loss(dev(np.zeros((2, 4))), dev(np.array([-1, 0])))
    with pytest.raises(IndexError, match="target -3 is out of bounds"):
        fl.multilabel_margin_loss(dev(np.zeros((1, 4))), dev(np.array([[0, -1, -3, 0]])))
    value = fl.multilabel_margin_loss(dev(np.zeros((1, 4))), dev(np.array([[0, -1, -1, 3]])))
    assert float(host(value)) == pytest.approx(0.75)


def test_one_sample_with_a_one_element_target():
    x = np.array([0.5, -0.2, 0.9])
    value = fl.multi_margin_loss(dev(x), dev(np.array([1])), reduction="none")
    assert value.shape == (1,)
    np.testing.assert_allclose(host(value), fl.multi_margin_loss(x, np.array([1]), reduction="none"))
