"""PolynomialFeatures (sklearn.preprocessing) on the ``polynomial_features`` kernel."""
from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, combinations, combinations_with_replacement
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    FLOAT_DTYPES,
    _check_feature_names_in,
    check_is_fitted,
    validate_data,
)

from .._config import instance as _backend
from ._base import kernel_input, reject_sparse


def _monomials(n_features, min_degree, max_degree, interaction_only):
    """Feature-index tuples of the monomials of degree min..max, in scikit-learn's
    order (by degree, then lexicographic); () is the constant."""
    comb = combinations if interaction_only else combinations_with_replacement
    return chain.from_iterable(comb(range(n_features), d)
                               for d in range(min_degree, max_degree + 1))


def product_table(n_features, min_degree, max_degree, interaction_only, include_bias):
    """The kernel's recipe: every monomial up to max_degree as ``left * X[:, right]``.

    Returns int64 arrays ``left``, ``right`` (one entry per monomial of degree
    0..max_degree: ``left`` is the index of the monomial without its last
    factor, -1 for the constant; ``right`` the last factor's feature, -1 for
    the constant) and ``keep``, the monomials the output holds, in order.
    """
    every = list(_monomials(n_features, 0, max_degree, interaction_only))
    index = {m: i for i, m in enumerate(every)}
    left = np.array([index[m[:-1]] if m else -1 for m in every], dtype=np.int64)
    right = np.array([m[-1] if m else -1 for m in every], dtype=np.int64)
    wanted = _monomials(n_features, max(1, min_degree), max_degree, interaction_only)
    keep = np.array(([0] if include_bias else []) + [index[m] for m in wanted], dtype=np.int64)
    return left, right, keep


class PolynomialFeatures(TransformerMixin, BaseEstimator):
    """Polynomial and interaction features (:class:`sklearn.preprocessing.PolynomialFeatures`).

    Output columns are the monomials of the input features of degree
    ``min_degree`` to ``max_degree``, in scikit-learn's order (the constant 1
    first when ``include_bias``). The backend's ``polynomial_features`` kernel
    builds each output row in one pass, every monomial from a lower one times a
    feature (no power is recomputed), writing rows contiguously.

    Parameters
    ----------
    degree : int or tuple (min_degree, max_degree), default=2
    interaction_only : bool, default=False
        Only products of distinct features (no ``x0^2``).
    include_bias : bool, default=True
        Include the constant column of ones.
    order : {'C', 'F'}, default='C'
        Memory layout of the dense output ('F' costs one extra copy here).

    Attributes
    ----------
    powers_ : ndarray of shape (n_output_features_, n_features_in_)
        Exponent of each input feature in each output column.
    n_output_features_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on input with string column names (a DataFrame).

    Notes
    -----
    Dense input only (``TypeError`` for sparse, which scikit-learn also takes).
    Integer input becomes float64; float32 is kept. NaN or inf in ``transform``
    input raise ``ValueError``, as in scikit-learn.
    """

    _parameter_constraints: dict = {
        "degree": [Interval(Integral, 0, None, closed="left"), "array-like"],
        "interaction_only": ["boolean"],
        "include_bias": ["boolean"],
        "order": [StrOptions({"C", "F"})],
    }

    def __init__(self, degree=2, *, interaction_only=False, include_bias=True, order="C"):
        self.degree = degree
        self.interaction_only = interaction_only
        self.include_bias = include_bias
        self.order = order

    def _degrees(self):
        if isinstance(self.degree, Integral):
            if self.degree == 0 and not self.include_bias:
                raise ValueError("Setting degree to zero and include_bias to False would "
                                 "result in an empty output array.")
            return 0, int(self.degree)
        if isinstance(self.degree, Iterable) and len(self.degree) == 2:
            lo, hi = self.degree
            if not (isinstance(lo, Integral) and isinstance(hi, Integral) and 0 <= lo <= hi):
                raise ValueError("degree=(min_degree, max_degree) must be non-negative "
                                 "integers that fulfil min_degree <= max_degree, got "
                                 f"{self.degree}.")
            if hi == 0 and not self.include_bias:
                raise ValueError("Setting both min_degree and max_degree to zero and "
                                 "include_bias to False would result in an empty output array.")
            return int(lo), int(hi)
        raise ValueError("degree must be a non-negative int or tuple (min_degree, max_degree), "
                         f"got {self.degree}.")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the output monomials for X (n_samples, n_features); returns self.

        Raises ValueError (degree, X not 2-D or empty) and TypeError (sparse X).
        """
        reject_sparse(X, "PolynomialFeatures")
        n_features = validate_data(self, X).shape[1]
        self._min_degree, self._max_degree = self._degrees()
        self._left, self._right, self._keep = product_table(
            n_features, self._min_degree, self._max_degree, self.interaction_only,
            self.include_bias)
        self.n_output_features_ = len(self._keep)
        return self

    @property
    def powers_(self):
        """Exponent of each input feature in each output column, int64 (n_out, n_in)."""
        check_is_fitted(self)
        monomials = chain([()] if self.include_bias else [], _monomials(
            self.n_features_in_, max(1, self._min_degree), self._max_degree,
            self.interaction_only))
        return np.vstack([np.bincount(np.asarray(m, dtype=np.int64),
                                      minlength=self.n_features_in_) for m in monomials])

    def get_feature_names_out(self, input_features=None):
        """Names such as ``'1'``, ``'x0'``, ``'x0^2'``, ``'x0 x1'``, as scikit-learn's."""
        names = _check_feature_names_in(self, input_features)
        out = []
        for row in self.powers_:
            idx = np.flatnonzero(row)
            out.append(" ".join(names[i] if row[i] == 1 else f"{names[i]}^{row[i]}"
                                for i in idx) or "1")
        return np.asarray(out, dtype=object)

    def transform(self, X):
        """The polynomial features of X (n_samples, n_features_in_) ->
        (n_samples, n_output_features_), X's float dtype (float64 for integers).

        Raises NotFittedError (before fit), ValueError (features, NaN or inf)
        and TypeError (sparse X).
        """
        check_is_fitted(self)
        reject_sparse(X, "PolynomialFeatures")
        X = validate_data(self, X, reset=False, dtype=FLOAT_DTYPES)
        out = _backend().polynomial_features(kernel_input(X), self._left, self._right,
                                             self._keep)
        return np.asarray(out, dtype=X.dtype, order=self.order)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
