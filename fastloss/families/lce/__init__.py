"""Large-vocabulary cross entropy on the CPU: ``cross_entropy`` with z-loss / logit softcapping, and
``linear_cross_entropy`` (the projection ``input @ linear_weight.T + linear_bias`` fused with the loss).

Semantics: SPEC §1 "Large-vocabulary cross entropy" (see :mod:`fastloss.api` for the formulas).
``cross_entropy`` reaches this module only when ``z_loss`` or ``softcap`` is set; with their defaults
it runs :mod:`fastloss.families.softmax` unchanged.

The row maths
-------------
For one row of logits ``x`` (``C`` classes), softcap ``s`` (or none) and z-loss weight ``lam``:

* ``z_c = s tanh(x_c / s)`` (``z = x`` without a softcap), ``lse = log sum_c exp(z_c)``,
  ``p_c = exp(z_c - lse)``;
* the cross entropy puts weight ``a_c`` on ``-log p_c``: index target ``t``, class weights ``w``,
  smoothing ``e``: ``a_c = (1 - e) w_t [c == t] + e w_c / C``; probability target ``q``:
  ``a_c = w_c ((1 - e) q_c + e / C)``. With ``S = sum_c a_c`` the loss is
  ``l = S lse - sum_c a_c z_c + lam u lse**2`` where ``u = w_t`` (index) or 1 (probabilities);
* gradient: ``dl/dz_c = p_c S - a_c + 2 lam u lse p_c`` (``d lse / d z_c = p_c``), so
  ``dl/dz_c = p_c (S + 2 lam u lse) - a_c``, and through the softcap
  ``dz_c/dx_c = 1 - tanh(x_c / s)**2 = 1 - (z_c / s)**2`` (from the stored ``z``, as torch's
  ``tanh`` backward does from its output).

Each row's gradient is that times the row's coefficient ``k``: ``grad_output`` (per row for
``'none'``) over the ``'mean'`` denominator; an ignored row has ``k = 0`` and loss 0 (its gradient is
``p * 0``: NaN only where its softmax is, as torch's).

Where things are
----------------
* :mod:`.row_kernels`: the one-point functions (tanh in the data's precision), the segment loops, the
  full-row kernel ``_rows`` and the class-block kernels.
* :mod:`.drivers`: ``cross_entropy``'s driver and what both drivers share (targets, coefficients,
  reduction, the thread pool).
* :mod:`.linear`: ``linear_cross_entropy``'s driver, its chunk size and schedule of BLAS products.
* :mod:`.reference`: ``REFERENCE``, ``CASES``, ``BENCH`` and ``TORCH``.

Kernels
-------
Serial ``nogil`` Numba kernels over a run of rows (:func:`.row_kernels._rows`), run on the thread pool of
:func:`fastloss._jit.run_chunks` (no ``prange``), built on the softmax family's row primitives. Per row, one
pass from memory: ``exp(z - m)`` written into the gradient buffer (with a softcap, times ``1 - tanh(x / s)**2``,
the softcap's derivative, with ``tanh(x / s)`` kept in a private row only for probability targets or label
smoothing), while the next row's maximum is taken (with a softcap the next row is only prefetched, and its
maximum taken from cache when it comes: its longer arithmetic must not wait on those loads); the gradient pass
then rescales them from L2. The max of the softcapped row is ``s tanh(max x / s)`` (tanh increases). float32
data is computed in float32 (``expf``, ``tanhf``; with a softcap ``exp(z - m)`` is ``2**(a tanh - b)``, ``a``
and ``b`` the softcap and the maximum times ``log2(e)``, by ``exp2f_bounded`` when the softcap bounds the
argument, and rows well inside the cap take ``tanhf_tiny``; exponentials summed in float32 over blocks of
:data:`.row_kernels._BLOCK` elements, each block then added in float64); all other sums are float64.

``linear_cross_entropy`` processes rows in chunks: BLAS products fill the chunk buffer with the
logits, the row kernel overwrites them with their gradient (in place), then ``d input = G @ W`` and
``d W += G.T @ input`` (a BLAS ``gemm`` with ``beta = 1``: no ``(V, H)`` temporary). Each thread owns
one class slice of the chunk and calls single-threaded BLAS on it (see :func:`.linear._sliced_chunks`);
small products (:data:`.linear.PARALLEL_PRODUCTS`) are one chunk on the calling thread
(:func:`.linear._one_chunk`). When one row of
``V`` classes exceeds ``chunk_size``, or (by default) when fewer than :data:`.linear.WHOLE_ROWS` rows fit
the memory budget, the classes are processed in blocks too, across many rows, with an online
log-sum-exp: a first sweep gathers each row's statistics, a second recomputes each block of logits for
its gradient (four products instead of three, but each of BLAS size: :func:`.linear._class_blocks`).
"""
from .drivers import cross_entropy
from .linear import CHUNK_FRACTION, MIN_CHUNK_ROWS, _chunk_shape, linear_cross_entropy
from .reference import (BENCH, CASES, REFERENCE, TORCH, _index_targets, _prob_targets, ref_cross_entropy,
                        ref_linear_cross_entropy, ref_rows, torch_cross_entropy, torch_linear_cross_entropy)

# the public drivers and tables, and the helpers other modules and the tests use by name
__all__ = ["BENCH", "CASES", "CHUNK_FRACTION", "MIN_CHUNK_ROWS", "REFERENCE", "TORCH", "cross_entropy",
           "linear_cross_entropy", "ref_cross_entropy", "ref_linear_cross_entropy", "ref_rows",
           "torch_cross_entropy", "torch_linear_cross_entropy", "_chunk_shape", "_index_targets", "_prob_targets"]
