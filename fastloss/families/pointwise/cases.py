"""The pointwise family's test cases (every option, reduction and shape) and benchmark inputs."""
from __future__ import annotations

import numpy as np

from ..._registry import Case


# --- test cases: every option and reduction, 0-d to 3-d shapes ------------------------------------
_SHAPES = ((), (7,), (4, 5), (2, 3, 4))
_REDUCTIONS = ("mean", "sum", "none")


def _normal(rng, shape, dtype, scale=1.0):
    return _uniform(rng, shape, dtype, 0, 0, scale)


def _uniform(rng, shape, dtype, lo=0.0, hi=1.0, normal_scale=None):
    """Uniform in [lo, hi) (or normal with standard deviation ``normal_scale``) as an array of ``dtype``
    (a 0-d array for shape (), never a NumPy scalar)."""
    v = rng.uniform(lo, hi, shape) if normal_scale is None else normal_scale * rng.standard_normal(shape)
    return np.asarray(v, dtype=dtype)


def _regression_cases(rng, dtype, *, weighted, option=None, values=()):
    """x, t ~ N(0, 2) over every shape x reduction; a weight where the loss takes one; ``option``
    (beta, delta) over ``values``."""
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            kwargs = {"reduction": reduction}
            if option:
                kwargs[option] = values[len(cases) % len(values)]
            x, t = _normal(rng, shape, dtype, 2.0), _normal(rng, shape, dtype, 2.0)
            cases.append(Case((x, t), kwargs, f"{shape}-{reduction}"))
            if weighted and shape:
                w = _uniform(rng, shape, dtype, 0.1, 2.0)
                cases.append(Case((x, t), dict(kwargs, weight=w), f"{shape}-{reduction}-weighted"))
    return cases


def _bce_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            x = _uniform(rng, shape, dtype, 0.02, 0.98)
            hard = np.asarray(rng.uniform(size=shape) < 0.5, dtype=dtype)
            soft = _uniform(rng, shape, dtype, 0.0, 1.0)
            cases.append(Case((x, hard), {"reduction": reduction}, f"{shape}-{reduction}-hard"))
            cases.append(Case((x, soft), {"reduction": reduction}, f"{shape}-{reduction}-soft"))
    x = _uniform(rng, (6, 3), dtype, 0.02, 0.98)
    t = (rng.uniform(size=(6, 3)) < 0.5).astype(dtype)
    for w_shape in ((6, 3), (3,), (6, 1), ()):
        w = _uniform(rng, w_shape, dtype, 0.1, 2.0)
        for reduction in _REDUCTIONS:
            cases.append(Case((x, t), {"weight": w, "reduction": reduction}, f"weight{w_shape}-{reduction}"))
    return cases


def _bce_logits_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            x = _normal(rng, shape, dtype, 3.0)
            t = _uniform(rng, shape, dtype, 0.0, 1.0)
            cases.append(Case((x, t), {"reduction": reduction}, f"{shape}-{reduction}"))
    x = _normal(rng, (5, 4), dtype, 3.0)
    t = (rng.uniform(size=(5, 4)) < 0.5).astype(dtype)
    pw = _uniform(rng, (4,), dtype, 0.5, 3.0)
    for w_shape in ((5, 4), (4,), (5, 1)):
        w = _uniform(rng, w_shape, dtype, 0.1, 2.0)
        for reduction in _REDUCTIONS:
            cases.append(Case((x, t), {"weight": w, "pos_weight": pw, "reduction": reduction},
                              f"weight{w_shape}-pos_weight-{reduction}"))
    cases.append(Case((x, t), {"pos_weight": pw}, "pos_weight-only"))
    x3 = _normal(rng, (2, 3, 4), dtype, 3.0)
    t3 = _uniform(rng, (2, 3, 4), dtype, 0.0, 1.0)
    cases.append(Case((x3, t3), {"pos_weight": pw, "weight": _uniform(rng, (3, 1), dtype, 0.1, 2.0),
                                 "reduction": "none"}, "3d-pos_weight-weight(3,1)"))
    return cases


def _log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _kl_div_cases(rng, dtype):
    cases = []
    for shape in ((4,), (3, 5), (2, 3, 4)):
        x = _log_softmax(rng.standard_normal(shape)).astype(dtype)
        logt = _log_softmax(rng.standard_normal(shape))
        t = np.exp(logt)
        t.reshape(-1)[::3] = 0.0  # exact zeros: 0 * log(0) = 0
        for reduction in _REDUCTIONS + ("batchmean",):
            cases.append(Case((x, t.astype(dtype)), {"reduction": reduction}, f"{shape}-{reduction}"))
            cases.append(Case((x, logt.astype(dtype)), {"reduction": reduction, "log_target": True},
                              f"{shape}-{reduction}-log_target"))
    return cases


def _mape_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            t = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 3.0, shape)
            cases.append(Case((_normal(rng, shape, dtype, 2.0), np.asarray(t, dtype)), {"reduction": reduction},
                              f"{shape}-{reduction}"))
    return cases


def _rmse_cases(rng, dtype):
    return [Case((_normal(rng, s, dtype, 2.0), _normal(rng, s, dtype, 2.0)), {}, f"{s}") for s in _SHAPES]


def _log_loss_cases(rng, dtype):
    n = 12

    def probabilities(k):
        p = rng.uniform(0.05, 1.0, (n, k))
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)

    y3 = rng.integers(0, 3, n)
    y3[:3] = [0, 1, 2]
    y2 = rng.integers(0, 2, n)
    y2[:2] = [0, 1]
    names = np.array(["cat", "dog", "emu"])[y3]
    sw = rng.uniform(0.1, 2.0, n)
    return [
        Case((y3, probabilities(3)), {}, "3-classes"),
        Case((names, probabilities(3)), {"normalize": False}, "strings-sum"),
        Case((y3, probabilities(3)), {"sample_weight": sw}, "sample_weight"),
        Case((y3, probabilities(3)), {"sample_weight": sw, "normalize": False}, "sample_weight-sum"),
        Case((y2, _uniform(rng, n, dtype, 0.05, 0.95)), {}, "1d-binary"),
        Case((y2 + 1, probabilities(4)), {"labels": [0, 1, 2, 3]}, "labels-unused-classes"),
    ]


def _penalty_cases(rng, dtype):
    return [Case((_normal(rng, s, dtype, 2.0),), {"lam": lam}, f"{s}-lam{lam}")
            for s, lam in zip(_SHAPES, (1.0, 0.5, 2.0, 1e-3))]


def _counts(rng, shape, dtype, lam=2.0):
    """Poisson counts (0, 1 and values above 1, for Stirling's term) as floats."""
    return np.asarray(rng.poisson(lam, shape), dtype=dtype)


def _poisson_nll_cases(rng, dtype):
    cases = []
    options = [{}, {"full": True}, {"log_input": False}, {"log_input": False, "full": True, "eps": 1e-3}]
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            opts = options[len(cases) % len(options)]
            x = (_normal(rng, shape, dtype) if opts.get("log_input", True)
                 else _uniform(rng, shape, dtype, 0.1, 4.0))
            cases.append(Case((x, _counts(rng, shape, dtype)), dict(opts, reduction=reduction),
                              f"{shape}-{reduction}-{'-'.join(f'{k}={v}' for k, v in opts.items())}"))
    x = _uniform(rng, (6, 5), dtype, 0.1, 4.0)
    t = _counts(rng, (6, 5), dtype, 3.0)
    for opts in options:
        cases.append(Case((x if not opts.get("log_input", True) else x - 1.0, t), opts, f"(6, 5)-{opts}"))
    return cases


def _gaussian_nll_cases(rng, dtype):
    """var over each shape torch accepts (and a float); var stays well above eps, where the clamp is
    differentiable (tests/test_pointwise.py checks the clamp against torch)."""
    cases = []
    for shape, var_shapes in (((7,), [(7,), (), (1,)]), ((4, 5), [(4, 5), (4,), (4, 1), (1, 5)]),
                              ((2, 3, 4), [(2, 3, 4), (2, 3), (2, 1, 4), (2, 3, 1)])):
        for k, var_shape in enumerate(var_shapes):
            for reduction in _REDUCTIONS:
                x, t = _normal(rng, shape, dtype), _normal(rng, shape, dtype)
                var = _uniform(rng, var_shape, dtype, 0.2, 2.0) if var_shape != () else 0.7
                kwargs = {"reduction": reduction, "full": bool((k + len(cases)) % 2)}
                cases.append(Case((x, t, var), kwargs, f"{shape}-var{var_shape or 'float'}-{reduction}"))
    x, t = _normal(rng, (5,), dtype), _normal(rng, (5,), dtype)
    cases.append(Case((x, t, _uniform(rng, (5,), dtype, 0.3, 1.0)), {"eps": 0.1}, "eps=0.1"))
    cases.append(Case((_normal(rng, (), dtype), _normal(rng, (), dtype), 1.5), {}, "0-d-float-var"))
    return cases


def _soft_margin_cases(rng, dtype):
    cases = []
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            y = np.asarray(rng.choice([-1.0, 1.0], size=shape), dtype=dtype)
            cases.append(Case((_normal(rng, shape, dtype, 2.0), y), {"reduction": reduction}, f"{shape}-{reduction}"))
    return cases


def _multilabel_soft_margin_cases(rng, dtype):
    cases = []
    for shape in ((5,), (6, 4), (3, 7)):
        for reduction in _REDUCTIONS:
            x = _normal(rng, shape, dtype, 2.0)
            t = np.asarray(rng.uniform(size=shape) < 0.4, dtype=dtype)
            cases.append(Case((x, t), {"reduction": reduction}, f"{shape}-{reduction}"))
            w = _uniform(rng, shape[-1:], dtype, 0.2, 2.0)
            cases.append(Case((x, t), {"weight": w, "reduction": reduction}, f"{shape}-{reduction}-weight"))
    return cases


def _sigmoid_focal_cases(rng, dtype):
    cases = []
    options = [{}, {"alpha": -1.0}, {"alpha": 0.5, "gamma": 0.0}, {"gamma": 1.5}, {"alpha": 0.75, "gamma": 3.0},
               {"gamma": 1.0}]
    for shape in _SHAPES:
        for reduction in _REDUCTIONS:
            opts = options[len(cases) % len(options)]
            x = _normal(rng, shape, dtype, 3.0)
            t = np.asarray(rng.uniform(size=shape) < 0.3, dtype=dtype)
            cases.append(Case((x, t), dict(opts, reduction=reduction), f"{shape}-{reduction}-{opts}"))
    x, t = _normal(rng, (4, 6), dtype, 3.0), _uniform(rng, (4, 6), dtype)
    for opts in options:
        cases.append(Case((x, t), dict(opts, reduction="mean"), f"soft-targets-{opts}"))
    return cases


CASES = {
    "l1_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=True),
    "mse_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=True),
    "smooth_l1_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=False, option="beta",
                                                           values=(1.0, 0.5, 0.0, 2.5)),
    "huber_loss": lambda rng, dtype: _regression_cases(rng, dtype, weighted=True, option="delta",
                                                       values=(1.0, 0.5, 2.5)),
    "mape_loss": _mape_cases,
    "rmse_loss": _rmse_cases,
    "binary_cross_entropy": _bce_cases,
    "binary_cross_entropy_with_logits": _bce_logits_cases,
    "kl_div": _kl_div_cases,
    "log_loss": _log_loss_cases,
    "l1_penalty": _penalty_cases,
    "l2_penalty": _penalty_cases,
    "poisson_nll_loss": _poisson_nll_cases,
    "gaussian_nll_loss": _gaussian_nll_cases,
    "soft_margin_loss": _soft_margin_cases,
    "multilabel_soft_margin_loss": _multilabel_soft_margin_cases,
    "sigmoid_focal_loss": _sigmoid_focal_cases,
}


# --- benchmark inputs: one flat array of `size` elements (log_loss: `size` probabilities) ---------
def _bench_regression(rng, dtype, size):
    return Case((_normal(rng, size, dtype), _normal(rng, size, dtype)), {}, f"n={size}")


def _bench_probabilities(rng, dtype, size):
    return Case((_uniform(rng, size, dtype, 0.01, 0.99), (rng.uniform(size=size) < 0.5).astype(dtype)),
                {}, f"n={size}")


def _bench_logits(rng, dtype, size):
    return Case((_normal(rng, size, dtype, 3.0), (rng.uniform(size=size) < 0.5).astype(dtype)), {}, f"n={size}")


def _bench_kl_div(rng, dtype, size):
    cols = 1000 if size >= 1000 else size
    shape = (max(1, size // cols), cols)
    return Case((_log_softmax(rng.standard_normal(shape)).astype(dtype),
                 np.exp(_log_softmax(rng.standard_normal(shape))).astype(dtype)), {"reduction": "batchmean"},
                f"{shape}")


def _bench_log_loss(rng, dtype, size):
    k = 10
    n = max(2, size // k)
    p = rng.uniform(0.05, 1.0, (n, k))
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)[:min(k, n)] if n >= k else y[:k]
    return Case((y, (p / p.sum(axis=1, keepdims=True)).astype(dtype)), {}, f"({n}, {k})")


def _bench_penalty(rng, dtype, size):
    return Case((_normal(rng, size, dtype),), {"lam": 1e-3}, f"n={size}")


def _bench_poisson(rng, dtype, size):
    return Case((_normal(rng, size, dtype), _counts(rng, size, dtype)), {}, f"n={size}")


def _bench_gaussian(rng, dtype, size):
    return Case((_normal(rng, size, dtype), _normal(rng, size, dtype), _uniform(rng, size, dtype, 0.2, 2.0)), {},
                f"n={size}")


def _bench_soft_margin(rng, dtype, size):
    return Case((_normal(rng, size, dtype, 2.0), np.asarray(rng.choice([-1.0, 1.0], size=size), dtype=dtype)), {},
                f"n={size}")


def _bench_multilabel(rng, dtype, size):
    cols = 100 if size >= 100 else size
    shape = (max(1, size // cols), cols)
    return Case((_normal(rng, shape, dtype, 2.0), (rng.uniform(size=shape) < 0.1).astype(dtype)), {}, f"{shape}")


def _bench_focal(rng, dtype, size):
    return Case((_normal(rng, size, dtype, 3.0), (rng.uniform(size=size) < 0.1).astype(dtype)), {"reduction": "mean"},
                f"n={size}")


BENCH = {
    "l1_loss": _bench_regression, "mse_loss": _bench_regression, "smooth_l1_loss": _bench_regression,
    "huber_loss": _bench_regression, "mape_loss": _bench_regression, "rmse_loss": _bench_regression,
    "binary_cross_entropy": _bench_probabilities, "binary_cross_entropy_with_logits": _bench_logits,
    "kl_div": _bench_kl_div, "log_loss": _bench_log_loss, "l1_penalty": _bench_penalty,
    "l2_penalty": _bench_penalty, "poisson_nll_loss": _bench_poisson, "gaussian_nll_loss": _bench_gaussian,
    "soft_margin_loss": _bench_soft_margin, "multilabel_soft_margin_loss": _bench_multilabel,
    "sigmoid_focal_loss": _bench_focal,
}
