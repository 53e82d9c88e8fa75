"""Build script: the Cython extension modules of fastloss (``fastloss/_cy/*.pyx``).

Everything else about the package is in ``pyproject.toml``; ``pip install .`` and ``pip install -e .``
run this through setuptools' PEP 517 backend.

OpenMP: the kernels' ``prange`` loops run on OpenMP threads. Whether the C compiler accepts OpenMP is
probed at build time; where it does not (Apple's clang without libomp, a compiler wrapper refusing the
flag), the extensions are built without it, run on one thread, and the build says so in one line.
"""
import os
import sys
import tempfile
from contextlib import contextmanager

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CY_DIR = os.path.join("fastloss", "_cy")
MODULES = ("ranking", "triplet")
#: modules that use NumPy's C API (they need its headers)
NUMPY_MODULES = ("softmax_small",)

#: Cython directives of every kernel module: no bounds or wraparound checks (the drivers hand over
#: checked, C-contiguous arrays) and C division, whose x / 0 gives inf or NaN as in PyTorch rather than
#: raising ZeroDivisionError.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
}

OPENMP_MISSING = (
    "fastloss: the C compiler does not accept OpenMP; building the Cython kernels without it "
    "(they will run on one thread)"
)

_PROBE = r"""
#include <omp.h>
int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
"""


def _openmp_flags(compiler):
    """(compile flags, link flags) that enable OpenMP for ``compiler``'s kind of compiler."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


def _strict_fp_flags(compiler):
    """Keep each floating-point operation rounded as written, as PyTorch's separate ops round them:
    no fused multiply-add contraction (it would move kinks by an ulp). ``-fno-math-errno`` only lets
    sqrt inline; NaN and inf are unaffected."""
    if compiler.compiler_type == "msvc":
        return ["/fp:precise"]
    return ["-ffp-contract=off", "-fno-math-errno"]


@contextmanager
def _quiet_stderr():
    """Silence the compiler's own complaints while probing (the build prints one line instead)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _compiler_accepts_openmp(compiler) -> bool:
    """Compile and link a tiny OpenMP program with ``compiler``; False on any failure."""
    cflags, lflags = _openmp_flags(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe_openmp.c")
        with open(src, "w") as f:
            f.write(_PROBE)
        try:
            with _quiet_stderr():
                objects = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objects, "probe_openmp", output_dir=tmp, extra_postargs=lflags)
        except Exception:  # CompileError, LinkError, or the compiler missing altogether
            return False
    return True


class BuildExt(build_ext):
    """build_ext that adds OpenMP where the compiler has it and strict floating-point flags."""

    def build_extensions(self):
        fp = _strict_fp_flags(self.compiler)
        if _compiler_accepts_openmp(self.compiler):
            cflags, lflags = _openmp_flags(self.compiler)
        else:
            cflags, lflags = [], []
            print(OPENMP_MISSING, flush=True)
        for ext in self.extensions:
            ext.extra_compile_args = [*ext.extra_compile_args, *fp, *cflags]
            ext.extra_link_args = [*ext.extra_link_args, *lflags]
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    import numpy

    exts = [
        Extension(f"fastloss._cy.{name}", [os.path.join(CY_DIR, f"{name}.pyx")]) for name in MODULES
    ] + [
        Extension(f"fastloss._cy.{name}", [os.path.join(CY_DIR, f"{name}.pyx")], include_dirs=[numpy.get_include()],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
        for name in NUMPY_MODULES
    ]
    return cythonize(exts, compiler_directives=DIRECTIVES)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
