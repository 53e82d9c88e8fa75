"""The row kernels of the CUDA softmax, ranking and triplet families, path by path.

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run with small constants (4-lane
"warps", 16-thread rows, a 4-element register cache), so small inputs reach every path: several rows
per warp with masked rows past the end, one block per row, rows longer than the cache (the tail read
twice), the class axis not last, and the shared-memory stand-ins of the warp shuffles. A last test
compiles the kernels for real GPUs (sm_75, sm_80, sm_90) in a process without the simulator and
reads the PTX for warp shuffles, float32 ``ex2.approx`` and the absence of local-memory arrays.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import needs_device, needs_nvvm, ptx_report

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"



def _modules():
    from numba import cuda

    import fastloss as fl
    from fastloss.families import ranking, softmax, triplet

    return cuda, fl, softmax.REFERENCE, ranking.REFERENCE, triplet.REFERENCE


def _close(actual, expected, dtype, what):
    from _helpers import assert_close

    assert_close(np.asarray(actual.copy_to_host() if hasattr(actual, "copy_to_host") else actual),
                 expected, dtype, what)


DTYPES = (np.float32, np.float64)


# --------------------------------------------------------------------------------------------------
# Softmax family
# --------------------------------------------------------------------------------------------------
@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 300), (7, 3), (50, 5), (5, 12), (300,), (3, 9, 2), (2, 70, 3)])
@pytest.mark.parametrize("name", ["log_softmax", "softmax"])
def test_softmax_paths(name, shape, dtype):
    """Long rows (tail), short rows (several per warp, 50 rows over 3 blocks), 1-D, class axis not last."""
    cuda, fl, ref, _, _ = _modules()
    rng = np.random.default_rng(11)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    axis = 1 if len(shape) > 1 else 0
    value, grad = fl.value_and_grad(getattr(fl, name))(cuda.to_device(x), axis, grad_output=cuda.to_device(g))
    ref_value, (ref_grad,) = ref[name](x.astype(np.float64), axis, grad_output=g.astype(np.float64))
    _close(value, ref_value, dtype, "value")
    _close(grad, ref_grad, dtype, "gradient")


@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 300), (50, 3), (6, 12), (4, 9, 2), (5,), (2, 70)])
@pytest.mark.parametrize("options", [
    dict(),
    dict(label_smoothing=0.2, reduction="sum"),
    dict(weight=True, ignore_index=1, reduction="none"),
    dict(weight=True, label_smoothing=0.1),
    dict(probabilities=True, weight=True, label_smoothing=0.05, reduction="none"),
    dict(probabilities=True),
])
def test_cross_entropy_paths(options, shape, dtype):
    cuda, fl, ref, _, _ = _modules()
    rng = np.random.default_rng(12)
    options = dict(options)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    if options.pop("probabilities", False):
        t = np.moveaxis(rng.dirichlet(np.ones(C), size=np.prod(shape) // C).reshape(
            (shape[0],) + shape[2:] + (C,) if len(shape) > 1 else (C,)), -1, 1 if len(shape) > 1 else 0).astype(dtype)
    else:
        t = rng.integers(0, C, size=(shape[0],) + shape[2:] if len(shape) > 1 else ())
        t = np.asarray(t)
    w = rng.uniform(0.3, 2.0, C).astype(dtype) if options.pop("weight", False) else None
    kw = dict(options)
    dev_kw = dict(kw, weight=cuda.to_device(w)) if w is not None else kw
    host_kw = dict(kw, weight=w.astype(np.float64)) if w is not None else kw
    value, grad = fl.value_and_grad(fl.cross_entropy)(cuda.to_device(x), cuda.to_device(np.array(t, order="C")), **dev_kw)
    t64 = t.astype(np.float64) if t.dtype.kind == "f" else t
    ref_value, (ref_grad,) = ref["cross_entropy"](x.astype(np.float64), t64, **host_kw)
    _close(value, ref_value, dtype, "value")
    _close(grad, ref_grad, dtype, "gradient")
    only_value = fl.cross_entropy(cuda.to_device(x), cuda.to_device(np.array(t, order="C")), **dev_kw)
    _close(only_value, ref_value, dtype, "value without gradient")


@needs_device
def test_masked_logits_and_nan_rows():
    """-inf logits (masking) add nothing, even where a thread sees only -inf; an all -inf row and a
    NaN give NaN, as in PyTorch."""
    cuda, fl, ref, _, _ = _modules()
    rng = np.random.default_rng(13)
    for C in (5, 300):
        x = rng.standard_normal((4, C))
        x[0, 1:] = -np.inf  # only class 0 finite: threads holding only -inf
        x[1, ::2] = -np.inf
        x[2, :] = -np.inf
        x[3, C // 2] = np.nan
        y = fl.log_softmax(cuda.to_device(x), 1).copy_to_host()
        with np.errstate(invalid="ignore"):
            expected = x - np.log(np.sum(np.exp(x - np.max(np.where(np.isnan(x), -np.inf, x), 1, keepdims=True)),
                                         1, keepdims=True)) - np.max(np.where(np.isnan(x), -np.inf, x), 1, keepdims=True)
        np.testing.assert_allclose(y[:2], expected[:2], rtol=1e-12)
        assert np.isnan(y[2]).all() and np.isnan(y[3]).all()
        t = np.array([0, 1, 0, 0])
        loss = fl.cross_entropy(cuda.to_device(x), cuda.to_device(t), reduction="none").copy_to_host()
        assert loss[0] == 0.0 and np.isclose(loss[1], -expected[1, 1])
        assert np.isnan(loss[2]) and np.isnan(loss[3])


@needs_device
@pytest.mark.parametrize("shape", [(6, 300), (40, 3), (3, 5, 4)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nll_paths(shape, reduction):
    cuda, fl, ref, _, _ = _modules()
    rng = np.random.default_rng(14)
    x = rng.standard_normal(shape)
    t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    t.flat[0] = -100
    w = rng.uniform(0.5, 1.5, shape[1])
    kw = dict(weight=w, reduction=reduction)
    value, grad = fl.value_and_grad(fl.nll_loss)(cuda.to_device(x), cuda.to_device(t),
                                                 **dict(kw, weight=cuda.to_device(w)))
    ref_value, (ref_grad,) = ref["nll_loss"](x, t, **kw)
    _close(value, ref_value, np.float64, "value")
    _close(grad, ref_grad, np.float64, "gradient")
    _close(fl.nll_loss(cuda.to_device(x), cuda.to_device(t), **dict(kw, weight=cuda.to_device(w))),
           ref_value, np.float64, "value alone")


@needs_device
def test_gradient_in_place_long_rows():
    """``out=input`` with rows longer than the cache: the tail is read again after the first pass."""
    cuda, fl, ref, _, _ = _modules()
    rng = np.random.default_rng(15)
    x = rng.standard_normal((3, 300))
    t = np.array([299, 0, 150])
    dx = cuda.to_device(x)
    value, grad = fl.value_and_grad(fl.cross_entropy)(dx, cuda.to_device(t), label_smoothing=0.1, out=dx)
    ref_value, (ref_grad,) = ref["cross_entropy"](x, t, label_smoothing=0.1)
    _close(value, ref_value, np.float64, "value")
    _close(dx, ref_grad, np.float64, "gradient over the input")


# --------------------------------------------------------------------------------------------------
# Ranking and triplet rows
# --------------------------------------------------------------------------------------------------
@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(11, 3), (5, 9), (1, 1), (7,)])
def test_cosine_embedding_rows(shape, dtype):
    cuda, fl, _, ref, _ = _modules()
    rng = np.random.default_rng(16)
    a, b = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    y = rng.choice([-1.0, 1.0], size=shape[:-1]).astype(dtype)
    for reduction in ("mean", "none"):
        value, (ga, gb) = fl.value_and_grad(fl.cosine_embedding_loss)(
            cuda.to_device(a), cuda.to_device(b), cuda.to_device(np.array(y)), margin=-0.2, reduction=reduction)
        ref_value, (ra, rb) = ref["cosine_embedding_loss"](a.astype(np.float64), b.astype(np.float64),
                                                           y.astype(np.float64), margin=-0.2, reduction=reduction)
        _close(value, ref_value, dtype, "value")
        _close(ga, ra, dtype, "gradient 1")
        _close(gb, rb, dtype, "gradient 2")


@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 5), (3, 1), (4, 13)])
@pytest.mark.parametrize("p,swap", [(2.0, False), (2.0, True), (1.0, True), (np.inf, False), (np.inf, True), (1.5, False), (3.0, True)])
def test_triplet_rows(shape, p, swap, dtype):
    cuda, fl, _, _, ref = _modules()
    rng = np.random.default_rng(17)
    a, pos, neg = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    if np.isinf(p):
        pos[0] = a[0] + 0.5  # ties for the max/min norm, spread over several lanes
    value, grads = fl.value_and_grad(fl.triplet_margin_loss)(
        cuda.to_device(a), cuda.to_device(pos), cuda.to_device(neg), margin=0.5, p=p, swap=swap, reduction="sum")
    ref_value, ref_grads = ref["triplet_margin_loss"](a.astype(np.float64), pos.astype(np.float64),
                                                      neg.astype(np.float64), margin=0.5, p=p, swap=swap,
                                                      reduction="sum")
    _close(value, ref_value, dtype, "value")
    for got, want in zip(grads, ref_grads):
        _close(got, want, dtype, "gradient")


@needs_device
@pytest.mark.parametrize("name", ["margin_ranking_loss", "hinge_embedding_loss"])
def test_elementwise_float32_in_float32(name):
    cuda, fl, _, ref, _ = _modules()
    rng = np.random.default_rng(18)
    x1, x2 = rng.standard_normal(40).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    y = rng.choice([-1.0, 1.0], size=40).astype(np.float32)
    args = (x1, x2, y) if name == "margin_ranking_loss" else (x1, y)
    g = rng.uniform(0.5, 1.5, 40).astype(np.float32)
    value, grads = fl.value_and_grad(getattr(fl, name))(*(cuda.to_device(v) for v in args), margin=0.3,
                                                        reduction="none", grad_output=cuda.to_device(g))
    ref_value, ref_grads = ref[name](*(v.astype(np.float64) for v in args), margin=0.3, reduction="none",
                                     grad_output=g.astype(np.float64))
    _close(value, ref_value, np.float32, "value")
    grads = grads if isinstance(grads, tuple) else (grads,)
    for got, want in zip(grads, ref_grads):
        _close(got, want, np.float32, "gradient")


# --------------------------------------------------------------------------------------------------
# The reductions themselves
# --------------------------------------------------------------------------------------------------
@needs_device
def test_group_and_block_reductions():
    """Sums and maxima over groups of 1..WARP lanes and over the block, NaN ignored by the max."""
    cuda, _, _, _, _ = _modules()
    from _reduce_kernels import reduce_all

    from fastloss import _cuda_reduce as R

    threads = R.MAX_THREADS
    rng = np.random.default_rng(19)
    v = rng.standard_normal(threads)
    v[3] = np.nan
    G = 1
    while G <= R.WARP:
        sums, maxes, bsum, bmax = reduce_all(v, G, threads)
        groups = v.reshape(-1, G)
        np.testing.assert_allclose(sums, np.repeat(groups.sum(1), G), rtol=1e-12, equal_nan=True)
        expect_max = np.repeat(np.array([np.nanmax(gr) if not np.isnan(gr).all() else np.nan for gr in groups]), G)
        np.testing.assert_array_equal(maxes, expect_max)
        assert np.isnan(bsum).all() and (bmax == np.nanmax(v)).all()
        G *= 2


# --------------------------------------------------------------------------------------------------
# Real targets: compile and read the PTX (no GPU needed)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_nvvm
def test_row_kernels_compile_for_real_gpus():
    report = ptx_report("ptx_rows.py")
    assert report, "nothing compiled"
    for name, facts in report.items():
        assert facts["shfl"] > 0, f"{name}: no shfl.sync"
        assert facts["local"] == 0, f"{name}: a local-memory array (the register cache did not unroll)"
        if name.startswith(("softmax_rows", "ce_rows")) and "float32" in name:
            assert facts["ex2_f32"] > 0, f"{name}: no float32 ex2.approx"
        if not name.startswith("softmax_rows"):
            # the final sum in the same launch: a fenced partial, a ticket, partials read through L2
            assert facts["ticket"] > 0 and facts["fence"] > 0 and facts["ld_cg"] > 0, (name, facts)


@needs_device
def test_scratch_is_per_thread():
    """Partial-sum scratch is reused by later calls of one thread, never shared between threads: two
    threads launching on one stream interleave their kernels, and would read each other's sums."""
    import threading

    cuda, _, _, _, _ = _modules()
    from fastloss import _cuda_reduce as R

    like = cuda.to_device(np.zeros(4, np.float32))
    mine = R.scratch(5, like, "parts")
    assert R.scratch(5, like, "parts") is mine
    assert R.scratch(5, like, "other role") is not mine
    seen = []
    worker = threading.Thread(target=lambda: seen.append(R.scratch(5, like, "parts")))
    worker.start()
    worker.join()
    assert seen and seen[0] is not mine
