"""Loss kernels: MSE and the fused softmax cross-entropy (loss and gradient).

Sums accumulate in double. Cross-entropy never materializes the softmax:
each row's log-sum-exp comes from one blocked online pass over its logits
(the CPU-dispatched vector loops of _kernels.h).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from ._kernels cimport ce_grad_row, ce_row_lse, fm_row_lse
from ._scalar cimport PAR_MIN_WORK


# ---------------------------------------------------------------------- MSE
def mse_none(const floating[::1] input, const floating[::1] target, floating[::1] out,
             int num_threads):
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating d
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        d = input[i] - target[i]
        out[i] = d * d


def mse_sum(const floating[::1] input, const floating[::1] target, int num_threads):
    """Sum of (input - target)**2, each square rounded to the input dtype as the reference."""
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating d, sq
    cdef double total = 0
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        d = input[i] - target[i]
        sq = d * d
        total += sq
    return total


def mse_grad(const floating[::1] input, const floating[::1] target, double scale,
             floating[::1] out, int num_threads):
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating s = <floating>scale
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = (input[i] - target[i]) * s


# ------------------------------------------------------------ cross-entropy
def target_weight_sum(const int64_t[::1] target, const floating[::1] w, int64_t ignore_index):
    """sum(w[t]) over the rows not ignored: the divisor of reduction='mean'."""
    cdef Py_ssize_t i
    cdef double total = 0
    with nogil:
        for i in range(target.shape[0]):
            if target[i] != ignore_index:
                total += w[target[i]]
    return total


def cross_entropy(const floating[:, ::1] x, const int64_t[::1] target, const floating[::1] w,
                  int64_t ignore_index, double eps, floating[::1] out, int num_threads):
    """Per-row losses into out (N,); returns (sum of losses, sum of kept w[target])."""
    cdef Py_ssize_t i, t, rows = x.shape[0], n = x.shape[1]
    cdef double sw = 0, total = 0, wsum = 0, loss
    cdef fm_row_lse r
    cdef bint smooth = eps > 0
    for i in range(n):
        sw += w[i]
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        r = ce_row_lse(&x[i, 0], &w[0], n, smooth)
        # -log p[c] = log_s - (x[c] - m)
        loss = (1 - eps) * w[t] * (r.log_s - (x[i, t] - r.m))
        if smooth:
            loss = loss + eps / n * (sw * r.log_s - (r.wx - sw * r.m))
        out[i] = <floating>loss
        total += loss
        wsum += w[t]
    return total, wsum


def cross_entropy_grad(const floating[:, ::1] x, const int64_t[::1] target,
                       const floating[::1] w, int64_t ignore_index, double eps, double coef,
                       floating[:, ::1] out, int num_threads):
    """coef * d(sum of row losses)/dx into out (N, C); coef is 1/sum(w[t]) for 'mean'."""
    cdef Py_ssize_t i, t, rows = x.shape[0], n = x.shape[1]
    cdef double sw = 0
    for i in range(n):
        sw += w[i]
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            # exactly 0, even when 'mean' divides by a zero weight sum (coef = inf)
            memset(&out[i, 0], 0, n * sizeof(floating))
        else:
            ce_grad_row(&x[i, 0], &w[0], n, t, (1 - eps) * w[t], eps / n, sw, coef,
                        &out[i, 0])
