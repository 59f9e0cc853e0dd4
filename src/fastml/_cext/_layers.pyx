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
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._kernels cimport (bn_apply_plane, bn_backward_apply_plane, bn_channel_sums,
                       layer_norm_backward_rows, layer_norm_rows, pairwise_sum)
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
# Stride 1 with Wo == W ("same" width): a column row is its plane shifted flat by
# roff W + coff, except the entries whose ow + coff falls outside [0, W) (the shift
# wraps them into the neighbouring image row): one long memcpy (or add) per column
# row, then those few entries zeroed, instead of one short copy per output row.
cdef inline void _flat_range(Py_ssize_t shift, Py_ssize_t oh0, Py_ssize_t oh1,
                             Py_ssize_t W, Py_ssize_t HW, Py_ssize_t* a,
                             Py_ssize_t* e) noexcept nogil:
    """[a, e): the entries of the output rows [oh0, oh1) whose flat source d + shift
    lies in the plane [0, HW) (the rest of those rows maps to padding)."""
    cdef Py_ssize_t lo = oh0 * W, hi = oh1 * W
    if -shift > lo:
        lo = -shift
    if lo > hi:
        lo = hi
    if HW - shift < hi:
        hi = HW - shift
    if hi < lo:
        hi = lo
    a[0] = lo
    e[0] = hi


cdef inline void _zero_outside(floating* row, Py_ssize_t oh0, Py_ssize_t oh1, Py_ssize_t W,
                               Py_ssize_t ow0, Py_ssize_t ow1) noexcept nogil:
    """row[oh W + ow] = 0 for ow outside [ow0, ow1), in the output rows [oh0, oh1)."""
    cdef Py_ssize_t oh, ow
    for oh in range(oh0, oh1):
        for ow in range(ow0):
            row[oh * W + ow] = 0
        for ow in range(ow1, W):
            row[oh * W + ow] = 0


cdef void _im2col_plane(const floating* x, floating* cols, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """The kh kw consecutive column rows of one (H, W) plane, each Ho Wo long, every
    element written."""
    cdef Py_ssize_t L = Ho * Wo, i, j, oh, ow, oh0, oh1, ow0, ow1, roff, coff, a, e
    cdef bint flat = sh == 1 and sw == 1 and Wo == W
    cdef floating* dst
    cdef floating* d
    cdef const floating* src
    for i in range(kh):
        roff = i * dh - ph
        _out_range(roff, sh, H, Ho, &oh0, &oh1)
        for j in range(kw):
            coff = j * dw - pw
            _out_range(coff, sw, W, Wo, &ow0, &ow1)
            dst = cols + (i * kw + j) * L
            if flat:
                _flat_range(roff * W + coff, oh0, oh1, W, H * W, &a, &e)
                memset(dst, 0, a * sizeof(floating))
                memcpy(dst + a, x + a + roff * W + coff, (e - a) * sizeof(floating))
                memset(dst + e, 0, (L - e) * sizeof(floating))
                _zero_outside(dst, oh0, oh1, W, ow0, ow1)
                continue
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
    """cols[n, (c kh + i) kw + j, oh Wo + ow] = xpad[n, c, oh sh + i dh, ow sw + j dw]
    (0 in the padding); every element of cols (N, C kh kw, Ho Wo) is written."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = _conv_out(H, kh, sh, ph, dh), Wo = _conv_out(W, kw, sw, pw, dw)
    cdef Py_ssize_t K = cols.shape[1], L = cols.shape[2], P = N * C, p, n, c
    if Ho * Wo != L or C * kh * kw != K or cols.shape[0] != N:
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
        _im2col_plane(xp + p * H * W, cp + (n * K + c * kh * kw) * L, H, W, Ho, Wo,
                      kh, kw, sh, sw, ph, pw, dh, dw)


cdef void _col2im_plane(floating* cols, floating* g, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """g (H, W) = the sum of the plane's kh kw consecutive column rows scattered back,
    added (as the reference's col2im) for i, then j, in order. On the flat path the
    rows' entries that map to padding are zeroed first (adding +0.0 changes no sum)."""
    cdef Py_ssize_t L = Ho * Wo, i, j, oh, t, cnt, oh0, oh1, ow0, ow1, roff, coff, a, e
    cdef bint flat = sh == 1 and sw == 1 and Wo == W
    cdef const floating* src
    cdef floating* d
    cdef floating* row
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
            if flat:
                row = cols + (i * kw + j) * L
                _zero_outside(row, oh0, oh1, W, ow0, ow1)
                _flat_range(roff * W + coff, oh0, oh1, W, H * W, &a, &e)
                d = g + a + roff * W + coff
                for t in range(e - a):
                    d[t] += row[a + t]
                continue
            for oh in range(oh0, oh1):
                src = cols + (i * kw + j) * L + oh * Wo + ow0
                d = g + (oh * sh + roff) * W + (ow0 * sw + coff)
                if sw == 1:
                    for t in range(cnt):
                        d[t] += src[t]
                else:
                    for t in range(cnt):
                        d[t * sw] += src[t]


def col2im(floating[:, :, ::1] cols, floating[:, :, :, ::1] grad_x, tuple geometry,
           int num_threads):
    """The transpose of im2col: grad_x (N, C, H, W) is overwritten with the sum of the
    column entries mapping to each pixel (padding entries dropped), in cols' dtype.
    cols is scratch: its entries that map to padding may be zeroed."""
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[1]
    cdef Py_ssize_t H = grad_x.shape[2], W = grad_x.shape[3]
    cdef Py_ssize_t Ho = _conv_out(H, kh, sh, ph, dh), Wo = _conv_out(W, kw, sw, pw, dw)
    cdef Py_ssize_t K = cols.shape[1], L = cols.shape[2], P = N * C, p, n, c
    if Ho * Wo != L or C * kh * kw != K or cols.shape[0] != N:
        raise ValueError("col2im: columns of the wrong shape")
    if P == 0 or H == 0 or W == 0:
        return
    cdef floating* gp = &grad_x[0, 0, 0, 0]
    cdef floating* cp = NULL
    if L == 0:
        memset(gp, 0, P * H * W * sizeof(floating))
        return
    cp = &cols[0, 0, 0]
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * kh * kw * L >= PAR_MIN_WORK):
        n = p // C
        c = p - n * C
        _col2im_plane(cp + (n * K + c * kh * kw) * L, gp + p * H * W, H, W, Ho, Wo,
                      kh, kw, sh, sw, ph, pw, dh, dw)


# --------------------------------------------------- Winograd F(2x2, 3x3) transforms
cdef extern from "_winograd.h" nogil:
    void fastml_winograd_input_f32(const float* x, Py_ssize_t nb, Py_ssize_t nc,
                                   Py_ssize_t h, Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw,
                                   Py_ssize_t th, Py_ssize_t s, float* v, float* scratch)
    void fastml_winograd_input_f64(const double* x, Py_ssize_t nb, Py_ssize_t nc,
                                   Py_ssize_t h, Py_ssize_t w, Py_ssize_t ph, Py_ssize_t pw,
                                   Py_ssize_t th, Py_ssize_t s, double* v, double* scratch)
    int fastml_winograd_output_f32(const float* m, Py_ssize_t nb, Py_ssize_t no,
                                   Py_ssize_t ho, Py_ssize_t wo, const float* bias, float* out,
                                   float* scratch)
    int fastml_winograd_output_f64(const double* m, Py_ssize_t nb, Py_ssize_t no,
                                   Py_ssize_t ho, Py_ssize_t wo, const double* bias,
                                   double* out, double* scratch)
    void fastml_winograd_grad_output_f32(const float* g, Py_ssize_t nb, Py_ssize_t no,
                                         Py_ssize_t ho, Py_ssize_t wo, float* pg,
                                         float* scratch)
    void fastml_winograd_grad_output_f64(const double* g, Py_ssize_t nb, Py_ssize_t no,
                                         Py_ssize_t ho, Py_ssize_t wo, double* pg,
                                         double* scratch)


cdef Py_ssize_t _winograd_tiles(Py_ssize_t ho, Py_ssize_t wo, Py_ssize_t nb, Py_ssize_t k,
                                tuple shape, str name) except -1:
    """Tiles per plane, th s (th = ceil(ho / 2) rows of s = ceil(wo / 2) + 1), after
    checking that the transformed array's shape is (16, k, nb th s)."""
    if ho < 1 or wo < 1:
        raise ValueError(f"{name}: output plane {ho}x{wo} is empty")
    cdef Py_ssize_t tt = ((ho + 1) // 2) * ((wo + 1) // 2 + 1)
    if shape[:3] != (16, k, nb * tt):
        raise ValueError(f"{name}: transformed tiles of shape {shape[:3]}, "
                         f"expected {(16, k, nb * tt)}")
    return tt


cdef void* _scratch(Py_ssize_t n, size_t itemsize) except NULL:
    cdef void* p = malloc(max(n, 1) * itemsize)
    if p == NULL:
        raise MemoryError()
    return p


def winograd_input(const floating[:, :, :, ::1] x, Py_ssize_t ph, Py_ssize_t pw,
                   floating[:, :, ::1] v):
    """v (16, C, N th s): Bᵀ d B for every 4x4 window d (stride 2) of x (N, C, H, W)
    padded by (ph, pw) in 0..2, one per 2x2 tile of the 3x3 convolution's output
    (backends/_conv.py gives the tile layout)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    if not (0 <= ph <= 2 and 0 <= pw <= 2):
        raise ValueError(f"winograd_input: padding ({ph}, {pw}) outside 0..2")
    cdef Py_ssize_t ho = H + 2 * ph - 2, wo = W + 2 * pw - 2
    _winograd_tiles(ho, wo, N, C, tuple(v.shape), "winograd_input")
    cdef Py_ssize_t th = (ho + 1) // 2, s = (wo + 1) // 2 + 1
    if N == 0 or C == 0:
        return
    cdef floating* scratch = <floating*>_scratch(4 * (th + 1) * s + 4 * ((th + 1) * s + 1),
                                                sizeof(floating))
    with nogil:
        if floating is float:
            fastml_winograd_input_f32(&x[0, 0, 0, 0], N, C, H, W, ph, pw, th, s, &v[0, 0, 0],
                                      scratch)
        else:
            fastml_winograd_input_f64(&x[0, 0, 0, 0], N, C, H, W, ph, pw, th, s, &v[0, 0, 0],
                                      scratch)
    free(scratch)


def winograd_output(const floating[:, :, ::1] m, const floating[::1] bias,
                    floating[:, :, :, ::1] out):
    """out (N, O, Ho, Wo) = Aᵀ M A (+ bias[o], bias None or (O,)) for every tile of m
    (16, O, N th s); whether every value computed (the tiles' junk column's too) is
    finite."""
    cdef Py_ssize_t N = out.shape[0], O = out.shape[1], ho = out.shape[2], wo = out.shape[3]
    _winograd_tiles(ho, wo, N, O, tuple(m.shape), "winograd_output")
    if bias is not None and bias.shape[0] != O:
        raise ValueError(f"winograd_output: bias of length {bias.shape[0]}, expected {O}")
    if N == 0 or O == 0:
        return True
    cdef Py_ssize_t th = (ho + 1) // 2, s = (wo + 1) // 2 + 1
    cdef const floating* bp = NULL if bias is None else &bias[0]
    cdef floating* scratch = <floating*>_scratch(4 * th * s, sizeof(floating))
    cdef int finite
    with nogil:
        if floating is float:
            finite = fastml_winograd_output_f32(&m[0, 0, 0], N, O, ho, wo, bp,
                                                &out[0, 0, 0, 0], scratch)
        else:
            finite = fastml_winograd_output_f64(&m[0, 0, 0], N, O, ho, wo, bp,
                                                &out[0, 0, 0, 0], scratch)
    free(scratch)
    return finite != 0


def winograd_grad_output(const floating[:, :, :, ::1] g, floating[:, :, ::1] pg):
    """pg (16, O, N th s) = A γ Aᵀ for every 2x2 tile γ of g (N, O, Ho, Wo) (zero past
    the plane's edge, and on each row's junk tile): grad_weight's transform."""
    cdef Py_ssize_t N = g.shape[0], O = g.shape[1], ho = g.shape[2], wo = g.shape[3]
    _winograd_tiles(ho, wo, N, O, tuple(pg.shape), "winograd_grad_output")
    if N == 0 or O == 0:
        return
    cdef Py_ssize_t th = (ho + 1) // 2, s = (wo + 1) // 2 + 1
    cdef floating* scratch = <floating*>_scratch(8 * th * s, sizeof(floating))
    with nogil:
        if floating is float:
            fastml_winograd_grad_output_f32(&g[0, 0, 0, 0], N, O, ho, wo, &pg[0, 0, 0], scratch)
        else:
            fastml_winograd_grad_output_f64(&g[0, 0, 0, 0], N, O, ho, wo, &pg[0, 0, 0], scratch)
    free(scratch)


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
# The loops are the vectorized, CPU-dispatched ones of _kernels.h (in double, rounded
# once; means from NumPy's pairwise sums, bit for bit the reference's, so x - mean is
# exactly 0 exactly where the reference's is: inf * 0 = NaN, inf * tiny = inf).

# ------------------------------------------------------------------ batch_norm
cdef inline double _shift(floating v) noexcept nogil:
    """The shift of a channel's shifted sums: its first value when finite, else 0 (so
    an inf or NaN sums as in a plain sum)."""
    return <double>v if isfinite(v) else 0.0


def batch_norm_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                     int num_threads):
    """Per-channel mean and biased variance of x (N, C, L) in double, one pass over the
    data: sums of x - s and (x - s)**2 with s the channel's first value."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef double m = <double>(N * L), sx, sxx, mu, v
    cdef const floating* xp
    cdef double* r
    if C == 0:
        return
    if N * L == 0:
        for c in range(C):
            mean[c] = var[c] = np.nan
        return
    res_arr = np.zeros((C, 5))
    cdef double[:, ::1] res = res_arr
    xp = &x[0, 0, 0]
    for c in prange(C, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=C > 1 and N * C * L >= PAR_MIN_WORK):
        r = &res[c, 0]
        # NumPy's order for mean(axis=(0, 2)): pairwise per segment (C > 1)
        bn_channel_sums(xp, <const floating*>NULL, N, C, L, c, _shift(xp[c * L]), r)
        sx = r[1]
        sxx = r[2]
        if C == 1:  # NumPy coalesces (N, 1, L) into one pairwise sum
            mu = pairwise_sum(xp, N * L)
        else:
            mu = r[0]
        mean[c] = mu / m
        v = (sxx - sx * (sx / m)) / m
        var[c] = 0.0 if v < 0 else v


def batch_norm_apply(const floating[:, :, ::1] x, const double[::1] scale,
                     const double[::1] shift, floating[:, :, ::1] out, int num_threads):
    """out = x * scale[c] + shift[c] in double, rounded once."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], P = N * C, p, c
    if P == 0 or L == 0:
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * L >= PAR_MIN_WORK):
        c = p % C
        bn_apply_plane(&x[0, 0, 0] + p * L, scale[c], shift[c], &out[0, 0, 0] + p * L, L)


def batch_norm_backward_stats(const floating[:, :, ::1] grad_out,
                              const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                              double[::1] sum_g, double[::1] sum_gxc, int num_threads):
    """Per channel: mean, biased variance, sum(g) and sum(g (x - mean)), one pass (shifted
    sums). A channel whose sums are not finite gets sum(g (x - mean)) from a second
    pass, so inf and NaN give the reference's products."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, l
    cdef double m = <double>(N * L), e0, sx, sxx, sg, sgx, mu, v
    cdef const floating* xp
    cdef const floating* gp
    cdef const floating* xs
    cdef const floating* gs
    cdef double* r
    if C == 0:
        return
    if N * L == 0:
        for c in range(C):
            mean[c] = var[c] = np.nan
            sum_g[c] = sum_gxc[c] = 0.0
        return
    res_arr = np.zeros((C, 5))
    cdef double[:, ::1] res = res_arr
    xp = &x[0, 0, 0]
    gp = &grad_out[0, 0, 0]
    for c in prange(C, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=C > 1 and N * C * L >= PAR_MIN_WORK):
        r = &res[c, 0]
        bn_channel_sums(xp, gp, N, C, L, c, _shift(xp[c * L]), r)
        sx = r[1]
        sxx = r[2]
        sg = r[3]
        sgx = r[4]
        if C == 1:
            mu = pairwise_sum(xp, N * L)
        else:
            mu = r[0]
        mu = mu / m
        mean[c] = mu
        v = (sxx - sx * (sx / m)) / m
        var[c] = 0.0 if v < 0 else v
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
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], P = N * C, p, c
    if P == 0 or L == 0:
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=P > 1 and P * L >= PAR_MIN_WORK):
        c = p % C
        bn_backward_apply_plane(&grad_out[0, 0, 0] + p * L, &x[0, 0, 0] + p * L, mean[c],
                                invstd[c], k[c], a[c], b[c], &out[0, 0, 0] + p * L, L)


# ------------------------------------------------------------------ layer_norm
def layer_norm(const floating[:, ::1] x, const floating[::1] weight, const floating[::1] bias,
               double eps, floating[:, ::1] out, int num_threads):
    """Per row: (x - mean) / sqrt(var + eps) * weight + bias in double, rounded once
    (one contiguous range of rows per thread)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], nchunks = 1, c
    cdef const floating* w = NULL
    cdef const floating* b = NULL
    if rows == 0 or n == 0:
        return
    if weight is not None:
        w = &weight[0]
    if bias is not None:
        b = &bias[0]
    if rows * n >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, rows))
    for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=nchunks > 1):
        layer_norm_rows(&x[0, 0], w, b, eps, &out[0, 0], c * rows // nchunks,
                        (c + 1) * rows // nchunks, n)


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
            layer_norm_backward_rows(&grad_out[0, 0], &x[0, 0], w, eps, &grad_x[0, 0],
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
