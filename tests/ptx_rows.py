"""Compile the CUDA row kernels (softmax, ranking, triplet families) for real GPUs and summarise the
PTX; run by ``test_cuda_rows.py`` in a process without the simulator (no GPU needed: numba-cuda's
NVVM from pip wheels). Prints one JSON line: kernel/signature/target -> counts of what the kernels
are meant to contain (warp shuffles, float32 ``ex2.approx``) and not (local-memory arrays, 64-bit
divisions).

Signatures are the drivers' argument types: float32/float64 data, int64/int32/uint8 class indices or
float probabilities, 1-D C-contiguous arrays throughout (the drivers flatten every operand).
"""
import json
import os
import types

from numba import boolean, cuda, float32, float64, int32, int64, uint8, uint32
from numba.cuda import dispatcher

from fastloss.families import ranking_cuda as RK
from fastloss.families.softmax_cuda import ce_kernels as CE
from fastloss.families.softmax_cuda import softmax_kernels as S
from fastloss.families import triplet_cuda as TR

TARGETS = ((7, 5), (8, 0), (9, 0))


def arr(t):
    return t[::1]


def signatures():
    for dt in (float32, float64):
        A, P, U = arr(dt), arr(float64), arr(uint32)
        G3 = (boolean, A, boolean, float64, float64, A, int64)  # reduce, loss_out, want_grad, inv_den, gs, gv, gstep
        yield f"softmax_rows[{dt}]", S._softmax_rows, (A, int64, int64, int64, int64, boolean, A, boolean, float64,
                                                       A, int64, A)
        for tt in (int64, int32, uint8, dt):
            yield f"ce_rows[{dt},{tt}]", CE._ce_rows, (A, int64, int64, int64, int64, int64, arr(tt), A, boolean,
                                                      int64, float64, boolean, A, P, U, A, float64, boolean,
                                                      float64, A, int64, float64, P, boolean, A)
        for tt in (int64, int32):
            yield f"nll_rows[{dt},{tt}]", S._nll_rows, (A, int64, int64, arr(tt), A, boolean, int64, boolean, A, P,
                                                        U, A, float64, P, boolean)
            yield f"nll_lines[{dt},{tt}]", S._nll_lines, (A, int64, int64, int64, int64, arr(tt), A, boolean, int64,
                                                          boolean, A, P, U, A, float64, float64, A, int64, float64, P,
                                                          boolean, A)
            yield f"target_weight_sum[{dt},{tt}]", CE._target_weight_sum, (arr(tt), A, boolean, int64, P, U, P)
        yield f"elementwise[{dt}]", RK._elementwise, (int64, A, A, A, float64) + G3 + (A, A, P, U, A, float64)
        yield f"cosine_rows[{dt}]", RK._cosine_rows, (A, A, A, int64, int64, int64, float64) + G3 + (A, A, P, U, A,
                                                                                                    float64)
        yield f"triplet_rows[{dt}]", TR._triplet_rows, (A, A, A, int64, int64, int64, float64, float64, boolean,
                                                        int64, float64) + G3 + (A, A, A, P, U, A, float64)


def main():
    report = {}
    quick = bool(os.environ.get("FASTLOSS_PTX_QUICK"))
    for cc in ((9, 0),) if quick else TARGETS:
        # numba-cuda compiles device functions for the current device's compute capability, and
        # there is no device here: answer with the target being compiled for.
        dispatcher.get_current_device = lambda cc=cc: types.SimpleNamespace(compute_capability=cc)
        for name, kernel, sig in signatures():
            ptx, _ = cuda.compile_ptx(kernel, sig, cc=cc)
            report[f"{name}@sm_{cc[0]}{cc[1]}"] = {
                "shfl": ptx.count("shfl.sync"),
                "ex2_f32": ptx.count("ex2.approx.ftz.f32") + ptx.count("ex2.approx.f32"),
                "local": ptx.count("ld.local") + ptx.count("st.local"),
                "div64": ptx.count("div.s64") + ptx.count("div.u64") + ptx.count("rem.s64") + ptx.count("rem.u64"),
                "ticket": ptx.count("atom.global.inc.u32") + ptx.count("atom.inc.u32"),
                "fence": ptx.count("membar.gl") + ptx.count("fence.sc.gpu") + ptx.count("fence.acq_rel.gpu"),
                "ld_cg": ptx.count("ld.global.cg"),
            }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
