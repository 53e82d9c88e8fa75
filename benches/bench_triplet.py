"""asv benchmarks of the triplet family: fastloss beside PyTorch and its float64 reference (see _suite)."""
from . import _suite


class Triplet(_suite._Value):
    params = _suite.params("triplet")


class TripletGrad(_suite._ValueAndGrad):
    params = _suite.params("triplet")
