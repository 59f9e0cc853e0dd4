"""Preprocessing kernels: NaN-ignoring column statistics and the standard scaling.

All of them walk X row by row (its memory order) and do their math in double.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from ._scalar cimport PAR_MIN_WORK

# Rows per block in column_stats: a block this size stays in cache, so its
# second sweep (squared deviations) does not read X from memory again.
cdef enum:
    BLOCK_BYTES = 65536


cdef inline void _merge(double* count, double* mean, double* m2, const double* b_count,
                        const double* b_mean, const double* b_m2, Py_ssize_t F) noexcept nogil:
    """Fold the statistics b_* of a disjoint set of rows into (count, mean, m2): Chan et al.

    The mean is the count-weighted average (not mean + delta * nb / n), so a
    column whose mean is infinite stays infinite as in a plain sum.
    """
    cdef Py_ssize_t j
    cdef double na, nb, n, delta
    for j in range(F):
        nb = b_count[j]
        if nb == 0:
            continue
        na = count[j]
        if na == 0:
            count[j], mean[j], m2[j] = nb, b_mean[j], b_m2[j]
            continue
        n = na + nb
        delta = b_mean[j] - mean[j]
        m2[j] += b_m2[j] + delta * delta * (na * nb / n)
        mean[j] = (na * mean[j] + nb * b_mean[j]) / n
        count[j] = n


cdef void _rows_stats(const floating* X, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t F,
                      Py_ssize_t block, double* st) noexcept nogil:
    """Statistics of rows [lo, hi) of X into st = (count, mean, m2, 3 block scratch) x F."""
    cdef double* count = st
    cdef double* mean = st + F
    cdef double* m2 = st + 2 * F
    cdef double* b_count = st + 3 * F
    cdef double* b_mean = st + 4 * F
    cdef double* b_m2 = st + 5 * F
    cdef const floating* row
    cdef Py_ssize_t b0, b1, i, j
    cdef double x, d
    cdef bint ok
    b0 = lo
    while b0 < hi:
        b1 = min(b0 + block, hi)
        memset(b_count, 0, 3 * F * sizeof(double))
        for i in range(b0, b1):
            row = X + i * F
            for j in range(F):
                x = row[j]
                ok = x == x
                b_count[j] += ok
                b_mean[j] += x if ok else 0.0
        for j in range(F):
            if b_count[j] > 0:
                b_mean[j] /= b_count[j]
        for i in range(b0, b1):
            row = X + i * F
            for j in range(F):
                x = row[j]
                d = x - b_mean[j] if x == x else 0.0
                b_m2[j] += d * d
        _merge(count, mean, m2, b_count, b_mean, b_m2, F)
        b0 = b1


def column_stats(const floating[:, ::1] X, int num_threads):
    """(count, mean, M2) per column of X (n, F), NaN ignored, each float64 (F,).

    Threads take contiguous row ranges; their statistics merge in order.
    """
    cdef Py_ssize_t n = X.shape[0], F = X.shape[1], c, nchunks = 1
    cdef Py_ssize_t block = max(1, BLOCK_BYTES // max(1, F * <Py_ssize_t>sizeof(floating)))
    if n * F >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, n))
    state = np.zeros((nchunks, 6, F))
    cdef double[:, :, ::1] st = state
    if n and F:
        for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                        use_threads_if=nchunks > 1):
            _rows_stats(&X[0, 0], c * n // nchunks, (c + 1) * n // nchunks, F, block,
                        &st[c, 0, 0])
        with nogil:
            for c in range(1, nchunks):
                _merge(&st[0, 0, 0], &st[0, 1, 0], &st[0, 2, 0],
                       &st[c, 0, 0], &st[c, 1, 0], &st[c, 2, 0], F)
    return state[0, 0].copy(), state[0, 1].copy(), state[0, 2].copy()


def standardize(const floating[:, ::1] X, const double[::1] offset, const double[::1] scale,
                floating[:, ::1] out, int num_threads):
    """out = (X - offset) / scale, in double, rounded to X's dtype."""
    cdef Py_ssize_t i, j, n = X.shape[0], F = X.shape[1]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n * F >= PAR_MIN_WORK):
        for j in range(F):
            out[i, j] = <floating>((X[i, j] - offset[j]) / scale[j])


def unstandardize(const floating[:, ::1] X, const double[::1] offset, const double[::1] scale,
                  floating[:, ::1] out, int num_threads):
    """out = X * scale + offset, in double, rounded to X's dtype."""
    cdef Py_ssize_t i, j, n = X.shape[0], F = X.shape[1]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n * F >= PAR_MIN_WORK):
        for j in range(F):
            out[i, j] = <floating>(X[i, j] * scale[j] + offset[j])
