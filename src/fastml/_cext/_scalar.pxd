# Per-element math shared by the kernels: float32 calls the float libm
# functions (expf, ...) so float32 kernels never round-trip through double.
from cython cimport floating
from libc.math cimport sqrt, sqrtf

# Work (elements touched) below which a kernel runs serially: forking the
# OpenMP team costs more than it saves on smaller inputs.
cdef enum:
    PAR_MIN_WORK = 32768


# exp / expm1 / tanh written without libm calls and without branches, so the
# compiler vectorizes the loops that use them (libm's expf/tanhf are scalar).
# Cody-Waite reduction x = n*ln2 + r, |r| <= ln2/2, then a Taylor polynomial
# q = e^r - 1 good to an ulp, then 2^n built in the exponent bits. n comes from
# the round-to-nearest "magic number" trick and 2^n is applied in two halves,
# so results overflow to inf and underflow gradually to 0 exactly where libm's
# do. NaN is passed through explicitly.
from libc.stdint cimport int32_t, int64_t

cdef union _F32:
    float f
    int32_t i

cdef union _F64:
    double f
    int64_t i

cdef enum:
    _F32_MAGIC_BITS = 0x4B400000   # bits of 1.5 * 2**23


cdef inline float _pow2_f32(float n) noexcept nogil:
    """2**n for an integral n with -126 <= n <= 127, from the exponent bits."""
    cdef _F32 t
    t.f = n + <float>12582912.0
    t.i = (t.i - _F32_MAGIC_BITS + 127) << 23
    return t.f


cdef inline double _pow2_f64(double n) noexcept nogil:
    """2**n for an integral n with -1022 <= n <= 1023, from the exponent bits."""
    cdef _F64 t, magic
    magic.f = 6755399441055744.0   # 1.5 * 2**52
    t.f = n + magic.f
    t.i = (t.i - magic.i + 1023) << 52
    return t.f


cdef inline float _expm1_reduced_f32(float x, float* n) noexcept nogil:
    """e**r - 1 where x = n*ln2 + r (x already clamped to a finite range)."""
    cdef float r
    n[0] = (x * <float>1.4426950408889634 + <float>12582912.0) - <float>12582912.0
    r = (x - n[0] * <float>0.693359375) - n[0] * <float>-2.12194440e-4
    return r * (<float>1 + r * (<float>(1 / 2.) + r * (<float>(1 / 6.) + r * (<float>(1 / 24.) + r * (
        <float>(1 / 120.) + r * (<float>(1 / 720.) + r * <float>(1 / 5040.)))))))


cdef inline double _expm1_reduced_f64(double x, double* n) noexcept nogil:
    cdef double r
    n[0] = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0
    r = (x - n[0] * 6.93145751953125e-1) - n[0] * 1.42860682030941723212e-6
    return r * (1 + r * (1 / 2. + r * (1 / 6. + r * (1 / 24. + r * (1 / 120. + r * (
        1 / 720. + r * (1 / 5040. + r * (1 / 40320. + r * (1 / 362880. + r * (
            1 / 3628800. + r * (1 / 39916800. + r * (1 / 479001600. + r * (
                1 / 6227020800.)))))))))))))


cdef inline floating fexp(floating x) noexcept nogil:
    cdef floating n, h, q, xc
    if floating is float:
        xc = min(max(x, <float>-104.0), <float>89.0)
        q = _expm1_reduced_f32(xc, &n)
        h = (n * <float>0.5 + <float>12582912.0) - <float>12582912.0
        q = ((<float>1 + q) * _pow2_f32(h)) * _pow2_f32(n - h)
    else:
        xc = min(max(x, -746.0), 710.0)
        q = _expm1_reduced_f64(xc, &n)
        h = (n * 0.5 + 6755399441055744.0) - 6755399441055744.0
        q = ((1 + q) * _pow2_f64(h)) * _pow2_f64(n - h)
    return x if x != x else q


cdef inline floating _expm1_nonpos(floating x) noexcept nogil:
    """e**x - 1 for x <= 0 (not NaN), without cancellation near 0."""
    cdef floating n, q, s
    if floating is float:
        q = _expm1_reduced_f32(max(x, <float>-40.0), &n)
        s = _pow2_f32(n)
    else:
        q = _expm1_reduced_f64(max(x, -60.0), &n)
        s = _pow2_f64(n)
    return (s - <floating>1) + s * q


cdef inline floating ftanh(floating x) noexcept nogil:
    """tanh(x) = sign(x) * -e / (2 + e) with e = expm1(-2|x|): no cancellation near 0."""
    cdef floating a = -x if x < 0 else x
    cdef floating e = _expm1_nonpos(<floating>-2 * a)
    cdef floating t = -e / (<floating>2 + e)
    if x != x:
        return x
    return -t if x < 0 else t


cdef inline floating fsqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating nanmax(floating a, floating b) noexcept nogil:
    """max(a, b) that returns NaN when either is NaN (as np.maximum / ndarray.max)."""
    return a if (a >= b or a != a) else b


cdef inline floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """NaN-propagating max of a row of n >= 1 values."""
    cdef floating m = x[0]
    cdef Py_ssize_t j
    for j in range(1, n):
        m = nanmax(m, x[j])
    return m


cdef inline double row_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """sum(a) in double; four partial sums so the adds overlap."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t j, n4 = n - n % 4
    for j in range(0, n4, 4):
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
    for j in range(n4, n):
        s0 += a[j]
    return (s0 + s1) + (s2 + s3)


cdef inline double row_dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """sum(a * b) in double; four partial sums so the adds overlap."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t j, n4 = n - n % 4
    for j in range(0, n4, 4):
        s0 += <double>a[j] * b[j]
        s1 += <double>a[j + 1] * b[j + 1]
        s2 += <double>a[j + 2] * b[j + 2]
        s3 += <double>a[j + 3] * b[j + 3]
    for j in range(n4, n):
        s0 += <double>a[j] * b[j]
    return (s0 + s1) + (s2 + s3)
