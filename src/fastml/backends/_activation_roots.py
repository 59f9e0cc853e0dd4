"""Host-side constants of the float32 gelu / silu backward kernels (numba and cuda),
derived from the reference's own float64 derivatives: where they are exactly 0, and a
polynomial that replaces the cancelling float32 formula near their root."""
import functools

import numpy as np

from .reference import ReferenceBackend


# The largest float64 x at which the reference's float64 derivative of a backward op is
# exactly 0 (found by bisection on the reference; the zeros are a left tail): gelu 'none',
# exp(-x^2 / 2) underflows; 'tanh', tanh(u(x)) rounds to -1; silu, exp(-x) overflows.
_ZERO_BELOW = {"none": -38.6039692027113, "tanh": -7.188805449078429,
               "silu": -709.7827128933841}


def zero_tail(dtype, key):
    """(lo, tiny) of the kernels' zero tails in dtype: the threshold rounded down (so x <= lo
    still means the reference's zero tail) and the smallest subnormal."""
    lo = _ZERO_BELOW[key]
    t = dtype.type(lo)
    if t > lo:
        t = np.nextafter(t, dtype.type(-np.inf))
    return t, np.finfo(dtype).smallest_subnormal


_ROOT_HALF_WIDTH, _ROOT_DEGREE = 0.125, 6


@functools.cache
def root_poly(key, dtype):
    """``root`` of the kernels' near-root polynomial, (r_hi, r_lo, w, a0, ..., a6) in dtype, for gelu_backward
    (key: its ``approximate``) or silu_backward (key 'silu').

    Near the derivative's root r (gelu: x ~ -0.75, silu: x ~ -1.28) it is the difference of
    two rounded terms, in float32 off by more than the tolerance allows once grad_out is
    large. There, |x - r| < w = 1/8, float32 evaluates the degree-6 Chebyshev interpolant
    of the reference's own float64 derivative (in powers of x - r; error < 1e-10);
    r = r_hi + r_lo. float64 needs none: its w is 0.
    """
    n = _ROOT_DEGREE + 1
    if dtype != np.float32:
        return (dtype.type(0),) * (3 + n)
    ref = ReferenceBackend()

    def deriv(x):
        x = np.asarray(x, np.float64)
        if key == "silu":
            return ref.silu_backward(np.ones_like(x), x)
        return ref.gelu_backward(np.ones_like(x), x, key)

    lo, hi = (-1.5, -1.0) if key == "silu" else (-1.0, -0.5)  # deriv(lo) < 0 < deriv(hi)
    while (mid := (lo + hi) / 2) not in (lo, hi):
        lo, hi = (mid, hi) if deriv(mid) < 0 else (lo, mid)
    w = _ROOT_HALF_WIDTH
    P = np.polynomial
    cheb = P.Chebyshev.interpolate(lambda h: deriv(lo + h), _ROOT_DEGREE, domain=[-w, w])
    coef = np.zeros(n)
    power = cheb.convert(kind=P.Polynomial, domain=[-w, w], window=[-w, w]).coef
    coef[:len(power)] = power
    r_hi = np.float32(lo)
    return (r_hi, np.float32(lo - float(r_hi)), np.float32(w), *coef.astype(np.float32))
