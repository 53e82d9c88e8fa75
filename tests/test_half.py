"""float16 inputs for every registered loss (contract §3): computed in float32, results in float16.

Ground truth: the float64 REFERENCE on the same float16 inputs (so the only differences are the float32
arithmetic and the final rounding to float16), and PyTorch 2.13's own float16 CPU result where PyTorch
implements the loss for float16 tensors. The CUDA path is tested in tests/test_cuda.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastloss as fl
from fastloss import _half
from fastloss._registry import REGISTRY

from _helpers import case_params, diff_slots, needs_torch, slot_value, torch, upcast, with_slot

F16 = np.float16
CASES = case_params(dtypes=(F16,))
#: a float16 result is one rounding away from the exact one: 2**-11 relative, so allow two ulps
RTOL = 2.0 ** -10


def assert_half_close(actual, expected, what, rtol=RTOL):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    # float16 rounding of the largest element, and float32 arithmetic's absolute error on terms of
    # order one (a gradient that cancels to 0 in exact arithmetic is ~1e-7 in float32)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale + 2.0 ** -20, equal_nan=True,
                               err_msg=what)


def _reference(spec, case, grad_output=None):
    args = tuple(upcast(a) for a in case.args)
    kwargs = {k: upcast(v) for k, v in case.kwargs.items()}
    return spec.reference(*args, grad_output=grad_output, **kwargs)


def _as_tuple(grads, n):
    return tuple(grads) if n > 1 else (grads,)


def _half_inputs(spec, case) -> bool:
    """Every differentiated input of the case is float16 (the value is then float16 too)."""
    return all(np.asarray(slot_value(case, s)).dtype == F16 for _, s in diff_slots(spec, case))


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_value_and_grad_against_reference(spec, dtype, case):
    slots = diff_slots(spec, case)
    value, grads = fl.value_and_grad(spec.fn)(*case.args, **case.kwargs)
    ref_value, ref_grads = _reference(spec, case)
    if _half_inputs(spec, case):
        assert np.asarray(value).dtype == F16, f"{spec.name}: value dtype {np.asarray(value).dtype}"
    assert_half_close(value, ref_value, f"{spec.name} value")
    assert_half_close(spec.fn(*case.args, **case.kwargs), ref_value, f"{spec.name} value alone")
    for (name, slot), g, rg in zip(slots, _as_tuple(grads, len(slots)), ref_grads):
        x = slot_value(case, slot)
        assert g.shape == np.shape(x) and g.dtype == np.asarray(x).dtype, f"{spec.name}: grad of {name}"
        assert_half_close(g, rg, f"{spec.name} grad of {name}")


@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_out_buffers_and_in_place(spec, dtype, case):
    """A float16 ``out=`` buffer receives the rounded gradient; the input itself may be the buffer."""
    slots = diff_slots(spec, case)
    if not slots:
        pytest.skip("nothing differentiated")
    _, expected = fl.value_and_grad(spec.fn)(*case.args, **case.kwargs)
    expected = _as_tuple(expected, len(slots))
    outs = tuple(np.full(np.shape(slot_value(case, s)), 7.0, dtype=np.asarray(slot_value(case, s)).dtype)
                 for _, s in slots)
    _, grads = fl.value_and_grad(spec.fn)(*case.args, out=outs if len(outs) > 1 else outs[0], **case.kwargs)
    for o, g, e in zip(outs, _as_tuple(grads, len(slots)), expected):
        assert g is o
        np.testing.assert_array_equal(g, e)
    # in place: the first differentiated input is overwritten with its own gradient
    name, slot = slots[0]
    x = np.array(slot_value(case, slot))
    if x.ndim == 0 or x.dtype != F16:
        return
    args, kwargs = with_slot(case, slot, x)
    out = (x,) + (None,) * (len(slots) - 1) if len(slots) > 1 else x
    _, grads = fl.value_and_grad(spec.fn)(*args, out=out, **kwargs)
    assert _as_tuple(grads, len(slots))[0] is x
    np.testing.assert_array_equal(x, expected[0])


def _torch_half(spec, case, grad_output):
    """PyTorch's float16 value and gradients, or None where PyTorch has no float16 CPU kernel."""
    fn = spec.torch_fn()
    if fn is None:
        return None
    slots = diff_slots(spec, case)

    def conv(a, grad):
        if isinstance(a, np.ndarray):
            if a.dtype.kind == "f":
                return torch.tensor(a, requires_grad=grad)
            return torch.tensor(a.astype(np.int64) if a.dtype.kind in "iu" else a)
        return a

    diff = {s for _, s in slots}
    args = [conv(a, i in diff) for i, a in enumerate(case.args)]
    kwargs = {k: conv(v, k in diff) for k, v in case.kwargs.items()}
    try:
        value = fn(torch, *args, **kwargs)
        inputs = [args[s] if isinstance(s, int) else kwargs[s] for _, s in slots]
        go = torch.tensor(np.broadcast_to(grad_output, tuple(value.shape)).astype(F16))
        grads = torch.autograd.grad(value, inputs, grad_outputs=go) if inputs else ()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        if "Half" in str(exc) or "half" in str(exc):
            return None
        raise
    return value.detach().numpy(), [g.numpy() for g in grads]


@needs_torch
@pytest.mark.parametrize("spec,dtype,case", CASES)
def test_against_torch_float16(spec, dtype, case):
    """PyTorch rounds some intermediate results to float16, fastloss only the final one: compared
    within a few float16 ulps of the largest element. A random incoming gradient (with ones, a
    softmax's exact gradient is 0, and PyTorch's float16 rounding noise is all there is to compare)."""
    if not _half_inputs(spec, case):
        pytest.skip("mixed precision case")
    value = spec.fn(*case.args, **case.kwargs)
    grad_output = np.random.default_rng(1).uniform(0.5, 1.5, size=np.shape(value)).astype(F16)
    got = _torch_half(spec, case, grad_output)
    if got is None:
        pytest.skip("PyTorch has no float16 CPU kernel for this loss")
    tvalue, tgrads = got
    value, grads = fl.value_and_grad(spec.fn)(*case.args, grad_output=grad_output, **case.kwargs)
    ref_value, ref_grads = _reference(spec, case, grad_output=grad_output.astype(np.float64))
    pairs = [(value, tvalue, ref_value, "value")]
    pairs += [(g, tg, rg, "grad") for g, tg, rg in zip(_as_tuple(grads, len(tgrads)), tgrads, ref_grads)]
    for ours, theirs, exact, what in pairs:
        try:
            assert_half_close(ours, theirs, f"{spec.name} {what} vs torch", rtol=8 * RTOL)
        except AssertionError:
            # where PyTorch's float16 arithmetic loses more (e.g. focal loss's 1 - p_t), fastloss must
            # be the closer of the two to the exact result
            err = np.nanmax(np.abs(np.float64(ours) - exact), initial=0.0)
            terr = np.nanmax(np.abs(np.float64(theirs) - exact), initial=0.0)
            if not err < terr:
                raise


def test_accumulation_is_not_float16():
    """A sum of 60,000 ones is exact: float16 arithmetic would have stopped at 2048."""
    x = np.ones(60000, dtype=F16)
    assert float(fl.mse_loss(x, np.zeros_like(x), reduction="sum")) == 60000.0
    assert float(fl.l1_loss(x, np.zeros_like(x), reduction="mean")) == 1.0
    v, g = fl.value_and_grad(fl.mse_loss)(x[:3000], np.zeros(3000, F16), reduction="sum")
    assert float(v) == 3000.0 and g.dtype == F16 and np.all(g == 2)


def test_mixed_predictions_promote_to_float32():
    """A float16 prediction beside a float32 one: the value is float32, each gradient its input's dtype."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(8).astype(F16)
    b = rng.standard_normal(8).astype(np.float32)
    y = np.sign(rng.standard_normal(8)).astype(np.float32)
    value, (ga, gb) = fl.value_and_grad(fl.margin_ranking_loss)(a, b, y)
    assert np.asarray(value).dtype == np.float32 and ga.dtype == F16 and gb.dtype == np.float32
    ref, (ra, rb) = fl.value_and_grad(fl.margin_ranking_loss)(a.astype(np.float32), b, y)
    assert float(value) == float(ref)
    np.testing.assert_array_equal(ga, ra.astype(F16))
    np.testing.assert_array_equal(gb, rb)


def test_float16_target_with_float32_input_stays_float32():
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    t = np.zeros(10, dtype=F16)
    assert np.asarray(fl.mse_loss(x, t)).dtype == np.float32


def test_inputs_not_modified_and_byte_order():
    x = np.linspace(-2, 2, 12, dtype=F16).reshape(3, 4)
    t = np.array([0, 3, 1])
    before = x.copy()
    v = fl.cross_entropy(x, t)
    np.testing.assert_array_equal(x, before)
    swapped = x.astype(">f2")
    assert _half.is_half(swapped)
    assert float(fl.cross_entropy(swapped, t)) == float(v)


def test_every_loss_takes_float16():
    """Every registered loss has float16 cases here (a new loss is covered by its CASES)."""
    assert {p.values[0].name for p in CASES if p.values[2] is not None} == set(REGISTRY)
