"""Scalers: StandardScaler, MinMaxScaler, MaxAbsScaler, Normalizer (sklearn.preprocessing)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import (
    FLOAT_DTYPES,
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from .._config import instance as _backend
from ._base import (
    finish,
    handle_zeros_in_scale,
    kernel_input,
    raise_infinity,
    reject_sparse,
    scaled,
)

_EPS64 = np.finfo(np.float64).eps


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
        X = validate_data(self, X, dtype=FLOAT_DTYPES, ensure_all_finite=False,
                          reset=first_call)
        n_features = X.shape[1]
        if sample_weight is None:
            nb, mb, m2b = _backend().column_stats(kernel_input(X))
        else:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            with np.errstate(invalid="ignore", over="ignore"):
                nb, mb, m2b = _weighted_column_stats(X, sample_weight)
        if not np.isfinite(mb[nb > 0]).all():  # an inf makes its column's mean inf or NaN
            raise_infinity(X)

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
        return finish(scaled(op, X, offset, scale), X, X_in, copy)

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
        check_is_fitted(self, "n_samples_seen_")  # unfitted again after a failed fit
        copy = self.copy if copy is None else copy
        X_in = X
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES, ensure_all_finite=False)
        return self._apply("standardize", X, X_in, copy)

    def inverse_transform(self, X, copy=None):
        """Undo :meth:`transform`: ``X * scale_ + mean_``.

        Same arguments, return value and errors as :meth:`transform` (like
        scikit-learn, feature names are not checked here).
        """
        check_is_fitted(self, "n_samples_seen_")
        copy = self.copy if copy is None else copy
        X_in = X
        X = check_array(X, dtype=FLOAT_DTYPES, ensure_all_finite=False)
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


def _observed_minmax(X, prev_lo=None, prev_hi=None):
    """Per-column (min, max) of X merged with the previous chunks', float64, from one
    pass of the backend's ``column_minmax``; NaN where never observed. Raises
    scikit-learn's ValueError for inf: the kernel's min/max reveal it, so the
    fit needs no separate finiteness pass over X."""
    lo, hi = _backend().column_minmax(kernel_input(X))
    if np.isneginf(lo).any() or np.isposinf(hi).any():
        raise_infinity(X)
    if prev_lo is not None:  # fmin/fmax: a column unobserved on one side keeps the other's
        lo, hi = np.fmin(prev_lo, lo), np.fmax(prev_hi, hi)
    unobserved = ~(lo <= hi)
    lo[unobserved] = hi[unobserved] = np.nan
    return lo, hi


class _RangeScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """What the column scalers share: validation of the transforms' input, tags."""

    def _validated(self, X, copy, reset_check=True):
        check_is_fitted(self)
        copy = self.copy if copy is None else copy
        X_in = X
        reject_sparse(X, type(self).__name__)
        # no finiteness pass: the transform kernels count the infinities
        if reset_check:
            X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES, ensure_all_finite=False)
        else:  # inverse_transform: feature names are not checked, as in scikit-learn
            X = check_array(X, dtype=FLOAT_DTYPES, ensure_all_finite=False)
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} "
                                 f"is expecting {self.n_features_in_} features as input.")
        return X, X_in, copy

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class _MinMaxFitted(_RangeScaler):
    """MinMaxScaler and MaxAbsScaler: statistics from the ``column_minmax`` kernel,
    which also finds inf, and a fit_transform that validates X once."""

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, validating X once: the fit's min/max kernel has
        already rejected inf, so the transform needs no second finiteness pass.
        Same return value and errors as fit then transform."""
        self._reset()
        return self._forward(self._partial_fit(X), X, self.copy)


class MinMaxScaler(_MinMaxFitted):
    """Scale each feature to ``feature_range``: ``X * scale_ + min_``, column-wise.

    Follows :class:`sklearn.preprocessing.MinMaxScaler` (parameters, defaults,
    fitted attributes in X's dtype, errors) for dense input; the per-column
    minimum and maximum come from one pass of the backend's ``column_minmax``
    kernel, which also detects inf (so fitting makes no separate finiteness
    pass), and the transforms run on its affine kernels.

    Differences from scikit-learn, both deliberate: ``partial_fit`` merges
    chunks ignoring NaN, so a chunk in which a feature has no observed value
    leaves that feature's range unchanged (scikit-learn's yields NaN); sparse
    input raises ``TypeError``, as scikit-learn's MinMaxScaler.

    Parameters
    ----------
    feature_range : tuple (min, max), default=(0, 1)
        Desired range of the transformed data; ``min < max`` (else ValueError).
    copy : bool, default=True
        If False, transforms write into X when X is a writeable float NumPy array.
    clip : bool, default=False
        Clip transformed values of held-out data to ``feature_range``.

    Attributes
    ----------
    min_ : ndarray of shape (n_features,)
        Per-feature offset: ``feature_range[0] - data_min_ * scale_``.
    scale_ : ndarray of shape (n_features,)
        ``(feature_range[1] - feature_range[0]) / data_range_``; a range below
        ``10 * eps`` counts as 1 (constant features are only shifted).
    data_min_, data_max_, data_range_ : ndarray of shape (n_features,)
        Per-feature minimum, maximum and their difference over the observed
        (non-NaN) values; NaN for a feature never observed. All attributes
        have X's float dtype, as in scikit-learn.
    n_samples_seen_ : int
        Rows seen (NaN or not).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on input with string column names (a DataFrame).

    Notes
    -----
    Integer input becomes float64; float32 (and float16) are kept. NaN is
    missing: ignored by ``fit``, kept by ``transform``. ``inf`` raises ``ValueError``.
    """

    _parameter_constraints: dict = {
        "feature_range": [tuple],
        "copy": ["boolean"],
        "clip": ["boolean"],
    }

    def __init__(self, feature_range=(0, 1), *, copy=True, clip=False):
        self.feature_range = feature_range
        self.copy = copy
        self.clip = clip

    def _reset(self):
        if hasattr(self, "scale_"):
            del (self.scale_, self.min_, self.n_samples_seen_, self.data_min_,
                 self.data_max_, self.data_range_)

    def fit(self, X, y=None):
        """Compute the per-feature minimum and maximum of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense data; NaN is ignored.
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        ValueError
            ``feature_range`` not increasing; X not 2-D, empty, or containing inf.
        TypeError
            X is sparse.
        """
        self._reset()
        return self.partial_fit(X, y)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Update the minimum and maximum with one more chunk of samples.

        Same arguments, return value and errors as :meth:`fit`; after the
        first call X must have the features seen before (``ValueError``).
        """
        self._partial_fit(X)
        return self

    def _partial_fit(self, X):
        """partial_fit's work; returns the validated X."""
        lo_range, hi_range = self.feature_range
        if lo_range >= hi_range:
            raise ValueError("Minimum of desired feature range must be smaller than maximum. "
                             f"Got {self.feature_range}.")
        reject_sparse(X, "MinMaxScaler", " Consider using MaxAbsScaler instead.")
        first_pass = not hasattr(self, "n_samples_seen_")
        X = validate_data(self, X, reset=first_pass, dtype=FLOAT_DTYPES, ensure_all_finite=False)
        if first_pass:
            lo, hi = _observed_minmax(X)
            self.n_samples_seen_ = X.shape[0]
        else:
            lo, hi = _observed_minmax(X, self.data_min_, self.data_max_)
            self.n_samples_seen_ += X.shape[0]
        dtype = X.dtype
        data_min, data_max = lo.astype(dtype), hi.astype(dtype)
        data_range = data_max - data_min
        self.scale_ = (dtype.type(hi_range) - dtype.type(lo_range)) / handle_zeros_in_scale(
            data_range)
        self.min_ = dtype.type(lo_range) - data_min * self.scale_
        self.data_min_, self.data_max_, self.data_range_ = data_min, data_max, data_range
        return X

    def transform(self, X, copy=None):
        """Scale X to ``feature_range`` with the fitted minimum and maximum.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
        copy : bool, default=None
            None uses ``self.copy``.

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
        return self._forward(*self._validated(X, copy))

    def _forward(self, X, X_in, copy):
        out = scaled("unstandardize", X, self.min_, self.scale_)
        if self.clip:
            np.clip(out, self.feature_range[0], self.feature_range[1], out=out)
        return finish(out, X, X_in, copy)

    def inverse_transform(self, X, copy=None):
        """Undo :meth:`transform`: ``(X - min_) / scale_``. Same arguments, return
        value and errors as :meth:`transform`."""
        X, X_in, copy = self._validated(X, copy, reset_check=False)
        return finish(scaled("standardize", X, self.min_, self.scale_),
                      X, X_in, copy)



class MaxAbsScaler(_MinMaxFitted):
    """Scale each feature by its maximum absolute value: ``X / scale_``, into [-1, 1].

    Follows :class:`sklearn.preprocessing.MaxAbsScaler` for dense input (no
    shift, so zeros stay zeros); the maxima come from one pass of the
    backend's ``column_minmax`` kernel (``max(|min|, |max|)``), which also
    detects inf. Dense input only (``TypeError`` for sparse, where
    scikit-learn also takes CSR/CSC); ``partial_fit`` merges chunks ignoring
    NaN, so a chunk in which a feature has no observed value changes nothing.

    Parameters
    ----------
    copy : bool, default=True
        If False, transforms write into X when X is a writeable float NumPy array.
    clip : bool, default=False
        Clip transformed values of held-out data to [-1, 1].

    Attributes
    ----------
    max_abs_ : ndarray of shape (n_features,)
        Per-feature maximum absolute value (X's float dtype); NaN if never observed.
    scale_ : ndarray of shape (n_features,)
        ``max_abs_``, with values below ``10 * eps`` replaced by 1.
    n_samples_seen_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    Integer input becomes float64; float32 (and float16) are kept. NaN is
    ignored by ``fit`` and kept by ``transform``; ``inf`` raises ``ValueError``.
    """

    _parameter_constraints: dict = {"copy": ["boolean"], "clip": ["boolean"]}

    def __init__(self, *, copy=True, clip=False):
        self.copy = copy
        self.clip = clip

    def _reset(self):
        if hasattr(self, "scale_"):
            del self.scale_, self.n_samples_seen_, self.max_abs_

    def fit(self, X, y=None):
        """Compute the per-feature maximum absolute value. Returns self.

        Raises ValueError (X not 2-D, empty, inf) and TypeError (sparse X).
        """
        self._reset()
        return self.partial_fit(X, y)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Update the maxima with one more chunk; same arguments and errors as :meth:`fit`."""
        self._partial_fit(X)
        return self

    def _partial_fit(self, X):
        """partial_fit's work; returns the validated X."""
        reject_sparse(X, "MaxAbsScaler")
        first_pass = not hasattr(self, "n_samples_seen_")
        X = validate_data(self, X, reset=first_pass, dtype=FLOAT_DTYPES, ensure_all_finite=False)
        lo, hi = _observed_minmax(X)
        max_abs = np.fmax(np.abs(lo), np.abs(hi)).astype(X.dtype)  # NaN stays NaN
        if first_pass:
            self.n_samples_seen_ = X.shape[0]
        else:
            max_abs = np.fmax(self.max_abs_, max_abs)
            self.n_samples_seen_ += X.shape[0]
        self.max_abs_ = max_abs
        self.scale_ = handle_zeros_in_scale(max_abs)
        return X

    def transform(self, X, copy=None):
        """``X / scale_``: X (n_samples, n_features_in_) -> the same shape, X's float
        dtype. Raises NotFittedError, ValueError (features, inf), TypeError (sparse)."""
        return self._forward(*self._validated(X, copy))

    def _forward(self, X, X_in, copy):
        out = scaled("standardize", X, np.zeros(self.n_features_in_),
                                     self.scale_)
        if self.clip:
            np.clip(out, -1, 1, out=out)
        return finish(out, X, X_in, copy)

    def inverse_transform(self, X, copy=None):
        """``X * scale_``; same arguments, return value and errors as :meth:`transform`."""
        X, X_in, copy = self._validated(X, copy, reset_check=False)
        return finish(scaled("unstandardize", X, np.zeros(self.n_features_in_),
                                               self.scale_), X, X_in, copy)



class Normalizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Scale each sample (row) to unit norm (:class:`sklearn.preprocessing.Normalizer`).

    Stateless: ``fit`` only validates. Rows are divided by their ``'l1'``,
    ``'l2'`` or ``'max'`` norm by the backend's ``normalize_rows`` kernel (one
    pass to accumulate the norm, one to write; norms accumulate in float64); a
    row of zero norm is left as it is. Dense input only (``TypeError`` for
    sparse, where scikit-learn also takes CSR).

    Parameters
    ----------
    norm : {'l1', 'l2', 'max'}, default='l2'
    copy : bool, default=True
        If False, ``transform`` writes into X when X is a writeable float NumPy array.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    Integer input becomes float64; float32 is kept. NaN or inf raise
    ``ValueError``, as in scikit-learn.
    """

    _parameter_constraints: dict = {"norm": [StrOptions({"l1", "l2", "max"})],
                                    "copy": ["boolean"]}

    def __init__(self, norm="l2", *, copy=True):
        self.norm = norm
        self.copy = copy

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate X (n_samples, n_features) and record its features; returns self."""
        reject_sparse(X, "Normalizer")
        validate_data(self, X)
        return self

    def transform(self, X, copy=None):
        """Each row of X (n_samples, n_features) over its norm; X's float dtype.

        No ``fit`` is needed (as scikit-learn's); after one, X must have the
        features seen. Raises ValueError (features, NaN or inf) and TypeError
        (sparse X).
        """
        copy = self.copy if copy is None else copy
        X_in = X
        reject_sparse(X, "Normalizer")
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES)
        return finish(_backend().normalize_rows(kernel_input(X), self.norm), X, X_in, copy)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class RobustScaler(_RangeScaler):
    """Scale with statistics robust to outliers: ``(X - center_) / scale_``, where
    ``center_`` is the median and ``scale_`` the ``quantile_range`` (the
    interquartile range by default), column-wise.

    Follows :class:`sklearn.preprocessing.RobustScaler` for dense input
    (parameters, defaults, fitted attributes and their dtypes, errors). The
    median and both quantiles of each column come from one call of the
    backend's ``column_quantiles`` kernel, which selects them (no full sort per
    column), with NumPy's 'linear' interpolation as ``np.nanpercentile``.

    Parameters
    ----------
    with_centering : bool, default=True
        Subtract the median.
    with_scaling : bool, default=True
        Divide by the quantile range.
    quantile_range : tuple (q_min, q_max), 0 <= q_min <= q_max <= 100, default=(25.0, 75.0)
        Percentiles of the range (ValueError otherwise).
    copy : bool, default=True
        If False, transforms write into X when X is a writeable float NumPy array.
    unit_variance : bool, default=False
        Divide the scale by the standard normal's range for ``quantile_range``,
        so normally distributed features get variance 1.

    Attributes
    ----------
    center_ : ndarray of shape (n_features,) or None
        Per-feature median of the observed values (NaN if none), in X's dtype;
        None without centering.
    scale_ : ndarray of shape (n_features,), float64, or None
        Per-feature quantile range, ranges below ``10 * eps`` replaced by 1; None
        without scaling.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    No ``partial_fit`` (scikit-learn has none: quantiles don't merge). Dense
    input only (``TypeError`` for sparse, which scikit-learn takes without
    centering). NaN is ignored by ``fit`` and kept by ``transform``; inf
    raises ``ValueError``.
    """

    _parameter_constraints: dict = {
        "with_centering": ["boolean"],
        "with_scaling": ["boolean"],
        "quantile_range": [tuple],
        "copy": ["boolean"],
        "unit_variance": ["boolean"],
    }

    def __init__(self, *, with_centering=True, with_scaling=True, quantile_range=(25.0, 75.0),
                 copy=True, unit_variance=False):
        self.with_centering = with_centering
        self.with_scaling = with_scaling
        self.quantile_range = quantile_range
        self.copy = copy
        self.unit_variance = unit_variance

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the median and the quantile range of each feature of X
        (n_samples, n_features); returns self.

        Raises ValueError (quantile_range, X not 2-D, empty or with inf) and
        TypeError (sparse X).
        """
        reject_sparse(X, "RobustScaler")
        X = validate_data(self, X, dtype=FLOAT_DTYPES, ensure_all_finite="allow-nan")
        q_min, q_max = self.quantile_range
        if not 0 <= q_min <= q_max <= 100:
            raise ValueError(f"Invalid quantile range: {self.quantile_range}")
        q = ([0.5] if self.with_centering else []) + \
            ([q_min / 100, q_max / 100] if self.with_scaling else [])
        stats = _backend().column_quantiles(kernel_input(X), np.asarray(q, dtype=np.float64))
        # As scikit-learn: the median (np.nanmedian) in X's dtype, the quantile
        # range (np.nanpercentile with float64 q) in float64.
        self.center_ = stats[0].astype(X.dtype) if self.with_centering else None
        self.scale_ = None
        if self.with_scaling:
            lo, hi = stats[-2:]
            self.scale_ = handle_zeros_in_scale(hi - lo)
            if self.unit_variance:
                from scipy.stats import norm
                self.scale_ = self.scale_ / (norm.ppf(q_max / 100.0) - norm.ppf(q_min / 100.0))
        return self

    def _center_scale(self):
        n = self.n_features_in_
        return (np.zeros(n) if self.center_ is None else self.center_,
                np.ones(n) if self.scale_ is None else self.scale_)

    def transform(self, X, copy=None):
        """``(X - center_) / scale_``: X (n_samples, n_features_in_) -> the same
        shape, X's float dtype; NaN stays NaN. Raises NotFittedError, ValueError
        (features, inf) and TypeError (sparse X)."""
        X, X_in, copy = self._validated(X, copy)
        return finish(scaled("standardize", X, *self._center_scale()),
                      X, X_in, copy)

    def inverse_transform(self, X, copy=None):
        """``X * scale_ + center_``; same arguments, return value and errors as
        :meth:`transform`."""
        X, X_in, copy = self._validated(X, copy, reset_check=False)
        return finish(scaled("unstandardize", X, *self._center_scale()),
                      X, X_in, copy)
