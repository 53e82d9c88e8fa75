"""ctc_loss beyond the registry-wide tests: random problems against PyTorch 2.13 (values and autograd
gradients), infeasible targets, every form of the arguments, the contract §4 rows, memory layouts,
threads, and Dask arrays chunked along the batch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastloss as fl
from fastloss.families import ctc

from _helpers import assert_close, needs_torch, torch


def log_probs(rng, shape, dtype=np.float64, scale=2.0):
    x = scale * rng.standard_normal(shape)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(dtype)


def padded_targets(rng, tl, S, C, blank, repeats=False):
    labels = [c for c in range(C) if c != blank]
    t = np.full((len(tl), S), blank, dtype=np.int64)
    for n, length in enumerate(tl):
        if repeats:  # few distinct labels: many repeats, which need blanks between them
            t[n, :length] = rng.choice(labels[:2], size=length)
        else:
            t[n, :length] = rng.choice(labels, size=length)
    return t


def torch_ctc(x, targets, il, tl, grad_output=None, **kwargs):
    """torch's value and autograd gradient, in float64."""
    lp = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    tt = torch.tensor(np.asarray(targets, dtype=np.int64))
    value = torch.nn.functional.ctc_loss(lp, tt, torch.tensor(np.asarray(il, np.int64)),
                                         torch.tensor(np.asarray(tl, np.int64)), **kwargs)
    g = torch.ones_like(value) if grad_output is None else torch.tensor(np.asarray(grad_output, np.float64))
    (grad,) = torch.autograd.grad(value, lp, grad_outputs=g)
    return value.detach().numpy(), grad.numpy()


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    T = draw(st.integers(1, 14))
    N = draw(st.integers(1, 5))
    C = draw(st.integers(2, 7))
    S = draw(st.integers(0, 6))
    blank = draw(st.sampled_from([0, C - 1, C // 2]))
    tl = rng.integers(0, S + 1, N)
    il = rng.integers(0, T + 1, N)
    il[0] = T  # at least one full-length input, often feasible
    targets = padded_targets(rng, tl, S, C, blank, repeats=draw(st.booleans()))
    concatenated = draw(st.booleans())
    if concatenated:
        targets = np.concatenate([targets[n, :tl[n]] for n in range(N)]).astype(np.int64)
    kwargs = {"blank": blank, "reduction": draw(st.sampled_from(["none", "mean", "sum"])),
              "zero_infinity": draw(st.booleans())}
    return log_probs(rng, (T, N, C)), targets, il, tl, kwargs, rng


@needs_torch
@given(problems())
def test_random_problems_match_torch(problem):
    x, targets, il, tl, kwargs, rng = problem
    g = rng.uniform(0.5, 1.5, x.shape[1]) if kwargs["reduction"] == "none" else 0.7
    want_value, want_grad = torch_ctc(x, targets, il, tl, grad_output=g, **kwargs)
    for dtype in (np.float64, np.float32):
        value, grad = fl.value_and_grad(fl.ctc_loss)(x.astype(dtype), targets, il, tl, grad_output=g, **kwargs)
        assert np.asarray(value).dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
        assert_close(value, want_value, dtype, "value")
        assert_close(grad, want_grad, dtype, "gradient")
        # the value alone (the kernel's two-row path) is the same
        assert_close(fl.ctc_loss(x.astype(dtype), targets, il, tl, **kwargs), want_value, dtype, "value alone")


@given(problems())
def test_random_problems_match_the_reference(problem):
    x, targets, il, tl, kwargs, rng = problem
    g = rng.uniform(0.5, 1.5, x.shape[1]) if kwargs["reduction"] == "none" else 1.3
    value, grad = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl, grad_output=g, **kwargs)
    ref_value, (ref_grad,) = ctc.ctc_loss_ref(x, targets, il, tl, grad_output=g, **kwargs)
    assert_close(value, ref_value, np.float64, "value")
    assert_close(grad, ref_grad, np.float64, "gradient")


# ---------------------------------------------------------------------------------------- infeasible
def test_infeasible_targets_give_inf_and_nan_gradients_as_torch():
    rng = np.random.default_rng(1)
    x = log_probs(rng, (6, 3, 4))
    targets = np.array([[1, 1, 1, 1], [2, 3, 2, 3], [1, 2, 0, 0]])  # 1111 needs 7 frames
    il, tl = np.array([6, 4, 3]), np.array([4, 4, 2])
    value, grad = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl, reduction="none")
    assert value[0] == np.inf and np.isfinite(value[1:]).all()
    assert np.isnan(grad[:6, 0]).all() and np.isfinite(grad[:, 1:]).all()
    assert (grad[4:, 1] == 0).all() and (grad[3:, 2] == 0).all()  # frames past each input length
    if torch is not None:
        want_value, want_grad = torch_ctc(x, targets, il, tl, reduction="none")
        assert_close(value, want_value, np.float64, "value")
        assert_close(grad, want_grad, np.float64, "gradient")
    for reduction in ("mean", "sum"):
        assert fl.ctc_loss(x, targets, il, tl, reduction=reduction) == np.inf


def test_zero_infinity_zeroes_the_loss_and_its_gradient():
    rng = np.random.default_rng(2)
    x = log_probs(rng, (5, 2, 4))
    targets = np.array([[1, 1, 1], [1, 2, 3]])
    il, tl = np.array([5, 5]), np.array([3, 3])  # 111 needs 5 frames: feasible; then make it 4
    il[0] = 4
    value, grad = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl, reduction="none", zero_infinity=True)
    assert value[0] == 0.0 and value[1] > 0
    assert (grad[:, 0] == 0).all() and np.abs(grad[:, 1]).max() > 0
    mean, gmean = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl, zero_infinity=True)
    assert float(mean) == pytest.approx(value[1] / 3 / 2)
    np.testing.assert_allclose(gmean[:, 1], grad[:, 1] / 3 / 2)
    # an input of 0 frames: loss 0 for an empty target, inf (or 0) otherwise, no gradient either way
    v = fl.ctc_loss(x, targets, [0, 0], [0, 2], reduction="none")
    assert v[0] == 0 and v[1] == np.inf
    assert (fl.ctc_loss(x, targets, [0, 0], [0, 2], reduction="none", zero_infinity=True) == 0).all()


@needs_torch
def test_minus_infinity_and_nan_log_probs_propagate_as_torch():
    rng = np.random.default_rng(3)
    x = log_probs(rng, (6, 2, 4))
    x[2, 0, 3] = -np.inf  # a class no path needs
    x[1, 1, 1] = -np.inf  # a class the target needs
    x[4, 1, 2] = np.nan
    targets = np.array([[1, 2], [1, 2]])
    value, grad = fl.value_and_grad(fl.ctc_loss)(x, targets, [6, 6], [2, 2], reduction="none")
    want_value, want_grad = torch_ctc(x, targets, [6, 6], [2, 2], reduction="none")
    assert_close(value, want_value, np.float64, "value")
    assert_close(grad, want_grad, np.float64, "gradient")


# ------------------------------------------------------------------------------- argument forms
def test_argument_forms_agree():
    rng = np.random.default_rng(4)
    x = log_probs(rng, (9, 3, 5))
    padded = np.array([[1, 2, 3], [4, 4, 0], [2, 0, 0]])
    il, tl = [9, 7, 5], [3, 2, 1]
    want = fl.ctc_loss(x, padded, np.array(il), np.array(tl), reduction="none")
    concatenated = np.array([1, 2, 3, 4, 4, 2], dtype=np.int16)
    for targets in (padded, padded.astype(np.int32), padded.astype(np.uint8), concatenated):
        for lengths in ((il, tl), (tuple(il), tuple(tl)), (np.array(il, np.int32), np.array(tl, np.uint16))):
            np.testing.assert_array_equal(fl.ctc_loss(x, targets, *lengths, reduction="none"), want)
    # unbatched: the batched call on one sequence, squeezed; lengths as int, 0-d array, 1 element
    for n in range(3):
        row = padded[n, :tl[n]]
        for lengths in ((il[n], tl[n]), (np.array(il[n]), np.array(tl[n])), ([il[n]], [tl[n]]),
                        (np.array([il[n]]), np.array([tl[n]]))):
            value, grad = fl.value_and_grad(fl.ctc_loss)(x[:, n], row, *lengths, reduction="none")
            assert np.shape(value) == () and grad.shape == (9, 5)
            np.testing.assert_allclose(value, want[n], rtol=1e-14)
            _, gb = fl.value_and_grad(fl.ctc_loss)(x[:, n:n + 1], row[None], [il[n]], [tl[n]], reduction="none")
            np.testing.assert_allclose(grad, gb[:, 0], rtol=1e-14)
        # torch also takes (1, S) targets with unbatched log-probabilities
        np.testing.assert_allclose(fl.ctc_loss(x[:, n], padded[n:n + 1], il[n], tl[n], reduction="none"), want[n])


def test_empty_batch_and_empty_inputs():
    x = np.zeros((4, 0, 3))
    t = np.zeros((0, 2), dtype=np.int64)
    assert fl.ctc_loss(x, t, [], [], reduction="none").shape == (0,)
    assert float(fl.ctc_loss(x, t, np.zeros(0, int), np.zeros(0, int), reduction="sum")) == 0.0
    assert np.isnan(float(fl.ctc_loss(x, t, np.zeros(0, int), np.zeros(0, int))))
    _, g = fl.value_and_grad(fl.ctc_loss)(x, t, np.zeros(0, int), np.zeros(0, int))
    assert g.shape == (4, 0, 3)
    # no frames at all
    x = np.zeros((0, 2, 3))
    value, g = fl.value_and_grad(fl.ctc_loss)(x, np.array([[1], [2]]), [0, 0], [0, 1], reduction="none")
    np.testing.assert_array_equal(value, [0.0, np.inf])
    assert g.shape == (0, 2, 3)


# ------------------------------------------------------------------------------ contract §4 rows
@pytest.mark.parametrize("change,exc,match", [
    (dict(il=[6, 8]), ValueError, "at most T"),
    (dict(il=[6, -1]), ValueError, "non-negative"),
    (dict(tl=[2, -1]), ValueError, "non-negative"),
    (dict(tl=[2, 4]), ValueError, "at most S"),
    (dict(il=[6, 6, 6]), ValueError, r"shape \(2,\)"),
    (dict(tl=[[2, 2]]), ValueError, r"shape \(2,\)"),
    (dict(targets=np.array([1, 2, 3])), ValueError, "add up to"),
    (dict(targets=np.array([[1, 2, 3]])), ValueError, "targets must be"),
    (dict(targets=np.ones((2, 3, 1), int)), ValueError, "targets must be"),
    (dict(targets=np.array([[1, 5, 0], [1, 2, 0]])), IndexError, "5"),
    (dict(targets=np.array([[1, 2, 0], [-2, 2, 0]])), IndexError, "-2"),
    (dict(targets=np.array([[1, 0, 0], [1, 2, 0]])), IndexError, "blank"),
    (dict(blank=5), ValueError, "blank"),
    (dict(blank=-1), ValueError, "blank"),
    (dict(blank=1.0), TypeError, "blank"),
    (dict(targets=np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])), TypeError, "integer"),
    (dict(il=[6.0, 6.0]), TypeError, "integers"),
    (dict(il=np.array([True, True])), TypeError, "integers"),
    (dict(x=np.zeros((6, 2, 5), dtype=np.int64)), TypeError, "float"),
    (dict(x=np.zeros((6, 2, 5, 1))), ValueError, r"\(T, N, C\)"),
    (dict(reduction="batchmean"), ValueError, "'none'"),
])
def test_bad_input(change, exc, match):
    rng = np.random.default_rng(5)
    args = dict(x=log_probs(rng, (6, 2, 5)), targets=np.array([[1, 2, 0], [3, 3, 0]]), il=[6, 5], tl=[2, 2])
    kwargs = {k: change.pop(k) for k in ("blank", "reduction") if k in change}
    args.update(change)
    before = args["x"].copy()
    with pytest.raises(exc, match=match):
        fl.ctc_loss(args["x"], args["targets"], args["il"], args["tl"], **kwargs)
    np.testing.assert_array_equal(args["x"], before)


def test_padding_is_never_read():
    rng = np.random.default_rng(6)
    x = log_probs(rng, (7, 2, 4))
    a = np.array([[1, 2, 0, 0], [3, 0, 0, 0]])
    b = np.array([[1, 2, -7, 99], [3, 0, 12, -1]])
    np.testing.assert_array_equal(fl.ctc_loss(x, a, [7, 7], [2, 1], reduction="none"),
                                  fl.ctc_loss(x, b, [7, 7], [2, 1], reduction="none"))


def test_unbatched_lengths_must_be_one():
    x = log_probs(np.random.default_rng(7), (5, 4))
    with pytest.raises(ValueError, match="one length"):
        fl.ctc_loss(x, np.array([1, 2]), [5, 5], 2)
    with pytest.raises(ValueError, match="add up to"):
        fl.ctc_loss(x, np.array([1, 2, 3]), 5, 2)


# ------------------------------------------------------------------------ layouts, threads, in place
def test_batch_first_views_and_strided_log_probs():
    """The common call: a (N, T, C) network output transposed to (T, N, C), a view; and strided classes."""
    rng = np.random.default_rng(8)
    nt = log_probs(rng, (4, 11, 6))
    x = nt.transpose(1, 0, 2)
    assert not x.flags.c_contiguous
    targets = padded_targets(rng, [3, 2, 4, 1], 4, 6, 0)
    il, tl = [11, 9, 10, 11], [3, 2, 4, 1]
    v0, g0 = fl.value_and_grad(fl.ctc_loss)(np.ascontiguousarray(x), targets, il, tl, reduction="sum")
    v1, g1 = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl, reduction="sum")
    assert v0 == v1
    np.testing.assert_array_equal(g0, g1)
    wide = np.full((11, 4, 12), np.nan)
    wide[..., ::2] = x
    v2, g2 = fl.value_and_grad(fl.ctc_loss)(wide[..., ::2], targets, il, tl, reduction="sum")
    assert v2 == v0
    np.testing.assert_array_equal(g2, g0)
    # and strided targets and lengths
    t_wide = np.zeros((4, 8), dtype=np.int64)
    t_wide[:, ::2] = targets
    l_wide = np.zeros((2, 8), dtype=np.int64)
    l_wide[0, ::2], l_wide[1, ::2] = il, tl
    assert fl.ctc_loss(x, t_wide[:, ::2], l_wide[0, ::2], l_wide[1, ::2], reduction="sum") == v0


def test_gradient_in_place():
    rng = np.random.default_rng(9)
    x = log_probs(rng, (10, 3, 5))
    targets = padded_targets(rng, [3, 2, 4], 4, 5, 0)
    want_value, want_grad = fl.value_and_grad(fl.ctc_loss)(x, targets, [10, 8, 9], [3, 2, 4])
    buf = x.copy()
    value, grad = fl.value_and_grad(fl.ctc_loss)(buf, targets, [10, 8, 9], [3, 2, 4], out=buf)
    assert grad is buf and value == want_value
    np.testing.assert_array_equal(buf, want_grad)


def test_results_do_not_depend_on_the_thread_count():
    """Big enough for several chunks (ctc.MIN_CHUNK); the same bits with one thread or all."""
    rng = np.random.default_rng(10)
    T, N, C, S = 100, 64, 24, 12
    x = log_probs(rng, (T, N, C), np.float32)
    tl = rng.integers(1, S + 1, N)
    targets = padded_targets(rng, tl, S, C, 0)
    il = rng.integers(2 * S + 1, T + 1, N)
    assert int(np.sum(il * (2 * tl + 1))) + T * N * C > 4 * ctc.MIN_CHUNK
    before = fl.get_num_threads()
    try:
        fl.set_num_threads(1)
        one = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl)
        fl.set_num_threads(max(2, before))
        many = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl)
    finally:
        fl.set_num_threads(before)
    assert one[0] == many[0]
    np.testing.assert_array_equal(one[1], many[1])


def test_float32_accuracy_on_long_sequences():
    """float64 sums: float32 data keep 2e-5 of the float64 result over hundreds of frames."""
    rng = np.random.default_rng(11)
    T, N, C, S = 300, 3, 20, 60
    x = log_probs(rng, (T, N, C))
    tl = np.array([60, 45, 30])
    targets = padded_targets(rng, tl, S, C, 0)
    v64, g64 = fl.value_and_grad(fl.ctc_loss)(x.astype(np.float32).astype(np.float64), targets, [T] * 3, tl,
                                               reduction="none")
    v32, g32 = fl.value_and_grad(fl.ctc_loss)(x.astype(np.float32), targets, [T] * 3, tl, reduction="none")
    assert_close(v32, v64, np.float32, "value")
    assert_close(g32, g64, np.float32, "gradient")


# ------------------------------------------------------------------------------------------- Dask
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_dask_arrays_chunked_along_the_batch(reduction, chunks):
    da = pytest.importorskip("dask.array")
    dask = pytest.importorskip("dask")
    rng = np.random.default_rng(12)
    T, N, C, S = 9, 7, 5, 3
    x = log_probs(rng, (T, N, C))
    tl = rng.integers(0, S + 1, N)
    tl[2] = 3
    targets = padded_targets(rng, tl, S, C, 0)
    targets[2] = [1, 1, 1]
    il = rng.integers(4, T + 1, N)
    il[2] = 4  # 111 needs 5 frames: one infinite loss, zeroed
    kwargs = dict(reduction=reduction, zero_infinity=True)
    g = rng.uniform(0.5, 1.5, N) if reduction == "none" else 0.9
    want_value, want_grad = fl.value_and_grad(fl.ctc_loss)(x, targets, il, tl, grad_output=g, **kwargs)
    per = -(-N // chunks)
    dx = da.from_array(x, chunks=(T, per, C))
    dt = da.from_array(targets, chunks=(per, S))
    dil, dtl = da.from_array(il, chunks=per), tl  # an in-memory argument is cut to match
    value, grad = fl.value_and_grad(fl.ctc_loss)(dx, dt, dil, dtl, grad_output=g, **kwargs)
    assert isinstance(value, da.Array) and isinstance(grad, da.Array) and grad.chunks == dx.chunks
    with dask.config.set(scheduler="sync"):
        value, grad = dask.compute(value, grad)
    np.testing.assert_allclose(value, want_value, rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-13, atol=1e-16)


def test_dask_concatenated_targets_run_in_one_chunk():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(13)
    x = log_probs(rng, (8, 3, 4))
    targets = np.array([1, 2, 3, 3, 1])
    want = fl.ctc_loss(x, targets, [8, 8, 6], [2, 2, 1])
    got = fl.ctc_loss(da.from_array(x, chunks=(8, 1, 4)), da.from_array(targets, chunks=2), [8, 8, 6], [2, 2, 1])
    np.testing.assert_allclose(got.compute(scheduler="sync"), want, rtol=1e-14)
    with pytest.raises(IndexError, match="blank"):  # the stand-ins pass; the real labels do not
        fl.ctc_loss(da.from_array(x, chunks=(8, 1, 4)), da.from_array(targets * 0, chunks=2), [8, 8, 6],
                    [2, 2, 1]).compute(scheduler="sync")
