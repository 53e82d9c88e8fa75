"""asv benchmarks of the triplet family: fastloss, its float64 reference and PyTorch (see _suite)."""
from . import _suite


class Triplet(_suite._Loss):
    params = _suite.params("triplet")


class TripletReference(_suite._Reference):
    params = _suite.params("triplet")


class TripletTorch(_suite._Torch):
    params = _suite.params("triplet")
