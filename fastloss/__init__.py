"""fastloss: fused, accurate neural-network losses and their gradients for NumPy and CuPy arrays.

Semantics are PyTorch's ``torch.nn.functional``; see the SPEC and README. ``import fastloss`` imports
neither ``numba.cuda`` nor CuPy.
"""
from ._jit import get_num_threads, set_num_threads
from ._registry import grad, losses, value_and_grad
from .api import *  # noqa: F401,F403
from .api import __all__ as _api_all

__version__ = "0.1.0"

__all__ = [*_api_all, "value_and_grad", "grad", "losses", "set_num_threads", "get_num_threads", "__version__"]
