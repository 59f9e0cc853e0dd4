"""Fused optimizer updates: one in-place pass over param and its state arrays.

The per-step scalars (bias corrections, step size, ...) are computed once in
Python and passed in; here each is rounded to the array dtype and applied in
the reference's order of operations, so float32 follows NumPy's float32 math.
"""
from cython cimport floating
from cython.parallel cimport prange

from ._scalar cimport PAR_MIN_WORK, fsqrt, nanmax


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] momentum_buffer,
             double lr, double momentum, double one_minus_dampening, double weight_decay,
             bint first_step, bint nesterov, bint maximize, int num_threads):
    """momentum_buffer is only touched when momentum != 0 (it may be None otherwise)."""
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating g
    cdef floating f_lr = <floating>lr, f_mom = <floating>momentum
    cdef floating f_damp = <floating>one_minus_dampening, f_wd = <floating>weight_decay
    cdef bint use_wd = weight_decay != 0, use_momentum = momentum != 0
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        g = -grad[i] if maximize else grad[i]
        if use_wd:
            g = g + f_wd * param[i]
        if use_momentum:
            if first_step:
                momentum_buffer[i] = g
            else:
                momentum_buffer[i] = momentum_buffer[i] * f_mom + f_damp * g
            g = g + f_mom * momentum_buffer[i] if nesterov else momentum_buffer[i]
        param[i] = param[i] - f_lr * g


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, floating[::1] max_exp_avg_sq,
              double one_minus_beta1, double beta2, double one_minus_beta2,
              double bias_correction2_sqrt, double eps, double step_size,
              double weight_decay, double decay_factor, bint decoupled, bint amsgrad,
              bint maximize, int num_threads):
    """Adam / AdamW. With weight decay, decoupled multiplies param by decay_factor
    (1 - lr * weight_decay), else weight_decay * param joins the gradient.
    max_exp_avg_sq is only touched with amsgrad (it may be None otherwise)."""
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating g, v, denom
    cdef floating f_b1c = <floating>one_minus_beta1, f_b2 = <floating>beta2
    cdef floating f_b2c = <floating>one_minus_beta2, f_bc2 = <floating>bias_correction2_sqrt
    cdef floating f_eps = <floating>eps, f_step = <floating>step_size
    cdef floating f_wd = <floating>weight_decay, f_decay = <floating>decay_factor
    cdef bint use_wd = weight_decay != 0
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        g = -grad[i] if maximize else grad[i]
        if use_wd:
            if decoupled:
                param[i] = param[i] * f_decay
            else:
                g = g + f_wd * param[i]
        exp_avg[i] = exp_avg[i] + f_b1c * (g - exp_avg[i])
        v = exp_avg_sq[i] * f_b2 + f_b2c * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = nanmax(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = fsqrt(v) / f_bc2 + f_eps
        param[i] = param[i] - f_step * (exp_avg[i] / denom)
