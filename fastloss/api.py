"""The public losses: one thin function each, check → dispatch → family kernel.

Semantics are those of ``torch.nn.functional`` in PyTorch 2.13 (without ``size_average``/``reduce``).
Every function accepts NumPy arrays (or anything ``numpy.asarray`` accepts) and GPU arrays (CuPy,
``__cuda_array_interface__``); results come back in the input's array library and dtype. Reduced results
(``'mean'``, ``'sum'``, ``'batchmean'``) are 0-d arrays; ``reduction='none'`` returns the per-element loss.

Targets and weights are converted to the prediction's dtype; float32 predictions are computed with
float64 accumulation. Gradients: :func:`fastloss.value_and_grad` / :func:`fastloss.grad`.
"""
from __future__ import annotations

from . import _validation as V
from ._dispatch import family, prepare
from ._registry import GradRequest, loss
from ._typing import Array, ArrayIn

__all__ = [
    "l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "mape_loss", "rmse_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "log_loss",
    "l1_penalty", "l2_penalty",
    "poisson_nll_loss", "gaussian_nll_loss", "soft_margin_loss", "multilabel_soft_margin_loss",
    "sigmoid_focal_loss",
    "log_softmax", "softmax", "nll_loss", "cross_entropy", "linear_cross_entropy",
    "margin_ranking_loss", "hinge_embedding_loss", "cosine_embedding_loss", "triplet_margin_loss",
    "multi_margin_loss", "multilabel_margin_loss", "ctc_loss",
]

_PW = "pointwise"


# --------------------------------------------------------------------------------------------------
# Regression (pointwise)
# --------------------------------------------------------------------------------------------------
@loss(diff=("input",), family=_PW)
def l1_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", weight: ArrayIn | None = None, *,
    _grad: GradRequest | None = None
) -> Array:
    """Mean absolute error.

    ``l_i = w_i * |input_i - target_i|``; ``'mean'`` is ``sum(l) / sum(w)`` (``sum(l) / n`` without
    weight), ``'sum'`` is ``sum(l)``. ``input``, ``target`` and ``weight`` share one shape. The gradient
    at ``input == target`` is 0 (``sign(0)``), as PyTorch.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.l1_loss(np.array([1.0, 2.0]), np.array([0.0, 4.0])))
    1.5
    """
    V.reduction(reduction)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.pointwise(x, t, w)
    return family(be, _PW).l1(x, t, w, reduction, _grad)


@loss(diff=("input",), family=_PW)
def mse_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", weight: ArrayIn | None = None, *,
    _grad: GradRequest | None = None
) -> Array:
    """Mean squared error.

    ``l_i = w_i * (input_i - target_i)**2``; ``'mean'`` is ``sum(l) / sum(w)`` (``sum(l) / n`` without
    weight), ``'sum'`` is ``sum(l)``. ``input``, ``target`` and ``weight`` share one shape.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.mse_loss(np.array([1.0, 2.0]), np.array([0.0, 4.0])))
    2.5
    """
    V.reduction(reduction)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.pointwise(x, t, w)
    return family(be, _PW).mse(x, t, w, reduction, _grad)


@loss(diff=("input",), family=_PW)
def smooth_l1_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", beta: float = 1.0, *,
    _grad: GradRequest | None = None
) -> Array:
    """Smooth L1 loss.

    With ``r = input - target``: ``l = 0.5 * r**2 / beta`` where ``|r| < beta``, else
    ``|r| - 0.5 * beta``; ``beta = 0`` is the L1 loss. ``'mean'`` averages over all elements.
    ``beta`` must be non-negative (``ValueError``).

    >>> import numpy as np, fastloss as fl
    >>> float(fl.smooth_l1_loss(np.array([0.5, 3.0]), np.zeros(2)))
    1.3125
    """
    V.reduction(reduction)
    beta = V.nonnegative("beta", beta)
    be, (x, t) = prepare(input=input, target=target)
    x, t, _ = V.pointwise(x, t)
    return family(be, _PW).smooth_l1(x, t, reduction, beta, _grad)


@loss(diff=("input",), family=_PW)
def huber_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", delta: float = 1.0,
    weight: ArrayIn | None = None, *, _grad: GradRequest | None = None
) -> Array:
    """Huber loss.

    With ``r = input - target``: ``l = 0.5 * r**2`` where ``|r| < delta``, else
    ``delta * (|r| - 0.5 * delta)``, times ``weight``; ``'mean'`` is ``mean(w * l)`` (not divided by
    ``sum(w)``: PyTorch 2.13's convention for this loss). ``delta`` must be positive (``ValueError``;
    PyTorch refuses 0 as well).

    >>> import numpy as np, fastloss as fl
    >>> float(fl.huber_loss(np.array([0.5, 3.0]), np.zeros(2)))
    1.3125
    """
    V.reduction(reduction)
    delta = V.positive("delta", V.nonnegative("delta", delta))  # torch refuses 0 as well as negatives
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.pointwise(x, t, w)
    return family(be, _PW).huber(x, t, w, reduction, delta, _grad)


@loss(diff=("input",), family=_PW)
def mape_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Mean absolute percentage error, as a fraction (not percent).

    ``l_i = |target_i - input_i| / max(|target_i|, eps)`` with ``eps`` float64's machine epsilon
    (``numpy.finfo(numpy.float64).eps``), as ``sklearn.metrics.mean_absolute_percentage_error``.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.mape_loss(np.array([1.5, 2.0]), np.array([1.0, 4.0])))
    0.5
    """
    V.reduction(reduction)
    be, (x, t) = prepare(input=input, target=target)
    x, t, _ = V.pointwise(x, t)
    return family(be, _PW).mape(x, t, reduction, _grad)


@loss(diff=("input",), family=_PW)
def rmse_loss(input: ArrayIn, target: ArrayIn, *, _grad: GradRequest | None = None) -> Array:
    """Root mean squared error, ``sqrt(mse_loss(input, target))``; a 0-d result.

    Its gradient at a zero error is 0 (the subgradient), not NaN.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.rmse_loss(np.array([3.0, 0.0]), np.array([0.0, 4.0])))
    3.5355339059327378
    """
    be, (x, t) = prepare(input=input, target=target)
    x, t, _ = V.pointwise(x, t)
    return family(be, _PW).rmse(x, t, _grad)


# --------------------------------------------------------------------------------------------------
# Probabilistic (pointwise)
# --------------------------------------------------------------------------------------------------
@loss(diff=("input",), family=_PW)
def binary_cross_entropy(
    input: ArrayIn, target: ArrayIn, weight: ArrayIn | None = None, reduction: str = "mean", *,
    _grad: GradRequest | None = None
) -> Array:
    """Binary cross entropy of probabilities.

    ``l = -w * (t * log(x) + (1 - t) * log(1 - x))`` with each log clamped below at -100, as PyTorch.
    ``input`` and ``target`` must lie in [0, 1] (``ValueError``, as PyTorch; NaN is not an error and
    propagates); ``weight`` broadcasts to ``input``.
    The gradient is ``w * (x - t) / max((1 - x) * x, 1e-12)``, PyTorch's backward.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.binary_cross_entropy(np.array([0.9, 0.2]), np.array([1.0, 0.0]))), 6)
    0.164252
    """
    V.reduction(reduction)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.pointwise(x, t, w, weight="broadcast")
    V.values_in_unit_interval("input", x)
    V.values_in_unit_interval("target", t)  # PyTorch refuses targets outside [0, 1] too
    return family(be, _PW).bce(x, t, w, reduction, _grad)


@loss(diff=("input",), family=_PW)
def binary_cross_entropy_with_logits(
    input: ArrayIn, target: ArrayIn, weight: ArrayIn | None = None, reduction: str = "mean",
    pos_weight: ArrayIn | None = None, *, _grad: GradRequest | None = None
) -> Array:
    """Binary cross entropy of logits, computed stably.

    ``l = -w * (p * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))`` with ``p = pos_weight``
    broadcast along the last axis (shape ``(C,)`` for input ``(N, C)``); ``weight`` broadcasts to
    ``input``. Evaluated as ``(1 - t) * x + (1 + (p - 1) * t) * softplus(-x)``, which never overflows.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.binary_cross_entropy_with_logits(np.array([2.0, -1.0]), np.array([1.0, 0.0]))), 6)
    0.220095
    """
    V.reduction(reduction)
    be, (x, t, w, pw) = prepare(input=input, target=target, weight=weight, pos_weight=pos_weight)
    x, t, w = V.pointwise(x, t, w, weight="broadcast")
    if pw is not None:
        pw = V.as_float("pos_weight", pw, x.dtype)
        V.broadcastable("pos_weight", pw, x.shape)
    return family(be, _PW).bce_logits(x, t, w, pw, reduction, _grad)


@loss(diff=("input",), family=_PW)
def kl_div(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", log_target: bool = False, *,
    _grad: GradRequest | None = None
) -> Array:
    """Kullback-Leibler divergence; ``input`` holds log-probabilities.

    ``l = t * (log(t) - input)`` (0 where ``t == 0``), or with ``log_target=True``,
    ``l = exp(t) * (t - input)``. ``'batchmean'`` is ``sum(l) / input.shape[0]`` (the mathematically
    correct KL for a batch); ``'mean'`` averages over all elements, as PyTorch.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.kl_div(np.log([0.5, 0.5]), np.array([0.9, 0.1]), reduction='sum')), 6)
    0.368064
    """
    V.reduction(reduction, V.REDUCTIONS + ("batchmean",))
    be, (x, t) = prepare(input=input, target=target)
    x, t, _ = V.pointwise(x, t)
    return family(be, _PW).kl_div(x, t, reduction, bool(log_target), _grad)


@loss(diff=("y_pred",), family=_PW)
def log_loss(
    y_true: ArrayIn, y_pred: ArrayIn, *, normalize: bool = True, sample_weight: ArrayIn | None = None,
    labels: ArrayIn | None = None, _grad: GradRequest | None = None
) -> Array:
    """Log loss (cross entropy of predicted probabilities), as ``sklearn.metrics.log_loss``.

    ``y_true``: labels of shape ``(n,)`` (any type ``numpy.unique`` orders); ``y_pred``: probabilities
    ``(n, k)``, or ``(n,)`` for the positive class of a binary problem (columns in the order of the
    sorted labels). Probabilities are clipped to ``[eps, 1 - eps]`` (``eps`` the dtype's machine
    epsilon) and, as scikit-learn 1.9, not renormalised: rows that do not sum to 1 only warn
    (``UserWarning``). ``loss = -sum_i s_i * log(p[i, y_i]) / sum_i s_i`` (the sum alone when
    ``normalize=False``). ``y_pred`` outside [0, 1] or not finite, inconsistent lengths, a single
    class, or labels missing from ``labels`` are a ``ValueError``. The gradient with respect to
    ``y_pred`` is ``-s_i / (S p[i, y_i])`` at the true class, 0 elsewhere and where the clip is active.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.log_loss([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]))), 6)
    0.164252
    """
    be, (yt, yp, sw) = prepare(y_true=y_true, y_pred=y_pred, sample_weight=sample_weight)
    V.prediction("y_pred", yp)
    return family(be, _PW).log_loss(yt, yp, bool(normalize), sw, labels, _grad)


@loss(diff=("w",), family=_PW)
def l1_penalty(w: ArrayIn, lam: float = 1.0, *, _grad: GradRequest | None = None) -> Array:
    """L1 regularisation term ``lam * sum(|w|)`` (0-d); its gradient is ``lam * sign(w)``."""
    be, (w_,) = prepare(w=w)
    V.prediction("w", w_)
    return family(be, _PW).penalty(w_, float(lam), 1, _grad)


@loss(diff=("w",), family=_PW)
def l2_penalty(w: ArrayIn, lam: float = 1.0, *, _grad: GradRequest | None = None) -> Array:
    """L2 regularisation term ``lam / 2 * sum(w**2)`` (0-d); its gradient is ``lam * w``."""
    be, (w_,) = prepare(w=w)
    V.prediction("w", w_)
    return family(be, _PW).penalty(w_, float(lam), 2, _grad)


# --------------------------------------------------------------------------------------------------
# More of torch.nn.functional, and torchvision's focal loss (pointwise)
# --------------------------------------------------------------------------------------------------
@loss(diff=("input",), family=_PW)
def poisson_nll_loss(
    input: ArrayIn, target: ArrayIn, log_input: bool = True, full: bool = False, eps: float = 1e-8,
    reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Negative log likelihood of a Poisson-distributed ``target``.

    ``l = exp(input) - target * input`` (``log_input=True``: ``input`` is the log-rate) or
    ``l = input - target * log(input + eps)`` (the rate itself); ``full=True`` adds Stirling's
    approximation ``t * log(t) - t + 0.5 * log(2 * pi * t)`` of ``log(t!)`` where ``t > 1``. ``input``
    and ``target`` share one shape; ``'mean'`` averages over all elements. The gradient w.r.t. ``input``
    is ``exp(input) - target`` (``1 - target / (input + eps)``).

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.poisson_nll_loss(np.array([0.5, -1.0]), np.array([2.0, 0.0]))), 6)
    0.5083
    """
    V.reduction(reduction)
    be, (x, t) = prepare(input=input, target=target)
    x, t, _ = V.pointwise(x, t)
    return family(be, _PW).poisson_nll(x, t, bool(log_input), bool(full), float(eps), reduction, _grad)


@loss(diff=("input", "var"), family=_PW)
def gaussian_nll_loss(
    input: ArrayIn, target: ArrayIn, var: ArrayIn | float, full: bool = False, eps: float = 1e-6,
    reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Negative log likelihood of ``target`` under Gaussians of mean ``input`` and variance ``var``.

    ``l = 0.5 * (log(max(var, eps)) + (input - target)**2 / max(var, eps))``, plus ``0.5 * log(2 * pi)``
    with ``full=True``. ``var`` is a float or an array of ``input``'s shape, of that shape without its
    last dimension, or of that shape with one dimension of size 1 where ``input``'s differs (it then
    broadcasts, as PyTorch); a negative ``var`` is a ``ValueError``. The clamp at ``eps`` applies to the
    value only: as PyTorch, the gradient w.r.t. ``var`` passes straight through it,
    ``0.5 * (1 / v - (input - target)**2 / v**2)`` at ``v = max(var, eps)``, summed over the axes
    along which ``var`` broadcasts. Differentiated for ``(input, var)`` when ``var`` is an array, for
    ``input`` alone when it is a float.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.gaussian_nll_loss(np.array([1.0, 2.0]), np.array([1.5, 1.0]), np.array([0.5, 2.0]))), 6)
    0.25
    """
    V.reduction(reduction)
    scalar_var = not hasattr(var, "shape") and not isinstance(var, (list, tuple))
    if scalar_var:
        be, (x, t) = prepare(input=input, target=target)
    else:
        be, (x, t, var) = prepare(input=input, target=target, var=var)
    x, t, _ = V.pointwise(x, t)
    var = V.gaussian_var(x, var)
    return family(be, _PW).gaussian_nll(x, t, var, bool(full), float(eps), reduction, _grad)


@loss(diff=("input",), family=_PW)
def soft_margin_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Two-class logistic loss ``l = log(1 + exp(-target * input))`` with targets of +-1.

    ``input`` and ``target`` share one shape; ``'mean'`` averages over all elements. Evaluated as
    ``-log_sigmoid(target * input)``, which never overflows (PyTorch's ``log1p(exp(.))`` gives inf where
    ``-target * input`` exceeds the dtype's exp range). The gradient is ``-target * sigmoid(-target * input)``.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.soft_margin_loss(np.array([2.0, -0.5]), np.array([1.0, 1.0]))), 6)
    0.550502
    """
    V.reduction(reduction)
    be, (x, t) = prepare(input=input, target=target)
    x, t, _ = V.pointwise(x, t)
    return family(be, _PW).soft_margin(x, t, reduction, _grad)


@loss(diff=("input",), family=_PW)
def multilabel_soft_margin_loss(
    input: ArrayIn, target: ArrayIn, weight: ArrayIn | None = None, reduction: str = "mean", *,
    _grad: GradRequest | None = None
) -> Array:
    """Multi-label one-versus-all logistic loss.

    ``input`` ``(N, C)`` or ``(C,)`` (classes on the last axis), ``target`` of 0/1 of the same shape,
    ``weight`` ``(C,)`` (or anything broadcasting to ``input``). Each row's loss is the mean over its
    ``C`` classes of ``-w_c * (t_c * log(sigmoid(x_c)) + (1 - t_c) * log(sigmoid(-x_c)))``;
    ``'none'`` returns those ``(N,)`` (a 0-d array for 1-D input), ``'mean'`` their mean, ``'sum'``
    their sum.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.multilabel_soft_margin_loss(np.array([[2.0, -1.0, 0.5]]), np.array([[1.0, 0.0, 0.0]]))), 6)
    0.471422
    """
    V.reduction(reduction)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.pointwise(x, t, w, weight="broadcast")
    if x.ndim == 0:
        raise ValueError("input must be (N, C) or (C,): classes on the last axis, got a 0-d array")
    return family(be, _PW).multilabel_soft_margin(x, t, w, reduction, _grad)


@loss(diff=("inputs",), family=_PW)
def sigmoid_focal_loss(
    inputs: ArrayIn, targets: ArrayIn, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none", *,
    _grad: GradRequest | None = None
) -> Array:
    """Focal loss of logits (Lin et al., 2017), as ``torchvision.ops.sigmoid_focal_loss``.

    With ``p = sigmoid(inputs)`` and ``p_t = p * t + (1 - p) * (1 - t)``:
    ``l = alpha_t * (1 - p_t)**gamma * binary_cross_entropy_with_logits(inputs, t)``, where
    ``alpha_t = alpha * t + (1 - alpha) * (1 - t)`` (1 when ``alpha < 0``: no weighting). ``inputs``
    and ``targets`` share one shape; the default reduction is ``'none'``, as torchvision. Computed from
    ``exp(-|x|)`` alone, so large ``|inputs|`` neither overflow nor cancel.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.sigmoid_focal_loss(np.array([2.0, -1.0]), np.array([1.0, 1.0]), reduction='sum')), 6)
    0.175918
    """
    V.reduction(reduction)
    be, (x, t) = prepare(inputs=inputs, targets=targets)
    x, t, _ = V.pointwise(x, t, names=("inputs", "targets", "weight"))
    return family(be, _PW).sigmoid_focal(x, t, float(alpha), float(gamma), reduction, _grad)


# --------------------------------------------------------------------------------------------------
# Classification (softmax family)
# --------------------------------------------------------------------------------------------------
@loss(diff=("input",), family="softmax")
def log_softmax(
    input: ArrayIn, axis: int | None = None, *, dim: int | None = None, _grad: GradRequest | None = None
) -> Array:
    """``log_softmax(x)_j = x_j - max(x) - log(sum_k exp(x_k - max(x)))`` along ``axis``.

    ``axis`` defaults to the last; ``dim`` is accepted as its PyTorch name (``TypeError`` if both are
    given). Never overflows; the output has ``input``'s shape and dtype. The gradient (vector-Jacobian product
    with ``grad_output`` ``g``) is ``g - softmax(x) * sum(g)`` along ``axis``.
    """
    be, (x,) = prepare(input=input)
    V.prediction("input", x)
    if x.ndim == 0:
        raise ValueError("input must have at least 1 dimension, got a 0-d array")
    axis = _axis(_axis_or_dim(axis, dim), x.ndim)
    return family(be, "softmax").log_softmax(x, axis, _grad)


@loss(diff=("input",), family="softmax")
def softmax(
    input: ArrayIn, axis: int | None = None, *, dim: int | None = None, _grad: GradRequest | None = None
) -> Array:
    """``softmax(x)_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x))`` along ``axis``.

    ``axis`` defaults to the last; ``dim`` is accepted as its PyTorch name (``TypeError`` if both are
    given). The gradient (vector-Jacobian product with ``grad_output`` ``g``) is ``p * (g - sum(g * p))``.
    """
    be, (x,) = prepare(input=input)
    V.prediction("input", x)
    if x.ndim == 0:
        raise ValueError("input must have at least 1 dimension, got a 0-d array")
    axis = _axis(_axis_or_dim(axis, dim), x.ndim)
    return family(be, "softmax").softmax(x, axis, _grad)


@loss(diff=("input",), family="softmax", fast=True)
def nll_loss(
    input: ArrayIn, target: ArrayIn, weight: ArrayIn | None = None, ignore_index: int = -100,
    reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Negative log-likelihood of log-probabilities ``input``; classes on axis 1.

    ``l_i = -w[t_i] * input[i, t_i]`` (0 where ``t_i == ignore_index``); ``'mean'`` is
    ``sum(l) / sum(w[t_i])`` over non-ignored targets (NaN when every target is ignored, as PyTorch).
    Shapes: input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; target ``()``, ``(N,)`` or
    ``(N, d1, ..., dk)`` of any integer dtype; weight ``(C,)``.
    """
    V.reduction(reduction)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.classification(x, t, w, ignore_index, probabilities_allowed=False)
    return family(be, "softmax").nll(x, t, w, int(ignore_index), reduction, _grad)


@loss(diff=("input",), family="softmax", fast=True)
def cross_entropy(
    input: ArrayIn, target: ArrayIn, weight: ArrayIn | None = None, ignore_index: int = -100,
    reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
    softcap: float | None = None, _grad: GradRequest | None = None
) -> Array:
    """Cross entropy of logits ``input`` (log-softmax and NLL fused); classes on axis 1.

    Index targets: ``l_i = -(1 - e) * w[t_i] * logp[i, t_i] - e / C * sum_c w[c] * logp[i, c]`` with
    ``e = label_smoothing`` and ``logp = log_softmax(input, axis=1)``; ignored targets give 0; ``'mean'``
    divides by ``sum(w[t_i])`` over non-ignored targets (NaN when all are ignored). Probability targets
    (float, ``input``'s shape): ``l_i = -sum_c w[c] * q[i, c] * logp[i, c]`` with
    ``q = (1 - e) * target + e / C``; ``'mean'`` divides by the number of rows.
    Shapes: input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; target ``()``, ``(N,)`` or
    ``(N, d1, ..., dk)`` of any integer dtype, or probabilities of input's shape; weight ``(C,)``.
    The gradient is ``softmax(input) * sum_c(...) - ...`` written in the same pass over each row.

    Two keyword-only options beyond PyTorch (Liger-Kernel's and cut-cross-entropy's): ``softcap=s > 0``
    replaces the logits by ``z = s * tanh(input / s)`` before everything else (the gradient flows
    through the tanh: ``dz/dx = 1 - (z / s)**2``); ``z_loss=lam >= 0`` adds ``lam * u_i * lse_i**2``
    to each non-ignored position's loss, ``lse_i`` the log-sum-exp of its (softcapped) logits and
    ``u_i = w[t_i]`` (1 without weights and for probability targets), with the same ``'mean'``
    denominator as above; its gradient is ``2 * lam * u_i * lse_i * softmax(z)``. With the defaults
    (``z_loss=0.0, softcap=None``) the result is PyTorch's, from the same kernels as without them.
    ``softcap <= 0`` or ``z_loss < 0`` is a ``ValueError``.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.cross_entropy(np.array([[2.0, 0.0, -1.0]]), np.array([0]))), 6)
    0.169846
    >>> round(float(fl.cross_entropy(np.array([[2.0, 0.0, -1.0]]), np.array([0]), z_loss=1e-4, softcap=30.0)), 6)
    0.170794
    """
    V.reduction(reduction)
    ls = V.in_closed_unit("label_smoothing", label_smoothing)
    z_loss, softcap = V.large_vocabulary_options(z_loss, softcap)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    x, t, w = V.classification(x, t, w, ignore_index)
    if z_loss == 0.0 and softcap is None:
        return family(be, "softmax").cross_entropy(x, t, w, int(ignore_index), reduction, ls, _grad)
    return family(be, "lce").cross_entropy(x, t, w, int(ignore_index), reduction, ls, z_loss, softcap, _grad)


@loss(diff=("input", "linear_weight", "linear_bias"), family="lce")
def linear_cross_entropy(
    input: ArrayIn, linear_weight: ArrayIn, target: ArrayIn, *, linear_bias: ArrayIn | None = None,
    weight: ArrayIn | None = None, reduction: str = "mean", ignore_index: int | None = None,
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    chunk_size: int | None = None, _grad: GradRequest | None = None
) -> Array:
    """Cross entropy of a linear layer's output, ``cross_entropy(input @ linear_weight.T + linear_bias,
    target, ...)``, without ever holding the whole ``(N, V)`` logits (torch 2.13's
    ``F.linear_cross_entropy``, plus ``z_loss`` and ``softcap`` as in :func:`cross_entropy`).

    Shapes: ``input (N, H)`` or ``(H,)``; ``linear_weight (V, H)``; ``linear_bias (V,)``; ``target``
    class indices ``(N,)`` (``()`` for a 1-D input) of any integer dtype, or probabilities ``(N, V)``
    (``(V,)``); ``weight (V,)``. ``ignore_index=None`` means -100 for class indices. The loss of row
    ``i`` is that of :func:`cross_entropy` on the logits ``z_i = W x_i + b`` (softcapped when asked);
    ``'mean'`` divides by ``sum_i w[t_i]`` over non-ignored rows (index targets) or by ``N``
    (probabilities); ``'none'`` gives ``(N,)`` (``()`` for a 1-D input).

    Rows, and classes when one row does not fit, are processed in chunks of at most ``chunk_size``
    logits: per chunk one matrix product (BLAS; cuBLAS on the GPU), the fused cross-entropy kernel
    writing the logits' gradient over them, and, for the gradient, ``d input = G @ W`` and
    ``d W += G.T @ input`` (``d b += sum(G)``). The default ``chunk_size`` keeps the extra memory
    under 5 % of the full logits (logits of up to 2**20 elements are one chunk): on the CPU, whole
    rows when 512 of them (or all) fit, else blocks of classes across up to 4,096 rows, for which
    the logits are computed twice (a sweep for each row's log-sum-exp, then one for the gradient:
    four products instead of three, each large enough for BLAS to run at full speed, where thin
    chunks of rows would stream ``W`` and ``d W`` from memory once per chunk). On the GPU chunks
    are whole rows, at least 64 (a ``chunk_size`` below ``V`` gives one row per chunk); CuPy arrays
    use cuBLAS, Numba device arrays a plain product kernel (correct, not fast). The products
    accumulate in the input's precision as BLAS does; the log-sum-exp, loss and reductions in
    float64. Results do not depend on ``chunk_size`` beyond rounding. The gradients (:func:`fastloss.value_and_grad`) are of
    ``(input, linear_weight)``, and of ``linear_bias`` too when one is given.

    ``chunk_size < 1``, ``softcap <= 0``, ``z_loss < 0``: ``ValueError``; shapes that do not fit:
    ``ValueError`` naming them; a class index outside ``[0, V)`` (not ``ignore_index``): ``IndexError``.

    >>> import numpy as np, fastloss as fl
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]]); W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> round(float(fl.linear_cross_entropy(x, W, np.array([0, 2]))), 6)
    0.810309
    >>> loss, (dx, dW) = fl.value_and_grad(fl.linear_cross_entropy)(x, W, np.array([0, 2]), chunk_size=3)
    >>> dW.shape
    (3, 2)
    """
    V.reduction(reduction)
    ls = V.in_closed_unit("label_smoothing", label_smoothing)
    z_loss, softcap = V.large_vocabulary_options(z_loss, softcap)
    chunk = V.chunk_size(chunk_size)
    be, (x, lw, t, b, w) = prepare(input=input, linear_weight=linear_weight, target=target, linear_bias=linear_bias,
                                   weight=weight)
    ig = -100 if ignore_index is None else int(ignore_index)
    t, w = V.linear_classification(x, lw, t, b, w, ig)
    return family(be, "lce").linear_cross_entropy(x, lw, t, b, w, ig, reduction, ls, z_loss, softcap, chunk, _grad)


def _axis_or_dim(axis, dim) -> int:
    """``axis``, or PyTorch's name for it, ``dim``; -1 when neither is given (``TypeError`` for both)."""
    if dim is not None:
        if axis is not None:
            raise TypeError("give axis or dim (its PyTorch name), not both")
        return dim
    return -1 if axis is None else axis


def _axis(axis, ndim: int) -> int:
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of {ndim} dimensions")
    return axis % ndim


# --------------------------------------------------------------------------------------------------
# Ranking, embedding and triplet losses (Cython kernels)
# --------------------------------------------------------------------------------------------------
@loss(diff=("input1", "input2"), family="ranking")
def margin_ranking_loss(
    input1: ArrayIn, input2: ArrayIn, target: ArrayIn, margin: float = 0.0, reduction: str = "mean", *,
    _grad: GradRequest | None = None
) -> Array:
    """``l = max(0, -target * (input1 - input2) + margin)``; ``target`` holds 1 or -1 (any other value
    simply scales the difference, as in PyTorch).

    ``input1``, ``input2`` and ``target`` share one shape, any number of dimensions (PyTorch broadcasts
    equal-rank shapes; fastloss refuses unequal shapes). The loss's dtype is PyTorch's promotion of the
    inputs and of a float ``target`` (float32 inputs with a float64 target give float64); each gradient,
    for ``(input1, input2)``, has its input's dtype. The gradient at ``l``'s kink (argument exactly 0) is
    passed through, as PyTorch's ``clamp_min``.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.margin_ranking_loss(np.array([1.0, 2.0]), np.array([2.0, 0.0]), np.array([1.0, 1.0])))
    0.5
    """
    V.reduction(reduction)
    be, (x1, x2, y) = prepare(input1=input1, input2=input2, target=target)
    dt = V.common_float(input1=x1, input2=x2)
    # A float target takes part in the promotion; integer and boolean targets take the inputs' dtype.
    y = V.as_float("target", y, y.dtype if y.dtype.kind == "f" else dt)
    V.same_shape("input1", x1, "input2", x2)
    V.same_shape("input1", x1, "target", y)
    return family(be, "ranking").margin_ranking(x1, x2, y, float(margin), reduction, _grad)


@loss(diff=("input",), family="ranking")
def hinge_embedding_loss(
    input: ArrayIn, target: ArrayIn, margin: float = 1.0, reduction: str = "mean", *,
    _grad: GradRequest | None = None
) -> Array:
    """``l = x`` where ``target == 1``, ``max(0, margin - x)`` where ``target == -1`` (PyTorch adds both
    terms for any other target value). ``input`` and ``target`` share one shape, any number of
    dimensions; ``'mean'`` averages over every element.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.hinge_embedding_loss(np.array([0.3, 2.0]), np.array([-1.0, 1.0]), reduction='sum'))
    2.7
    """
    V.reduction(reduction)
    be, (x, y) = prepare(input=input, target=target)
    x, y, _ = V.pointwise(x, y)
    return family(be, "ranking").hinge_embedding(x, y, float(margin), reduction, _grad)


@loss(diff=("input1", "input2"), family="ranking")
def cosine_embedding_loss(
    input1: ArrayIn, input2: ArrayIn, target: ArrayIn, margin: float = 0.0, reduction: str = "mean", *,
    _grad: GradRequest | None = None
) -> Array:
    """With ``cos = <x1, x2> / sqrt((|x1|^2 + e) * (|x2|^2 + e))`` per row:
    ``l = 1 - cos`` where ``target == 1``, ``max(0, cos - margin)`` where ``target == -1``.

    ``e`` is PyTorch's ``EPSILON``, ``1e-12`` as a float32 constant (``9.99999996e-13``) in every
    dtype. Any other target gives 0 (PyTorch's ``where``). ``input1``, ``input2``: ``(N, D)`` or ``(D,)``;
    ``target``: ``(N,)`` or ``()``. The loss has PyTorch's promotion of the inputs' dtypes, each gradient
    its input's dtype.

    >>> import numpy as np, fastloss as fl
    >>> float(fl.cosine_embedding_loss(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]), np.array([1])))
    1.0
    """
    V.reduction(reduction)
    be, (x1, x2, y) = prepare(input1=input1, input2=input2, target=target)
    dt = V.common_float(input1=x1, input2=x2)
    V.same_shape("input1", x1, "input2", x2)
    if x1.ndim not in (1, 2):
        raise ValueError(f"input1 and input2 must be (N, D) or (D,), got {tuple(x1.shape)}")
    y = V.as_float("target", y, dt)
    if tuple(y.shape) != tuple(x1.shape[:-1]):
        raise ValueError(
            f"target must have shape {tuple(x1.shape[:-1])} for inputs of shape {tuple(x1.shape)}, "
            f"got {tuple(y.shape)}"
        )
    return family(be, "ranking").cosine_embedding(x1, x2, y, float(margin), reduction, _grad)


@loss(diff=("anchor", "positive", "negative"), family="triplet")
def triplet_margin_loss(
    anchor: ArrayIn, positive: ArrayIn, negative: ArrayIn, margin: float = 1.0, p: float = 2.0,
    eps: float = 1e-6, swap: bool = False, reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """``l = max(0, d(a, p) - d(a, n) + margin)`` with ``d(x, y) = ||x - y + eps||_p`` over the last
    axis (eps is added to the difference, as ``torch.pairwise_distance``); with ``swap=True``,
    ``d(a, n)`` is replaced by ``min(d(a, n), d(p, n))``.

    ``anchor``, ``positive``, ``negative`` share one shape: ``(N, D)``, ``(D,)`` or any other (the loss
    has the shape without the last axis), as PyTorch. ``margin`` must be positive (``ValueError``, as
    PyTorch 2.13). ``p`` is any positive order, ``inf`` included (the largest ``|difference|``, which
    needs ``D > 0``); ``p <= 0``, which PyTorch's vector norm would also take, is a ``ValueError``.
    Gradients at kinks are PyTorch's: passed through at ``l``'s kink, 0 where a distance is 0, shared
    among the elements attaining the max for ``p = inf``, halved between ``d(a, n)`` and ``d(p, n)`` at
    a swap tie.

    >>> import numpy as np, fastloss as fl
    >>> a, p, n = np.zeros((1, 2)), np.array([[3.0, 4.0]]), np.array([[6.0, 8.0]])
    >>> round(float(fl.triplet_margin_loss(a, p, n, margin=6.0, eps=0.0)), 6)
    1.0
    """
    V.reduction(reduction)
    margin = V.positive("margin", margin)
    p = float(p)
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    be, (a, po, n) = prepare(anchor=anchor, positive=positive, negative=negative)
    V.common_float(anchor=a, positive=po, negative=n)
    V.same_shape("anchor", a, "positive", po)
    V.same_shape("anchor", a, "negative", n)
    if p == float("inf") and a.ndim and tuple(a.shape)[-1] == 0:  # tuple(): device shapes refuse [-1]
        raise ValueError(f"the p=inf norm of an empty last axis is undefined (anchor of shape {tuple(a.shape)})")
    return family(be, "triplet").triplet_margin(a, po, n, margin, p, float(eps), bool(swap), reduction, _grad)


# --------------------------------------------------------------------------------------------------
# Row-wise margin losses (margin family)
# --------------------------------------------------------------------------------------------------
@loss(diff=("input",), family="margin")
def multi_margin_loss(
    input: ArrayIn, target: ArrayIn, p: int = 1, margin: float = 1.0, weight: ArrayIn | None = None,
    reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Multi-class hinge loss: per row with target class ``y``,
    ``l = w[y] / C * sum_{i != y} max(0, margin - x[y] + x[i]) ** p``.

    Shapes: ``input (N, C)``, ``(C,)`` or ``()`` (one class); ``target`` class indices (any integer
    dtype) of ``N`` elements, ``(N,)`` or ``()`` for one sample; ``weight (C,)``. ``p`` is 1 or 2
    (``ValueError`` otherwise); ``margin`` may be any number. ``'none'`` gives target's shape, ``'mean'``
    divides the sum by ``N`` (not by a sum of weights; NaN for ``N = 0``). A NaN ``z = margin - x[y] + x[i]``
    adds nothing and gets no gradient, as in PyTorch (whose kernels test ``z > 0``). The gradient is
    ``w[y] / C * p * z ** (p - 1)`` where ``z > 0`` (``i != y``) and minus their sum at ``y``, written
    in the same pass. A class index outside ``[0, C)``: ``IndexError``.

    >>> import numpy as np, fastloss as fl
    >>> round(float(fl.multi_margin_loss(np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3]))), 6)
    0.325
    >>> loss, g = fl.value_and_grad(fl.multi_margin_loss)(np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3]), p=2)
    >>> g.round(3).tolist()
    [[0.15, 0.2, 0.3, -0.65]]
    """
    V.reduction(reduction)
    be, (x, t, w) = prepare(input=input, target=target, weight=weight)
    t, w, p = V.multi_margin(x, t, w, p)
    return family(be, "margin").multi_margin(x, t, p, float(margin), w, reduction, _grad)


@loss(diff=("input",), family="margin")
def multilabel_margin_loss(
    input: ArrayIn, target: ArrayIn, reduction: str = "mean", *, _grad: GradRequest | None = None
) -> Array:
    """Multi-label hinge loss: row ``r`` lists its target classes ``target[r, 0], target[r, 1], ...``
    up to the first ``-1`` (or the row's end), and
    ``l = 1 / C * sum_{j listed} sum_{i not listed} max(0, 1 - (x[j] - x[i]))``.

    Shapes: ``input (N, C)``, ``(C,)`` or ``()``; ``target`` integer class indices of input's shape,
    each in ``[-1, C)`` (values after a row's first ``-1`` are not used, but checked; else
    ``IndexError``). A class listed twice counts twice, as in PyTorch. ``'none'`` gives ``(N,)`` (``()``
    for a 1-D input), ``'mean'`` divides the sum by ``N`` (NaN for ``N = 0``). A NaN term adds nothing,
    as in PyTorch. The gradient, from the same pass: ``+1 / C`` for each violated pair at the other
    class, ``-1 / C`` at the listed one.

    >>> import numpy as np, fastloss as fl
    >>> x = np.array([[0.1, 0.2, 0.4, 0.8]]); t = np.array([[3, 0, -1, 1]])
    >>> round(float(fl.multilabel_margin_loss(x, t)), 6)
    0.85
    >>> fl.grad(fl.multilabel_margin_loss)(x, t).tolist()
    [[-0.5, 0.5, 0.5, -0.5]]
    """
    V.reduction(reduction)
    be, (x, t) = prepare(input=input, target=target)
    t = V.multilabel_margin(x, t)
    return family(be, "margin").multilabel_margin(x, t, reduction, _grad)


# --------------------------------------------------------------------------------------------------
# Sequences (CTC)
# --------------------------------------------------------------------------------------------------
@loss(diff=("log_probs",), family="ctc")
def ctc_loss(
    log_probs: ArrayIn, targets: ArrayIn, input_lengths, target_lengths, blank: int = 0,
    reduction: str = "mean", zero_infinity: bool = False, *, _grad: GradRequest | None = None
) -> Array:
    """Connectionist temporal classification loss (Graves et al. 2006), as ``torch.nn.functional.ctc_loss``.

    For sequence ``n`` with target ``y`` (``L = target_lengths[n]`` labels) and the frames
    ``t < T_n = input_lengths[n]`` of ``log_probs``, the loss is ``-log p(y | x)``, ``p`` the sum over
    every alignment ``pi`` (a label per frame) that collapses to ``y`` once repeats are merged and
    blanks removed, of ``prod_t exp(log_probs[t, n, pi_t])``. It is computed by the forward-backward
    (alpha-beta) recursion in log space over the extended target ``y'`` (``2L + 1`` labels: blanks
    between and around ``y``'s), in float64. A target no alignment can produce (too few frames for
    its labels and the blanks its repeats need) has the loss ``inf``; ``zero_infinity=True`` makes such
    losses, and their gradients, 0.

    Shapes: ``log_probs`` ``(T, N, C)`` (``C`` classes, ``blank`` among them); ``targets`` padded
    ``(N, S)`` (only the first ``target_lengths[n]`` labels of row ``n`` are read) or the targets
    concatenated, 1-D of ``sum(target_lengths)``, of any integer dtype; ``input_lengths`` and
    ``target_lengths`` 1-D integer arrays or sequences of ``N`` ints. Unbatched: ``log_probs`` ``(T, C)``,
    1-D ``targets`` of exactly the target length, each length an int, a 0-d array or one element.
    ``'none'`` gives ``(N,)`` (``()`` unbatched); ``'mean'`` divides each loss by its target length
    (at least 1) and averages over the batch; ``'sum'`` adds the losses.

    The gradient (:func:`fastloss.value_and_grad`) is torch's, which assumes ``log_probs`` came out of
    a log-softmax: ``(exp(log_probs[t, n, c]) - gamma[t, n, c]) * g_n``, ``gamma`` the posterior
    probability that frame ``t`` emits class ``c``, ``g_n`` the incoming gradient of sequence ``n``
    (divided by its clamped target length and ``N`` for ``'mean'``); 0 for frames ``t >= T_n``, and
    NaN for the frames of an infinite loss unless ``zero_infinity``. Lengths that do not fit the arrays
    are a ``ValueError``, a label outside ``[0, C)`` or equal to ``blank`` an ``IndexError``, as are
    non-integer targets or lengths a ``TypeError``. Lengths and labels are read on the host (device
    ones are copied, as torch does).

    >>> import numpy as np, fastloss as fl
    >>> log_probs = np.log(np.full((3, 1, 2), 0.5))  # 3 frames, 1 sequence, classes {blank, a}
    >>> float(fl.ctc_loss(log_probs, np.array([[1]]), [3], [1], reduction='sum'))  # 6 of 8 paths give "a"
    0.2876820724517809
    """
    V.reduction(reduction)
    be, (x, t, il, tl) = prepare(log_probs=log_probs, targets=targets, input_lengths=_array_or_none(input_lengths),
                                 target_lengths=_array_or_none(target_lengths))
    problem = V.ctc(x, t, input_lengths if il is None else il, target_lengths if tl is None else tl, blank)
    return family(be, "ctc").ctc_loss(x, problem, int(blank), reduction, bool(zero_infinity), _grad)


def _array_or_none(v):
    """``v`` where it is an array (so that it takes part in the backend's choice), ``None`` for the
    Python ints and sequences that lengths may also be."""
    return None if v is None or isinstance(v, (int, list, tuple)) else v
