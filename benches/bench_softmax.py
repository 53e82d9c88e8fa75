"""asv benchmarks of the softmax family: fastloss, its float64 reference and PyTorch (see _suite)."""
from . import _suite


class Softmax(_suite._Loss):
    params = _suite.params("softmax")


class SoftmaxReference(_suite._Reference):
    params = _suite.params("softmax")


class SoftmaxTorch(_suite._Torch):
    params = _suite.params("softmax")
