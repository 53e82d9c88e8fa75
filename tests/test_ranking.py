"""Specifics of the ranking and triplet families (Cython kernels) beyond the registry-wide tests.

Ground truth is PyTorch 2.13's autograd, run in the same dtype as fastloss wherever a kink depends on
rounding: gradients at exactly-zero hinge arguments and at zero distances, triplet distances of every
order ``p``, swap ties, 1-D and N-D inputs, mixed-dtype promotion. Then odd memory layouts and in-place
gradients against fastloss's own contiguous results, a fuzz test of random shapes, strides and special
values run in a subprocess (a crash fails the test instead of killing the run), and a build of the
extensions with a compiler that refuses OpenMP.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastloss as fl
from fastloss._cy import ranking as cy_ranking
from fastloss._cy import triplet as cy_triplet

from _helpers import needs_torch, torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = (np.float32, np.float64)
TORCH_DTYPE = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


# ------------------------------------------------------------------------------------------ helpers
def tensor(a, requires_grad=False):
    """A torch tensor of ``a`` in its own dtype (not upcast: kinks depend on the rounding)."""
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad) if t.is_floating_point() else t


def torch_value_and_grads(name, args, diff, grad_output=None, **kwargs):
    """PyTorch's loss and autograd gradients of the arguments at positions ``diff``."""
    targs = [tensor(a, requires_grad=i in diff) for i, a in enumerate(args)]
    value = getattr(torch.nn.functional, name)(*targs, **kwargs)
    go = torch.ones_like(value) if grad_output is None else torch.as_tensor(grad_output, dtype=value.dtype)
    grads = torch.autograd.grad(value, [targs[i] for i in diff], grad_outputs=go.expand_as(value),
                                allow_unused=True)
    grads = [np.zeros(np.shape(args[i])) if g is None else g.numpy() for g, i in zip(grads, diff)]
    return value.detach().numpy(), grads


DIFF = {"margin_ranking_loss": (0, 1), "hinge_embedding_loss": (0,), "cosine_embedding_loss": (0, 1),
        "triplet_margin_loss": (0, 1, 2)}


def ours(name, args, grad_output=None, **kwargs):
    value, grads = fl.value_and_grad(getattr(fl, name))(*args, grad_output=grad_output, **kwargs)
    return value, (list(grads) if isinstance(grads, tuple) else [grads])


def assert_matches_torch(name, args, grad_output=None, rtol=None, exact=False, **kwargs):
    """fastloss's value and gradients equal PyTorch's (``exact``: bit for bit up to the sign of zero)."""
    value, grads = ours(name, args, grad_output=grad_output, **kwargs)
    tvalue, tgrads = torch_value_and_grads(name, args, DIFF[name], grad_output=grad_output, **kwargs)
    assert np.asarray(value).dtype == tvalue.dtype, f"{name}: dtype {np.asarray(value).dtype} != {tvalue.dtype}"
    dt = np.result_type(tvalue.dtype)
    if rtol is None:
        rtol = 0 if exact else (2e-5 if dt == np.float32 else 1e-10)
    atol = 0 if exact else rtol
    np.testing.assert_allclose(value, tvalue, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{name} value")
    for k, (g, tg, pos) in enumerate(zip(grads, tgrads, DIFF[name])):
        assert g.dtype == np.asarray(args[pos]).dtype and g.shape == np.shape(args[pos])
        np.testing.assert_allclose(g, tg, rtol=rtol, atol=atol * max(1.0, float(np.nanmax(np.abs(tg), initial=0))),
                                   equal_nan=True, err_msg=f"{name} grad {k}")


# ------------------------------------------------------------------------- kinks vs torch autograd
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_margin_ranking_kink_passes_the_gradient(dtype):
    """z = -y (x1 - x2) + margin exactly 0 (and x1 == x2 with margin 0): torch's clamp_min passes it."""
    x1 = np.array([1.5, 1.0, 2.0, 0.25, -3.0], dtype)
    x2 = np.array([1.0, 1.0, 2.5, 0.75, -3.0], dtype)
    y = np.array([1.0, 1.0, -1.0, -1.0, 1.0], dtype)
    for margin in (0.5, 0.0):
        for reduction in ("none", "sum", "mean"):
            assert_matches_torch("margin_ranking_loss", (x1, x2, y), margin=margin, reduction=reduction, exact=True)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_hinge_embedding_kink_and_other_targets(dtype):
    """margin - x exactly 0, for targets -1, 1 and neither (torch adds both terms then)."""
    x = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 2.0, -1.0], dtype)
    y = np.array([-1.0, 1.0, 0.0, 0.5, 2.0, -1.0, 3.0], dtype)
    for reduction in ("none", "sum", "mean"):
        assert_matches_torch("hinge_embedding_loss", (x, y), margin=1.0, reduction=reduction, exact=True)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_embedding_kinks_zero_rows_and_other_targets(dtype):
    """cos exactly equal to margin (orthogonal rows, margin 0), zero rows (only the 1e-12 keeps the
    denominator positive), and targets that are neither 1 nor -1 (loss and gradient 0)."""
    x1 = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype)
    x2 = np.array([[0.0, 2.0], [1.0, 2.0], [0.0, 0.0], [1.0, 3.0], [1.0, -2.0]], dtype)
    y = np.array([-1.0, 1.0, -1.0, -1.0, 0.5], dtype)
    for reduction in ("none", "sum", "mean"):
        assert_matches_torch("cosine_embedding_loss", (x1, x2, y), margin=0.0, reduction=reduction,
                             rtol=1e-6 if dtype == np.float32 else 1e-12)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 1.5, 0.5, 4.0, math.inf])
def test_triplet_zero_distance(dtype, p):
    """Rows where a == p (and a == n) with eps = 0: the distance is exactly 0, where torch's norm
    backward gives the subgradient 0 (masked, or sgn(0) = 0)."""
    a = np.array([[0.0, 0.0], [1.0, -2.0], [0.5, 4.0]], dtype)
    pos = np.array([[0.0, 0.0], [1.0, -2.0], [0.5, 4.0]], dtype)
    neg = np.array([[3.0, 0.0], [1.0, -2.0], [1.5, 0.0]], dtype)
    for margin in (2.0, 0.5):
        assert_matches_torch("triplet_margin_loss", (a, pos, neg), margin=margin, p=p, eps=0.0, reduction="none",
                             rtol=1e-6 if dtype == np.float32 else 1e-12)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_triplet_zero_hinge_passes_the_gradient(dtype, p):
    """margin + d(a, p) - d(a, n) exactly 0 (distances 5 and 10 or 7 and 14, exact for these p):
    torch's clamp_min passes the gradient. (For other p torch's own norm is off by an ulp, e.g.
    ||(5, 0)||_3 = 5.0000005 in float32, so an exact zero is not defined there.)"""
    a = np.array([[0.0, 0.0], [1.0, 1.0]], dtype)
    pos = np.array([[3.0, 4.0] if p == 2.0 else [2.0, 3.0], [1.0, 1.0]], dtype)
    neg = np.array([[6.0, 8.0] if p == 2.0 else [4.0, 6.0], [2.0, 1.0]], dtype)
    dpos = {1.0: 5.0, 2.0: 5.0, math.inf: 3.0}[p]
    dneg = {1.0: 10.0, 2.0: 10.0, math.inf: 6.0}[p]
    for reduction in ("none", "sum"):  # the gradient is (u / d) or u * (1 / d): equal up to an ulp
        assert_matches_torch("triplet_margin_loss", (a, pos, neg), margin=dneg - dpos, p=p, eps=0.0,
                             reduction=reduction, rtol=1e-6 if dtype == np.float32 else 1e-15)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_swap_ties_split_the_gradient(dtype):
    """d(a, n) == d(p, n): torch.minimum's backward sends half of the gradient to each distance."""
    a = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype)
    pos = np.array([[0.0, 0.0], [0.0, -1.0], [2.0, 0.0]], dtype)  # equidistant from n in rows 1 and 2
    neg = np.array([[3.0, 0.0], [2.0, 0.0], [1.5, 0.0]], dtype)
    for p in (2.0, 1.0, math.inf):
        assert_matches_torch("triplet_margin_loss", (a, pos, neg), margin=5.0, p=p, eps=0.0, swap=True,
                             reduction="none", rtol=1e-6 if dtype == np.float32 else 1e-12)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_max_norm_shares_the_gradient_among_ties(dtype):
    """p = inf with several elements attaining the max share the gradient equally, as torch."""
    a = np.zeros((2, 4), dtype)
    pos = np.array([[1.0, -1.0, 0.5, 1.0], [2.0, 0.0, 0.0, 0.0]], dtype)
    neg = np.array([[3.0, 0.0, 3.0, -3.0], [1.0, 1.0, 1.0, 1.0]], dtype)
    assert_matches_torch("triplet_margin_loss", (a, pos, neg), margin=5.0, p=math.inf, eps=0.0, reduction="none")


# --------------------------------------------------------------------------------- p values, swap
P_VALUES = [1.0, 2.0, 3.0, 1.5, 0.5, 0.25, 2.5, 7.0, math.inf]


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_any_p_matches_torch(dtype, p, swap):
    rng = np.random.default_rng(P_VALUES.index(p) + 100 * swap)
    a, pos, neg = (rng.standard_normal((9, 13)).astype(dtype) for _ in range(3))
    g = rng.uniform(0.5, 1.5, 9).astype(dtype)
    for reduction, go in (("none", g), ("mean", None), ("sum", np.asarray(0.7, dtype))):
        assert_matches_torch("triplet_margin_loss", (a, pos, neg), grad_output=go, margin=1.3, p=p, swap=swap,
                             reduction=reduction, rtol=5e-5 if dtype == np.float32 else 1e-9)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_long_rows_and_block_edges(dtype):
    """Rows longer than the kernel's gradient block (512) and lengths around the 8 float64 lanes."""
    rng = np.random.default_rng(3)
    for width in (1, 7, 8, 9, 511, 512, 513, 1500):
        a, pos, neg = (rng.standard_normal((3, width)).astype(dtype) for _ in range(3))
        assert_matches_torch("triplet_margin_loss", (a, pos, neg), margin=2.0, reduction="none",
                             rtol=5e-5 if dtype == np.float32 else 1e-9)


# ------------------------------------------------------------------------------- shapes: 1-D, N-D
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dimensional_and_scalar_inputs(dtype):
    rng = np.random.default_rng(5)
    x = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    y1 = np.where(rng.random(6) < 0.5, -1.0, 1.0).astype(dtype)
    for reduction in ("none", "mean", "sum"):
        assert_matches_torch("margin_ranking_loss", (x(6), x(6), y1), margin=0.2, reduction=reduction)
        assert_matches_torch("margin_ranking_loss", (x(), x(), np.array(-1.0, dtype)), margin=0.2, reduction=reduction)
        assert_matches_torch("hinge_embedding_loss", (x(6), y1), margin=0.7, reduction=reduction)
        assert_matches_torch("hinge_embedding_loss", (x(), np.array(1.0, dtype)), reduction=reduction)
        assert_matches_torch("cosine_embedding_loss", (x(6), x(6), np.array(-1.0, dtype)), margin=-0.5,
                             reduction=reduction)
        assert_matches_torch("triplet_margin_loss", (x(6), x(6), x(6)), margin=3.0, reduction=reduction)
        assert_matches_torch("triplet_margin_loss", (x(), x(), x()), margin=3.0, reduction=reduction)
        assert_matches_torch("triplet_margin_loss", (x(2, 3, 5), x(2, 3, 5), x(2, 3, 5)), margin=1.0,
                             reduction=reduction)


@needs_torch
def test_empty_batches_match_torch():
    e = np.zeros((0, 4))
    for reduction in ("none", "mean", "sum"):
        assert_matches_torch("margin_ranking_loss", (np.zeros(0), np.zeros(0), np.zeros(0)), reduction=reduction)
        assert_matches_torch("hinge_embedding_loss", (np.zeros((0, 3)), np.zeros((0, 3))), reduction=reduction)
        assert_matches_torch("cosine_embedding_loss", (e, e, np.zeros(0)), reduction=reduction)
        assert_matches_torch("triplet_margin_loss", (e, e, e), reduction=reduction)
        # rows of no values: distances 0 (the loss is the margin), cosine 0
        assert_matches_torch("triplet_margin_loss", (np.zeros((3, 0)),) * 3, reduction=reduction)
        assert_matches_torch("cosine_embedding_loss", (np.zeros((2, 0)),) * 2 + (np.array([1.0, -1.0]),),
                             reduction=reduction)


# ---------------------------------------------------------------------------- dtype promotion
@needs_torch
def test_mixed_dtypes_promote_as_torch():
    """float32 with float64 computes in float64; each gradient keeps its input's dtype (torch's
    autograd casts it back); a float64 target promotes margin_ranking_loss but not the others.

    Values agree to float32's precision: torch forms some intermediates of the float32 input in float32
    (a squared norm, a difference) before promoting, fastloss computes all of them in float64 (except
    margin_ranking_loss's x1 - x2, which it forms in float32 as torch does)."""
    rng = np.random.default_rng(7)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    f64 = lambda *s: rng.standard_normal(s)  # noqa: E731
    y32 = np.where(rng.random(5) < 0.5, -1.0, 1.0).astype(np.float32)
    for reduction in ("none", "mean"):
        assert_matches_torch("margin_ranking_loss", (f32(5), f64(5), y32), margin=0.1, reduction=reduction)
        assert_matches_torch("margin_ranking_loss", (f32(5), f32(5), y32.astype(np.float64)), margin=0.1,
                             reduction=reduction)
        assert_matches_torch("margin_ranking_loss", (f64(5), f32(5), y32.astype(np.int64)), reduction=reduction)
        assert_matches_torch("hinge_embedding_loss", (f32(5), y32.astype(np.float64)), reduction=reduction)
        assert_matches_torch("cosine_embedding_loss", (f32(5, 3), f64(5, 3), y32), reduction=reduction, rtol=1e-6)
        assert_matches_torch("cosine_embedding_loss", (f64(5, 3), f32(5, 3), y32.astype(np.int8)),
                             reduction=reduction, rtol=1e-6)
        assert_matches_torch("triplet_margin_loss", (f32(5, 3), f64(5, 3), f32(5, 3)), reduction=reduction,
                             rtol=1e-6)
        assert_matches_torch("triplet_margin_loss", (f64(5, 3), f32(5, 3), f32(5, 3)), p=1.0, swap=True,
                             reduction=reduction, rtol=1e-6)


# ------------------------------------------------------------------- memory layouts and in place
def _layouts(a, rng):
    """The same values as ``a`` in other memory layouts (Fortran, strided, reversed, read-only)."""
    yield np.asfortranarray(a)
    wide = np.zeros(a.shape[:-1] + (3 * a.shape[-1],), a.dtype)
    wide[..., 1::3] = a
    yield wide[..., 1::3]
    rev = np.ascontiguousarray(a[::-1, ::-1] if a.ndim == 2 else a[::-1])
    yield rev[::-1, ::-1] if a.ndim == 2 else rev[::-1]
    ro = a.copy()
    ro.flags.writeable = False
    yield ro


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(DIFF))
def test_any_layout_gives_the_contiguous_result(name, dtype):
    rng = np.random.default_rng(11)
    spec_cases = fl._registry.REGISTRY[name].cases(rng, dtype)
    for case in spec_cases:
        if any(isinstance(a, np.ndarray) and a.ndim < 1 for a in case.args) or not all(
                a.size for a in case.args if isinstance(a, np.ndarray)):
            continue
        v0, g0 = ours(name, case.args, **case.kwargs)
        for variant in zip(*[_layouts(a, rng) for a in case.args]):
            v1, g1 = ours(name, variant, **case.kwargs)
            np.testing.assert_array_equal(v1, v0)
            for a, b in zip(g1, g0):
                assert a.flags.c_contiguous
                np.testing.assert_array_equal(a, b)


def test_broadcast_views_are_read_not_written():
    """Zero-stride (broadcast) inputs are accepted and never written."""
    a = np.broadcast_to(np.arange(4.0), (5, 4))
    p = np.broadcast_to(np.ones(4), (5, 4))
    n = np.arange(20.0).reshape(5, 4)
    value, (ga, gp, gn) = fl.value_and_grad(fl.triplet_margin_loss)(a, p, n, reduction="none")
    value2, grads2 = fl.value_and_grad(fl.triplet_margin_loss)(a.copy(), p.copy(), n, reduction="none")
    np.testing.assert_array_equal(value, value2)
    np.testing.assert_array_equal(ga, grads2[0])
    np.testing.assert_array_equal(a, np.broadcast_to(np.arange(4.0), (5, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_written_into_the_inputs(dtype):
    """out= the inputs themselves: each block is read before its gradients overwrite it."""
    rng = np.random.default_rng(13)
    cases = {
        "margin_ranking_loss": (rng.standard_normal(20000), rng.standard_normal(20000),
                                np.where(rng.random(20000) < 0.5, -1.0, 1.0)),
        "hinge_embedding_loss": (rng.standard_normal(20000), np.where(rng.random(20000) < 0.5, -1.0, 1.0)),
        "cosine_embedding_loss": (rng.standard_normal((300, 70)), rng.standard_normal((300, 70)),
                                  np.where(rng.random(300) < 0.5, -1.0, 1.0)),
        "triplet_margin_loss": tuple(rng.standard_normal((40, 1100)) for _ in range(3)),
    }
    for name, args in cases.items():
        args = tuple(a.astype(dtype) for a in args)
        v0, g0 = ours(name, args, reduction="none")
        inputs = tuple(a.copy() for a in args)
        diff = [inputs[i] for i in DIFF[name]]
        v1, g1 = fl.value_and_grad(getattr(fl, name))(*inputs, reduction="none",
                                                      out=tuple(diff) if len(diff) > 1 else diff[0])
        g1 = list(g1) if isinstance(g1, tuple) else [g1]
        np.testing.assert_array_equal(v1, v0)
        for got, buf, want in zip(g1, diff, g0):
            assert got is buf
            np.testing.assert_array_equal(got, want)


def test_thread_count_does_not_change_the_result():
    """Value and gradients are bit-identical on one and two threads."""
    rng = np.random.default_rng(17)
    a, p, n = (rng.standard_normal((3000, 40)).astype(np.float32) for _ in range(3))
    x1, x2 = rng.standard_normal(200_000), rng.standard_normal(200_000)
    y = np.where(rng.random(200_000) < 0.5, -1.0, 1.0)
    before = fl.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fl.set_num_threads(threads)
            results.append((fl.value_and_grad(fl.triplet_margin_loss)(a, p, n),
                            fl.value_and_grad(fl.margin_ranking_loss)(x1, x2, y)))
    finally:
        fl.set_num_threads(before)
    (t1, m1), (t2, m2) = results
    # one float64 partial per work item, added in a fixed order: bit-identical on any thread count
    np.testing.assert_array_equal(t1[0], t2[0])
    np.testing.assert_array_equal(m1[0], m2[0])
    for a_, b_ in zip(t1[1] + m1[1], t2[1] + m2[1]):
        np.testing.assert_array_equal(a_, b_)


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_any_kernel():
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match="margin must be greater than 0"):
        fl.triplet_margin_loss(a, a, a, margin=0.0)  # torch 2.13 refuses margin <= 0
    with pytest.raises(ValueError, match="margin"):
        fl.triplet_margin_loss(a, a, a, margin=-1.0)
    for p in (0.0, -1.0, -math.inf, float("nan")):  # torch's norm would take p <= 0; fastloss refuses it
        with pytest.raises(ValueError, match="p must be positive"):
            fl.triplet_margin_loss(a, a, a, p=p)
    with pytest.raises(ValueError, match="empty last axis"):  # torch refuses it too (no identity for max)
        fl.triplet_margin_loss(np.zeros((3, 0)), np.zeros((3, 0)), np.zeros((3, 0)), p=math.inf)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        fl.triplet_margin_loss(a, np.zeros((3, 5)), a)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        fl.cosine_embedding_loss(a, a, np.ones(2))
    with pytest.raises(ValueError, match=r"\(N, D\) or \(D,\)"):
        fl.cosine_embedding_loss(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(4,\).*\(1,\)"):
        fl.margin_ranking_loss(np.zeros(4), np.zeros(4), np.ones(1))  # torch would broadcast; fastloss refuses
    with pytest.raises(TypeError):
        fl.margin_ranking_loss(np.zeros(4), np.zeros(4), np.ones(4, dtype=complex))
    with pytest.raises(TypeError):
        fl.hinge_embedding_loss(np.zeros(4, dtype=np.int32), np.ones(4))
    # float16 is accepted (contract §3: computed in float32, returned in float16)
    assert np.asarray(fl.hinge_embedding_loss(np.zeros(4, dtype=np.float16), np.ones(4))).dtype == np.float16


def test_the_extensions_report_their_openmp_build():
    assert isinstance(cy_ranking.openmp_enabled(), bool)
    assert cy_ranking.openmp_enabled() == cy_triplet.openmp_enabled()


# ------------------------------------------------------------------------------------------ fuzz
FUZZ_SCRIPT = textwrap.dedent(
    r'''
    import math, sys, warnings
    import numpy as np
    import fastloss as fl

    try:
        import torch
    except ImportError:
        torch = None
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(int(sys.argv[1]))
    N_CASES = int(sys.argv[2])
    NAMES = ["margin_ranking_loss", "hinge_embedding_loss", "cosine_embedding_loss", "triplet_margin_loss"]
    SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    EXTREMES = [1e30, -1e30, 1e-40, -1e-40, 3e38, 1e-300]

    def values(shape, dtype, kind, scale):
        x = np.asarray(rng.standard_normal(shape) * scale)
        if kind != "plain" and x.size:
            pool = SPECIALS if kind == "special" else EXTREMES
            mask = rng.random(shape) < 0.2
            x[mask] = rng.choice(pool, size=int(mask.sum()))
        with np.errstate(over="ignore", under="ignore"):
            return x.astype(dtype)

    def target(shape, dtype):
        t = np.asarray(rng.choice([-1.0, 1.0, 1.0, -1.0, 0.0, 0.5, np.nan], size=shape))
        if rng.random() < 0.3:  # an integer target of -1, 0 and 1
            return np.nan_to_num(np.trunc(t)).astype(np.int8)
        return t.astype(dtype)

    def layout(a):
        k = rng.integers(4)
        if a.ndim == 0 or k == 0:
            return a
        if k == 1:
            return np.asfortranarray(a)
        if k == 2:
            wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
            wide[..., ::2] = a
            return wide[..., ::2]
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]

    def case():
        name = NAMES[rng.integers(len(NAMES))]
        dtype = [np.float32, np.float64][rng.integers(2)]
        kind = rng.choice(["plain", "special", "extreme"])
        scale = float(rng.choice([1e-3, 1.0, 1e3]))  # one magnitude for all arrays of a case
        kw = {"reduction": str(rng.choice(["none", "mean", "sum"]))}
        rows, width = int(rng.integers(0, 6)), int(rng.integers(0, 9))
        if name in ("margin_ranking_loss", "hinge_embedding_loss"):
            shape = tuple(int(s) for s in rng.integers(0, 5, size=rng.integers(0, 4)))
            xs = [values(shape, dtype, kind, scale) for _ in range(2 if name == "margin_ranking_loss" else 1)]
            args = [*xs, target(shape, dtype)]
            kw["margin"] = float(rng.choice([0.0, 0.5, -1.0, 1.0]))
        elif name == "cosine_embedding_loss":
            shape = (rows, width) if rng.random() < 0.8 else (width,)
            args = [values(shape, dtype, kind, scale), values(shape, dtype, kind, scale), target(shape[:-1], dtype)]
            kw["margin"] = float(rng.choice([0.0, 0.5, -0.5]))
        else:
            shape = (rows, width) if rng.random() < 0.7 else (width,) if rng.random() < 0.5 else (2, rows, width)
            args = [values(shape, dtype, kind, scale) for _ in range(3)]
            p = float(rng.choice([1.0, 2.0, 3.0, 1.5, 0.5, math.inf]))
            if width == 0 and p == math.inf:
                p = 2.0
            kw.update(p=p, swap=bool(rng.random() < 0.5), margin=float(rng.choice([0.5, 1.0, 2.0])),
                      eps=float(rng.choice([1e-6, 0.0])))
        return name, [layout(a) for a in args], kw, kind

    def same(got, want, args):
        """NaN and +-inf exactly where torch has them; finite values equal up to float rounding at the
        scale of the inputs (losses grow with them) and of their inverse (gradients of cosines and of
        norms grow as 1 / |x|, and cancel to much smaller values)."""
        tol = 1e-4 if np.asarray(got).dtype == np.float32 else 1e-9
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if not (np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.isposinf(got), np.isposinf(want))
                and np.array_equal(np.isneginf(got), np.isneginf(want))):
            return False
        flat = np.concatenate([np.abs(np.asarray(a, np.float64)).ravel() for a in args] + [np.abs(want).ravel()])
        flat = flat[np.isfinite(flat) & (flat > 0)]
        scale = max(1.0, float(flat.max()), float(1 / flat.min())) if flat.size else 1.0
        fin = np.isfinite(want)
        return bool(np.allclose(got[fin], want[fin], rtol=tol, atol=tol * scale))

    mismatches = 0
    for i in range(N_CASES):
        name, args, kw, kind = case()
        f = getattr(fl, name)
        value = f(*args, **kw)
        go = rng.uniform(0.5, 1.5, size=np.shape(value)) if rng.random() < 0.5 else None
        value2, grads = fl.value_and_grad(f)(*args, grad_output=go, **kw)
        assert np.array_equal(np.asarray(value), np.asarray(value2), equal_nan=True), (name, kw)
        grads = grads if isinstance(grads, tuple) else (grads,)
        for g, a in zip(grads, args):
            assert g.shape == a.shape and g.dtype == a.dtype, (name, g.shape, a.shape)
        if torch is None or kind == "extreme":
            continue  # float64 accumulation keeps finite what torch's float32 sums overflow or flush
        targs = [torch.from_numpy(np.array(a, order="C")) for a in args]
        diff = {"margin_ranking_loss": 2, "hinge_embedding_loss": 1, "cosine_embedding_loss": 2,
                "triplet_margin_loss": 3}[name]
        for t in targs[:diff]:
            t.requires_grad_(True)
        tval = getattr(torch.nn.functional, name)(*targs, **kw)
        tgo = torch.ones_like(tval) if go is None else torch.as_tensor(go, dtype=tval.dtype)
        tgrads = torch.autograd.grad(tval, targs[:diff], grad_outputs=tgo, allow_unused=True)
        ok = same(value, tval.detach().numpy(), args)
        for g, tg in zip(grads, tgrads):
            ok &= same(g, np.zeros(g.shape) if tg is None else tg.numpy(), args)
        if not ok:
            mismatches += 1
            print("MISMATCH", name, kind, kw, [a.shape for a in args], [a.dtype for a in args])
            print("  args", [a.tolist() for a in args])
            print("  ours", np.asarray(value).tolist(), [g.tolist() for g in grads])
            print("  torch", tval.detach().numpy().tolist(), [None if t is None else t.tolist() for t in tgrads])
    print("cases", N_CASES, "mismatches", mismatches)
    sys.exit(1 if mismatches else 0)
    '''
)


def test_fuzz_random_shapes_strides_and_values_never_crash(tmp_path):
    """Random shapes (empty included), layouts, dtypes, options and values (NaN, inf, huge, tiny) in a
    subprocess: a crash of the process fails this test. Where torch's float32 arithmetic has no
    overflow or flush to zero of its own, value and gradients must equal torch's, NaN for NaN."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ_SCRIPT)
    # the fastloss under test (the installed one in CI, the source tree in a developer's checkout)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fl.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), "2024", "400"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


# ------------------------------------------------------------------------- build without OpenMP
REFUSING_CC = """#!/bin/sh
# A C compiler that refuses OpenMP, as Apple's clang without libomp does.
for arg in "$@"; do
  case "$arg" in
    *openmp*) echo "refusing-cc: unsupported option '$arg'" >&2; exit 1 ;;
  esac
done
exec {cc} "$@"
"""


@pytest.mark.slow
def test_build_without_openmp_runs_serially(tmp_path):
    """Build the extensions with a compiler wrapper that fails on -fopenmp: the build must succeed,
    say so in one line, and the serial kernels must compute the same losses."""
    import sysconfig

    src = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "fastloss"), src / "fastloss",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.html"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if os.path.exists(os.path.join(REPO, name)):
            shutil.copy(os.path.join(REPO, name), src / name)
    real_cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    cc = tmp_path / "refusing-cc"
    cc.write_text(REFUSING_CC.format(cc=shutil.which(real_cc) or real_cc))
    cc.chmod(0o755)
    env = dict(os.environ, CC=str(cc))  # distutils links with CC too
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    lines = [ln for ln in build.stdout.splitlines() if "does not accept OpenMP" in ln]
    assert len(lines) == 1, build.stdout[-3000:]

    check = textwrap.dedent(
        """
        import numpy as np, fastloss as fl
        from fastloss._cy import ranking, triplet
        assert not ranking.openmp_enabled() and not triplet.openmp_enabled()
        assert ranking.__file__.startswith(%r)
        fl.set_num_threads(2)
        rng = np.random.default_rng(0)
        a, p, n = (rng.standard_normal((3000, 30)) for _ in range(3))
        v, g = fl.value_and_grad(fl.triplet_margin_loss)(a, p, n)
        from fastloss.families.triplet import triplet_margin_ref
        rv, rg = triplet_margin_ref(a, p, n)
        np.testing.assert_allclose(v, rv, rtol=1e-12)
        for x, y in zip(g, rg):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-15)
        x1, x2 = rng.standard_normal(100000), rng.standard_normal(100000)
        y = np.where(rng.random(100000) < 0.5, -1.0, 1.0)
        np.testing.assert_allclose(fl.margin_ranking_loss(x1, x2, y, margin=0.3),
                                   np.maximum(0, -y * (x1 - x2) + 0.3).mean(), rtol=1e-12)
        print("serial ok")
        """
    ) % str(src)
    run = subprocess.run([sys.executable, "-c", check], cwd=src, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(src)))
    assert run.returncode == 0 and "serial ok" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
