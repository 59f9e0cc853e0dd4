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
#ifndef FM_NORM_T          /* see the normalization loops at the end */
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
#define FM_CE_SWEEP_MAX 8192  /* cross-entropy: longest row swept in cache (32 KB float32) */

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
 * round once (float32 GELU-erf and SiLU use the float32 loops further below instead, and
 * these helpers only where those fall back), so a float32 result is the reference's
 * within an ulp, also near the roots of the derivatives (gelu' at x ~ -0.752, silu' at
 * x ~ -1.278) where float32 arithmetic would cancel. exp and tanh are the branch-free fm_exp_f64 / fm_tanh_f64 above, so the
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

/* tanh(x) with 1 - |tanh x| to a few ulps of itself, not of 1: 1 - 2 / (e**2|x| + 1) from
 * |x| = 0.625 on (Cephes' split and rational below), so 1 + t and 1 - t*t keep their
 * digits in the tanh-GELU derivative. fm_tanh_f64's expm1 is spaced 2**-53 near -1: it
 * rounded the derivative to 0 over a 2x range of e**-2|x| where the reference's is tiny
 * but nonzero (a grad_out of inf then gave NaN, not -inf). NumPy's tanh, the reference's,
 * reaches -1 a little early too: for x in [-7.2000, -7.1889] its derivative is exactly 0
 * where this one's (and libm's tanh, used here before) is not (2M-point sweep). Vectorizes:
 * fm_exp_f64 and a select, where libm's scalar tanh made this loop 10x slower. */
static inline double fm_tanh_tail_f64(double x) {
    double a = x < 0 ? -x : x, z = a * a, t = 1 - 2 / (fm_exp_f64(a + a) + 1);
    /* Cephes' tanh below 0.625: a + a z P(z) / Q(z), cheaper than fm_tanh_f64's expm1 */
    double small = a + a * z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                                 - 1.61468768441708447952e3)
                                / (((z + 1.12811678491632931402e2) * z
                                    + 2.23548839060100448583e3) * z
                                   + 4.84406305325125486048e3));
    t = a < 0.625 ? small : t;
    return x != x ? x : (x < 0 ? -t : t);
}

/* tanh(sqrt(2/pi) * (x + kappa * x**3)), of the tanh approximation. tail: fm_tanh_tail_f64,
 * as 1 + t and 1 - t*t cancel near |t| = 1 (the derivative always; float64 data's
 * forward); float32 data's forward rounds that away and takes fm_tanh_f64. */
static inline double fm_gelu_tanh_t(double x, int tail) {
    double u = FM_SQRT_2_OVER_PI * (x + FM_GELU_KAPPA * (x * x * x));
    return tail ? fm_tanh_tail_f64(u) : fm_tanh_f64(u);
}

static inline double fm_gelu_d(double x) {
    return x * (0.5 * (1 + erf(x * FM_SQRT_HALF)));
}

static inline double fm_gelu_tanh_d(double x, int tail) {
    return x * (0.5 * (1 + fm_gelu_tanh_t(x, tail)));
}

/* 0.5 * (1 + erf(x / sqrt 2)) + x * exp(-x*x/2) / sqrt(2 pi) */
static inline double fm_gelu_grad_d(double x) {
    return 0.5 * (1 + erf(x * FM_SQRT_HALF)) + x * fm_exp_f64(-0.5 * x * x) * FM_INV_SQRT_2PI;
}

static inline double fm_gelu_tanh_grad_d(double x) {
    double t = fm_gelu_tanh_t(x, 1);
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

/* ------------------------------------------------- GELU / SiLU in float32 arithmetic */
/* The float32 loops below compute in float32 vectors (twice the lanes of the double
 * helpers above) where that is provably inside the float32 tolerance (rtol 1e-5, atol
 * 1e-6 against the reference), and fall back to the double helpers elsewhere:
 *  - near the root of a derivative (gelu' at x0 ~ -0.7518, silu' at x0 ~ -1.2785) the
 *    formula cancels in float32: within |x - x0| < 1/8 the derivative is its degree-7
 *    Taylor polynomial about x0 (coefficients in double from mpmath, rounded to float;
 *    the truncation is below 1e-8 relative there), in t = (x - x0_hi) - x0_lo, where
 *    x - x0_hi is exact (Sterbenz). Outside, |f'| > 0.027 and the cancellation costs at
 *    most a factor 10 of the terms' few-ulp errors: a few 1e-6 relative;
 *  - in the tails, where float32 exp underflows or overflows long before float64's (a
 *    derivative that is nonzero in the reference must be nonzero here: inf * 0 is NaN),
 *    and for inf / NaN inputs: in each block of FM_ACT_BLOCK elements that holds such an
 *    x, those elements are redone with the double helpers (the earlier code path).
 * The AVX-512 clone contracts to FMA here (only more accurate; the clones may then differ
 * in the last bit).
 * Forward values have no root to cancel at: GELU's x * Phi(x) and SiLU's x / (1 + e^-x)
 * run in float32 throughout (far tails: -0 where the reference has a float32 subnormal
 * or 0, below atol; +-inf and NaN come out as the reference's).
 *
 * Phi(x) = erfc(|x| / sqrt 2) / 2 (x < 0) or 1 - erfc(|x| / sqrt 2) / 2, erfc(z) =
 * t exp(-z*z + P(t)), t = 1 / (1 + z/2) (Numerical Recipes' erfcc, a Chebyshev fit with
 * fractional error below 1.2e-7 for all z >= 0); z*z = x*x/2 is rounded once. For
 * -5.3 < x < 0 (below, |gelu| < atol) the exponent is above -15, so its rounding costs
 * < 1e-6 relative; x >= 0 needs only absolute accuracy. Branch-free: every loop
 * vectorizes (16 float lanes in the AVX-512 clone). */
#define FM_ACT_BLOCK 256
#define FM_GELU_X0_HI -0x1.80ead2p-1f
#define FM_GELU_X0_LO 0x1.a03fd4p-27f
#define FM_SILU_X0_HI -0x1.474974p+0f
#define FM_SILU_X0_LO 0x1.bdf6fap-27f
#define FM_ROOT_HALFWIDTH 0.125f

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")   /* FMA where the clone has it: only more accurate */
/* e**x for x <= 0 (not NaN), flushed to 2**-126 * e**(r) below x = -87.3 (callers only
 * use it where that is below atol or redone in double): one scaling by 2**n, no NaN or
 * overflow select, so cheaper than fm_exp_f32 */
FM_INLINE float fm_exp_nonpos_f32(float x) {
    float n, q = fm_expm1_reduced_f32(x < -87.0f ? -87.0f : x, &n);
    return (1.0f + q) * fm_pow2_f32(n);
}

/* erfc(|x| / sqrt 2), with *ez = exp(-x*x/2) when want_ez */
FM_INLINE float fm_gelu_erfc_f32(float x, float *ez, int want_ez) {
    float a = x < 0 ? -x : x, zz = 0.5f * (x * x);
    float t = 1.0f / (1.0f + 0.5f * (a * 0.70710678f));
    float q = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
              t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
              t * (-0.82215223f + t * 0.17087277f))))))));
    if (want_ez) *ez = fm_exp_nonpos_f32(-zz);
    return t * fm_exp_nonpos_f32(q - zz);
}

FM_INLINE float fm_gelu_phi_cdf_f32(float x, float e) {   /* Phi(x) from e = erfc(...) */
    return x < 0 ? 0.5f * e : 1.0f - 0.5f * e;
}

FM_INLINE float fm_gelu_grad_f32(float x) {
    float ez, e = fm_gelu_erfc_f32(x, &ez, 1);
    float d = fm_gelu_phi_cdf_f32(x, e) + x * ez * 0.39894228f;
    float t = (x - FM_GELU_X0_HI) - FM_GELU_X0_LO;
    float p = t * (0.43149399f + t * (0.38828498f + t * (-0.018199676f + t * (
        -0.11400823f + t * (-0.014771522f + t * (0.01942168f + t * 0.0045392284f))))));
    return (t > -FM_ROOT_HALFWIDTH && t < FM_ROOT_HALFWIDTH) ? p : d;
}

FM_INLINE float fm_silu_grad_f32(float x) {
    float s = 1.0f / (1.0f + fm_exp_f32(-x));
    float d = s * (1.0f + x * (1.0f - s));
    float t = (x - FM_SILU_X0_HI) - FM_SILU_X0_LO;
    float p = t * (0.21781171f + t * (0.1466488f + t * (0.018874814f + t * (
        -0.015222655f + t * (-0.0066065891f + t * (0.00012662741f + t * 0.00079852188f))))));
    return (t > -FM_ROOT_HALFWIDTH && t < FM_ROOT_HALFWIDTH) ? p : d;
}

FM_DISPATCH static void fastml_gelu_fast_f32(const float *FM_RESTRICT x,
                                             float *FM_RESTRICT out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float ez, e = fm_gelu_erfc_f32(x[i], &ez, 0);
        out[i] = x[i] * fm_gelu_phi_cdf_f32(x[i], e);
    }
}

FM_DISPATCH static void fastml_silu_fast_f32(const float *FM_RESTRICT x,
                                             float *FM_RESTRICT out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + fm_exp_f32(-x[i]));
}

/* g * f'(x): float32 blocks, redone in double where some x is outside [lo, hi] (or NaN) */
#define FM_ACT_GRAD_LOOP(GRAD_F32, GRAD_D, LO, HI)                                        \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FM_ACT_BLOCK) {                                 \
        ptrdiff_t i1 = n - i0 < FM_ACT_BLOCK ? n : i0 + FM_ACT_BLOCK;                    \
        int outside = 0;                                                                 \
        for (ptrdiff_t i = i0; i < i1; i++) {                                            \
            out[i] = g[i] * GRAD_F32(x[i]);                                              \
            outside |= !(x[i] >= (LO) && x[i] <= (HI));                                  \
        }                                                                                \
        if (outside)                                                                     \
            for (ptrdiff_t i = i0; i < i1; i++)                                          \
                if (!(x[i] >= (LO) && x[i] <= (HI)))                                     \
                    out[i] = (float)((double)g[i] * GRAD_D((double)x[i]));               \
    }

/* gelu': the float32 path for |x| <= 6 (exp(-x*x/2) >= 1.5e-8, its exponent's
 * rounding < 1.1e-6 relative) */
FM_DISPATCH static void fastml_gelu_backward_fast_f32(const float *FM_RESTRICT g,
                                                      const float *FM_RESTRICT x,
                                                      float *FM_RESTRICT out, ptrdiff_t n) {
    FM_ACT_GRAD_LOOP(fm_gelu_grad_f32, fm_gelu_grad_d, -6.0f, 6.0f)
}

/* silu': the float32 path for x >= -80 (exp(-x) finite; +inf goes to double) */
FM_DISPATCH static void fastml_silu_backward_fast_f32(const float *FM_RESTRICT g,
                                                      const float *FM_RESTRICT x,
                                                      float *FM_RESTRICT out, ptrdiff_t n) {
    FM_ACT_GRAD_LOOP(fm_silu_grad_f32, fm_silu_grad_d, -80.0f, 3.0e38f)
}
#undef FM_ACT_GRAD_LOOP
#pragma GCC pop_options

/* --------------------------------------------------------- normalization loops */
/* layer_norm rows and batch_norm channel sums / planes, in double, rounded once; defined
 * once per dtype by including this file again with FM_NORM_T set (the #else branch). */
#define FM_NORM_T float
#define FM_NORM_SFX f32
#include "_kernels.h"
#undef FM_NORM_T
#undef FM_NORM_SFX
#define FM_NORM_T double
#define FM_NORM_SFX f64
#include "_kernels.h"
#undef FM_NORM_T
#undef FM_NORM_SFX

#endif /* FASTML_KERNELS_H */
#else  /* FM_NORM_T: the type-generic normalization loops */
#define FM_N(name) FM_CAT(name, FM_NORM_SFX)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")   /* as the reference: separate multiply and add */

/* NumPy's pairwise summation of a[:n] in double, bit for bit np.sum of the float64 row
 * (8 accumulators per block of at most 128 values, blocks split in halves rounded down
 * to a multiple of 8): the reference's means come out identical, so x - mean is exactly
 * 0 exactly where the reference's is. Each block's 8 accumulators are one vector whose
 * adds depend on each other; the up to 4 blocks of a subtree of at most 512 values are
 * summed in one interleaved loop (same per-block order, 4 independent chains). */
FM_INLINE double FM_N(fm_pw_block)(const FM_NORM_T *FM_RESTRICT a, ptrdiff_t n) {
    double res, r[8];
    ptrdiff_t i;
    if (n < 8) {
        res = 0.0;
        for (i = 0; i < n; i++) res += a[i];
        return res;
    }
    for (int k = 0; k < 8; k++) r[k] = a[k];
    for (i = 8; i < n - n % 8; i += 8)
        for (int k = 0; k < 8; k++) r[k] += a[i + k];
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
}

/* the pairwise sum of 128 < n <= 512 values whose blocks (2 to 4, each of at least 56)
 * are the halves or the halves' halves */
FM_INLINE double FM_N(fm_pw_subtree)(const FM_NORM_T *FM_RESTRICT a, ptrdiff_t n) {
    ptrdiff_t off[4], len[4], h[2], hoff[2], m, i;
    int nb = 0, split[2];
    double r[4][8], sum[4];
    h[0] = n / 2;
    h[0] -= h[0] % 8;
    h[1] = n - h[0];
    hoff[0] = 0;
    hoff[1] = h[0];
    for (int s = 0; s < 2; s++) {
        split[s] = h[s] > 128;
        if (split[s]) {
            ptrdiff_t q = h[s] / 2;
            q -= q % 8;
            off[nb] = hoff[s];
            len[nb++] = q;
            off[nb] = hoff[s] + q;
            len[nb++] = h[s] - q;
        } else {
            off[nb] = hoff[s];
            len[nb++] = h[s];
        }
    }
    for (int b = nb; b < 4; b++) {   /* dummy blocks: block 0 again, discarded */
        off[b] = off[0];
        len[b] = len[0];
    }
    m = len[0] - len[0] % 8;
    for (int b = 1; b < 4; b++) m = len[b] - len[b] % 8 < m ? len[b] - len[b] % 8 : m;
    for (int b = 0; b < 4; b++)
        for (int k = 0; k < 8; k++) r[b][k] = a[off[b] + k];
    for (i = 8; i < m; i += 8)
        for (int b = 0; b < 4; b++)
            for (int k = 0; k < 8; k++) r[b][k] += a[off[b] + i + k];
    for (int b = 0; b < nb; b++) {
        const FM_NORM_T *FM_RESTRICT p = a + off[b];
        ptrdiff_t j, e = len[b] - len[b] % 8;
        for (j = m; j < e; j += 8)
            for (int k = 0; k < 8; k++) r[b][k] += p[j + k];
        sum[b] = ((r[b][0] + r[b][1]) + (r[b][2] + r[b][3])) +
                 ((r[b][4] + r[b][5]) + (r[b][6] + r[b][7]));
        for (; j < len[b]; j++) sum[b] += p[j];
    }
    if (split[0] && split[1]) return (sum[0] + sum[1]) + (sum[2] + sum[3]);
    if (split[0]) return (sum[0] + sum[1]) + sum[2];
    if (split[1]) return sum[0] + (sum[1] + sum[2]);
    return sum[0] + sum[1];
}

FM_DISPATCH static double FM_N(fastml_pairwise)(const FM_NORM_T *FM_RESTRICT a, ptrdiff_t n) {
    ptrdiff_t n2;
    if (n <= 128) return FM_N(fm_pw_block)(a, n);
    n2 = n / 2;
    n2 -= n2 % 8;
    if (n <= 512) {   /* its blocks: the halves, or their halves where over 128 */
        ptrdiff_t h = n - n2, q = h / 2;   /* h >= n2: the larger half */
        if (h <= 128 || h - (q - q % 8) <= 128) return FM_N(fm_pw_subtree)(a, n);
    }
    return FM_N(fastml_pairwise)(a, n2) + FM_N(fastml_pairwise)(a + n2, n - n2);
}

/* mean (pairwise sum / n, as the reference) and biased variance of a row */
FM_INLINE void FM_N(fm_row_moments)(const FM_NORM_T *FM_RESTRICT x, ptrdiff_t n,
                                    double *mean, double *var) {
    double acc[FM_LANES] = {0}, mu = FM_N(fastml_pairwise)(x, n) / n;
    ptrdiff_t j = 0;
    for (; j + FM_LANES <= n; j += FM_LANES)
        for (int k = 0; k < FM_LANES; k++) {
            double d = x[j + k] - mu;
            acc[k] += d * d;
        }
    for (int k = 0; j + k < n; k++) {
        double d = x[j + k] - mu;
        acc[k] += d * d;
    }
    *mean = mu;
    *var = fm_lanes_sum(acc) / n;
}

/* layer_norm of rows [lo, hi) of x (rows of n): (x - mean) / sqrt(var + eps) * w + b */
FM_DISPATCH static void FM_N(fastml_layer_norm_rows)(const FM_NORM_T *FM_RESTRICT x,
                                                     const FM_NORM_T *FM_RESTRICT w,
                                                     const FM_NORM_T *FM_RESTRICT b,
                                                     double eps, FM_NORM_T *FM_RESTRICT out,
                                                     ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t n) {
    for (ptrdiff_t i = lo; i < hi; i++) {
        const FM_NORM_T *FM_RESTRICT xr = x + i * n;
        FM_NORM_T *FM_RESTRICT o = out + i * n;
        double mu, var, inv;
        FM_N(fm_row_moments)(xr, n, &mu, &var);
        inv = 1.0 / sqrt(var + eps);
        if (w && b)
            for (ptrdiff_t j = 0; j < n; j++)
                o[j] = (FM_NORM_T)(((xr[j] - mu) * inv) * w[j] + b[j]);
        else if (w)
            for (ptrdiff_t j = 0; j < n; j++) o[j] = (FM_NORM_T)(((xr[j] - mu) * inv) * w[j]);
        else if (b)
            for (ptrdiff_t j = 0; j < n; j++) o[j] = (FM_NORM_T)(((xr[j] - mu) * inv) + b[j]);
        else
            for (ptrdiff_t j = 0; j < n; j++) o[j] = (FM_NORM_T)((xr[j] - mu) * inv);
    }
}

/* layer_norm_backward of rows [lo, hi); with w, adds sum(g xhat) and sum(g) of each
 * column to colw / colb (row order). Row sums in FM_LANES accumulators. */
FM_DISPATCH static void FM_N(fastml_layer_norm_backward_rows)(
        const FM_NORM_T *FM_RESTRICT g, const FM_NORM_T *FM_RESTRICT x,
        const FM_NORM_T *FM_RESTRICT w, double eps, FM_NORM_T *FM_RESTRICT gx,
        ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t n, double *FM_RESTRICT colw,
        double *FM_RESTRICT colb) {
    for (ptrdiff_t i = lo; i < hi; i++) {
        const FM_NORM_T *FM_RESTRICT xr = x + i * n;
        const FM_NORM_T *FM_RESTRICT gr = g + i * n;
        FM_NORM_T *FM_RESTRICT o = gx + i * n;
        double s[FM_LANES] = {0}, t[FM_LANES] = {0}, mu, var, inv, mg, mgx;
        ptrdiff_t j = 0;
        FM_N(fm_row_moments)(xr, n, &mu, &var);
        inv = 1.0 / sqrt(var + eps);
        if (w) {
            for (; j + FM_LANES <= n; j += FM_LANES)
                for (int k = 0; k < FM_LANES; k++) {
                    double xh = (xr[j + k] - mu) * inv, gj = gr[j + k], gw = gj * w[j + k];
                    colw[j + k] += gj * xh;
                    colb[j + k] += gj;
                    s[k] += gw;
                    t[k] += gw * xh;
                }
            for (int k = 0; j + k < n; k++) {
                double xh = (xr[j + k] - mu) * inv, gj = gr[j + k], gw = gj * w[j + k];
                colw[j + k] += gj * xh;
                colb[j + k] += gj;
                s[k] += gw;
                t[k] += gw * xh;
            }
            mg = fm_lanes_sum(s) / n;
            mgx = fm_lanes_sum(t) / n;
            for (j = 0; j < n; j++)
                o[j] = (FM_NORM_T)(inv * (((double)gr[j] * w[j] - mg) -
                                          ((xr[j] - mu) * inv) * mgx));
        } else {
            for (; j + FM_LANES <= n; j += FM_LANES)
                for (int k = 0; k < FM_LANES; k++) {
                    double xh = (xr[j + k] - mu) * inv, gj = gr[j + k];
                    s[k] += gj;
                    t[k] += gj * xh;
                }
            for (int k = 0; j + k < n; k++) {
                double xh = (xr[j + k] - mu) * inv, gj = gr[j + k];
                s[k] += gj;
                t[k] += gj * xh;
            }
            mg = fm_lanes_sum(s) / n;
            mgx = fm_lanes_sum(t) / n;
            for (j = 0; j < n; j++)
                o[j] = (FM_NORM_T)(inv * (((double)gr[j] - mg) - ((xr[j] - mu) * inv) * mgx));
        }
    }
}

/* batch_norm: the shifted sums of one (n, c) segment of L values added to the lane
 * accumulators sums[0..3][FM_LANES] (x - s, (x - s)**2, and with g: g, g (x - s)). */
FM_INLINE void FM_N(fm_bn_seg)(const FM_NORM_T *FM_RESTRICT xs, const FM_NORM_T *FM_RESTRICT gs,
                               ptrdiff_t L, double sh, double *FM_RESTRICT a,
                               double *FM_RESTRICT q, double *FM_RESTRICT b,
                               double *FM_RESTRICT e, int with_g) {
    ptrdiff_t l = 0;
    for (; l + FM_LANES <= L; l += FM_LANES)
        for (int k = 0; k < FM_LANES; k++) {
            double v = xs[l + k] - sh;
            a[k] += v;
            q[k] += v * v;
            if (with_g) {
                double gv = gs[l + k];
                b[k] += gv;
                e[k] += gv * v;
            }
        }
    for (int k = 0; l + k < L; k++) {
        double v = xs[l + k] - sh;
        a[k] += v;
        q[k] += v * v;
        if (with_g) {
            double gv = gs[l + k];
            b[k] += gv;
            e[k] += gv * v;
        }
    }
}

/* Channel c of x (N, C, L) (and g): res[0] = the sum of NumPy's pairwise sums of the
 * segments (C > 1; else 0), res[1..4] = sum(x - sh), sum((x - sh)**2), sum(g),
 * sum(g (x - sh)) (the last two with g only). */
FM_DISPATCH static void FM_N(fastml_bn_channel_sums)(const FM_NORM_T *FM_RESTRICT x,
                                                     const FM_NORM_T *FM_RESTRICT g,
                                                     ptrdiff_t N, ptrdiff_t C, ptrdiff_t L,
                                                     ptrdiff_t c, double sh, double *res) {
    double a[FM_LANES] = {0}, q[FM_LANES] = {0}, b[FM_LANES] = {0}, e[FM_LANES] = {0};
    double mu = 0;
    for (ptrdiff_t n = 0; n < N; n++) {
        const FM_NORM_T *xs = x + (n * C + c) * L;
        if (C > 1) mu += FM_N(fastml_pairwise)(xs, L);
        if (g)
            FM_N(fm_bn_seg)(xs, g + (n * C + c) * L, L, sh, a, q, b, e, 1);
        else
            FM_N(fm_bn_seg)(xs, xs, L, sh, a, q, b, e, 0);
    }
    res[0] = mu;
    res[1] = fm_lanes_sum(a);
    res[2] = fm_lanes_sum(q);
    res[3] = fm_lanes_sum(b);
    res[4] = fm_lanes_sum(e);
}

/* out = x * a + b over a plane, in double, rounded once */
FM_DISPATCH static void FM_N(fastml_bn_apply_plane)(const FM_NORM_T *FM_RESTRICT x, double a,
                                                    double b, FM_NORM_T *FM_RESTRICT out,
                                                    ptrdiff_t L) {
    for (ptrdiff_t l = 0; l < L; l++) out[l] = (FM_NORM_T)(x[l] * a + b);
}

/* out = k ((g - a) - (x - mu) inv b) over a plane, in double, rounded once */
FM_DISPATCH static void FM_N(fastml_bn_backward_apply_plane)(
        const FM_NORM_T *FM_RESTRICT g, const FM_NORM_T *FM_RESTRICT x, double mu,
        double inv, double k, double a, double b, FM_NORM_T *FM_RESTRICT out, ptrdiff_t L) {
    for (ptrdiff_t l = 0; l < L; l++)
        out[l] = (FM_NORM_T)(k * ((g[l] - a) - ((x[l] - mu) * inv) * b));
}

#pragma GCC pop_options
#undef FM_N
#endif /* FM_NORM_T */
