"""One table of every loss: its public function, differentiated inputs, family, reference and test cases.

A loss is registered by decorating its public function in :mod:`fastloss.api` with :func:`loss`. The
function takes one private keyword, ``_grad``: ``None`` for the value alone, or a :class:`GradRequest`,
in which case it returns ``(value, grads)`` with ``grads`` a tuple in the order of ``diff``.

Each family module (``fastloss.families.NAME``) holds, keyed by the loss's public name:

``REFERENCE[name](*args, grad_output=None, **kwargs) -> (value, grads)``
    the float64 NumPy reference of the value and of the gradients of the differentiated inputs
    (``grads`` a tuple in the order of ``diff``), used as ground truth by the tests and as a baseline
    by the benchmarks.
``CASES[name](rng, dtype) -> list[Case]``
    small inputs covering every option, reduction and shape the contract (docs/contract.md) names.
``BENCH[name](rng, dtype, size) -> Case``
    one realistic input; ``size`` is about the number of elements of the largest argument.
``TORCH[name](torch, *tensors, **kwargs)`` (optional)
    the PyTorch expression of the same loss, where it is not ``torch.nn.functional.<name>``; a value of
    ``None`` means PyTorch has no such function.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import _half
from ._dispatch import is_dask_array


@dataclass(frozen=True)
class Case:
    """Positional and keyword arguments of one call, with a readable id for test names."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    id: str = ""


class GradRequest:
    """What :func:`value_and_grad` asks of a loss: the incoming gradient and optional output buffers.

    CPU drivers read the incoming gradient with :meth:`scalar` / :meth:`array`; CUDA drivers with
    :meth:`incoming`, which keeps a device ``grad_output`` on the device. :meth:`out_for` serves both.
    """

    __slots__ = ("grad_output", "out")

    def __init__(self, grad_output=None, out=None):
        self.grad_output = grad_output
        self.out = out

    def scalar(self) -> float:
        """``grad_output`` of a reduced (0-d) loss as a Python float (default 1.0). CPU backend only."""
        g = self.grad_output
        if g is None:
            return 1.0
        g = np.asarray(_host_grad_output(g))
        if g.size != 1:
            raise ValueError(f"grad_output of shape {g.shape} does not fit the loss's shape ()")
        return float(g.reshape(()))

    def array(self, shape, dtype):
        """``grad_output`` broadcast (a view, no copy) to the loss's ``shape``. CPU backend only."""
        g = self.grad_output
        if g is None:
            return np.ones((1,) * len(shape), dtype=dtype) if shape else np.ones((), dtype=dtype)
        g = np.asarray(_host_grad_output(g), dtype=dtype)
        try:
            return np.broadcast_to(g, tuple(shape))
        except ValueError:
            raise ValueError(
                f"grad_output of shape {g.shape} does not broadcast to the loss's shape {tuple(shape)}"
            ) from None

    def out_for(self, i: int, like):
        """The gradient buffer of the ``i``-th differentiated input: the caller's ``out`` or a new array.

        A caller's buffer must have ``like``'s shape and dtype and be C-contiguous; it may be the
        input itself (in-place), which the kernels detect and handle.
        """
        out = self.out
        if isinstance(out, (tuple, list)):
            out = out[i] if i < len(out) else None
        elif i > 0:
            out = None
        if type(like) is not np.ndarray and _is_device_array(like):
            from . import _cuda_arrays

            return _cuda_arrays.grad_buffer(out, like)
        if out is None:
            return np.empty(like.shape, dtype=like.dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array for NumPy inputs, got {type(out).__name__}")
        if out.shape != like.shape or out.dtype != like.dtype:
            raise ValueError(
                f"out has shape {out.shape} and dtype {out.dtype}; the gradient needs shape "
                f"{like.shape} and dtype {like.dtype}"
            )
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        return out

    def incoming(self, shape, like):
        """``grad_output`` for the CUDA kernels over device array ``like``, for a loss of ``shape``.

        A :class:`fastloss._cuda_arrays.Incoming`: loss element ``i`` (C order) gets
        ``scale * values[i * step]``, or ``scale`` when ``step < 0``; a device ``grad_output`` stays
        on the device (no host synchronisation).
        """
        from . import _cuda_arrays

        return _cuda_arrays.incoming(self.grad_output, shape, like)


def _is_device_array(a) -> bool:
    from ._dispatch import is_device_array

    return is_device_array(a)


def _host_grad_output(g):
    """``g`` itself unless it is a GPU array, which cannot be the incoming gradient of host inputs."""
    from ._dispatch import is_device_array

    if is_device_array(g):
        raise TypeError("host and device arrays mixed: grad_output is on the GPU, the inputs on the host")
    return g


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable
    diff: tuple
    family: str
    #: the position of each differentiated input among the positional parameters (None: keyword-only)
    diff_positions: tuple = ()

    @property
    def module(self):
        return importlib.import_module(f"fastloss.families.{self.family}")

    @property
    def reference(self):
        return self.module.REFERENCE[self.name]

    @property
    def cases(self):
        return self.module.CASES[self.name]

    @property
    def bench(self):
        return self.module.BENCH[self.name]

    def torch_fn(self):
        """``f(torch, *tensors, **kwargs)`` computing this loss in PyTorch, or ``None``."""
        table = getattr(self.module, "TORCH", {})
        if self.name in table:
            return table[self.name]
        return lambda torch, *a, **k: getattr(torch.nn.functional, self.name)(*a, **k)


REGISTRY: dict[str, LossSpec] = {}


def loss(*, diff, family, fast=False):
    """Register a public loss function; hides its private ``_grad`` keyword from its signature.

    ``fast``: the family module's ``FAST[name]`` (looked up on the first call) is tried before
    anything else: ``FAST[name](args, kwargs, grad)`` returns the result of a call it serves on its
    own (a plain small call, checked in one pass) or ``None`` for the general path."""

    def deco(fn):
        sig = inspect.signature(fn)
        fast_path = []  # [FAST[name] or None], once known

        def fast_fn():
            if not fast_path:
                fast_path.append(getattr(spec.module, "FAST", {}).get(spec.name) if fast else None)
            return fast_path[0]

        @functools.wraps(fn)
        def public(*args, _grad=None, **kwargs):
            if fast:
                path = fast_path[0] if fast_path else fast_fn()
                if path is not None:
                    result = path(args, kwargs, _grad)
                    if result is not None:
                        return result
            route = _route(args, kwargs, _grad)
            if route is _DASK:
                # Dask arrays anywhere in the call: the whole call goes to the Dask backend, which runs
                # this same function chunk by chunk (fastloss._dask; imported only when needed)
                from . import _dask

                return _dask.call(spec, args, kwargs, _grad)
            if route is _HALF:
                # float16 arrays: computed by the float32 path, rounded back (fastloss._half)
                return _half.call(fn, spec, args, kwargs, _grad)
            return fn(*args, _grad=_grad, **kwargs)

        public.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "_grad"])
        params = [p for p in sig.parameters.values() if p.name != "_grad"]
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        positions = tuple(positional.index(d) if d in positional else None for d in diff)
        spec = LossSpec(fn.__name__, public, tuple(diff), family, positions)
        REGISTRY[spec.name] = spec
        public._fastloss_spec = spec
        public._fastloss_fast = fast_fn
        return public

    return deco


#: Argument types that are neither Dask nor float16 arrays: passed over without a look at their class
#: hierarchy (this runs on every call).
_PLAIN = frozenset({type(None), bool, int, float, str})
_DIRECT, _DASK, _HALF = "direct", "dask", "half"


def _route(args, kwargs, grad) -> str:
    """Where a call goes: ``_DASK`` when any argument (or ``grad_output``) is a Dask array, else
    ``_HALF`` when one is a float16 array, else ``_DIRECT`` (the loss's own function)."""
    plain = _PLAIN
    half = False
    for group in (args, kwargs.values()):
        for a in group:
            t = type(a)
            if t is np.ndarray:
                half = half or a.dtype.char == "e"
            elif t not in plain:
                if is_dask_array(a):
                    return _DASK
                half = half or _half.is_half(a)
    g = None if grad is None else grad.grad_output
    if type(g) not in plain:
        if is_dask_array(g):
            return _DASK
        half = half or _half.is_half(g)
    return _HALF if half else _DIRECT


#: The request of a gradient with neither ``grad_output`` nor ``out`` (never modified: shared).
_PLAIN_GRAD = GradRequest()


def _spec_of(f) -> LossSpec:
    spec = getattr(f, "_fastloss_spec", None)
    if spec is None:
        raise TypeError(f"{getattr(f, '__name__', f)!r} is not a fastloss loss; see fastloss.losses()")
    return spec


def value_and_grad(f: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    """Return a function computing ``(loss, grads)`` of the fastloss loss ``f`` in one fused pass.

    The returned function has ``f``'s signature plus two keywords:

    ``grad_output``
        an array broadcastable to the loss's shape (default: ones), the gradient flowing into the
        loss, as ``torch.autograd.grad(loss, inputs, grad_outputs=grad_output)``.
    ``out``
        optional buffer(s) for the gradient(s): an array for one differentiated input, a tuple for
        several. Passing the input itself as ``out`` overwrites it with its gradient (in place).

    ``grads`` is one array for single-prediction losses and a tuple, in argument order, for losses with
    several differentiated inputs (``margin_ranking_loss``, ``cosine_embedding_loss``: ``(input1,
    input2)``; ``triplet_margin_loss``: ``(anchor, positive, negative)``). An optional differentiated
    input that is left out (``linear_cross_entropy``'s ``linear_bias=None``) has no gradient. Each
    gradient has the shape and dtype of its input and lives on the same device.
    """
    spec = _spec_of(f)
    fast_fn = getattr(f, "_fastloss_fast", None)

    @functools.wraps(f)
    def vg(*args, grad_output=None, out=None, **kwargs):
        result = None
        if grad_output is None and out is None and fast_fn is not None:
            # the loss's small-call path straight away (the same one ``f`` tries first): a plain call
            # saves a layer of calls and a GradRequest, a tenth of a small cross entropy's time
            path = fast_fn()
            if path is not None:
                result = path(args, kwargs, _PLAIN_GRAD)
        value, grads = f(*args, _grad=GradRequest(grad_output, out), **kwargs) if result is None else result
        # an optional differentiated input left out (None) has no gradient: count what came back
        return value, (grads[0] if len(grads) == 1 else tuple(grads))

    sig = inspect.signature(f)
    extra = [
        inspect.Parameter("grad_output", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
    vg.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    vg.__doc__ = f"value_and_grad({spec.name}): returns (loss, grads).\n\n" + (f.__doc__ or "")
    return vg


def grad(f: Callable[..., Any]) -> Callable[..., Any]:
    """Like :func:`value_and_grad`, returning the gradient(s) alone."""
    vg = value_and_grad(f)

    @functools.wraps(vg)
    def g(*args, **kwargs):
        return vg(*args, **kwargs)[1]

    g.__doc__ = f"grad({_spec_of(f).name}): returns the gradient(s).\n\n" + (f.__doc__ or "")
    return g


def losses() -> list[str]:
    """Names of every registered loss, sorted."""
    return sorted(REGISTRY)
