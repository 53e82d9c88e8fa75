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
