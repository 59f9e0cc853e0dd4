/* Vectorized inner loops of the exp-based kernels (element-wise, row-wise, cross-entropy).
 *
 * Wheels are built for baseline x86-64 (SSE2), so each loop is compiled three times with
 * GCC/clang target_clones (AVX-512F, AVX2, baseline) and the loader picks the widest
 * the CPU supports (an ifunc, resolved once). No fast-math: NaN and inf propagate in
 * every clone. (The AVX-512 clone may contract a*b + c into an FMA, so its results can
 * differ from the others' in the last bit; all are within the ops' tolerances.)
 *
 * exp / tanh have no libm call and no branch, so the loops vectorize: Cody-Waite
 * reduction x = n*ln2 + r, a Taylor polynomial for e^r - 1, and 2^n built in the
 * exponent bits, applied in two halves so results overflow to inf and underflow
 * gradually to 0 where libm's do. Sums keep FM_LANES independent double accumulators,
 * added in a fixed order at the end, and maxima reduce integer keys, so both vectorize
 * without reassociating float math.
 *
 * _kernels_impl.h holds the type-generic loops; it is included once per dtype below.
 */
#ifndef FASTML_KERNELS_H
#define FASTML_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* target_clones needs ifunc support (ELF + glibc-style loader). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__INTEL_COMPILER) && defined(__ELF__)
#define FM_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FM_DISPATCH
#endif

#if defined(__GNUC__)
#define FM_INLINE static inline __attribute__((always_inline))
#else
#define FM_INLINE static inline
#endif
#define FM_RESTRICT __restrict

#define FM_LANES 16     /* accumulators per sum: one AVX-512 vector of floats */
#define FM_CE_BLOCK 64  /* cross-entropy: elements per block of the online log-sum-exp */

/* ------------------------------------------------------------------ scalar math */
typedef union { float f; int32_t i; } fm_f32_bits;
typedef union { double f; int64_t i; } fm_f64_bits;

/* 2**n for an integral n with -126 <= n <= 127, from the exponent bits. */
static inline float fm_pow2_f32(float n) {
    fm_f32_bits t;
    t.f = n + 12582912.0f;                       /* 1.5 * 2**23: n lands in the low bits */
    t.i = (t.i - 0x4B400000 + 127) << 23;
    return t.f;
}

/* 2**n for an integral n with -1022 <= n <= 1023. */
static inline double fm_pow2_f64(double n) {
    fm_f64_bits t;
    t.f = n + 6755399441055744.0;                /* 1.5 * 2**52 */
    t.i = (t.i - INT64_C(0x4338000000000000) + 1023) << 52;
    return t.f;
}

/* e**r - 1 where x = n*ln2 + r (x already clamped to a finite range). */
static inline float fm_expm1_reduced_f32(float x, float *n) {
    float r;
    *n = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
    r = (x - *n * 0.693359375f) - *n * -2.12194440e-4f;
    return r * (1.0f + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (
        1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
}

static inline double fm_expm1_reduced_f64(double x, double *n) {
    double r;
    *n = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
    r = (x - *n * 6.93145751953125e-1) - *n * 1.42860682030941723212e-6;
    return r * (1 + r * (1 / 2. + r * (1 / 6. + r * (1 / 24. + r * (1 / 120. + r * (
        1 / 720. + r * (1 / 5040. + r * (1 / 40320. + r * (1 / 362880. + r * (
            1 / 3628800. + r * (1 / 39916800. + r * (1 / 479001600. + r * (
                1 / 6227020800.)))))))))))));
}

static inline float fm_exp_f32(float x) {
    float n, h, q, xc = x < -104.0f ? -104.0f : x;
    xc = xc > 89.0f ? 89.0f : xc;
    q = fm_expm1_reduced_f32(xc, &n);
    h = (n * 0.5f + 12582912.0f) - 12582912.0f;
    q = ((1.0f + q) * fm_pow2_f32(h)) * fm_pow2_f32(n - h);
    return x != x ? x : q;
}

static inline double fm_exp_f64(double x) {
    double n, h, q, xc = x < -746.0 ? -746.0 : x;
    xc = xc > 710.0 ? 710.0 : xc;
    q = fm_expm1_reduced_f64(xc, &n);
    h = (n * 0.5 + 6755399441055744.0) - 6755399441055744.0;
    q = ((1 + q) * fm_pow2_f64(h)) * fm_pow2_f64(n - h);
    return x != x ? x : q;
}

/* e**x - 1 for x <= 0 (not NaN), without cancellation near 0. */
static inline float fm_expm1_nonpos_f32(float x) {
    float n, q = fm_expm1_reduced_f32(x < -40.0f ? -40.0f : x, &n), s = fm_pow2_f32(n);
    return (s - 1.0f) + s * q;
}

static inline double fm_expm1_nonpos_f64(double x) {
    double n, q = fm_expm1_reduced_f64(x < -60.0 ? -60.0 : x, &n), s = fm_pow2_f64(n);
    return (s - 1) + s * q;
}

/* tanh(x) = sign(x) * -e / (2 + e) with e = expm1(-2|x|): no cancellation near 0. */
static inline float fm_tanh_f32(float x) {
    float a = x < 0 ? -x : x, e = fm_expm1_nonpos_f32(-2.0f * a), t = -e / (2.0f + e);
    return x != x ? x : (x < 0 ? -t : t);
}

static inline double fm_tanh_f64(double x) {
    double a = x < 0 ? -x : x, e = fm_expm1_nonpos_f64(-2.0 * a), t = -e / (2.0 + e);
    return x != x ? x : (x < 0 ? -t : t);
}

/* log and log1p without a libm call or a branch, so loops over them vectorize (musl's
 * logf.c / log.c / log1pf.c / log1p.c, from FreeBSD's msun, made branch-free): the argument
 * is 2**k * (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), and with s = f / (2 + f)
 *     log(1 + f) = f - hfsq + s * (hfsq + R(s*s)),  hfsq = f*f/2,
 * R a minimax polynomial; k*ln2 is added in two parts. Errors are below 1 ulp. log1p adds
 * c = (x - (u - 1)) / u, the rounding error of u = 1 + x, and takes f = x itself (k = 0)
 * near 0. Special values as libm: log(+-0) = log1p(-1) = -inf, a negative log (log1p
 * below -1) argument gives NaN, +inf and NaN come back unchanged; log scales subnormals
 * up first. Each special case is a final select over the lanes. */
#define FM_LN2_HI_F32 6.9313812256e-01f   /* 0x3f317180 */
#define FM_LN2_LO_F32 9.0580006145e-06f   /* 0x3717f7d1 */
#define FM_LN2_HI_F64 6.93147180369123816490e-01  /* 0x3fe62e42 fee00000 */
#define FM_LN2_LO_F64 1.90821492927058770002e-10  /* 0x3dea39ef 35793c76 */

/* log(1 + f) + k*ln2 + c, for f in [sqrt(2)/2 - 1, sqrt(2) - 1) */
FM_INLINE float fm_log_poly_f32(float f, float dk, float c) {
    float s = f / (2.0f + f), z = s * s, w = z * z;
    float t1 = w * (0xccce13.0p-25f + w * 0xf89e26.0p-26f);
    float t2 = z * (0xaaaaaa.0p-24f + w * 0x91e9ee.0p-25f);
    float hfsq = 0.5f * f * f;
    return s * (hfsq + (t2 + t1)) + (dk * FM_LN2_LO_F32 + c) - hfsq + f + dk * FM_LN2_HI_F32;
}

FM_INLINE double fm_log_poly_f64(double f, double dk, double c) {
    double s = f / (2.0 + f), z = s * s, w = z * z;
    double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 +
                                                     w * 1.531383769920937332e-01));
    double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (
        1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    double hfsq = 0.5 * f * f;
    return s * (hfsq + (t2 + t1)) + (dk * FM_LN2_LO_F64 + c) - hfsq + f + dk * FM_LN2_HI_F64;
}

/* u = 2**k * m (u > 0 normal) with m in [sqrt(2)/2, sqrt(2)): returns m - 1, sets *dk = k.
 * The float64 k comes from the exponent bits through 2**52 + k - 2**52: AVX2 and plain
 * AVX-512F have no vector int64 -> double conversion. */
FM_INLINE float fm_log_reduce_f32(float u, float *dk) {
    fm_f32_bits b;
    uint32_t iu;
    b.f = u;
    iu = (uint32_t)b.i + (0x3f800000 - 0x3f3504f3);
    *dk = (float)((int32_t)(iu >> 23) - 0x7f);
    b.i = (int32_t)((iu & 0x007fffff) + 0x3f3504f3);
    return b.f - 1.0f;
}

FM_INLINE double fm_log_reduce_f64(double u, double *dk) {
    fm_f64_bits b, e;
    uint64_t iu;
    b.f = u;
    iu = (uint64_t)b.i + (UINT64_C(0x3ff0000000000000) - UINT64_C(0x3fe6a09e00000000));
    e.i = (int64_t)((iu >> 52) | UINT64_C(0x4330000000000000));   /* 2**52 + biased k */
    *dk = e.f - (0x1p52 + 1023);
    b.i = (int64_t)((iu & UINT64_C(0x000fffffffffffff)) + UINT64_C(0x3fe6a09e00000000));
    return b.f - 1.0;
}

/* (Conditions are written into each select, not kept in int flags: gcc fails to vectorize
 * some loops that mix such flags of several inlined calls.) */
FM_INLINE float fm_log_f32(float x) {
    float dk, f = fm_log_reduce_f32(x < 0x1p-126f ? x * 0x1p25f : x, &dk);  /* subnormals */
    float r = fm_log_poly_f32(f, x < 0x1p-126f ? dk - 25.0f : dk, 0.0f);
    return (x > 0 && x < INFINITY) ? r : (x == 0 ? -INFINITY : (x < 0 ? NAN : x));
}

FM_INLINE double fm_log_f64(double x) {
    double dk, f = fm_log_reduce_f64(x < 0x1p-1022 ? x * 0x1p54 : x, &dk);
    double r = fm_log_poly_f64(f, x < 0x1p-1022 ? dk - 54.0 : dk, 0.0);
    return (x > 0 && x < INFINITY) ? r : (x == 0 ? -INFINITY : (x < 0 ? NAN : x));
}

FM_INLINE float fm_log1p_f32(float x) {
    float u = 1.0f + x, dk, f = fm_log_reduce_f32(u, &dk);
    float c = (dk >= 2.0f ? 1.0f - (u - x) : x - (u - 1.0f)) / u;
    float r;
    c = dk < 25.0f ? c : 0.0f;
    /* near 0 (k == 0): f = x itself, no correction */
    f = (x >= -0x1.2bec32p-2f && x < 0x1.a827ap-2f) ? x : f;
    dk = (x >= -0x1.2bec32p-2f && x < 0x1.a827ap-2f) ? 0.0f : dk;
    c = (x >= -0x1.2bec32p-2f && x < 0x1.a827ap-2f) ? 0.0f : c;
    r = fm_log_poly_f32(f, dk, c);
    r = (x < 0x1p-24f && x > -0x1p-24f) ? x : r;
    return (x > -1.0f && x < INFINITY) ? r : (x == -1.0f ? -INFINITY : (x < -1.0f ? NAN : x));
}

FM_INLINE double fm_log1p_f64(double x) {
    double u = 1.0 + x, dk, f = fm_log_reduce_f64(u, &dk);
    double c = (dk >= 2.0 ? 1.0 - (u - x) : x - (u - 1.0)) / u;
    double r;
    c = dk < 54.0 ? c : 0.0;
    f = (x >= -0x1.2bec4p-2 && x < 0x1.a827ap-2) ? x : f;
    dk = (x >= -0x1.2bec4p-2 && x < 0x1.a827ap-2) ? 0.0 : dk;
    c = (x >= -0x1.2bec4p-2 && x < 0x1.a827ap-2) ? 0.0 : c;
    r = fm_log_poly_f64(f, dk, c);
    r = (x < 0x1p-53 && x > -0x1p-53) ? x : r;
    return (x > -1.0 && x < INFINITY) ? r : (x == -1.0 ? -INFINITY : (x < -1.0 ? NAN : x));
}

/* Integer keys ordered as the floats they come from: a float's bits read as a
 * sign-magnitude integer, turned into two's complement (the map is its own inverse). */
static inline int32_t fm_key_f32(float x) {
    fm_f32_bits b;
    b.f = x;
    return b.i ^ ((b.i >> 31) & INT32_MAX);
}

static inline float fm_unkey_f32(int32_t k) {
    fm_f32_bits b;
    b.i = k ^ ((k >> 31) & INT32_MAX);
    return b.f;
}

static inline int64_t fm_key_f64(double x) {
    fm_f64_bits b;
    b.f = x;
    return b.i ^ ((b.i >> 63) & INT64_MAX);
}

static inline double fm_unkey_f64(int64_t k) {
    fm_f64_bits b;
    b.i = k ^ ((k >> 63) & INT64_MAX);
    return b.f;
}

/* log-sum-exp parts of a row of logits (see fm_ce_lse) */
typedef struct { double m, log_s, wx; } fm_row_lse;

/* libm sqrt; with -fno-math-errno it compiles to the vector instruction */
FM_INLINE float fm_sqrt_f32(float x) { return sqrtf(x); }
FM_INLINE double fm_sqrt_f64(double x) { return sqrt(x); }

/* the lanes' sum, in a fixed order */
FM_INLINE double fm_lanes_sum(const double *acc) {
    double s = 0;
    for (int k = 0; k < FM_LANES; k++) s += acc[k];
    return s;
}

/* ------------------------------------------------------------- GELU / SiLU */
/* GELU and SiLU per element in double, with the reference's (torch's) formulas in its
 * order of operations; the loops of _kernels_impl.h widen float32 inputs, call these and
 * round once, so a float32 result is the reference's within an ulp, also near the roots
 * of the derivatives (gelu' at x ~ -0.752, silu' at x ~ -1.278) where float32 arithmetic
 * would cancel. exp and tanh are the branch-free fm_exp_f64 / fm_tanh_f64 above, so the
 * SiLU and (float32) tanh-GELU loops vectorize; erf is libm's. No FMA contraction, as in the
 * losses: derivatives that underflow to 0 must stay 0 (grad * 0 is NaN, not inf, for an
 * infinite grad). x * x * x is the reference's x ** 3 (correctly rounded for a float32 x:
 * x * x is exact in double). */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define FM_SQRT_HALF 0.7071067811865476        /* 1 / sqrt(2) */
#define FM_SQRT_2_OVER_PI 0.7978845608028654   /* sqrt(2 / pi) */
#define FM_INV_SQRT_2PI 0.3989422804014327     /* 1 / sqrt(2 pi) */
#define FM_GELU_KAPPA 0.044715

/* tanh(sqrt(2/pi) * (x + kappa * x**3)), of the tanh approximation. libm_tanh (float64
 * data): libm's tanh, within an ulp of the reference's, as 1 - t*t of the derivative
 * cancels near |t| = 1 and fm_tanh_f64's few ulps there would be near float64's
 * tolerance; float32 data rounds that away and takes the vectorizing fm_tanh_f64. */
static inline double fm_gelu_tanh_t(double x, int libm_tanh) {
    double u = FM_SQRT_2_OVER_PI * (x + FM_GELU_KAPPA * (x * x * x));
    return libm_tanh ? tanh(u) : fm_tanh_f64(u);
}

static inline double fm_gelu_d(double x) {
    return x * (0.5 * (1 + erf(x * FM_SQRT_HALF)));
}

static inline double fm_gelu_tanh_d(double x, int libm_tanh) {
    return x * (0.5 * (1 + fm_gelu_tanh_t(x, libm_tanh)));
}

/* 0.5 * (1 + erf(x / sqrt 2)) + x * exp(-x*x/2) / sqrt(2 pi) */
static inline double fm_gelu_grad_d(double x) {
    return 0.5 * (1 + erf(x * FM_SQRT_HALF)) + x * fm_exp_f64(-0.5 * x * x) * FM_INV_SQRT_2PI;
}

static inline double fm_gelu_tanh_grad_d(double x, int libm_tanh) {
    double t = fm_gelu_tanh_t(x, libm_tanh);
    double d_inner = FM_SQRT_2_OVER_PI * (1 + 3 * FM_GELU_KAPPA * x * x);
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * d_inner;
}

static inline double fm_silu_d(double x) { return x / (1 + fm_exp_f64(-x)); }

/* s * (1 + x * (1 - s)), s = sigmoid(x) */
static inline double fm_silu_grad_d(double x) {
    double s = 1 / (1 + fm_exp_f64(-x));
    return s * (1 + x * (1 - s));
}
#pragma GCC pop_options

/* --------------------------------------------------------- type-generic loops */
#define FM_CAT_(a, b) a##_##b
#define FM_CAT(a, b) FM_CAT_(a, b)
#define FM_FN(name) FM_CAT(name, FM_SFX)   /* name_f32 / name_f64 */

#define FM_T float
#define FM_I int32_t
#define FM_SFX f32
#include "_kernels_impl.h"
#undef FM_T
#undef FM_I
#undef FM_SFX

#define FM_T double
#define FM_I int64_t
#define FM_SFX f64
#include "_kernels_impl.h"
#undef FM_T
#undef FM_I
#undef FM_SFX

#endif /* FASTML_KERNELS_H */
