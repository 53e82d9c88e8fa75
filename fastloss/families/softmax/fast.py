"""Small-call fast paths of ``cross_entropy`` and ``nll_loss``: the plain call, from C straight to its kernel.

A training loop's typical call, ``cross_entropy(logits, targets)`` on a small batch, spends most of its
time around the kernel, not in it. :data:`FAST` maps a loss's name to a function ``fast(args, kwargs,
grad)`` which the registry (:func:`fastloss._registry.loss`) tries first: the C functions of
:mod:`fastloss._cy.softmax_small`, which recognise the plain call (see there) and call the small-call
kernel, ``_ce_index_small`` / ``_nll_small``, through its C entry point (:func:`fastloss._jit.entry`),
as the general path's small calls do: the results are the same bits. They return ``None`` for every
other call, which then takes the general path with all of its checks.

This module hands the entries (compiled, or loaded from the cache, on first use per loss and dtype)
and the limits of a small call over to the C module.
"""
from __future__ import annotations

from ..._cy import softmax_small
from ..._dispatch import float64_partials
from .ce_kernels import _SMALL_BLOCK, _ce_index_small, _nll_small
from .drivers import MIN_CHUNK


#: loss 0 cross entropy, 1 nll_loss (``softmax_small``'s order); each entry's dtypes: float32, float64
_ENTRIES = (_ce_index_small, _nll_small)

softmax_small.configure(lambda loss, dt: _ENTRIES[loss].address(dt), float64_partials, MIN_CHUNK, _SMALL_BLOCK)

FAST = {"cross_entropy": softmax_small.cross_entropy_fast, "nll_loss": softmax_small.nll_fast}
