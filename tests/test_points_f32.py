"""The one-point functions compiled in float32 (``P32``: ``point_constants(np.float32)``, float32
exp / log / log1p), as the CUDA float32 kernels use them: float32 in, float32 arithmetic, float32 out,
within the project's float32 tolerance of the same functions in float64 (``P``) at the same float32
arguments. Runs on the CPU (Numba's CPU twin of the CUDA compilation; the PTX itself is checked by
``test_cuda_points.py``)."""
from __future__ import annotations

import numpy as np
import pytest
from numba import float32

from fastloss.families import pointwise as pw

N = 2000


def _args(name, rng):
    """Arguments of one-point function ``name`` over well-conditioned ranges, as float32 arrays.

    Left out, as float32 arithmetic (torch's too) cannot meet 2e-5 of a float64 result there, whatever
    the constants: differences of nearly equal terms -- Poisson NLL with large counts t at x near log t
    (full=True: exp(x) - t x + t log t - t, terms ~t log t around a result ~0.5 log(2 pi t)) or x near 1
    (x - t log(x + eps), where eps = 1e-8 is lost in x + eps); BCE-with-logits' gradient with
    pos_weight ~100 and x >> 0 ((1 + (pw - 1) t) sigmoid(x) - pw t).
    """
    real = rng.normal(0, 1, N) * np.exp(rng.normal(0, 1.5, N))
    prob = np.where(rng.uniform(size=N) < 0.3, rng.integers(0, 2, N), rng.uniform(0, 1, N))
    pos = np.exp(rng.normal(0, 1, N))
    counts = rng.poisson(rng.uniform(0, 10, N)).astype(float)
    table = {
        "sign_point": [real], "clamp_below": [real, real], "mape_denominator": [real],
        "exp_neg_abs_point": [real], "log_sigmoid_point": [real], "sigmoid_point": [real],
        "log_sigmoid_point_e": None, "sigmoid_point_e": None, "xlogy_point": [prob, pos],
        "l1_point": [real], "l1_point_grad": [real], "mse_point": [real], "mse_point_grad": [real],
        "smooth_l1_point": [real, pos], "smooth_l1_point_grad": [real, pos],
        "huber_point": [real, pos], "huber_point_grad": [real, pos],
        "mape_point": [real, real], "mape_point_grad": [real, real],
        "bce_point": [rng.uniform(0, 1, N), prob], "bce_point_grad": [rng.uniform(0, 1, N), prob],
        "bce_logits_point": [real, prob, pos], "bce_logits_point_grad": [real, prob, pos],
        "kl_div_point": [-pos, prob], "kl_div_point_grad": [real, prob],
        "kl_div_log_target_point": [-pos, -pos[::-1]], "kl_div_log_target_point_grad": [real, -pos],
        "stirling_point": [counts],
        "poisson_nll_log_point": [real / 4, counts], "poisson_nll_log_point_grad": [real / 4, counts],
        "poisson_nll_log_full_point": [real / 4, counts],
        "poisson_nll_point": [pos, counts, np.full(N, 1e-8)],
        "poisson_nll_point_grad": [pos, counts, np.full(N, 1e-8)],
        "poisson_nll_full_point": [pos, counts, np.full(N, 1e-8)],
        "gaussian_nll_point": [real, pos, np.full(N, 1e-6)], "gaussian_nll_full_point": [real, pos, np.full(N, 1e-6)],
        "gaussian_nll_point_grad": [real, pos, np.full(N, 1e-6)],
        "gaussian_nll_point_grad_var": [real, pos, np.full(N, 1e-6)],
        "soft_margin_point": [real, rng.choice([-1.0, 1.0], N)],
        "soft_margin_point_grad": [real, rng.choice([-1.0, 1.0], N)],
        "focal_alpha_t": [prob, rng.choice([0.25, -1.0], N)],
        "sigmoid_focal_point": [real, prob, rng.choice([0.25, -1.0], N), rng.choice([0.0, 1.0, 2.0, 3.0, 1.5], N)],
        "sigmoid_focal_point_grad": [real, prob, rng.choice([0.25, -1.0], N),
                                     rng.choice([0.0, 1.0, 2.0, 3.0, 1.5], N)],
    }
    columns = table.get(name)
    return None if columns is None else [np.asarray(c, np.float32) for c in columns]


@pytest.mark.parametrize("fn", pw.POINT_FUNCTIONS, ids=lambda f: f.__name__)
def test_point_functions_hold_no_number_literal(fn):
    """A float literal (``0.5 * z``, ``return 1.0``) would be float64 in every compilation: the
    numbers are POINT_CONSTANTS' names, bound per precision."""
    numbers = [c for c in fn.__code__.co_consts if isinstance(c, (int, float)) and not isinstance(c, bool)]
    assert not numbers, f"{fn.__name__} holds literals {numbers}"


def test_float32_constants_equal_the_float64_ones_where_exact():
    c32, c64 = pw.point_constants(np.float32), pw.point_constants(np.float64)
    assert set(c32) == set(c64) == set(pw.POINT_CONSTANTS)
    for name, value in pw.POINT_CONSTANTS.items():
        assert c32[name].dtype == np.float32 and c64[name].dtype == np.float64
        assert c64[name] == value
        assert c32[name] == np.float32(value)
        if name != "HALF_LOG_2PI":  # every other constant is a float32 number
            assert float(c32[name]) == value, name


@pytest.mark.slow
@pytest.mark.parametrize("fn", pw.POINT_FUNCTIONS, ids=lambda f: f.__name__)
def test_float32_point_functions_stay_float32_and_accurate(fn):
    name, nargs = fn.__name__, fn.__code__.co_argcount
    compiled = getattr(pw.P32, name)
    compiled.compile((float32,) * nargs)
    [sig] = [s for s in compiled.nopython_signatures if tuple(s.args) == (float32,) * nargs]
    assert sig.return_type == float32, f"{name} of float32 arguments returns {sig.return_type}"

    args = _args(name, np.random.default_rng(7))
    if args is None:
        return  # helpers taking exp(-|x|), checked through their callers
    f32, f64 = compiled, getattr(pw.P, name)
    got = np.array([f32(*a) for a in zip(*args)], np.float32).astype(np.float64)
    want = np.array([f64(*map(float, a)) for a in zip(*args)])
    assert np.array_equal(np.isnan(got), np.isnan(want)), name
    # |got - want| <= 2e-5 |want| + 2e-6 max(|want|, 1): the project's float32 tolerance, for each element
    # as if alone (its own scale); beyond float32's range, float32's inf as any float32 result
    keep = ~np.isnan(want) & (np.abs(want) < np.finfo(np.float32).max)
    bound = 2e-5 * np.abs(want[keep]) + 2e-6 * np.maximum(np.abs(want[keep]), 1.0)
    worst = int(np.argmax(np.abs(got[keep] - want[keep]) / bound))
    assert abs(got[keep][worst] - want[keep][worst]) <= bound[worst], (
        name, [float(a[keep][worst]) for a in args], got[keep][worst], want[keep][worst])
