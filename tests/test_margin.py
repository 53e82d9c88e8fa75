"""The margin family (``multi_margin_loss``, ``multilabel_margin_loss``) beyond the registry-wide tests:
edge cases of the target lists, empty batches, NaN and inf as PyTorch, bad class indices, in-place
gradients, large inputs split among threads, float32 accuracy."""
from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss.families import margin as M

from _helpers import assert_close, needs_torch, torch

MM = M.REFERENCE["multi_margin_loss"]
ML = M.REFERENCE["multilabel_margin_loss"]


def _torch_value_and_grad(name, x, t, g=None, **kw):
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    val = getattr(torch.nn.functional, name)(xt, torch.tensor(np.asarray(t, dtype=np.int64)), **kw)
    go = torch.ones_like(val) if g is None else torch.as_tensor(np.asarray(g, dtype=np.float64))
    (grad,) = torch.autograd.grad(val, xt, grad_outputs=go)
    return val.detach().numpy(), grad.numpy()


# --------------------------------------------------------------------------------------------------
# multilabel target lists
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_rows_without_targets_have_no_loss_and_no_gradient(reduction):
    x = np.random.default_rng(0).standard_normal((3, 6))
    t = np.full((3, 6), -1)
    t[1, :2] = [4, 0]  # one row with targets, for a nonzero total
    value, g = fl.value_and_grad(fl.multilabel_margin_loss)(x, t, reduction=reduction)
    ref, (rg,) = ML(x, t, reduction=reduction)
    assert_close(value, ref, np.float64, "value")
    assert_close(g, rg, np.float64, "grad")
    assert np.all(g[[0, 2]] == 0)
    if reduction == "none":
        assert value[0] == 0 and value[2] == 0 and value[1] > 0


@needs_torch
def test_duplicated_targets_count_once_per_listing_and_values_after_the_end_are_ignored():
    x = np.array([[0.1, 0.2, 0.4, 0.8, -0.3], [0.3, -0.2, 0.5, 0.1, 0.9]])
    t = np.array([[3, 3, 1, -1, 4], [2, 0, 2, 2, -1]])
    g = np.array([0.7, 1.3])
    value, grad = fl.value_and_grad(fl.multilabel_margin_loss)(x, t, reduction="none", grad_output=g)
    tv, tg = _torch_value_and_grad("multilabel_margin_loss", x, t, g, reduction="none")
    np.testing.assert_allclose(value, tv, rtol=1e-12)
    np.testing.assert_allclose(grad, tg, rtol=1e-12, atol=1e-15)
    # the duplicate counts twice: listing 3 once more changes the loss
    once = fl.multilabel_margin_loss(x, np.array([[3, 1, -1, 0, 0], [2, 0, -1, 0, 0]]), reduction="none")
    assert value[0] > once[0]


def test_full_rows_without_end_marker():
    x = np.random.default_rng(1).standard_normal((2, 4))
    t = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])  # every class a target: no pair, no loss
    value, g = fl.value_and_grad(fl.multilabel_margin_loss)(x, t, reduction="sum")
    assert float(value) == 0 and not g.any()


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_empty_batch(name):
    x = np.zeros((0, 4), dtype=np.float32)
    t = np.zeros((0,) if name == "multi_margin_loss" else (0, 4), dtype=np.int64)
    f = getattr(fl, name)
    assert f(x, t, reduction="none").shape == (0,)
    assert float(f(x, t, reduction="sum")) == 0.0
    assert np.isnan(float(f(x, t)))  # the mean of no rows
    value, g = fl.value_and_grad(f)(x, t, reduction="sum")
    assert g.shape == (0, 4) and g.dtype == np.float32


@needs_torch
def test_one_sample_shapes_follow_torch():
    x = np.array([0.5, -0.2, 0.9])
    for t in (np.array(1), np.array([1])):
        v = fl.multi_margin_loss(x, t, reduction="none")
        tv, _ = _torch_value_and_grad("multi_margin_loss", x, t, reduction="none")
        assert v.shape == tv.shape
        np.testing.assert_allclose(v, tv, rtol=1e-12)
    v = fl.multi_margin_loss(x[None], np.array(2), reduction="none")  # (1, C) with a 0-d target: ()
    assert v.shape == ()
    value, g = fl.value_and_grad(fl.multi_margin_loss)(np.array(0.3), np.array(0))  # one class, no pair
    assert float(value) == 0 and g.shape == () and g == 0
    v = fl.multilabel_margin_loss(x, np.array([2, -1, 0]), reduction="none")
    tv, _ = _torch_value_and_grad("multilabel_margin_loss", x, np.array([2, -1, 0]), reduction="none")
    assert v.shape == () == tv.shape
    np.testing.assert_allclose(v, tv, rtol=1e-12)


def test_non_contiguous_inputs_and_targets():
    rng = np.random.default_rng(2)
    wide = rng.standard_normal((6, 10))
    x = wide[:, ::2]
    t = np.stack([rng.integers(0, 5, 6), np.zeros(6, dtype=np.int64)], axis=1)[:, 0]
    assert not x.flags.c_contiguous and not t.flags.c_contiguous
    w = rng.uniform(0.5, 2.0, 10)[::2]
    value, g = fl.value_and_grad(fl.multi_margin_loss)(x, t, p=2, weight=w)
    ref, (rg,) = MM(np.ascontiguousarray(x), np.ascontiguousarray(t), p=2, weight=np.ascontiguousarray(w))
    assert_close(value, ref, np.float64, "value")
    assert_close(g, rg, np.float64, "grad")
    lists = np.asfortranarray(M._target_lists(rng, 6, 5, 3))
    value, g = fl.value_and_grad(fl.multilabel_margin_loss)(x, lists)
    ref, (rg,) = ML(np.ascontiguousarray(x), np.ascontiguousarray(lists))
    assert_close(value, ref, np.float64, "value")
    assert_close(g, rg, np.float64, "grad")


# --------------------------------------------------------------------------------------------------
# Options, NaN and inf
# --------------------------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p_weight_margin_against_torch(p, dtype):
    rng = np.random.default_rng(3)
    x = (2 * rng.standard_normal((40, 300))).astype(dtype)
    t = rng.integers(0, 300, 40)
    w = rng.uniform(0.1, 3.0, 300).astype(dtype)
    for margin in (1.0, -0.5, 2.5):
        value, g = fl.value_and_grad(fl.multi_margin_loss)(x, t, p=p, margin=margin, weight=w, reduction="none")
        tv, tg = _torch_value_and_grad("multi_margin_loss", x, t, p=p, margin=margin, weight=torch.tensor(
            w.astype(np.float64)), reduction="none")
        assert_close(value, tv, dtype, f"value p={p} margin={margin}")
        assert_close(g, tg, dtype, f"grad p={p} margin={margin}")


@needs_torch
def test_nan_and_inf_as_torch():
    x = np.array([[0.1, np.nan, 0.4, 0.8], [0.1, np.inf, 0.4, 0.8], [np.nan, 0.2, 0.4, 0.8],
                  [0.1, -np.inf, 0.4, 0.8]])
    t = np.array([0, 0, 0, 2])
    for p in (1, 2):
        value, g = fl.value_and_grad(fl.multi_margin_loss)(x, t, p=p, reduction="none")
        tv, tg = _torch_value_and_grad("multi_margin_loss", x, t, p=p, reduction="none")
        np.testing.assert_array_equal(np.isnan(value), np.isnan(tv))
        np.testing.assert_allclose(value, tv, rtol=1e-12)
        np.testing.assert_allclose(g, tg, rtol=1e-12)
    lists = np.array([[0, -1, 0, 0], [0, 2, -1, 0], [0, 1, -1, 0], [1, -1, 0, 0]])
    value, g = fl.value_and_grad(fl.multilabel_margin_loss)(x, lists, reduction="none")
    tv, tg = _torch_value_and_grad("multilabel_margin_loss", x, lists, reduction="none")
    np.testing.assert_allclose(value, tv, rtol=1e-12)
    np.testing.assert_allclose(g, tg, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [5, -1, 200])
def test_multi_margin_class_index_out_of_range(bad):
    x = np.zeros((3, 5))
    out = np.full((3, 5), 7.0)
    with pytest.raises(IndexError, match=f"target {bad} is out of bounds for 5 classes"):
        fl.value_and_grad(fl.multi_margin_loss)(x, np.array([0, bad, 1]), out=out)
    assert np.all(out == 7.0)  # checked before any kernel wrote


@pytest.mark.parametrize("bad", [-2, 5])
def test_multilabel_index_out_of_range_even_after_the_end(bad):
    x = np.zeros((2, 5))
    t = np.array([[0, -1, 3, 3, bad], [1, 2, -1, 0, 0]])  # after the first -1, yet checked (as torch)
    with pytest.raises(IndexError, match=f"target {bad} is out of bounds"):
        fl.multilabel_margin_loss(x, t)


def test_argument_errors():
    x = np.zeros((3, 4))
    t = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        fl.multi_margin_loss(x, t, p=3)
    with pytest.raises(TypeError, match="integers"):
        fl.multi_margin_loss(x, t.astype(np.float64))
    with pytest.raises(TypeError, match="integers"):
        fl.multilabel_margin_loss(x, np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        fl.multi_margin_loss(x, t, weight=np.ones(3))
    with pytest.raises(ValueError, match=r"target"):
        fl.multi_margin_loss(x, t[:, None])
    with pytest.raises(ValueError, match=r"input's shape \(3, 4\)"):
        fl.multilabel_margin_loss(x, np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="C > 0"):
        fl.multi_margin_loss(np.zeros((2, 0)), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"\(N, C\) or \(C,\)"):
        fl.multilabel_margin_loss(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# In place, threads, accuracy of large float32 inputs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_gradient_written_over_the_input(name):
    rng = np.random.default_rng(4)
    case = M.BENCH[name](rng, np.float64, 4000)
    x, t = case.args
    value, g = fl.value_and_grad(getattr(fl, name))(x, t)
    xi = x.copy()
    value2, g2 = fl.value_and_grad(getattr(fl, name))(xi, t, out=xi)
    assert g2 is xi
    # the same sums, possibly in another order (the aliased loops do not vectorise)
    np.testing.assert_allclose(value2, value, rtol=1e-12)
    np.testing.assert_allclose(xi, g, rtol=1e-12, atol=1e-15)


def _big(name, dtype, n_cls=1000):
    rng = np.random.default_rng(5)
    n = 700_000 // n_cls  # 700,000 elements: 10 chunks
    x = (2 * rng.standard_normal((n, n_cls))).astype(dtype)
    if name == "multi_margin_loss":
        return x, rng.integers(0, n_cls, n), {"p": 2, "weight": rng.uniform(0.5, 2, n_cls).astype(dtype)}
    return x, M._target_lists(rng, n, n_cls, 6), {}


@pytest.mark.parametrize("n_cls", [10, 1000])  # the short-row and the long-row kernels
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_results_do_not_depend_on_the_thread_count(name, n_cls):
    x, t, kw = _big(name, np.float32, n_cls)
    assert x.size // M.MIN_CHUNK >= 8  # several chunks
    before = fl.get_num_threads()
    try:
        results = []
        for n in (1, 2, 4):
            fl.set_num_threads(n)
            results.append(fl.value_and_grad(getattr(fl, name))(x, t, **kw))
    finally:
        fl.set_num_threads(before)
    for value, g in results[1:]:
        assert value.tobytes() == results[0][0].tobytes()
        assert g.tobytes() == results[0][1].tobytes()


@pytest.mark.parametrize("n_cls", [10, 1000])
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_float32_accuracy_on_large_inputs(name, n_cls):
    x, t, kw = _big(name, np.float32, n_cls)
    ref_fn = MM if name == "multi_margin_loss" else ML
    kw64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    for reduction in ("mean", "none"):
        value, g = fl.value_and_grad(getattr(fl, name))(x, t, reduction=reduction, **kw)
        ref, (rg,) = ref_fn(x.astype(np.float64), t, reduction=reduction, **kw64)
        assert_close(value, ref, np.float32, f"{name} {reduction} value")
        assert_close(g, rg, np.float32, f"{name} {reduction} grad")
