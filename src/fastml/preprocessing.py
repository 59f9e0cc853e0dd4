"""scikit-learn compatible preprocessing transformers on fastml's kernels.

The estimator plumbing (``get_params``, ``clone``, ``set_output``, feature
names, parameter validation) is scikit-learn's own; fastml supplies the
numeric work through the current backend's preprocessing ops
(``column_stats``, ``standardize``, ``unstandardize``). Importing this module
imports scikit-learn; ``import fastml`` alone does not.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils.validation import (
    FLOAT_DTYPES,
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from ._config import instance as _backend

__all__ = ["StandardScaler"]

_EPS64 = np.finfo(np.float64).eps


def _kernel_input(X):
    """X as the kernels take it: C-contiguous float32/float64.

    scikit-learn keeps float16, which no kernel takes: it goes through float32
    (exactly representable), and results are cast back by the caller.
    """
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float32
    return np.ascontiguousarray(X, dtype=dtype)


def _weighted_column_stats(X, w):
    """Weighted, NaN-ignoring twin of the ``column_stats`` op, in NumPy.

    The backends' op is unweighted (the fast path); this reference path gives
    (sum of weights, weighted mean, weighted M2) per column, float64 (F,), a
    column with zero total weight giving 0, 0, 0 as the op does.
    """
    observed = ~np.isnan(X)
    w = w.astype(np.float64, copy=False)
    count = w @ observed
    total = w @ np.where(observed, X, 0).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, 0.0)
    dev = np.where(observed, X - mean, 0.0)
    return count, mean, w @ (dev * dev)


def _merge_stats(na, ma, m2a, nb, mb, m2b):
    """Merge per-column (count, mean, M2) of two chunks (Chan, Golub & LeVeque).

    A side whose count is 0 contributes nothing, whatever its mean and M2
    (possibly NaN) are: so a chunk in which a column has no observed value
    leaves that column's statistics unchanged.
    """
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mb - ma
        frac = nb / n
        mean = ma + delta * frac
        m2 = m2a + m2b + delta * delta * na * frac
    mean = np.where(nb > 0, np.where(na > 0, mean, mb), ma)
    m2 = np.where(nb > 0, np.where(na > 0, m2, m2b), m2a)
    return n, mean, m2


class StandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardize features: ``z = (x - mean_) / scale_``, column-wise.

    Follows :class:`sklearn.preprocessing.StandardScaler` (same parameters,
    defaults, fitted attributes, dtypes and errors) for dense input; the
    statistics and the transforms run on the current fastml backend
    (``fastml.use_backend`` / ``set_backend`` choose it at call time).

    Differences from scikit-learn, both deliberate:

    - ``partial_fit`` merges chunks exactly (Chan et al.): fitting in chunks
      equals one ``fit`` on the whole within rounding, also when a chunk has a
      column with no observed (non-NaN) value, where scikit-learn yields NaN.
    - Sparse input is not supported (``TypeError``); the tags say so.
    - ``n_samples_seen_`` is an integer (int64) without ``sample_weight``,
      as scikit-learn documents (its dense code returns float64 counts).

    Parameters
    ----------
    copy : bool, default=True
        If False, ``transform`` / ``inverse_transform`` write the result into
        ``X`` when ``X`` is a writeable float32/float64 NumPy array (otherwise
        a new array is returned anyway).
    with_mean : bool, default=True
        Subtract the mean.
    with_std : bool, default=True
        Divide by the standard deviation (population, ``ddof=0``).

    Attributes
    ----------
    scale_ : ndarray of shape (n_features,), float64, or None
        ``sqrt(var_)``, with 1 for near-constant features (the same bound as
        scikit-learn's); None when ``with_std=False``.
    mean_ : ndarray of shape (n_features,), float64, or None
        Per-feature mean over the observed values; NaN for a feature never
        observed. None when ``with_mean=False`` and ``with_std=False``.
    var_ : ndarray of shape (n_features,), float64, or None
        Per-feature population variance; NaN for a feature never observed.
        None when ``with_std=False``.
    n_samples_seen_ : int or ndarray of shape (n_features,)
        Samples (sum of ``sample_weight`` when weights were given: float64)
        observed per feature; a scalar when equal for all features, else an
        array (int64 without weights).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on input with string column names (a DataFrame).

    Notes
    -----
    Input goes through scikit-learn's validation: integer input becomes
    float64; float32, float64 (and float16) are kept, and ``transform`` returns
    the input's dtype. NaN is missing: ignored by ``fit``, kept by
    ``transform``. ``inf`` raises ``ValueError``.
    """

    _parameter_constraints: dict = {
        "copy": ["boolean"],
        "with_mean": ["boolean"],
        "with_std": ["boolean"],
    }

    def __init__(self, *, copy=True, with_mean=True, with_std=True):
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std

    def _reset(self):
        if hasattr(self, "n_samples_seen_"):
            del self.n_samples_seen_, self.mean_, self.var_, self.scale_

    def fit(self, X, y=None, sample_weight=None):
        """Compute the mean and standard deviation of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense data; NaN is ignored.
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights (computed by a NumPy reference path; the
            unweighted path runs the backend's one-pass kernel).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            X is not 2-D, empty, or contains inf; bad ``sample_weight`` shape.
        TypeError
            X is sparse.
        """
        self._reset()
        return self.partial_fit(X, y, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the statistics with one more chunk of samples.

        Same arguments, return value and errors as :meth:`fit`; after the
        first call, X must have the features seen before (``ValueError``).
        """
        first_call = not hasattr(self, "n_samples_seen_")
        X = validate_data(self, X, dtype=FLOAT_DTYPES, ensure_all_finite="allow-nan",
                          reset=first_call)
        n_features = X.shape[1]
        if sample_weight is None:
            nb, mb, m2b = _backend().column_stats(_kernel_input(X))
        else:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            nb, mb, m2b = _weighted_column_stats(X, sample_weight)

        zeros = np.zeros(n_features)
        if first_call:
            na, ma, m2a = zeros, zeros, zeros
            weighted = False
        else:
            seen = np.asarray(self.n_samples_seen_)
            weighted = seen.dtype.kind == "f"
            na = np.broadcast_to(seen.astype(np.float64), (n_features,))
            ma = zeros if self.mean_ is None else self.mean_
            m2a = zeros if self.var_ is None else self.var_ * na
        n, mean, m2 = _merge_stats(na, ma, m2a, nb, mb, m2b)

        counts = n if weighted or sample_weight is not None else n.astype(np.int64)
        self.n_samples_seen_ = counts[0] if (counts == counts[0]).all() else counts
        observed = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(observed, m2 / n, np.nan)
        mean = np.where(observed, mean, np.nan)
        self.mean_ = mean if self.with_mean or self.with_std else None
        self.var_ = var if self.with_std else None
        if self.with_std:
            # scikit-learn's _is_constant_feature: var below the rounding error
            # bound of the two-pass algorithm counts as zero, and scale is 1.
            constant = var <= n * _EPS64 * var + (n * mean * _EPS64) ** 2
            self.scale_ = np.sqrt(var)
            self.scale_[constant] = 1.0
        else:
            self.scale_ = None
        return self

    def _offset_scale(self):
        n_features = self.n_features_in_
        offset = self.mean_ if self.with_mean else np.zeros(n_features)
        scale = self.scale_ if self.with_std else np.ones(n_features)
        return offset, scale

    def _apply(self, op, X, X_in, copy):
        """Run backend op ``op`` on validated X; in place when asked and possible."""
        offset, scale = self._offset_scale()
        out = getattr(_backend(), op)(_kernel_input(X), offset, scale)
        if not copy and X is X_in and X.flags.writeable:
            X[...] = out
            return X
        return out.astype(X.dtype, copy=False)

    def transform(self, X, copy=None):
        """Standardize X with the fitted statistics.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
        copy : bool, default=None
            None uses ``self.copy``; False writes into X when X is a writeable
            float NumPy array.

        Returns
        -------
        ndarray of shape (n_samples, n_features_in_)
            X's float dtype (float64 for integer input); NaN stays NaN.

        Raises
        ------
        NotFittedError
            Before ``fit``.
        ValueError
            Wrong number of features, inf in X, X not 2-D.
        TypeError
            X is sparse.
        """
        check_is_fitted(self)
        copy = self.copy if copy is None else copy
        X_in = X
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES,
                          ensure_all_finite="allow-nan")
        return self._apply("standardize", X, X_in, copy)

    def inverse_transform(self, X, copy=None):
        """Undo :meth:`transform`: ``X * scale_ + mean_``.

        Same arguments, return value and errors as :meth:`transform` (like
        scikit-learn, feature names are not checked here).
        """
        check_is_fitted(self)
        copy = self.copy if copy is None else copy
        X_in = X
        X = check_array(X, dtype=FLOAT_DTYPES, ensure_all_finite="allow-nan")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} "
                             f"is expecting {self.n_features_in_} features as input.")
        return self._apply("unstandardize", X, X_in, copy)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
