"""asv benchmarks of large-vocabulary cross entropy (``linear_cross_entropy``): fastloss, its float64
reference and PyTorch's ``F.linear_cross_entropy`` (see _suite). The (2048, 1024, 32000) headline,
beside NumPy's three products and torch's chunked path, is ``benches/linear_ce_headline.py``."""
from . import _suite


class Lce(_suite._Loss):
    params = _suite.params("lce")


class LceReference(_suite._Reference):
    params = _suite.params("lce")


class LceTorch(_suite._Torch):
    params = _suite.params("lce")
