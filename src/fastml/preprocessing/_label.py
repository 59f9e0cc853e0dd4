"""LabelEncoder (sklearn.preprocessing) on the ``unique_counts`` / ``encode_values`` kernels."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .._config import instance as _backend


def kernel_values(values):
    """1-D values as the encoding kernels take them (int64 or float64), or None for
    dtypes they don't take (strings, objects, uint64), which NumPy handles."""
    kind = values.dtype.kind
    if kind in "b" or (kind == "u" and values.dtype.itemsize < 8) or kind == "i":
        return np.ascontiguousarray(values, dtype=np.int64)
    if kind == "f" and values.dtype.itemsize <= 8:
        return np.ascontiguousarray(values, dtype=np.float64)
    return None


def unique(values):
    """Sorted distinct values in values' dtype (NaN last), on the backend's kernel
    for numeric input."""
    kv = kernel_values(values)
    if kv is None:
        return np.unique(values)
    return _backend().unique_counts(kv)[0].astype(values.dtype, copy=False)


def encode(values, categories):
    """Codes of values in the sorted ``categories`` (int64) and the values that
    are not among them (sorted distinct, empty when every value is known)."""
    kv, kc = kernel_values(values), kernel_values(categories)
    if kv is None or kc is None or kv.dtype != kc.dtype:
        codes = np.searchsorted(categories, values)
        known = np.isin(values, categories)
        codes = np.where(known, codes, -1)
    else:
        codes = _backend().encode_values(kv, kc)
    unseen = codes < 0
    return codes, (np.unique(values[unseen]) if unseen.any() else values[:0])


class LabelEncoder(TransformerMixin, BaseEstimator):
    """Encode target labels as integers ``0 .. n_classes - 1``
    (:class:`sklearn.preprocessing.LabelEncoder`).

    ``classes_`` are the sorted distinct labels. Numeric labels (integers up
    to 64 bits, except uint64, and floats) run on the backend's kernels:
    ``unique_counts`` to fit, ``encode_values`` to transform; strings and other
    objects on NumPy, as scikit-learn.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted, in y's dtype (NaN last).

    Notes
    -----
    A 1-D target transformer: y is (n_samples,) (a column vector is accepted
    with a ``DataConversionWarning``, as scikit-learn). ``transform`` returns
    int64 codes; an unseen label raises ``ValueError`` listing the unseen
    labels. Empty input gives an empty array.
    """

    def fit(self, y):
        """Learn the sorted distinct labels of y (n_samples,); returns self."""
        y = column_or_1d(y, warn=True)
        self.classes_ = unique(y)
        return self

    def fit_transform(self, y):
        """Fit on y (n_samples,), then return its int64 codes (n_samples,)."""
        return self.fit(y).transform(y)

    def transform(self, y):
        """Codes of the labels y (n_samples,) -> int64 (n_samples,).

        Raises NotFittedError (before fit) and ValueError (an unseen label).
        """
        check_is_fitted(self)
        y = column_or_1d(y, dtype=self.classes_.dtype, warn=True)
        if y.size == 0:
            return np.asarray([])
        codes, unseen = encode(y, self.classes_)
        if unseen.size:  # scikit-learn's message lists them as a Python list
            raise ValueError(f"y contains previously unseen labels: {list(unseen)}")
        return codes

    def inverse_transform(self, y):
        """Labels of the codes y (n_samples,) -> classes_'s dtype (n_samples,).

        Raises ValueError for a code outside ``[0, n_classes)``.
        """
        check_is_fitted(self)
        y = column_or_1d(y, warn=True)
        if y.size == 0:
            return np.asarray([])
        unseen = np.setdiff1d(y, np.arange(len(self.classes_)))
        if unseen.size:
            raise ValueError(f"y contains previously unseen labels: {unseen}")
        return self.classes_[np.asarray(y)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.target_tags.one_d_labels = True
        return tags
