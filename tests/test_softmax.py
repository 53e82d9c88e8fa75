"""The softmax family (log_softmax, softmax, nll_loss, cross_entropy) beyond the registry-wide tests.

Ground truth is PyTorch 2.13 in float64 (value and autograd gradient) and float64 NumPy; covered here:
in-place gradients (``out=input``), NaN and inf rows, ignored and empty batches, every shape kind and
kernel path (rows, long rows, channel tiles), the label smoothing x weight x ignore_index x probability
target grid, float32 accuracy on large logits, and algebraic properties (hypothesis).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl
from fastloss.families import softmax as family

from _helpers import assert_close, needs_torch, torch

F = None if torch is None else torch.nn.functional
INF, NAN = np.inf, np.nan
vg_ce = fl.value_and_grad(fl.cross_entropy)
vg_nll = fl.value_and_grad(fl.nll_loss)


def _torch_value_and_grad(fn, x, *args, grad_output=None, **kwargs):
    """float64 PyTorch value and d(value)/dx; tensors from NumPy, integer targets as int64."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    targs = [torch.tensor(a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float64))
             if isinstance(a, np.ndarray) else a for a in args]
    tkw = {k: torch.tensor(np.asarray(v, dtype=np.float64)) if isinstance(v, np.ndarray) else v
           for k, v in kwargs.items()}
    value = fn(xt, *targs, **tkw)
    g = torch.ones_like(value) if grad_output is None else torch.as_tensor(np.asarray(grad_output, np.float64))
    (grad,) = torch.autograd.grad(value, xt, grad_outputs=g, allow_unused=True)
    return value.detach().numpy(), (np.zeros(np.shape(x)) if grad is None else grad.numpy())


def _check_against_torch(fl_fn, torch_fn, x, *args, dtype=np.float64, grad_output=None, **kwargs):
    value, grad = fl.value_and_grad(fl_fn)(x.astype(dtype), *args, grad_output=grad_output, **kwargs)
    t_value, t_grad = _torch_value_and_grad(torch_fn, x, *args, grad_output=grad_output, **kwargs)
    assert np.asarray(value).dtype == dtype and grad.dtype == dtype
    assert_close(value, t_value, dtype, "value vs torch")
    assert_close(grad, t_grad, dtype, "grad vs torch")
    alone = fl_fn(x.astype(dtype), *args, **kwargs)  # the value-only kernels agree with the fused ones
    np.testing.assert_allclose(alone, value, rtol=8 * np.finfo(dtype).eps, atol=0, equal_nan=True)


def _logits(rng, shape, scale=3.0):
    return scale * rng.standard_normal(shape)


# ---------------------------------------------------------------------------------------- shapes
SHAPES = [(7,), (5, 4), (3, 37), (2, 2500), (4, 5, 3), (2, 40, 1000), (2, 3, 4, 5), (3, 6, 1)]


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_every_shape_kind(shape, dtype):
    """(C,), (N, C) short and long rows (2500 > one float32 block), (N, C, d...) with one and several
    channel tiles per batch, and a trailing axis of 1; index and probability targets."""
    rng = np.random.default_rng(1)
    x = _logits(rng, shape)
    n_cls = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = rng.integers(0, n_cls, size=tshape)
    g = rng.uniform(0.5, 1.5, size=tshape)
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, reduction="none", grad_output=g)
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, label_smoothing=0.05)
    q = np.exp(family._ref_log_softmax_along(rng.standard_normal(shape), 0 if len(shape) == 1 else 1))
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, q, dtype=dtype, reduction="sum")


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmaxes_along_every_axis(shape, dtype):
    rng = np.random.default_rng(2)
    x = _logits(rng, shape)
    for axis in range(-len(shape), len(shape)):
        g = rng.standard_normal(shape)
        for fl_fn, t_fn in ((fl.log_softmax, F.log_softmax), (fl.softmax, F.softmax)):
            value, grad = fl.value_and_grad(fl_fn)(x.astype(dtype), axis=axis, grad_output=g)
            t_value, t_grad = _torch_value_and_grad(lambda a: t_fn(a, dim=axis), x, grad_output=g)
            assert_close(value, t_value, dtype, f"{fl_fn.__name__} axis {axis}")
            assert_close(grad, t_grad, dtype, f"{fl_fn.__name__} grad axis {axis}")


@needs_torch
@pytest.mark.parametrize("shape", [(5,), (6, 4), (3, 4, 5), (2, 3, 2, 2)], ids=str)
def test_nll_loss_every_shape_kind(shape):
    rng = np.random.default_rng(3)
    n_cls = shape[0] if len(shape) == 1 else shape[1]
    x = family._ref_log_softmax_along(rng.standard_normal(shape), 0 if len(shape) == 1 else 1)
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = rng.integers(0, n_cls, size=tshape)
    w = rng.uniform(0.1, 2.0, n_cls)
    for reduction in ("none", "mean", "sum"):
        _check_against_torch(fl.nll_loss, F.nll_loss, x, t, weight=w, reduction=reduction)


@pytest.mark.parametrize("tdtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64])
def test_any_integer_target_dtype(tdtype):
    rng = np.random.default_rng(4)
    x = _logits(rng, (6, 5))
    t = rng.integers(0, 5, 6)
    want = vg_ce(x, t, reduction="none")
    got = vg_ce(x, t.astype(tdtype), reduction="none")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ------------------------------------------------------------- smoothing x weight x ignore x probs
@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["index", "index-ignore", "index-3d-ignore", "prob", "prob-3d"])
def test_option_grid_matches_torch(kind, weighted, smoothing, reduction, dtype):
    rng = np.random.default_rng(5)
    three_d = "3d" in kind
    shape = (4, 6, 5) if three_d else (9, 6)
    x = _logits(rng, shape)
    kwargs = dict(reduction=reduction, label_smoothing=smoothing)
    if weighted:
        kwargs["weight"] = rng.uniform(0.0, 2.0, 6)
    if kind.startswith("prob"):
        t = np.exp(family._ref_log_softmax_along(rng.standard_normal(shape), 1))
        lshape = (shape[0],) + shape[2:]
    else:
        lshape = (shape[0],) + shape[2:]
        t = rng.integers(0, 6, size=lshape)
        if "ignore" in kind:
            kwargs["ignore_index"] = 3  # a real class index: its targets are ignored
    g = rng.uniform(0.5, 1.5, size=lshape) if reduction == "none" else 0.7
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, grad_output=g, **kwargs)


# ------------------------------------------------------------------------------------- in place
def _inplace_cases(rng):
    w = rng.uniform(0.2, 2.0, 6)
    for shape in [(5, 6), (3, 6, 7), (6,)]:
        lshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = rng.integers(0, 6, size=lshape)
        q = np.exp(family._ref_log_softmax_along(rng.standard_normal(shape), 0 if len(shape) == 1 else 1))
        yield shape, (t,), {}
        yield shape, (t,), dict(weight=w, label_smoothing=0.2, ignore_index=int(np.ravel(t)[0]), reduction="sum")
        yield shape, (q,), dict(weight=w, label_smoothing=0.1, reduction="none")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_in_place(dtype):
    """out=input: the gradient overwrites the logits, exactly as the gradient into a new buffer."""
    rng = np.random.default_rng(6)
    for shape, args, kwargs in _inplace_cases(rng):
        x = _logits(rng, shape).astype(dtype)
        want_value, want_grad = vg_ce(x, *args, **kwargs)
        xi = x.copy()
        value, grad = vg_ce(xi, *args, out=xi, **kwargs)
        assert grad is xi
        np.testing.assert_array_equal(value, want_value)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7 * np.abs(want_grad).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_softmaxes_and_nll(dtype):
    rng = np.random.default_rng(7)
    for fn, args in [(fl.log_softmax, (1,)), (fl.softmax, (0,)), (fl.softmax, (-1,)),
                     (fl.nll_loss, (rng.integers(0, 5, (4, 3)),))]:
        x = _logits(rng, (4, 5, 3)).astype(dtype)
        g = rng.standard_normal(np.shape(fn(x, *args))) if fn is not fl.nll_loss else None
        want_value, want_grad = fl.value_and_grad(fn)(x, *args, grad_output=g)
        xi = x.copy()
        value, grad = fl.value_and_grad(fn)(xi, *args, grad_output=g, out=xi)
        assert grad is xi
        np.testing.assert_array_equal(value, want_value)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7 * np.abs(want_grad).max())


def test_out_overlapping_the_input_is_not_read_after_it_is_written():
    """A gradient buffer that shares memory with the logits without being them (a reversed-row view
    of one array holding both): the logits are copied first, the result is the ordinary gradient."""
    rng = np.random.default_rng(8)
    x = _logits(rng, (6, 5))
    t = rng.integers(0, 5, 6)
    want_value, want_grad = vg_ce(x, t)
    both = np.empty((7, 5))
    both[:6] = x
    value, grad = vg_ce(both[:6], t, out=both[1:])
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------- NaN and inf
NAN_INF_ROWS = [
    [1.0, NAN, 3.0, 0.5],       # NaN anywhere: the row's loss and gradient are NaN
    [1.0, INF, 3.0, 0.5],       # +inf: NaN
    [1.0, -INF, 3.0, 0.5],      # -inf away from the target: finite
    [-INF, -INF, -INF, -INF],   # every logit -inf: NaN
    [2.0, -INF, -1.0, -INF],    # -inf at the target: loss inf, gradient finite
    [0.5, 1.0, -0.5, 2.0],
]
NAN_INF_TARGETS = [0, 2, 0, 1, 1, 3]


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [
    dict(reduction="none"),
    dict(reduction="none", label_smoothing=0.2),
    dict(reduction="none", label_smoothing=0.2, weight=np.array([1.0, 0.0, 2.0, 0.5])),  # 0 * -inf
    dict(reduction="sum", weight=np.array([1.0, 0.0, 2.0, 0.5])),
    dict(reduction="none", ignore_index=2),  # an ignored NaN row: loss 0, gradient NaN (PyTorch's)
    dict(reduction="mean", ignore_index=1),
], ids=lambda o: "-".join(f"{k}={v if not isinstance(v, np.ndarray) else 'w'}" for k, v in o.items()))
def test_nan_and_inf_logits_as_torch(options, dtype):
    x = np.array(NAN_INF_ROWS)
    t = np.array(NAN_INF_TARGETS)
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, **options)
    # the same rows as channels of a (N, C, 1, 2) input: the channel kernels
    x4 = np.stack([x, x[::-1]], axis=-1)[:, :, None, :]
    t4 = np.stack([t, t[::-1]], axis=-1)[:, None, :]
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x4, t4, dtype=dtype, **options)


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_calls_nan_inf_and_zeros_anywhere_in_a_row(dtype):
    """The small-call kernels take a row's max as a vectorised ``llvm.maximum`` reduction (not the
    order keys of the row kernels): a NaN of either sign, +inf or a signed zero at any position of a
    row longer than a vector (its body and its remainder) gives PyTorch's results, and so does a
    logit of 1000 there (exp overflows unless the max found it)."""
    rng = np.random.default_rng(5)
    n_cls = 37
    x = rng.standard_normal((5 * n_cls, n_cls))
    for c in range(n_cls):
        x[c, c] = np.nan
        x[n_cls + c, c] = np.copysign(np.nan, -1.0)
        x[2 * n_cls + c, c] = np.inf
        x[3 * n_cls + c, :] = -1.0
        x[3 * n_cls + c, c] = 0.0 if c % 2 else -0.0
        x[4 * n_cls + c, c] = 1000.0
    t = rng.integers(0, n_cls, x.shape[0])
    assert x.size < family.MIN_CHUNK  # the small-call path
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, reduction="none")
    _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, reduction="none",
                         label_smoothing=0.1)


@needs_torch
@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 1500), (3, 1500), (150, 10), (1030, 1), (7, 300)], ids=str)
def test_small_index_kernel_blocks_of_rows(shape, dtype):
    """The small index kernel's blocks of whole rows (one row alone when it is longer than a block, a
    short last block) against torch for every option, and its in-place, new-buffer and value-only
    calls giving the same bits."""
    n, c = shape
    assert n * c < family.MIN_CHUNK
    rng = np.random.default_rng(n * 7 + c)
    x = _logits(rng, shape)
    t = rng.integers(0, c, n)
    t[1::4] = -100
    w = rng.uniform(0.2, 2.0, c)
    for kw in ({}, dict(reduction="sum"), dict(reduction="none"), dict(weight=w, label_smoothing=0.2),
               dict(weight=w, reduction="none", ignore_index=c - 1)):
        if "ignore_index" in kw:
            t = np.where(t == -100, c - 1, t)
        _check_against_torch(fl.cross_entropy, F.cross_entropy, x, t, dtype=dtype, **kw)
        xd = x.astype(dtype)
        value, grad = vg_ce(xd, t, **kw)
        xi = xd.copy()
        value_i, grad_i = vg_ce(xi, t, out=xi, **kw)
        assert grad_i is xi
        np.testing.assert_array_equal(value_i, value)
        np.testing.assert_array_equal(grad_i, grad)
        np.testing.assert_array_equal(fl.cross_entropy(xd, t, **kw), value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_index_kernel_many_large_row_sums(dtype):
    """Rows whose sums of exponentials multiply past 1e250 (the small kernel takes the log of their
    product, not of each): the same loss as one log per row ('none', summed in float64)."""
    n, c = 130, 500  # 500**130 ~ 1e351
    rng = np.random.default_rng(3)
    x = (0.01 * rng.standard_normal((n, c))).astype(dtype)
    t = rng.integers(0, c, n)
    per_row = fl.cross_entropy(x, t, reduction="none").astype(np.float64)
    total = float(fl.cross_entropy(x, t, reduction="sum"))
    assert np.isfinite(total) and total > 100 * np.log(400)
    np.testing.assert_allclose(total, math.fsum(per_row), rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(float(fl.cross_entropy(x, t)), total / n, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_with_probability_targets_as_torch(dtype):
    """-inf logits meet zero probabilities: 0 * -inf is NaN in the loss, the gradient stays finite."""
    x = np.array(NAN_INF_ROWS)
    q = np.array([[0.5, 0.0, 0.5, 0.0], [0.25] * 4, [0.5, 0.0, 0.5, 0.0], [0.25] * 4, [1.0, 0, 0, 0],
                  [0.1, 0.2, 0.3, 0.4]])
    for options in (dict(reduction="none"), dict(reduction="none", label_smoothing=0.1),
                    dict(reduction="mean", weight=np.array([1.0, 0.0, 2.0, 0.5]))):
        _check_against_torch(fl.cross_entropy, F.cross_entropy, x, q, dtype=dtype, **options)
        x3 = np.moveaxis(np.stack([x, x]), 0, -1)  # (N, C, 2)
        q3 = np.moveaxis(np.stack([q, q]), 0, -1)
        _check_against_torch(fl.cross_entropy, F.cross_entropy, x3, q3, dtype=dtype, **options)


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_in_softmaxes_and_nll_as_torch(dtype):
    x = np.array(NAN_INF_ROWS)
    g = np.random.default_rng(9).standard_normal(x.shape)
    for axis in (0, 1):
        for fl_fn, t_fn in ((fl.log_softmax, F.log_softmax), (fl.softmax, F.softmax)):
            value, grad = fl.value_and_grad(fl_fn)(x.astype(dtype), axis=axis, grad_output=g)
            t_value, t_grad = _torch_value_and_grad(lambda a: t_fn(a, dim=axis), x, grad_output=g)
            assert_close(value, t_value, dtype, "value")
            assert_close(grad, t_grad, dtype, "grad")
    t = np.array(NAN_INF_TARGETS)
    for options in (dict(reduction="none"), dict(weight=np.array([1.0, 0.0, 2.0, 0.5])), dict(ignore_index=1)):
        _check_against_torch(fl.nll_loss, F.nll_loss, x, t, dtype=dtype, **options)


# ------------------------------------------------------------------------ ignored and empty batches
@needs_torch
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("options", [{}, dict(label_smoothing=0.1), dict(weight=np.array([1.0, 2.0, 3.0]))],
                         ids=["plain", "smooth", "weight"])
def test_every_target_ignored(fn, shape, options):
    """'mean' of no target is NaN (0 / 0) with a zero gradient; 'sum' is 0; 'none' all zeros."""
    if fn == "nll_loss" and "label_smoothing" in options:
        pytest.skip("nll_loss has no label smoothing")
    x = _logits(np.random.default_rng(10), shape)
    t = np.full((shape[0],) + shape[2:], -100)
    for reduction in ("mean", "sum", "none"):
        _check_against_torch(getattr(fl, fn), getattr(F, fn), x, t, reduction=reduction, **options)
    value, grad = fl.value_and_grad(getattr(fl, fn))(x, t, **options)
    assert np.isnan(value) and not grad.any()


@needs_torch
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3), (2, 4, 0), (3, 0)], ids=str)
def test_empty_batch(fn, shape):
    """No positions, or no classes (then every target must be ignore_index)."""
    x = np.zeros(shape)
    t = np.full((shape[0],) + shape[2:], 0 if shape[1] else -100, dtype=np.int64)
    for reduction in ("mean", "sum", "none"):
        value, grad = fl.value_and_grad(getattr(fl, fn))(x, t, reduction=reduction)
        t_value = getattr(F, fn)(torch.tensor(x), torch.tensor(t), reduction=reduction).numpy()
        np.testing.assert_array_equal(np.asarray(value), t_value)
        assert grad.shape == shape and np.asarray(value).dtype == np.float64
    if fn == "cross_entropy":  # probability targets, as torch: 'mean' over no position is NaN
        value = fl.cross_entropy(x, np.zeros(shape))
        assert np.isnan(value) == bool(torch.isnan(F.cross_entropy(torch.tensor(x), torch.tensor(np.zeros(shape)))))


def test_empty_softmax():
    for shape, axis in [((0, 3), 1), ((3, 0), 1), ((2, 0, 4), 0)]:
        value, grad = fl.value_and_grad(fl.log_softmax)(np.zeros(shape, np.float32), axis=axis)
        assert value.shape == grad.shape == shape and value.dtype == np.float32


# -------------------------------------------------------------------------------- float32 accuracy
def test_float32_loss_within_one_rounding_of_float64():
    """N(0, 10) logits with a 32000-class vocabulary: the float32 loss is within one float32 rounding
    of the float64 loss (float64 accumulation). Each gradient element is within a few float32
    roundings of the float64 one plus what rounding ``x - max`` to float32 costs its exponential (a
    relative error of order ``|x - max|`` float32 ulps of 1, as in PyTorch); the largest error is below
    2e-7 of the largest gradient (PyTorch 2.13 float32: 6e-7)."""
    rng = np.random.default_rng(11)
    x32 = (10.0 * rng.standard_normal((256, 32000))).astype(np.float32)
    x64 = x32.astype(np.float64)  # the same logits in both precisions
    t = rng.integers(0, 32000, 256)
    shift = np.abs(x64 - x64.max(axis=1, keepdims=True))
    for reduction in ("mean", "sum"):
        v32, g32 = vg_ce(x32, t, reduction=reduction)
        v64, g64 = vg_ce(x64, t, reduction=reduction)
        ref, (ref_grad,) = family._ref_cross_entropy(x64, t, reduction=reduction)
        np.testing.assert_allclose(float(v64), ref, rtol=1e-13)
        np.testing.assert_allclose(g64, ref_grad, rtol=1e-12, atol=1e-300)
        assert abs(float(v32) - float(v64)) <= np.spacing(np.float32(abs(float(v64)))), reduction
        err = np.abs(g32 - g64)
        assert err.max() <= 2e-7 * np.abs(g64).max()
        # (float32 subnormals, below 1.2e-38, have an absolute spacing of 1.4e-45)
        assert np.all(err <= 2.0 ** -24 * (4 + 3 * shift) * np.abs(g64) + 1e-44)
    rows = fl.cross_entropy(x32, t, reduction="none").astype(np.float64)
    rows64 = fl.cross_entropy(x64, t, reduction="none")
    assert np.all(np.abs(rows - rows64) <= np.spacing(np.abs(rows64).astype(np.float32)))


# ----------------------------------------------------------------------------------- properties
def _rows(min_cls=1, max_cls=40):
    return st.tuples(st.integers(1, 6), st.integers(min_cls, max_cls)).flatmap(
        lambda s: hnp.arrays(np.float64, s, elements=st.floats(-30, 30, allow_nan=False)))


@given(_rows(), st.sampled_from([np.float32, np.float64]))
def test_softmax_rows_sum_to_one_and_log_softmax_is_not_positive(x, dtype):
    x = x.astype(dtype)
    p = fl.softmax(x, axis=1)
    logp = fl.log_softmax(x, axis=1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, rtol=tol)
    assert np.all(p >= 0) and np.all(logp <= 0)
    np.testing.assert_allclose(np.exp(logp.astype(np.float64)), p, rtol=10 * tol, atol=tol)


@given(_rows(min_cls=2), st.integers(0, 2 ** 31), st.floats(-1e3, 1e3), st.sampled_from([0.0, 0.3]))
def test_cross_entropy_is_nonnegative_and_shift_invariant(x, seed, shift, smoothing):
    """CE >= 0, and adding a constant to a row changes neither its loss nor its gradient."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, x.shape[1], x.shape[0])
    shifts = rng.uniform(-abs(shift), abs(shift), (x.shape[0], 1))
    v, g = vg_ce(x, t, reduction="none", label_smoothing=smoothing)
    vs, gs = vg_ce(x + shifts, t, reduction="none", label_smoothing=smoothing)
    assert np.all(v >= 0)
    np.testing.assert_allclose(vs, v, rtol=1e-9, atol=1e-9 * (1 + np.abs(shifts).max()))
    np.testing.assert_allclose(gs, g, rtol=1e-6, atol=1e-9 * (1 + np.abs(shifts).max()))
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-12 * x.shape[1])


@given(_rows(), st.integers(0, 2 ** 31))
def test_cross_entropy_is_nll_of_log_softmax_and_one_hot_probabilities(x, seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, x.shape[1], x.shape[0])
    w = rng.uniform(0.1, 2.0, x.shape[1])
    ce = fl.cross_entropy(x, t, weight=w, reduction="none")
    np.testing.assert_allclose(fl.nll_loss(fl.log_softmax(x, axis=1), t, weight=w, reduction="none"), ce,
                               rtol=1e-12, atol=1e-12)
    one_hot = np.eye(x.shape[1])[t]
    np.testing.assert_allclose(fl.cross_entropy(x, one_hot, reduction="none"),
                               fl.cross_entropy(x, t, reduction="none"), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Exact zeros, the class-index check inside the drivers, threads
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_one_class_probability_target_is_minus_zero(dtype, reduction):
    """-(q * log_softmax) of one class is -(q * 0) = -0.0 exactly, as PyTorch (not a rounding residue)."""
    for v in (0.3, -2.1, 12.345, 1e30):
        value, grad = vg_ce(np.array([[v], [v / 3]], dtype), np.array([[0.7], [1.0]], dtype), reduction=reduction)
        assert np.all(value == 0) and np.all(np.signbit(value)), value
        assert np.all(grad == 0)
    for axis in (0, 1):
        y = fl.log_softmax(np.array([[3.3, -1e30, 7.0]], dtype), axis=axis)
        if axis == 0:
            assert np.array_equal(y, np.zeros_like(y))


@pytest.mark.parametrize("shape", [(6, 5), (6, 40), (3, 5, 4), (70_000, 3)])
def test_bad_class_index_raises_before_writing_out(shape):
    """The range check runs in the drivers' pass over the targets: IndexError naming the first bad
    value, and the caller's out= buffer untouched."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape)
    n_cls = shape[1]
    t = rng.integers(0, n_cls, (shape[0],) + shape[2:])
    flat = t.reshape(-1)
    flat[len(flat) // 2] = n_cls + 7
    flat[-1] = -3
    for vg in (vg_ce, vg_nll):
        out = np.full(shape, 42.0)
        with pytest.raises(IndexError, match=f"target {n_cls + 7} is out of bounds"):
            vg(x, t, out=out)
        assert np.all(out == 42.0)
    flat[len(flat) // 2] = -100  # ignore_index
    with pytest.raises(IndexError, match="target -3 is out of bounds"):
        fl.cross_entropy(x, t)
    flat[-1] = 0
    fl.cross_entropy(x, t)
    fl.nll_loss(x, t.astype(np.int32))


@pytest.mark.parametrize("shape", [(64, 10), (300, 700), (40_000, 8), (16, 5, 5000)])
def test_results_do_not_depend_on_the_thread_count(shape):
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    before = fl.get_num_threads()
    try:
        results = []
        for n in (1, before):
            fl.set_num_threads(n)
            v, g = vg_ce(x, t, label_smoothing=0.1)
            y, gy = fl.value_and_grad(fl.log_softmax)(x, axis=1)
            results.append((v, g, y, gy, fl.nll_loss(y, t)))
    finally:
        fl.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_calls_from_several_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    inputs = [(rng.standard_normal((n, c)).astype(np.float32), rng.integers(0, c, n))
              for n, c in [(64, 10), (20_000, 10), (500, 300)] * 4]
    want = [vg_ce(x, t) for x, t in inputs]
    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda a: vg_ce(*a), inputs))
    for (v1, g1), (v2, g2) in zip(want, got):
        np.testing.assert_array_equal(v1, v2)
        np.testing.assert_array_equal(g1, g2)
