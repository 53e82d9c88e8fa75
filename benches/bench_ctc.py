"""asv benchmarks of the CTC family: fastloss beside PyTorch and its float64 reference (see _suite)."""
from . import _suite


class Ctc(_suite._Value):
    params = _suite.params("ctc")


class CtcGrad(_suite._ValueAndGrad):
    params = _suite.params("ctc")
