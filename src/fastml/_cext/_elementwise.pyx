"""Element-wise activations and their backward passes over flat contiguous arrays.

Every kernel writes ``out`` (allocated by the caller, same length as the
inputs) and runs in parallel when the array is large enough to pay for it.
sigmoid and tanh run the CPU-dispatched vector loops of _kernels.h, one
contiguous chunk per thread; so do GELU and SiLU. Their float64 loops (and
float32 GELU-tanh) compute each element in double, as the reference does;
float32 GELU (erf) and SiLU run in float32 vectors, with the derivatives'
roots and tails handled as described in _kernels.h.
"""
from cython cimport floating
from cython.parallel cimport prange

from ._kernels cimport gelu_backward_k, gelu_k, sigmoid_k, silu_backward_k, silu_k, tanh_k
from ._scalar cimport PAR_MIN_WORK


cdef inline floating _relu(floating x) noexcept nogil:
    # NaN <= 0 is false, so NaN passes through as in torch.relu.
    return 0 if x <= 0 else x


cdef inline floating _relu_backward(floating g, floating x) noexcept nogil:
    return 0 if x <= 0 else g


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


cdef enum Unary:
    SIGMOID
    TANH


cdef void _unary_chunks(Unary op, const floating[::1] x, floating[::1] out,
                        int num_threads) noexcept nogil:
    """op over x in one contiguous chunk per thread."""
    cdef Py_ssize_t c, lo, hi, n = x.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    if n == 0:
        return
    for c in prange(chunks, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        if op == SIGMOID:
            sigmoid_k(&x[0] + lo, &out[0] + lo, hi - lo)
        else:
            tanh_k(&x[0] + lo, &out[0] + lo, hi - lo)


def sigmoid(const floating[::1] x, floating[::1] out, int num_threads):
    with nogil:
        _unary_chunks(SIGMOID, x, out, num_threads)


def sigmoid_backward(const floating[::1] grad_out, const floating[::1] y, floating[::1] out,
                     int num_threads):
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _sigmoid_backward(grad_out[i], y[i])


def tanh(const floating[::1] x, floating[::1] out, int num_threads):
    with nogil:
        _unary_chunks(TANH, x, out, num_threads)


def tanh_backward(const floating[::1] grad_out, const floating[::1] y, floating[::1] out,
                  int num_threads):
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _tanh_backward(grad_out[i], y[i])


cdef inline floating _leaky_relu(floating x, floating slope) noexcept nogil:
    # x > 0 ? x : x * slope in x's dtype; NaN > 0 is false and NaN * slope is NaN.
    return x if x > 0 else x * slope


cdef inline floating _leaky_relu_backward(floating g, floating x, floating slope) noexcept nogil:
    return g if x > 0 else g * slope


def leaky_relu(const floating[::1] x, double negative_slope, floating[::1] out,
               int num_threads):
    # the slope rounded to x's dtype, as the reference's x.dtype.type(negative_slope)
    cdef floating slope = <floating>negative_slope
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _leaky_relu(x[i], slope)


def leaky_relu_backward(const floating[::1] grad_out, const floating[::1] x,
                        double negative_slope, floating[::1] out, int num_threads):
    cdef floating slope = <floating>negative_slope
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = _leaky_relu_backward(grad_out[i], x[i], slope)


cdef enum Act:
    GELU
    SILU


cdef void _act_chunks(Act op, const floating[::1] x, floating[::1] out, int approx_tanh,
                      int num_threads) noexcept nogil:
    """op(x) in one contiguous chunk per thread."""
    cdef Py_ssize_t c, lo, hi, n = x.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    if n == 0:
        return
    for c in prange(chunks, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        if op == GELU:
            gelu_k(&x[0] + lo, &out[0] + lo, hi - lo, approx_tanh)
        else:
            silu_k(&x[0] + lo, &out[0] + lo, hi - lo)


cdef void _act_backward_chunks(Act op, const floating[::1] g, const floating[::1] x,
                               floating[::1] out, int approx_tanh,
                               int num_threads) noexcept nogil:
    """g * op'(x) in one contiguous chunk per thread."""
    cdef Py_ssize_t c, lo, hi, n = x.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    if n == 0:
        return
    for c in prange(chunks, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        if op == GELU:
            gelu_backward_k(&g[0] + lo, &x[0] + lo, &out[0] + lo, hi - lo, approx_tanh)
        else:
            silu_backward_k(&g[0] + lo, &x[0] + lo, &out[0] + lo, hi - lo)


def gelu(const floating[::1] x, bint approx_tanh, floating[::1] out, int num_threads):
    """x * Phi(x) (erf), or its tanh approximation when approx_tanh."""
    with nogil:
        _act_chunks(GELU, x, out, approx_tanh, num_threads)


def gelu_backward(const floating[::1] grad_out, const floating[::1] x, bint approx_tanh,
                  floating[::1] out, int num_threads):
    with nogil:
        _act_backward_chunks(GELU, grad_out, x, out, approx_tanh, num_threads)


def silu(const floating[::1] x, floating[::1] out, int num_threads):
    with nogil:
        _act_chunks(SILU, x, out, 0, num_threads)


def silu_backward(const floating[::1] grad_out, const floating[::1] x, floating[::1] out,
                  int num_threads):
    with nogil:
        _act_backward_chunks(SILU, grad_out, x, out, 0, num_threads)
