"""CUDA twin of the softmax family: ``log_softmax``, ``softmax``, ``nll_loss``, ``cross_entropy``.

Same drivers and semantics as :mod:`fastloss.families.softmax` (PyTorch 2.13), for GPU arrays.

Layout. The input is viewed as ``(O, C, K)`` in C order: ``C`` the classes (the softmax axis), ``O`` the
axes before it and ``K`` those after it. A *row* is ``x[o, :, k]``; its elements lie ``K`` apart, and
row ``r = o * K + k`` is element ``r`` of the loss for ``reduction='none'`` (the target's C order).

Row kernels. A row belongs to a *group* of ``G`` threads (``G`` a power of two, see
:func:`fastloss._cuda_rows.row_group`):

* ``K == 1`` and ``C <= WARP``: ``G`` = the power of two >= C, one class per lane, several rows per
  warp; reductions are ``G``-lane shuffles.
* ``K == 1``, longer rows: ``G`` lanes stride over the row (about ``PER_THREAD`` classes each, coalesced
  reads), a part of a warp (shuffles only) or up to ``ROW_THREADS`` (512) threads (one block per row: shuffles within
  warps, one shared-memory exchange across them).
* ``K > 1``: ``G = 1``; neighbouring threads take neighbouring ``k``, so each class's reads are
  coalesced across the warp.

Each thread keeps its first ``CACHE`` elements of the row in registers (a fully unrolled local
array), so those are read from global memory once: 16 x 512 covers 8,192 classes. Elements beyond
(the *tail*, e.g. most of 32,000 or 128,256 classes) are read once in an online max/sum pass and once more, from L2,
when the outputs are written. Every thread of a block runs the same number of row iterations (rows
past the end are masked), since the block-wide reductions need all of them (see
:mod:`fastloss._cuda_reduce`).

Arithmetic in the data's precision per element (float32 ``exp`` is libdevice's ``expf``, a few FMAs
around ``ex2.approx``), with the row maximum ``M`` subtracted first. Sums: each thread adds its
exponentials in the data's precision (at most ``CACHE`` plus the tail's share, e.g. 63 terms for
32,000 classes), then the threads' partial sums are added in float64; the row's ``log S`` is float64.
Per-row values (losses, scales) are float64 and rounded once when stored; each block leaves one
float64 partial sum of the loss, and the last block of the launch to finish adds the partials in a
fixed order (deterministic) and writes the result (``_cuda_rows.finish_partials``): no second launch.

With ``lse = M + log S``, ``p_c = exp(x_c - M) / S``:

* ``log_softmax = (x_c - M) - log S``; both terms are of one sign (``x_c - M <= 0 <= log S``), so no
  cancellation in float32. Backward: ``g_c - p_c sum(g)``.
* ``softmax = p_c``. Backward: ``p_c (g_c - sum(g p))``.
* cross entropy with weight ``a_c`` on ``-log p_c`` (index targets:
  ``a_c = (1 - e) w_t [c == t] + e w_c / C``; probabilities: ``a_c = w_c ((1 - e) q_c + e / C)``) and
  ``B = sum a_c``: loss ``B lse - sum a_c x_c``, gradient ``p_c B - a_c`` times the row's scale.
  The smoothing / probability sums are kept as ``A = sum a'_c x_c`` in float64 and used as
  ``A - B M`` (so large logits cancel exactly).

``reduction='mean'`` of class-index targets divides by ``sum_i w[t_i]`` over non-ignored targets, which
a small kernel computes from the targets alone (one launch), so the fused kernel can scale the
gradient without a host round trip: two launches in all.

Where to find what:

* :mod:`.rows`: the constants (register cache, group and block sizes) and the device functions of a
  row that need no reduction (load into the cache, online max/sum, the row's incoming gradient).
* :mod:`.softmax_kernels`: the ``log_softmax`` / ``softmax`` row kernel and the ``nll_loss`` kernels.
* :mod:`.ce_kernels`: the ``cross_entropy`` row kernel (index and probability targets) and the kernel
  of the mean's denominator.
* :mod:`.drivers`: the drivers called by :mod:`fastloss.api` (layout, buffers, launches).

A thread's place in its row group and the group's reductions come from :mod:`fastloss._cuda_rows`.
"""
from .drivers import cross_entropy, log_softmax, nll, softmax
from .rows import ROW_BLOCK_MIN_C

__all__ = ["ROW_BLOCK_MIN_C", "cross_entropy", "log_softmax", "nll", "softmax"]
