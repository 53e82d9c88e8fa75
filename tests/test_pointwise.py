"""The pointwise family beyond the registry-wide tests: kinks, extremes, NaN/inf, broadcasting, log_loss
against scikit-learn, properties, float32 accuracy, large inputs (many blocks and chunks), in-place.

Ground truth is PyTorch 2.13 (float64 tensors and autograd), scikit-learn's log_loss, the family's float64
NumPy references and finite differences.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl
from fastloss.families import pointwise as pw

from _helpers import needs_torch, torch

F = torch.nn.functional if torch is not None else None
NAN, INF = float("nan"), float("inf")


def torch_value_and_grad(fn, x, *args, grad_output=None, **kwargs):
    """Value and autograd gradient of ``fn(x, *args, **kwargs)`` in float64 torch."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    targs = [torch.tensor(np.asarray(a, np.float64)) if isinstance(a, np.ndarray) else a for a in args]
    tkw = {k: torch.tensor(np.asarray(v, np.float64)) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    value = fn(xt, *targs, **tkw)
    go = torch.ones_like(value) if grad_output is None else torch.tensor(np.asarray(grad_output, np.float64))
    (g,) = torch.autograd.grad(value, xt, grad_outputs=go)
    return value.detach().numpy(), g.numpy()


def assert_same(actual, expected, rtol=1e-12, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


# ------------------------------------------------------------------------------ one-point functions
def test_point_functions_are_plain_python_that_cuda_can_compile():
    """The POINT_FUNCTIONS are undecorated functions whose globals are only math, the elementary
    functions, the constants and each other (what compile_point_functions re-binds for CUDA)."""
    names = {f.__name__ for f in pw.POINT_FUNCTIONS}
    allowed = names | {"math", "exp", "log", "log1p", "abs"} | set(pw.POINT_CONSTANTS)
    for fn in pw.POINT_FUNCTIONS:
        assert type(fn).__name__ == "function", fn
        assert fn.__closure__ is None, fn
        assert set(fn.__code__.co_names) <= allowed | {"min", "max"}, (fn.__name__, fn.__code__.co_names)
        assert getattr(pw, fn.__name__) is fn
        assert getattr(pw.P, fn.__name__) is not fn  # the CPU-compiled twin


@pytest.mark.parametrize("fn", pw.POINT_FUNCTIONS, ids=lambda f: f.__name__)
def test_point_functions_agree_with_their_cpu_compilation(fn):
    """Evaluated as plain Python and as compiled Numba, each one-point function gives the same numbers."""
    nargs = fn.__code__.co_argcount
    points = [-1e4, -2.5, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 3.0, NAN]
    second = [0.0, 0.3, 1.0, 2.0]
    compiled = getattr(pw.P, fn.__name__)
    for i, a in enumerate(points):
        args = (a, second[i % len(second)], 1.5, 0.25, 0.6, 0.8)[:nargs]
        if fn.__name__.startswith(("bce_point", "bce_point_grad")):
            args = (min(max(abs(a) / 4, 0.0), 1.0) if a == a else a,) + args[1:]
        assert_same(compiled(*args), fn(*args), rtol=1e-14)


# ---------------------------------------------------------------------------------- kinks vs torch
KINK_X = np.array([-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0])


@needs_torch
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_smooth_l1_at_its_kinks_matches_torch(beta):
    x, t = KINK_X.copy(), np.zeros_like(KINK_X)  # r = x hits 0 and +-beta exactly
    v, g = fl.value_and_grad(fl.smooth_l1_loss)(x, t, reduction="sum", beta=beta)
    tv, tg = torch_value_and_grad(F.smooth_l1_loss, x, t, reduction="sum", beta=beta)
    assert_same(v, tv)
    assert_same(g, tg)


@needs_torch
@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_at_its_kinks_matches_torch(delta):
    x, t = KINK_X + 1.0, np.ones_like(KINK_X)
    w = np.linspace(0.5, 2.0, x.size)
    for kwargs in ({}, {"weight": w}):
        for reduction in ("none", "mean", "sum"):
            go = np.linspace(-1, 2, x.size) if reduction == "none" else None
            v, g = fl.value_and_grad(fl.huber_loss)(x, t, reduction=reduction, delta=delta, grad_output=go, **kwargs)
            tv, tg = torch_value_and_grad(F.huber_loss, x, t, reduction=reduction, delta=delta, grad_output=go,
                                          **kwargs)
            assert_same(v, tv)
            assert_same(g, tg)


@needs_torch
def test_l1_mse_and_mape_at_zero_residual_match_torch():
    x = np.array([0.0, 1.0, -2.0, 3.0])
    t = np.array([0.0, 1.0, 1.0, 0.0])  # r == 0 twice; target 0 hits MAPE's eps floor
    w = np.array([1.0, 2.0, 0.5, 1.5])
    for fn, tfn in ((fl.l1_loss, F.l1_loss), (fl.mse_loss, F.mse_loss)):
        for kwargs in ({}, {"weight": w}):
            v, g = fl.value_and_grad(fn)(x, t, **kwargs)
            tv, tg = torch_value_and_grad(tfn, x, t, **kwargs)
            assert_same(v, tv)
            assert_same(g, tg)
    v, g = fl.value_and_grad(fl.mape_loss)(x, t, reduction="sum")
    tv, tg = torch_value_and_grad(lambda a, b, reduction: pw.torch_mape_loss(torch, a, b, reduction), x, t,
                                  reduction="sum")
    assert_same(v, tv)
    assert_same(g, tg)


def test_penalties_at_zero_and_their_values():
    w = np.array([[0.0, -1.5], [2.0, 0.0]])
    v, g = fl.value_and_grad(fl.l1_penalty)(w, lam=0.5)
    assert float(v) == 0.5 * 3.5
    np.testing.assert_array_equal(g, 0.5 * np.array([[0.0, -1.0], [1.0, 0.0]]))
    v, g = fl.value_and_grad(fl.l2_penalty)(w, lam=0.5, grad_output=2.0)
    assert float(v) == 0.25 * (1.5**2 + 4.0)
    np.testing.assert_array_equal(g, 2.0 * 0.5 * w)


def test_rmse_gradient_at_zero_error_is_zero():
    x = np.arange(5.0)
    v, g = fl.value_and_grad(fl.rmse_loss)(x, x.copy())
    assert float(v) == 0.0
    np.testing.assert_array_equal(g, np.zeros(5))


# ------------------------------------------------------------------------- NaN and inf vs torch
SPECIAL_X = np.array([NAN, INF, -INF, 0.0, 1.0, -3.0, 5.0, 0.5])
SPECIAL_T = np.array([0.0, 0.0, 0.0, NAN, INF, -INF, 1.0, 0.5])


@needs_torch
@pytest.mark.parametrize("name,kwargs", [
    ("l1_loss", {}), ("mse_loss", {}), ("smooth_l1_loss", {"beta": 0.5}), ("smooth_l1_loss", {"beta": 0.0}),
    ("huber_loss", {"delta": 1.5}),
])
def test_nan_and_inf_propagate_as_in_torch(name, kwargs):
    x, t = SPECIAL_X, SPECIAL_T
    v, g = fl.value_and_grad(getattr(fl, name))(x, t, reduction="none", **kwargs)
    tv, tg = torch_value_and_grad(getattr(F, name), x, t, reduction="none", **kwargs)
    assert_same(v, tv)
    assert_same(g, tg)


@needs_torch
def test_bce_with_logits_special_values_match_torch():
    x = np.array([NAN, INF, -INF, INF, -INF, 0.0, 1e4, -1e4])
    t = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.0])
    for kwargs in ({}, {"pos_weight": np.full(8, 2.5)}):
        v, g = fl.value_and_grad(fl.binary_cross_entropy_with_logits)(x, t, reduction="none", **kwargs)
        tv, tg = torch_value_and_grad(F.binary_cross_entropy_with_logits, x, t, reduction="none", **kwargs)
        assert_same(v, tv)
        assert_same(g, tg)


# ---------------------------------------------------------------------------------------------- BCE
@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_at_zero_and_one_exactly_matches_torch(dtype):
    """log(0) is clamped at -100 and the gradient's denominator at 1e-12, as torch."""
    x = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1e-30, 1 - 1e-7], dtype=dtype)
    t = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0, 0.0], dtype=dtype)
    w = np.linspace(0.5, 2.0, 8).astype(dtype)
    v, g = fl.value_and_grad(fl.binary_cross_entropy)(x, t, weight=w, reduction="none")
    tv, tg = torch_value_and_grad(F.binary_cross_entropy, x, t, weight=w, reduction="none")
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert_same(v, tv, rtol=rtol)
    assert_same(g, tg, rtol=rtol)
    assert float(fl.binary_cross_entropy(x[:2], t[:2], reduction="sum")) == 100.0


@pytest.mark.parametrize("bad", [-0.01, 1.01, INF, -INF])
def test_bce_refuses_input_and_target_outside_the_unit_interval(bad):
    x = np.array([0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        fl.binary_cross_entropy(np.array([0.2, bad, 0.9]), x)
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        fl.binary_cross_entropy(x, np.array([0.2, bad, 0.9]))


def test_bce_nan_input_propagates():
    v = fl.binary_cross_entropy(np.array([0.2, NAN]), np.array([1.0, 0.0]), reduction="none")
    assert np.isnan(v[1]) and np.isfinite(v[0])


def test_unit_interval_count_ignores_nan():
    a = np.array([[0.0, 1.0, NAN], [-1e-300, 1.0000001, 0.5]], dtype=np.float64)
    assert pw.values_outside_unit_interval(a) == 2
    assert pw.values_outside_unit_interval(np.asfortranarray(a)) == 2
    assert pw.values_outside_unit_interval(np.linspace(0, 1, 200_001)) == 0


@needs_torch
@pytest.mark.parametrize("x_shape,w_shape,pw_shape", [
    ((6, 5), (6, 5), (5,)), ((6, 5), (5,), (1,)), ((6, 5), (6, 1), (5,)), ((6, 5), (), None),
    ((2, 3, 4), (1, 3, 1), (4,)), ((2, 3, 4), (2, 1, 4), (3, 1)), ((2, 3, 4), (3, 4), (2, 3, 4)),
])
def test_bce_with_logits_broadcasts_weight_and_pos_weight_as_torch(x_shape, w_shape, pw_shape):
    rng = np.random.default_rng(1)
    x = 4 * rng.standard_normal(x_shape)
    t = (rng.uniform(size=x_shape) < 0.4).astype(np.float64)
    kwargs = {"weight": rng.uniform(0.1, 2, w_shape)}
    if pw_shape is not None:
        kwargs["pos_weight"] = rng.uniform(0.5, 3, pw_shape)
    for reduction in ("none", "mean", "sum"):
        go = rng.uniform(0.5, 1.5, x_shape) if reduction == "none" else 0.7
        v, g = fl.value_and_grad(fl.binary_cross_entropy_with_logits)(x, t, reduction=reduction, grad_output=go,
                                                                        **kwargs)
        tv, tg = torch_value_and_grad(F.binary_cross_entropy_with_logits, x, t, reduction=reduction,
                                      grad_output=go, **kwargs)
        assert_same(v, tv, rtol=1e-11)
        assert_same(g, tg, rtol=1e-11)


@needs_torch
def test_bce_with_logits_huge_logits_are_finite_and_exact():
    x = np.array([1e4, -1e4, 1e4, -1e4, 40.0, -40.0], dtype=np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    v, g = fl.value_and_grad(fl.binary_cross_entropy_with_logits)(x, t, reduction="none")
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
    tv, tg = torch_value_and_grad(F.binary_cross_entropy_with_logits, x, t, reduction="none")
    assert_same(v, tv, rtol=1e-6)
    assert_same(g, tg, rtol=1e-6, atol=1e-30)


# ------------------------------------------------------------------------------------------ kl_div
@needs_torch
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batchmean"])
def test_kl_div_zero_and_negative_targets_match_torch(log_target, reduction):
    x = np.array([[-1.0, -0.5, -INF, -2.0], [0.0, -3.0, -1.0, NAN]])
    t = np.array([[0.0, 0.3, 0.0, -0.2], [0.5, 0.0, NAN, 0.2]])  # zeros, a negative, NaN
    if log_target:
        t = np.array([[-1.0, -0.5, -INF, -2.0], [0.0, -30.0, NAN, 1.0]])
    go = np.linspace(0.5, 1.5, 8).reshape(2, 4) if reduction == "none" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's warning about 'mean'
        tv, tg = torch_value_and_grad(F.kl_div, x, t, reduction=reduction, log_target=log_target, grad_output=go)
    v, g = fl.value_and_grad(fl.kl_div)(x, t, reduction=reduction, log_target=log_target, grad_output=go)
    assert_same(v, tv)
    assert_same(g, tg)


def test_kl_div_batchmean_divides_by_the_first_axis():
    rng = np.random.default_rng(2)
    x, t = np.log(rng.dirichlet(np.ones(4), 3)), rng.dirichlet(np.ones(4), 3)
    assert float(fl.kl_div(x, t, reduction="batchmean")) == pytest.approx(float(fl.kl_div(x, t, reduction="sum")) / 3)
    x0, t0 = np.array(-0.3), np.array(0.5)  # 0-d: torch divides by nothing
    assert float(fl.kl_div(x0, t0, reduction="batchmean")) == float(fl.kl_div(x0, t0, reduction="sum"))
    assert math.isnan(float(fl.kl_div(np.zeros((0, 3)), np.zeros((0, 3)), reduction="batchmean")))
    assert float(fl.kl_div(np.zeros((3, 0)), np.zeros((3, 0)), reduction="batchmean")) == 0.0


# ---------------------------------------------------------------------------------- empty and errors
@pytest.mark.parametrize("name", ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "mape_loss",
                                  "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"])
def test_empty_inputs_reduce_as_torch(name):
    fn = getattr(fl, name)
    x = np.zeros((0, 3), np.float32)
    assert math.isnan(float(fn(x, x, reduction="mean")))
    assert float(fn(x, x, reduction="sum")) == 0.0
    v, g = fl.value_and_grad(fn)(x, x, reduction="none")
    assert v.shape == g.shape == (0, 3) and v.dtype == g.dtype == np.float32
    assert math.isnan(float(fl.rmse_loss(x, x)))


def test_weighted_mean_with_zero_weights_is_nan_as_torch():
    x, t, w = np.array([1.0, 2.0]), np.zeros(2), np.zeros(2)
    v, g = fl.value_and_grad(fl.l1_loss)(x, t, weight=w)
    assert math.isnan(float(v)) and np.all(np.isnan(g))


def test_invalid_options():
    x = np.ones(3)
    with pytest.raises(ValueError, match="delta"):
        fl.huber_loss(x, x, delta=0.0)
    with pytest.raises(ValueError, match="beta"):
        fl.smooth_l1_loss(x, x, beta=-1.0)
    with pytest.raises(ValueError, match="'batchmean'"):
        fl.kl_div(x, x, reduction="average")
    with pytest.raises(ValueError, match="pos_weight"):
        fl.binary_cross_entropy_with_logits(np.ones((2, 3)), np.ones((2, 3)), pos_weight=np.ones(2))


# ----------------------------------------------------------------------------- log_loss vs sklearn
sklearn_metrics = pytest.importorskip("sklearn.metrics")

LOG_LOSS_CASES = [
    ([0, 1, 2, 1], [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]], {}),
    (["spam", "ham", "ham", "spam"], [[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]], {}),
    ([0, 1, 1, 0, 1], [0.1, 0.9, 0.6, 0.4, 1.0], {}),  # 1-d y_pred, one probability exactly 1
    ([3, 5, 5, 3], [[0.0], [1.0], [0.7], [0.2]], {}),  # (n, 1) y_pred: the positive class, with 0 and 1
    ([2, 2, 1], [[0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]], {"labels": [1, 2, 3]}),
    ([1, 1, 1], [0.8, 0.6, 0.9], {"labels": [0, 1]}),
    ([0, 1, 2, 1], [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]],
     {"sample_weight": [1.0, 2.0, 0.5, 3.0]}),
    ([0, 1, 2, 1], [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]],
     {"sample_weight": [1.0, 2.0, 0.5, 3.0], "normalize": False}),
    (["b", "a", "c"], [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]], {"normalize": False}),
    ([0, 1, 1], [[0.5, 0.6], [0.3, 0.6], [0.1, 0.9]], {}),  # rows not summing to 1: warn, no renormalising
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("y_true,y_pred,kwargs", LOG_LOSS_CASES)
def test_log_loss_matches_sklearn(y_true, y_pred, kwargs, dtype):
    p = np.array(y_pred, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = sklearn_metrics.log_loss(y_true, p, **kwargs)
        value = fl.log_loss(y_true, p, **kwargs)
        v2, g = fl.value_and_grad(fl.log_loss)(y_true, p, **kwargs)
    assert value.dtype == dtype and g.dtype == dtype and g.shape == p.shape
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    assert float(value) == pytest.approx(expected, rel=rtol)
    assert float(v2) == float(value)


@pytest.mark.parametrize("y_true,y_pred,kwargs", LOG_LOSS_CASES)
def test_log_loss_gradient_matches_finite_differences(y_true, y_pred, kwargs):
    p = np.array(y_pred, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, g = fl.value_and_grad(fl.log_loss)(y_true, p, grad_output=1.5, **kwargs)
        for idx in np.ndindex(p.shape):
            h = 1e-7
            lo, hi = p.copy(), p.copy()
            lo[idx] -= h
            hi[idx] += h
            if lo[idx] < 0 or hi[idx] > 1:  # at the clip: torch.clamp's convention, checked below
                continue
            fd = 1.5 * (sklearn_metrics.log_loss(y_true, hi, **kwargs) - sklearn_metrics.log_loss(y_true, lo, **kwargs))
            fd /= 2 * h
            assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-6), idx
    clipped = (p < eps) | (p > 1 - eps)
    if p.ndim == 2 and p.shape[1] > 1:
        assert np.all(g[clipped] == 0)


def test_log_loss_errors_as_sklearn():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    with pytest.raises(ValueError, match="only one label"):
        fl.log_loss([1, 1], p)
    with pytest.raises(ValueError, match="not belonging"):
        fl.log_loss([0, 2], p, labels=[0, 1])
    with pytest.raises(ValueError, match="greater than 1"):
        fl.log_loss([0, 1], np.array([[0.2, 1.2], [0.6, 0.4]]))
    with pytest.raises(ValueError, match="lower than 0"):
        fl.log_loss([0, 1], np.array([[0.2, -0.2], [0.6, 0.4]]))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        fl.log_loss([0, 1, 0], p)
    with pytest.raises(ValueError, match="different number of classes"):
        fl.log_loss([0, 1], np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]))
    with pytest.raises(ValueError, match="NaN"):
        fl.log_loss([0, 1], np.array([[0.2, NAN], [0.6, 0.4]]))
    with pytest.warns(UserWarning, match="ordered lexicographically"):
        fl.log_loss([0, 1], p, labels=[1, 0])
    with pytest.warns(UserWarning, match="do not sum to one"):
        fl.log_loss([0, 1], np.array([[0.2, 0.3], [0.6, 0.4]]))


# ------------------------------------------------------------------------------------- properties
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite),
       st.floats(0.05, 5.0))
def test_reductions_are_consistent(x, beta):
    """'sum' is the sum of 'none', 'mean' its average; the gradients scale the same way; huber with
    delta is delta * smooth_l1 with beta = delta."""
    t = np.roll(x, 1)
    for name, kw in (("l1_loss", {}), ("mse_loss", {}), ("smooth_l1_loss", {"beta": beta}),
                     ("huber_loss", {"delta": beta})):
        fn = getattr(fl, name)
        none, g_none = fl.value_and_grad(fn)(x, t, reduction="none", **kw)
        total, g_sum = fl.value_and_grad(fn)(x, t, reduction="sum", **kw)
        mean, g_mean = fl.value_and_grad(fn)(x, t, reduction="mean", **kw)
        assert float(total) == pytest.approx(math.fsum(none.ravel()), rel=1e-12, abs=1e-300)
        assert float(mean) == pytest.approx(float(total) / x.size, rel=1e-12, abs=1e-300)
        np.testing.assert_allclose(g_sum, g_none, rtol=1e-15)
        np.testing.assert_allclose(g_mean, g_none / x.size, rtol=1e-14)
    h = fl.huber_loss(x, t, reduction="none", delta=beta)
    s = fl.smooth_l1_loss(x, t, reduction="none", beta=beta)
    np.testing.assert_allclose(h, beta * s, rtol=1e-12, atol=1e-300)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=8),
                  elements=st.floats(-30, 30, allow_nan=False)),
       st.floats(0.1, 10.0))
def test_bce_with_logits_equals_bce_of_the_sigmoid(x, pos_weight):
    """Away from saturation, BCE-with-logits is BCE of sigmoid(x); pos_weight = 1 changes nothing."""
    rng = np.random.default_rng(x.size)
    t = rng.uniform(size=x.shape)
    xs = np.clip(x, -15, 15)
    logits = fl.binary_cross_entropy_with_logits(xs, t, reduction="none")
    probs = fl.binary_cross_entropy(1 / (1 + np.exp(-xs)), t, reduction="none")
    np.testing.assert_allclose(logits, probs, rtol=1e-6, atol=1e-9)
    ones = fl.binary_cross_entropy_with_logits(x, t, pos_weight=np.ones(x.shape[-1]), reduction="none")
    np.testing.assert_array_equal(ones, fl.binary_cross_entropy_with_logits(x, t, reduction="none"))
    _, g = fl.value_and_grad(fl.binary_cross_entropy_with_logits)(x, t, pos_weight=np.full(x.shape[-1], pos_weight),
                                                                    reduction="sum")
    assert np.all(np.abs(g) <= max(1.0, pos_weight) + 1e-12)


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=finite), st.floats(1e-3, 10.0))
def test_penalties_are_lam_times_l1_and_half_squared_norm(w, lam):
    zero = np.zeros_like(w)
    assert float(fl.l1_penalty(w, lam=lam)) == pytest.approx(lam * float(fl.l1_loss(w, zero, reduction="sum")),
                                                             rel=1e-14, abs=1e-300)
    assert float(fl.l2_penalty(w, lam=lam)) == pytest.approx(lam / 2 * float(fl.mse_loss(w, zero, reduction="sum")),
                                                             rel=1e-14, abs=1e-300)


# ----------------------------------------------- large inputs: many blocks, chunks and threads
N_LARGE = 3 * pw.MIN_CHUNK + 3 * pw.BLOCK + 17  # several chunks; the last block of each is partial


@pytest.fixture(scope="module")
def large():
    rng = np.random.default_rng(3)
    return {
        "x": rng.standard_normal(N_LARGE), "t": rng.standard_normal(N_LARGE),
        "p": rng.uniform(0.01, 0.99, N_LARGE), "y": (rng.uniform(size=N_LARGE) < 0.5).astype(np.float64),
        "w": rng.uniform(0.1, 2.0, N_LARGE), "go": rng.uniform(0.5, 1.5, N_LARGE),
    }


LARGE_CASES = [
    ("l1_loss", ("x", "t"), {"weight": "w"}), ("mse_loss", ("x", "t"), {"weight": "w"}),
    ("smooth_l1_loss", ("x", "t"), {"beta": 0.7}), ("huber_loss", ("x", "t"), {"delta": 0.7, "weight": "w"}),
    ("mape_loss", ("x", "t"), {}), ("binary_cross_entropy", ("p", "y"), {"weight": "w"}),
    ("binary_cross_entropy_with_logits", ("x", "y"), {"weight": "w"}), ("kl_div", ("x", "p"), {}),
    ("kl_div", ("x", "t"), {"log_target": True}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,arg_keys,kw", LARGE_CASES, ids=lambda v: str(v))
def test_large_inputs_match_the_reference(large, name, arg_keys, kw, dtype):
    """float32 results, accumulated in float64, are within a few float32 ulps of the float64 truth."""
    args = [large[k].astype(dtype) for k in arg_keys]
    kwargs = {k: large[v].astype(dtype) if isinstance(v, str) else v for k, v in kw.items()}
    ref = pw.REFERENCE[name]
    for reduction in ("mean", "none"):
        go = large["go"] if reduction == "none" else 0.8
        v, g = fl.value_and_grad(getattr(fl, name))(*args, reduction=reduction, grad_output=go, **kwargs)
        ref_kwargs = {k: (v_.astype(np.float64) if isinstance(v_, np.ndarray) else v_) for k, v_ in kwargs.items()}
        rv, (rg,) = ref(*[a.astype(np.float64) for a in args], reduction=reduction, grad_output=go, **ref_kwargs)
        rtol = 1.5e-7 if dtype == np.float32 else 1e-13
        if name == "binary_cross_entropy_with_logits" and dtype == np.float32:
            # float32 arithmetic per element (its own test below); sigmoid(x) - 1 cancels for large x
            np.testing.assert_allclose(v, rv, rtol=2e-5)
            np.testing.assert_allclose(g, rg, rtol=2e-5, atol=1e-6 * np.max(np.abs(rg)))
        else:
            # atol: a loss that cancels to ~0 (kl_div's t log t - t x) keeps only an absolute accuracy
            np.testing.assert_allclose(v, rv, rtol=rtol, atol=rtol * 1e-3 * np.max(np.abs(rv)))
            np.testing.assert_allclose(g, rg, rtol=rtol, atol=rtol * 1e-3 * np.max(np.abs(rg)))


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0])
@pytest.mark.parametrize("pos_weight", [False, True])
def test_bce_with_logits_float32_arithmetic_keeps_the_accuracy_targets(scale, pos_weight):
    """float32 BCE with logits runs in float32 (expf / log1pf): each element within 2e-5 of the float64
    result, also where torch's form cancels (x << 0 with t small); gradients within 1e-6 of the largest;
    the reduced value accumulates in float64."""
    rng = np.random.default_rng(int(scale) + pos_weight)
    n = 3 * pw.BLOCK + 77
    x = (scale * rng.standard_normal(n)).astype(np.float32)
    t = np.concatenate([rng.uniform(0, 1e-3, n // 2), rng.uniform(0, 1, n - n // 2)]).astype(np.float32)
    kw = {"pos_weight": rng.uniform(0.5, 2.0, n).astype(np.float32)} if pos_weight else {}
    kw64 = {k: a.astype(np.float64) for k, a in kw.items()}
    loss = fl.binary_cross_entropy_with_logits
    for reduction in ("none", "sum"):
        v, g = fl.value_and_grad(loss)(x, t, reduction=reduction, **kw)
        rv, rg = fl.value_and_grad(loss)(x.astype(np.float64), t.astype(np.float64), reduction=reduction, **kw64)
        assert np.asarray(v).dtype == g.dtype == np.float32
        np.testing.assert_allclose(v, rv, rtol=2e-5)
        np.testing.assert_allclose(g, rg, rtol=2e-5, atol=1e-6 * np.max(np.abs(rg)))
    # the float32 path really is a float32 kernel (not the float64 one on widened data)
    v = np.asarray(loss(x, t, reduction="none", **kw))
    assert not np.array_equal(v, np.asarray(rv_none := loss(x.astype(np.float64), t.astype(np.float64),
                                                             reduction="none", **kw64)).astype(np.float32))
    del rv_none


def test_bce_with_logits_float32_special_values_as_torch():
    torch = pytest.importorskip("torch")
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 1e30, -1e30, np.inf, -np.inf, 200.0, -200.0] * 5, np.float32)
    t = np.array([0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, 0.0, 0.3, 0.7] * 5, np.float32)
    v, g = fl.value_and_grad(fl.binary_cross_entropy_with_logits)(x, t, reduction="none")
    tx = torch.tensor(x, requires_grad=True)
    tv = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.tensor(t), reduction="none")
    tv.sum().backward()
    np.testing.assert_allclose(v, tv.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("w_shape", [(7, 1, 1), (1, 1, 3), (7, 3000, 1), (1, 3000, 3), (7, 1, 3), (3,)])
def test_broadcast_operands_of_every_layout(w_shape):
    """Weights whose varying axes are contiguous are read in place (runs, tiled short periods, long
    periods wrapping around a block); others are materialised."""
    rng = np.random.default_rng(4)
    shape = (7, 3000, 3)
    x, t = 3 * rng.standard_normal(shape), (rng.uniform(size=shape) < 0.5).astype(np.float64)
    w = rng.uniform(0.1, 2, w_shape)
    v, g = fl.value_and_grad(fl.binary_cross_entropy_with_logits)(x, t, weight=w, reduction="none")
    rv, (rg,) = pw.ref_binary_cross_entropy_with_logits(x, t, weight=w, reduction="none", grad_output=None)
    np.testing.assert_allclose(v, rv, rtol=1e-13)
    np.testing.assert_allclose(g, rg, rtol=1e-13)


def test_results_do_not_depend_on_the_thread_count(large):
    x, t = large["x"].astype(np.float32), large["t"].astype(np.float32)
    before = fl.get_num_threads()
    try:
        results = []
        for n in (1, before):
            fl.set_num_threads(n)
            results.append(fl.value_and_grad(fl.smooth_l1_loss)(x, t))
            again = fl.value_and_grad(fl.smooth_l1_loss)(x, t)
            assert float(again[0]) == float(results[-1][0])  # deterministic for a given thread count
    finally:
        fl.set_num_threads(before)
    assert float(results[0][0]) == float(results[1][0])  # the chunks do not depend on the threads
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("name,arg_keys", [("mse_loss", ("x", "t")), ("binary_cross_entropy_with_logits", ("x", "y")),
                                           ("rmse_loss", ("x", "t")), ("l2_penalty", ("x",))])
def test_gradient_written_over_the_input(large, name, arg_keys):
    """out=input: the input becomes its own gradient, with the same numbers as a fresh buffer."""
    args = [large[k].astype(np.float32) for k in arg_keys]
    v0, g0 = fl.value_and_grad(getattr(fl, name))(*args)
    x = args[0].copy()
    v1, g1 = fl.value_and_grad(getattr(fl, name))(x, *args[1:], out=x)
    assert g1 is x
    assert float(v1) == float(v0)
    np.testing.assert_array_equal(g1, g0)


def test_noncontiguous_and_readonly_inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 60))[::2, ::3]
    t = np.asfortranarray(rng.standard_normal((20, 20)))
    t.flags.writeable = False
    v, g = fl.value_and_grad(fl.huber_loss)(x, t, reduction="none", grad_output=np.arange(20.0)[:, None])
    rv, (rg,) = pw.ref_huber_loss(x, t, reduction="none", grad_output=np.arange(20.0)[:, None])
    np.testing.assert_allclose(v, rv, rtol=1e-14)
    np.testing.assert_allclose(g, rg, rtol=1e-14)


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_path_agrees_with_the_general_one(name, dtype, monkeypatch):
    """Full target, no weight / grad_output, reduced: the direct kernel (one loop per block) gives what
    the general chunk routine gives, is really taken, and does not depend on the thread count."""
    rng = np.random.default_rng(9)
    n = 3 * pw.MIN_CHUNK + 2 * pw.BLOCK + 5  # several chunks, a partial last block
    x, t = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    vg = fl.value_and_grad(getattr(fl, name))
    v, g = vg(x, t, reduction="sum")
    ref_v, (ref_g,) = pw.REFERENCE[name](x.astype(np.float64), t.astype(np.float64), reduction="sum",
                                        grad_output=None)
    rtol = 1.5e-7 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(v, ref_v, rtol=rtol)
    np.testing.assert_allclose(g, ref_g, rtol=rtol)
    called = []
    for chunk, direct in list(pw._DIRECT.items()):
        monkeypatch.setitem(pw._DIRECT, chunk, lambda *a, _d=direct: called.append(1) or _d(*a))
    v_mean, g_mean = vg(x, t)
    assert called
    before = fl.get_num_threads()
    try:
        fl.set_num_threads(1)
        v1, g1 = vg(x, t)
    finally:
        fl.set_num_threads(before)
    assert v1 == v_mean and np.array_equal(g1, g_mean)
    value_only = getattr(fl, name)(x, t)
    assert value_only == v_mean
