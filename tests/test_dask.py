"""The Dask backend: every registered loss and its gradients on Dask arrays, against the in-memory call.

Skipped cleanly without Dask (``pip install ".[dask]"``).
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

from _helpers import SEED, case_params

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import fastloss as fl  # noqa: E402
from fastloss._registry import REGISTRY  # noqa: E402

CASES = case_params()
SHARED = {"weight", "pos_weight", "linear_weight", "linear_bias", "labels"}


def rows(n, k):
    """``n`` rows cut into ``k`` chunks as even as Dask allows (empty chunks where n < k are avoided)."""
    k = max(1, min(k, n))
    base, extra = divmod(n, k)
    return tuple(base + (i < extra) for i in range(k))


def as_dask(spec, case, k, *, all_arrays=True):
    """The case's array arguments as Dask arrays cut into ``k`` chunks along axis 0 (others whole).

    Every array whose length along axis 0 is the first argument's is chunked alike; with
    ``all_arrays=False`` only the first argument is a Dask array (the others are cut to match).
    """
    names = list(inspect.signature(spec.fn).parameters)
    bound = dict(zip(names, case.args))
    bound.update(case.kwargs)
    first = bound[names[0]]
    if not isinstance(first, np.ndarray) or first.ndim == 0:
        lead = None
    else:
        lead = first.shape[0]
    out = {}
    for name, a in bound.items():
        if isinstance(a, np.ndarray) and name not in SHARED and (all_arrays or name == names[0]):
            if a.ndim and lead is not None and a.shape[0] == lead and lead > 0:
                a = da.from_array(a, chunks=(rows(lead, k),) + tuple((n,) for n in a.shape[1:]))
            elif name == names[0]:
                a = da.from_array(a, chunks=a.shape)
        out[name] = a
    return out


def grad_output_for(value, rng):
    if np.ndim(value) == 0:
        return 0.75
    return rng.standard_normal(np.shape(value))


def check(actual, expected, dtype, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    rtol = 1e-12 if np.dtype(dtype) == np.float64 else 2e-6
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_every_loss_and_gradient_on_dask_matches_in_memory(spec, dtype, case):
    rng = np.random.default_rng(SEED)
    expected = spec.fn(*case.args, **case.kwargs)
    g = grad_output_for(expected, rng)
    exp_value, exp_grads = fl.value_and_grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    if not isinstance(exp_grads, tuple):
        exp_grads = (exp_grads,)
    with dask.config.set(scheduler="sync"):
        for k in (1, 2, 3):
            kw = as_dask(spec, case, k, all_arrays=k != 2)
            value = spec.fn(**kw)
            assert isinstance(value, da.Array)
            gk = g if k != 3 or np.ndim(g) == 0 else da.from_array(np.asarray(g), chunks=np.shape(g))
            value2, grads = fl.value_and_grad(spec.fn)(**kw, grad_output=gk)
            if not isinstance(grads, tuple):
                grads = (grads,)
            assert all(isinstance(x, da.Array) for x in grads)
            v, v2, gs = dask.compute(value, value2, grads)
            assert v.dtype == expected.dtype and v.shape == np.shape(expected)
            check(v, expected, dtype, f"value, {k} chunks")
            check(v2, exp_value, dtype, f"value_and_grad value, {k} chunks")
            for i, (a, b) in enumerate(zip(gs, exp_grads)):
                assert a.dtype == b.dtype
                check(a, b, dtype, f"gradient {i}, {k} chunks")
            for d, gr in zip(spec.diff, grads):
                if d in kw and isinstance(kw[d], da.Array):
                    assert gr.chunks == kw[d].chunks, "gradients are chunked like their inputs"


CLASS_AXIS = {"cross_entropy", "nll_loss", "log_softmax", "softmax", "kl_div"}


def class_axis(spec, case, x):
    if spec.name in ("log_softmax", "softmax"):
        names = list(inspect.signature(spec.fn).parameters)
        bound = dict(zip(names, case.args))
        bound.update(case.kwargs)
        axis = bound.get("dim") if bound.get("dim") is not None else bound.get("axis", -1)
        return int(axis) % x.ndim
    if spec.name == "kl_div":
        return x.ndim - 1
    return 0 if x.ndim == 1 else 1


@pytest.mark.parametrize("spec,dtype,case", case_params(lambda s: s.name in CLASS_AXIS))
def test_class_axis_may_be_chunked(spec, dtype, case):
    """The classes cut into 2 and 3 chunks (and the batch into 2): no rechunking, same values and gradients."""
    x = case.args[0]
    if x.ndim == 0 or x.shape[class_axis(spec, case, x)] < 2:
        pytest.skip("fewer than 2 classes")
    ax = class_axis(spec, case, x)
    rng = np.random.default_rng(SEED)
    expected = spec.fn(*case.args, **case.kwargs)
    g = grad_output_for(expected, rng)
    exp_value, exp_grad = fl.value_and_grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    with dask.config.set(scheduler="sync"):
        for k in (2, 3):
            chunks = [(n,) for n in x.shape]
            chunks[ax] = rows(x.shape[ax], k)
            if ax != 0 and x.shape[0] >= 2:
                chunks[0] = rows(x.shape[0], 2)
            args = [da.from_array(x, chunks=tuple(chunks))]
            for a in case.args[1:]:  # probability targets and kl_div's targets: chunked alike
                if isinstance(a, np.ndarray) and a.shape == x.shape and a.dtype.kind == "f":
                    a = da.from_array(a, chunks=tuple(chunks))
                args.append(a)
            value, grad = fl.value_and_grad(spec.fn)(*args, grad_output=g, **case.kwargs)
            assert grad.chunks == args[0].chunks
            v, gr = dask.compute(value, grad)
            check(v, exp_value, dtype, f"value, {k} class chunks")
            check(gr, exp_grad, dtype, f"gradient, {k} class chunks")


def test_cross_entropy_class_chunks_are_not_merged():
    """With chunked classes no task ever sees a whole row: the graph holds no rechunk."""
    x = da.random.default_rng(0).standard_normal((8, 12), chunks=(4, 4))
    t = np.arange(8) % 12
    value, grad = fl.value_and_grad(fl.cross_entropy)(x, t)
    names = {k[0] if isinstance(k, tuple) else k for k in dict(grad.__dask_graph__())}
    assert not any("rechunk" in str(n) for n in names)


def counting(calls):
    def block(b):
        calls.append(1)
        return b
    return block


@pytest.mark.parametrize("name", ["mse_loss", "cross_entropy", "rmse_loss", "log_loss", "triplet_margin_loss"])
def test_nothing_is_computed_before_compute(name):
    spec = REGISTRY[name]
    case = spec.cases(np.random.default_rng(SEED), np.float64)[0]
    kw = as_dask(spec, case, 2)
    calls = []
    kw = {k: v.map_blocks(counting(calls), dtype=v.dtype, meta=np.empty((0,) * v.ndim, v.dtype))
          if isinstance(v, da.Array) else v for k, v in kw.items()}
    value, grads = fl.value_and_grad(spec.fn)(**kw)
    assert calls == [], "a loss call computed chunks"
    dask.compute(value, grads, scheduler="sync")
    assert calls


def poisoned(a):
    def boom(b):
        raise AssertionError("computed")
    return da.from_array(a, chunks=(2,) + a.shape[1:]).map_blocks(boom, dtype=a.dtype,
                                                                  meta=np.empty((0,) * a.ndim, a.dtype))


def test_checks_run_before_anything_is_computed():
    x = poisoned(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="reduction"):
        fl.mse_loss(x, np.zeros((4, 3)), reduction="bogus")
    with pytest.raises(ValueError):
        fl.mse_loss(x, np.zeros((4, 2)))
    with pytest.raises(ValueError):
        fl.mse_loss(x, np.zeros((5, 3)))
    with pytest.raises(TypeError):
        fl.mse_loss(poisoned(np.zeros((4, 3), dtype=np.int64)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        fl.cross_entropy(x, np.zeros(4, dtype=np.int64), weight=np.ones(4))
    with pytest.raises(ValueError, match=r"input \(4, 3\)"):  # probabilities of the wrong shape
        fl.cross_entropy(x, np.zeros(4))
    with pytest.raises(ValueError):
        fl.triplet_margin_loss(x, x, x, margin=-1.0)
    with pytest.raises(ValueError):
        fl.value_and_grad(fl.mse_loss)(x, np.zeros((4, 3)), grad_output=np.ones(3))
    fl.value_and_grad(fl.cross_entropy)(x, np.zeros(4, dtype=np.int64), label_smoothing=0.1)  # builds, lazily


def test_class_index_out_of_range_raises_at_compute():
    x = da.from_array(np.zeros((4, 3)), chunks=(2, 3))
    value = fl.cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(IndexError):
        value.compute(scheduler="sync")


def test_chunks_that_do_not_line_up_are_a_value_error():
    x = da.from_array(np.zeros((6, 3)), chunks=(3, 3))
    t = da.from_array(np.zeros((6, 3)), chunks=(2, 3))
    with pytest.raises(ValueError, match="line up"):
        fl.mse_loss(x, t)
    with pytest.raises(ValueError, match="line up"):
        fl.cross_entropy(x, da.from_array(np.zeros(6, dtype=np.int64), chunks=2))
    with pytest.raises(ValueError, match="line up"):
        fl.margin_ranking_loss(x, x, t)


def test_in_memory_arguments_are_cut_to_match():
    x = np.random.default_rng(1).standard_normal((7, 5))
    t = np.random.default_rng(2).standard_normal((7, 5))
    X = da.from_array(x, chunks=(3, 2))
    v, g = fl.value_and_grad(fl.huber_loss)(X, t, reduction="none", grad_output=t)
    assert v.chunks == X.chunks and g.chunks == X.chunks
    v2, g2 = fl.value_and_grad(fl.huber_loss)(x, t, reduction="none", grad_output=t)
    np.testing.assert_array_equal(v.compute(), v2)
    np.testing.assert_array_equal(g.compute(), g2)


def test_out_buffers_are_refused():
    x = da.zeros((4,), chunks=2)
    with pytest.raises(TypeError, match="out="):
        fl.value_and_grad(fl.mse_loss)(x, np.zeros(4), out=np.empty(4))


def test_float32_sums_are_exact_to_float32_rounding():
    """A float32 mean over many chunks: float64 partials, one rounding at the end."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000).astype(np.float32)
    t = rng.standard_normal(200_000).astype(np.float32)
    ref = float(np.mean((x.astype(np.float64) - t) ** 2))
    got = float(fl.mse_loss(da.from_array(x, chunks=7_001), t).compute())
    assert got == np.float32(ref) or abs(got - ref) <= 1.2e-7 * ref


@pytest.mark.parametrize("name", ["cross_entropy", "mse_loss", "triplet_margin_loss"])
def test_float16_chunks(name):
    """float16 Dask arrays: float16 results equal to the in-memory float16 call (both sum the chunks'
    float64 partials of float32 kernels, and round once)."""
    spec = REGISTRY[name]
    case = spec.cases(np.random.default_rng(SEED), np.float16)[0]
    value, grads = fl.value_and_grad(spec.fn)(**as_dask(spec, case, 3))
    mem_value, mem_grads = fl.value_and_grad(spec.fn)(*case.args, **case.kwargs)
    assert value.dtype == np.float16
    value, grads = dask.compute(value, grads)
    np.testing.assert_allclose(np.float64(value), np.float64(mem_value), rtol=2.0 ** -10)
    for g, m in zip(grads if isinstance(grads, tuple) else (grads,),
                    mem_grads if isinstance(mem_grads, tuple) else (mem_grads,)):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float64), m.astype(np.float64), rtol=2.0 ** -10, atol=2.0 ** -20)


def test_import_fastloss_imports_no_dask():
    code = ("import sys, numpy as np, fastloss as fl; fl.mse_loss(np.ones(3), np.zeros(3)); "
            "fl.value_and_grad(fl.cross_entropy)(np.ones((2, 3)), np.zeros(2, dtype=int)); "
            "assert not [m for m in sys.modules if m == 'dask' or m.startswith('dask.')], 'dask imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


def _env():
    import os

    import fastloss

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(fastloss.__file__))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_local_cluster_of_processes():
    """Two worker processes of one thread: the graph pickles, each worker loads the kernels itself."""
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 9)).astype(np.float32)
    t = rng.integers(0, 9, 40)
    w = rng.random(9).astype(np.float32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        X = da.from_array(x, chunks=(10, 5))
        vg = fl.value_and_grad(fl.cross_entropy)
        value, grad = vg(X, t, weight=w, label_smoothing=0.1)
        rows_value, rows_grad = vg(da.from_array(x, chunks=(10, 9)), t, weight=w)
        pen = fl.l2_penalty(X, lam=0.5)
        (v, g, rv, rg, p) = client.compute([value, grad, rows_value, rows_grad, pen], sync=True)
        workers = client.run(lambda: __import__("os").getpid())
    ev, eg = vg(x, t, weight=w, label_smoothing=0.1)
    check(v, ev, np.float32, "value")
    check(g, eg, np.float32, "gradient")
    ev, eg = vg(x, t, weight=w)
    check(rv, ev, np.float32, "value")
    check(rg, eg, np.float32, "gradient")
    check(p, fl.l2_penalty(x, lam=0.5), np.float32, "penalty")
    assert len(set(workers.values())) == 2


def test_larger_than_memory_example_runs_tiny(tmp_path):
    pytest.importorskip("zarr")
    example = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "dask_larger_than_memory.py"
    for store in (str(tmp_path / "g.zarr"), "none"):
        out = subprocess.run([sys.executable, str(example), "--rows", "900", "--classes", "17", "--chunk-rows", "250",
                              "--label-smoothing", "0.1", "--store", store, "--check"],
                             check=True, env=_env(), capture_output=True, text=True).stdout
        assert "check: equal to the in-memory call" in out


def test_throughput_bench_runs_tiny():
    """benches/dask_throughput.py at a tiny size: every path of every loss runs, and the script's own
    check (each path's value equal to the direct call's) holds."""
    bench = __import__("pathlib").Path(__file__).resolve().parents[1] / "benches" / "dask_throughput.py"
    if not bench.exists():
        pytest.skip("benches/ is not beside the tests")
    out = subprocess.run([sys.executable, str(bench), "--gib", "0.002", "--chunk-mb", "1", "--classes", "64",
                          "--repeat", "1"], check=True, env=_env(), capture_output=True, text=True).stdout
    assert out.count("of direct") == 15, out
    assert out.count("3 chunks of 1 MiB") == 3 and "Dask / direct throughput" in out, out  # 2.1 MB each


def _cupy():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU")
    except Exception as exc:  # CuPy without a driver
        pytest.skip(f"no GPU: {exc!r}")
    return cupy


@pytest.mark.cupy
def test_cupy_chunks_stay_on_the_gpu():
    """CuPy-backed chunks: CuPy metas, CuPy results and gradients, the in-memory CuPy values."""
    cupy = _cupy()
    rng = np.random.default_rng(5)
    x = cupy.asarray(rng.standard_normal((64, 10)).astype(np.float32))
    t = cupy.asarray(rng.integers(0, 10, 64))
    y = cupy.asarray(rng.standard_normal((64, 10)).astype(np.float32))
    X = da.from_array(x, chunks=(16, 10), asarray=False)
    Xc = da.from_array(x, chunks=(16, 5), asarray=False)  # chunked classes: merged for CuPy
    T = da.from_array(t, chunks=16, asarray=False)
    for f, args, kw in [(fl.cross_entropy, (t,), {"label_smoothing": 0.1}), (fl.mse_loss, (y,), {}),
                        (fl.mse_loss, (y,), {"reduction": "none"}), (fl.log_softmax, (), {})]:
        for xx in (X, Xc):
            dargs = (T,) if f is fl.cross_entropy else args
            value, grad = fl.value_and_grad(f)(xx, *dargs, **kw)
            assert isinstance(value._meta, cupy.ndarray) and isinstance(grad._meta, cupy.ndarray)
            v, g = dask.compute(value, grad, scheduler="sync")
            assert isinstance(v, cupy.ndarray) and isinstance(g, cupy.ndarray)
            ev, eg = fl.value_and_grad(f)(x, *args, **kw)
            np.testing.assert_allclose(cupy.asnumpy(v), cupy.asnumpy(ev), rtol=2e-6, atol=1e-6)
            np.testing.assert_allclose(cupy.asnumpy(g), cupy.asnumpy(eg), rtol=2e-6, atol=1e-6)


def test_a_loss_the_tables_do_not_name_is_laid_out_from_its_signature():
    """A newly registered loss works on Dask arrays without Dask code of its own: axis 0 of the arrays
    as long as the first is the batch, ``linear_weight`` travels whole and its gradient is summed."""
    from fastloss._registry import loss

    def toy_linear_mse(input, linear_weight, target, reduction="mean", *, _grad=None):
        x, w, t = np.asarray(input), np.asarray(linear_weight), np.asarray(target)
        if x.shape[-1] != w.shape[1] or t.shape != x.shape[:-1] + (w.shape[0],):
            raise ValueError(f"shapes {x.shape}, {w.shape}, {t.shape} do not fit")
        if reduction not in ("none", "sum", "mean"):
            raise ValueError("reduction must be 'none', 'sum' or 'mean'")
        r = x @ w.T - t
        lo = r * r
        value = lo if reduction == "none" else np.array(lo.sum() / (lo.size if reduction == "mean" else 1), x.dtype)
        if _grad is None:
            return value
        g = _grad.array(lo.shape, x.dtype) if reduction == "none" else _grad.scalar() / (lo.size if reduction == "mean" else 1)
        d = 2 * r * g
        return value, (d @ w, d.T @ x)

    try:
        f = loss(diff=("input", "linear_weight"), family="pointwise")(toy_linear_mse)
        rng = np.random.default_rng(6)
        x, w, t = rng.standard_normal((9, 4)), rng.standard_normal((3, 4)), rng.standard_normal((9, 3))
        for reduction in ("mean", "sum", "none"):
            go = rng.standard_normal((9, 3)) if reduction == "none" else 0.5
            ev, (gx, gw) = fl.value_and_grad(f)(x, w, t, reduction, grad_output=go)
            X = da.from_array(x, chunks=(4, 4))
            value, (dx, dw) = fl.value_and_grad(f)(X, w, t, reduction, grad_output=go)
            assert dx.chunks == X.chunks and dw.shape == w.shape
            v, a, b = dask.compute(value, dx, dw, scheduler="sync")
            check(v, ev, np.float64, reduction)
            check(a, gx, np.float64, "input gradient")
            check(b, gw, np.float64, "linear_weight gradient: the sum over the chunks")
        with pytest.raises(ValueError):
            f(X, w, t[:, :2])
    finally:
        REGISTRY.pop("toy_linear_mse", None)
