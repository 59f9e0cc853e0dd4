"""Categories of one column: its sorted distinct values, their counts, and codes.

Numeric columns (integers up to 64 bits except uint64, floats) run on the
backend's ``unique_counts`` / ``encode_values`` kernels; fixed-width strings on
NumPy; object columns (strings with ``None`` / NaN as missing) on Python sets
and dicts, in scikit-learn's order: sorted values, then ``None``, then NaN.
"""
from __future__ import annotations

import math

import numpy as np

from .._config import instance as _backend
from ._label import encode, kernel_values


def is_missing(value):
    """True for ``None`` and float NaN, the values scikit-learn treats as missing."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _object_missing(values):
    """Boolean masks (is None, is NaN) of an object array."""
    none = np.fromiter((v is None for v in values), bool, values.size)
    nan = values != values  # only NaN differs from itself
    return none, nan


def _object_uniques(values):
    """Sorted distinct non-missing values, then None, then NaN (those present)."""
    none, nan = _object_missing(values)
    present = values[~(none | nan)].tolist()
    try:  # unhashable or incomparable values
        uniques = sorted(set(present))
    except TypeError:
        kinds = sorted({type(v).__qualname__ for v in present})
        raise TypeError("Encoders require their input argument must be uniformly "
                        f"strings or numbers. Got {kinds}") from None
    tail = ([None] if none.any() else []) + ([np.nan] if nan.any() else [])
    out = np.empty(len(uniques) + len(tail), dtype=object)
    out[:] = uniques + tail
    return out


def _object_encode(values, categories):
    """Codes (int64, -1 when absent) of an object array's values in ``categories``."""
    index = {c: i for i, c in enumerate(categories) if not is_missing(c)}
    codes = np.fromiter((index.get(v, -1) for v in values.tolist()), np.int64, values.size)
    none, nan = _object_missing(values)
    for mask, pick in ((none, lambda c: c is None), (nan, lambda c: is_missing(c) and c is not None)):
        if mask.any():
            hit = [i for i, c in enumerate(categories) if pick(c)]
            codes[mask] = hit[0] if hit else -1
    return codes


def unique_counts(values):
    """Sorted distinct values of a 1-D column and their counts (int64)."""
    if values.dtype == object:
        uniques = _object_uniques(values)
        return uniques, np.bincount(_object_encode(values, uniques), minlength=uniques.size)
    kv = kernel_values(values)
    if kv is None:
        return np.unique(values, return_counts=True)
    uniques, counts = _backend().unique_counts(kv)
    return uniques.astype(values.dtype, copy=False), counts


def codes_of(values, categories):
    """Codes of a column's values in its sorted ``categories`` (int64, -1 when
    absent) and the distinct absent values, as a list (empty when all known)."""
    if values.dtype == object or categories.dtype == object:
        values = values.astype(object, copy=False)
        codes = _object_encode(values, categories)
        unseen = codes < 0
        return codes, (list(_object_uniques(values[unseen])) if unseen.any() else [])
    codes, unseen = encode(values, categories)
    return codes, list(unseen)


def has_infinity(values):
    """Whether a numeric column's values (categories or unknown values) hold +-inf."""
    return values.dtype.kind == "f" and bool(np.isinf(values).any())


def check_predefined(categories, column, i):
    """scikit-learn's checks of user-given categories for column i: NaN only last,
    no duplicates, numeric ones sorted. Returns them in the column's dtype."""
    dtype = object if column.dtype.kind in "OUS" else column.dtype
    cats = np.array(categories, dtype=dtype)
    if cats.dtype == object and cats.size and isinstance(cats[0], bytes) \
            and column.dtype.kind != "S":
        raise ValueError(f"In column {i}, the predefined categories have type 'bytes' which "
                         f"is incompatible with values of type '{type(column[0]).__name__}'.")
    if any(is_missing(c) and c is not None for c in cats[:-1].tolist()):
        raise ValueError("Nan should be the last element in user provided categories, "
                         f"see categories {cats} in column #{i}")
    if cats.size != unique_counts(cats)[0].size:
        raise ValueError(f"In column {i}, the predefined categories contain duplicate "
                         "elements.")
    if cats.dtype.kind not in "OUS":
        stop = -1 if cats.size and cats.dtype.kind == "f" and np.isnan(cats[-1]) else None
        if np.any(np.sort(cats)[:stop] != cats[:stop]):
            raise ValueError("Unsorted categories are not supported for numerical categories")
    return cats


def has_nan_category(categories):
    """Whether the last category is NaN, which the encoders treat as missing
    (scikit-learn's test: ``None`` is an ordinary category there)."""
    return categories.size > 0 and is_missing(categories[-1]) and categories[-1] is not None
