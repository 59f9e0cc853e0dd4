"""Layer kernels: conv2d's im2col / col2im, max / average pooling, batch and layer
normalization, dropout and embedding, with their backward passes.

Images are (N, C, H, W) C-contiguous, so every kernel over images works plane by plane
((n, c) pairs, split over threads): no two threads ever write the same element. Window
loops compute the range of output positions whose input index is in bounds once per
row instead of testing every element. Sums (pooling, normalization statistics, the
embedding gradient) accumulate in double and round once, in the reference's order
wherever the reference's order is observable (the scatter-adds of col2im, the pooling
gradients and embedding_backward are bit-identical to it).

No FMA contraction (pragma below): the affine maps of the normalizations round as the
reference's separate multiply and add.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, isfinite, sqrt
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._scalar cimport PAR_MIN_WORK

cdef extern from *:
    """
    #if defined(__clang__)
    #pragma STDC FP_CONTRACT OFF
    #elif defined(__GNUC__)
    #pragma GCC optimize("fp-contract=off")
    #endif
    #include <stdint.h>

    /* splitmix64 of the element's counter: reference.dropout_keep, modulo 2**64. */
    static inline int fm_dropout_keep(uint64_t seed, uint64_t i, uint64_t threshold) {
        uint64_t z = seed + (i + 1) * UINT64_C(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        z ^= z >> 31;
        return (z >> 11) >= threshold;
    }
    """
    int fm_dropout_keep(uint64_t seed, uint64_t i, uint64_t threshold) noexcept nogil


# ---------------------------------------------------------------------- geometry
cdef inline void _out_range(Py_ssize_t off, Py_ssize_t s, Py_ssize_t L, Py_ssize_t O,
                            Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs o in [0, O) whose input index o s + off lies in [0, L)."""
    cdef Py_ssize_t a = 0, b = 0
    if off < 0:
        a = (s - 1 - off) // s
    if L - 1 - off >= 0:
        b = (L - 1 - off) // s + 1
    if b > O:
        b = O
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


cdef inline Py_ssize_t _conv_out(Py_ssize_t size, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p,
                                 Py_ssize_t d) noexcept nogil:
    """reference.conv_output_size along one axis (floor mode; never below 0)."""
    cdef Py_ssize_t span = size + 2 * p - d * (k - 1) - 1
    if span < 0:
        return 0
    return span // s + 1


# ------------------------------------------------------------------ im2col / col2im
cdef void _im2col_plane(const floating* x, floating* cols, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t rs) noexcept nogil:
    """The kh kw column rows of one (H, W) plane, each Ho Wo long and rs apart, every
    element written."""
    cdef Py_ssize_t L = Ho * Wo, i, j, oh, ow, oh0, oh1, ow0, ow1, roff, coff
    cdef floating* dst
    cdef floating* d
    cdef const floating* src
    for i in range(kh):
        roff = i * dh - ph
        _out_range(roff, sh, H, Ho, &oh0, &oh1)
        for j in range(kw):
            coff = j * dw - pw
            _out_range(coff, sw, W, Wo, &ow0, &ow1)
            dst = cols + (i * kw + j) * rs
            if oh0 > 0:
                memset(dst, 0, oh0 * Wo * sizeof(floating))
            for oh in range(oh0, oh1):
                d = dst + oh * Wo
                src = x + (oh * sh + roff) * W + (ow0 * sw + coff)
                for ow in range(ow0):
                    d[ow] = 0
                if sw == 1:
                    memcpy(d + ow0, src, (ow1 - ow0) * sizeof(floating))
                else:
                    for ow in range(ow1 - ow0):
                        d[ow0 + ow] = src[ow * sw]
                for ow in range(ow1, Wo):
                    d[ow] = 0
            if oh1 < Ho:
                memset(dst + oh1 * Wo, 0, (Ho - oh1) * Wo * sizeof(floating))


def im2col(const floating[:, :, :, ::1] x, floating[:, :, ::1] cols, tuple geometry,
           int num_threads):
    """cols[(c kh + i) kw + j, n, oh Wo + ow] = xpad[n, c, oh sh + i dh, ow sw + j dw]
    (0 in the padding); every element of cols (C kh kw, N, Ho Wo) is written."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = _conv_out(H, kh, sh, ph, dh), Wo = _conv_out(W, kw, sw, pw, dw)
    cdef Py_ssize_t K = cols.shape[0], L = cols.shape[2], P = N * C, p, n, c
    if Ho * Wo != L or C * kh * kw != K or cols.shape[1] != N:
        raise ValueError("im2col: columns of the wrong shape")
    if P == 0 or L == 0:
        return
    cdef floating* cp = &cols[0, 0, 0]
    cdef const floating* xp
    if H == 0 or W == 0:  # all padding
        memset(cp, 0, N * K * L * sizeof(floating))
        return
    xp = &x[0, 0, 0, 0]
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * kh * kw * L >= PAR_MIN_WORK):
        n = p // C
        c = p - n * C
        _im2col_plane(xp + p * H * W, cp + (c * kh * kw * N + n) * L, H, W, Ho, Wo,
                      kh, kw, sh, sw, ph, pw, dh, dw, N * L)


cdef void _col2im_plane(const floating* cols, floating* g, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t rs) noexcept nogil:
    """g (H, W) = the sum of the plane's kh kw column rows (rs apart) scattered back,
    added (as the reference's col2im) for i, then j, in order."""
    cdef Py_ssize_t L = Ho * Wo, i, j, oh, t, cnt, oh0, oh1, ow0, ow1, roff, coff
    cdef const floating* src
    cdef floating* d
    memset(g, 0, H * W * sizeof(floating))
    for i in range(kh):
        roff = i * dh - ph
        _out_range(roff, sh, H, Ho, &oh0, &oh1)
        for j in range(kw):
            coff = j * dw - pw
            _out_range(coff, sw, W, Wo, &ow0, &ow1)
            cnt = ow1 - ow0
            if cnt <= 0:
                continue
            for oh in range(oh0, oh1):
                src = cols + (i * kw + j) * rs + oh * Wo + ow0
                d = g + (oh * sh + roff) * W + (ow0 * sw + coff)
                if sw == 1:
                    for t in range(cnt):
                        d[t] += src[t]
                else:
                    for t in range(cnt):
                        d[t * sw] += src[t]


def col2im(const floating[:, :, ::1] cols, floating[:, :, :, ::1] grad_x, tuple geometry,
           int num_threads):
    """The transpose of im2col: grad_x (N, C, H, W) is overwritten with the sum of the
    column entries mapping to each pixel (padding entries dropped), in cols' dtype."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[1]
    cdef Py_ssize_t H = grad_x.shape[2], W = grad_x.shape[3]
    cdef Py_ssize_t Ho = _conv_out(H, kh, sh, ph, dh), Wo = _conv_out(W, kw, sw, pw, dw)
    cdef Py_ssize_t K = cols.shape[0], L = cols.shape[2], P = N * C, p, n, c
    if Ho * Wo != L or C * kh * kw != K or cols.shape[1] != N:
        raise ValueError("col2im: columns of the wrong shape")
    if P == 0 or H == 0 or W == 0:
        return
    cdef floating* gp = &grad_x[0, 0, 0, 0]
    cdef const floating* cp = NULL
    if L == 0:
        memset(gp, 0, P * H * W * sizeof(floating))
        return
    cp = &cols[0, 0, 0]
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * kh * kw * L >= PAR_MIN_WORK):
        n = p // C
        c = p - n * C
        _col2im_plane(cp + (c * kh * kw * N + n) * L, gp + p * H * W, H, W, Ho, Wo,
                      kh, kw, sh, sw, ph, pw, dh, dw, N * L)


# ---------------------------------------------------------------------- pooling
cdef inline void _clip(Py_ssize_t o, Py_ssize_t s, Py_ssize_t p, Py_ssize_t k, Py_ssize_t L,
                       Py_ssize_t* a, Py_ssize_t* b) noexcept nogil:
    """The window o s - p + [0, k) clipped to [0, L)."""
    cdef Py_ssize_t lo = o * s - p, hi = o * s - p + k
    a[0] = lo if lo > 0 else 0
    b[0] = hi if hi < L else L


cdef void _max_pool_plane(const floating* x, floating* out, Py_ssize_t* ix, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh,
                          Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                          Py_ssize_t pw) noexcept nogil:
    """out (Ho, Wo) = each window's maximum by torch's scan, and with ix, each row's argmax
    (flat h W + w) into ix (Ho Wo). A whole output row is scanned at once: for each
    window row r, then each column offset j (so every window still sees its elements
    row-major), a branch-free select over the outputs whose column is in bounds."""
    cdef Py_ssize_t oh, ow, r, j, r0, r1, c0, c1, ow0, ow1, off, k
    cdef floating* best
    cdef Py_ssize_t* bi
    cdef const floating* row
    cdef floating v, bv
    cdef bint take
    for oh in range(Ho):
        _clip(oh, sh, ph, kh, H, &r0, &r1)
        best = out + oh * Wo
        for ow in range(Wo):
            best[ow] = -INFINITY
        if ix != NULL:
            bi = ix + oh * Wo
            for ow in range(Wo):
                _clip(ow, sw, pw, kw, W, &c0, &c1)
                bi[ow] = r0 * W + c0
        for r in range(r0, r1):
            row = x + r * W
            for j in range(kw):
                off = j - pw
                _out_range(off, sw, W, Wo, &ow0, &ow1)
                if ix == NULL:
                    for ow in range(ow0, ow1):
                        v = row[ow * sw + off]
                        bv = best[ow]
                        take = (v > bv) | (v != v)
                        best[ow] = v if take else bv
                else:
                    for ow in range(ow0, ow1):
                        k = ow * sw + off
                        v = row[k]
                        bv = best[ow]
                        take = (v > bv) | (v != v)
                        best[ow] = v if take else bv
                        bi[ow] = r * W + k if take else bi[ow]


def max_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, tuple kernel,
               tuple stride, tuple padding, int num_threads):
    """out = each (clipped) window's maximum by torch's scan (the last NaN wins)."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = out.shape[2], Wo = out.shape[3], P = N * C, p
    cdef const floating* xp
    cdef floating* op
    if P == 0 or Ho == 0 or Wo == 0:
        return
    if H == 0 or W == 0:
        raise ValueError("max_pool2d: empty windows")
    xp = &x[0, 0, 0, 0]
    op = &out[0, 0, 0, 0]
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * Ho * Wo * kh * kw >= PAR_MIN_WORK):
        _max_pool_plane(xp + p * H * W, op + p * Ho * Wo, NULL, H, W, Ho, Wo, kh, kw, sh, sw,
                        ph, pw)


cdef void _max_pool_grad_plane(const floating* x, const floating* g, double* acc,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                               Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                               Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """acc (H W, then Ho Wo maxima and Ho Wo indices as scratch) = the plane's grad_out
    added at each window's argmax, in window order (np.add.at's)."""
    cdef Py_ssize_t q, L = Ho * Wo
    cdef floating* best = <floating*>(acc + H * W)
    cdef Py_ssize_t* ix = <Py_ssize_t*>(acc + H * W + L)
    _max_pool_plane(x, best, ix, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw)
    memset(acc, 0, H * W * sizeof(double))
    for q in range(L):
        if 0 <= ix[q] < H * W:  # always (a window holds at least one element)
            acc[ix[q]] += g[q]


def max_pool2d_backward(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                        floating[:, :, :, ::1] out, tuple kernel, tuple stride, tuple padding,
                        int num_threads):
    """out = each window's grad_out added (in double, in window order) at its argmax."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = grad_out.shape[2], Wo = grad_out.shape[3], P = N * C, HW = H * W
    cdef Py_ssize_t p, q
    cdef const floating* xp
    cdef const floating* gp = NULL
    cdef floating* op
    cdef double* acc = NULL
    cdef int failed = 0
    if P == 0 or HW == 0:
        return
    xp = &x[0, 0, 0, 0]
    op = &out[0, 0, 0, 0]
    if Ho * Wo:
        gp = &grad_out[0, 0, 0, 0]
    with nogil, parallel(num_threads=num_threads,
                         use_threads_if=P > 1 and P * (HW + Ho * Wo * kh * kw) >= PAR_MIN_WORK):
        acc = <double*>malloc((HW + 2 * Ho * Wo) * sizeof(double))
        for p in prange(P, schedule="static"):
            if acc == NULL:
                failed += 1
            else:
                _max_pool_grad_plane(xp + p * HW, gp + p * Ho * Wo, acc, H, W, Ho, Wo,
                                     kh, kw, sh, sw, ph, pw)
                for q in range(HW):
                    op[p * HW + q] = <floating>acc[q]
        free(acc)
    if failed:
        raise MemoryError()


cdef void _avg_pool_plane(const floating* x, floating* out, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                          Py_ssize_t pw) noexcept nogil:
    cdef Py_ssize_t oh, ow, r, c, r0, r1, c0, c1
    cdef double div = <double>(kh * kw), s
    cdef const floating* row
    for oh in range(Ho):
        _clip(oh, sh, ph, kh, H, &r0, &r1)
        for ow in range(Wo):
            _clip(ow, sw, pw, kw, W, &c0, &c1)
            s = 0.0
            for r in range(r0, r1):
                row = x + r * W
                for c in range(c0, c1):
                    s += row[c]
            out[oh * Wo + ow] = <floating>(s / div)


def avg_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out, tuple kernel,
               tuple stride, tuple padding, int num_threads):
    """Window sums (padding counted as zeros) in double over kh kw, rounded once."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = out.shape[2], Wo = out.shape[3], P = N * C, p
    cdef const floating* xp = NULL
    cdef floating* op
    if P == 0 or Ho == 0 or Wo == 0:
        return
    if H and W:
        xp = &x[0, 0, 0, 0]
    op = &out[0, 0, 0, 0]
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * Ho * Wo * kh * kw >= PAR_MIN_WORK):
        _avg_pool_plane(xp + p * H * W if xp != NULL else xp, op + p * Ho * Wo, H, W, Ho, Wo,
                        kh, kw, sh, sw, ph, pw)


cdef void _avg_pool_grad_plane(const floating* g, double* acc, Py_ssize_t H, Py_ssize_t W,
                               Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                               Py_ssize_t pw) noexcept nogil:
    """acc (H W + Ho Wo scratch) = the plane's g / (kh kw) scattered for each (i, j)."""
    cdef Py_ssize_t HW = H * W, L = Ho * Wo, q, i, j, oh, t, cnt, oh0, oh1, ow0, ow1
    cdef Py_ssize_t roff, coff
    cdef double div = <double>(kh * kw)
    cdef double* gd = acc + HW
    cdef double* d
    cdef const double* src
    for q in range(L):
        gd[q] = g[q] / div
    memset(acc, 0, HW * sizeof(double))
    for i in range(kh):
        roff = i - ph
        _out_range(roff, sh, H, Ho, &oh0, &oh1)
        for j in range(kw):
            coff = j - pw
            _out_range(coff, sw, W, Wo, &ow0, &ow1)
            cnt = ow1 - ow0
            if cnt <= 0:
                continue
            for oh in range(oh0, oh1):
                src = gd + oh * Wo + ow0
                d = acc + (oh * sh + roff) * W + (ow0 * sw + coff)
                for t in range(cnt):
                    d[t * sw] += src[t]


def avg_pool2d_backward(const floating[:, :, :, ::1] grad_out, floating[:, :, :, ::1] out,
                        tuple kernel, tuple stride, tuple padding, int num_threads):
    """grad_out / (kh kw) scattered over each window in double, added for each window
    offset (i, j) in order as the reference's col2im, rounded once."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1], H = out.shape[2], W = out.shape[3]
    cdef Py_ssize_t Ho = grad_out.shape[2], Wo = grad_out.shape[3], P = N * C
    cdef Py_ssize_t HW = H * W, L = Ho * Wo, p, q
    cdef const floating* gp = NULL
    cdef floating* op
    cdef double* acc = NULL
    cdef int failed = 0
    if P == 0 or HW == 0:
        return
    op = &out[0, 0, 0, 0]
    if L == 0:
        memset(op, 0, P * HW * sizeof(floating))
        return
    gp = &grad_out[0, 0, 0, 0]
    with nogil, parallel(num_threads=num_threads,
                         use_threads_if=P > 1 and P * (HW + L * kh * kw) >= PAR_MIN_WORK):
        acc = <double*>malloc((HW + L) * sizeof(double))
        for p in prange(P, schedule="static"):
            if acc == NULL:
                failed += 1
            else:
                _avg_pool_grad_plane(gp + p * L, acc, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw)
                for q in range(HW):
                    op[p * HW + q] = <floating>acc[q]
        free(acc)
    if failed:
        raise MemoryError()


# ------------------------------------------------------------------ normalization
cdef double _pairwise(const floating* a, Py_ssize_t n) noexcept nogil:
    """NumPy's pairwise summation of a[:n] in double (bit for bit np.sum of a float64
    row): the reference's means come out identical, so x - mean is exactly 0 exactly
    where the reference's is (inf * 0 = NaN, inf * tiny = inf)."""
    cdef double r0, r1, r2, r3, r4, r5, r6, r7, res
    cdef Py_ssize_t i, n2
    if n < 8:
        res = 0.0
        for i in range(n):
            res = res + a[i]
        return res
    if n <= 128:
        r0 = a[0]
        r1 = a[1]
        r2 = a[2]
        r3 = a[3]
        r4 = a[4]
        r5 = a[5]
        r6 = a[6]
        r7 = a[7]
        i = 8
        while i < n - n % 8:
            r0 = r0 + a[i]
            r1 = r1 + a[i + 1]
            r2 = r2 + a[i + 2]
            r3 = r3 + a[i + 3]
            r4 = r4 + a[i + 4]
            r5 = r5 + a[i + 5]
            r6 = r6 + a[i + 6]
            r7 = r7 + a[i + 7]
            i = i + 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res = res + a[i]
            i = i + 1
        return res
    n2 = n // 2
    n2 = n2 - n2 % 8
    return _pairwise(a, n2) + _pairwise(a + n2, n - n2)


# ------------------------------------------------------------------ batch_norm
cdef inline double _shift(floating v) noexcept nogil:
    """The shift of a channel's shifted sums: its first value when finite, else 0 (so
    an inf or NaN sums as in a plain sum)."""
    return <double>v if isfinite(v) else 0.0


def batch_norm_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                     int num_threads):
    """Per-channel mean and biased variance of x (N, C, L) in double, one pass over the
    data: sums of x - s and (x - s)**2 with s the channel's first value, four partial
    sums each."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, l
    cdef double m = <double>(N * L), s, v0, v1, a0, a1, q0, q1, sx, sxx, mu
    cdef const floating* xp
    cdef const floating* seg
    if C == 0:
        return
    if N * L == 0:
        for c in range(C):
            mean[c] = var[c] = np.nan
        return
    xp = &x[0, 0, 0]
    for c in prange(C, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=C > 1 and N * C * L >= PAR_MIN_WORK):
        s = _shift(xp[c * L])
        a0 = 0
        a1 = 0
        q0 = 0
        q1 = 0
        mu = 0
        for n in range(N):
            seg = xp + (n * C + c) * L
            if C > 1:  # NumPy's order for mean(axis=(0, 2)): pairwise per segment
                mu = mu + _pairwise(seg, L)
            l = 0
            while l + 2 <= L:
                v0 = seg[l] - s
                v1 = seg[l + 1] - s
                a0 = a0 + v0
                a1 = a1 + v1
                q0 = q0 + v0 * v0
                q1 = q1 + v1 * v1
                l = l + 2
            if l < L:
                v0 = seg[l] - s
                a0 = a0 + v0
                q0 = q0 + v0 * v0
        sx = a0 + a1
        sxx = q0 + q1
        if C == 1:  # NumPy coalesces (N, 1, L) into one pairwise sum
            mu = _pairwise(xp, N * L)
        mean[c] = mu / m
        v0 = (sxx - sx * (sx / m)) / m
        var[c] = 0.0 if v0 < 0 else v0


def batch_norm_apply(const floating[:, :, ::1] x, const double[::1] scale,
                     const double[::1] shift, floating[:, :, ::1] out, int num_threads):
    """out = x * scale[c] + shift[c] in double, rounded once."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], P = N * C, p, l, c
    cdef double a, b
    cdef const floating* xs
    cdef floating* os
    if P == 0 or L == 0:
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * L >= PAR_MIN_WORK):
        c = p % C
        a = scale[c]
        b = shift[c]
        xs = &x[0, 0, 0] + p * L
        os = &out[0, 0, 0] + p * L
        for l in range(L):
            os[l] = <floating>(xs[l] * a + b)


def batch_norm_backward_stats(const floating[:, :, ::1] grad_out,
                              const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                              double[::1] sum_g, double[::1] sum_gxc, int num_threads):
    """Per channel: mean, biased variance, sum(g) and sum(g (x - mean)), one pass (shifted
    sums). A channel whose sums are not finite gets sum(g (x - mean)) from a second
    pass, so inf and NaN give the reference's products."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, l
    cdef double m = <double>(N * L), s, v0, v1, g0, g1
    cdef double a0, a1, q0, q1, b0, b1, e0, e1, sx, sxx, sg, sgx, mu
    cdef const floating* xp
    cdef const floating* gp
    cdef const floating* xs
    cdef const floating* gs
    if C == 0:
        return
    if N * L == 0:
        for c in range(C):
            mean[c] = var[c] = np.nan
            sum_g[c] = sum_gxc[c] = 0.0
        return
    xp = &x[0, 0, 0]
    gp = &grad_out[0, 0, 0]
    for c in prange(C, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=C > 1 and N * C * L >= PAR_MIN_WORK):
        s = _shift(xp[c * L])
        a0 = 0
        a1 = 0
        q0 = 0
        q1 = 0
        b0 = 0
        b1 = 0
        e0 = 0
        e1 = 0
        mu = 0
        for n in range(N):
            xs = xp + (n * C + c) * L
            gs = gp + (n * C + c) * L
            if C > 1:
                mu = mu + _pairwise(xs, L)
            l = 0
            while l + 2 <= L:
                v0 = xs[l] - s
                v1 = xs[l + 1] - s
                g0 = gs[l]
                g1 = gs[l + 1]
                a0 = a0 + v0
                a1 = a1 + v1
                q0 = q0 + v0 * v0
                q1 = q1 + v1 * v1
                b0 = b0 + g0
                b1 = b1 + g1
                e0 = e0 + g0 * v0
                e1 = e1 + g1 * v1
                l = l + 2
            if l < L:
                v0 = xs[l] - s
                g0 = gs[l]
                a0 = a0 + v0
                q0 = q0 + v0 * v0
                b0 = b0 + g0
                e0 = e0 + g0 * v0
        sx = a0 + a1
        sxx = q0 + q1
        sg = b0 + b1
        sgx = e0 + e1
        if C == 1:
            mu = _pairwise(xp, N * L)
        mu = mu / m
        mean[c] = mu
        v0 = (sxx - sx * (sx / m)) / m
        var[c] = 0.0 if v0 < 0 else v0
        sum_g[c] = sg
        if isfinite(sx) and isfinite(sxx) and isfinite(sg) and isfinite(sgx):
            sum_gxc[c] = sgx - (sx / m) * sg
        else:
            e0 = 0
            for n in range(N):
                xs = xp + (n * C + c) * L
                gs = gp + (n * C + c) * L
                for l in range(L):
                    e0 = e0 + gs[l] * (xs[l] - mu)
            sum_gxc[c] = e0


def batch_norm_backward_apply(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                              const double[::1] mean, const double[::1] invstd,
                              const double[::1] k, const double[::1] a, const double[::1] b,
                              floating[:, :, ::1] out, int num_threads):
    """out = k[c] ((g - a[c]) - (x - mean[c]) invstd[c] b[c]) in double, rounded once."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], P = N * C, p, l, c
    cdef double mu, inv, kk, aa, bb
    cdef const floating* xs
    cdef const floating* gs
    cdef floating* os
    if P == 0 or L == 0:
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * L >= PAR_MIN_WORK):
        c = p % C
        mu = mean[c]
        inv = invstd[c]
        kk = k[c]
        aa = a[c]
        bb = b[c]
        xs = &x[0, 0, 0] + p * L
        gs = &grad_out[0, 0, 0] + p * L
        os = &out[0, 0, 0] + p * L
        for l in range(L):
            os[l] = <floating>(kk * ((gs[l] - aa) - ((xs[l] - mu) * inv) * bb))


# ------------------------------------------------------------------ layer_norm
cdef inline void _row_moments(const floating* x, Py_ssize_t n, double* mean,
                              double* var) noexcept nogil:
    """Mean (NumPy's pairwise sum / n, as the reference) and biased variance of a row
    (two passes; the second reads it from cache)."""
    cdef Py_ssize_t j = 0
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, mu, d0, d1, d2, d3
    mu = _pairwise(x, n) / n
    while j + 4 <= n:
        d0 = x[j] - mu
        d1 = x[j + 1] - mu
        d2 = x[j + 2] - mu
        d3 = x[j + 3] - mu
        s0 = s0 + d0 * d0
        s1 = s1 + d1 * d1
        s2 = s2 + d2 * d2
        s3 = s3 + d3 * d3
        j = j + 4
    while j < n:
        d0 = x[j] - mu
        s0 = s0 + d0 * d0
        j = j + 1
    mean[0] = mu
    var[0] = ((s0 + s1) + (s2 + s3)) / n


cdef void _ln_row(const floating* xr, const floating* w, const floating* b, double eps,
                  floating* orow, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef double mu, var, inv
    _row_moments(xr, n, &mu, &var)
    inv = 1.0 / sqrt(var + eps)
    if w != NULL and b != NULL:
        for j in range(n):
            orow[j] = <floating>(((xr[j] - mu) * inv) * w[j] + b[j])
    elif w != NULL:
        for j in range(n):
            orow[j] = <floating>(((xr[j] - mu) * inv) * w[j])
    elif b != NULL:
        for j in range(n):
            orow[j] = <floating>(((xr[j] - mu) * inv) + b[j])
    else:
        for j in range(n):
            orow[j] = <floating>((xr[j] - mu) * inv)


def layer_norm(const floating[:, ::1] x, const floating[::1] weight, const floating[::1] bias,
               double eps, floating[:, ::1] out, int num_threads):
    """Per row: (x - mean) / sqrt(var + eps) * weight + bias in double, rounded once."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], i, j
    cdef const floating* w = NULL
    cdef const floating* b = NULL
    cdef const floating* xr
    cdef floating* orow
    cdef double mu, var, inv, y
    if rows == 0 or n == 0:
        return
    if weight is not None:
        w = &weight[0]
    if bias is not None:
        b = &bias[0]
    for i in prange(rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=rows > 1 and rows * n >= PAR_MIN_WORK):
        _ln_row(&x[0, 0] + i * n, w, b, eps, &out[0, 0] + i * n, n)


cdef void _ln_backward_rows(const floating* g, const floating* x, const floating* w,
                            double eps, floating* gx, Py_ssize_t lo, Py_ssize_t hi,
                            Py_ssize_t n, double* colw, double* colb) noexcept nogil:
    """layer_norm_backward of rows [lo, hi); with w, adds sum(g xhat) and sum(g) of
    each column to colw / colb."""
    cdef Py_ssize_t i, j
    cdef double mu, var, inv, xh, gw, s0, s1, t0, t1, mg, mgx
    cdef const floating* xr
    cdef const floating* gr
    cdef floating* orow
    for i in range(lo, hi):
        xr = x + i * n
        gr = g + i * n
        orow = gx + i * n
        _row_moments(xr, n, &mu, &var)
        inv = 1.0 / sqrt(var + eps)
        s0 = s1 = t0 = t1 = 0
        if w != NULL:
            j = 0
            while j + 2 <= n:
                xh = (xr[j] - mu) * inv
                gw = <double>gr[j] * w[j]
                colw[j] += gr[j] * xh
                colb[j] += gr[j]
                s0 = s0 + gw
                t0 = t0 + gw * xh
                xh = (xr[j + 1] - mu) * inv
                gw = <double>gr[j + 1] * w[j + 1]
                colw[j + 1] += gr[j + 1] * xh
                colb[j + 1] += gr[j + 1]
                s1 = s1 + gw
                t1 = t1 + gw * xh
                j = j + 2
            if j < n:
                xh = (xr[j] - mu) * inv
                gw = <double>gr[j] * w[j]
                colw[j] += gr[j] * xh
                colb[j] += gr[j]
                s0 = s0 + gw
                t0 = t0 + gw * xh
            mg = (s0 + s1) / n
            mgx = (t0 + t1) / n
            for j in range(n):
                orow[j] = <floating>(inv * ((<double>gr[j] * w[j] - mg)
                                            - ((xr[j] - mu) * inv) * mgx))
        else:
            j = 0
            while j + 2 <= n:
                xh = (xr[j] - mu) * inv
                s0 = s0 + gr[j]
                t0 = t0 + gr[j] * xh
                xh = (xr[j + 1] - mu) * inv
                s1 = s1 + gr[j + 1]
                t1 = t1 + gr[j + 1] * xh
                j = j + 2
            if j < n:
                xh = (xr[j] - mu) * inv
                s0 = s0 + gr[j]
                t0 = t0 + gr[j] * xh
            mg = (s0 + s1) / n
            mgx = (t0 + t1) / n
            for j in range(n):
                orow[j] = <floating>(inv * ((gr[j] - mg) - ((xr[j] - mu) * inv) * mgx))


def layer_norm_backward(const floating[:, ::1] grad_out, const floating[:, ::1] x,
                        const floating[::1] weight, double eps, floating[:, ::1] grad_x,
                        floating[::1] grad_weight, floating[::1] grad_bias, int num_threads):
    """grad_x per row; with weight, grad_weight / grad_bias = column sums of g xhat and g,
    from per-chunk double partials (contiguous row ranges) added in chunk order."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], nchunks = 1, c, j
    cdef const floating* w = NULL
    cdef double[:, :, ::1] part
    cdef double* pp = NULL
    cdef double sw, sb
    if n == 0:
        return
    if weight is not None:
        w = &weight[0]
    if rows * n >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, rows))
    if w != NULL:
        part_arr = np.zeros((nchunks, 2, n))
    else:
        part_arr = np.zeros((1, 2, 1))  # unused
    part = part_arr
    pp = &part[0, 0, 0]
    if rows:
        for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                        use_threads_if=nchunks > 1):
            _ln_backward_rows(&grad_out[0, 0], &x[0, 0], w, eps, &grad_x[0, 0],
                              c * rows // nchunks, (c + 1) * rows // nchunks, n,
                              pp + c * 2 * n, pp + c * 2 * n + n)
    if w != NULL:
        with nogil:
            for j in range(n):
                sw = 0
                sb = 0
                for c in range(nchunks):
                    sw = sw + part[c, 0, j]
                    sb = sb + part[c, 1, j]
                grad_weight[j] = <floating>sw
                grad_bias[j] = <floating>sb


# ----------------------------------------------------------------------- dropout
def dropout(const floating[::1] x, uint64_t seed, uint64_t threshold, floating scale,
            floating[::1] out, uint8_t[::1] mask, int num_threads):
    """mask[i] = reference.dropout_keep(seed, i); out = x * (scale if kept else 0)."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef int keep
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        keep = fm_dropout_keep(seed, <uint64_t>i, threshold)
        mask[i] = <uint8_t>keep
        out[i] = x[i] * (scale * <floating>keep)  # scale or exactly 0, branch-free


def dropout_backward(const floating[::1] grad_out, const uint8_t[::1] mask, floating scale,
                     floating[::1] out, int num_threads):
    """out = grad_out * (scale if mask else 0)."""
    cdef Py_ssize_t n = grad_out.shape[0], i
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        out[i] = grad_out[i] * (scale * <floating>(mask[i] != 0))  # scale or exactly 0


# --------------------------------------------------------------------- embedding
def embedding(const int64_t[::1] indices, const floating[:, ::1] weight, floating[:, ::1] out,
              int num_threads):
    """out[i] = weight[indices[i]] (indices in range)."""
    cdef Py_ssize_t n = indices.shape[0], dim = weight.shape[1], i
    if n == 0 or dim == 0:
        return
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n * dim >= PAR_MIN_WORK):
        memcpy(&out[i, 0], &weight[indices[i], 0], dim * sizeof(floating))


def embedding_backward(const floating[:, ::1] grad_out, const int64_t[::1] indices,
                       floating[:, ::1] out, int num_threads):
    """out[r] = the sum, in double and in index order, of the grad_out rows whose index
    is r (0 where none). A stable counting sort groups the rows by index; threads then
    take embedding rows, each summed by one thread: deterministic and race-free."""
    cdef Py_ssize_t n = indices.shape[0], num = out.shape[0], dim = out.shape[1]
    cdef Py_ssize_t i, r, k, j
    cdef int failed = 0
    cdef double* acc = NULL
    cdef const floating* gp = NULL
    cdef const floating* grow
    cdef floating* orow
    if num == 0 or dim == 0:
        return
    start_arr = np.zeros(num + 1, np.int64)
    order_arr = np.empty(n, np.int64)
    cdef int64_t[::1] start = start_arr
    cdef int64_t[::1] order = order_arr
    cdef int64_t[::1] fill
    if n:
        gp = &grad_out[0, 0]
        with nogil:
            for i in range(n):
                start[indices[i] + 1] += 1
            for r in range(num):
                start[r + 1] += start[r]
        fill_arr = start_arr[:num].copy()
        fill = fill_arr
        with nogil:
            for i in range(n):
                r = indices[i]
                order[fill[r]] = i
                fill[r] += 1
    with nogil, parallel(num_threads=num_threads,
                         use_threads_if=num > 1 and (n + num) * dim >= PAR_MIN_WORK):
        acc = <double*>malloc(dim * sizeof(double))
        for r in prange(num, schedule="static"):
            if acc == NULL:
                failed += 1
            else:
                orow = &out[0, 0] + r * dim
                if start[r] == start[r + 1]:
                    memset(orow, 0, dim * sizeof(floating))
                else:
                    for j in range(dim):
                        acc[j] = 0
                    for k in range(start[r], start[r + 1]):
                        grow = gp + order[k] * dim
                        for j in range(dim):
                            acc[j] += grow[j]
                    for j in range(dim):
                        orow[j] = <floating>acc[j]
        free(acc)
    if failed:
        raise MemoryError()
