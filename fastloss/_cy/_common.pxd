# cython: language_level=3
"""Helpers shared by the Cython kernels of fastloss (all inlined).

- PyTorch 2.13's scalar conventions, spelled once: how ``clamp_min(z, 0)`` treats NaN and its kink, and
  ``torch.sgn`` of a real number. ``floating`` is float or double: each helper runs in the precision of
  the data, as each PyTorch operation does.
- float64 sums over independent lanes (vectorisable, deterministic).
- Work items: their size, count, and the float64 partial sums they leave.
- Whether the extension was built with OpenMP.
"""
from cython cimport floating
from libc.stdlib cimport malloc

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTLOSS_HAVE_OPENMP 1
    #else
    #define FASTLOSS_HAVE_OPENMP 0
    #endif
    """
    # 1 when the extension was compiled with OpenMP (prange runs threads), 0 when it runs serially.
    const int FASTLOSS_HAVE_OPENMP

# Elements per work item: 8192 (32 KiB of float32 per stream) keeps the cost of handing out items
# negligible while leaving enough of them to balance the threads. The kernels hand them out dynamically
# (a thread that the shared machine preempts does not hold the others up), each item's float64 loss sum
# goes to its own slot of a partials array, and the slots are added in a fixed order after the loop: the
# result does not depend on the thread count or on which thread ran which item.
cdef enum:
    CHUNK = 8192


# Independent float64 partial sums of the summing loops: one chain of float64 adds is bound by the add's
# latency, and lanes, unlike a reassociated sum, vectorise without fast-math and give the same result on
# every run.
cdef enum:
    LANES = 8


cdef inline double sum_f64(const floating* v, Py_ssize_t n) noexcept nogil:
    """``sum(v[:n])`` accumulated in float64 over LANES partial sums, combined in a fixed order."""
    cdef double acc[LANES]
    cdef double tail = 0
    cdef Py_ssize_t i = 0, k
    for k in range(LANES):
        acc[k] = 0
    while i + LANES <= n:
        for k in range(LANES):
            acc[k] += v[i + k]
        i += LANES
    while i < n:
        tail += v[i]
        i += 1
    return lanes_total(acc) + tail


cdef inline double lanes_total(const double* acc) noexcept nogil:
    """The LANES partial sums of ``acc`` added pairwise, in a fixed order."""
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline floating clamp_min0(floating z) noexcept nogil:
    """``torch.clamp_min(z, 0)``: ``max(z, 0)`` that keeps NaN (``NaN < 0`` is false)."""
    return 0 if z < 0 else z


cdef inline floating through_clamp_min0(floating g, floating z) noexcept nogil:
    """The gradient ``g`` of ``clamp_min(z, 0)`` passed back to ``z``.

    PyTorch passes it where ``z >= 0``, the kink ``z == 0`` included, and blocks it where ``z`` is NaN.
    """
    return g if z >= 0 else 0


cdef inline floating sgn(floating x) noexcept nogil:
    """``torch.sgn`` of a real number: -1, 0 or 1, and 0 for NaN (so ``d|x|/dx`` is 0 at 0 and NaN)."""
    return (x > 0) - (x < 0)


cdef inline Py_ssize_t rows_per_item(Py_ssize_t width) noexcept nogil:
    """Rows per work item of the row kernels: about CHUNK elements, at least one row."""
    return max(1, CHUNK // max(width, 1))


cdef inline Py_ssize_t item_count(Py_ssize_t n, Py_ssize_t per_item) noexcept nogil:
    """How many work items of ``per_item`` rows cover ``n`` rows."""
    return (n + per_item - 1) // per_item


cdef inline double* new_partials(Py_ssize_t count) except NULL:
    """An uninitialised array of ``count`` float64 partial sums (free it with libc's free)."""
    cdef double* parts = <double*>malloc(max(count, 1) * sizeof(double))
    if parts == NULL:
        raise MemoryError(f"cannot allocate {count} partial sums")
    return parts


cdef inline Py_ssize_t chunk_count(Py_ssize_t n) noexcept nogil:
    """How many CHUNK-sized work items cover ``n`` elements."""
    return (n + CHUNK - 1) // CHUNK


cdef inline Py_ssize_t chunk_len(Py_ssize_t c, Py_ssize_t n) noexcept nogil:
    """Length of work item ``c`` of ``n`` elements (the last one may be short)."""
    return min(CHUNK, n - c * CHUNK)
