"""asv benchmarks of the row-wise margin family (``multi_margin_loss``, ``multilabel_margin_loss``):
fastloss beside PyTorch and its float64 reference (see _suite)."""
from . import _suite


class Margin(_suite._Value):
    params = _suite.params("margin")


class MarginGrad(_suite._ValueAndGrad):
    params = _suite.params("margin")
