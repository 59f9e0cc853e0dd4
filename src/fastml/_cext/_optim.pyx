"""Fused optimizer updates: one in-place pass over param and its state arrays.

The per-step scalars (bias corrections, step size, ...) are computed once in
Python and passed in; here each is rounded to the array dtype and applied in
the reference's order of operations, so float32 follows NumPy's float32 math.

Each thread updates one contiguous chunk through a loop outside the
OpenMP-outlined ``prange`` body, where the flags and scalars would be read
through a shared struct that the stores may alias. The Adam, RMSprop and
Adagrad loops (sqrt and division) are in _kernels.h (vectorized,
CPU-dispatched); SGD's is memory-bound as it is.
"""
from cython cimport floating
from cython.parallel cimport prange

from ._kernels cimport (fastml_adagrad_f32, fastml_adagrad_f64, fastml_adam_f32,
                       fastml_adam_f64, fastml_rmsprop_f32, fastml_rmsprop_f64)
from ._scalar cimport PAR_MIN_WORK


cdef void _sgd_chunk(floating* param, const floating* grad, floating* buf, Py_ssize_t n,
                     floating lr, floating mom, floating damp, floating wd, bint use_wd,
                     bint use_momentum, bint first_step, bint nesterov,
                     bint maximize) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g
    for i in range(n):
        g = -grad[i] if maximize else grad[i]
        if use_wd:
            g = g + wd * param[i]
        if use_momentum:
            if first_step:
                buf[i] = g
            else:
                buf[i] = buf[i] * mom + damp * g
            g = g + mom * buf[i] if nesterov else buf[i]
        param[i] = param[i] - lr * g


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] momentum_buffer,
             double lr, double momentum, double one_minus_dampening, double weight_decay,
             bint first_step, bint nesterov, bint maximize, int num_threads):
    """momentum_buffer is only touched when momentum != 0 (it may be None otherwise)."""
    cdef Py_ssize_t c, lo, hi, n = param.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    cdef bint use_momentum = momentum != 0
    cdef floating* buf = &momentum_buffer[0] if use_momentum and n else NULL
    if n == 0:
        return
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        _sgd_chunk(&param[lo], &grad[lo], buf + lo if use_momentum else NULL, hi - lo,
                   <floating>lr, <floating>momentum, <floating>one_minus_dampening,
                   <floating>weight_decay, weight_decay != 0, use_momentum, first_step,
                   nesterov, maximize)


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, floating[::1] max_exp_avg_sq,
              double one_minus_beta1, double beta2, double one_minus_beta2,
              double bias_correction2_sqrt, double eps, double step_size,
              double weight_decay, double decay_factor, bint decoupled, bint amsgrad,
              bint maximize, int num_threads):
    """Adam / AdamW. With weight decay, decoupled multiplies param by decay_factor
    (1 - lr * weight_decay), else weight_decay * param joins the gradient.
    max_exp_avg_sq is only touched with amsgrad (it may be None otherwise)."""
    cdef Py_ssize_t c, lo, hi, n = param.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    if n == 0:
        return
    cdef bint use_wd = weight_decay != 0
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        _adam(&param[lo], &grad[lo], &exp_avg[lo], &exp_avg_sq[lo],
              &max_exp_avg_sq[lo] if amsgrad else NULL, hi - lo,
              -1 if maximize else 1, one_minus_beta1, beta2, one_minus_beta2,
              bias_correction2_sqrt, eps, step_size, weight_decay,
              decay_factor if use_wd and decoupled else 1, use_wd and not decoupled, amsgrad)


cdef inline void _adam(floating* param, const floating* grad, floating* m, floating* v,
                       floating* vmax, Py_ssize_t n, double sign, double b1c, double b2,
                       double b2c, double bc2, double eps, double step_size, double wd,
                       double decay, bint coupled, bint amsgrad) noexcept nogil:
    """The dtype's vector kernel (_kernels.h), scalars rounded to the dtype."""
    if floating is float:
        fastml_adam_f32(param, grad, m, v, vmax, n, <float>sign, <float>b1c, <float>b2,
                        <float>b2c, <float>bc2, <float>eps, <float>step_size, <float>wd,
                        <float>decay, coupled, amsgrad)
    else:
        fastml_adam_f64(param, grad, m, v, vmax, n, sign, b1c, b2, b2c, bc2, eps, step_size,
                        wd, decay, coupled, amsgrad)


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                 floating[::1] momentum_buffer, floating[::1] grad_avg, double lr, double alpha,
                 double eps, double weight_decay, double momentum, bint centered,
                 bint maximize, int num_threads):
    """RMSprop. momentum_buffer is only touched when momentum > 0 and grad_avg
    when centered (each may be None otherwise)."""
    cdef Py_ssize_t c, lo, hi, n = param.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    if n == 0:
        return
    cdef bint use_momentum = momentum > 0
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        _rmsprop(&param[lo], &grad[lo], &square_avg[lo],
                 &momentum_buffer[lo] if use_momentum else NULL,
                 &grad_avg[lo] if centered else NULL, hi - lo, -1 if maximize else 1,
                 weight_decay, alpha, 1 - alpha, lr, eps, momentum, weight_decay != 0,
                 centered, use_momentum)


cdef inline void _rmsprop(floating* param, const floating* grad, floating* sq, floating* buf,
                          floating* gavg, Py_ssize_t n, double sign, double wd, double alpha,
                          double alphac, double lr, double eps, double mom, bint coupled,
                          bint centered, bint momentum) noexcept nogil:
    """The dtype's vector kernel (_kernels.h), scalars rounded to the dtype."""
    if floating is float:
        fastml_rmsprop_f32(param, grad, sq, buf, gavg, n, <float>sign, <float>wd,
                           <float>alpha, <float>alphac, <float>lr, <float>eps, <float>mom,
                           coupled, centered, momentum)
    else:
        fastml_rmsprop_f64(param, grad, sq, buf, gavg, n, sign, wd, alpha, alphac, lr, eps,
                           mom, coupled, centered, momentum)


def adagrad_step(floating[::1] param, const floating[::1] grad, floating[::1] state_sum,
                 double clr, double weight_decay, double eps, bint maximize, int num_threads):
    """Adagrad (dense); clr is the decayed learning rate lr / (1 + (step - 1) * lr_decay)."""
    cdef Py_ssize_t c, lo, hi, n = param.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    if n == 0:
        return
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        _adagrad(&param[lo], &grad[lo], &state_sum[lo], hi - lo, -1 if maximize else 1,
                 weight_decay, clr, eps, weight_decay != 0)


cdef inline void _adagrad(floating* param, const floating* grad, floating* state_sum,
                          Py_ssize_t n, double sign, double wd, double clr, double eps,
                          bint coupled) noexcept nogil:
    """The dtype's vector kernel (_kernels.h), scalars rounded to the dtype."""
    if floating is float:
        fastml_adagrad_f32(param, grad, state_sum, n, <float>sign, <float>wd, <float>clr,
                           <float>eps, coupled)
    else:
        fastml_adagrad_f64(param, grad, state_sum, n, sign, wd, clr, eps, coupled)
