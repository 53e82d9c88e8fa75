"""asv benchmarks of the ranking family: fastloss beside PyTorch and its float64 reference (see _suite)."""
from . import _suite


class Ranking(_suite._Value):
    params = _suite.params("ranking")


class RankingGrad(_suite._ValueAndGrad):
    params = _suite.params("ranking")
