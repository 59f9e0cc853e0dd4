"""Central finite differences, shared by the reference and nn tests."""
import numpy as np


def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every element of ``a`` (float64).

    ``a`` is perturbed in place, one element at a time, and restored.
    """
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * h)
    return g
