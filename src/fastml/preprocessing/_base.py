"""What the transformers share: the kernels' input format and scikit-learn's conventions."""
from __future__ import annotations

import numpy as np
import scipy.sparse

from .._config import instance as _backend


def kernel_input(X):
    """X as the kernels take it: C-contiguous float32/float64.

    scikit-learn keeps float16, which no kernel takes: it goes through float32
    (exactly representable), and results are cast back by the caller.
    """
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float32
    return np.ascontiguousarray(X, dtype=dtype)


def handle_zeros_in_scale(scale):
    """Scales below ``10 * eps`` of their dtype become 1, as scikit-learn's
    ``_handle_zeros_in_scale`` (constant features are left unscaled)."""
    scale = np.array(scale, copy=True)
    scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0
    return scale


def raise_infinity(X):
    """scikit-learn's error for inf in X (its message, so callers matching it work)."""
    raise ValueError(f"Input X contains infinity or a value too large for {X.dtype!r}.")


def scaled(op, X, offset, scale):
    """The backend's ``standardize`` / ``unstandardize`` (``op``) of X, after the
    finite check that op made in its pass: scikit-learn's ValueError for inf."""
    out, n_inf = getattr(_backend(), op)(kernel_input(X), offset, scale)
    if n_inf:
        raise_infinity(X)
    return out


def finish(out, X, X_in, copy):
    """The transform's result: written into the caller's X when ``copy=False`` and
    X is the writeable array passed in, else ``out`` in X's dtype."""
    if not copy and X is X_in and X.flags.writeable:
        X[...] = out
        return X
    return out.astype(X.dtype, copy=False)


def reject_sparse(X, name, hint=""):
    """fastml's transformers take dense input only: TypeError naming the estimator."""
    if scipy.sparse.issparse(X):
        raise TypeError(f"{name} does not support sparse input.{hint}")
