"""CUDA twin of the pointwise family: the same drivers as :mod:`fastloss.families.pointwise`, for GPU arrays.

Where to find what:

* :mod:`.kernels`: the one-point functions of :mod:`fastloss.families.pointwise.points` compiled as CUDA
  device functions (float64 and float32 elementary functions), and the two fused passes every loss runs
  through, each compiled per loss and case by a kernel factory (``fast_kernel``: contiguous operands,
  16-byte vector loads where aligned; ``broadcast_kernel``: broadcast operands).
* :mod:`.drivers`: the drivers called by :mod:`fastloss.api` (operand layout, reductions, rmse's and
  gaussian_nll's second passes, multilabel_soft_margin's row sums).
* :mod:`.logloss`: scikit-learn's ``log_loss`` (a row kernel of its own).

This package re-exports the drivers, which :func:`fastloss._dispatch.family` reaches through
``fastloss.families.pointwise_cuda``.
"""
from .drivers import (bce, bce_logits, gaussian_nll, huber, kl_div, l1, mape, mse,
                      multilabel_soft_margin, penalty, poisson_nll, rmse, sigmoid_focal, smooth_l1, soft_margin)
from .logloss import log_loss

__all__ = ["bce", "bce_logits", "gaussian_nll", "huber", "kl_div", "l1", "log_loss", "mape", "mse",
           "multilabel_soft_margin", "penalty", "poisson_nll", "rmse", "sigmoid_focal", "smooth_l1", "soft_margin"]
