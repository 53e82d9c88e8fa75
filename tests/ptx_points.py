"""Compile the pointwise family's one-point functions, as the CUDA float32 kernels use them
(``pointwise_cuda.kernels.P32``), for a real GPU and count their float64 instructions; run by
``test_cuda_points.py`` in a process without the simulator (no GPU needed: numba-cuda's NVVM).

One tiny kernel per loss: its one-point function and its derivative (``l1_point`` with
``l1_point_grad``), or a helper alone, called with float32 arguments read from float32 arrays and
its results stored to float32 arrays, for sm_90. Prints one JSON line: function -> counts of

* ``f64``: PTX instructions of any float64 type, by opcode (``add``, ``cvt``, ``setp``, ...): every
  instruction whose type suffixes include ``f64`` (``add.rn.f64``, ``cvt.f64.f32``,
  ``cvt.rn.f32.f64``, ``setp.lt.f64``, ``mov.f64``, ``selp.f64``, ...); ``.reg .f64`` declarations are
  not instructions and not counted;
* ``ex2_f32``: float32 ``ex2.approx`` (the heart of the GPU's float32 exp), and ``uses_exp``: whether
  the function calls ``exp`` (itself or through the functions it calls).

``python ptx_points.py NAME`` prints NAME's PTX instead.
"""
import json
import re
import sys
import types

from numba import cuda, float32
from numba.cuda import dispatcher

from fastloss.families.pointwise import points
from fastloss.families.pointwise_cuda import kernels

CC = (9, 0)
#: An instruction: optional predicate, opcode with its dotted suffixes, operands.
_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9]*(?:\.[a-z0-9]+)*)\s", re.M)


def groups():
    """(name, functions): each loss with its derivative, and every other one-point function alone."""
    names = [fn.__name__ for fn in points.POINT_FUNCTIONS]
    paired = {n + "_grad" for n in names if n + "_grad" in names}
    for n in names:
        if n in paired:
            continue
        yield n, [n, n + "_grad"] if n + "_grad" in paired else [n]


def uses_exp(name, seen=None):
    """Whether one-point function ``name`` calls ``exp``, itself or through the others it calls."""
    code = getattr(points, name).__code__
    seen = set() if seen is None else seen
    seen.add(name)
    callees = [c for c in code.co_names if hasattr(points, c) and getattr(points, c) in points.POINT_FUNCTIONS]
    return "exp" in code.co_names or any(uses_exp(c, seen) for c in callees if c not in seen)


def kernel_for(functions):
    """A kernel ``k(out_0, .., out_m, a_0, .., a_n)`` storing ``functions[j](a_0[i], .., a_n[i])`` to
    ``out_j[i]``, all arrays float32, the functions those of ``kernels.P32``."""
    nargs = getattr(points, functions[0]).__code__.co_argcount
    outs = [f"o{j}" for j in range(len(functions))]
    args = [f"a{k}" for k in range(nargs)]
    body = "".join(f"        {o}[i] = {f}({', '.join(a + '[i]' for a in args)})\n" for o, f in zip(outs, functions))
    source = f"def k({', '.join(outs + args)}):\n    i = cuda.grid(1)\n    if i < o0.shape[0]:\n{body}"
    namespace = {"cuda": cuda, **{f: getattr(kernels.P32, f) for f in functions}}
    exec(compile(source, f"<kernel {functions[0]}>", "exec"), namespace)
    return namespace["k"], (float32[::1],) * (len(outs) + len(args))


def ptx_of(functions):
    fn, sig = kernel_for(functions)
    ptx, _ = cuda.compile_ptx(fn, sig, cc=CC)
    return ptx


def summary(ptx):
    f64 = {}
    for opcode in _INSTRUCTION.findall(ptx):
        parts = opcode.split(".")
        if "f64" in parts[1:]:
            f64[parts[0]] = f64.get(parts[0], 0) + 1
    return {"f64": f64, "ex2_f32": ptx.count("ex2.approx.ftz.f32") + ptx.count("ex2.approx.f32")}


def main():
    # numba-cuda compiles device functions for the current device's compute capability, and there is
    # no device here: answer with the target being compiled for.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    if len(sys.argv) > 1:
        print(ptx_of(dict(groups())[sys.argv[1]]))
        return
    report = {}
    for name, functions in groups():
        report[name] = dict(summary(ptx_of(functions)), functions=functions,
                            uses_exp=any(uses_exp(f) for f in functions))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
