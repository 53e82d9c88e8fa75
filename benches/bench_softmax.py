"""asv benchmarks of the softmax family: fastloss beside PyTorch and its float64 reference (see _suite)."""
from . import _suite


class Softmax(_suite._Value):
    params = _suite.params("softmax")


class SoftmaxGrad(_suite._ValueAndGrad):
    params = _suite.params("softmax")
