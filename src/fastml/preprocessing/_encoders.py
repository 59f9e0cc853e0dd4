"""OneHotEncoder and OrdinalEncoder (sklearn.preprocessing) on the encoding kernels.

Fit finds each column's categories with the backend's ``unique_counts``;
transform turns values into category codes with ``encode_values`` and the codes
into outputs through one small lookup table per column (grouping infrequent
categories, dropping one, placing unknowns), so the data is read once per
column. The one-hot rows are written by the ``one_hot`` kernel (dense) or
assembled as CSR arrays directly.
"""
from __future__ import annotations

import numbers
import warnings
from numbers import Integral

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import (
    _check_feature_names_in,
    check_array,
    check_is_fitted,
    validate_data,
)

from .._config import instance as _backend
from ._base import raise_infinity
from ._categories import (
    check_predefined,
    codes_of,
    has_infinity,
    has_nan_category,
    is_missing,
    unique_counts,
)

INFREQUENT = "infrequent_sklearn"  # scikit-learn's name for the grouped category


class _Encoder(TransformerMixin, BaseEstimator):
    """What both encoders share: column validation, categories and their counts,
    scikit-learn's infrequent-category grouping, values to category codes."""

    _parameter_constraints: dict = {
        "categories": [StrOptions({"auto"}), list],
        "dtype": "no_validation",  # NumPy validates it
        "max_categories": [Interval(Integral, 1, None, closed="left"), None],
        "min_frequency": [Interval(Integral, 1, None, closed="left"),
                          Interval(RealNotInt, 0, 1, closed="neither"), None],
    }

    # ------------------------------------------------------------- columns
    def _columns(self, X, reset):
        """X's columns as 1-D arrays, each in its own dtype (a DataFrame keeps
        its columns' dtypes; lists of strings become object), and n_samples.

        Infinity is not checked here: it shows among the categories (fit) or
        the unknown values (transform), so no extra pass over X looks for it.
        """
        if reset:
            validate_data(self, X=X, reset=True, skip_check_array=True)
        if hasattr(X, "iloc") and getattr(X, "ndim", 0) == 2:
            columns = [check_array(np.asarray(X.iloc[:, i]), ensure_2d=False, dtype=None,
                                   ensure_all_finite=False) for i in range(X.shape[1])]
            n_samples = X.shape[0]
        else:
            arr = check_array(X, dtype=None, ensure_all_finite=False)
            if not hasattr(X, "dtype") and arr.dtype.kind == "U":
                arr = check_array(X, dtype=object, ensure_all_finite=False)
            columns = [arr[:, i] for i in range(arr.shape[1])]
            n_samples = arr.shape[0]
        if not reset:
            validate_data(self, X=X, reset=False, skip_check_array=True)
        return columns, n_samples

    # ---------------------------------------------------------------- fit
    def _fit_categories(self, columns, n_samples, missing_is_category):
        """Set ``categories_`` and, when ``min_frequency`` or ``max_categories``
        is set, the infrequent categories and each column's group map.

        With ``missing_is_category=False`` (OrdinalEncoder) a NaN category is
        never grouped as infrequent and has no entry in the group map.
        """
        if self.categories != "auto" and len(self.categories) != len(columns):
            raise ValueError("Shape mismatch: if categories is an array, it has to be of "
                             "shape (n_features,).")
        self.categories_, counts = [], []
        for i, column in enumerate(columns):
            if self.categories == "auto":
                cats, count = unique_counts(column)
                if has_infinity(cats):
                    raise_infinity(column)
            else:
                cats = check_predefined(self.categories[i], column, i)
                codes, unseen = self._codes(column, cats)
                if unseen and self.handle_unknown == "error":
                    raise ValueError(f"Found unknown categories {unseen} in column {i} "
                                     "during fit")
                count = np.bincount(codes[codes >= 0], minlength=cats.size)
            self.categories_.append(cats)
            counts.append(count)
        self._infrequent_enabled = self.min_frequency is not None or \
            self.max_categories is not None
        if self._infrequent_enabled:
            self._fit_infrequent(n_samples, counts, missing_is_category)

    def _fit_infrequent(self, n_samples, counts, missing_is_category):
        """scikit-learn's grouping: a category is infrequent when seen fewer than
        ``min_frequency`` times (a float: that fraction of n_samples); beyond
        ``max_categories - 1`` frequent ones, the least frequent (ties: the
        earlier category stays frequent) are infrequent too. Every infrequent
        category of a column maps to one group after the frequent ones."""
        self._infrequent_indices, self._group_maps = [], []
        for cats, count in zip(self.categories_, counts):
            if not missing_is_category and has_nan_category(cats):
                count = count[:-1]
            if isinstance(self.min_frequency, numbers.Integral):
                rare = count < self.min_frequency
            elif isinstance(self.min_frequency, numbers.Real):
                rare = count < self.min_frequency * n_samples
            else:
                rare = np.zeros(count.size, bool)
            if self.max_categories is not None and \
                    self.max_categories < count.size - rare.sum() + 1:
                n_frequent = self.max_categories - 1
                if n_frequent == 0:
                    rare[:] = True
                else:
                    rare[np.argsort(count, kind="stable")[:-n_frequent]] = True
            idx = np.flatnonzero(rare)
            if idx.size == 0:
                self._infrequent_indices.append(None)
                self._group_maps.append(None)
                continue
            group = np.empty(count.size, np.int64)
            group[~rare] = np.arange(count.size - idx.size)
            group[rare] = count.size - idx.size
            self._infrequent_indices.append(idx)
            self._group_maps.append(group)

    @property
    def infrequent_categories_(self):
        """Infrequent categories of each feature (None where there are none);
        AttributeError unless ``min_frequency`` or ``max_categories`` is set."""
        return [None if idx is None else cats[idx]
                for cats, idx in zip(self.categories_, self._infrequent_indices)]

    def _groups(self, i):
        """Column i's group of each category (identity without infrequent ones)."""
        if self._infrequent_enabled and self._group_maps[i] is not None:
            return self._group_maps[i]
        n = self.categories_[i].size
        return np.arange(n - 1 if self._skips_missing and has_nan_category(self.categories_[i])
                         else n)

    # ---------------------------------------------------------- transform
    @staticmethod
    def _codes(column, categories):
        """Codes of a column in its categories; inf in it raises scikit-learn's
        error (it can only be among the unknown values, or a given category)."""
        codes, unseen = codes_of(column, categories)
        if (unseen and has_infinity(np.asarray(unseen, dtype=object).astype(column.dtype))) or \
                (has_infinity(categories) and has_infinity(column)):
            raise_infinity(column)
        return codes, unseen

    def _encode(self, X, reset=False):
        """Category codes of each column of X (-1: unknown) and the columns with
        unknown values; ValueError for an unknown value when handle_unknown='error'."""
        columns, n_samples = self._columns(X, reset)
        codes, with_unknown = [], []
        for i, (column, cats) in enumerate(zip(columns, self.categories_)):
            c, unseen = self._codes(column, cats)
            if unseen:
                if self.handle_unknown == "error":
                    raise ValueError(f"Found unknown categories {unseen} in column {i} "
                                     "during transform")
                with_unknown.append(i)
            codes.append(c)
        return codes, with_unknown, n_samples

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True
        tags.input_tags.allow_nan = True
        return tags


class OneHotEncoder(_Encoder):
    """Encode categorical features as a one-hot array
    (:class:`sklearn.preprocessing.OneHotEncoder`).

    Same parameters, defaults, fitted attributes, outputs and errors as
    scikit-learn's. Numeric columns (integers up to 64 bits except uint64, and
    floats) are fitted and encoded by the backend's kernels; string and object
    columns by NumPy and Python, as scikit-learn. NaN (and ``None`` in object
    columns) is a category of its own, sorted last.

    Parameters
    ----------
    categories : 'auto' or list of array-like, default='auto'
        Per feature, the sorted distinct values seen in fit, or the given list
        (numeric ones sorted, NaN only last).
    drop : {'first', 'if_binary'} or array-like of shape (n_features,), default=None
        One category per feature to leave out (all zeros), after infrequent
        categories are grouped; dropping an infrequent category is an error.
    sparse_output : bool, default=True
        SciPy CSR matrix (int32 indices) if True, else a dense ndarray.
    dtype : number type, default=np.float64
        Output dtype. float32 / float64 dense output is written by the backend's
        ``one_hot`` kernel; other dtypes by NumPy.
    handle_unknown : {'error', 'ignore', 'infrequent_if_exist', 'warn'}, default='error'
        An unknown value raises ``ValueError`` naming the column and values
        ('error'), encodes as all zeros ('ignore'), or as the feature's
        infrequent category when it has one, else all zeros
        ('infrequent_if_exist'; 'warn' also warns).
    min_frequency : int >= 1 or float in (0, 1), default=None
        Categories seen fewer times (or in a smaller fraction of the samples)
        are grouped as one infrequent category.
    max_categories : int >= 1, default=None
        At most this many output columns per feature, the infrequent one included.
    feature_name_combiner : 'concat' or callable, default='concat'
        ``feature + "_" + str(category)``, or ``callable(feature, category) -> str``.

    Attributes
    ----------
    categories_ : list of ndarray
        Per feature, its categories in the column's dtype (object for strings).
    drop_idx_ : ndarray of object, shape (n_features,), or None
        Index in ``categories_[i]`` of the dropped category (None: none dropped).
    infrequent_categories_ : list of ndarray or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on a DataFrame with string column names.

    Raises
    ------
    ValueError
        inf in X, an unknown category with ``handle_unknown='error'``, a wrong
        number of features, invalid ``categories`` / ``drop``.
    NotFittedError
        transform before fit.
    """

    _parameter_constraints: dict = {
        **_Encoder._parameter_constraints,
        "drop": [StrOptions({"first", "if_binary"}), "array-like", None],
        "handle_unknown": [StrOptions({"error", "ignore", "infrequent_if_exist", "warn"})],
        "sparse_output": ["boolean"],
        "feature_name_combiner": [StrOptions({"concat"}), callable],
    }
    _skips_missing = False

    def __init__(self, *, categories="auto", drop=None, sparse_output=True, dtype=np.float64,
                 handle_unknown="error", min_frequency=None, max_categories=None,
                 feature_name_combiner="concat"):
        self.categories = categories
        self.sparse_output = sparse_output
        self.dtype = dtype
        self.handle_unknown = handle_unknown
        self.drop = drop
        self.min_frequency = min_frequency
        self.max_categories = max_categories
        self.feature_name_combiner = feature_name_combiner

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn each feature's categories from X (n_samples, n_features); returns self."""
        columns, n_samples = self._columns(X, reset=True)
        self._fit_categories(columns, n_samples, missing_is_category=True)
        self._set_drop()
        self._build_tables()
        return self

    def _set_drop(self):
        """``drop_idx_`` (in categories_) and ``_drop_group`` (after grouping)."""
        groups = [self._groups(i) for i in range(len(self.categories_))]
        if self.drop is None:
            self._drop_group = self.drop_idx_ = None
            return
        if isinstance(self.drop, str):
            drop = [0 if self.drop == "first" or g.max(initial=-1) + 1 == 2 else None
                    for g in groups]
        else:
            drop = self._drop_from_values(groups)
        self._drop_group = np.array(drop, dtype=object)
        self.drop_idx_ = np.array(
            [d if d is None or not self._infrequent_enabled or self._group_maps[i] is None
             else np.flatnonzero(groups[i] == d)[0] for i, d in enumerate(drop)], dtype=object)

    def _drop_from_values(self, groups):
        values = np.asarray(self.drop, dtype=object)
        if len(values) != len(self.categories_):
            raise ValueError("`drop` should have length equal to the number of features "
                             f"({len(self.categories_)}), got {len(values)}")
        drop, missing = [], []
        for i, (value, cats) in enumerate(zip(values, self.categories_)):
            if is_missing(value) and value is not None:
                hit = [cats.size - 1] if has_nan_category(cats) else []
            else:
                hit = np.flatnonzero(cats == value)
            if len(hit) == 0:
                missing.append((i, value))
                continue
            idx = hit[0]
            rare = self._infrequent_indices[i] if self._infrequent_enabled else None
            if rare is not None and idx in rare:
                raise ValueError(f"Unable to drop category {cats[idx].item()!r} from feature "
                                 f"{i} because it is infrequent")
            drop.append(groups[i][idx])
        if missing:
            raise ValueError("The following categories were supposed to be dropped, but were "
                             "not found in the training data.\n" +
                             "\n".join(f"Category: {i}, Feature: {v}" for i, v in missing))
        return drop

    def _build_tables(self):
        """Per feature, the output column of each category code (-1: none) and,
        last, that of an unknown value; and the output widths."""
        self._tables, self._n_features_outs, offset = [], [], 0
        infrequent_unknown = self.handle_unknown in ("infrequent_if_exist", "warn")
        for i in range(len(self.categories_)):
            groups = self._groups(i)
            n_groups = int(groups.max(initial=-1)) + 1
            has_rare = self._infrequent_enabled and self._group_maps[i] is not None
            unknown = n_groups - 1 if infrequent_unknown and has_rare else -1
            groups = np.append(groups, unknown)
            drop = None if self._drop_group is None else self._drop_group[i]
            local = groups if drop is None else np.where(groups > drop, groups - 1,
                                                         np.where(groups == drop, -1, groups))
            self._tables.append(np.where(local >= 0, local + offset, -1).astype(np.int64))
            width = n_groups - (drop is not None)
            self._n_features_outs.append(width)
            offset += width

    def transform(self, X):
        """One-hot encode X (n_samples, n_features) -> (n_samples, n_features_out):
        a CSR matrix (``sparse_output=True``) or an ndarray, of ``dtype``.

        Raises ValueError (unknown category with handle_unknown='error', inf,
        wrong number of features) and NotFittedError.
        """
        check_is_fitted(self)
        codes, with_unknown, n_samples = self._encode(X)
        if with_unknown and (self.handle_unknown == "warn" or (
                self.drop is not None and self.handle_unknown != "error")):
            as_what = ("the infrequent category" if self.handle_unknown != "ignore"
                       else "all zeros")
            warnings.warn(f"Found unknown categories in columns {with_unknown} during "
                          f"transform. These unknown categories will be encoded as {as_what}",
                          UserWarning)
        n_out = sum(self._n_features_outs)
        # CSR index arrays are int32 when they fit (as scikit-learn's): gathered
        # in that type directly; the one_hot kernel takes int64
        index = np.int32 if self.sparse_output and \
            max(n_out, n_samples * len(codes)) <= np.iinfo(np.int32).max else np.int64
        if len(codes) == 1:
            indices = self._tables[0].astype(index)[codes[0]].reshape(-1, 1)
        else:
            indices = np.empty((n_samples, len(codes)), index)
            for i, c in enumerate(codes):
                indices[:, i] = self._tables[i][c]
        if self.sparse_output:
            return self._csr(indices, n_out)
        dtype = np.dtype(self.dtype)
        if dtype in (np.float32, np.float64):
            return _backend().one_hot(indices, n_out, dtype)
        out = np.zeros((n_samples, n_out), dtype)
        rows, cols = np.nonzero(indices >= 0)
        out[rows, indices[rows, cols]] = 1
        return out

    def _csr(self, indices, n_out):
        n_samples, n_features = indices.shape
        flat = indices.reshape(-1)
        present = flat >= 0
        if present.all():
            indptr = np.arange(0, flat.size + 1, n_features, dtype=indices.dtype)
        else:
            indptr = np.zeros(n_samples + 1, indices.dtype)
            np.cumsum(present.reshape(n_samples, n_features).sum(axis=1), out=indptr[1:])
            flat = flat[present]
        return scipy.sparse.csr_matrix((np.ones(flat.size, self.dtype), flat, indptr),
                                       shape=(n_samples, n_out))

    def _output_categories(self, i, remove_dropped=True):
        """Column i's output categories: frequent ones, then 'infrequent_sklearn'."""
        cats = self.categories_[i]
        if self._infrequent_enabled and self._group_maps[i] is not None:
            rare = np.zeros(cats.size, bool)
            rare[self._infrequent_indices[i]] = True
            cats = np.concatenate([cats[~rare], np.array([INFREQUENT], dtype=object)])
        if remove_dropped and self._drop_group is not None and self._drop_group[i] is not None:
            cats = np.delete(cats, self._drop_group[i])
        return cats

    def inverse_transform(self, X):
        """Categories of one-hot rows X (n_samples, n_features_out), dense or
        sparse -> (n_samples, n_features). All-zero blocks give the dropped
        category, or None for an ignored unknown; the infrequent group gives
        'infrequent_sklearn'.

        Raises ValueError for a wrong number of columns, or all-zero rows that
        cannot be inverted (no drop, handle_unknown='error').
        """
        check_is_fitted(self)
        X = check_array(X, accept_sparse="csr")
        n_out = sum(self._n_features_outs)
        if X.shape[1] != n_out:
            raise ValueError("Shape of the passed X data is not correct. Expected "
                             f"{n_out} columns, got {X.shape[1]}.")
        outputs = [self._output_categories(i, remove_dropped=False)
                   for i in range(len(self.categories_))]
        result = np.empty((X.shape[0], len(outputs)), np.result_type(*[c.dtype for c in outputs]))
        unknown_rows, start = {}, 0
        for i, cats in enumerate(outputs):
            drop = None if self._drop_group is None else self._drop_group[i]
            kept = cats if drop is None else np.delete(cats, drop)
            if kept.size == 0:  # a single category, dropped
                result[:, i] = cats[drop]
                continue
            block = X[:, start:start + kept.size]
            start += kept.size
            result[:, i] = kept[np.asarray(block.argmax(axis=1)).ravel()]
            zero = np.asarray(block.sum(axis=1) == 0).ravel()
            if not zero.any():
                continue
            has_rare = self._infrequent_enabled and self._infrequent_indices[i] is not None
            if drop is not None:
                result[zero, i] = cats[drop]
            elif self.handle_unknown == "ignore" or (self.handle_unknown != "error"
                                                     and not has_rare):
                unknown_rows[i] = zero
            else:
                raise ValueError(f"Samples {np.flatnonzero(zero)} can not be inverted when "
                                 "drop=None and handle_unknown='error' because they contain "
                                 "all zeros")
        if unknown_rows:
            result = result.astype(object, copy=False)
            for i, rows in unknown_rows.items():
                result[rows, i] = None
        return result

    def get_feature_names_out(self, input_features=None):
        """Output feature names: ``combiner(input_feature, category)`` per output column."""
        check_is_fitted(self)
        input_features = _check_feature_names_in(self, input_features)
        if self.feature_name_combiner == "concat":
            combine = lambda feature, category: f"{feature}_{category}"  # noqa: E731
        else:
            combine = self.feature_name_combiner
            if not isinstance(combine("feature", "category"), str):
                raise TypeError("When `feature_name_combiner` is a callable, it should return "
                                "a Python string. Got "
                                f"{type(combine('feature', 'category'))} instead.")
        return np.array([combine(input_features[i], c)
                         for i in range(len(self.categories_))
                         for c in self._output_categories(i)], dtype=object)


class OrdinalEncoder(OneToOneFeatureMixin, _Encoder):
    """Encode categorical features as integers ``0 .. n_categories - 1``
    (:class:`sklearn.preprocessing.OrdinalEncoder`).

    Same parameters, defaults, fitted attributes, outputs and errors as
    scikit-learn's; numeric columns are fitted and encoded on the backend's
    kernels, strings and objects by NumPy and Python. A NaN category is missing:
    it keeps its place in ``categories_`` but encodes as ``encoded_missing_value``.

    Parameters
    ----------
    categories : 'auto' or list of array-like, default='auto'
    dtype : number type, default=np.float64
        Output dtype.
    handle_unknown : {'error', 'use_encoded_value'}, default='error'
    unknown_value : int or np.nan, default=None
        The code of unknown values with ``handle_unknown='use_encoded_value'``
        (it must not be a code of a known category).
    encoded_missing_value : int or np.nan, default=np.nan
    min_frequency, max_categories :
        As :class:`OneHotEncoder`: infrequent categories share the last code.

    Attributes
    ----------
    categories_ : list of ndarray
    infrequent_categories_ : list of ndarray or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Raises
    ------
    ValueError
        inf in X, an unknown category with ``handle_unknown='error'``, a wrong
        number of features, codes that collide with known categories.
    TypeError
        ``unknown_value`` inconsistent with ``handle_unknown``.
    """

    _parameter_constraints: dict = {
        **_Encoder._parameter_constraints,
        "encoded_missing_value": [Integral, type(np.nan)],
        "handle_unknown": [StrOptions({"error", "use_encoded_value"})],
        "unknown_value": [Integral, type(np.nan), None],
    }
    _skips_missing = True

    def __init__(self, *, categories="auto", dtype=np.float64, handle_unknown="error",
                 unknown_value=None, encoded_missing_value=np.nan, min_frequency=None,
                 max_categories=None):
        self.categories = categories
        self.dtype = dtype
        self.handle_unknown = handle_unknown
        self.unknown_value = unknown_value
        self.encoded_missing_value = encoded_missing_value
        self.min_frequency = min_frequency
        self.max_categories = max_categories

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn each feature's categories from X (n_samples, n_features); returns self."""
        self._check_unknown_value()
        columns, n_samples = self._columns(X, reset=True)
        self._fit_categories(columns, n_samples, missing_is_category=False)
        self._missing_indices = {i: c.size - 1 for i, c in enumerate(self.categories_)
                                 if has_nan_category(c)}
        n_codes = [int(self._groups(i).max(initial=-1)) + 1
                   for i in range(len(self.categories_))]
        if self.handle_unknown == "use_encoded_value" and \
                any(0 <= self.unknown_value < n for n in n_codes):
            raise ValueError(f"The used value for unknown_value {self.unknown_value} is one of "
                             "the values already used for encoding the seen categories.")
        if self._missing_indices:
            self._check_missing_value(n_codes)
        self._build_tables()
        return self

    def _check_unknown_value(self):
        if self.handle_unknown == "use_encoded_value":
            if is_missing(self.unknown_value):
                if np.dtype(self.dtype).kind != "f":
                    raise ValueError("When unknown_value is np.nan, the dtype parameter "
                                     f"should be a float dtype. Got {self.dtype}.")
            elif not isinstance(self.unknown_value, numbers.Integral):
                raise TypeError("unknown_value should be an integer or np.nan when "
                                "handle_unknown is 'use_encoded_value', got "
                                f"{self.unknown_value}.")
        elif self.unknown_value is not None:
            raise TypeError("unknown_value should only be set when handle_unknown is "
                            f"'use_encoded_value', got {self.unknown_value}.")

    def _check_missing_value(self, n_codes):
        missing = self.encoded_missing_value
        if is_missing(missing):
            if np.dtype(self.dtype).kind != "f":
                raise ValueError(f"There are missing values in features "
                                 f"{list(self._missing_indices)}. For OrdinalEncoder to encode "
                                 f"missing values with dtype: {self.dtype}, set "
                                 "encoded_missing_value to a non-nan value, or set dtype to a "
                                 "float")
            return
        invalid = [i for i in self._missing_indices if 0 <= missing < n_codes[i]]
        if invalid:
            if hasattr(self, "feature_names_in_"):
                invalid = self.feature_names_in_[invalid]
            raise ValueError(f"encoded_missing_value ({missing}) is already used to encode a "
                             f"known category in features: {invalid}")

    def _build_tables(self):
        """Per feature, the output value of each category code and, last, of an
        unknown value (never read with handle_unknown='error')."""
        self._tables = []
        dtype = np.dtype(self.dtype)
        for i in range(len(self.categories_)):
            groups = self._groups(i)
            table = np.zeros(self.categories_[i].size + 1, dtype)
            table[:groups.size] = groups
            if i in self._missing_indices:
                table[self._missing_indices[i]] = self.encoded_missing_value
            if self.handle_unknown == "use_encoded_value":
                table[-1] = self.unknown_value
            self._tables.append(table)

    def transform(self, X):
        """Ordinal codes of X (n_samples, n_features) -> (n_samples, n_features) of ``dtype``.

        Raises ValueError (unknown category with handle_unknown='error', inf,
        wrong number of features) and NotFittedError.
        """
        check_is_fitted(self, "categories_")
        codes, _, n_samples = self._encode(X)
        out = np.empty((n_samples, len(codes)), np.dtype(self.dtype))
        for i, c in enumerate(codes):
            out[:, i] = self._tables[i][c]
        return out

    def inverse_transform(self, X):
        """Categories of codes X (n_samples, n_features) -> (n_samples, n_features):
        ``unknown_value`` gives None, the infrequent code 'infrequent_sklearn'
        (object output then). Raises ValueError for a wrong number of features."""
        check_is_fitted(self)
        X = check_array(X, ensure_all_finite="allow-nan")
        if X.shape[1] != len(self.categories_):
            raise ValueError("Shape of the passed X data is not correct. Expected "
                             f"{len(self.categories_)} columns, got {X.shape[1]}.")
        result = np.empty(X.shape, np.result_type(*[c.dtype for c in self.categories_]))
        special = []  # (column, rows, value) written once the result is object
        for i, cats in enumerate(self.categories_):
            labels = X[:, i]
            rows = np.ones(labels.size, bool)
            if i in self._missing_indices:
                missing = _equal(labels, self.encoded_missing_value)
                result[missing, i] = cats[-1]
                rows &= ~missing
            groups = self._groups(i)
            known = cats[:groups.size]
            if self._infrequent_enabled and self._infrequent_indices[i] is not None:
                code = groups.max()  # the infrequent group's, after the frequent ones
                infrequent = rows & (labels == code)
                special.append((i, infrequent, INFREQUENT))
                rows &= ~infrequent
                known = known[groups < code]
            if self.handle_unknown == "use_encoded_value":
                unknown = _equal(labels, self.unknown_value)
                special.append((i, unknown, None))
                rows &= ~unknown
            result[rows, i] = known[labels[rows].astype(np.int64)]
        if special:
            result = result.astype(object, copy=False)
            for i, rows, value in special:
                result[rows, i] = value
        return result


def _equal(values, target):
    """values == target, NaN equal to NaN."""
    return np.isnan(values) if is_missing(target) else values == target
