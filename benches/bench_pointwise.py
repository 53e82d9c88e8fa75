"""asv benchmarks of the pointwise family: fastloss beside PyTorch and its float64 reference (see _suite)."""
from . import _suite


class Pointwise(_suite._Value):
    params = _suite.params("pointwise")


class PointwiseGrad(_suite._ValueAndGrad):
    params = _suite.params("pointwise")
