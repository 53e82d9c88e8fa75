"""poisson_nll_loss, gaussian_nll_loss, soft_margin_loss, multilabel_soft_margin_loss and sigmoid_focal_loss
beyond the registry-wide tests: var's shapes and its clamp, the bad inputs of contract §4, extremes, NaN,
empty inputs, float32 accuracy on inputs of many chunks.

Ground truth is PyTorch 2.13 (float64 tensors and autograd; torchvision's focal loss written from its
definition in fastloss.families.pointwise.reference) and the family's float64 NumPy references.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss.families import pointwise as pw

from _helpers import needs_torch, torch

NAN, INF = float("nan"), float("inf")
NEW = ["poisson_nll_loss", "gaussian_nll_loss", "soft_margin_loss", "multilabel_soft_margin_loss",
       "sigmoid_focal_loss"]


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def _close(actual, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol,
                               atol=atol, equal_nan=True)


# ------------------------------------------------------------------------------ gaussian_nll_loss
@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("full", [False, True])
def test_gaussian_var_below_eps_is_clamped_for_the_value_and_passed_through_for_the_gradient(reduction, full):
    """torch clamps var at eps under no_grad: value at max(var, eps), gradient straight through."""
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    var = rng.uniform(0.1, 2.0, (4, 5))
    var[0, :3] = [0.0, 1e-9, 1e-6]  # below, below and at eps
    var[1, 0] = 1e-7
    value, (gx, gv) = fl.value_and_grad(fl.gaussian_nll_loss)(x, t, var, full=full, reduction=reduction)
    xt, vt = _t(x, True), _t(var, True)
    tv = torch.nn.functional.gaussian_nll_loss(xt, _t(t), vt, full=full, reduction=reduction)
    tgx, tgv = torch.autograd.grad(tv, (xt, vt), grad_outputs=torch.ones_like(tv))
    _close(value, tv.detach().numpy())
    _close(gx, tgx.numpy())
    _close(gv, tgv.numpy())
    assert np.all(gv[0, :2] != 0)  # not the clamp's zero slope


@needs_torch
@pytest.mark.parametrize("shape,var_shape", [((6,), ()), ((6,), (1,)), ((3, 4), (3,)), ((3, 4), (1, 4)),
                                             ((2, 3, 4), (2, 3)), ((2, 3, 4), (1, 3, 4)), ((2, 3, 4), (2, 3, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_var_shapes_as_torch(shape, var_shape, dtype):
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    var = rng.uniform(0.2, 2.0, var_shape).astype(dtype)
    g = rng.uniform(0.5, 1.5, shape)
    value, (gx, gv) = fl.value_and_grad(fl.gaussian_nll_loss)(x, t, var, reduction="none", grad_output=g)
    assert gx.dtype == gv.dtype == dtype and gv.shape == var.shape
    xt, vt = _t(x, True), _t(var, True)
    tv = torch.nn.functional.gaussian_nll_loss(xt, _t(t), vt, reduction="none")
    tgx, tgv = torch.autograd.grad(tv, (xt, vt), grad_outputs=_t(g))
    rtol = 2e-5 if dtype == np.float32 else 1e-10
    _close(value, tv.detach().numpy(), rtol, rtol)
    _close(gx, tgx.numpy(), rtol, rtol)
    _close(gv, tgv.numpy(), rtol, rtol)


def test_gaussian_float_var_differentiates_input_alone():
    x, t = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0])
    value, g = fl.value_and_grad(fl.gaussian_nll_loss)(x, t, 0.5)
    ref, (rg,) = pw.REFERENCE["gaussian_nll_loss"](x, t, 0.5)
    assert isinstance(g, np.ndarray) and g.shape == x.shape
    _close(value, ref)
    _close(g, rg)


@pytest.mark.parametrize("var", [-0.5, np.array([0.5, -1e-3, 1.0])])
def test_gaussian_negative_var_is_a_value_error(var):
    with pytest.raises(ValueError, match="negative"):
        fl.gaussian_nll_loss(np.zeros(3), np.zeros(3), var)


@pytest.mark.parametrize("var_shape", [(2,), (4, 2), (3, 2), (4, 3, 1), (1, 1)])
def test_gaussian_var_of_a_shape_torch_refuses_is_a_value_error(var_shape):
    with pytest.raises(ValueError, match="var"):
        fl.gaussian_nll_loss(np.zeros((4, 3)), np.zeros((4, 3)), np.ones(var_shape))


def test_gaussian_nan_var_propagates():
    value = fl.gaussian_nll_loss(np.zeros(3), np.ones(3), np.array([1.0, NAN, 1.0]), reduction="none")
    assert np.isnan(value[1]) and np.isfinite(value[[0, 2]]).all()


# ------------------------------------------------------------------------------ the others
@needs_torch
@pytest.mark.parametrize("log_input", [True, False])
def test_poisson_nan_and_inf_as_torch(log_input):
    x = np.array([NAN, 0.5, INF, -INF, 2.0, 0.0, 1.0]) if log_input else np.array([NAN, 0.5, INF, 0.0, 2.0, 0.0, 1e-9])
    t = np.array([1.0, NAN, 0.0, 2.0, INF, 0.0, 3.0])
    for full in (False, True):
        value, g = fl.value_and_grad(fl.poisson_nll_loss)(x, t, log_input=log_input, full=full, reduction="none")
        xt = _t(x, True)
        tv = torch.nn.functional.poisson_nll_loss(xt, _t(t), log_input=log_input, full=full, reduction="none")
        (tg,) = torch.autograd.grad(tv, xt, grad_outputs=torch.ones_like(tv))
        _close(value, tv.detach().numpy())
        _close(g, tg.numpy())


@needs_torch
def test_soft_margin_large_margins_never_overflow():
    """log1p(exp(100)) is inf in torch's float32 kernel; here it is 100 in either dtype."""
    x = np.array([-100.0, 100.0, -1e4, 30.0], np.float32)
    y = np.array([1.0, 1.0, 1.0, -1.0], np.float32)
    value, g = fl.value_and_grad(fl.soft_margin_loss)(x, y, reduction="none")
    np.testing.assert_allclose(value, [100.0, 0.0, 1e4, 30.0], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(g, [-1.0, 0.0, -1.0, 1.0], rtol=1e-6, atol=1e-30)
    xt = _t(x.astype(np.float64), True)  # float64 torch is exact here
    tv = torch.nn.functional.soft_margin_loss(xt, _t(y), reduction="none")
    (tg,) = torch.autograd.grad(tv, xt, grad_outputs=torch.ones_like(tv))
    _close(value[:2], tv.detach().numpy()[:2], 1e-6)
    _close(g[[0, 1, 3]], tg.numpy()[[0, 1, 3]], 1e-6)


@needs_torch
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.0), (0.75, 3.5)])
def test_sigmoid_focal_large_logits_are_finite_and_as_torch(alpha, gamma):
    x = np.array([-60.0, -30.0, -5.0, 0.0, 5.0, 30.0, 60.0, -800.0, 800.0])
    for target in (0.0, 1.0, 0.3):
        t = np.full_like(x, target)
        value, g = fl.value_and_grad(fl.sigmoid_focal_loss)(x, t, alpha=alpha, gamma=gamma)
        assert np.isfinite(value).all() and np.isfinite(g).all()
        ref, (rg,) = pw.REFERENCE["sigmoid_focal_loss"](x, t, alpha=alpha, gamma=gamma)
        _close(value, ref, 1e-9, 1e-300)
        _close(g, rg, 1e-9, 1e-300)
        keep = np.abs(x) <= 5  # beyond, torch's 1 - p_t loses digits to cancellation (fastloss does not)
        xt = _t(x[keep], True)
        tv = pw.TORCH["sigmoid_focal_loss"](torch, xt, _t(t[keep]), alpha=alpha, gamma=gamma)
        (tg,) = torch.autograd.grad(tv, xt, grad_outputs=torch.ones_like(tv))
        _close(value[keep], tv.detach().numpy(), 1e-9, 1e-300)
        _close(g[keep], tg.numpy(), 1e-9, 1e-300)


FOCAL_GAMMAS = [0.0, 1.0, 2.0, 3.0, 0.5, 1.5, 2.5, 4.0]  # the kernels' pairs for 0-3, any other by log and exp


@needs_torch
@pytest.mark.parametrize("gamma", FOCAL_GAMMAS)
def test_sigmoid_focal_each_gamma_path_as_torch_over_many_blocks(gamma):
    """Every power the kernels specialise (gamma 0, 1, 2, 3) and the general one, on inputs of several
    blocks, hard and soft targets, per element: float64 as torch, float32 within 2e-5 of float64."""
    rng = np.random.default_rng(11)
    n = 3 * pw.BLOCK + 7
    x = rng.standard_normal(n) * 4.0
    t = np.where(rng.uniform(size=n) < 0.5, (rng.uniform(size=n) < 0.3).astype(np.float64), rng.uniform(size=n))
    go = rng.uniform(0.5, 1.5, n)
    value, g = fl.value_and_grad(fl.sigmoid_focal_loss)(x, t, alpha=0.25, gamma=gamma, grad_output=go)
    xt = _t(x, True)
    tv = pw.TORCH["sigmoid_focal_loss"](torch, xt, _t(t), alpha=0.25, gamma=gamma)
    (tg,) = torch.autograd.grad(tv, xt, grad_outputs=_t(go))
    _close(value, tv.detach().numpy(), 1e-9, 1e-300)
    _close(g, tg.numpy(), 1e-9, 1e-300)
    v32, g32 = fl.value_and_grad(fl.sigmoid_focal_loss)(x.astype(np.float32), t.astype(np.float32), alpha=0.25,
                                                        gamma=gamma, grad_output=go.astype(np.float32))
    ref, (rg,) = pw.REFERENCE["sigmoid_focal_loss"](x.astype(np.float32), t.astype(np.float32), alpha=0.25,
                                                    gamma=gamma, grad_output=go.astype(np.float32))
    np.testing.assert_allclose(v32, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(g32, rg, rtol=2e-5, atol=2e-5 * np.abs(rg).max())
    for reduction in ("mean", "sum"):
        v32 = fl.sigmoid_focal_loss(x.astype(np.float32), t.astype(np.float32), gamma=gamma, reduction=reduction)
        ref, _ = pw.REFERENCE["sigmoid_focal_loss"](x.astype(np.float32), t.astype(np.float32), gamma=gamma,
                                                   reduction=reduction)
        np.testing.assert_allclose(float(v32), ref, rtol=2e-5)


@needs_torch
@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_focal_integer_gamma_of_targets_outside_0_1_as_torch(gamma, dtype):
    """1 - p_t < 0 (a target above 1): torch.pow of a negative base to an integer power is real, and so
    is the focal loss, by the multiplication the kernels use for these gammas."""
    x = np.array([-3.0, -0.5, 0.0, 0.7, 2.0, 4.0] * 300, dtype)
    t = np.full_like(x, 1.5)
    value, g = fl.value_and_grad(fl.sigmoid_focal_loss)(x, t, gamma=gamma)
    xt = _t(x, True)
    tv = pw.TORCH["sigmoid_focal_loss"](torch, xt, _t(t), gamma=gamma)
    (tg,) = torch.autograd.grad(tv, xt, grad_outputs=torch.ones_like(tv))
    tol = 2e-5 if dtype == np.float32 else 1e-9
    assert np.isfinite(value).all() and np.isfinite(g).all()
    _close(value, tv.detach().numpy(), tol, tol * np.abs(tv.detach().numpy()).max())
    _close(g, tg.numpy(), tol, tol * np.abs(tg.numpy()).max())


@needs_torch
def test_multilabel_soft_margin_nd_input_and_broadcast_weight_as_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5))
    t = (rng.uniform(size=x.shape) < 0.5).astype(np.float64)
    w = rng.uniform(0.5, 2.0, (3, 1))
    for reduction in ("none", "mean", "sum"):
        value, g = fl.value_and_grad(fl.multilabel_soft_margin_loss)(x, t, weight=w, reduction=reduction)
        xt = _t(x, True)
        tv = torch.nn.functional.multilabel_soft_margin_loss(xt, _t(t), weight=_t(w), reduction=reduction)
        (tg,) = torch.autograd.grad(tv, xt, grad_outputs=torch.ones_like(tv))
        _close(value, tv.detach().numpy())
        _close(g, tg.numpy())


def test_multilabel_soft_margin_0d_input_is_a_value_error():
    with pytest.raises(ValueError, match="0-d"):
        fl.multilabel_soft_margin_loss(np.array(1.0), np.array(1.0))


# ------------------------------------------------------------------------------ every new loss
def _args(name, shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    if name == "poisson_nll_loss":
        return (x, rng.poisson(2.0, shape).astype(dtype)), {}
    if name == "gaussian_nll_loss":
        return (x, rng.standard_normal(shape).astype(dtype), rng.uniform(0.2, 2.0, shape).astype(dtype)), {}
    if name == "soft_margin_loss":
        return (x, rng.choice([-1.0, 1.0], shape).astype(dtype)), {}
    return (x, (rng.uniform(size=shape) < 0.3).astype(dtype)), {}


@needs_torch
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_inputs_as_torch(name, shape, reduction):
    spec = fl._registry.REGISTRY[name]
    args, kwargs = _args(name, shape, np.float64, np.random.default_rng(0))
    value, grads = fl.value_and_grad(spec.fn)(*args, reduction=reduction, **kwargs)
    tv = spec.torch_fn()(torch, *[_t(a) for a in args], reduction=reduction)
    _close(value, tv.numpy())
    for gr, a in zip(grads if isinstance(grads, tuple) else (grads,), args):
        assert gr.shape == a.shape


@pytest.mark.parametrize("name", NEW)
def test_float32_within_2e5_of_the_float64_reference_over_many_chunks(name):
    n = 3 * pw.MIN_CHUNK + 2 * pw.BLOCK + 5
    shape = (n // 50, 50) if name == "multilabel_soft_margin_loss" else (n,)
    args, kwargs = _args(name, shape, np.float32, np.random.default_rng(5))
    spec = fl._registry.REGISTRY[name]
    value, grads = fl.value_and_grad(spec.fn)(*args, reduction="sum", **kwargs)
    ref, ref_grads = spec.reference(*[a.astype(np.float64) for a in args], reduction="sum", **kwargs)
    np.testing.assert_allclose(float(value), ref, rtol=2e-5)
    for gr, rg in zip(grads if isinstance(grads, tuple) else (grads,), ref_grads):
        np.testing.assert_allclose(gr, rg, rtol=2e-5, atol=2e-5 * np.abs(rg).max())
