"""Row-wise softmax / log-softmax and their backward passes over (rows, n) arrays.

Rows are independent, so large inputs are split over threads by rows. Row
sums accumulate in double. A NaN or +inf in a row makes the whole row NaN,
as ``exp(x - max)`` does in the reference.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log

from ._scalar cimport PAR_MIN_WORK, fexp, row_dot, row_max, row_sum


cdef inline void _softmax_row(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    cdef floating m = row_max(x, n)
    cdef double inv
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = fexp(x[j] - m)
    inv = 1 / row_sum(out, n)
    for j in range(n):
        out[j] = <floating>(out[j] * inv)


cdef inline void _log_softmax_row(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    # out holds exp(x - m) until the log-sum-exp is known
    cdef floating m = row_max(x, n)
    cdef double lse
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = fexp(x[j] - m)
    lse = log(row_sum(out, n))
    for j in range(n):
        out[j] = <floating>((x[j] - m) - lse)


cdef inline void _softmax_backward_row(const floating* g, const floating* y, floating* out,
                                       Py_ssize_t n) noexcept nogil:
    cdef double dot = row_dot(g, y, n)
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = <floating>(y[j] * (g[j] - dot))


cdef inline void _log_softmax_backward_row(const floating* g, const floating* y, floating* out,
                                           Py_ssize_t n) noexcept nogil:
    cdef double total = row_sum(g, n)
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = <floating>(g[j] - fexp(y[j]) * total)


def softmax(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = x.shape[0], n = x.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        _softmax_row(&x[i, 0], &out[i, 0], n)


def log_softmax(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = x.shape[0], n = x.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        _log_softmax_row(&x[i, 0], &out[i, 0], n)


def softmax_backward(const floating[:, ::1] grad_out, const floating[:, ::1] y,
                     floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = y.shape[0], n = y.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        _softmax_backward_row(&grad_out[i, 0], &y[i, 0], &out[i, 0], n)


def log_softmax_backward(const floating[:, ::1] grad_out, const floating[:, ::1] y,
                         floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = y.shape[0], n = y.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        _log_softmax_backward_row(&grad_out[i, 0], &y[i, 0], &out[i, 0], n)
