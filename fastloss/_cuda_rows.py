"""What the CUDA row kernels (softmax, margin, ranking, triplet families) share: a thread's place in
its row group, the row group's reductions, the block's partial sum, and the host-side group and
launch shapes.

A row kernel gives each row a *group* of ``G`` threads (``G`` a power of two): several groups per
block when ``G`` is at most a warp (their reductions are warp shuffles), one group filling the block
when it is larger (block reductions). A block's groups take rows ``first + sub`` for ``first`` in
``range(start, R, step)``::

    lane, sub, start, step = row_slots(G)
    for first in range(start, R, step):
        r = first + sub
        live = r < R          # rows past the end are masked, not skipped: see _cuda_reduce

Use: ``_cuda_rows.install(globals())`` in a kernel module, in place of ``_cuda_reduce.install``: it
puts there the reductions of :mod:`fastloss._cuda_reduce` and the device functions below, bound to
that module's globals (the simulator's reason is given in :mod:`fastloss._cuda_reduce`). A device
function bound this way compiles (or, simulated, runs) only where a kernel calls it.
"""
from __future__ import annotations

from numba import cuda, uint32

from . import _cuda_reduce as _R

#: Lanes of a warp (4 under the simulator, see _cuda_reduce).
WARP = _R.WARP
#: Most threads per row (a power of two): a block of that many holds one row.
ROW_THREADS = 16 if _R.SIMULATOR else 512
#: Classes per lane aimed at by :func:`row_group` for rows longer than a warp.
PER_THREAD = 2 if _R.SIMULATOR else 8
#: At most this many blocks per launch (they stride over the rows beyond); also the partials' length.
MAX_ROW_BLOCKS = 3 if _R.SIMULATOR else 8192


def row_group(C: int, K: int = 1) -> int:
    """Threads per row ``G`` for rows of ``C`` elements lying ``K`` apart: 1 when ``K > 1`` (neighbouring
    threads then take neighbouring rows, whose elements are neighbours), else the power of two >= C
    up to a warp, and beyond a warp about ``PER_THREAD`` elements per lane, at most ``ROW_THREADS``."""
    if K != 1:
        return 1
    if C <= WARP:
        return _R.group_size(C)
    g = 1
    while g * PER_THREAD < C and g < ROW_THREADS:
        g *= 2
    return g


def launch_shape(R: int, G: int, rows_block: int):
    """``(blocks, threads)`` of a row kernel over ``R`` rows in groups of ``G`` threads: a block of
    ``G`` threads per row when ``G`` exceeds a warp (the block reductions span the whole block), else
    ``rows_block`` threads holding several rows (their reductions stay within a warp)."""
    threads = G if G > WARP else rows_block
    per_block = threads // G
    return max(1, min(MAX_ROW_BLOCKS, -(-R // per_block))), threads


# --------------------------------------------------------------------------------------------------
# Device functions: templates that install() binds to a kernel module, whose globals then give them
# group_sum, group_max, block_sum and block_max
# --------------------------------------------------------------------------------------------------
def _row_slots(G):
    """``(lane, sub, start, step)`` of this thread for rows in groups of ``G`` threads: its lane in
    the group, its group in the block, and the row loop's start and step (see the module docstring)."""
    tid = cuda.threadIdx.x
    per_block = cuda.blockDim.x // G
    return tid & (G - 1), tid // G, cuda.blockIdx.x * per_block, cuda.gridDim.x * per_block


def _row_sum(buf, v, G):
    """Sum over the row's group of ``G`` threads (a warp's part, or the whole block)."""
    if G <= WARP:
        return group_sum(buf, v, G)
    return block_sum(buf, v)


def _row_max(mbuf, v, G):
    """Maximum over the row's group of ``G`` threads (a warp's part, or the whole block)."""
    if G <= WARP:
        return group_max(mbuf, v, G)
    return block_max(mbuf, v)


def _leave_partial(buf, acc, parts):
    """The block's sum of the threads' ``acc`` into ``parts[blockIdx.x]`` (all threads call it)."""
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total


def _finish_partials(buf, last, acc, parts, ticket, out, den, den_buf, use_den_buf):
    """:func:`_leave_partial`, then the final sum in the same launch: the last block of the grid to get
    here adds every block's partial in block order (thread k takes k, k + blockDim, ..., then a block
    sum: the order depends on the launch shape only, so results repeat bit for bit) and writes
    ``out[0] = sum / d`` with ``d = den_buf[0]`` if ``use_den_buf`` else ``den``. All threads call it.

    One launch fewer per call than a separate final kernel (issue 9: launch overhead). Each block's
    thread 0 publishes its partial, fences (the partial is visible to every block before the ticket
    is), then takes a ticket, ``atomic.inc(ticket[0], gridDim - 1)``: it counts the blocks done and
    wraps to 0 for the block that sees ``gridDim - 1``, the last one, so the same zeroed ``ticket`` serves
    every launch on its stream (see ``_cuda_reduce.ticket``). The last block reads the partials with
    ``ld.global.cg`` (:func:`load_partial`), from L2, never from a stale L1 line. ``last``: a shared
    uint32[1] of the kernel.
    """
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        parts[cuda.blockIdx.x] = total
        cuda.threadfence()
        last[0] = cuda.atomic.inc(ticket, 0, uint32(cuda.gridDim.x - 1))
    cuda.syncthreads()
    if last[0] == uint32(cuda.gridDim.x - 1):
        s = 0.0
        k = cuda.threadIdx.x
        while k < cuda.gridDim.x:  # a while loop: range() with a step divides to count its trips
            s += load_partial(parts, k)
            k += cuda.blockDim.x
        total = block_sum(buf, s)
        if cuda.threadIdx.x == 0:
            out[0] = total / (den_buf[0] if use_den_buf else den)


def _load_partial_gpu(parts, k):
    """``parts[k]`` read through L2 (``ld.global.cg``): written by another block in this launch."""
    return cuda.ldcg(parts, k)


def _load_partial_sim(parts, k):
    return parts[k]


def _cast(tmp, v):
    """``v`` converted to the data's dtype (``tmp``: a one-element local array of that dtype)."""
    tmp[0] = v
    return tmp[0]


_DEVICE = {"row_slots": _row_slots, "row_sum": _row_sum, "row_max": _row_max, "leave_partial": _leave_partial,
           "load_partial": _load_partial_sim if _R.SIMULATOR else _load_partial_gpu,
           "finish_partials": _finish_partials, "cast": _cast}


def install(namespace: dict) -> None:
    """:func:`fastloss._cuda_reduce.install` (``group_sum``, ``group_max``, ``block_sum``, ``block_max``,
    ``WARP``), then ``row_slots``, ``row_sum``, ``row_max``, ``leave_partial``, ``finish_partials``,
    ``load_partial`` and ``cast`` as device functions bound to ``namespace`` (a kernel module's
    ``globals()``, which gets ``uint32`` too)."""
    _R.install(namespace)
    if namespace.setdefault("uint32", uint32) is not uint32:
        raise RuntimeError("install(): the module's 'uint32' is not numba's")
    _R.bind(namespace, _DEVICE)
