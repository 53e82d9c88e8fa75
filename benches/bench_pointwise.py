"""asv benchmarks of the pointwise family: fastloss, its float64 reference and PyTorch (see _suite)."""
from . import _suite


class Pointwise(_suite._Loss):
    params = _suite.params("pointwise")


class PointwiseReference(_suite._Reference):
    params = _suite.params("pointwise")


class PointwiseTorch(_suite._Torch):
    params = _suite.params("pointwise")
