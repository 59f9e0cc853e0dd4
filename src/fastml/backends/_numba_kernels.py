"""njit kernels of the numba CPU backend (the dispatch lives in ``numba_cpu``).

Kernels get C-contiguous arrays of one float dtype, already validated, and
never allocate their outputs (except the per-chunk partials of reductions).
Reductions accumulate in float64. Constants are made with ``x.dtype.type``
so float32 kernels do float32 math, as the reference and PyTorch do.
``error_model='numpy'``: a float division by zero gives inf/NaN, not an
exception. Nothing compiles at import: numba compiles on first call.

Kernels written with ``prange`` come as a :class:`Twin`: a serial dispatcher
(prange runs as range) for small inputs and a ``parallel=True`` one for big
inputs. Reductions take ``nchunks``: the rows are split into that many chunks
whose partial results are merged, so the serial twin runs with one chunk.
"""
from __future__ import annotations

from types import FunctionType
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload


def _cache_probe():
    """Decorated with cache=True below only to ask numba for a cache locator."""


def _cache_usable() -> bool:
    # numba raises at decoration time when no cache directory is writable; a
    # read-only install then runs without the disk cache instead of failing.
    try:
        njit(cache=True)(_cache_probe)
    except (RuntimeError, OSError):
        return False
    return True


# Compiled kernels are cached on disk in backends/__pycache__ next to this
# file when it is writable, else in NUMBA_CACHE_DIR or the user cache dir
# (~/.cache/numba); with none writable, CACHE is False and kernels recompile per process.
CACHE = _cache_usable()
_OPTS = dict(cache=CACHE, nogil=True, error_model="numpy")
kernel = njit(**_OPTS)


class Twin(NamedTuple):
    serial: object
    parallel: object


def twin(fn) -> Twin:
    """Serial and parallel dispatchers of one kernel body.

    The parallel one compiles a renamed copy of ``fn``: numba's disk cache
    keys on the function's name and bytecode, not on ``parallel=``, so the
    twins would otherwise overwrite each other's cache entries.
    """
    par = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                             fn.__defaults__, fn.__closure__)
    par.__qualname__ = fn.__qualname__ + "_parallel"
    par.__module__ = fn.__module__
    return Twin(njit(**_OPTS)(fn), njit(parallel=True, **_OPTS)(par))


# ------------------------------------------------------------ exp and tanh
# libm's exp/tanh are scalar calls that block vectorization (numba has no
# SVML here), about 10x slower than NumPy's SIMD loops. These branch-free
# Cephes versions vectorize. Measured max error: float32 exp and tanh 1 ulp
# (vs correctly rounded), float64 exp and tanh 2 ulp (vs libm); NaN/inf,
# overflow and subnormal results as libm.
# 'contract' only fuses multiply-adds (no finite-math assumption).
_math = njit(fastmath={"contract"}, **_OPTS)


@intrinsic
def _from_bits(typingctx, i):
    """The float of the same width whose bits are the integer i."""
    ftype = {types.int32: types.float32, types.int64: types.float64}.get(i)
    if ftype is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(ftype))
    return ftype(i), codegen


@intrinsic
def _maxnum(typingctx, a, b):
    """llvm.maxnum: the larger, ignoring a NaN; unlike a compare-and-select,
    a loop of it vectorizes without fast-math flags."""
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(fn, args)
    return a(a, b), codegen


@_math
def _exp_f32(x):
    f = np.float32
    n = np.floor(x * f(1.4426950408889634) + f(0.5))
    r = x - n * f(0.693359375) - n * f(-2.12194440e-4)  # ln2 split in two: exact n*hi
    p = ((((f(1.9875691500e-4) * r + f(1.3981999507e-3)) * r + f(8.3334519073e-3)) * r
          + f(4.1665795894e-2)) * r + f(1.6666665459e-1)) * r + f(5.0000001201e-1)
    p = p * (r * r) + r + f(1.0)
    # 2**n as two normal factors, applied one after the other: one rounding
    # for subnormal results.
    ni = np.int32(min(max(n, f(-152.0)), f(128.0)))
    half = ni >> np.int32(1)
    i32 = np.int32  # numba widens int32 arithmetic to int64: narrow it back
    res = (p * _from_bits(i32((half + i32(127)) << i32(23)))
           * _from_bits(i32((ni - half + i32(127)) << i32(23))))
    res = f(np.inf) if x > f(88.72284) else res
    res = f(0.0) if x < f(-104.0) else res
    return x if x != x else res


@_math
def _exp_f64(x):
    f = np.float64
    n = np.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6  # exact n*hi
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    q = (((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
          + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0)
    p = 1.0 + 2.0 * (px / (q - px))
    ni = np.int64(min(max(n, f(-1080.0)), f(1025.0)))
    half = ni >> np.int64(1)
    res = (p * _from_bits((half + np.int64(1023)) << np.int64(52))
           * _from_bits((ni - half + np.int64(1023)) << np.int64(52)))
    res = np.inf if x > 709.782712893384 else res
    res = 0.0 if x < -746.0 else res
    return x if x != x else res


@_math
def _tanh_f32(x):
    f = np.float32
    a = abs(x)
    z = x * x
    small = ((((f(-5.70498872745e-3) * z + f(2.06390887954e-2)) * z - f(5.37397155531e-2)) * z
              + f(1.33314422036e-1)) * z - f(3.33332819422e-1)) * z * x + x
    big = f(1.0) - f(2.0) / (_exp_f32(a + a) + f(1.0))
    big = -big if x < f(0.0) else big
    return big if a >= f(0.625) else small  # NaN takes the small branch: NaN


@_math
def _tanh_f64(x):
    a = abs(x)
    z = x * x
    small = x + x * z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                          - 1.61468768441708447952e3)
                         / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                            + 4.84406305325125486048e3))
    big = 1.0 - 2.0 / (_exp_f64(a + a) + 1.0)
    big = -big if x < 0.0 else big
    return big if a >= 0.625 else small  # NaN takes the small branch: NaN


@intrinsic
def _to_bits(typingctx, x):
    """The integer of the same width whose bits are the float x."""
    itype = {types.float32: types.int32, types.float64: types.int64}.get(x)
    if itype is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(itype))
    return itype(x), codegen


# log: Cephes' logf / log (x = m * 2**e, m in [sqrt(1/2), sqrt(2)), log(1 + (m - 1))
# by polynomial, e*ln2 added in two parts), with frexp done on the bits:
# branch-free, so loops of it vectorize. Subnormals are scaled up first;
# 0 -> -inf, x < 0 -> NaN, inf and NaN pass, as libm.
@_math
def _log_f32(x):
    f = np.float32
    i32 = np.int32  # numba widens int32 arithmetic to int64: narrow it back
    tiny = x < f(1.17549435e-38)
    i = _to_bits(x * f(16777216.0) if tiny else x)  # subnormals: times 2**24
    e = i32(i32(i >> i32(23)) & i32(0xff)) - i32(126) - (i32(24) if tiny else i32(0))
    m = _from_bits(i32(i32(i & i32(0x007fffff)) | i32(0x3f000000)))  # in [0.5, 1)
    low = m < f(0.707106781186547524)
    fe = f(e - i32(1) if low else e)
    m = (m + m - f(1.0)) if low else (m - f(1.0))
    z = m * m
    y = ((((((((f(7.0376836292e-2) * m - f(1.1514610310e-1)) * m + f(1.1676998740e-1)) * m
               - f(1.2420140846e-1)) * m + f(1.4249322787e-1)) * m - f(1.6668057665e-1)) * m
            + f(2.0000714765e-1)) * m - f(2.4999993993e-1)) * m + f(3.3333331174e-1)) * m * z
    y = y + f(-2.12194440e-4) * fe - f(0.5) * z
    r = m + y + f(0.693359375) * fe
    r = x if x == f(np.inf) else r
    r = f(-np.inf) if x == f(0.0) else r
    r = f(np.nan) if x < f(0.0) else r
    return x if x != x else r


@_math
def _log_f64(x):
    i64 = np.int64
    tiny = x < 2.2250738585072014e-308
    i = _to_bits(x * 18014398509481984.0 if tiny else x)  # subnormals: times 2**54
    e = ((i >> i64(52)) & i64(0x7ff)) - i64(1022) - (i64(54) if tiny else i64(0))
    m = _from_bits((i & i64(0x000fffffffffffff)) | i64(0x3fe0000000000000))  # in [0.5, 1)
    low = m < 0.70710678118654752440
    fe = np.float64(e - i64(1) if low else e)
    m = (m + m - 1.0) if low else (m - 1.0)
    z = m * m
    p = ((((1.01875663804580931796e-4 * m + 4.97494994976747001425e-1) * m
           + 4.70579119878881725854e0) * m + 1.44989225341610930846e1) * m
         + 1.79368678507819816313e1) * m + 7.70838733755885391666e0
    q = ((((m + 1.12873587189167450590e1) * m + 4.52279145837532221105e1) * m
          + 8.29875266912776603211e1) * m + 7.11544750618563894466e1) * m + 2.31251620126765340583e1
    y = m * (z * p / q) - fe * 2.121944400546905827679e-4 - 0.5 * z
    r = m + y + fe * 0.693359375
    r = x if x == np.inf else r
    r = -np.inf if x == 0.0 else r
    r = np.nan if x < 0.0 else r
    return x if x != x else r


@_math
def _log1p_f32(a):
    """log(u) - ((u - 1) - a) / u with u = 1 + a: log of the rounded sum,
    corrected by its rounding error (exact a for tiny a)."""
    f = np.float32
    u = a + f(1.0)
    r = _log_f32(u)
    fixed = r - ((u - f(1.0)) - a) / u
    return r if (u == f(0.0)) | (u == f(np.inf)) else fixed  # -1 -> -inf, inf -> inf


@_math
def _log1p_f64(a):
    u = a + 1.0
    r = _log_f64(u)
    fixed = r - ((u - 1.0) - a) / u
    return r if (u == 0.0) | (u == np.inf) else fixed


@njit(fastmath={"contract"}, inline="always", **_OPTS)
def _erf_f64(x):
    """Cephes' erf (as SciPy's): x T(x^2) / U(x^2) for |x| <= 1, else
    1 - erfc(|x|) with erfc = exp(-x^2) P(|x|) / Q(|x|), signed. Branch-free,
    so loops of it vectorize (libm's erf is a scalar call). |x| is clamped to
    6.5 in the erfc part (erf is 1 there in float64; keeps inf out of P/Q).
    inline='always': LLVM leaves a call to it (too big to inline), and a call blocks
    the vector loop."""
    a = abs(x)
    z = x * x
    t = (((9.60497373987051638749e0 * z + 9.00260197203842689217e1) * z
          + 2.23200534594684319226e3) * z + 7.00332514112805075473e3) * z + 5.55923013010394962768e4
    u = ((((z + 3.35617141647503099647e1) * z + 5.21357949780152679795e2) * z
          + 4.59432382970980127987e3) * z + 2.26290000613890934246e4) * z + 4.92673942608635921086e4
    small = x * t / u
    c = a if a < 6.5 else 6.5
    p = (((((((2.46196981473530512524e-10 * c + 5.64189564831068821977e-1) * c
              + 7.46321056442269912687e0) * c + 4.86371970985681366614e1) * c
            + 1.96520832956077098242e2) * c + 5.26445194995477358631e2) * c
          + 9.34528527171957607540e2) * c + 1.02755188689515710272e3) * c + 5.57535335369399327526e2
    q = (((((((c + 1.32281951154744992508e1) * c + 8.67072140885989742329e1) * c
             + 3.54937778887819891062e2) * c + 9.75708501743205489753e2) * c
           + 1.82390916687909736289e3) * c + 2.24633760818710981792e3) * c
         + 1.65666309194161350182e3) * c + 5.57535340817727675546e2
    big = 1.0 - _exp_f64(-(c * c)) * p / q
    big = -big if x < 0.0 else big
    r = small if a <= 1.0 else big
    return x if x != x else r


def fexp(x):
    """exp in the argument's precision, vectorizable."""
    return np.exp(x)


def ftanh(x):
    """tanh in the argument's precision, vectorizable."""
    return np.tanh(x)


def flog(x):
    """log in the argument's precision, vectorizable."""
    return np.log(x)


def flog1p(x):
    """log1p in the argument's precision, vectorizable."""
    return np.log1p(x)


@overload(fexp)
def _fexp(x):
    return (lambda x: _exp_f32(x)) if x == types.float32 else (lambda x: _exp_f64(x))


@overload(ftanh)
def _ftanh(x):
    return (lambda x: _tanh_f32(x)) if x == types.float32 else (lambda x: _tanh_f64(x))


@overload(flog)
def _flog(x):
    return (lambda x: _log_f32(x)) if x == types.float32 else (lambda x: _log_f64(x))


@overload(flog1p)
def _flog1p(x):
    return (lambda x: _log1p_f32(x)) if x == types.float32 else (lambda x: _log1p_f64(x))


# ---------------------------------------------------------------- linear
@twin
def add_bias(out, bias):
    """out (rows, F) += bias (F,), in place."""
    for r in prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] += bias[j]


@twin
def column_sum(a, nchunks):
    """float64 column sums of a (rows, F), rows read in order."""
    rows, f = a.shape
    part = np.zeros((nchunks, f))
    per = (rows + nchunks - 1) // nchunks
    for k in prange(nchunks):
        acc = part[k]
        for r in range(k * per, min(rows, (k + 1) * per)):
            for j in range(f):
                acc[j] += a[r, j]
    total = part[0]
    for k in range(1, nchunks):
        total += part[k]
    return total


# ----------------------------------------------------------- element-wise
@twin
def relu(x, out):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        out[i] = zero if v <= zero else v  # NaN <= 0 is False: NaN passes


@twin
def relu_backward(g, x, out):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        out[i] = zero if x[i] <= zero else g[i]


@twin
def leaky_relu(x, slope, out):
    zero = x.dtype.type(0)
    s = x.dtype.type(slope)
    for i in prange(x.size):
        v = x[i]
        out[i] = v if v > zero else v * s  # NaN > 0 is False: NaN * s is NaN


@twin
def leaky_relu_backward(g, x, slope, out):
    zero = x.dtype.type(0)
    s = x.dtype.type(slope)
    for i in prange(x.size):
        out[i] = g[i] if x[i] > zero else g[i] * s


# These gelu and silu kernels evaluate in float64 and round once, as the reference
# does (for float32 inputs only gelu 'tanh' comes here; 'none' and silu have float32
# kernels below): near the roots of their derivatives (x ~ -0.752 for gelu', ~ -1.278
# for silu') float32 arithmetic in the reference's formulas cancels badly. The formulas
# and their order are the reference's, so that a derivative that underflows
# to 0 does so here too (0 * inf = NaN there as here).
_SQRT_HALF = 0.7071067811865476        # 1 / sqrt(2)
_SQRT_2_OVER_PI = 0.7978845608028654   # sqrt(2 / pi)
_INV_SQRT_2PI = 0.3989422804014327     # 1 / sqrt(2 pi)
_GELU_KAPPA = 0.044715


@twin
def gelu_erf(x, out):
    for i in prange(x.size):
        v = np.float64(x[i])
        out[i] = v * (0.5 * (1.0 + _erf_f64(v * _SQRT_HALF)))


@twin
def gelu_tanh(x, out):
    for i in prange(x.size):
        v = np.float64(x[i])
        t = ftanh(_SQRT_2_OVER_PI * (v + _GELU_KAPPA * (v * v * v)))
        out[i] = v * (0.5 * (1.0 + t))


@twin
def gelu_erf_backward(g, x, out):
    for i in prange(x.size):
        v = np.float64(x[i])
        d = 0.5 * (1.0 + _erf_f64(v * _SQRT_HALF)) + v * fexp(-0.5 * v * v) * _INV_SQRT_2PI
        out[i] = np.float64(g[i]) * d


@twin
def gelu_tanh_backward(g, x, out):
    for i in prange(x.size):
        v = np.float64(x[i])
        t = ftanh(_SQRT_2_OVER_PI * (v + _GELU_KAPPA * (v * v * v)))
        d_inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_KAPPA * v * v)
        d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * d_inner
        out[i] = np.float64(g[i]) * d


@twin
def silu(x, out):
    for i in prange(x.size):
        v = np.float64(x[i])
        out[i] = v / (1.0 + fexp(-v))


@twin
def silu_backward(g, x, out):
    for i in prange(x.size):
        v = np.float64(x[i])
        s = 1.0 / (1.0 + fexp(-v))
        out[i] = np.float64(g[i]) * (s * (1.0 + v * (1.0 - s)))


# float32 gelu ('none') and silu in float32 arithmetic (16 lanes, against 8 of float64),
# in forms that do not cancel (the cuda kernels' forms): sigmoid and 1 - sigmoid both
# from exp(-|x|); (1 + erf(x / sqrt 2)) / 2 from erfc(|x| / sqrt 2) (_f32_phi). Near a
# derivative's root its two terms cancel and a degree-6 polynomial fitted to the
# reference takes over: root = (r_hi, r_lo, w, a0..a6) (numba_cpu._f32_consts).
# _f32_as_reference gives the derivative the reference's zeros, so that an infinite
# grad_out gives its +-inf / NaN. Checked exhaustively over every float32 within 0.35 of
# both roots and on a 1-in-211 sweep of [-20, 20] / [-100, 100] (grad_out +-100, +-inf):
# at most 16% of the float32 tolerance (rtol 1e-5, atol 1e-6).
@intrinsic
def _prefer_512(typingctx):
    """Lets LLVM vectorize the enclosing function's loops 512 bits wide: the host tuning
    (prefer-vector-width=256 on AVX-512 CPUs) otherwise keeps float32 loops at 8 lanes.
    Call it in the loop body (a prange body is a function of its own)."""
    def codegen(context, builder, sig, args):
        # a string attribute, which llvmlite's FunctionAttributes has no name for
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: a vector FMA in vectorized loops; exact but a
    libm call on a CPU without FMA)."""
    def codegen(context, builder, sig, args):
        t = args[0].type
        fma = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t] * 3))
        return builder.call(fma, args)
    return a(a, b, c), codegen


def _twin_contract(fn) -> Twin:
    """twin with fused multiply-adds ('contract' only), for the float32 gelu / silu."""
    par = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                       fn.__defaults__, fn.__closure__)
    par.__qualname__ = fn.__qualname__ + "_parallel"
    par.__module__ = fn.__module__
    opts = dict(fastmath={"contract"}, **_OPTS)
    return Twin(njit(**opts)(fn), njit(parallel=True, **opts)(par))


@_math
def _exp_f32_neg(x):
    """exp(x) for x <= 0 (NaN: NaN) as _exp_f32, but results below the smallest normal
    flush to 0: n = round(x / ln2) by adding and subtracting 1.5 * 2**23 (whose low
    mantissa bits then hold n), one scale factor, no float-to-int conversion."""
    f = np.float32
    i32 = np.int32
    kf = x * f(1.4426950408889634) + f(12582912.0)
    n = kf - f(12582912.0)
    r = x - n * f(0.693359375) - n * f(-2.12194440e-4)
    p = ((((f(1.9875691500e-4) * r + f(1.3981999507e-3)) * r + f(8.3334519073e-3)) * r
          + f(4.1665795894e-2)) * r + f(1.6666665459e-1)) * r + f(5.0000001201e-1)
    p = p * (r * r) + r + f(1.0)
    # n in [-126, 0] where the result is kept: (n + 127) << 23 is 2**n
    res = p * _from_bits(i32(i32(_to_bits(kf) - i32(0x4B400000 - 127)) << i32(23)))
    return f(0.0) if x < f(-87.33654) else res


@_math
def _f32_near_root(d, x, root):
    h = (x - root[0]) - root[1]
    p = ((((((root[9] * h + root[8]) * h + root[7]) * h + root[6]) * h + root[5]) * h
          + root[4]) * h + root[3])
    return p if abs(h) < root[2] else d


@_math
def _f32_as_reference(d, x, lo):
    """0 (times d: NaN stays NaN) for x <= lo, where the float64 reference underflows;
    the smallest subnormal, negative, where only float32 does (the left tails)."""
    f = np.float32
    d = -f(1.401298464324817e-45) if d == f(0.0) else d
    return d * f(0.0) if x <= lo else d


@njit(fastmath={"contract"}, inline="always", **_OPTS)
def _f32_phi(x):
    """(Phi(x), h, e): Phi(x) = (1 + erf(x / sqrt 2)) / 2, e = exp(-x^2 / 2) and
    h = erfc(a) / (2 e) = exp(a^2) erfc(a) / 2, a = |x| / sqrt 2, as t Q(t),
    t = 1 / (1 + a / 2): Q is a degree-9 polynomial fitted (least squares, relative) to
    exp(a^2) erfc(a) / (2 t) over all a >= 0 (t in (0, 1]), error 1.7e-7, 2.9e-7
    evaluated in float32. erfc's relative accuracy leaves Phi(x) = h e for x < 0 without
    cancellation. One division and one exp, e shared with the derivative."""
    f = np.float32
    t = f(1.0) / (f(1.0) + f(0.5 * _SQRT_HALF) * abs(x))
    q = ((((((((f(-0.012767858312223157) * t + f(0.032215423112666924)) * t
               + f(0.015492089110939354)) * t - f(0.09948421404666435)) * t
             + f(0.03991776815353474)) * t + f(0.029044071048516484)) * t
           + f(0.09022980697214845)) * t + f(0.12325318880640852)) * t
         + f(0.14105226737338944)) * t + f(0.1410473714790191)
    h = t * q
    x2 = x * x
    e = _exp_f32_neg(-(f(0.5) * x2))
    # exp(-(x2 + d) / 2) = e (1 - d / 2), d = x * x - x2 exactly (an FMA): without it
    # x2's rounding, relative 6e-8 of x^2 / 2, is e's error (4e-6 at x = -13). |x| >= 20
    # (e is 0) and NaN skip it (inf * inf - inf is NaN).
    e = e - e * (f(0.5) * _fma(x, x, -x2)) if abs(x) < f(20.0) else e
    hc = h * e  # erfc(a) / 2
    return (hc if x < f(0.0) else f(1.0) - hc), h, e


@_twin_contract
def gelu_erf_f32(x, out):
    for i in prange(x.size):
        _prefer_512()
        v = x[i]
        phi, h, e = _f32_phi(v)
        out[i] = v * phi


@_twin_contract
def gelu_erf_backward_f32(g, x, lo, root, out):
    f = np.float32
    for i in prange(x.size):
        _prefer_512()
        v = x[i]
        phi, h, e = _f32_phi(v)
        # x < 0: e (h + x / sqrt(2 pi)), e factored out: its tail keeps its sign
        d = e * (h + v * f(_INV_SQRT_2PI)) if v < f(0.0) else phi + v * e * f(_INV_SQRT_2PI)
        out[i] = g[i] * _f32_as_reference(_f32_near_root(d, v, root), v, lo)


@_twin_contract
def silu_f32(x, out):
    f = np.float32
    for i in prange(x.size):
        _prefer_512()
        v = x[i]
        e = _exp_f32_neg(-abs(v))
        out[i] = v * ((f(1.0) if v >= f(0.0) else e) / (f(1.0) + e))


@_twin_contract
def silu_backward_f32(g, x, lo, root, out):
    f = np.float32
    for i in prange(x.size):
        _prefer_512()
        v = x[i]
        e = _exp_f32_neg(-abs(v))
        rd = f(1.0) / (f(1.0) + e)
        # s (1 + x (1 - s)) = A / (1 + e)^2 with A = (1 + e) + x e for x >= 0 and
        # A = e ((1 + x) + e) for x < 0 (1 + x exact near the root): no cancellation
        a = (f(1.0) + e) + v * e if v >= f(0.0) else e * ((f(1.0) + v) + e)
        d = (a * rd) * rd
        out[i] = g[i] * _f32_as_reference(_f32_near_root(d, v, root), v, lo)


@twin
def sigmoid(x, out):
    one = x.dtype.type(1)
    for i in prange(x.size):
        out[i] = one / (one + fexp(-x[i]))


@twin
def sigmoid_backward(g, y, out):
    one = y.dtype.type(1)
    for i in prange(y.size):
        out[i] = g[i] * (one - y[i]) * y[i]


@twin
def tanh(x, out):
    for i in prange(x.size):
        out[i] = ftanh(x[i])


@twin
def tanh_backward(g, y, out):
    one = y.dtype.type(1)
    for i in prange(y.size):
        out[i] = g[i] * (one - y[i] * y[i])


# --------------------------------------------------------------- row-wise
# Each pass over a row is a loop of its own so that it vectorizes. Sums of a
# row are marked 'reassoc' (no finite-math assumption): only then may LLVM
# split them into vector lanes, which also bounds their rounding error like
# NumPy's pairwise sum. Sums of exp(x - max) accumulate in the input dtype,
# as the reference's ``np.exp(shifted).sum()`` (a float64 accumulator would
# halve the vector width); other sums in float64. The row max is
# llvm.maxnum, which skips NaN; the callers still give NaN for a row with NaN
# (or +inf, or only -inf) because its sum of exp(x - max) is NaN, as in the
# reference.
_sum_kernel = njit(fastmath={"reassoc"}, **_OPTS)


# Loops over xr[lo:hi] count in unsigned integers: a signed index costs a
# negative-index check per element, which turns vector loads into gathers.
@kernel
def _row_max(xr, lo, hi):
    """max of xr[lo:hi] (non-empty), ignoring NaN."""
    m = xr[lo]
    for j in range(np.uint64(lo + 1), np.uint64(hi)):
        m = _maxnum(m, xr[j])
    return m


@_sum_kernel
def _exp_sum(xr, lo, hi, m):
    """Sum of exp(x - m) over xr[lo:hi]."""
    s = xr.dtype.type(0)
    for j in range(np.uint64(lo), np.uint64(hi)):
        s += fexp(xr[j] - m)
    return s


@_sum_kernel
def _exp_shifted(xr, m, out):
    """out = exp(x - m); returns the sum of out."""
    s = xr.dtype.type(0)
    for j in range(xr.size):
        e = fexp(xr[j] - m)
        out[j] = e
        s += e
    return s


@_sum_kernel
def _dot64(a, b):
    """float64 sum of a*b (products in the input dtype)."""
    s = 0.0
    for j in range(a.size):
        s += a[j] * b[j]
    return s


@_sum_kernel
def _sum64(a):
    s = 0.0
    for j in range(a.size):
        s += a[j]
    return s


@kernel
def log_softmax_row(xr, out):
    """Two-pass log-softmax of one non-empty row: the reference formula."""
    m = _row_max(xr, 0, xr.size)
    lse = np.log(_exp_sum(xr, 0, xr.size, m))
    for j in range(xr.size):
        out[j] = (xr[j] - m) - lse


@twin
def softmax(x, out):
    for r in prange(x.shape[0]):
        xr, o = x[r], out[r]
        s = _exp_shifted(xr, _row_max(xr, 0, xr.size), o)
        inv = xr.dtype.type(1) / s
        for j in range(xr.size):
            o[j] *= inv


@twin
def log_softmax(x, out):
    for r in prange(x.shape[0]):
        log_softmax_row(x[r], out[r])


@twin
def softmax_backward(g, y, out):
    for r in prange(y.shape[0]):
        gr, yr, o = g[r], y[r], out[r]
        d = yr.dtype.type(_dot64(gr, yr))
        for j in range(yr.size):
            o[j] = yr[j] * (gr[j] - d)


@twin
def log_softmax_backward(g, y, out):
    for r in prange(y.shape[0]):
        gr, yr, o = g[r], y[r], out[r]
        t = yr.dtype.type(_sum64(gr))
        for j in range(yr.size):
            o[j] = gr[j] - fexp(yr[j]) * t


# ----------------------------------------------------------------- losses
@twin
def squared_error(a, b, out):
    for i in prange(a.size):
        d = a[i] - b[i]
        out[i] = d * d


@twin
def squared_error_sum(a, b):
    acc = 0.0
    for i in prange(a.size):
        d = a[i] - b[i]
        acc += d * d  # squared in the input dtype, summed in float64
    return acc


@twin
def scaled_difference(a, b, scale, out):
    for i in prange(a.size):
        out[i] = (a[i] - b[i]) * scale


@twin
def abs_error(a, b, out):
    for i in prange(a.size):
        out[i] = abs(a[i] - b[i])


@twin
def abs_error_sum(a, b):
    acc = 0.0
    for i in prange(a.size):
        acc += abs(a[i] - b[i])
    return acc


@twin
def scaled_sign(a, b, scale, out):
    """scale * sign(a - b), 0 where the difference is 0 or NaN (torch's sign)."""
    zero = a.dtype.type(0)
    for i in prange(a.size):
        d = a[i] - b[i]
        out[i] = scale if d > zero else (-scale if d < zero else zero)


@kernel
def _huber(d, delta, half):
    """torch's Huber term in the input dtype (half: 0.5 of that dtype), branch-free:
    with q = min(|d|, delta), q * (|d| - q/2) is 0.5*z*z below delta (z - z/2 is
    exact) and delta * (z - delta/2) above, bit for bit; a data-dependent branch
    here mispredicts on half the elements. NaN and inf propagate through z."""
    z = abs(d)
    q = delta if z >= delta else z
    return q * (z - half * q)


@twin
def huber_error(a, b, delta, out):
    half = a.dtype.type(0.5)
    for i in prange(a.size):
        out[i] = _huber(a[i] - b[i], delta, half)


@kernel
def _huber_fill(a, b, delta, out):
    half = a.dtype.type(0.5)
    for i in range(a.size):
        out[i] = _huber(a[i] - b[i], delta, half)


@twin
def huber_error_sum(a, b, delta, nchunks):
    """Sum of the Huber terms: filled per L1-sized block, each block summed by the
    vectorized _sum64 (a plain float64 accumulator is one serial add chain)."""
    part = np.zeros(nchunks)
    for k in prange(nchunks):
        lo, hi = _chunk(a.size, nchunks, k)
        buf = np.empty(_FILL_BLOCK, a.dtype)
        for s in range(lo, hi, _FILL_BLOCK):
            e = min(s + _FILL_BLOCK, hi)
            blk = buf[:e - s]
            _huber_fill(a[s:e], b[s:e], delta, blk)
            part[k] += _sum64(blk)
    return part.sum()


@twin
def huber_grad(a, b, scale, delta, out):
    """scale * (a - b) clipped to [-delta, delta] with torch's branches (NaN stays NaN)."""
    sd = scale * delta
    for i in prange(a.size):
        d = a[i] - b[i]
        out[i] = -sd if d <= -delta else (sd if d >= delta else scale * d)


@kernel
def target_weight_sum(target, w, ignore_index):
    """float64 sum of w[target] over the rows not ignored."""
    total = 0.0
    for t in target:
        if t != ignore_index:
            total += w[t]
    return total


# Elements per block of the online log-sum-exp: the block stays in L1 (8 KiB
# of float32) between its two looks, and is long enough to amortize the
# horizontal reductions that end each vector loop.
_LSE_BLOCK = 2048


@kernel
def _online_lse(xr):
    """Blocked online log-sum-exp of a non-empty row, in one pass over memory:
    running max m and float64 sum s of exp(x - m), so logsumexp = m + log(s).
    Per block the max and the exp-sum are vectorized loops over data in L1;
    s is rescaled (one exp) only when a block raises the max. A row of one
    block gets the exact two-pass formula. Not finite (NaN or inf in s or m)
    when the row holds NaN or inf."""
    c = xr.size
    hi = min(c, _LSE_BLOCK)
    m = _row_max(xr, 0, hi)
    s = np.float64(_exp_sum(xr, 0, hi, m))
    for lo in range(hi, c, _LSE_BLOCK):
        hi = min(lo + _LSE_BLOCK, c)
        bm = _row_max(xr, lo, hi)
        if bm > m:
            s *= np.float64(fexp(m - bm))
            m = bm
        s += _exp_sum(xr, lo, hi, m)
    return m, s


@_sum_kernel
def _weighted_offsets(xr, w):
    """float64 sum_c w[c] * (x[c] - x[0]); x[0] is a pivot against cancellation."""
    x0 = np.float64(xr[0])
    s = 0.0
    for j in range(xr.size):
        s += w[j] * (np.float64(xr[j]) - x0)
    return s


@kernel
def _ce_row_loss(xr, t, w, wsum, ls, m, s):
    """(1-ls)*w[t]*(lse - x[t]) + ls/C*sum_c w[c]*(lse - x[c]) of one row from its online
    log-sum-exp parts (m, s)."""
    c = xr.size
    log_s = np.log(s)
    loss = (1.0 - ls) * np.float64(w[t]) * (np.float64(m - xr[t]) + log_s)
    if ls > 0.0:
        # sum_c w[c] * (m + log_s - x[c]) with x[c] = x[0] + (x[c] - x[0]);
        # the row is still in L1 for this second look.
        shift = np.float64(m) - np.float64(xr[0])
        loss += ls / c * (wsum * (shift + log_s) - _weighted_offsets(xr, w))
    if not np.isfinite(loss):
        # NaN/inf logits: the exact two-pass formula, as the reference.
        logp = np.empty_like(xr)
        log_softmax_row(xr, logp)
        loss = (1.0 - ls) * (-logp[t] * w[t])
        if ls > 0.0:
            loss -= ls / c * _dot64(logp, w)
    return loss


@kernel
def _ce_row_lse(xr, buf):
    """(m, s, stored) of a row: ``_online_lse``'s max and sum of exp(x - m); a row of one
    block (the common case) is swept in cache instead and leaves each exp(x - m) in buf
    (``stored``), so its gradient needs no second exp. The loss and gradient kernels all
    take their sums from here: the same values bit for bit."""
    if xr.size <= _LSE_BLOCK:
        m = _row_max(xr, 0, xr.size)
        return m, np.float64(_exp_shifted(xr, m, buf)), True
    m, s = _online_lse(xr)
    return m, s, False


@kernel
def _ce_row_grad(src, t, w, a, b, ws, cf, m, s, stored, o):
    """coef * (a*(p - onehot(t)) + b*(sum(w)*p - w)) of one row into o, from its
    log-sum-exp parts (m, s): p = exp(x - m) / s, the exps read back from o when
    ``stored``. In the input dtype and in the reference's order of operations (so that
    also inf/NaN from coef = 1/0 land where the reference puts them)."""
    f = src.dtype.type
    inv_s = 1.0 / s
    if not (np.isfinite(m) and np.isfinite(inv_s) and inv_s > 0.0):
        # NaN/inf logits: exact log-probabilities into the output row,
        # then p = exp(logp - 0) * 1 below.
        log_softmax_row(src, o)
        src, m, inv_s, stored = o, f(0), 1.0, False
    inv = f(inv_s)
    if stored:
        pt = o[t] * inv  # before o[t] is overwritten
        for j in range(src.size):
            p = o[j] * inv
            o[j] = (a * p + b * (ws * p - w[j])) * cf
    else:
        pt = fexp(src[t] - m) * inv  # before src (maybe o) is overwritten
        for j in range(src.size):
            p = fexp(src[j] - m) * inv
            o[j] = (a * p + b * (ws * p - w[j])) * cf
    o[t] = (a * (pt - f(1)) + b * (ws * pt - w[t])) * cf


@twin
def cross_entropy_rows(x, target, w, wsum, ignore_index, ls, out, nchunks):
    """Per-row loss (``_ce_row_loss``) into out, 0 for ignored rows; chunks of rows, each
    with a scratch row for ``_ce_row_lse``'s exps."""
    rows, c = x.shape
    for k in prange(nchunks):
        lo, hi = _chunk(rows, nchunks, k)
        buf = np.empty(c, x.dtype)
        for i in range(lo, hi):
            t = target[i]
            if t == ignore_index:
                out[i] = 0.0
                continue
            m, s, _ = _ce_row_lse(x[i], buf)
            out[i] = _ce_row_loss(x[i], t, w, wsum, ls, m, s)


@twin
def cross_entropy_grad_rows(x, target, w, wsum, ignore_index, ls, coef, out):
    """Per-row gradient (``_ce_row_grad``) into out, exactly 0 for ignored rows."""
    f = x.dtype.type
    b, ws, cf = f(ls / x.shape[1]), f(wsum), f(coef)
    for i in prange(x.shape[0]):
        t = target[i]
        if t == ignore_index:
            out[i, :] = 0.0  # exactly 0, even when 'mean' divides by a zero weight sum
            continue
        m, s, stored = _ce_row_lse(x[i], out[i])
        _ce_row_grad(x[i], t, w, f(1.0 - ls) * w[t], b, ws, cf, m, s, stored, out[i])


@twin
def cross_entropy_loss_grad_rows(x, target, w, wsum, ignore_index, ls, coef, loss, grad):
    """``cross_entropy_rows`` into loss and ``cross_entropy_grad_rows`` into grad, each
    row's log-sum-exp computed once for both."""
    f = x.dtype.type
    b, ws, cf = f(ls / x.shape[1]), f(wsum), f(coef)
    for i in prange(x.shape[0]):
        t = target[i]
        if t == ignore_index:
            loss[i] = 0.0
            grad[i, :] = 0.0
            continue
        m, s, stored = _ce_row_lse(x[i], grad[i])
        loss[i] = _ce_row_loss(x[i], t, w, wsum, ls, m, s)
        _ce_row_grad(x[i], t, w, f(1.0 - ls) * w[t], b, ws, cf, m, s, stored, grad[i])


# Element-wise losses with optional per-element weights: each op has one
# ``_fill`` kernel over a contiguous range (branch-free math, so it
# vectorizes; ``has_*`` flags are loop-invariant and absent arrays come as
# placeholders of input's size). Both the 'none' kernel and the summing one
# run that same fill over one chunk of the flat arrays per thread, so the
# per-element values are identical; the sums fill an L1-sized block, then
# add it up in float64 (``_sum64``, vectorized).
_FILL_BLOCK = 2048


@kernel
def _chunk(n, nchunks, k):
    """[lo, hi) of chunk k of nchunks over n elements."""
    per = (n + nchunks - 1) // nchunks
    return min(n, k * per), min(n, (k + 1) * per)


@kernel
def _bce_fill(x, t, w, has_w, out):
    """torch's BCE: (t - 1) * max(log1p(-x), -100) - t * max(log(x), -100), times w."""
    f = x.dtype.type
    one, floor = f(1), f(-100)
    for i in range(x.size):
        a = flog1p(-x[i])
        a = floor if a < floor else a  # np.maximum: NaN stays NaN
        b = flog(x[i])
        b = floor if b < floor else b
        v = (t[i] - one) * a - t[i] * b
        out[i] = v * w[i] if has_w else v


@kernel
def _bce_logits_fill(x, t, w, pw, has_w, has_pw, out):
    """(1 - t) * x - lw * logsigmoid(x), lw = (pw - 1) * t + 1, times w;
    logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))."""
    f = x.dtype.type
    one, zero = f(1), f(0)
    for i in range(x.size):
        xi, ti = x[i], t[i]
        low = xi if not (xi > zero) else zero  # np.minimum(x, 0): NaN stays NaN
        ls = low - flog1p(fexp(-abs(xi)))
        if has_pw:
            ls = ls * ((pw[i] - one) * ti + one)
        v = (one - ti) * xi - ls
        out[i] = v * w[i] if has_w else v


@kernel
def _kl_fill(x, t, log_target, out):
    """exp(t) * (t - x) with log_target, else xlogy(t, t) - t * x (0 * log 0 = 0)."""
    f = x.dtype.type
    zero = f(0)
    if log_target:
        for i in range(x.size):
            out[i] = fexp(t[i]) * (t[i] - x[i])
    else:
        for i in range(x.size):
            ti = t[i]
            out[i] = (zero if ti == zero else ti * flog(ti)) - ti * x[i]


@twin
def bce(x, t, w, has_w, out, nchunks):
    for k in prange(nchunks):
        lo, hi = _chunk(x.size, nchunks, k)
        _bce_fill(x[lo:hi], t[lo:hi], w[lo:hi], has_w, out[lo:hi])


@twin
def bce_sum(x, t, w, has_w, nchunks):
    part = np.zeros(nchunks)
    for k in prange(nchunks):
        lo, hi = _chunk(x.size, nchunks, k)
        buf = np.empty(_FILL_BLOCK, x.dtype)
        for a in range(lo, hi, _FILL_BLOCK):
            b = min(a + _FILL_BLOCK, hi)
            blk = buf[:b - a]
            _bce_fill(x[a:b], t[a:b], w[a:b], has_w, blk)
            part[k] += _sum64(blk)
    return part.sum()


@twin
def bce_logits(x, t, w, pw, has_w, has_pw, out, nchunks):
    for k in prange(nchunks):
        lo, hi = _chunk(x.size, nchunks, k)
        _bce_logits_fill(x[lo:hi], t[lo:hi], w[lo:hi], pw[lo:hi], has_w, has_pw, out[lo:hi])


@twin
def bce_logits_sum(x, t, w, pw, has_w, has_pw, nchunks):
    part = np.zeros(nchunks)
    for k in prange(nchunks):
        lo, hi = _chunk(x.size, nchunks, k)
        buf = np.empty(_FILL_BLOCK, x.dtype)
        for a in range(lo, hi, _FILL_BLOCK):
            b = min(a + _FILL_BLOCK, hi)
            blk = buf[:b - a]
            _bce_logits_fill(x[a:b], t[a:b], w[a:b], pw[a:b], has_w, has_pw, blk)
            part[k] += _sum64(blk)
    return part.sum()


@twin
def kl(x, t, log_target, out, nchunks):
    for k in prange(nchunks):
        lo, hi = _chunk(x.size, nchunks, k)
        _kl_fill(x[lo:hi], t[lo:hi], log_target, out[lo:hi])


@twin
def kl_sum(x, t, log_target, nchunks):
    part = np.zeros(nchunks)
    for k in prange(nchunks):
        lo, hi = _chunk(x.size, nchunks, k)
        buf = np.empty(_FILL_BLOCK, x.dtype)
        for a in range(lo, hi, _FILL_BLOCK):
            b = min(a + _FILL_BLOCK, hi)
            blk = buf[:b - a]
            _kl_fill(x[a:b], t[a:b], log_target, blk)
            part[k] += _sum64(blk)
    return part.sum()


@twin
def bce_grad(x, t, w, has_w, scale, eps, out):
    """(x - t) / max((1 - x) * x, eps) * w * scale, torch's backward."""
    one = x.dtype.type(1)
    for i in prange(x.size):
        d = (one - x[i]) * x[i]
        d = eps if d < eps else d  # np.maximum: NaN stays NaN
        g = (x[i] - t[i]) / d
        if has_w:
            g = g * w[i]
        out[i] = g * scale


@twin
def bce_logits_grad(x, t, w, pw, has_w, has_pw, scale, out):
    """sigmoid(x) - t, or (pw*t + 1 - t) * sigmoid(x) - pw*t; times w and scale."""
    one = x.dtype.type(1)
    for i in prange(x.size):
        sig = one / (one + fexp(-x[i]))
        if has_pw:
            pt = pw[i] * t[i]
            g = (pt + one - t[i]) * sig - pt
        else:
            g = sig - t[i]
        if has_w:
            g = g * w[i]
        out[i] = g * scale


@twin
def kl_grad(t, log_target, neg_scale, out):
    """-t (-exp(t) with log_target) times the reduction's scale."""
    if log_target:
        for i in prange(t.size):
            out[i] = fexp(t[i]) * neg_scale
    else:
        for i in prange(t.size):
            out[i] = t[i] * neg_scale


@kernel
def nll_rows(x, target, w, ignore_index, out):
    """Per-row -w[t] * x[i, t] in the input dtype, exactly 0 for ignored rows."""
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        t = target[i]
        out[i] = zero if t == ignore_index else -w[t] * x[i, t]


@kernel
def nll_sum(x, target, w, ignore_index):
    """(float64 sum of the per-row losses, float64 sum of the kept rows' w[t])."""
    total = 0.0
    wsum = 0.0
    for i in range(x.shape[0]):
        t = target[i]
        if t != ignore_index:
            wt = w[t]
            total += -wt * x[i, t]  # the product in the input dtype, as nll_rows
            wsum += wt
    return total, wsum


@kernel
def nll_grad(target, w, ignore_index, coef, out):
    """-w[t] * coef at each kept row's target of a zeroed out (N, C)."""
    for i in range(out.shape[0]):
        t = target[i]
        if t != ignore_index:
            out[i, t] = -w[t] * coef


# ------------------------------------------------------------------ optim
@twin
def sgd(param, grad, buf, lr, momentum, damp1, wd, sign, has_wd, has_momentum,
        first_step, nesterov):
    """torch's single-tensor SGD; scalars come in the param dtype, damp1 = 1 - dampening."""
    for i in prange(param.size):
        g = grad[i] * sign
        if has_wd:
            g = g + wd * param[i]
        if has_momentum:
            b = g if first_step else buf[i] * momentum + damp1 * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] = param[i] - lr * g


@twin
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, sign, decay, wd, beta1c, beta2,
         beta2c, step_size, bc2_sqrt, eps, coupled_wd, amsgrad):
    """torch's single-tensor Adam/AdamW; scalars in the param dtype:
    decay = 1 - lr*wd (decoupled, else 1), beta1c = 1 - beta1, beta2c = 1 - beta2."""
    for i in prange(param.size):
        p = param[i] * decay
        g = grad[i] * sign
        if coupled_wd:
            g = g + wd * p
        m = exp_avg[i]
        m = m + beta1c * (g - m)
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + beta2c * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            vmax = max_exp_avg_sq[i]
            if not (vmax >= v or vmax != vmax):  # np.maximum: NaN wins
                vmax = v
            max_exp_avg_sq[i] = vmax
            v = vmax
        param[i] = p - step_size * (m / (np.sqrt(v) / bc2_sqrt + eps))


@twin
def rmsprop(param, grad, square_avg, buf, grad_avg, sign, wd, alpha, alphac, lr, eps,
            momentum, has_wd, centered, has_momentum):
    """torch's single-tensor RMSprop; scalars in the param dtype, alphac = 1 - alpha."""
    for i in prange(param.size):
        p = param[i]
        g = grad[i] * sign
        if has_wd:
            g = g + wd * p
        s = square_avg[i] * alpha + alphac * g * g
        square_avg[i] = s
        if centered:
            a = grad_avg[i]
            a = a + alphac * (g - a)
            grad_avg[i] = a
            s = s - a * a
        avg = np.sqrt(s) + eps
        if has_momentum:
            b = buf[i] * momentum + g / avg
            buf[i] = b
            param[i] = p - lr * b
        else:
            param[i] = p - lr * (g / avg)


@twin
def adagrad(param, grad, state_sum, sign, wd, clr, eps, has_wd):
    """torch's single-tensor Adagrad; scalars in the param dtype, clr the decayed lr."""
    for i in prange(param.size):
        p = param[i]
        g = grad[i] * sign
        if has_wd:
            g = g + wd * p
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] = p - clr * (g / (np.sqrt(s) + eps))


# ---------------------------------------------------------- preprocessing
_BLOCK = 4096  # elements per block of rows in column_stats: fits in L1/L2


@kernel
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s merge of column statistics (a += b), skipping empty b.
    The mean is a weighted average (not a + delta) so infinite means stay inf."""
    for j in range(n_a.size):
        nb = n_b[j]
        if nb == 0.0:
            continue
        na = n_a[j]
        n = na + nb
        delta = mean_b[j] - mean_a[j]
        m2_a[j] += m2_b[j] + delta * delta * (na * nb / n)
        mean_a[j] = (na * mean_a[j] + nb * mean_b[j]) / n
        n_a[j] = n


@twin
def column_stats(X, nchunks):
    """NaN-ignoring (count, mean, M2) per column, float64; one row-major pass
    over X, in blocks small enough to stay in cache for their second look."""
    rows, f = X.shape
    cnt = np.zeros((nchunks, f))
    mean = np.zeros((nchunks, f))
    m2 = np.zeros((nchunks, f))
    per = (rows + nchunks - 1) // nchunks
    block = max(1, _BLOCK // max(f, 1))
    for k in prange(nchunks):
        bc, bs, bm2 = np.empty(f), np.empty(f), np.empty(f)
        for lo in range(k * per, min(rows, (k + 1) * per), block):
            hi = min(lo + block, (k + 1) * per, rows)
            bc[:] = 0.0
            bs[:] = 0.0
            bm2[:] = 0.0
            for r in range(lo, hi):
                for j in range(f):
                    v = np.float64(X[r, j])
                    seen = v == v
                    bc[j] += seen
                    bs[j] += v if seen else 0.0
            for j in range(f):
                bs[j] = bs[j] / bc[j] if bc[j] > 0.0 else 0.0
            for r in range(lo, hi):
                for j in range(f):
                    v = np.float64(X[r, j])
                    d = v - bs[j]
                    bm2[j] += d * d if v == v else 0.0
            _merge(cnt[k], mean[k], m2[k], bc, bs, bm2)
    for k in range(1, nchunks):
        _merge(cnt[0], mean[0], m2[0], cnt[k], mean[k], m2[k])
    return cnt[0], mean[0], m2[0]


# standardize / unstandardize count the +-inf entries of X in the same pass
# (the transform's finite check): ``abs(v) == inf`` is False for NaN, and the
# count is a branch-free add, so the column loop still vectorizes; each chunk
# of rows counts into its own slot, summed at the end.
@twin
def standardize(X, offset, scale, out, nchunks):
    """out = (X - offset) / scale column-wise, in float64; returns the number
    of +-inf entries of X."""
    rows, f = X.shape
    inf = X.dtype.type(np.inf)
    counts = np.zeros(nchunks, np.int64)
    per = (rows + nchunks - 1) // nchunks
    for k in prange(nchunks):
        c = 0
        for r in range(k * per, min(rows, (k + 1) * per)):
            xr, o = X[r], out[r]
            for j in range(f):
                v = xr[j]
                o[j] = (np.float64(v) - offset[j]) / scale[j]
                c += abs(v) == inf
        counts[k] = c
    return counts.sum()


@twin
def unstandardize(X, offset, scale, out, nchunks):
    """out = X * scale + offset column-wise, in float64; returns the number
    of +-inf entries of X."""
    rows, f = X.shape
    inf = X.dtype.type(np.inf)
    counts = np.zeros(nchunks, np.int64)
    per = (rows + nchunks - 1) // nchunks
    for k in prange(nchunks):
        c = 0
        for r in range(k * per, min(rows, (k + 1) * per)):
            xr, o = X[r], out[r]
            for j in range(f):
                v = xr[j]
                o[j] = np.float64(v) * scale[j] + offset[j]
                c += abs(v) == inf
        counts[k] = c
    return counts.sum()


@twin
def column_minmax(X, nchunks):
    """NaN-ignoring (min, max) per column, float64 (F,); (+inf, -inf) where a
    column has no observed value. One row-major pass; each chunk of rows keeps
    its extremes in X's dtype (exact), merged at the end. The compare-selects
    skip NaN (a comparison with NaN is False) and are element-wise over the
    columns, so they vectorize without fast-math flags."""
    rows, f = X.shape
    lo = np.full((nchunks, f), np.inf)
    hi = np.full((nchunks, f), -np.inf)
    per = (rows + nchunks - 1) // nchunks
    for k in prange(nchunks):
        clo = np.empty(f, X.dtype)
        chi = np.empty(f, X.dtype)
        for j in range(f):
            clo[j] = np.inf
            chi[j] = -np.inf
        for r in range(k * per, min(rows, (k + 1) * per)):
            xr = X[r]
            for j in range(f):
                v = xr[j]
                clo[j] = v if v < clo[j] else clo[j]
                chi[j] = v if v > chi[j] else chi[j]
        for j in range(f):
            lo[k, j] = clo[j]
            hi[k, j] = chi[j]
    for k in range(1, nchunks):
        for j in range(f):
            lo[0, j] = min(lo[0, j], lo[k, j])
            hi[0, j] = max(hi[0, j], hi[k, j])
    return lo[0], hi[0]


_SELECT_SMALL = 16  # ranges this short are finished by insertion sort


@kernel
def _insertion_sort(a, lo, hi):
    """Sort a[lo:hi+1] in place."""
    for i in range(lo + 1, hi + 1):
        v = a[i]
        j = i - 1
        while j >= lo and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@kernel
def _select(a, lo, hi, k):
    """Quickselect (Hoare partition, median-of-three pivot) of a[lo:hi+1] (no NaN):
    afterwards a[k] holds the value of sorted rank k, with no greater value
    before it and no smaller one after it. Falls back to a sort of the remaining
    range after 2*log2(n) + 8 partitions (adversarial input: no O(n^2))."""
    budget = 8
    size = hi - lo + 1
    while size > 1:
        size >>= 1
        budget += 2
    while hi - lo >= _SELECT_SMALL:
        if budget == 0:
            a[lo:hi + 1].sort()
            return
        budget -= 1
        mid = lo + ((hi - lo) >> 1)
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo - 1
        j = hi + 1
        while True:
            i += 1
            while a[i] < pivot:
                i += 1
            j -= 1
            while a[j] > pivot:
                j -= 1
            if i >= j:
                break
            a[i], a[j] = a[j], a[i]
        # a[lo:j+1] <= pivot <= a[j+1:hi+1], lo <= j < hi
        if k <= j:
            hi = j
        else:
            lo = j + 1
    _insertion_sort(a, lo, hi)


@kernel
def _select_ranks(a, ranks):
    """Put the values of sorted rank ``ranks`` (ascending) of a in place: each
    selected in the part not yet fixed; a rank just after the previous one is
    the minimum of that part."""
    m = a.size
    done = -1  # a[:done+1] holds the ranks 0..done in place
    for t in ranks:
        if t <= done:
            continue
        if t == done + 1 and done >= 0:
            best = t
            for s in range(t + 1, m):
                if a[s] < a[best]:
                    best = s
            a[t], a[best] = a[best], a[t]
        else:
            _select(a, done + 1, m - 1, t)
        done = t


# Columns with at least this many observed values are first narrowed by a sample
# (Floyd and Rivest's selection): one pass counts the values below a window of
# sample values around each wanted rank and copies the values inside it; the
# exact selection then runs on the small copies.
_SAMPLE_MIN = 1 << 16
_SAMPLE = 1 << 14


@kernel
def _window_ranks(a, prev, nxt, found):
    """found[i, 0:2] = values of ranks prev[i], nxt[i] of a, through a sample;
    returns False (found incomplete) when a rank fell outside its window."""
    m = a.size
    nq = prev.size
    sample = np.empty(_SAMPLE, a.dtype)
    state = np.uint64(0x9E3779B97F4A7C15)
    for i in range(_SAMPLE):
        state = state * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        sample[i] = a[np.int64((state >> np.uint64(33)) % np.uint64(m))]
    sample.sort()
    margin = 2 * np.int64(np.sqrt(_SAMPLE))  # 4 sigma of the sample rank, at worst
    u = np.empty(nq, a.dtype)
    v = np.empty(nq, a.dtype)
    for i in range(nq):
        t = np.int64(np.float64(prev[i]) * _SAMPLE / m)
        u[i] = sample[t - margin] if t - margin >= 0 else -np.inf
        v[i] = sample[t + margin] if t + margin < _SAMPLE else np.inf
    cap = 16 * m * margin // _SAMPLE + 64
    win = np.empty((nq, cap), a.dtype)
    below = np.zeros(nq, np.int64)
    inside = np.zeros(nq, np.int64)
    for i in range(nq):
        ui, vi, w = u[i], v[i], win[i]
        b = 0
        c = 0
        for s in range(m):  # branch-free: a window value is unpredictable
            x = a[s]
            b += x < ui
            w[min(c, cap - 1)] = x
            c += (ui <= x) & (x <= vi)
        if not (c < cap and b <= prev[i] and nxt[i] < b + c):
            return False  # (c == cap: the last slot may be overwritten)
        below[i] = b
        inside[i] = c
    ranks = np.empty(2, np.int64)
    for i in range(nq):
        w = win[i, :inside[i]]
        ranks[0] = prev[i] - below[i]
        ranks[1] = nxt[i] - below[i]
        _select_ranks(w, ranks)
        found[i, 0] = w[ranks[0]]
        found[i, 1] = w[ranks[1]]
    return True


@kernel
def _quantiles_1d(a, q, out, col):
    """np.quantile(a, q) ('linear') of the m observed values a (reordered in place)
    into out[:, col], float64, bit for bit: NumPy's indices, gamma and lerp
    (including its clipping at the ends, where gamma = h + 1)."""
    m = a.size
    nq = q.size
    if m == 0:
        for i in range(nq):
            out[i, col] = np.nan
        return
    prev = np.empty(nq, np.int64)
    nxt = np.empty(nq, np.int64)
    gamma = np.empty(nq)
    for i in range(nq):
        h = np.float64(m - 1) * q[i]
        if h >= m - 1 or h != h:
            prev[i] = nxt[i] = m - 1
            gamma[i] = h + 1.0  # NumPy's previous index is -1 there
        elif h < 0.0:
            prev[i] = nxt[i] = 0
            gamma[i] = h
        else:
            fl = np.floor(h)
            prev[i] = np.int64(fl)
            nxt[i] = prev[i] + 1
            gamma[i] = h - fl
    found = np.empty((nq, 2), a.dtype)
    if not (m >= _SAMPLE_MIN and _window_ranks(a, prev, nxt, found)):
        _select_ranks(a, np.sort(np.concatenate((prev, nxt))))
        for i in range(nq):
            found[i, 0] = a[prev[i]]
            found[i, 1] = a[nxt[i]]
    for i in range(nq):
        lo = np.float64(found[i, 0])
        hi = np.float64(found[i, 1])
        g = gamma[i]
        d = hi - lo
        out[i, col] = hi - d * (1.0 - g) if g >= 0.5 else lo + d * g


@twin
def column_quantiles(X, q, out, nchunks):
    """NaN-ignoring quantiles q (k,) of each column of X (n, F) into out (k, F),
    float64, NaN for an unobserved column. Columns go in groups about one cache
    line wide (whole groups per thread): a group's observed values are gathered
    in one pass over the rows, then each column is selected on its own."""
    n, f = X.shape
    line = max(1, 64 // X.itemsize)  # columns per group: one cache line of a row
    ngroups = nchunks * ((f + nchunks * line - 1) // (nchunks * line))
    ngroups = max(1, min(ngroups, f))
    for g in prange(ngroups):
        c0 = g * f // ngroups
        c1 = (g + 1) * f // ngroups
        w = c1 - c0
        buf = np.empty((w, n), X.dtype)
        for r in range(n):
            xr = X[r]
            for j in range(w):
                buf[j, r] = xr[c0 + j]
        for j in range(w):
            b = buf[j]
            c = 0
            for r in range(n):  # keep the observed values, in order
                v = b[r]
                b[c] = v
                c += v == v
            _quantiles_1d(b[:c], q, out, c0 + j)


@_sum_kernel
def _abs_sum64(xr):
    s = 0.0
    for j in range(xr.size):
        s += abs(np.float64(xr[j]))
    return s


@_sum_kernel
def _square_sum64(xr):
    s = 0.0
    for j in range(xr.size):
        v = np.float64(xr[j])
        s += v * v
    return s


@kernel
def _abs_max64(xr):
    """max(0, max |x|) in float64; NaN if the row has NaN (as np.max)."""
    m = 0.0
    for j in range(xr.size):
        v = abs(np.float64(xr[j]))
        m = v if (v > m or v != v) else m
    return m


@twin
def normalize_rows(X, kind, tiny, out):
    """out = X / norm per row; kind 0: l1, 1: l2, 2: max. Norms in float64,
    rounded to X's dtype; below tiny (10 eps of the dtype) a row is left as it is."""
    one = X.dtype.type(1)
    for r in prange(X.shape[0]):
        xr, o = X[r], out[r]
        if kind == 0:
            s = _abs_sum64(xr)
        elif kind == 1:
            s = np.sqrt(_square_sum64(xr))
        else:
            s = _abs_max64(xr)
        nrm = X.dtype.type(s)
        if nrm < tiny:
            nrm = one
        for j in range(xr.size):
            o[j] = xr[j] / nrm


@kernel
def _monomials_row(xr, runs, full):
    """All monomials of one row into full: per run (start, left, right, length),
    full[start + t] = base * x[right + t] with base full[left] (1 for left -1),
    or full[start] = base for a run without factor (right -1)."""
    one = xr.dtype.type(1)
    for i in range(runs.shape[0]):
        k0, lft, r0, ln = runs[i, 0], runs[i, 1], runs[i, 2], runs[i, 3]
        base = full[lft] if lft >= 0 else one
        if r0 < 0:
            full[k0] = base
            continue
        for t in range(ln):
            full[k0 + t] = base * xr[r0 + t]


@twin
def polynomial_features(X, runs, keep, offset, n_full, out, nchunks):
    """Output rows of monomials (see ``_monomials_row``), rows split in chunks.
    offset >= 0 means keep is the range offset..offset+K-1 (a copy, no gather);
    offset 0 with K == n_full builds the monomials in the output row itself."""
    rows, kk = out.shape
    per = (rows + nchunks - 1) // nchunks
    direct = offset == 0 and kk == n_full
    for c in prange(nchunks):
        full = np.empty(n_full, X.dtype)
        for r in range(c * per, min(rows, (c + 1) * per)):
            o = out[r]
            if direct:
                _monomials_row(X[r], runs, o)
                continue
            _monomials_row(X[r], runs, full)
            if offset >= 0:
                for i in range(kk):
                    o[i] = full[offset + i]
            else:
                for i in range(kk):
                    o[i] = full[keep[i]]


@twin
def fill_missing(X, missing, nan_missing, fill, out, nchunks):
    """out = fill[j] where X[r, j] is missing (== missing, or NaN when
    nan_missing), else X[r, j]; returns how many entries are not finite (NaN,
    +-inf) and not missing. Selects, no branches, so the column loop
    vectorizes; each chunk of rows counts into its own slot."""
    rows, f = X.shape
    inf = X.dtype.type(np.inf)
    counts = np.zeros(nchunks, np.int64)
    per = (rows + nchunks - 1) // nchunks
    for k in prange(nchunks):
        c = 0
        for r in range(k * per, min(rows, (k + 1) * per)):
            xr, o = X[r], out[r]
            for j in range(f):
                v = xr[j]
                miss = (v == missing) | (nan_missing & (v != v))  # v == NaN is False
                o[j] = fill[j] if miss else v
                finite = abs(v) < inf  # False for NaN too
                c += not (miss | finite)
        counts[k] = c
    return counts.sum()


@twin
def one_hot(indices, out):
    """out[i, indices[i, j]] = 1 for indices in [0, out.shape[1]) (one unsigned
    compare: negative ones wrap above it). out comes zeroed by calloc, so the
    page faults that zero it happen here, on every thread."""
    m = np.uint64(out.shape[1])
    one = out.dtype.type(1)
    for i in prange(indices.shape[0]):
        for j in range(indices.shape[1]):
            c = indices[i, j]
            if np.uint64(c) < m:
                out[i, c] = one


# ------------------------------------------------- encoders: unique and encode
# 1-D int64 or float64 labels. Labels are mostly integers of a small range
# (class ids), which a dense table counts and looks up in O(n + range), with no
# sort; ``numba_cpu`` picks that path by the range and falls back to a sort
# (NumPy's) and run-length pass, or a binary search per value.
@twin
def int_range(values, nchunks):
    """(min, max) of non-empty int64 values, per chunk of the flat array."""
    n = values.size
    lo = np.empty(nchunks, np.int64)
    hi = np.empty(nchunks, np.int64)
    for k in prange(nchunks):
        a, b = _chunk(n, nchunks, k)
        clo = values[0]
        chi = values[0]
        for i in range(a, b):
            v = values[i]
            clo = v if v < clo else clo
            chi = v if v > chi else chi
        lo[k] = clo
        hi[k] = chi
    return lo.min(), hi.max()


@twin
def float_scan(values, nchunks):
    """(min, max) of the non-NaN float64 values ((inf, -inf) if none), the number
    of NaNs and whether every non-NaN value is a finite integer other than -0.0
    (the values a dense table can hold exactly)."""
    n = values.size
    lo = np.full(nchunks, np.inf)
    hi = np.full(nchunks, -np.inf)
    nan = np.zeros(nchunks, np.int64)
    bad = np.zeros(nchunks, np.int64)
    for k in prange(nchunks):
        a, b = _chunk(n, nchunks, k)
        clo, chi = np.inf, -np.inf
        cnan = 0
        cbad = 0
        for i in range(a, b):
            v = values[i]
            isnan = v != v
            cnan += isnan
            # inf - floor(inf) is NaN, so != 0 also flags inf; -0.0 has its sign bit
            cbad += (not isnan) and ((v - np.floor(v) != 0.0) or (v == 0.0 and np.signbit(v)))
            clo = v if v < clo else clo
            chi = v if v > chi else chi
        lo[k], hi[k], nan[k], bad[k] = clo, chi, cnan, cbad
    return lo.min(), hi.max(), nan.sum(), bad.sum() == 0


@twin
def count_dense(values, lo, size, nchunks):
    """How often each of lo, lo + 1, ..., lo + size - 1 occurs in values (int64
    (size,)); NaNs skipped. Every non-NaN value must be one of them. A chunk of
    values per thread counts into its own table, merged at the end; with tables
    too big for that (size * nchunks > n), one serial pass."""
    n = values.size
    if size * nchunks > n:
        nchunks = 1
    # rows padded to whole 64-byte lines and one apart: no false sharing
    counts = np.zeros((nchunks, (size + 15) // 8 * 8), np.int64)
    for k in prange(nchunks):
        a, b = _chunk(n, nchunks, k)
        c = counts[k]
        for i in range(a, b):
            v = values[i]
            if v == v:
                c[np.uint64(v - lo)] += 1  # unsigned: no wrap-around check
    total = counts[0, :size]
    for k in range(1, nchunks):
        for j in range(size):
            total[j] += counts[k, j]
    return total


@kernel
def dense_uniques(counts, lo, nan, like):
    """(values, counts) of the non-zero entries of a dense table whose slot j
    holds value lo + j, in ``like``'s dtype; then NaN with count nan if nan > 0."""
    nnz = 0
    for j in range(counts.size):
        nnz += counts[j] != 0
    extra = 1 if nan > 0 else 0
    uniq = np.empty(nnz + extra, like.dtype)
    cnt = np.empty(nnz + extra, np.int64)
    i = 0
    for j in range(counts.size):
        if counts[j] != 0:
            uniq[i] = lo + j
            cnt[i] = counts[j]
            i += 1
    if extra:
        uniq[nnz] = np.nan
        cnt[nnz] = nan
    return uniq, cnt


@kernel
def sorted_uniques(s):
    """(first value of each run, run length) of sorted s (NaN last): the runs of
    equal values, all NaNs forming one run, as ``np.unique(..., equal_nan=True)``."""
    n = s.size
    runs = 1 if n else 0
    for i in range(1, n):
        a, b = s[i - 1], s[i]
        runs += a != b and (a == a or b == b)
    uniq = np.empty(runs, s.dtype)
    cnt = np.empty(runs, np.int64)
    if n == 0:
        return uniq, cnt
    r, start = 0, 0
    for i in range(1, n):
        a, b = s[i - 1], s[i]
        if a != b and (a == a or b == b):
            uniq[r] = s[start]
            cnt[r] = i - start
            r += 1
            start = i
    uniq[r] = s[start]
    cnt[r] = n - start
    return uniq, cnt


@twin
def encode_dense(values, lo, hi, table, nan_code, out):
    """out[i] = table[values[i] - lo] for values in [lo, hi] that are integers
    (table holds -1 for integers that are no category), nan_code for NaN, else -1."""
    for i in prange(values.size):
        v = values[i]
        code = nan_code
        if v == v:
            code = -1
            if v >= lo and v <= hi:
                d = v - lo
                j = np.int64(d)
                if j == d:
                    code = table[np.uint64(j)]
        out[i] = code


@twin
def encode_sorted(values, categories, m, nan_code, out):
    """Binary search of each value in the m > 0 sorted non-NaN categories: its
    position where equal, nan_code for NaN, else -1. Branch-free lower bound
    (the halving step is a conditional move), since random values would
    mispredict half the branches of the textbook loop."""
    for i in prange(values.size):
        v = values[i]
        base, n = 0, m
        while n > 1:
            half = n >> 1
            base = base + half if categories[base + half] < v else base
            n -= half
        base += categories[base] < v
        code = base if base < m and categories[base] == v else -1
        out[i] = code if v == v else nan_code


# ------------------------------------------------------- convolution, pooling
# Planes (n, c) of NCHW arrays are independent: the parallel loops run over
# them, so no two threads ever write one pixel. A window row's output columns
# ow whose input column ow * s + off falls inside [0, w) form one range
# [lo, hi) (``_valid_cols``); the loops over it index flat planes with
# unsigned offsets: no negative-index check, and no view built per row (both
# measured 2-3x slower on the 28-wide rows of the benchmark).
@kernel
def _valid_cols(off, s, w, wo):
    """[lo, hi): the ow in [0, wo) with 0 <= ow * s + off < w."""
    lo = 0 if off >= 0 else (-off + s - 1) // s
    hi = (w - 1 - off) // s + 1 if w - 1 - off >= 0 else 0
    lo = min(lo, wo)
    hi = min(max(hi, lo), wo)
    return lo, hi


# Stride 1 with the output as wide as the input (wo == w: "same" padding) maps a
# column row to its plane by one flat shift, d -> d + (i dh - ph) w + j dw - pw, except
# where ow + j dw - pw falls outside [0, w) (the shift then wraps into the neighbouring
# image row): one long contiguous copy (or add), then those few positions fixed. The
# general path copies row segments of wo values, whose loop overheads dominate for
# small images (28x28: ~5 of the ~6 ms of im2col per batch).
@kernel
def _flat_range(rshift, off, h, w, ho):
    """(oh_lo, oh_hi, a, e) of the flat shift: the output rows whose input row
    oh + rshift is in the image, and the flat range [a, e) within them whose source
    d + rshift w + off lies in the plane (the rest of those rows is padding)."""
    oh_lo = min(max(0, -rshift), ho)
    oh_hi = max(min(ho, h - rshift), oh_lo)
    shift = rshift * w + off
    a = min(max(oh_lo * w, -shift), oh_hi * w)
    e = max(min(oh_hi * w, h * w - shift), a)
    return oh_lo, oh_hi, a, e


@kernel
def _zero_outside_cols(row, oh_lo, oh_hi, w, lo, hi):
    """row[oh w + ow] = 0 for ow outside [lo, hi), in the output rows [oh_lo, oh_hi)."""
    zero = row.dtype.type(0)
    for oh in range(oh_lo, oh_hi):
        for t in range(np.uint64(lo)):
            row[np.uint64(oh * w) + t] = zero
        for t in range(np.uint64(hi), np.uint64(w)):
            row[np.uint64(oh * w) + t] = zero


@kernel
def _im2col_flat(xflat, row, h, w, ho, rshift, off, lo, hi):
    """One column row (ho w values) of a plane, stride 1 and wo == w."""
    zero = row.dtype.type(0)
    oh_lo, oh_hi, a, e = _flat_range(rshift, off, h, w, ho)
    for t in range(np.uint64(a)):
        row[t] = zero
    src = np.uint64(a + rshift * w + off)
    for t in range(np.uint64(e - a)):
        row[np.uint64(a) + t] = xflat[src + t]
    for t in range(np.uint64(e), np.uint64(ho * w)):
        row[t] = zero
    _zero_outside_cols(row, oh_lo, oh_hi, w, lo, hi)


@kernel
def _col2im_flat(row, flat, h, w, ho, rshift, off, lo, hi):
    """flat (the plane, h w) += one column row, stride 1 and wo == w; the row's
    entries that map to padding are zeroed first (adding +0.0 changes no sum)."""
    oh_lo, oh_hi, a, e = _flat_range(rshift, off, h, w, ho)
    _zero_outside_cols(row, oh_lo, oh_hi, w, lo, hi)
    dst = np.uint64(a + rshift * w + off)
    for t in range(np.uint64(e - a)):
        flat[dst + t] += row[np.uint64(a) + t]


@twin
def im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """cols[n, (c kh + i) kw + j, oh wo + ow] = xpad[n, c, oh sh + i dh, ow sw + j dw]
    (0 in the padding); every element of cols (N, C kh kw, Ho Wo) written."""
    n, c, h, w = x.shape
    zero = x.dtype.type(0)
    flat_shift = sh == 1 and sw == 1 and wo == w
    for p in prange(n * c):
        b = p // c
        ch = p - b * c
        xp = x[b, ch]
        xflat = xp.reshape(h * w)
        for i in range(kh):
            for j in range(kw):
                row = cols[b, (ch * kh + i) * kw + j]
                off = j * dw - pw
                lo, hi = _valid_cols(off, sw, w, wo)
                if flat_shift:
                    _im2col_flat(xflat, row, h, w, ho, i * dh - ph, off, lo, hi)
                    continue
                cnt = np.uint64(hi - lo)
                usw = np.uint64(sw)
                for oh in range(ho):
                    r = oh * sh + i * dh - ph
                    d0 = np.uint64(oh * wo)
                    if r < 0 or r >= h:
                        for t in range(np.uint64(wo)):
                            row[d0 + t] = zero
                        continue
                    for t in range(np.uint64(lo)):
                        row[d0 + t] = zero
                    s0 = np.uint64(r * w + lo * sw + off)
                    d1 = d0 + np.uint64(lo)
                    if sw == 1:
                        for t in range(cnt):
                            row[d1 + t] = xflat[s0 + t]
                    else:
                        for t in range(cnt):
                            row[d1 + t] = xflat[s0 + t * usw]
                    for t in range(np.uint64(hi), np.uint64(wo)):
                        row[d0 + t] = zero


@twin
def col2im(cols, grad, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """The transpose of :func:`im2col`: grad (N, C, H, W) overwritten with the sum
    of the columns mapping to each pixel, added in (i, j) order as the reference.
    cols is scratch: its entries that map to padding may be zeroed."""
    n, c, h, w = grad.shape
    zero = grad.dtype.type(0)
    flat_shift = sh == 1 and sw == 1 and wo == w
    for p in prange(n * c):
        b = p // c
        ch = p - b * c
        flat = grad[b, ch].reshape(h * w)
        for t in range(np.uint64(h * w)):
            flat[t] = zero
        for i in range(kh):
            for j in range(kw):
                row = cols[b, (ch * kh + i) * kw + j]
                off = j * dw - pw
                lo, hi = _valid_cols(off, sw, w, wo)
                if hi <= lo:
                    continue
                if flat_shift:
                    _col2im_flat(row, flat, h, w, ho, i * dh - ph, off, lo, hi)
                    continue
                cnt = np.uint64(hi - lo)
                usw = np.uint64(sw)
                for oh in range(ho):
                    r = oh * sh + i * dh - ph
                    if r < 0 or r >= h:
                        continue
                    s0 = np.uint64(oh * wo + lo)
                    d0 = np.uint64(r * w + lo * sw + off)
                    if sw == 1:
                        for t in range(cnt):
                            flat[d0 + t] += row[s0 + t]
                    else:
                        for t in range(cnt):
                            flat[d0 + t * usw] += row[s0 + t]


@kernel
def _max_window(xp, r0, c0, kh, kw):
    """(max, flat index) of one window of plane xp: torch's scan (clipped to the
    plane, row by row; larger or NaN replaces; starts at -inf and the first
    in-bounds element's index)."""
    h, w = xp.shape
    best = xp.dtype.type(-np.inf)
    idx = max(r0, 0) * w + max(c0, 0)
    for i in range(max(r0, 0), min(r0 + kh, h)):
        for j in range(max(c0, 0), min(c0 + kw, w)):
            v = xp[i, j]
            if v > best or v != v:
                best = v
                idx = i * w + j
    return best, idx


@twin
def max_pool2d(x, kh, kw, sh, sw, ph, pw, out):
    n, c, ho, wo = out.shape
    for p in prange(n * c):
        b = p // c
        ch = p - b * c
        xp, op = x[b, ch], out[b, ch]
        for oh in range(ho):
            for ow in range(wo):
                op[oh, ow] = _max_window(xp, oh * sh - ph, ow * sw - pw, kh, kw)[0]


@twin
def max_pool2d_backward(g, x, kh, kw, sh, sw, ph, pw, out, nchunks):
    """out = each window's gradient added (in float64, window order) at its argmax."""
    n, c, h, w = x.shape
    ho, wo = g.shape[2], g.shape[3]
    planes = n * c
    for k in prange(nchunks):
        lo, hi = _chunk(planes, nchunks, k)
        acc = np.empty(h * w)
        for p in range(lo, hi):
            b = p // c
            ch = p - b * c
            xp, gp = x[b, ch], g[b, ch]
            o = out[b, ch].reshape(h * w)
            acc[:] = 0.0
            for oh in range(ho):
                for ow in range(wo):
                    idx = _max_window(xp, oh * sh - ph, ow * sw - pw, kh, kw)[1]
                    acc[idx] += gp[oh, ow]
            for t in range(np.uint64(h * w)):
                o[t] = acc[t]


@twin
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, out):
    """Window sums in float64 over kh * kw (padding counted as zeros)."""
    n, c, ho, wo = out.shape
    h, w = x.shape[2], x.shape[3]
    area = np.float64(kh * kw)
    for p in prange(n * c):
        b = p // c
        ch = p - b * c
        xp, op = x[b, ch], out[b, ch]
        for oh in range(ho):
            r0 = oh * sh - ph
            for ow in range(wo):
                c0 = ow * sw - pw
                s = 0.0
                for i in range(max(r0, 0), min(r0 + kh, h)):
                    for j in range(max(c0, 0), min(c0 + kw, w)):
                        s += xp[i, j]
                op[oh, ow] = s / area


@twin
def avg_pool2d_backward(g, kh, kw, sh, sw, ph, pw, out, nchunks):
    """grad_out / (kh kw) (float64) spread over each window, added in the
    reference's (i, j) order, rounded once."""
    n, c, h, w = out.shape
    ho, wo = g.shape[2], g.shape[3]
    area = np.float64(kh * kw)
    planes = n * c
    for k in prange(nchunks):
        lo_p, hi_p = _chunk(planes, nchunks, k)
        acc = np.empty((h, w))
        gd = np.empty((ho, wo))
        for p in range(lo_p, hi_p):
            b = p // c
            ch = p - b * c
            gp = g[b, ch]
            o = out[b, ch]
            acc[:] = 0.0
            for oh in range(ho):
                for ow in range(wo):
                    gd[oh, ow] = gp[oh, ow] / area
            for i in range(kh):
                for j in range(kw):
                    off = j - pw
                    lo, hi = _valid_cols(off, sw, w, wo)
                    if hi <= lo:
                        continue
                    for oh in range(ho):
                        r = oh * sh + i - ph
                        if r < 0 or r >= h:
                            continue
                        for ow in range(lo, hi):
                            acc[r, ow * sw + off] += gd[oh, ow]
            for r in range(h):
                for q in range(w):
                    o[r, q] = acc[r, q]


# ------------------------------------------------------------- normalization
# Statistics in one read pass, float64, shifted by the first finite value k
# of the channel / row: sums of (x - k) and (x - k)**2 keep their digits when
# |mean| >> std (the naive sum of squares would not). A non-finite value makes
# the sums, and so mean / var, inf or NaN as the reference's two passes do.
# _first_finite, _shifted_sums and layer_norm's forward take a 2-D array and a row
# index, not a row view: views of rows cost the forward a fixed time per row (most likely numba's
# reference counting of each view: its serial kernel held 12 NRT_incref and 25
# NRT_decref calls). Forward on 4M float32, rows of 64 / 256 / 1024: 0.59 / 0.66 /
# 0.90x the time on one thread, 0.87 / 0.88 / 1.00x on two, bit-identical. Written
# the same way, the backward's two-thread kernel ran 1.2-1.8x slower on rows of
# 64-256 (not understood), so it keeps its views.
@kernel
def _first_finite(x, r):
    """The first finite value of row r of x (2-D) in float64, else 0."""
    for j in range(x.shape[1]):
        v = x[r, j]
        if v - v == 0:
            return np.float64(v)
    return 0.0


@kernel
def _any_true(flags):
    """flags.any() without a NumPy call after the kernel (a cold-cache call costs
    tens of microseconds; see ``docs/backends.md``)."""
    for i in range(flags.size):
        if flags[i]:
            return True
    return False


@kernel
def _channel_shift(x, ch):
    """The first finite value of channel ch of x (N, C, L) in float64, else 0."""
    for b in range(x.shape[0]):
        xr = x[b, ch]
        for j in range(xr.size):
            v = xr[j]
            if v - v == 0:
                return np.float64(v)
    return 0.0


@_sum_kernel
def _shifted_sums_gw(a, g, w, k):
    """float64 (sum(a - k), sum((a - k)**2), sum(g w), sum(g w (a - k)))."""
    s1 = 0.0
    s2 = 0.0
    sg = 0.0
    sgx = 0.0
    for j in range(a.size):
        _prefer_512()
        d = np.float64(a[j]) - k
        gj = np.float64(g[j]) * w[j]
        s1 += d
        s2 += d * d
        sg += gj
        sgx += gj * d
    return s1, s2, sg, sgx


@_sum_kernel
def _shifted_sums(x, r, k):
    """float64 (sum(a - k), sum((a - k)**2)) of row a = x[r] of 2-D x."""
    s1 = 0.0
    s2 = 0.0
    for j in range(np.uint64(x.shape[1])):
        _prefer_512()
        d = np.float64(x[r, j]) - k
        s1 += d
        s2 += d * d
    return s1, s2


@_sum_kernel
def _shifted_sums_g(a, g, k):
    """float64 (sum(a - k), sum((a - k)**2), sum(g), sum(g (a - k)))."""
    s1 = 0.0
    s2 = 0.0
    sg = 0.0
    sgx = 0.0
    for j in range(a.size):
        d = np.float64(a[j]) - k
        gj = np.float64(g[j])
        s1 += d
        s2 += d * d
        sg += gj
        sgx += gj * d
    return s1, s2, sg, sgx


@kernel
def _mean_var(k, s1, s2, m):
    """mean and biased variance from shifted sums over m values."""
    mean = k + s1 / m
    var = (s2 - s1 * (s1 / m)) / m
    return mean, (0.0 if var < 0.0 else var)


@kernel
def _channel_sums(x, ch, k):
    """Shifted sums (``_shifted_sums``) of channel ch of x (N, C, L)."""
    s1 = 0.0
    s2 = 0.0
    for b in range(x.shape[0]):
        a1, a2 = _shifted_sums(x[b], ch, k)
        s1 += a1
        s2 += a2
    return s1, s2


@twin
def batch_norm_train(x, weight, bias, has_w, has_b, eps, mean, var, out):
    """Training-mode batch norm of x (N, C, L), N L >= 1, one channel at a time
    (its second pass then reads from cache): float64 batch mean and biased
    variance into mean, var (C,), then out = x * scale + shift with the
    reference's float64 scale and shift, rounded once."""
    n, c, l = x.shape
    m = np.float64(n * l)
    for ch in prange(c):
        k = _channel_shift(x, ch)
        s1, s2 = _channel_sums(x, ch, k)
        mu, v = _mean_var(k, s1, s2, m)
        mean[ch] = mu
        var[ch] = v
        scale = 1 / np.sqrt(v + eps)
        shift = -mu * scale
        if has_w:
            scale, shift = scale * weight[ch], shift * weight[ch]
        if has_b:
            shift = shift + bias[ch]
        for b in range(n):
            xr, o = x[b, ch], out[b, ch]
            for j in range(np.uint64(l)):
                o[j] = np.float64(xr[j]) * scale + shift


@twin
def batch_norm_apply(x, scale, shift, out):
    """out = x * scale + shift per channel, in float64, rounded once."""
    n, c, l = x.shape
    for p in prange(n * c):
        b = p // c
        ch = p - b * c
        xr, o = x[b, ch], out[b, ch]
        s, t = scale[ch], shift[ch]
        for j in range(np.uint64(l)):
            o[j] = np.float64(xr[j]) * s + t


@twin
def batch_norm_backward(g, x, weight, has_w, eps, sum_g, sum_gx, redo, out):
    """Training-mode gradients of x (N, C, L), one channel at a time: one float64
    read pass for mean, variance, sum(g) and sum(g xhat) (from shifted sums),
    then grad_x = k (g - sum_g / m - xhat sum_gx / m), k = invstd * weight.

    A channel whose g sums are not finite while x's statistics are gets
    redo = True and is left to the caller: which of its outputs are inf and
    which NaN hangs on the sign (or zero) of x - mean, so it needs the
    reference's own mean, to the last bit. Returns whether any channel has."""
    n, c, l = x.shape
    m = np.float64(n * l)
    for ch in prange(c):
        k = _channel_shift(x, ch)
        s1 = 0.0
        s2 = 0.0
        sg = 0.0
        sgx = 0.0
        for b in range(n):
            a1, a2, a3, a4 = _shifted_sums_g(x[b, ch], g[b, ch], k)
            s1 += a1
            s2 += a2
            sg += a3
            sgx += a4
        mu, var = _mean_var(k, s1, s2, m)
        inv = 1 / np.sqrt(var + eps)
        sgxhat = inv * (sgx - (s1 / m) * sg)
        sum_g[ch] = sg
        sum_gx[ch] = sgxhat
        r = not (sg - sg == 0 and sgx - sgx == 0) and mu - mu == 0 and var - var == 0
        redo[ch] = r
        if r:
            continue
        kk = inv * weight[ch] if has_w else inv
        aa = sg / m
        bb = sgxhat / m
        for b in range(n):
            xr, gr, o = x[b, ch], g[b, ch], out[b, ch]
            for j in range(np.uint64(l)):
                xh = (np.float64(xr[j]) - mu) * inv
                o[j] = kk * ((np.float64(gr[j]) - aa) - xh * bb)
    return _any_true(redo)


# layer_norm runs a chunk of rows per thread, row after row, each row's second pass
# (from cache) fused into one loop with the next row's first pass (from memory): the
# next row streams in while this one computes, instead of memory idling during the
# compute. 4096x1024 float32, 2 threads, the unfused and fused kernels interleaved in
# one process (two runs of 40 rounds): forward 0.84-0.90x and backward 0.74-0.87x the
# time, outputs bit-identical. The last row of a chunk is its own "next" row (its sums
# computed again, unused). The fused loops repeat _shifted_sums(_gw)'s body on purpose:
# a call would be a loop of its own.
@_sum_kernel
def _layer_norm_row(x, r, out, affine, weight, bias, mean, inv, nx, kn):
    """out[r] = (x[r] - mean) inv (times weight plus bias when affine) in float64,
    rounded once; returns row nx's shifted sums (``_shifted_sums``). reassoc
    (_sum_kernel) lets the sums vectorize."""
    s1 = 0.0
    s2 = 0.0
    if affine:
        for j in range(np.uint64(x.shape[1])):
            _prefer_512()
            d = np.float64(x[nx, j]) - kn
            s1 += d
            s2 += d * d
            out[r, j] = (np.float64(x[r, j]) - mean) * inv * weight[j] + bias[j]
    else:
        for j in range(np.uint64(x.shape[1])):
            _prefer_512()
            d = np.float64(x[nx, j]) - kn
            s1 += d
            s2 += d * d
            out[r, j] = (np.float64(x[r, j]) - mean) * inv
    return s1, s2


@twin
def layer_norm(x, affine, weight, bias, eps, out, nchunks):
    """Rows of x (rows, n >= 1) normalized (float64 stats, rounded once); with affine,
    times weight plus bias, float64 (n,) (ones or zeros for the one not given)."""
    rows, n = x.shape
    m = np.float64(n)
    for k in prange(nchunks):
        lo, hi = _chunk(rows, nchunks, k)
        if hi <= lo:
            continue
        sh = _first_finite(x, lo)
        s1, s2 = _shifted_sums(x, lo, sh)
        for r in range(lo, hi):
            mean, var = _mean_var(sh, s1, s2, m)
            inv = 1 / np.sqrt(var + eps)
            nxt = r + 1 if r + 1 < hi else r
            sh = _first_finite(x, nxt)
            s1, s2 = _layer_norm_row(x, r, out, affine, weight, bias, mean, inv, nxt, sh)


@_sum_kernel
def _layer_norm_backward_row(gr, xr, o, weight, has_w, accw, accb, mu, inv, aa, bb, gn, xn,
                             kn):
    """o = invstd (gw - mean(gw) - xhat mean(gw xhat)) of one row (aa, bb the two
    means) in float64, rounded once, and with weight its (g xhat, g) added to accw,
    accb; returns the next row's shifted sums (``_shifted_sums_gw``)."""
    s1 = 0.0
    s2 = 0.0
    sg = 0.0
    sgx = 0.0
    if has_w:
        for j in range(np.uint64(xr.size)):
            _prefer_512()
            d = np.float64(xn[j]) - kn
            gwn = np.float64(gn[j]) * weight[j]
            s1 += d
            s2 += d * d
            sg += gwn
            sgx += gwn * d
            gj = np.float64(gr[j])
            xh = (np.float64(xr[j]) - mu) * inv
            o[j] = inv * ((gj * weight[j] - aa) - xh * bb)
            accw[j] += gj * xh
            accb[j] += gj
    else:
        for j in range(np.uint64(xr.size)):
            _prefer_512()
            d = np.float64(xn[j]) - kn
            gn64 = np.float64(gn[j])
            s1 += d
            s2 += d * d
            sg += gn64
            sgx += gn64 * d
            o[j] = inv * ((np.float64(gr[j]) - aa) - (np.float64(xr[j]) - mu) * inv * bb)
    return s1, s2, sg, sgx


@_sum_kernel
def _layer_norm_backward_pair(ga, xa, oa, gb, xb, ob, weight, has_w, accw, accb, mua, inva,
                              aaa, bba, mub, invb, aab, bbb, gn, xn, kn, gm, xm, km):
    """``_layer_norm_backward_row`` of two rows a, b, and the shifted sums of the next two
    (n, m): with weight, in one loop whose column sums take one read-modify-write for both
    rows (2 threads, 4096x1024 float32, alternating processes: 0.68-0.87x the time of a
    row at a time); without weight there are no column sums to share, a row at a time."""
    if not has_w:
        return (_layer_norm_backward_row(ga, xa, oa, weight, False, accw, accb, mua, inva,
                                         aaa, bba, gn, xn, kn)
                + _layer_norm_backward_row(gb, xb, ob, weight, False, accw, accb, mub, invb,
                                           aab, bbb, gm, xm, km))
    s1 = 0.0
    s2 = 0.0
    sg = 0.0
    sgx = 0.0
    t1 = 0.0
    t2 = 0.0
    tg = 0.0
    tgx = 0.0
    for j in range(np.uint64(xa.size)):
        _prefer_512()
        wj = weight[j]
        d = np.float64(xn[j]) - kn
        e = np.float64(xm[j]) - km
        gwn = np.float64(gn[j]) * wj
        gwm = np.float64(gm[j]) * wj
        s1 += d
        s2 += d * d
        sg += gwn
        sgx += gwn * d
        t1 += e
        t2 += e * e
        tg += gwm
        tgx += gwm * e
        g1 = np.float64(ga[j])
        g2 = np.float64(gb[j])
        xh1 = (np.float64(xa[j]) - mua) * inva
        xh2 = (np.float64(xb[j]) - mub) * invb
        oa[j] = inva * ((g1 * wj - aaa) - xh1 * bba)
        ob[j] = invb * ((g2 * wj - aab) - xh2 * bbb)
        accw[j] += g1 * xh1 + g2 * xh2
        accb[j] += g1 + g2
    return s1, s2, sg, sgx, t1, t2, tg, tgx


@kernel
def _layer_norm_backward_coefs(sh, s1, s2, sg, sgx, m, eps):
    """(mean, invstd, aa = mean(gw), bb = invstd mean(gw (x - mean)), bad) of a row from
    its shifted sums; bad: its gw sums are not finite while x's statistics are."""
    mu, var = _mean_var(sh, s1, s2, m)
    inv = 1 / np.sqrt(var + eps)
    bad = not (sg - sg == 0 and sgx - sgx == 0) and mu - mu == 0 and var - var == 0
    return mu, inv, sg / m, inv * (sgx - (s1 / m) * sg) / m, bad


@twin
def layer_norm_backward(g, x, weight, has_w, eps, redo, out, nchunks):
    """Rows of x, grad_out (rows, n >= 1), in float64: a read pass for mean, variance,
    sum(gw) and sum(gw (x - k)) (gw = g * weight), then grad_x = invstd (gw - mean(gw)
    - xhat mean(gw xhat)) from cache, rounded once, and the column sums (g xhat, g)
    with weight per chunk of rows, merged in chunk order: returns them in float64,
    and whether any row is to redo (below).
    weight is float64 (n,), ones without the affine map (the caller converts it).
    Rows go two at a time (``_layer_norm_backward_pair``), the next two's read pass in
    the same loop; an odd last row, and any pair with a bad row, one at a time.

    A row whose gw sums are not finite while x's statistics are gets
    redo = True and is left to the caller (see ``batch_norm_backward``)."""
    rows, n = x.shape
    m = np.float64(n)
    pw = np.zeros((nchunks, n if has_w else 0))
    pb = np.zeros((nchunks, n if has_w else 0))
    for k in prange(nchunks):
        lo, hi = _chunk(rows, nchunks, k)
        if hi <= lo:
            continue
        ka = _first_finite(x, lo)
        sa = _shifted_sums_gw(x[lo], g[lo], weight, ka)
        kb = _first_finite(x, min(lo + 1, hi - 1))
        sb = _shifted_sums_gw(x[min(lo + 1, hi - 1)], g[min(lo + 1, hi - 1)], weight, kb)
        for r in range(lo, hi, 2):  # rows r and r + 1 (if < hi), their sums sa, sb
            na, nb = min(r + 2, hi - 1), min(r + 3, hi - 1)
            kna, knb = _first_finite(x, na), _first_finite(x, nb)
            mua, inva, aaa, bba, bada = _layer_norm_backward_coefs(ka, *sa, m, eps)
            mub, invb, aab, bbb, badb = _layer_norm_backward_coefs(kb, *sb, m, eps)
            redo[r] = bada
            if r + 1 < hi:
                redo[r + 1] = badb
            if r + 1 < hi and not (bada or badb):
                s = _layer_norm_backward_pair(
                    g[r], x[r], out[r], g[r + 1], x[r + 1], out[r + 1], weight, has_w, pw[k],
                    pb[k], mua, inva, aaa, bba, mub, invb, aab, bbb, g[na], x[na], kna,
                    g[nb], x[nb], knb)
                sa, sb = s[:4], s[4:]
            else:  # rare: a row at a time, the next sums read again
                if not bada:
                    _layer_norm_backward_row(g[r], x[r], out[r], weight, has_w, pw[k], pb[k],
                                             mua, inva, aaa, bba, g[r], x[r], ka)
                if r + 1 < hi and not badb:
                    _layer_norm_backward_row(g[r + 1], x[r + 1], out[r + 1], weight, has_w,
                                             pw[k], pb[k], mub, invb, aab, bbb, g[r], x[r], ka)
                sa = _shifted_sums_gw(x[na], g[na], weight, kna)
                sb = _shifted_sums_gw(x[nb], g[nb], weight, knb)
            ka, kb = kna, knb
    gw_total = pw[0].copy()
    gb_total = pb[0].copy()
    for k in range(1, nchunks):
        gw_total += pw[k]
        gb_total += pb[k]
    return gw_total, gb_total, _any_true(redo)


# --------------------------------------------------------- dropout, embedding
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@twin
def dropout(x, seed, threshold, scale, out, mask):
    """splitmix64(seed + (i + 1) golden) >> 11 >= threshold keeps element i
    (all uint64, modulo 2**64); out = x * (scale or 0)."""
    zero = x.dtype.type(0)
    one = np.uint64(1)
    for i in prange(x.size):
        z = seed + (np.uint64(i) + one) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        keep = (z >> np.uint64(11)) >= threshold
        mask[i] = keep
        out[i] = x[i] * (scale if keep else zero)


@twin
def dropout_backward(g, mask, scale, out):
    zero = g.dtype.type(0)
    for i in prange(g.size):
        out[i] = g[i] * (scale if mask[i] else zero)


@twin
def embedding(indices, weight, out):
    dim = weight.shape[1]
    for r in prange(indices.size):
        src, dst = weight[indices[r]], out[r]
        for j in range(np.uint64(dim)):
            dst[j] = src[j]


@kernel
def index_buckets(indices, num):
    """(start (num + 1,), order (n,)): the positions of each index value, in
    order (a stable counting sort)."""
    start = np.zeros(num + 1, np.int64)
    for i in range(indices.size):
        start[indices[i] + 1] += 1
    for e in range(num):
        start[e + 1] += start[e]
    fill = start[:num].copy()
    order = np.empty(indices.size, np.int64)
    for i in range(indices.size):
        e = indices[i]
        order[fill[e]] = i
        fill[e] += 1
    return start, order


@twin
def embedding_backward(g, start, order, out, nchunks):
    """out[e] = the rows g[i] with indices[i] == e summed in float64 in index
    order (as np.add.at), rounded once; chunks of embedding rows per thread."""
    num, dim = out.shape
    for k in prange(nchunks):
        lo, hi = _chunk(num, nchunks, k)
        acc = np.empty(dim)
        for e in range(lo, hi):
            o = out[e]
            acc[:] = 0.0
            for q in range(start[e], start[e + 1]):
                gr = g[order[q]]
                for j in range(np.uint64(dim)):
                    acc[j] += gr[j]
            for j in range(np.uint64(dim)):
                o[j] = acc[j]
