"""Element-wise activations and their backward passes over flat contiguous arrays.

Every kernel writes ``out`` (allocated by the caller, same length as the
inputs) and runs in parallel when the array is large enough to pay for it.
"""
from cython cimport floating
from cython.parallel cimport prange

from ._scalar cimport PAR_MIN_WORK, fexp, ftanh


cdef inline floating _relu(floating x) noexcept nogil:
    # NaN <= 0 is false, so NaN passes through as in torch.relu.
    return 0 if x <= 0 else x


cdef inline floating _relu_backward(floating g, floating x) noexcept nogil:
    return 0 if x <= 0 else g


cdef inline floating _sigmoid(floating x) noexcept nogil:
    return <floating>1 / (<floating>1 + fexp(-x))


cdef inline floating _sigmoid_backward(floating g, floating y) noexcept nogil:
    return g * (<floating>1 - y) * y


cdef inline floating _tanh_backward(floating g, floating y) noexcept nogil:
    return g * (<floating>1 - y * y)


def relu(const floating[::1] x, floating[::1] out, int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _relu(x[i])


def relu_backward(const floating[::1] grad_out, const floating[::1] x, floating[::1] out,
                  int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _relu_backward(grad_out[i], x[i])


def sigmoid(const floating[::1] x, floating[::1] out, int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _sigmoid(x[i])


def sigmoid_backward(const floating[::1] grad_out, const floating[::1] y, floating[::1] out,
                     int num_threads):
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _sigmoid_backward(grad_out[i], y[i])


def tanh(const floating[::1] x, floating[::1] out, int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = ftanh(x[i])


def tanh_backward(const floating[::1] grad_out, const floating[::1] y, floating[::1] out,
                  int num_threads):
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _tanh_backward(grad_out[i], y[i])
