"""fastloss: fused, accurate neural-network losses and their gradients for NumPy and CuPy arrays.

Semantics are PyTorch's ``torch.nn.functional``; the contract is the user guide in ``docs/`` (built at
``docs/_build/html``: see the README). ``import fastloss`` imports neither ``numba.cuda`` nor CuPy.
"""
import importlib.machinery as _machinery
import os as _os


def _check_extensions() -> None:
    """Raise one clear ``ImportError`` when the compiled Cython kernels are missing.

    The usual cause is running Python inside a source checkout (its ``fastloss/`` folder shadows the
    installed package) before the extensions were built there; a wheel without them is the other.
    Checked here, at import, rather than at the first ranking, triplet or cross-entropy call.
    """
    cy = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_cy")
    try:
        present = _os.listdir(cy)
    except OSError:
        present = []
    suffixes = tuple(_machinery.EXTENSION_SUFFIXES)
    missing = [m for m in ("ranking", "triplet", "softmax_small")
               if not any(f.startswith(m + ".") and f.endswith(suffixes) for f in present)]
    if not missing:
        return
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    kernels = ", ".join(f"fastloss._cy.{m}" for m in missing)
    if _os.path.exists(_os.path.join(root, "setup.py")):
        raise ImportError(
            f"fastloss was imported from its source tree ({root}), where its compiled kernels "
            f"({kernels}) have not been built. Either run Python from another directory, so that the "
            f"fastloss you installed with 'pip install .' is imported instead, or build the kernels in "
            f"this tree with 'pip install -e .' (an editable install; needs a C compiler)."
        )
    raise ImportError(
        f"this fastloss installation ({root}) lacks its compiled kernels ({kernels}); reinstall it "
        f"with 'pip install --force-reinstall fastloss' (building from source needs a C compiler)."
    )


_check_extensions()

from ._jit import get_num_threads, set_num_threads  # noqa: E402
from ._registry import grad, losses, value_and_grad  # noqa: E402
from ._version import __version__  # noqa: E402
from .api import *  # noqa: E402,F401,F403
from .api import __all__ as _api_all  # noqa: E402

__all__ = [*_api_all, "value_and_grad", "grad", "losses", "set_num_threads", "get_num_threads", "__version__"]
