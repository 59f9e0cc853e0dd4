"""Row-wise softmax / log-softmax and their backward passes over (rows, n) arrays.

Rows are independent, so large inputs are split over threads by rows; each
row runs a CPU-dispatched vector loop of _kernels.h. Row sums accumulate in
double. A NaN or +inf in a row makes the whole row NaN, as ``exp(x - max)``
does in the reference.
"""
from cython cimport floating
from cython.parallel cimport prange

from ._kernels cimport log_softmax_backward_row, log_softmax_row, softmax_backward_row, softmax_row
from ._scalar cimport PAR_MIN_WORK


def softmax(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = x.shape[0], n = x.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        softmax_row(&x[i, 0], &out[i, 0], n)


def log_softmax(const floating[:, ::1] x, floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = x.shape[0], n = x.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        log_softmax_row(&x[i, 0], &out[i, 0], n)


def softmax_backward(const floating[:, ::1] grad_out, const floating[:, ::1] y,
                     floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = y.shape[0], n = y.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        softmax_backward_row(&grad_out[i, 0], &y[i, 0], &out[i, 0], n)


def log_softmax_backward(const floating[:, ::1] grad_out, const floating[:, ::1] y,
                         floating[:, ::1] out, int num_threads):
    cdef Py_ssize_t i, rows = y.shape[0], n = y.shape[1]
    if n == 0:
        return
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        log_softmax_backward_row(&grad_out[i, 0], &y[i, 0], &out[i, 0], n)
