"""A kernel exercising :mod:`fastloss._cuda_reduce` for ``test_cuda_rows.py`` (module level, as the
simulator needs the reductions bound to the kernel's own module)."""
import numpy as np
from numba import cuda, float64

from fastloss import _cuda_reduce

_cuda_reduce.install(globals())
BUF = _cuda_reduce.BUF


@cuda.jit
def _reduce_kernel(v, G, sums, maxes, bsum, bmax):
    buf = cuda.shared.array(BUF, float64)
    i = cuda.threadIdx.x
    x = v[i]
    sums[i] = group_sum(buf, x, G)
    maxes[i] = group_max(buf, x, G)
    bsum[i] = block_sum(buf, x)
    bmax[i] = block_max(buf, x)


def reduce_all(v, G, threads):
    """Per-thread results of group_sum/group_max (groups of ``G``) and block_sum/block_max."""
    outs = [cuda.device_array(threads, np.float64) for _ in range(4)]
    _reduce_kernel[1, threads](cuda.to_device(v), G, *outs)
    return [o.copy_to_host() for o in outs]
