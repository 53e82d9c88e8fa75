"""asv benchmarks of the ranking family: fastloss, its float64 reference and PyTorch (see _suite)."""
from . import _suite


class Ranking(_suite._Loss):
    params = _suite.params("ranking")


class RankingReference(_suite._Reference):
    params = _suite.params("ranking")


class RankingTorch(_suite._Torch):
    params = _suite.params("ranking")
