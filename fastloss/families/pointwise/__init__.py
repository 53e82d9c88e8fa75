"""The pointwise family: regression, probabilistic and penalty losses that treat each element alone.

Losses: ``l1_loss``, ``mse_loss``, ``smooth_l1_loss``, ``huber_loss``, ``mape_loss``, ``rmse_loss``,
``binary_cross_entropy``, ``binary_cross_entropy_with_logits``, ``kl_div``, ``log_loss``,
``l1_penalty``, ``l2_penalty``; semantics of PyTorch 2.13 (``log_loss``: scikit-learn 1.9).

Where to find what:

* :mod:`.points`: the **one-point functions** (plain Python of scalars): each formula and its derivative,
  written once and compiled for the CPU (:mod:`.blocks`) and for CUDA (:mod:`fastloss.families.pointwise_cuda`).
* :mod:`.loops`: the CPU machinery every loss shares (chunk routine, direct path, broadcast operands,
  chunking of the parallel loop).
* :mod:`.blocks`: each loss's CPU kernels (block loop, chunk kernel, direct-path kernel).
* :mod:`.drivers`: the drivers called by :mod:`fastloss.api`; :mod:`.logloss`: scikit-learn's log_loss.
* :mod:`.reference`: float64 NumPy references and PyTorch expressions; :mod:`.cases`: test and
  benchmark inputs.

This package re-exports what the rest of fastloss (the API's drivers, the registry's tables, the CUDA
twin, the tests and benchmarks) reaches through ``fastloss.families.pointwise``.
"""
from .blocks import _DIRECT, P, P32, _bce_logits_chunk  # noqa: F401
from .cases import BENCH, CASES  # noqa: F401
from .drivers import (_fused, _run, bce, bce_logits, gaussian_nll, huber, kl_div, l1, mape, mse,  # noqa: F401
                      multilabel_soft_margin, penalty, poisson_nll, rmse, sigmoid_focal, smooth_l1, soft_margin,
                      values_outside_unit_interval)
from .logloss import log_loss  # noqa: F401
from .loops import BLOCK, MAX_CHUNKS, MIN_CHUNK, _run_chunks  # noqa: F401
from .points import *  # noqa: F401,F403  (the one-point functions, by name)
from .reference import (REFERENCE, TORCH, ref_binary_cross_entropy_with_logits, ref_huber_loss,  # noqa: F401
                        torch_mape_loss)
