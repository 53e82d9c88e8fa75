"""The softmax family on the CPU: ``log_softmax``, ``softmax``, ``nll_loss`` and ``cross_entropy``.

Semantics are PyTorch 2.13's ``torch.nn.functional`` (see :mod:`fastloss.api` for the formulas).
``nll_loss`` is one fused gather kernel; the others run Numba kernels, one fused kernel per
layout, value and gradient in the same pass over each row.

Where things are:

* :mod:`.rows`: the one-point maths and the row / tile primitives every kernel is built from.
* :mod:`.ce_kernels`: the cross-entropy kernels (index and probability targets; row, small-call,
  channel and short-row kernels) and the gradient formula.
* :mod:`.softmax_kernels`: the ``log_softmax`` / ``softmax`` kernels and the ``nll_loss`` kernel.
* :mod:`.drivers`: the drivers :mod:`fastloss.api` calls, the choice of kernel, chunks and reductions.
* :mod:`.fast`: ``FAST``, the small-call fast paths of ``cross_entropy`` and ``nll_loss`` (the plain
  call recognised in C, ``fastloss._cy.softmax_small``, and handed straight to the small-call kernel's C
  entry point; see ``fastloss._registry.loss``).
* :mod:`.reference`: ``REFERENCE``, ``CASES``, ``BENCH`` and ``TORCH``.

Threads. Every kernel is serial (``nogil``) and works on chunk ``k`` of ``n_chunks`` (runs of
rows, tiles or blocks of rows); :func:`.drivers._run` runs a call below :data:`MIN_CHUNK` elements on
the calling thread, and shares a bigger one's chunks among the calling thread and the pool threads of
:func:`fastloss._jit.run_chunks`. Losses are kept per position and summed per chunk in a fixed order,
so results do not depend on the thread count. A small call with ``B == 1`` (below ``MIN_CHUNK``) runs
the plain small-call kernels ``_ce_index_small`` (blocks of whole rows, one flat exponential loop per
block; a C entry point, called from C by the general path and the fast path alike) / ``_ce_prob_small``
(a row at a time): a first call then compiles one small kernel instead of the pipelined or tiled
machinery.


Layout. Every input is seen as ``(A, C, B)``: ``C`` classes (the softmax axis, axis 1 of a loss's input)
between ``A`` leading and ``B`` trailing elements (``B = d1 * ... * dk``).

* ``B == 1`` and ``C > _SHORT_CLASSES`` (input ``(C,)`` or ``(N, C)``): the **row kernels**. Each
  chunk is a run of consecutive rows; a row is read from memory once and then stays in L2 (a
  32000-float row is 128 KB) for a sum-exp pass and, for the gradient, a scaling pass.
  ``exp(x - max)`` is stored straight into the gradient buffer by the sum-exp pass, so the gradient
  pass is a multiply-add and every element sees one ``exp``. The max of a row is taken over integer
  keys of its floats' bits (an integer max vectorises, a float max reduction does not without
  'nnan') inside the previous row's sum-exp pass, so its loads from memory overlap that row's
  arithmetic. No ``N x C`` temporary (no log-softmax array, no one-hot).
* ``B > 1`` (input ``(N, C, d1, ..., dk)``): the **channel kernels**. Work items are ``(n, block of
  B)``; within an item the loops run over ``c`` outside and ``b`` inside, so the inner loops are
  contiguous and vectorise across ``b``, with ``O(block)`` scratch per item for the per-position max,
  sums and coefficients.
* ``B == 1`` and ``C <= _SHORT_CLASSES``: the **short-row kernels**. Per-row overhead would dominate,
  so blocks of rows are transposed into private ``(1, C, rows)`` tiles and run through the channel
  code, vectorised across rows.
"""
from .drivers import (MAX_CHUNKS, MIN_CHUNK, _index_scan, _index_targets, _run, cross_entropy, log_softmax, nll,
                      softmax)
from .fast import FAST
from .reference import BENCH, CASES, REFERENCE, TORCH, _ref_cross_entropy, _ref_log_softmax_along
from .rows import _exp_same

# the public drivers and tables, and the helpers other modules and the tests use by name
__all__ = ["BENCH", "CASES", "FAST", "MAX_CHUNKS", "MIN_CHUNK", "REFERENCE", "TORCH", "cross_entropy", "log_softmax",
           "nll", "softmax", "_exp_same", "_index_scan", "_index_targets", "_ref_cross_entropy",
           "_ref_log_softmax_along", "_run"]
