"""The pointwise family's one-point functions as the CUDA float32 kernels compile them (``P32``): float32
arithmetic end to end.

Compiled for a real GPU (sm_90) in a process without the simulator (no GPU needed: numba-cuda's NVVM,
see ``ptx_points.py``), one tiny kernel per loss (the loss of one element and its derivative, float32
arguments and results) must hold no float64 instruction, and those that call ``exp`` must show the
GPU's float32 ``ex2.approx``. A float literal in a one-point function (``0.5 * z``, ``return 1.0``),
or a float64 constant in ``P32``, widens its arithmetic to float64, which consumer GPUs run at 1/32 to
1/64 of the float32 rate.
"""
from __future__ import annotations

import pytest

from _helpers import needs_nvvm, ptx_report

#: One-point functions allowed float64 instructions in float32 kernels, with the reason: none.
FLOAT64_EXCEPTIONS: dict[str, str] = {}


@pytest.mark.slow
@needs_nvvm
def test_float32_point_functions_compile_to_float32_ptx():
    report = ptx_report("ptx_points.py")
    from fastloss.families.pointwise import POINT_FUNCTIONS

    compiled = {f for facts in report.values() for f in facts["functions"]}
    assert compiled == {f.__name__ for f in POINT_FUNCTIONS}, "not every one-point function was compiled"
    widened = {name: facts["f64"] for name, facts in report.items()
               if facts["f64"] and name not in FLOAT64_EXCEPTIONS}
    assert not widened, f"float64 instructions (by opcode) in float32 kernels: {widened}"
    for name, facts in report.items():
        if facts["uses_exp"]:
            assert facts["ex2_f32"] > 0, f"{name}: its exp is not the float32 ex2.approx"
        else:
            assert facts["ex2_f32"] == 0, f"{name}: an ex2.approx without an exp"
