# Per-element math shared by the kernels: float32 calls the float libm
# functions (sqrtf, ...) so float32 kernels never round-trip through double.
# The exp-based loops live in _kernels.h (vectorized, CPU-dispatched).
from cython cimport floating
from libc.math cimport fabs, fabsf, sqrt, sqrtf

# Work (elements touched) below which a kernel runs serially: forking the
# OpenMP team costs more than it saves on smaller inputs.
cdef enum:
    PAR_MIN_WORK = 32768


cdef inline floating fsqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating fabs_(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating nanmax(floating a, floating b) noexcept nogil:
    """max(a, b) that returns NaN when either is NaN (as np.maximum / ndarray.max)."""
    return a if (a >= b or a != a) else b
