"""Loss kernels: MSE, L1, Huber and the fused softmax cross-entropy (loss and gradient).

Sums accumulate in double. Cross-entropy never materializes the softmax:
each row's log-sum-exp comes from one blocked online pass over its logits
(the CPU-dispatched vector loops of _kernels.h).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from ._kernels cimport ce_grad_row, ce_row_lse, fm_row_lse
from ._scalar cimport PAR_MIN_WORK, fabs_


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


# ----------------------------------------------------------------------- L1
def l1_none(const floating[::1] input, const floating[::1] target, floating[::1] out,
            int num_threads):
    cdef Py_ssize_t i, n = input.shape[0]
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = fabs_(input[i] - target[i])


def l1_sum(const floating[::1] input, const floating[::1] target, int num_threads):
    cdef Py_ssize_t i, n = input.shape[0]
    cdef double total = 0
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        total += fabs_(input[i] - target[i])
    return total


def l1_grad(const floating[::1] input, const floating[::1] target, double scale,
            floating[::1] out, int num_threads):
    """scale * sign(input - target), 0 where the difference is 0 or NaN (torch's sign)."""
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating s = <floating>scale
    cdef floating d
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        d = input[i] - target[i]
        out[i] = s if d > 0 else (-s if d < 0 else 0)


# -------------------------------------------------------------------- Huber
cdef inline floating huber(floating d, floating delta) noexcept nogil:
    """torch's Huber term, in the input dtype, without a data-dependent branch.

    With m = min(|d|, delta): m * (|d| - m/2) is 0.5*|d|**2 when |d| < delta (|d| - |d|/2
    is exact, so it rounds as torch's 0.5*z*z) and delta*(|d| - delta/2) otherwise; a NaN
    |d| takes the second form, which stays NaN. A select instead of a branch: random
    data mispredicts that branch (the loss was 8x slower than numba's).
    """
    cdef floating z = fabs_(d)
    cdef floating half = 0.5
    cdef floating m = z if z < delta else delta
    return m * (z - half * m)


def huber_none(const floating[::1] input, const floating[::1] target, double delta,
               floating[::1] out, int num_threads):
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating dl = <floating>delta
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = huber(input[i] - target[i], dl)


def huber_sum(const floating[::1] input, const floating[::1] target, double delta,
              int num_threads):
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating dl = <floating>delta
    cdef double total = 0
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        total += huber(input[i] - target[i], dl)
    return total


def huber_grad(const floating[::1] input, const floating[::1] target, double scale,
               double delta, floating[::1] out, int num_threads):
    """scale * (input - target) clipped to [-delta, delta] with torch's branches (NaN stays NaN)."""
    cdef Py_ssize_t i, n = input.shape[0]
    cdef floating s = <floating>scale
    cdef floating dl = <floating>delta
    cdef floating sd = s * dl
    cdef floating d
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        d = input[i] - target[i]
        out[i] = -sd if d <= -dl else (sd if d >= dl else s * d)


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
