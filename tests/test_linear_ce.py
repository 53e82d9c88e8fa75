"""Large-vocabulary cross entropy: ``cross_entropy`` with ``z_loss``/``softcap`` and
``linear_cross_entropy`` beyond the registry-wide tests (which run every CASES entry against the
float64 reference, torch and finite differences).

Here: cross_entropy's new options against torch (by hand) and the reference over every target kind,
option and reduction; the defaults bit-for-bit on today's path; results independent of chunk_size;
the memory budget (tracemalloc sees NumPy's allocations); the SPEC §4 rows.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fastloss as fl
from fastloss.families import lce

from _helpers import assert_close, needs_torch, to_torch, torch

RNG = np.random.default_rng(20261129)


def _ce_case(kind, dtype, shape=(6, 40)):
    rng = np.random.default_rng(hash((kind, shape)) % 2**32)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    n_cls = shape[0] if len(shape) == 1 else shape[1]
    if kind == "prob":
        t = lce._prob_targets(rng, shape if len(shape) == 1 else (shape[0],) + shape[2:] + (n_cls,), dtype)
        if len(shape) > 1:
            t = np.moveaxis(t, -1, 1)
    else:
        tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = lce._index_targets(rng, n_cls, int(np.prod(tshape, dtype=np.int64)), ignore=-100 if len(shape) > 1 else None)
        t = t.reshape(tshape)
    w = rng.uniform(0.2, 2.0, n_cls).astype(dtype)
    return x, t, w


OPTIONS = [
    dict(z_loss=1e-2),
    dict(softcap=4.0),
    dict(z_loss=0.05, softcap=2.0, label_smoothing=0.1),
    dict(z_loss=0.05, softcap=30.0, weight=True),
    dict(z_loss=0.1, weight=True, label_smoothing=0.2),
    # beyond the bounded exponential's softcaps (43.6 float32, 354 float64): the clamped exponential
    dict(softcap=50.0, weight=True),
    dict(softcap=400.0, label_smoothing=0.1),
]


def _kwargs(opts, w):
    kw = dict(opts)
    if kw.pop("weight", False):
        kw["weight"] = w
    return kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(6, 40), (40,), (3, 7, 2, 2)], ids=["2d", "1d", "4d"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(sorted(o)))
def test_cross_entropy_options_match_reference_and_torch(dtype, reduction, kind, shape, opts):
    x, t, w = _ce_case(kind, dtype, shape)
    kw = dict(_kwargs(opts, w), reduction=reduction)
    value = fl.cross_entropy(x, t, **kw)
    g = None if reduction != "none" else np.random.default_rng(1).uniform(0.5, 1.5, np.shape(value))
    v2, grad = fl.value_and_grad(fl.cross_entropy)(x, t, grad_output=g, **kw)
    np.testing.assert_array_equal(value, v2)
    assert grad.shape == x.shape and grad.dtype == dtype and np.asarray(value).dtype == dtype
    ref_kw = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    ref_t = t.astype(np.float64) if t.dtype.kind == "f" else t
    rv, (rg,) = lce.ref_cross_entropy(x.astype(np.float64), ref_t, grad_output=g, **ref_kw)
    assert_close(value, rv, dtype, "value vs reference")
    assert_close(grad, rg, dtype, "grad vs reference")
    if torch is None:
        return
    tx = to_torch(x, requires_grad=True)
    tkw = {k: to_torch(v) for k, v in kw.items()}
    tv = lce.torch_cross_entropy(torch, tx, to_torch(t), **tkw)
    (tg,) = torch.autograd.grad(tv, [tx], grad_outputs=None if g is None else torch.as_tensor(g))
    assert_close(value, tv.detach().numpy(), dtype, "value vs torch")
    assert_close(grad, tg.numpy(), dtype, "grad vs torch")


@pytest.mark.parametrize("in_place", [False, True], ids=["into-out", "in-place"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("opts", [dict(softcap=30.0, z_loss=1e-4), dict(softcap=5.0, label_smoothing=0.1),
                                  dict(z_loss=1e-3)], ids=lambda o: "-".join(sorted(o)))
def test_float32_long_rows_to_the_float64_reference(opts, kind, in_place):
    """float32 rows longer than a summation block, in several threads' chunks (float32 tanh and exp):
    loss within 2e-5 relative of the float64 reference, gradient within 1e-6 of its largest entry."""
    rng = np.random.default_rng(7)
    n_rows, n_cls = 24, 5003
    # odd rows reach |x / cap| > 0.625 in every block (tanh's quotient form), even rows with cap 30 do not
    scale = np.where(np.arange(n_rows) % 2, 8.0, 1.5)[:, None]
    x = (scale * rng.standard_normal((n_rows, n_cls))).astype(np.float32)
    x[3, 17] = 200.0  # a row whose target dominates (p_t ~ 1) and a capped logit far in the tail
    if kind == "prob":
        t = lce._prob_targets(rng, (n_rows, n_cls), np.float32)
    else:
        t = rng.integers(0, n_cls, n_rows)
        t[3] = 17
        t[5] = -100
    kw = dict(opts, reduction="none")
    g = rng.uniform(0.5, 1.5, n_rows)
    buf = x.copy()
    v, grad = fl.value_and_grad(fl.cross_entropy)(buf, t, grad_output=g, out=buf if in_place else None, **kw)
    assert (grad is buf) == in_place
    rv, (rg,) = lce.ref_cross_entropy(x.astype(np.float64), t.astype(np.float64) if kind == "prob" else t,
                                      grad_output=g, **kw)
    np.testing.assert_allclose(v, rv, rtol=2e-5, atol=0)
    np.testing.assert_allclose(grad, rg, rtol=0, atol=1e-6 * np.abs(rg).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_defaults_are_todays_path_bit_for_bit(dtype):
    from fastloss.families import softmax

    x, t, w = _ce_case("index", dtype, (9, 50))
    for kw in (dict(), dict(weight=w, label_smoothing=0.1, reduction="none")):
        want = softmax.cross_entropy(x, t, kw.get("weight"), -100, kw.get("reduction", "mean"),
                                     kw.get("label_smoothing", 0.0), None)
        for extra in (dict(), dict(z_loss=0.0), dict(z_loss=0, softcap=None)):
            np.testing.assert_array_equal(fl.cross_entropy(x, t, **kw, **extra), want)
        vg = fl.value_and_grad(fl.cross_entropy)(x, t, z_loss=0.0, **kw)
        vg0 = fl.value_and_grad(fl.cross_entropy)(x, t, **kw)
        np.testing.assert_array_equal(vg[0], vg0[0])
        np.testing.assert_array_equal(vg[1], vg0[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [30.0, 50.0, 400.0])
@pytest.mark.parametrize("in_place", [False, True], ids=["into-out", "in-place"])
def test_softcap_of_infinite_and_nan_logits(dtype, cap, in_place):
    """``+-inf`` logits softcap to ``+-cap`` (finite loss, zero gradient through the saturated tanh, as
    torch's), a NaN logit turns its own row NaN and no other; softcaps on both sides of the bounded
    exponential's limits, rows long enough for several blocks and both threads."""
    rng = np.random.default_rng(3)
    x = (6 * rng.standard_normal((6, 3 * lce.row_kernels._BLOCK + 5))).astype(dtype)
    x[0, 7] = np.inf
    x[1, 9], x[1, 10] = -np.inf, np.inf
    x[2, 11] = np.nan
    x[3] = -np.inf
    x[4, 2000] = 1e30
    t = np.array([7, 9, 11, 4, 2000, 1])
    kw = dict(softcap=cap, z_loss=1e-3, reduction="none")
    rv, (rg,) = lce.ref_cross_entropy(x.astype(np.float64), t, **kw)
    buf = x.copy()
    v, g = fl.value_and_grad(fl.cross_entropy)(buf, t, out=buf if in_place else None, **kw)
    assert np.isnan(v[2]) and np.isnan(g[2]).all()
    assert np.isfinite(np.delete(v, 2)).all() and np.isfinite(np.delete(g, 2, axis=0)).all()
    assert g[0, 7] == 0 and g[1, 9] == 0 and g[1, 10] == 0 and g[3].sum() == pytest.approx(0, abs=1e-6)
    assert_close(v, rv, dtype, "value")
    assert_close(g, rg, dtype, "gradient")
    if torch is not None:
        tx = to_torch(x, requires_grad=True)
        tv = lce.torch_cross_entropy(torch, tx, to_torch(t), **kw)
        (tg,) = torch.autograd.grad(tv.sum(), [tx])
        assert_close(v, tv.detach().numpy(), dtype, "value vs torch")
        assert_close(g, tg.numpy(), dtype, "gradient vs torch")


def test_cross_entropy_options_in_place_and_ignored_rows():
    x, t, _ = _ce_case("index", np.float64, (6, 40))
    t[:] = -100
    t[0] = 3
    v, g = fl.value_and_grad(fl.cross_entropy)(x, t, z_loss=0.1, softcap=5.0)
    assert np.all(g[1:] == 0)
    buf = x.copy()
    v2, g2 = fl.value_and_grad(fl.cross_entropy)(buf, t, z_loss=0.1, softcap=5.0, out=buf)
    assert g2 is buf
    np.testing.assert_allclose(g2, g, rtol=1e-13, atol=1e-16)
    t[:] = -100
    assert np.isnan(float(fl.cross_entropy(x, t, z_loss=0.1)))  # 'mean' of nothing, as torch


# ------------------------------------------------------------------------------------------------
# linear_cross_entropy
# ------------------------------------------------------------------------------------------------
def _linear_problem(dtype, n=23, h=8, v=50, kind="index", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h)).astype(dtype)
    W = (rng.standard_normal((v, h)) / np.sqrt(h) * 2).astype(dtype)
    b = rng.standard_normal(v).astype(dtype)
    w = rng.uniform(0.2, 2.0, v).astype(dtype)
    t = lce._prob_targets(rng, (n, v), dtype) if kind == "prob" else lce._index_targets(rng, v, n, ignore=-100)
    return x, W, b, w, t


CHUNKS = [None, 1, 7, 49, 50, 51, 3 * 50, 1000 * 50, 10 ** 9]


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_results_do_not_depend_on_chunk_size(kind, dtype):
    x, W, b, w, t = _linear_problem(dtype, kind=kind)
    kw = dict(linear_bias=b, weight=w, z_loss=0.01, softcap=6.0, label_smoothing=0.05)
    rv, rg = lce.ref_linear_cross_entropy(x.astype(np.float64), W.astype(np.float64),
                                          t.astype(np.float64) if kind == "prob" else t,
                                          linear_bias=b.astype(np.float64), weight=w.astype(np.float64),
                                          z_loss=0.01, softcap=6.0, label_smoothing=0.05)
    for chunk in CHUNKS:
        v, g = fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, chunk_size=chunk, **kw)
        assert len(g) == 3
        assert_close(v, rv, dtype, f"value chunk_size={chunk}")
        for a, r, name in zip(g, rg, ("input", "linear_weight", "linear_bias")):
            assert a.dtype == dtype
            assert_close(a, r, dtype, f"grad of {name} chunk_size={chunk}")
        assert_close(fl.linear_cross_entropy(x, W, t, chunk_size=chunk, **kw), rv, dtype, "value alone")


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("chunk", [None, 1, 50, 120])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.1, weight=True), dict(z_loss=1e-3, softcap=3.0),
                                  dict(ignore_index=4, weight=True, z_loss=0.02)], ids=lambda o: "-".join(sorted(o)))
def test_linear_matches_torch(reduction, kind, chunk, opts):
    x, W, b, w, t = _linear_problem(np.float64, kind=kind, seed=3)
    kw = dict(_kwargs(opts, w), reduction=reduction, linear_bias=b)
    if "ignore_index" in kw and kind == "prob":
        pytest.skip("torch refuses ignore_index with probability targets (fastloss ignores it)")
    if "ignore_index" in kw:
        t = np.where(np.arange(t.size) % 3 == 0, kw["ignore_index"], np.abs(t) % 50)
    g = None if reduction != "none" else np.random.default_rng(2).uniform(0.5, 1.5, x.shape[0])
    v, grads = fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, chunk_size=chunk, grad_output=g, **kw)
    tx, tW, tb = (to_torch(a, requires_grad=True) for a in (x, W, b))
    tkw = {k: to_torch(val) for k, val in kw.items() if k != "linear_bias"}
    tv = lce.torch_linear_cross_entropy(torch, tx, tW, to_torch(t), linear_bias=tb, **tkw)
    tg = torch.autograd.grad(tv, [tx, tW, tb], grad_outputs=None if g is None else torch.as_tensor(g))
    assert_close(v, tv.detach().numpy(), np.float64, "value vs torch")
    for a, b_ in zip(grads, tg):
        assert_close(a, b_.numpy(), np.float64, "grad vs torch")


@needs_torch
def test_linear_matches_torch_chunked_options():
    """torch's own chunked path (LinearCrossEntropyOptions) gives the same value as fastloss's."""
    x, W, b, w, t = _linear_problem(np.float32, n=64, h=16, v=300, seed=5)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=16)
    tv = torch.nn.functional.linear_cross_entropy(torch.as_tensor(x), torch.as_tensor(W), torch.as_tensor(t),
                                                  options=opts)
    assert_close(fl.linear_cross_entropy(x, W, t, chunk_size=16 * 300), tv.numpy(), np.float32, "value")


def test_linear_one_dimensional_input_and_no_bias():
    x, W, b, w, t = _linear_problem(np.float64, n=1)
    v, (dx, dW) = fl.value_and_grad(fl.linear_cross_entropy)(x[0], W, t[0] if t[0] >= 0 else np.int64(1))
    assert np.shape(v) == () and dx.shape == x[0].shape and dW.shape == W.shape
    rv, (rdx, rdW) = lce.ref_linear_cross_entropy(x[0], W, t[0] if t[0] >= 0 else np.int64(1))
    np.testing.assert_allclose(v, rv, rtol=1e-12)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dW, rdW, rtol=1e-10, atol=1e-14)
    assert np.shape(fl.linear_cross_entropy(x[0], W, np.int64(2), reduction="none")) == ()


def test_linear_in_place_gradient_of_input():
    x, W, b, w, t = _linear_problem(np.float64)
    v0, (dx0, dW0) = fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, chunk_size=100)
    xx = x.copy()
    v1, (dx1, dW1) = fl.value_and_grad(fl.linear_cross_entropy)(xx, W, t, chunk_size=100, out=(xx, None))
    assert dx1 is xx
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dW1, dW0, rtol=1e-12, atol=1e-15)
    WW = W.copy()
    v2, (dx2, dW2) = fl.value_and_grad(fl.linear_cross_entropy)(x, WW, t, chunk_size=7, out=(None, WW))
    assert dW2 is WW
    np.testing.assert_allclose(dW2, dW0, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("chunk", [None, 8 * 4000])
def test_linear_extra_memory_stays_within_the_chunk(chunk):
    """Peak memory NumPy allocates beyond the gradients themselves: one chunk of logits plus O(N + V)
    vectors, never the (N, V) logits."""
    n, h, v = 512, 16, 4000
    x, W, b, w, t = _linear_problem(np.float32, n=n, h=h, v=v, seed=7)
    out = (np.empty_like(x), np.empty_like(W), np.empty_like(b))
    fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, linear_bias=b, chunk_size=chunk, out=out)  # compile
    logits_bytes = n * v * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, linear_bias=b, chunk_size=chunk, out=out)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    rows, width = lce._chunk_shape(n, v, chunk)
    budget = rows * width * 4 + 64 * (n + v) + (1 << 16)  # the chunk, float64 row and class vectors
    assert peak <= budget, (peak, budget)
    assert peak <= 0.2 * logits_bytes
    if chunk is None:
        assert rows * width <= 0.05 * n * v or n * v <= lce.linear.SMALL_LOGITS


def test_default_chunk_is_a_few_percent_of_large_logits():
    """Large vocabularies: class blocks across many rows (BLAS-sized products) within the budget;
    whole rows where enough of them fit."""
    for n, v, h in ((2048, 32000, 1024), (8192, 128256, 4096)):
        rows, width = lce._chunk_shape(n, v, None, h, 2)
        assert rows == min(n, lce.linear.BLOCK_ROWS) and width < v
        assert rows * width <= 0.05 * n * v
    rows, width = lce._chunk_shape(200000, 100, None, 64, 2)
    assert width == 100 and rows >= lce.linear.WHOLE_ROWS and rows * width <= 0.05 * 200000 * 100
    # few rows of a large vocabulary: class blocks across them all, within the budget too
    rows, width = lce._chunk_shape(16, 10 ** 6, None, 256, 2)
    assert rows == 16 and rows * width <= 0.05 * 16 * 10 ** 6
    assert lce._chunk_shape(23, 50, None, 8, 2) == (23, 50)  # small logits: one chunk


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_class_blocks_over_several_row_blocks(monkeypatch, kind, dtype):
    """The default class-block schedule when rows come in several blocks: d W and d input summed over
    blocks (BLAS beta = 1), in place too, all options."""
    from fastloss.families.lce import linear

    monkeypatch.setattr(linear, "WHOLE_ROWS", 10 ** 9)
    monkeypatch.setattr(linear, "BLOCK_ROWS", 7)
    monkeypatch.setattr(linear, "SMALL_LOGITS", 0)
    x, W, b, w, t = _linear_problem(dtype, kind=kind, seed=11)
    rows, width = linear._chunk_shape(*x.shape[:1], W.shape[0], None, x.shape[1], 2)
    assert rows == 7 and 1 < width < W.shape[0]
    kw = dict(linear_bias=b, weight=w, z_loss=0.01, softcap=6.0, label_smoothing=0.05, reduction="none")
    g = np.random.default_rng(4).uniform(0.5, 1.5, x.shape[0])
    rv, rg = lce.ref_linear_cross_entropy(x.astype(np.float64), W.astype(np.float64),
                                          t.astype(np.float64) if kind == "prob" else t, grad_output=g,
                                          **{k: (a.astype(np.float64) if isinstance(a, np.ndarray) else a)
                                             for k, a in kw.items()})
    xx, WW = x.copy(), W.copy()
    for out in (None, (xx, WW)):
        v, grads = fl.value_and_grad(fl.linear_cross_entropy)(xx if out else x, WW if out else W, t, grad_output=g,
                                                              out=out, **kw)
        assert_close(v, rv, dtype, "value")
        for a, r, name in zip(grads, rg, ("input", "linear_weight", "linear_bias")):
            assert_close(a, r, dtype, f"grad of {name}, out={out is not None}")
    assert grads[0] is xx and grads[1] is WW
    assert_close(fl.linear_cross_entropy(x, W, t, **kw), rv, dtype, "value alone")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_assigns_or_adds_whatever_the_buffer_held(dtype):
    """beta = 0 must not read the buffer (a chunk buffer holds the last block's NaNs, say)."""
    from fastloss.families.lce.linear import _gemm

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    c = np.full((5, 3), np.nan, dtype)
    _gemm(c, a, b.T, 0.0)
    np.testing.assert_allclose(c, a @ b.T, rtol=1e-5)
    _gemm(c, a, b.T, 1.0)
    np.testing.assert_allclose(c, 2 * (a @ b.T), rtol=1e-5)
    ct = np.zeros((7, 3), dtype)
    _gemm(ct, a.T, np.ascontiguousarray(b.T)[:5], 0.0)  # transposed (F-contiguous) operands
    np.testing.assert_allclose(ct, a.T @ b.T[:5], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# SPEC §4
# ------------------------------------------------------------------------------------------------
def test_bad_options_are_value_errors():
    x, W, b, w, t = _linear_problem(np.float64)
    for bad in (dict(softcap=0.0), dict(softcap=-1.0), dict(z_loss=-0.1), dict(softcap=float("nan"))):
        with pytest.raises(ValueError):
            fl.linear_cross_entropy(x, W, t, **bad)
        with pytest.raises(ValueError):
            fl.cross_entropy(x @ W.T, t, **bad)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size"):
            fl.linear_cross_entropy(x, W, t, chunk_size=bad)
    with pytest.raises(TypeError):
        fl.linear_cross_entropy(x, W, t, chunk_size=2.5)


def test_shapes_that_do_not_fit_name_them():
    x, W, b, w, t = _linear_problem(np.float64)
    with pytest.raises(ValueError, match=r"\(50, 7\)"):
        fl.linear_cross_entropy(x, W[:, :7], t)
    with pytest.raises(ValueError, match=r"\(49,\)"):
        fl.linear_cross_entropy(x, W, t, linear_bias=b[:-1])
    with pytest.raises(ValueError, match="weight"):
        fl.linear_cross_entropy(x, W, t, weight=w[:-1])
    with pytest.raises(ValueError, match="target"):
        fl.linear_cross_entropy(x, W, t[:-1])
    with pytest.raises(ValueError):
        fl.linear_cross_entropy(x[None], W, t)
    with pytest.raises(TypeError):
        fl.linear_cross_entropy(x, W.astype(np.float32), t)


def test_bad_class_index_is_an_index_error():
    x, W, b, w, t = _linear_problem(np.float64)
    t = np.abs(t) % 50
    t[3] = 50
    with pytest.raises(IndexError, match="50"):
        fl.linear_cross_entropy(x, W, t)
    t[3] = -1
    with pytest.raises(IndexError, match="-1"):
        fl.linear_cross_entropy(x, W, t)
    t[3] = 7
    fl.linear_cross_entropy(x, W, np.where(t == 7, 999, t), ignore_index=999)


def test_inputs_are_not_modified_and_nan_propagates():
    x, W, b, w, t = _linear_problem(np.float64)
    t = np.abs(t) % 50
    x[2, 1] = np.nan
    copies = [a.copy() for a in (x, W, b, w, t)]
    v, g = fl.value_and_grad(fl.linear_cross_entropy)(x, W, t, linear_bias=b, weight=w, reduction="none",
                                                      z_loss=0.1, softcap=3.0, chunk_size=9)
    for a, c in zip((x, W, b, w, t), copies):
        np.testing.assert_array_equal(a, c)
    assert np.isnan(v[2]) and np.isfinite(np.delete(v, 2)).all()
    assert np.isnan(g[0][2]).all() and np.isfinite(np.delete(g[0], 2, axis=0)).all()


@pytest.mark.parametrize("cap", [6.0, 60.0])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("kind", ["index", "index-smooth", "prob"])
def test_softcap_rows_of_several_blocks(kind, inplace, cap):
    """Rows longer than the row kernels' float32 block, some blocks with every |x / cap| in tanh's
    polynomial range and some not, a partial last block: value and gradient (given in place or not)
    against the float64 reference; a softcap within the bounded exponential's limit (43.6) and one
    beyond it."""
    rng = np.random.default_rng(7)
    n, c = 5, 2 * lce.row_kernels._BLOCK + 77
    x = rng.standard_normal((n, c)).astype(np.float32)
    x[:, 300] = 40.0 * cap / 6.0  # |x / cap| > 0.625 in the first block only
    x[1, -3] = -55.0 * cap / 6.0
    t = lce._prob_targets(rng, (n, c), np.float32) if kind == "prob" else np.array([300, 5, c - 3, 1500, 0])
    kw = {"softcap": cap, "label_smoothing": 0.1 if kind != "index" else 0.0}
    rv, (rg,) = lce.ref_cross_entropy(x.astype(np.float64), t.astype(np.float64) if kind == "prob" else t, **kw)
    xx = x.copy()
    v, g = fl.value_and_grad(fl.cross_entropy)(xx, t, out=xx if inplace else None, **kw)
    assert_close(v, rv, np.float32, "value")
    assert_close(g, rg, np.float32, "gradient")
    assert_close(fl.cross_entropy(x, t, **kw), rv, np.float32, "value alone")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["index", "index-smooth", "prob"])
@pytest.mark.parametrize("top", [0.3, 0.5, 0.6, 0.9, 3.0])
def test_softcap_tanh_tiers(top, kind, dtype):
    """Rows whose largest |x / cap| is ``top``: below 0.4375 the rows take the shortest tanh, below
    0.625 tanh's polynomial, above it each block decides (some blocks small, some not); value and
    gradient against the float64 reference, the next rows' maxima taken in each pass."""
    rng = np.random.default_rng(int(top * 10))
    cap = 30.0
    n, c = 7, 3 * lce.row_kernels._BLOCK + 11
    x = rng.uniform(-1.0, 1.0, (n, c))
    x *= top * cap / np.abs(x).max(axis=1, keepdims=True)
    x = x.astype(dtype)
    t = lce._prob_targets(rng, (n, c), dtype) if kind == "prob" else rng.integers(0, c, n)
    kw = {"softcap": cap, "label_smoothing": 0.1 if kind != "index" else 0.0, "reduction": "none"}
    rv, (rg,) = lce.ref_cross_entropy(x.astype(np.float64), t.astype(np.float64) if kind == "prob" else t, **kw)
    for out in (None, "in-place"):
        xx = x.copy()
        v, g = fl.value_and_grad(fl.cross_entropy)(xx, t, out=xx if out else None, **kw)
        assert_close(v, rv, dtype, f"value {out}")
        assert_close(g, rg, dtype, f"gradient {out}")


def test_softcap_block_loops_vectorise():
    """The softcap exp passes (both twins: logits read from another array and in place) compile to
    float32 vector code with the fast-math flags, without scalar calls of exp or tanh."""
    import re

    import numba

    from fastloss import _jit

    R = lce.row_kernels
    uncached = dict(_jit._COMMON, cache=False)
    blk = np.linspace(-1, 1, 64).astype(np.float32)
    f32 = np.float32
    for fn, args in ((R._cap_block_into, (blk, np.empty_like(blk), np.empty_like(blk))),
                     (R._cap_block_inplace, (blk.copy(), np.empty_like(blk)))):
        loop = numba.njit(**uncached)(fn.py_func)
        loop(*args, f32(0.25), f32(4.0), f32(1.0), 0, True)
        ir = loop.inspect_llvm(loop.signatures[0])
        widths = {int(w) for w in re.findall(r"<(\d+) x float>", ir)}
        assert widths and max(widths) >= 4, f"{fn.__name__}: no float32 vectors"
        assert not re.search(r"call [^\n]*@(llvm\.)?(exp|tanh)", ir), f"{fn.__name__}: a scalar exp/tanh call"
        assert "reassoc" in ir and "contract" in ir
