"""Compile specialised pointwise CUDA kernels for a real GPU (sm_90) and summarise their PTX; run by
``test_cuda_pointwise.py`` in a process without the simulator (no GPU needed: numba-cuda's NVVM from
pip wheels). Prints one JSON line: kernel -> counts of what the kernels are meant to contain (16-byte
vector loads and stores, float32 ``ex2.approx`` where the loss has an exponential) and not (64-bit
division or modulo, local-memory arrays, another loss's transcendentals), plus the instruction count.

Signatures are the drivers' argument types (``drivers._pass``): 1-D C-contiguous arrays of the data's
dtype, float64 partial sums and denominator, int64 modes and counts.
"""
import json
import re
import sys
import types

from numba import cuda, float32, float64, int64
from numba.cuda import dispatcher

from fastloss.families.pointwise_cuda import kernels as K

#: name -> (dtype, loss, (tm, wm, pwm), store, want_grad, width); width None: the broadcast kernel.
CASES = {
    "mse_f32_v4": ("float32", K.MSE, (K.FULL, K.ABSENT, K.ABSENT), False, True, 4),
    "mse_f32_scalar": ("float32", K.MSE, (K.FULL, K.ABSENT, K.ABSENT), False, True, 1),
    "mse_f64_v2": ("float64", K.MSE, (K.FULL, K.ABSENT, K.ABSENT), False, True, 2),
    "mse_none_f32_v4": ("float32", K.MSE, (K.FULL, K.FULL, K.ABSENT), True, True, 4),
    "bce_logits_f32_v4": ("float32", K.BCE_LOGITS, (K.FULL, K.ABSENT, K.ABSENT), False, True, 4),
    "bce_logits_f32_scalar": ("float32", K.BCE_LOGITS, (K.FULL, K.ABSENT, K.ABSENT), False, True, 1),
    "bce_logits_f64_v2": ("float64", K.BCE_LOGITS, (K.FULL, K.ABSENT, K.ABSENT), False, True, 2),
    "smooth_l1_f32_v4": ("float32", K.SMOOTH_L1, (K.FULL, K.ABSENT, K.ABSENT), False, True, 4),
    "smooth_l1_f64_v2": ("float64", K.SMOOTH_L1, (K.FULL, K.ABSENT, K.ABSENT), False, True, 2),
    "mse_f32_broadcast": ("float32", K.MSE, None, False, True, None),
}

PATTERNS = {
    "div64": r"\b(?:div|rem)\.[su]64\b",
    "ld_v4_f32": r"\bld(?:\.global)?(?:\.nc)?\.v4\.f32\b",
    "st_v4_f32": r"\bst(?:\.global)?\.v4\.f32\b",
    "ld_v2_f64": r"\bld(?:\.global)?(?:\.nc)?\.v2\.f64\b",
    "st_v2_f64": r"\bst(?:\.global)?\.v2\.f64\b",
    "ex2_f32": r"\bex2\.approx(?:\.ftz)?\.f32\b",
    "lg2_f32": r"\blg2\.approx(?:\.ftz)?\.f32\b",
    "local": r"\b(?:ld|st)\.local\b",
}


def signature(dtype, broadcast):
    A, P = (float32 if dtype == "float32" else float64)[::1], float64[::1]
    if broadcast:
        operands = (A, int64, int64) * 3
    else:
        operands = (A, A, A)
    # a, x, operands, vout, gscale, gs, gv, gstep, den_buf, den_mode, gout, iters, parts
    return (float64, A) + operands + (A, float64, float64, A, int64, P, int64, A, int64, P)


def kernel_for(dtype, kind, modes, store, want_grad, width):
    if width is None:
        return K.broadcast_kernel(dtype, kind, store, want_grad)
    return K.fast_kernel(dtype, kind, *modes, store, want_grad, width)


def summarise(ptx):
    body = ptx[ptx.index(".entry"):]
    counts = {name: len(re.findall(p, body)) for name, p in PATTERNS.items()}
    # instructions: indented lines that are neither directives, labels nor braces
    counts["instructions"] = sum(1 for line in body.splitlines()
                                 if line.startswith("\t") and line.strip() and line.strip()[0] not in ".{}/$")
    return counts


def main(names):
    # numba-cuda compiles device functions for the current device's compute capability, and there is
    # no device here: answer with the target being compiled for.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    report = {}
    for name in names or CASES:
        dtype, kind, modes, store, want_grad, width = CASES[name]
        kernel = kernel_for(dtype, kind, modes, store, want_grad, width)
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature(dtype, width is None), cc=(9, 0))
        report[name] = summarise(ptx)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
