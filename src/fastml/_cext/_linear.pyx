"""linear / linear_backward: BLAS GEMM (scipy.linalg.cython_blas) plus the bias parts.

BLAS is column-major; a row-major (r, c) array is the column-major (c, r)
matrix with leading dimension c, so each row-major product below is issued
as the transposed column-major one. BLAS rejects a zero leading dimension
and a size-0 product has nothing to compute, so those calls are skipped.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from ._scalar cimport PAR_MIN_WORK


cdef inline void _gemm(char transa, char transb, int m, int n, int k, const floating* a, int lda,
                       const floating* b, int ldb, floating beta, floating* c,
                       int ldc) noexcept nogil:
    """Column-major C (m, n) = op(A) @ op(B) + beta * C."""
    cdef floating alpha = 1
    if floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb,
              &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb,
              &beta, c, &ldc)


def linear(const floating[:, ::1] x, const floating[:, ::1] weight, const floating[::1] bias,
           floating[:, ::1] out, int num_threads):
    """out (N, out) = x (N, in) @ weight.T (+ bias); bias may be None.

    The bias is written into out first and GEMM accumulates onto it (beta = 1).
    """
    cdef Py_ssize_t i, N = x.shape[0], K = x.shape[1], M = weight.shape[0]
    cdef bint has_bias = bias is not None
    if N == 0 or M == 0:
        return
    with nogil:
        if has_bias:
            for i in prange(N, schedule="static", num_threads=num_threads,
                            use_threads_if=N * M >= PAR_MIN_WORK):
                memcpy(&out[i, 0], &bias[0], M * sizeof(floating))
        elif K == 0:
            memset(&out[0, 0], 0, N * M * sizeof(floating))
        if K:
            # out.T (M, N) = weight (M, K) @ x.T (K, N)
            _gemm(c"T", c"N", M, N, K, &weight[0, 0], K, &x[0, 0], K,
                  1 if has_bias else 0, &out[0, 0], M)


cdef void _colsum(const floating* g, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t M,
                  double* acc) noexcept nogil:
    """acc[j] += sum of g[i, j] over rows lo <= i < hi, row by row."""
    cdef Py_ssize_t i, j
    for i in range(lo, hi):
        for j in range(M):
            acc[j] += g[i * M + j]


def linear_backward(const floating[:, ::1] grad_out, const floating[:, ::1] x,
                    const floating[:, ::1] weight, floating[:, ::1] grad_x,
                    floating[:, ::1] grad_weight, floating[::1] grad_bias, int num_threads):
    """grad_x = grad_out @ weight, grad_weight = grad_out.T @ x, grad_bias = column sums
    of grad_out (accumulated in double; skipped when grad_bias is None)."""
    cdef Py_ssize_t c, j, N = x.shape[0], K = x.shape[1], M = weight.shape[0], nchunks = 1
    cdef bint has_bias = grad_bias is not None
    if N * M >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, N))
    acc_arr = np.zeros((nchunks, M if has_bias else 0))
    cdef double[:, ::1] acc = acc_arr
    with nogil:
        if N and K:
            if M:
                # grad_x.T (K, N) = weight.T (K, M) @ grad_out.T (M, N)
                _gemm(c"N", c"N", K, N, M, &weight[0, 0], K, &grad_out[0, 0], M,
                      0, &grad_x[0, 0], K)
            else:
                memset(&grad_x[0, 0], 0, N * K * sizeof(floating))
        if M and K:
            if N:
                # grad_weight.T (K, M) = x.T (K, N) @ grad_out (N, M)
                _gemm(c"N", c"T", K, M, N, &x[0, 0], K, &grad_out[0, 0], M,
                      0, &grad_weight[0, 0], K)
            else:
                memset(&grad_weight[0, 0], 0, M * K * sizeof(floating))
        if has_bias and M:
            if N:
                for c in prange(nchunks, schedule="static", num_threads=num_threads,
                                use_threads_if=nchunks > 1):
                    _colsum(&grad_out[0, 0], c * N // nchunks, (c + 1) * N // nchunks, M,
                            &acc[c, 0])
                for c in range(1, nchunks):
                    for j in range(M):
                        acc[0, j] += acc[c, j]
            for j in range(M):
                grad_bias[j] = <floating>acc[0, j]
