"""SimpleImputer (sklearn.impute) on the statistics kernels and ``fill_missing``."""
from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.impute import MissingIndicator
from sklearn.utils._param_validation import MissingValues, StrOptions
from sklearn.utils.validation import (
    FLOAT_DTYPES,
    _check_feature_names_in,
    check_is_fitted,
    validate_data,
)

from .._config import instance as _backend
from ._base import kernel_input, raise_infinity, reject_sparse
from ._categories import is_missing, unique_counts


def _missing_mask(X, missing_values):
    """Where X (any dtype) holds ``missing_values``; NaN matches NaN (and, in
    object arrays, only NaN)."""
    if is_missing(missing_values) and missing_values is not None:
        return X != X if X.dtype == object else (
            np.isnan(X) if X.dtype.kind == "f" else np.zeros(X.shape, bool))
    return X == missing_values


def _smallest(values):
    """min of values; mixed types that don't compare: by (type name, str)."""
    try:
        return min(values)
    except TypeError:
        return min(values, key=lambda v: (str(type(v)), str(v)))


class SimpleImputer(TransformerMixin, BaseEstimator):
    """Replace missing values column-wise by a statistic
    (:class:`sklearn.impute.SimpleImputer`).

    Same parameters, defaults, fitted attributes, outputs and errors as
    scikit-learn's, for dense input. Float input runs on the backend's kernels:
    'mean' on ``column_stats``, 'median' on ``column_quantiles`` (selection,
    not a sort), 'most_frequent' on ``unique_counts`` per column, and
    ``transform`` on ``fill_missing``, which imputes and checks for non-finite
    values in the same pass. Integer input ('most_frequent', 'constant')
    computes its statistics on the kernels and fills with NumPy; object input
    (strings) uses NumPy and Python, as scikit-learn.

    Parameters
    ----------
    missing_values : int, float, str, np.nan or None, default=np.nan
        The placeholder for missing values.
    strategy : {'mean', 'median', 'most_frequent', 'constant'} or callable, default='mean'
        Per column: mean or median of the observed values, the most frequent
        value (ties: the smallest), ``fill_value``, or ``strategy(observed_values)``.
    fill_value : scalar, default=None
        The 'constant' value; None means 0 for numbers, "missing_value" for objects.
    copy : bool, default=True
        If False, impute in place when X is a writeable array of the fitted dtype.
    add_indicator : bool, default=False
        Append scikit-learn's :class:`~sklearn.impute.MissingIndicator` columns.
    keep_empty_features : bool, default=False
        Keep features with no observed value in fit (imputed with 0, or
        ``fill_value`` for 'constant') instead of dropping them with a warning.

    Attributes
    ----------
    statistics_ : ndarray of shape (n_features,)
        The fill value of each feature (NaN: the feature is dropped), in
        scikit-learn's dtypes: float64 for 'mean' and 'most_frequent', X's
        float dtype for 'median', object for 'constant' and object input.
    indicator_ : MissingIndicator or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Raises
    ------
    ValueError
        inf in X (NaN too, when ``missing_values`` is not NaN); a non-numeric
        X for 'mean' / 'median'; a ``fill_value`` that can't be cast to X's dtype.
    TypeError
        Sparse X.
    """

    _parameter_constraints: dict = {
        "missing_values": [MissingValues()],
        "strategy": [StrOptions({"mean", "median", "most_frequent", "constant"}), callable],
        "fill_value": "no_validation",
        "copy": ["boolean"],
        "add_indicator": ["boolean"],
        "keep_empty_features": ["boolean"],
    }

    def __init__(self, *, missing_values=np.nan, strategy="mean", fill_value=None, copy=True,
                 add_indicator=False, keep_empty_features=False):
        self.missing_values = missing_values
        self.strategy = strategy
        self.fill_value = fill_value
        self.copy = copy
        self.add_indicator = add_indicator
        self.keep_empty_features = keep_empty_features

    def _nan_missing(self):
        return is_missing(self.missing_values) and self.missing_values is not None

    def _validate_input(self, X, in_fit):
        reject_sparse(X, "SimpleImputer")
        if self.strategy in ("most_frequent", "constant"):
            dtype = object if isinstance(X, list) and any(
                isinstance(v, str) for row in X for v in row) else None
        else:
            dtype = FLOAT_DTYPES
        if not in_fit and self._fit_dtype.kind == "O":
            dtype = self._fit_dtype
        try:  # the finite check is fused into the kernels (see _checked)
            X = validate_data(self, X, reset=in_fit, dtype=dtype, ensure_all_finite=False,
                              copy=False)
        except ValueError as error:
            if "could not convert" in str(error):
                raise ValueError(f"Cannot use {self.strategy} strategy with non-numeric "
                                 f"data:\n{error}") from None
            raise
        if in_fit:
            self._fit_dtype = X.dtype
        if X.dtype.kind in "fiu" and not isinstance(self.missing_values, (int, float)):
            raise ValueError("'X' and 'missing_values' types are expected to be both "
                             f"numerical. Got X.dtype={X.dtype} and  "
                             f"type(missing_values)={type(self.missing_values)}.")
        if X.dtype.kind not in "iufO":
            raise ValueError(f"SimpleImputer does not support data with dtype {X.dtype}. "
                             "Please provide either a numeric array (with a floating point "
                             "or integer dtype) or categorical data represented either as "
                             "an array with integer dtype or an array of string values with "
                             "an object dtype.")
        if self.strategy == "constant":
            self._check_fill_dtype(X, in_fit)
        return X

    def _check_fill_dtype(self, X, in_fit):
        if in_fit and self.fill_value is not None:
            source = type(self.fill_value)
            message = (f"fill_value={self.fill_value!r} (of type {source!r}) cannot be cast "
                       f"to the input data that is {X.dtype!r}. If fill_value is a Python "
                       "scalar, instead pass  a numpy scalar (e.g. fill_value=np.uint8(0) if "
                       "your data is of type np.uint8). Make sure that both dtypes are of "
                       "the same kind.")
        elif not in_fit:
            source = self._fill_dtype
            message = (f"The dtype of the filling value (i.e. {source!r}) cannot be cast to "
                       f"the input data that is {X.dtype!r}. Make sure that the dtypes of "
                       "the input data are of the same kind between fit and transform.")
        else:
            return
        if not np.can_cast(source, X.dtype, casting="same_kind"):
            raise ValueError(message)

    def _checked(self, X):
        """Float X with missing values as NaN, after the finite check that
        scikit-learn's validation makes: one ``fill_missing`` pass when
        missing_values is not NaN (it counts NaN and inf), none otherwise (the
        statistics kernels see the infinities)."""
        X = kernel_input(X)
        if self._nan_missing():
            return X
        out, n_bad = _backend().fill_missing(X, float(self.missing_values),
                                             np.full(X.shape[1], np.nan))
        if n_bad:
            _raise_non_finite(X, False)
        return out

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn each feature's fill value from X (n_samples, n_features); returns self."""
        X = self._validate_input(X, in_fit=True)
        fill_value = self.fill_value
        if fill_value is None:
            fill_value = 0 if X.dtype.kind in "iuf" else "missing_value"
        self._fill_dtype = X.dtype
        self.indicator_ = None
        if self.add_indicator:
            self.indicator_ = MissingIndicator(missing_values=self.missing_values,
                                               error_on_new=False).fit(X)
        if X.dtype.kind == "f":
            self.statistics_ = self._float_statistics(self._checked(X), fill_value)
        else:
            self.statistics_ = self._other_statistics(X, fill_value)
        return self

    def _float_statistics(self, X, fill_value):
        """Statistics of float X (missing as NaN) on the kernels, with the inf check."""
        empty = 0 if self.keep_empty_features else np.nan
        strategy = self.strategy
        if strategy in ("mean", "constant"):
            count, mean, _ = _backend().column_stats(X)
            if not np.isfinite(mean[count > 0]).all():
                raise_infinity(X)
            if strategy == "constant":
                return self._constant(fill_value, count == 0)
            return np.where(count > 0, mean, empty)
        if strategy == "median":
            # the finite check is a pass of its own here: asking the selection for
            # the extremes too (where an inf would show) measured 3-4x its cost
            if np.isinf(X).any():
                raise_infinity(X)
            median = _backend().column_quantiles(X, np.array([0.5]))[0]
            return np.where(np.isnan(median), empty, median).astype(X.dtype)
        stats = np.empty(X.shape[1])
        for j in range(X.shape[1]):
            column = X[:, j]
            observed = column[~np.isnan(column)]
            if callable(strategy):
                stats[j] = strategy(observed)
                continue
            values, counts = unique_counts(observed)
            if np.isinf(values).any():
                raise_infinity(X)
            stats[j] = values[np.argmax(counts)] if values.size else empty
        return stats

    def _other_statistics(self, X, fill_value):
        """Statistics of integer or object X."""
        missing = _missing_mask(X, self.missing_values)
        if self.strategy == "constant":
            return self._constant(fill_value, missing.all(axis=0))
        stats = np.empty(X.shape[1], object if X.dtype == object else np.float64)
        for j in range(X.shape[1]):
            observed = X[~missing[:, j], j]
            if observed.size == 0:
                stats[j] = 0 if self.keep_empty_features else np.nan
            elif callable(self.strategy):
                stats[j] = self.strategy(observed)
            elif X.dtype == object:
                try:
                    counts = Counter(observed.tolist())
                except TypeError:  # unhashable values
                    kinds = sorted({type(v).__name__ for v in observed.tolist()})
                    raise TypeError("SimpleImputer's values: each argument must be a string "
                                    f"or a number, got {kinds}") from None
                top = max(counts.values())
                stats[j] = _smallest([v for v, c in counts.items() if c == top])
            else:
                values, counts = unique_counts(observed)
                stats[j] = values[np.argmax(counts)]
        return stats

    def _constant(self, fill_value, empty):
        stats = np.full(empty.size, fill_value, dtype=object)
        if not self.keep_empty_features:
            stats[empty] = np.nan
        return stats

    def transform(self, X):
        """Impute X (n_samples, n_features) -> (n_samples, n_kept_features
        [+ n_indicator_features]), X's dtype.

        Raises ValueError (inf; NaN when missing_values is not NaN; wrong
        number of features) and NotFittedError.
        """
        check_is_fitted(self)
        X_in = X
        X = self._validate_input(X, in_fit=False)
        indicator = self.indicator_.transform(X) if self.add_indicator else None
        stats = self.statistics_
        keep = None
        if not self.keep_empty_features:
            valid = ~_missing_mask(stats, np.nan)
            if not valid.all():
                keep = np.flatnonzero(valid)
                dropped = np.flatnonzero(~valid)
                if hasattr(self, "feature_names_in_"):
                    dropped = self.feature_names_in_[dropped]
                warnings.warn(f"Skipping features without any observed values: {dropped}. At "
                              "least one non-missing value is needed for imputation with "
                              f"strategy='{self.strategy}'.")
                X, stats = X[:, keep], stats[keep]
        fill = stats.astype(self._fill_dtype)
        if X.dtype.kind == "f":
            out, n_bad = _backend().fill_missing(kernel_input(X), float(self.missing_values),
                                                 fill.astype(np.float64))
            if n_bad:
                _raise_non_finite(X, self._nan_missing())
            out = out.astype(X.dtype, copy=False)
        else:
            out = np.where(_missing_mask(X, self.missing_values), fill, X).astype(X.dtype)
        if keep is None and not self.copy and X is X_in and X.flags.writeable:
            X[...] = out
            out = X
        return out if indicator is None else np.hstack([out, indicator])

    def inverse_transform(self, X):
        """Put ``missing_values`` back where the indicator columns say they were:
        X (n_samples, n_features_out) -> (n_samples, n_features), float64.

        Raises ValueError unless fitted with ``add_indicator=True``.
        """
        check_is_fitted(self)
        if not self.add_indicator:
            raise ValueError("'inverse_transform' works only when 'SimpleImputer' is "
                             "instantiated with 'add_indicator=True'. Got "
                             f"'add_indicator={self.add_indicator}' instead.")
        X = np.asarray(X)
        features = self.indicator_.features_
        n_kept = X.shape[1] - len(features)
        out = np.zeros((X.shape[0], len(self.statistics_)))
        was_missing = np.zeros(out.shape, bool)
        was_missing[:, features] = X[:, n_kept:].astype(bool)
        # features absent from the imputed block (dropped as empty in fit) are
        # exactly those missing in every row
        kept = np.flatnonzero(~was_missing.all(axis=0))[:n_kept]
        out[:, kept] = X[:, :kept.size]
        out[was_missing] = self.missing_values
        return out

    def get_feature_names_out(self, input_features=None):
        """Names of the kept features, then the indicator's (``missingindicator_<name>``)."""
        check_is_fitted(self, "n_features_in_")
        input_features = _check_feature_names_in(self, input_features)
        names = input_features[~_missing_mask(self.statistics_, np.nan)]
        if self.add_indicator:
            names = np.concatenate([names, self.indicator_.get_feature_names_out(input_features)])
        return names

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self._nan_missing()
        return tags


def _raise_non_finite(X, nan_is_missing):
    """scikit-learn's error for inf in X, or NaN when NaN is not the missing value."""
    if not nan_is_missing and np.isnan(X).any():
        raise ValueError("Input X contains NaN.")
    raise_infinity(X)
