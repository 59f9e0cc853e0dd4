"""Loss kernels: MSE and the fused softmax cross-entropy (loss and gradient).

Sums accumulate in double. Cross-entropy never materializes the softmax:
each row's log-sum-exp comes from one online pass over its logits.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, exp, isfinite, log
from libc.stdint cimport int64_t

from ._scalar cimport PAR_MIN_WORK, fexp, row_max


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
cdef struct RowLse:
    double m       # the row max
    double log_s   # log(sum(exp(x - m)))
    double wx      # sum(w * x), when asked for


cdef inline RowLse _row_lse(const floating* x, const floating* w, Py_ssize_t n,
                            bint want_wx) noexcept nogil:
    """Log-sum-exp parts of one row of logits.

    One online pass (the sum is rescaled whenever the running max grows); a
    row where that is not finite (NaN / inf logits) is redone with the exact
    two-pass formula so it comes out as in the reference.
    """
    cdef RowLse r
    cdef floating m = -INFINITY, v
    cdef double s = 0, wx = 0
    cdef Py_ssize_t j
    for j in range(n):
        v = x[j]
        if v > m:
            s = s * fexp(m - v) + 1
            m = v
        else:
            s += fexp(v - m)
        if want_wx:
            wx += <double>w[j] * v
    if not (isfinite(m) and isfinite(s)):
        m = row_max(x, n)
        s = 0
        for j in range(n):
            s += fexp(x[j] - m)
    r.m, r.log_s, r.wx = m, log(s), wx
    return r


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
    cdef RowLse r
    cdef bint smooth = eps > 0
    for i in range(n):
        sw += w[i]
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        r = _row_lse(&x[i, 0], &w[0], n, smooth)
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
    cdef Py_ssize_t i, j, t, rows = x.shape[0], n = x.shape[1]
    cdef double sw = 0, a, p, g
    cdef double b = eps / n
    cdef RowLse r
    cdef bint smooth = eps > 0
    for i in range(n):
        sw += w[i]
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            # exactly 0, even when 'mean' divides by a zero weight sum (coef = inf)
            for j in range(n):
                out[i, j] = 0
            continue
        r = _row_lse(&x[i, 0], &w[0], n, False)
        a = (1 - eps) * w[t]
        for j in range(n):
            p = fexp(<floating>((x[i, j] - r.m) - r.log_s))
            g = a * (p - (j == t))
            if smooth:
                g = g + b * (sw * p - w[j])
            out[i, j] = <floating>(g * coef)
