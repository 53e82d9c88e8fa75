"""Every registered loss, over its CASES × float32/float64, against ground truth.

Ground truth is threefold: the family's float64 NumPy REFERENCE, PyTorch 2.13 (value and autograd
gradients), and central finite differences of fastloss's own value (so a wrong reference cannot agree
with a wrong kernel). Then the contract §4 rows that apply to every loss, unmodified inputs, odd memory
layouts and ``out=``.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import fastloss as fl
from fastloss._registry import REGISTRY

from _helpers import (
    DTYPES, SEED, assert_close, case_params, copy_args, diff_positions, diff_slots, needs_torch, slot_value,
    to_torch, torch, upcast, with_slot,
)

CASES = case_params()


def _grad_output(value, rng):
    """A random incoming gradient of the loss's shape (tests that grad_output is really used)."""
    shape = np.shape(value)
    return rng.uniform(0.5, 1.5, size=shape) if shape else np.float64(rng.uniform(0.5, 1.5))


def _as_tuple(grads, n):
    return tuple(grads) if n > 1 else (grads,)


def _call_ref(spec, case, grad_output=None):
    args = tuple(upcast(a) for a in case.args)
    kwargs = {k: upcast(v) for k, v in case.kwargs.items()}
    return spec.reference(*args, grad_output=grad_output, **kwargs)


# ---------------------------------------------------------------------------------------------------
def test_every_loss_is_complete():
    """Every contract §1 loss is registered and its family supplies reference, cases and benchmark input."""
    spec_names = {
        "l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "cross_entropy", "nll_loss", "log_softmax",
        "softmax", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "hinge_embedding_loss",
        "margin_ranking_loss", "cosine_embedding_loss", "triplet_margin_loss", "mape_loss", "rmse_loss",
        "log_loss", "l1_penalty", "l2_penalty", "linear_cross_entropy", "multi_margin_loss",
        "multilabel_margin_loss", "ctc_loss", "poisson_nll_loss", "gaussian_nll_loss", "soft_margin_loss",
        "multilabel_soft_margin_loss", "sigmoid_focal_loss",
    }
    assert set(REGISTRY) == spec_names
    for name, spec in REGISTRY.items():
        assert callable(spec.reference), name
        cases = spec.cases(np.random.default_rng(0), np.float64)
        assert len(cases) >= 2, name
        assert spec.bench(np.random.default_rng(0), np.float32, 1000).args, name
        assert getattr(fl, name) is spec.fn


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_value_matches_reference(spec, dtype, case):
    value = spec.fn(*case.args, **case.kwargs)
    ref, _ = _call_ref(spec, case)
    assert isinstance(value, np.ndarray) or np.isscalar(value)
    assert np.asarray(value).dtype == dtype
    assert_close(value, ref, dtype, f"{spec.name} value")


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_value_and_grad_matches_reference(spec, dtype, case):
    rng = np.random.default_rng(SEED)
    value0 = spec.fn(*case.args, **case.kwargs)
    g = _grad_output(value0, rng)
    value, grads = fl.value_and_grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    ref_value, ref_grads = _call_ref(spec, case, grad_output=g)
    assert_close(value, ref_value, dtype, f"{spec.name} value (value_and_grad)")
    slots = diff_slots(spec, case)
    grads = _as_tuple(grads, len(slots))
    assert len(grads) == len(slots) == len(ref_grads)
    for (name, slot), gr, rg in zip(slots, grads, ref_grads):
        x = slot_value(case, slot)
        assert isinstance(gr, np.ndarray)
        assert gr.shape == np.shape(x) and gr.dtype == dtype, f"{spec.name}: grad shape/dtype"
        assert_close(gr, rg, dtype, f"{spec.name} grad of {name}")
    # grad() is value_and_grad() without the value
    only = fl.grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    for a, b in zip(_as_tuple(only, len(slots)), grads):
        np.testing.assert_array_equal(a, b)


def _torch_call(spec, case, dtype):
    fn = spec.torch_fn()
    if fn is None:
        pytest.skip(f"PyTorch has no {spec.name}")
    slots = [slot for _, slot in diff_slots(spec, case)]
    targs = [to_torch(a, requires_grad=i in slots) for i, a in enumerate(case.args)]
    tkw = {k: to_torch(v, requires_grad=k in slots) for k, v in case.kwargs.items()}
    return fn(torch, *targs, **tkw), [targs[s] if isinstance(s, int) else tkw[s] for s in slots]


@needs_torch
@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_matches_torch(spec, dtype, case):
    tval, tinputs = _torch_call(spec, case, dtype)
    rng = np.random.default_rng(SEED + 1)
    g = _grad_output(tval.detach().numpy(), rng)
    value, grads = fl.value_and_grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    assert_close(value, tval.detach().numpy(), dtype, f"{spec.name} value vs torch")
    tgrads = torch.autograd.grad(tval, tinputs, grad_outputs=torch.as_tensor(np.asarray(g, dtype=np.float64)),
                                 allow_unused=True)
    for gr, tg, (name, _) in zip(_as_tuple(grads, len(tinputs)), tgrads, diff_slots(spec, case)):
        expected = np.zeros(gr.shape) if tg is None else tg.numpy()
        assert_close(gr, expected, dtype, f"{spec.name} grad of {name} vs torch.autograd")


@pytest.mark.parametrize("spec,dtype,case", case_params(dtypes=(np.float64,)))
def test_grad_matches_finite_differences(spec, dtype, case):
    """Central differences of fastloss's own value at a few random coordinates of each input.

    Coordinates at a kink (the one-sided slopes disagree) or where a step leaves the domain are skipped.
    """
    rng = np.random.default_rng(SEED + 2)
    value0 = spec.fn(*case.args, **case.kwargs)
    g = np.asarray(_grad_output(value0, rng))
    _, grads = fl.value_and_grad(spec.fn)(*case.args, grad_output=g, **case.kwargs)
    slots = diff_slots(spec, case)
    grads = _as_tuple(grads, len(slots))

    # a gradient that is not the partial derivative of the value (ctc_loss's, torch's, assumes its input
    # came out of a log-softmax) is the derivative of the function the family names in GRADIENT_OF
    through = getattr(spec.module, "GRADIENT_OF", {}).get(spec.name)

    def objective(args, kwargs):
        if through is not None:
            args, kwargs = through(args, kwargs)
        v = np.asarray(spec.fn(*args, **kwargs), dtype=np.float64)
        return float(np.sum(g * v))

    checked = 0
    for k, (name, slot) in enumerate(slots):
        x = slot_value(case, slot)
        if x.size == 0:
            continue
        for flat in rng.choice(x.size, size=min(4, x.size), replace=False):
            idx = np.unravel_index(flat, x.shape)
            h = 1e-6 * max(1.0, abs(float(x[idx])))
            f = {}
            for step in (-1, 0, 1):
                xs = x.copy()
                xs[idx] += step * h
                try:
                    f[step] = objective(*with_slot(case, slot, xs))
                except ValueError:  # e.g. BCE input pushed out of [0, 1]
                    break
            if len(f) < 3 or not all(np.isfinite(list(f.values()))):
                continue
            left, right = (f[0] - f[-1]) / h, (f[1] - f[0]) / h
            if abs(left - right) > 1e-3 * max(1.0, abs(left), abs(right)):
                continue  # a kink: the derivative is a convention there, checked against torch instead
            fd = (f[1] - f[-1]) / (2 * h)
            np.testing.assert_allclose(grads[k][idx], fd, rtol=1e-4, atol=1e-6 * max(1.0, abs(fd)),
                                       err_msg=f"{spec.name} d/d{name}{idx}")
            checked += 1
    if not checked:
        pytest.skip("every sampled coordinate is at a kink or outside the domain")


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_inputs_are_not_modified(spec, dtype, case):
    args, kwargs = copy_args(case)
    spec.fn(*args, **kwargs)
    fl.value_and_grad(spec.fn)(*args, **kwargs)
    for a, b in zip(args, case.args):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, case.kwargs[k])


def _odd_layout(a, kind):
    """The same values in a Fortran-ordered array or a strided (non-contiguous) view."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    if kind == "fortran":
        return np.asfortranarray(a)
    wide = np.empty(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


@pytest.mark.parametrize("kind", ["fortran", "strided"])
@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_any_memory_layout(spec, dtype, case, kind):
    args = tuple(_odd_layout(a, kind) for a in case.args)
    kwargs = {k: _odd_layout(v, kind) for k, v in case.kwargs.items()}
    v0, g0 = fl.value_and_grad(spec.fn)(*case.args, **case.kwargs)
    v1, g1 = fl.value_and_grad(spec.fn)(*args, **kwargs)
    assert_close(v1, v0, dtype, "value")
    n = len(diff_slots(spec, case))
    for a, b in zip(_as_tuple(g1, n), _as_tuple(g0, n)):
        assert_close(a, b, dtype, "grad")


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_out_buffers_are_reused(spec, dtype, case):
    slots = diff_slots(spec, case)
    outs = tuple(np.full(np.shape(slot_value(case, s)), 7.0, dtype=dtype) for _, s in slots)
    out = outs if len(outs) > 1 else outs[0]
    v0, g0 = fl.value_and_grad(spec.fn)(*case.args, **case.kwargs)
    v1, g1 = fl.value_and_grad(spec.fn)(*case.args, out=out, **case.kwargs)
    for got, buf, want in zip(_as_tuple(g1, len(slots)), outs, _as_tuple(g0, len(slots))):
        assert got is buf
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------- contract §4 rows
def _first_case(spec):
    return spec.cases(np.random.default_rng(SEED), np.float64)[0]


WITH_REDUCTION = [s for n, s in sorted(REGISTRY.items()) if "reduction" in inspect.signature(s.fn).parameters]


@pytest.mark.parametrize("spec", WITH_REDUCTION, ids=lambda s: s.name)
def test_unknown_reduction_is_a_value_error(spec):
    case = _first_case(spec)
    kwargs = dict(case.kwargs, reduction="average")
    with pytest.raises(ValueError, match="'none'.*'mean'.*'sum'"):
        spec.fn(*case.args, **kwargs)


@pytest.mark.parametrize("bad", ["int64", "int32", "bool", "complex128", "object"])
@pytest.mark.parametrize("spec", [s for _, s in sorted(REGISTRY.items())], ids=lambda s: s.name)
def test_non_float_prediction_is_a_type_error(spec, bad):
    case = _first_case(spec)
    args = list(case.args)
    pos = diff_positions(spec)[0]
    args[pos] = np.asarray(args[pos]).astype(bad)
    with pytest.raises(TypeError):
        spec.fn(*args, **case.kwargs)


SHAPE_CHECKED = [s for _, s in sorted(REGISTRY.items()) if s.name not in ("l1_penalty", "l2_penalty", "log_softmax", "softmax")]


@pytest.mark.parametrize("spec", SHAPE_CHECKED, ids=lambda s: s.name)
def test_shapes_that_do_not_fit_are_a_value_error(spec):
    """Drop the last row of the second array argument: the shapes no longer fit."""
    for case in spec.cases(np.random.default_rng(SEED), np.float64):
        arrays = [i for i, a in enumerate(case.args) if isinstance(a, np.ndarray)]
        if len(arrays) < 2 or case.args[arrays[1]].ndim == 0 or case.args[arrays[1]].shape[0] < 2:
            continue
        args = list(case.args)
        args[arrays[1]] = args[arrays[1]][:-1]
        with pytest.raises(ValueError):
            spec.fn(*args, **case.kwargs)
        return
    pytest.skip("no case with two arrays of at least two rows")


def test_reduced_result_is_a_0d_array_of_the_input_dtype():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    r = fl.mse_loss(x, x * 0.5)
    assert np.asarray(r).shape == () and np.asarray(r).dtype == np.float32
    assert isinstance(float(r), float)


def test_value_and_grad_rejects_other_functions():
    with pytest.raises(TypeError, match="not a fastloss loss"):
        fl.value_and_grad(np.sum)


def test_signatures_hide_the_private_keyword():
    for spec in REGISTRY.values():
        params = inspect.signature(spec.fn).parameters
        assert "_grad" not in params
        vg = inspect.signature(fl.value_and_grad(spec.fn)).parameters
        assert list(vg)[-2:] == ["grad_output", "out"]
