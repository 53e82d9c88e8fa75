"""The small-call fast paths of cross_entropy and nll_loss (fastloss.families.softmax.fast, in C in
fastloss._cy.softmax_small): the plain call they serve gives the general path's bits; every other call
falls through to it."""
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
        ((x.astype(x.dtype.newbyteorder()), t), {}),        # byte-swapped: the general path converts
        ((x, t.astype(t.dtype.newbyteorder())), {}),
        ((_unaligned(x), t), {}),                           # unaligned: the kernel's types are aligned
        ((x, t), {"reduction": "mean", "weight": None}),    # any other keyword, even a default one
        ((x, t), {"reduction": "Mean"}),
        ((x, t, None), {}),
        ((x.view(np.matrix), t), {}),                       # an ndarray subclass
    ]
    for args, kwargs in others:
        assert f(args, kwargs, None) is None, (args[0].__class__, kwargs)
    from fastloss._registry import GradRequest

    assert f((x, t), {}, GradRequest(grad_output=np.float32(2.0))) is None
    assert f((x, t), {}, GradRequest(out=np.empty_like(x))) is None
    big = np.zeros((fast.MIN_CHUNK // 4 + 1, 4), np.float32)
    assert f((big, np.zeros(big.shape[0], np.intp)), {}, GradRequest()) is None


def _unaligned(x):
    """``x``'s values in a C-contiguous array whose data is not aligned to its dtype."""
    raw = np.empty(x.nbytes + 1, np.uint8)[1:]
    a = raw.view(x.dtype).reshape(x.shape)
    a[...] = x
    assert not a.flags.aligned
    return a


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_read_only_inputs_take_the_fast_path(name):
    x, t = _plain_case(np.float32)
    want = LOSSES[name](x, t)
    x.flags.writeable = t.flags.writeable = False
    assert FAST[name]((x, t), {}, None) is not None
    np.testing.assert_array_equal(LOSSES[name](x, t), want)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_dask_chunk_takes_the_general_path(name):
    """While the Dask backend runs a chunk, its value is the float64 partial sum: not the fast path's."""
    from fastloss._dispatch import float64_partials

    x, t = _plain_case(np.float32)
    float64_partials.on = True
    try:
        assert FAST[name]((x, t), {}, None) is None
        assert LOSSES[name](x, t).dtype == np.float64
    finally:
        float64_partials.on = False
    assert FAST[name]((x, t), {}, None).dtype == np.float32


@pytest.mark.parametrize("n, c", [(1, 1), (3, 1025), (2, 5000), (700, 3), (1, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_shapes_against_the_general_path(n, c, dtype):
    """Rows wider than the kernel's block of rows (the value's scratch then comes from the heap), one
    class, many short rows: the fast path gives the general path's bits, and torch's value."""
    rng = np.random.default_rng(n * c)
    x = (4 * rng.standard_normal((n, c))).astype(dtype)
    t = rng.integers(0, c, n)
    for kw in ({}, {"reduction": "sum"}):
        assert FAST["cross_entropy"]((x, t), kw, None) is not None
        want_value, (want_v, (want_g,)) = _general("cross_entropy", x, t, **kw)
        np.testing.assert_array_equal(fl.cross_entropy(x, t, **kw), want_value)
        v, g = fl.value_and_grad(fl.cross_entropy)(x, t, **kw)
        np.testing.assert_array_equal(v, want_v)
        np.testing.assert_array_equal(g, want_g)
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.cross_entropy(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(t))
    np.testing.assert_allclose(fl.cross_entropy(x, t), want.item(), rtol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unaligned_arrays_on_the_general_path(dtype):
    """The small kernel's entry takes aligned arrays: unaligned logits, targets, weights, gradient
    buffers (and logits taking their gradient in place) give an aligned call's bits."""
    x, t = _plain_case(dtype, n=23, c=7)
    x[5, 2] = 1.0
    w = np.linspace(0.5, 2, 7).astype(dtype)
    kw = {"weight": w, "label_smoothing": 0.1, "reduction": "sum"}
    vg = fl.value_and_grad(fl.cross_entropy)
    want_v, want_g = vg(x, t, **kw)
    ua = {"weight": _unaligned(w), "label_smoothing": 0.1, "reduction": "sum"}
    np.testing.assert_array_equal(fl.cross_entropy(_unaligned(x), _unaligned(t), **ua), want_v)
    v, g = vg(_unaligned(x), _unaligned(t), **ua)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(g, want_g)
    out = _unaligned(np.zeros_like(x))
    v, g = vg(x, t, out=out, **kw)
    assert g is out
    np.testing.assert_array_equal(out, want_g)
    xi = _unaligned(x)
    v, g = vg(xi, t, out=xi, **kw)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(xi, want_g)


def test_the_entry_refuses_arrays_that_do_not_fit():
    """The general path's door to the kernel checks what the kernel trusts (it writes past nothing)."""
    from fastloss._cy import softmax_small

    x = np.zeros((4, 3), np.float32)
    t = np.zeros(4, np.intp)
    w = np.ones(3, np.float32)
    none = np.empty(0)
    row = np.empty(12, np.float32)
    assert softmax_small.ce_index_small(x, t, w, -100, 0.0, 1.0, none, True, row[:0], False, False, none)[2] == -1
    with pytest.raises(ValueError):
        softmax_small.ce_index_small(x, t, w, -100, 0.0, 1.0, none, True, row[:5], True, False, none)
    with pytest.raises(ValueError):
        softmax_small.ce_index_small(x, t[:3], w, -100, 0.0, 1.0, none, True, row, True, False, none)
    with pytest.raises(ValueError):
        softmax_small.ce_index_small(x, t, w, -100, 0.0, 1.0, np.empty(2), True, row, True, False, none)
    with pytest.raises(TypeError):
        softmax_small.ce_index_small(x, t, w.astype(np.float64), -100, 0.0, 1.0, none, True, row, True, False, none)
    with pytest.raises(TypeError):
        softmax_small.ce_index_small(x, t, _unaligned(w), -100, 0.0, 1.0, none, True, row, True, False, none)


def test_fast_path_from_several_threads():
    """The entries compile once however many threads make the first call, and calls at once agree."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    cases = [(rng.standard_normal((40, 9)).astype(np.float64), rng.integers(0, 9, 40)) for _ in range(16)]
    want = [_general("cross_entropy", x, t)[1] for x, t in cases]
    vg = fl.value_and_grad(fl.cross_entropy)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: vg(*c), cases * 4))
    for (v, g), (wv, (wg,)) in zip(got, want * 4):
        np.testing.assert_array_equal(v, wv)
        np.testing.assert_array_equal(g, wg)


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
