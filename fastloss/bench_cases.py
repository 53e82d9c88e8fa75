"""What ``fastloss bench`` runs and how it judges the results: the input sizes (:func:`loss_size`),
the cases prepared for fastloss, the float64 reference and PyTorch (:func:`diff_positions`,
:func:`incoming_gradient`, :func:`reference_rows`, :func:`leading_rows`), the bytes a loss must move
(:func:`bytes_moved`), the error measures (:func:`rel_err`, :func:`grads_rel_err`), and the calls
themselves (:func:`fastloss_calls`, :func:`reference_call`, :func:`torch_calls`).

The command itself is :mod:`fastloss.bench`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
from typing import Optional

import numpy as np

from ._registry import LossSpec, value_and_grad

# --------------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------------
#: Elements of the largest argument of every loss: 16 Mi float32 is 64 MiB per array, far beyond the
#: caches, so the kernels stream from memory as they do in training.
DEFAULT_SIZE = 1 << 24

#: The headline, always in the default run: cross entropy over a 32000-word vocabulary for 8192 tokens,
#: 1 GiB of float32 logits (BENCH["cross_entropy"] turns this size into an (8192, 32000) input).
HEADLINE_SIZES = {"cross_entropy": 8192 * 32000,
                  # (N, H, V) = (2048, 1024, 32000): BENCH sizes linear_cross_entropy by its weight, V * H
                  "linear_cross_entropy": 32000 * 1024}

DTYPES = ("float32", "float64")


def loss_size(name: str, size: Optional[int], scale: float) -> int:
    """Elements of ``name``'s benchmark input: ``size`` if given, else its default, times ``scale``."""
    base = size if size is not None else HEADLINE_SIZES.get(name, DEFAULT_SIZE)
    return max(1, int(base * scale))


# --------------------------------------------------------------------------------------------------
# Inputs, bytes moved and errors
# --------------------------------------------------------------------------------------------------
#: Largest input (elements) the float64 reference gets whole. The references are written for clarity,
#: with a float64 temporary per step: on the headline's 262 M logits one call needs about 16 GB. Above
#: this size the reference runs on the input's first rows (see :func:`reference_rows`).
REFERENCE_ELEMENTS = 1 << 25


def _arrays(case) -> list:
    """Every NumPy array among a case's positional and keyword arguments."""
    return [a for a in (*case.args, *case.kwargs.values()) if isinstance(a, np.ndarray)]


def diff_positions(spec: LossSpec, case) -> list:
    """Positions in ``case.args`` of the differentiated inputs (``spec.diff``), in ``diff`` order."""
    params = inspect.signature(spec.fn).parameters
    names = list(params)
    # an optional differentiated input the case leaves out (linear_cross_entropy's linear_bias=None)
    # has no gradient
    diff = [d for d in spec.diff
            if names.index(d) < len(case.args) or case.kwargs.get(d) is not None or params[d].default is not None]
    positions = [names.index(d) for d in diff]
    missing = [d for d, p in zip(diff, positions) if p >= len(case.args)]
    if missing:
        raise ValueError(f"BENCH case of {spec.name} passes {', '.join(missing)} by keyword; pass it positionally")
    return positions


def as_float64(case):
    """The case with every floating-point array converted to float64 (exact for float32 data)."""

    def up(a):
        return a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a

    return dataclasses.replace(case, args=tuple(up(a) for a in case.args),
                               kwargs={k: up(v) for k, v in case.kwargs.items()})


def incoming_gradient(value, rng):
    """The ``grad_output`` of the benchmark: ``None`` (that is 1) for a reduced loss, a fixed random
    array for an unreduced output (with ones, softmax's gradient is exactly zero, so its error says
    nothing)."""
    value = np.asarray(value)
    if value.ndim == 0:
        return None
    return rng.standard_normal(value.shape).astype(value.dtype)


def reference_rows(case, pos: int, limit: Optional[int] = None) -> Optional[int]:
    """How many leading rows of ``case.args[pos]`` the reference gets, or ``None`` for all of them
    (when the input has at most ``limit`` elements, default :data:`REFERENCE_ELEMENTS`)."""
    limit = REFERENCE_ELEMENTS if limit is None else limit
    x = case.args[pos]
    if x.size <= limit or x.ndim == 0:
        return None
    return max(1, limit // (x.size // x.shape[0]))


def leading_rows(case, n: int, rows: int, grad_output=None):
    """``(case, grad_output)`` cut to their first ``rows`` rows: every positional array and
    ``grad_output`` whose first axis has length ``n``. Keyword arrays (per-class weights) stay whole."""

    def cut(a):
        return a[:rows] if isinstance(a, np.ndarray) and a.ndim and a.shape[0] == n else a

    return dataclasses.replace(case, args=tuple(cut(a) for a in case.args)), cut(grad_output)


#: Losses whose value reads only part of an input: ``name -> position of that input``. The NLL loss
#: gathers one log-probability per target (the next argument); reading the whole ``(N, C)`` input is
#: not needed.
GATHERED_INPUTS = {"nll_loss": 0}


def bytes_read(name: str, case) -> int:
    """Bytes the value must read: every input array, except where a loss gathers from one
    (:data:`GATHERED_INPUTS`: one element per target)."""
    total = sum(a.nbytes for a in _arrays(case))
    pos = GATHERED_INPUTS.get(name)
    if pos is not None:
        x, target = case.args[pos], case.args[pos + 1]
        total += np.size(target) * x.itemsize - x.nbytes
    return total


def bytes_moved(name: str, case, value, grads, grad_output=None) -> tuple:
    """``(value_bytes, value_and_grad_bytes)``: what the value reads (:func:`bytes_read`) plus an
    unreduced output written; value and gradient also read ``grad_output`` and write the gradients."""
    read = bytes_read(name, case)
    out = np.asarray(value).nbytes if np.ndim(value) > 0 else 0
    incoming = 0 if grad_output is None else grad_output.nbytes
    return read + out, read + out + incoming + sum(np.asarray(g).nbytes for g in grads)


def rel_err(got, want) -> float:
    """``max |got - want| / max |want|`` over all elements; equal values (also NaN against NaN and
    infinities of one sign) count as no error, and the scale is taken over the finite ``want``.

    One float64 temporary on the common (finite) path: this runs on gigabyte gradients.
    """
    got, want = np.asarray(got), np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf; handled below
        diff = np.asarray(np.subtract(got, want, dtype=np.float64))  # 0-d inputs give a scalar
    np.abs(diff, out=diff)
    worst = float(diff.max(initial=0.0))
    scale = max(float(want.max(initial=0.0)), -float(want.min(initial=0.0)))
    if not (math.isfinite(worst) and math.isfinite(scale)):  # NaN or inf somewhere: the careful path
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        worst = float(np.max(np.where(same, 0.0, diff), initial=0.0))
        scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
    return worst / scale if scale > 0 else worst


def grads_rel_err(got, want) -> float:
    """The worst :func:`rel_err` over several gradients."""
    return max((rel_err(g, w) for g, w in zip(got, want)), default=0.0)


def _as_tuple(grads) -> tuple:
    """``value_and_grad`` returns one array for one differentiated input, a tuple for several."""
    return (grads,) if isinstance(grads, np.ndarray) else tuple(grads)


# --------------------------------------------------------------------------------------------------
# The callables: fastloss, the reference, PyTorch
# --------------------------------------------------------------------------------------------------
def fastloss_calls(spec: LossSpec, case, grad_output=None):
    """``(value, value_and_grad)`` closures of fastloss on ``case``; ``value_and_grad`` returns
    ``(value, grads)`` with ``grads`` a tuple in ``spec.diff`` order."""
    vg = value_and_grad(spec.fn)

    def value():
        return spec.fn(*case.args, **case.kwargs)

    def value_grad():
        v, g = vg(*case.args, grad_output=grad_output, **case.kwargs)
        return v, _as_tuple(g)

    return value, value_grad


def reference_call(spec: LossSpec, case, grad_output=None):
    """A closure of the float64 reference on float64 copies of ``case``: ``(value, grads)``."""
    c64 = as_float64(case)
    g64 = None if grad_output is None else grad_output.astype(np.float64)

    def reference():
        v, g = spec.reference(*c64.args, grad_output=g64, **c64.kwargs)
        return v, _as_tuple(g)

    return reference


def import_torch(threads: int):
    """PyTorch on ``threads`` threads, or ``None`` when it is not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    torch.set_num_threads(threads)
    return torch


def to_torch(torch, a, requires_grad: bool = False, device=None):
    """A NumPy array as a tensor sharing its memory (integer arrays as int64, PyTorch's index type),
    or copied to ``device`` when one is given; anything else unchanged."""
    if not isinstance(a, np.ndarray):
        return a
    if a.dtype.kind in "iu":
        a = a.astype(np.int64, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device is not None:
        t = t.to(device)
    return t.requires_grad_(True) if requires_grad else t


def torch_calls(torch, spec: LossSpec, case, diff_pos: list, grad_output=None, device=None):
    """``(forward, forward_backward)`` closures computing the loss in PyTorch (on ``device``, default
    the CPU), or ``None`` when PyTorch has no such loss. ``forward_backward`` returns ``(value, grads)``
    as tensors, the gradients from ``torch.autograd.grad`` with ``grad_output`` (default: ones). The
    calls do not synchronise a GPU device: the caller does."""
    f = spec.torch_fn()
    if f is None:
        return None
    kwargs = {k: to_torch(torch, v, device=device) for k, v in case.kwargs.items()}
    plain = [to_torch(torch, a, device=device) for a in case.args]
    leaves = [to_torch(torch, a, requires_grad=i in diff_pos, device=device) for i, a in enumerate(case.args)]
    inputs = [leaves[i] for i in diff_pos]
    incoming = None if grad_output is None else to_torch(torch, grad_output, device=device)

    def forward():
        with torch.no_grad():
            return f(torch, *plain, **kwargs)

    def forward_backward():
        value = f(torch, *leaves, **kwargs)
        g = torch.ones_like(value) if incoming is None else incoming
        grads = torch.autograd.grad(value, inputs, grad_outputs=g)
        return value.detach(), grads

    return forward, forward_backward


def _numpy(t):
    return t.detach().numpy()
