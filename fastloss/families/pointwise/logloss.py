"""log_loss: scikit-learn 1.9's sklearn.metrics.log_loss, with its gradient w.r.t. y_pred (NumPy)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..._dispatch import scalar_result


def _log_loss_classes(y_true, labels):
    """The sorted classes (LabelBinarizer's order) and each sample's class index, as scikit-learn."""
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be a 1-d array of labels, got shape {y_true.shape}")
    if labels is None:
        classes, index = np.unique(y_true, return_inverse=True)
        if classes.size == 1:
            raise ValueError(
                f"y_true contains only one label ({classes[0]}). Please provide the list of all expected "
                "class labels explicitly through the labels argument."
            )
        return classes, index
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.shape != labels.shape or not np.all(classes == labels):
        warnings.warn(
            f"Labels passed were {labels.tolist()}. But this function assumes labels are ordered "
            f"lexicographically. Pass the ordered labels={classes.tolist()} and ensure that the columns "
            "of y_pred correspond to this ordering.", UserWarning, stacklevel=4)
    missing = ~np.isin(y_true, classes)
    if missing.any():
        raise ValueError(f"y_true contains values {set(y_true[missing].tolist())} not belonging to the "
                         f"passed labels {labels.tolist()}.")
    if classes.size == 1:
        raise ValueError(f"The labels array needs to contain at least two labels, got {classes.tolist()}.")
    return classes, np.searchsorted(classes, y_true)


def _log_loss_check(y_true, y_pred, sample_weight):
    """scikit-learn's checks of y_pred's values and of the three lengths; returns the weights or None."""
    if y_pred.ndim not in (1, 2):
        raise ValueError(f"y_pred must be (n_samples,) or (n_samples, n_classes), got shape {y_pred.shape}")
    if y_pred.shape[0] == 0:
        raise ValueError("y_pred holds no samples (shape {}); log_loss needs at least one".format(y_pred.shape))
    if not np.all(np.isfinite(y_pred)):
        raise ValueError("y_pred contains NaN or infinity")
    if y_pred.max() > 1:
        raise ValueError(f"y_pred contains values greater than 1: {y_pred.max()}")
    if y_pred.min() < 0:
        raise ValueError(f"y_pred contains values lower than 0: {y_pred.min()}")
    lengths = [len(y_true), y_pred.shape[0]] + ([] if sample_weight is None else [np.size(sample_weight)])
    if len(set(lengths)) > 1:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: {lengths}")
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be a real numeric array, got dtype {sw.dtype}")
    return sw.reshape(-1).astype(np.float64)


def log_loss(y_true, y_pred, normalize, sample_weight, labels, grad):
    """sklearn.metrics.log_loss (1.9) of labels ``y_true`` and probabilities ``y_pred``, and its gradient.

    ``y_pred``: (n, k) with columns in the order of the sorted labels, or (n,) holding the positive
    class's probability (columns ``[1 - p, p]``). Each probability is clipped to ``[eps, 1 - eps]`` in
    ``y_pred``'s dtype; ``l_i = -log(p[i, y_i])``; the value is ``sum_i s_i l_i / sum_i s_i``
    (``normalize``) or ``sum_i s_i l_i`` (``s = 1`` without ``sample_weight``). The gradient is
    ``-c s_i / p[i, y_i]`` at the true class (``c = grad_output / sum(s)`` or ``grad_output``), 0 at
    the other classes and where the clip is active (as torch.clamp's gradient).
    """
    y_true = np.asarray(y_true)
    sw = _log_loss_check(y_true, y_pred, sample_weight)
    classes, index = _log_loss_classes(y_true, labels)
    n, dtype = y_pred.shape[0], y_pred.dtype
    binary = y_pred.ndim == 1 or y_pred.shape[1] == 1
    k = 2 if binary else y_pred.shape[1]
    if classes.size != k:
        raise ValueError(f"y_true and y_pred contain different number of classes: {classes.size} vs {k}. "
                         f"Classes found: {classes.tolist()}")
    rows = np.arange(n)
    if binary:  # the true class's column of [1 - p, p], formed in y_pred's dtype as scikit-learn does
        p1 = y_pred.reshape(n)
        p_true = np.where(index == 1, p1, dtype.type(1) - p1)
        row_sums = np.ones(n)
    else:
        p_true = y_pred[rows, index]
        row_sums = y_pred.sum(axis=1, dtype=np.float64)
    if not np.allclose(row_sums, 1.0, rtol=math.sqrt(np.finfo(dtype).eps), atol=0.0):
        warnings.warn("The y_pred values do not sum to one. Make sure to pass probabilities.", UserWarning,
                      stacklevel=4)
    eps = np.finfo(dtype).eps
    clipped = np.clip(p_true, eps, dtype.type(1) - eps).astype(np.float64)
    s = np.ones(n) if sw is None else sw
    total = -math.fsum(s * np.log(clipped))
    if normalize:
        weight_sum = math.fsum(s)
        if weight_sum == 0:
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
        value, c = total / weight_sum, 1.0 / weight_sum
    else:
        value, c = total, 1.0
    result = scalar_result(value, dtype)
    if grad is None:
        return result
    c *= grad.scalar()
    inside = (p_true >= eps) & (p_true <= dtype.type(1) - eps)  # clip's gradient: 1 inside, 0 outside
    g_true = np.where(inside, -c * s / clipped, 0.0)
    gout = grad.out_for(0, y_pred)
    if binary:  # d/dp of -log(p) and of -log(1 - p)
        gout.reshape(n)[:] = np.where(index == 1, g_true, -g_true)
    else:
        gout[...] = 0
        gout[rows, index] = g_true
    return result, (gout,)
