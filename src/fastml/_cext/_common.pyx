"""Build facts shared by the Cython kernels: OpenMP availability, Cython version."""
import cython

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTML_HAVE_OPENMP 1
    #else
    #define FASTML_HAVE_OPENMP 0
    #endif
    """
    int FASTML_HAVE_OPENMP

CYTHON_VERSION = cython.__version__


def openmp_enabled():
    """True when the extensions were compiled with OpenMP (prange runs in parallel)."""
    return bool(FASTML_HAVE_OPENMP)
