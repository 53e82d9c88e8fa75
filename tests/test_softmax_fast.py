"""The small-call fast paths of cross_entropy and nll_loss (fastloss.families.softmax.fast): the
plain call they serve gives the general path's bits; every other call falls through to it."""
from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss.families.softmax import FAST, fast

LOSSES = {"cross_entropy": fl.cross_entropy, "nll_loss": fl.nll_loss}


def _general(name, *args, **kwargs):
    """``(value, (grad,))`` of the general path alone: the loss's own function behind the registry
    (``functools.wraps`` keeps it as ``__wrapped__``), which the fast path stands in front of."""
    from fastloss._registry import GradRequest

    raw = LOSSES[name].__wrapped__
    return raw(*args, **kwargs), raw(*args, _grad=GradRequest(), **kwargs)


def _plain_case(dtype, n=37, c=11, seed=0):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, c))).astype(dtype)
    t = rng.integers(0, c, n)
    t[::5] = -100
    x[5, 2] = np.nan  # a NaN on an ignored row: it must not reach the loss
    return x, t


@pytest.mark.parametrize("reduction", [None, "mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_plain_calls_take_the_fast_path_and_give_the_general_paths_bits(name, dtype, reduction):
    x, t = _plain_case(dtype)
    if name == "nll_loss":
        x = np.log(np.abs(x) + 0.5).astype(dtype)  # (the NaN stays)
    kw = {} if reduction is None else {"reduction": reduction}
    args = (x, t)
    assert FAST[name](args, kw, None) is not None  # served by the fast path
    fast_value = LOSSES[name](*args, **kw)
    fast_vg = fl.value_and_grad(LOSSES[name])(*args, **kw)
    want_value, (want_v, (want_g,)) = _general(name, *args, **kw)
    for got, want in ((fast_value, want_value), (fast_vg[0], want_v)):
        assert type(got) is type(want) and got.shape == () and got.dtype == dtype and np.isfinite(got)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fast_vg[1], want_g)
    assert fast_vg[1].dtype == dtype and fast_vg[1].shape == x.shape


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_other_calls_fall_through(name):
    x, t = _plain_case(np.float32)
    f = FAST[name]
    others = [
        ((x, t.astype(np.int32)), {}),                      # target dtype other than intp
        ((x.astype(np.float16), t), {}),                    # float16: the half-precision route
        ((np.asfortranarray(x), t), {}),                    # not C-contiguous
        ((x[:, ::2], t), {}),
        ((x, t), {"reduction": "none"}),
        ((x, t), {"ignore_index": 3}),
        ((x, t, np.ones(11, np.float32)), {}),              # a class weight
        ((x.tolist(), t), {}),                              # not arrays
        ((x[0], t[0]), {}),                                 # 1-D input
        ((x, t[:-1]), {}),                                  # shapes that do not fit: the general error
        ((x[:0], t[:0]), {}),
    ]
    for args, kwargs in others:
        assert f(args, kwargs, None) is None, (args[0].__class__, kwargs)
    from fastloss._registry import GradRequest

    assert f((x, t), {}, GradRequest(grad_output=np.float32(2.0))) is None
    assert f((x, t), {}, GradRequest(out=np.empty_like(x))) is None
    big = np.zeros((fast.MIN_CHUNK // 4 + 1, 4), np.float32)
    assert f((big, np.zeros(big.shape[0], np.intp)), {}, GradRequest()) is None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_bad_class_index_gets_the_general_error(name):
    x, t = _plain_case(np.float64)
    t[7] = 11
    assert FAST[name]((x, t), {}, None) is None
    with pytest.raises(IndexError, match="11"):
        LOSSES[name](x, t)
    with pytest.raises(IndexError, match="11"):
        fl.value_and_grad(LOSSES[name])(x, t)


def test_nll_value_fast_path_takes_any_number_of_classes():
    """The value of nll_loss reads one element per row: the fast path serves wide rows too."""
    rng = np.random.default_rng(3)
    x = np.log(rng.uniform(0.1, 1, (9, fast.MIN_CHUNK // 4))).astype(np.float32)
    t = rng.integers(0, x.shape[1], 9)
    assert FAST["nll_loss"]((x, t), {}, None) is not None
    want = -np.mean(x[np.arange(9), t].astype(np.float64))
    np.testing.assert_allclose(fl.nll_loss(x, t), want, rtol=1e-6)
