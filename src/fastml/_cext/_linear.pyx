"""The bias parts of linear / linear_backward; the GEMMs are NumPy's matmul (its BLAS).

NumPy's matmul calls BLAS without copying the transposed operands. Its bundled
OpenBLAS matched scipy.linalg.cython_blas at 1 thread and was about 2x faster at
2 threads on a busy 2-core machine; the caller bounds both pools (threadpoolctl).
These loops are serial on purpose: they run between threaded BLAS calls, whose
spinning workers an OpenMP team here would fight (2.5x slower linear at 2 threads).
"""
import numpy as np

from cython cimport floating


def add_bias(floating[:, ::1] out, const floating[::1] bias):
    """out[i, :] += bias for every row i, in place."""
    cdef Py_ssize_t i, j
    with nogil:
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += bias[j]


def column_sums(const floating[:, ::1] g, floating[::1] out):
    """out = g.sum(axis=0), accumulated in double, reading g row by row."""
    cdef Py_ssize_t i, j, M = g.shape[1]
    cdef double[::1] acc = np.zeros(M)
    with nogil:
        for i in range(g.shape[0]):
            for j in range(M):
                acc[j] += g[i, j]
        for j in range(M):
            out[j] = <floating>acc[j]
