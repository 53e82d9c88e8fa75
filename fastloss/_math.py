"""Elementary functions for the CPU kernels.

PLACEHOLDER: these wrap ``math`` and do not vectorise (no SVML in this Numba build). They are replaced by
vectorisable implementations; callers only ever use the names below.

``exp(x)``, ``log(x)``, ``log1p(x)`` take and return float64; ``expf(x)`` takes and returns float32.
"""
import math

from ._jit import device


@device
def exp(x):
    return math.exp(x)


@device
def log(x):
    return math.log(x)


@device
def log1p(x):
    return math.log1p(x)
