"""Loss kernels: MSE, L1, Huber, binary cross-entropy (on probabilities and on logits),
KL divergence, NLL and the fused softmax cross-entropy (loss and gradient).

Sums accumulate in double. Cross-entropy never materializes the softmax:
each row's log-sum-exp comes from one read of its logits (the CPU-dispatched
vector loops of _kernels.h: sweeps over the cached row, or a blocked online
pass for rows over 8192 logits); the gradient scales the exps it kept. BCE, BCE with logits and KL
run the vector loops of _kernels.h too (branch-free exp / log / log1p, no
libm call), one contiguous chunk per thread.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from ._kernels cimport (ce_grad_row, ce_loss_grad_row, ce_row_lse, fastml_bce_f32,
                       fastml_bce_f64, fastml_bce_grad_f32, fastml_bce_grad_f64,
                       fastml_bce_logits_f32, fastml_bce_logits_f64,
                       fastml_bce_logits_grad_f32, fastml_bce_logits_grad_f64,
                       fastml_huber_sum_f32, fastml_huber_sum_f64, fastml_kl_div_f32,
                       fastml_kl_div_f64, fastml_kl_div_grad_f32, fastml_kl_div_grad_f64,
                       fastml_l1_sum_f32, fastml_l1_sum_f64, fastml_mse_sum_f32,
                       fastml_mse_sum_f64, fm_row_lse)
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
    return _pointwise_sum(MSE, input, target, 0, num_threads)


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
    return _pointwise_sum(L1, input, target, 0, num_threads)


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
    return _pointwise_sum(HUBER, input, target, delta, num_threads)


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


cdef inline double _ce_row_loss(const floating* x, floating wt, Py_ssize_t n, Py_ssize_t t,
                                double eps, double sw, fm_row_lse r) noexcept nogil:
    """A row's loss from its log-sum-exp parts: -log p[t] = log_s - (x[t] - m), weighted,
    plus the smoothing term when eps > 0."""
    cdef double loss = (1 - eps) * wt * (r.log_s - (x[t] - r.m))
    if eps > 0:
        loss = loss + eps / n * (sw * r.log_s - (r.wx - sw * r.m))
    return loss


cdef double _sum(const floating[::1] w) noexcept nogil:
    cdef Py_ssize_t i
    cdef double s = 0
    for i in range(w.shape[0]):
        s += w[i]
    return s


def cross_entropy(const floating[:, ::1] x, const int64_t[::1] target, const floating[::1] w,
                  int64_t ignore_index, double eps, floating[::1] out, int num_threads):
    """Per-row losses into out (N,); returns (sum of losses, sum of kept w[target])."""
    cdef Py_ssize_t i, t, rows = x.shape[0], n = x.shape[1]
    cdef double sw = _sum(w), total = 0, wsum = 0, loss
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        loss = _ce_row_loss(&x[i, 0], w[t], n, t, eps, sw, ce_row_lse(&x[i, 0], &w[0], n,
                                                                      eps > 0))
        out[i] = <floating>loss
        total += loss
        wsum += w[t]
    return total, wsum


def cross_entropy_grad(const floating[:, ::1] x, const int64_t[::1] target,
                       const floating[::1] w, int64_t ignore_index, double eps, double coef,
                       floating[:, ::1] out, int num_threads):
    """coef * d(sum of row losses)/dx into out (N, C); coef is 1/sum(w[t]) for 'mean'."""
    cdef Py_ssize_t i, t, rows = x.shape[0], n = x.shape[1]
    cdef double sw = _sum(w)
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            # exactly 0, even when 'mean' divides by a zero weight sum (coef = inf)
            memset(&out[i, 0], 0, n * sizeof(floating))
        else:
            ce_grad_row(&x[i, 0], &w[0], n, t, (1 - eps) * w[t], eps / n, sw, coef,
                        &out[i, 0])


def cross_entropy_and_grad(const floating[:, ::1] x, const int64_t[::1] target,
                           const floating[::1] w, int64_t ignore_index, double eps,
                           double coef, floating[::1] loss_out, floating[:, ::1] grad_out,
                           int num_threads):
    """cross_entropy's per-row losses into loss_out and cross_entropy_grad's rows into
    grad_out, each row's log-sum-exp computed once; returns (sum of losses, sum of kept
    w[target])."""
    cdef Py_ssize_t i, t, rows = x.shape[0], n = x.shape[1]
    cdef double sw = _sum(w), total = 0, wsum = 0, loss
    cdef fm_row_lse r
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows * n >= PAR_MIN_WORK):
        t = target[i]
        if t == ignore_index:
            loss_out[i] = 0
            memset(&grad_out[i, 0], 0, n * sizeof(floating))
            continue
        r = ce_loss_grad_row(&x[i, 0], &w[0], n, t, eps > 0, (1 - eps) * w[t], eps / n, sw,
                             coef, &grad_out[i, 0])
        loss = _ce_row_loss(&x[i, 0], w[t], n, t, eps, sw, r)
        loss_out[i] = <floating>loss
        total += loss
        wsum += w[t]
    return total, wsum


# ------------------------------------------- BCE, BCE with logits, KL divergence
cdef enum Pointwise:
    MSE
    L1
    HUBER
    BCE
    BCE_GRAD
    BCE_LOGITS
    BCE_LOGITS_GRAD
    KL
    KL_GRAD


cdef inline const floating* _at(const floating* p, Py_ssize_t i) noexcept nogil:
    """p + i, or NULL for an absent (optional) array."""
    return p + i if p != NULL else NULL


cdef double _chunk(Pointwise op, const floating* x, const floating* t, const floating* w,
                   const floating* pw, double a, double b, bint flag, floating* out,
                   Py_ssize_t n) noexcept nogil:
    """op's vector loop over one chunk. Losses store into out, or return their sum when out
    is NULL; gradients get their scalars (a = scale, b = BCE's eps) rounded to the dtype.
    MSE, L1 and HUBER (a = delta) only sum."""
    if floating is float:
        if op == MSE:
            return fastml_mse_sum_f32(x, t, n)
        if op == L1:
            return fastml_l1_sum_f32(x, t, n)
        if op == HUBER:
            return fastml_huber_sum_f32(x, t, <float>a, n)
        if op == BCE:
            return fastml_bce_f32(x, t, w, out, n)
        if op == BCE_GRAD:
            fastml_bce_grad_f32(x, t, w, <float>b, <float>a, out, n)
        elif op == BCE_LOGITS:
            return fastml_bce_logits_f32(x, t, w, pw, out, n)
        elif op == BCE_LOGITS_GRAD:
            fastml_bce_logits_grad_f32(x, t, w, pw, <float>a, out, n)
        elif op == KL:
            return fastml_kl_div_f32(x, t, out, n, flag)
        else:
            fastml_kl_div_grad_f32(t, <float>a, out, n, flag)
    else:
        if op == MSE:
            return fastml_mse_sum_f64(x, t, n)
        if op == L1:
            return fastml_l1_sum_f64(x, t, n)
        if op == HUBER:
            return fastml_huber_sum_f64(x, t, a, n)
        if op == BCE:
            return fastml_bce_f64(x, t, w, out, n)
        if op == BCE_GRAD:
            fastml_bce_grad_f64(x, t, w, b, a, out, n)
        elif op == BCE_LOGITS:
            return fastml_bce_logits_f64(x, t, w, pw, out, n)
        elif op == BCE_LOGITS_GRAD:
            fastml_bce_logits_grad_f64(x, t, w, pw, a, out, n)
        elif op == KL:
            return fastml_kl_div_f64(x, t, out, n, flag)
        else:
            fastml_kl_div_grad_f64(t, a, out, n, flag)
    return 0


cdef double _pointwise(Pointwise op, const floating[::1] x, const floating[::1] t,
                       const floating[::1] w, const floating[::1] pw, double a, double b,
                       bint flag, floating[::1] out, int num_threads):
    """op over all of t's length, one contiguous chunk per thread; x, w, pw and out may be
    None. Returns the loss sum when out is None (each chunk's, added in chunk order)."""
    cdef Py_ssize_t c, lo, hi, n = t.shape[0]
    cdef Py_ssize_t chunks = num_threads if n >= PAR_MIN_WORK else 1
    cdef const floating* xp = NULL
    cdef const floating* tp
    cdef const floating* wp = NULL
    cdef const floating* pwp = NULL
    cdef floating* outp = NULL
    cdef double total = 0
    if n == 0:
        return 0
    tp = &t[0]
    if x is not None:
        xp = &x[0]
    if w is not None:
        wp = &w[0]
    if pw is not None:
        pwp = &pw[0]
    if out is not None:
        outp = &out[0]
    for c in prange(chunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=chunks > 1):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        total += _chunk(op, _at(xp, lo), tp + lo, _at(wp, lo), _at(pwp, lo), a, b, flag,
                        outp + lo if outp != NULL else NULL, hi - lo)
    return total


cdef double _pointwise_sum(Pointwise op, const floating[::1] x, const floating[::1] t,
                           double a, int num_threads):
    """The sum of an unweighted two-input loss (MSE, L1, HUBER)."""
    cdef const floating[::1] absent = None
    cdef floating[::1] no_out = None
    return _pointwise(op, x, t, absent, absent, a, 0, False, no_out, num_threads)


# Typed None views: _pointwise's absent arrays (a bare None leaves its fused type open).
def bce_none(const floating[::1] input, const floating[::1] target, const floating[::1] weight,
             floating[::1] out, int num_threads):
    """Per-element binary cross-entropy of probabilities (weight may be None)."""
    cdef const floating[::1] absent = None
    _pointwise(BCE, input, target, weight, absent, 0, 0, False, out, num_threads)


def bce_sum(const floating[::1] input, const floating[::1] target, const floating[::1] weight,
            int num_threads):
    cdef const floating[::1] absent = None
    cdef floating[::1] no_out = None
    return _pointwise(BCE, input, target, weight, absent, 0, 0, False, no_out, num_threads)


def bce_grad(const floating[::1] input, const floating[::1] target, double scale,
             const floating[::1] weight, double eps, floating[::1] out, int num_threads):
    """(x - t) / max((1 - x) * x, eps) * weight * scale."""
    cdef const floating[::1] absent = None
    _pointwise(BCE_GRAD, input, target, weight, absent, scale, eps, False, out, num_threads)


def bce_logits_none(const floating[::1] input, const floating[::1] target,
                    const floating[::1] weight, const floating[::1] pos_weight,
                    floating[::1] out, int num_threads):
    """Per-element BCE of logits (weight and pos_weight may be None)."""
    _pointwise(BCE_LOGITS, input, target, weight, pos_weight, 0, 0, False, out, num_threads)


def bce_logits_sum(const floating[::1] input, const floating[::1] target,
                   const floating[::1] weight, const floating[::1] pos_weight,
                   int num_threads):
    cdef floating[::1] no_out = None
    return _pointwise(BCE_LOGITS, input, target, weight, pos_weight, 0, 0, False, no_out,
                      num_threads)


def bce_logits_grad(const floating[::1] input, const floating[::1] target, double scale,
                    const floating[::1] weight, const floating[::1] pos_weight,
                    floating[::1] out, int num_threads):
    """(sigmoid(x) - t, or with pos_weight (pw*t + 1 - t) * sigmoid(x) - pw*t) * w * scale."""
    _pointwise(BCE_LOGITS_GRAD, input, target, weight, pos_weight, scale, 0, False, out,
               num_threads)


def kl_div_none(const floating[::1] input, const floating[::1] target, bint log_target,
                floating[::1] out, int num_threads):
    cdef const floating[::1] absent = None
    _pointwise(KL, input, target, absent, absent, 0, 0, log_target, out, num_threads)


def kl_div_sum(const floating[::1] input, const floating[::1] target, bint log_target,
               int num_threads):
    cdef const floating[::1] absent = None
    cdef floating[::1] no_out = None
    return _pointwise(KL, input, target, absent, absent, 0, 0, log_target, no_out, num_threads)


def kl_div_grad(const floating[::1] target, double scale, bint log_target, floating[::1] out,
                int num_threads):
    """-scale * target (-scale * exp(target) with log_target); the input is not needed."""
    cdef const floating[::1] absent = None
    _pointwise(KL_GRAD, absent, target, absent, absent, scale, 0, log_target, out, num_threads)


# ----------------------------------------------------------------------- NLL
# A row costs one gathered element (a cache line) and nothing else: threads pay off
# from about this many rows.
cdef enum:
    NLL_PAR_MIN_ROWS = PAR_MIN_WORK // 16


def nll_loss(const floating[:, ::1] x, const int64_t[::1] target, const floating[::1] w,
             int64_t ignore_index, floating[::1] out, int num_threads):
    """-w[t] * x[i, t] per row (0 for ignored rows) into out (N,) unless out is None;
    returns (sum of those losses, sum of the kept rows' w[t])."""
    cdef Py_ssize_t i, t, rows = x.shape[0]
    cdef double total = 0, wsum = 0
    cdef floating loss
    cdef bint store = out is not None
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows >= NLL_PAR_MIN_ROWS):
        t = target[i]
        if t == ignore_index:
            if store:
                out[i] = 0
            continue
        loss = -w[t] * x[i, t]
        if store:
            out[i] = loss
        total += loss
        wsum += w[t]
    return total, wsum


def nll_loss_grad(const int64_t[::1] target, const floating[::1] w, int64_t ignore_index,
                  double coef, floating[:, ::1] out, int num_threads):
    """Into a zeroed out (N, C): -w[t] * coef at each kept row's target (coef rounded to the
    dtype first, as the reference; 1 / sum(w[t]) for 'mean'). The caller passes np.zeros,
    whose pages the OS zeroes lazily: zeroing them here again would write every page twice."""
    cdef Py_ssize_t i, t, rows = out.shape[0]
    cdef floating c = <floating>coef
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows >= NLL_PAR_MIN_ROWS):
        t = target[i]
        if t != ignore_index:
            out[i, t] = -w[t] * c
