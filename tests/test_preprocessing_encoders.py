"""OneHotEncoder and OrdinalEncoder against scikit-learn's, on every backend."""
import warnings

import numpy as np
import pytest
import scipy.sparse
from sklearn import datasets
from sklearn import preprocessing as skp
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastml import _compat
from fastml.preprocessing import OneHotEncoder, OrdinalEncoder

from preprocessing_support import backend_fixture, inject_nan, rows_for

backend = backend_fixture("unique_counts", "encode_values", "one_hot")


def _columns(backend, kind):
    """Categorical test data from the bundled data sets."""
    rng = np.random.default_rng(0)
    if kind == "int":  # digits' pixel intensities: 0..16, some rare
        X = datasets.load_digits().data[:, 20:26].astype(np.int64)
    elif kind == "float-nan":  # iris measurements: few distinct values each, NaN missing
        X = inject_nan(datasets.load_iris().data, rng)
    elif kind == "wide-int":  # wine's proline and magnesium: wide integer spans
        X = datasets.load_wine().data[:, [4, 12]].astype(np.int64) * 10**9
    else:  # object strings with None and NaN
        X = np.array(["a", "bb", "c", None, np.nan], dtype=object)[
            rng.integers(0, 5, (60, 3))]
    return rows_for(backend, X)


def _dense(A):
    return A.toarray() if scipy.sparse.issparse(A) else A


def _same_fit(ours, ref):
    assert len(ours.categories_) == len(ref.categories_)
    for a, b in zip(ours.categories_, ref.categories_):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.astype(str), b.astype(str))
    if hasattr(ref, "_infrequent_indices"):
        for a, b in zip(ours.infrequent_categories_, ref.infrequent_categories_):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a.astype(str), b.astype(str))
    else:
        with pytest.raises(AttributeError):
            ours.infrequent_categories_


ONE_HOT = [{}, {"sparse_output": False}, {"drop": "first"}, {"drop": "if_binary"},
           {"handle_unknown": "ignore", "min_frequency": 5},
           {"min_frequency": 0.1, "sparse_output": False},
           {"max_categories": 3, "drop": "first", "handle_unknown": "infrequent_if_exist"},
           {"max_categories": 1}, {"sparse_output": False, "dtype": np.float32},
           {"sparse_output": False, "dtype": np.int32, "min_frequency": 4}]


@pytest.mark.parametrize("kind", ["int", "float-nan", "wide-int", "object"])
@pytest.mark.parametrize("params", ONE_HOT, ids=str)
def test_one_hot_matches_sklearn(backend, kind, params):
    X = _columns(backend, kind)
    ours, ref = OneHotEncoder(**params).fit(X), skp.OneHotEncoder(**params).fit(X)
    _same_fit(ours, ref)
    if ref.drop_idx_ is None:
        assert ours.drop_idx_ is None
    else:
        assert list(ours.drop_idx_) == list(ref.drop_idx_)
    out, expected = ours.transform(X), ref.transform(X)
    assert type(out) is type(expected) and out.dtype == expected.dtype
    if scipy.sparse.issparse(out):
        assert out.indices.dtype == expected.indices.dtype == np.int32
    np.testing.assert_array_equal(_dense(out), _dense(expected))
    np.testing.assert_array_equal(_dense(ours.fit_transform(X)), _dense(expected))
    assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())
    np.testing.assert_array_equal(ours.inverse_transform(out).astype(str),
                                  ref.inverse_transform(expected).astype(str))


ORDINAL = [{}, {"dtype": np.float32}, {"encoded_missing_value": -1},
           {"handle_unknown": "use_encoded_value", "unknown_value": -7},
           {"min_frequency": 5}, {"max_categories": 3, "encoded_missing_value": -2}]


@pytest.mark.parametrize("kind", ["int", "float-nan", "wide-int", "object"])
@pytest.mark.parametrize("params", ORDINAL, ids=str)
def test_ordinal_matches_sklearn(backend, kind, params):
    X = _columns(backend, kind)
    ours, ref = OrdinalEncoder(**params).fit(X), skp.OrdinalEncoder(**params).fit(X)
    _same_fit(ours, ref)
    out = ours.transform(X)
    expected = ref.transform(X)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)
    inverse = ours.inverse_transform(out)
    if "min_frequency" not in params and "max_categories" not in params:
        # (scikit-learn's own inverse fails when a NaN category meets infrequent ones)
        np.testing.assert_array_equal(inverse.astype(str),
                                      ref.inverse_transform(expected).astype(str))
    frequent = ~np.isin(inverse.astype(str), ["infrequent_sklearn"])
    np.testing.assert_array_equal(inverse[frequent].astype(str), X[frequent].astype(str))


def test_unknown_categories(backend):
    X, new = np.array([[1, 10], [2, 20], [2, 10]]), np.array([[1, 30], [5, 10]])
    with pytest.raises(ValueError, match=r"unknown categories \[np.int64\(30\)\] in column 1"):
        OneHotEncoder().fit(X).transform(new[:1])
    with pytest.raises(ValueError, match=r"unknown categories \[np.int64\(5\)\] in column 0"):
        OrdinalEncoder().fit(X).transform(new)
    ignore = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(X)
    np.testing.assert_array_equal(ignore.transform(new), [[1, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(OrdinalEncoder(handle_unknown="use_encoded_value",
                                                 unknown_value=-1).fit(X).transform(new),
                                  [[0, -1], [-1, 0]])
    for params in [{"handle_unknown": "warn", "min_frequency": 2},
                   {"handle_unknown": "ignore", "drop": "first"}]:
        ours, ref = OneHotEncoder(**params).fit(X), skp.OneHotEncoder(**params).fit(X)
        with pytest.warns(UserWarning, match=r"unknown categories in columns \[0, 1\]"):
            out = ours.transform(new)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(out.toarray(), ref.transform(new).toarray())


def test_predefined_categories(backend):
    X = np.array([[1.0, 3], [2.0, 3], [np.nan, 4]])
    cats = [[1.0, 2.0, 5.0, np.nan], [3, 4]]
    ours, ref = OneHotEncoder(categories=cats).fit(X), skp.OneHotEncoder(categories=cats).fit(X)
    _same_fit(ours, ref)
    np.testing.assert_array_equal(ours.transform(X).toarray(), ref.transform(X).toarray())
    for bad, match in [([[2.0, 1.0], [3, 4]], "Unsorted categories"),
                       ([[np.nan, 1.0, 2.0], [3, 4]], "Nan should be the last"),
                       ([[1.0, 1.0, 2.0], [3, 4]], "duplicate"), ([[1.0, 2.0]], "Shape mismatch"),
                       ([[1.0, 5.0, np.nan], [3, 4]], r"unknown categories \[np.float64\(2.0\)\]")]:
        with pytest.raises(ValueError, match=match):
            OneHotEncoder(categories=bad).fit(X)


def test_drop_given_categories(backend):
    """Dropping categories that are not the first: the codes after them shift down."""
    X = np.array([[1, 5], [2, 5], [2, 6], [3, 7], [3, 6]])
    for params in [{"drop": [2, 6]}, {"drop": [3, 7], "sparse_output": False}]:
        ours, ref = OneHotEncoder(**params).fit(X), skp.OneHotEncoder(**params).fit(X)
        assert list(ours.drop_idx_) == list(ref.drop_idx_)
        np.testing.assert_array_equal(_dense(ours.transform(X)), _dense(ref.transform(X)))
        assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())
        np.testing.assert_array_equal(ours.inverse_transform(ours.transform(X)), X)


def test_drop_errors(backend):
    X = np.array([[1, 5], [2, 5], [2, 6], [2, 6], [2, 6]])
    with pytest.raises(ValueError, match="`drop` should have length"):
        OneHotEncoder(drop=[1]).fit(X)
    with pytest.raises(ValueError, match="Category: 1, Feature: 7"):
        OneHotEncoder(drop=[1, 7]).fit(X)
    with pytest.raises(ValueError, match="Unable to drop category 1 from feature 0 because it "
                                         "is infrequent"):
        OneHotEncoder(drop=[1, 5], min_frequency=2).fit(X)


@pytest.mark.parametrize("encoder", [OneHotEncoder, OrdinalEncoder])
def test_bad_input(backend, encoder):
    with pytest.raises(NotFittedError):
        encoder().transform([[1]])
    fitted = encoder().fit(np.array([[1.0, 2.0], [3.0, np.nan]]))
    with pytest.raises(ValueError, match="X has 3 features"):
        fitted.transform(np.ones((2, 3)))
    for X in (np.array([[1.0, np.inf]]), np.array([[-np.inf, 2.0]])):
        with pytest.raises(ValueError, match="infinity"):
            encoder().fit(X)
        with pytest.raises(ValueError, match="infinity"):
            fitted.transform(X)
    lenient = (encoder(handle_unknown="ignore") if encoder is OneHotEncoder
               else encoder(handle_unknown="use_encoded_value", unknown_value=-1))
    with pytest.raises(ValueError, match="infinity"):  # not an ignorable unknown
        lenient.fit([[1.0], [2.0]]).transform([[np.inf]])


def test_ordinal_parameter_errors(backend):
    X = np.array([[1.0], [2.0], [np.nan]])
    with pytest.raises(TypeError, match="unknown_value should only be set"):
        OrdinalEncoder(unknown_value=1).fit(X)
    with pytest.raises(ValueError, match="already used for encoding"):
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=1).fit(X)
    with pytest.raises(ValueError, match="set dtype to a float"):
        OrdinalEncoder(dtype=np.int64).fit(X)
    with pytest.raises(ValueError, match="already used to encode a known category"):
        OrdinalEncoder(encoded_missing_value=0).fit(X)


def test_dense_one_hot_kernel_output(backend):
    """The one_hot kernel writes the dense output (float dtypes): rows sum to the
    number of features that are neither dropped nor ignored."""
    rng = np.random.default_rng(5)
    X = rows_for(backend, rng.integers(0, 40, (3000, 3)))
    enc = OneHotEncoder(sparse_output=False, handle_unknown="ignore", drop="first").fit(X[:2000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = enc.transform(X)
        expected = skp.OneHotEncoder(sparse_output=False, handle_unknown="ignore",
                                     drop="first").fit(X[:2000]).transform(X)
    np.testing.assert_array_equal(out, expected)


def _checks_skip(backend):
    if backend == "cuda" and _compat.simulator_enabled():
        pytest.skip("the checks' data is too big for the CUDA simulator")


@parametrize_with_checks([OneHotEncoder(), OneHotEncoder(sparse_output=False, drop="first"),
                          OneHotEncoder(handle_unknown="ignore", min_frequency=2),
                          OrdinalEncoder(), OrdinalEncoder(max_categories=4)])
def test_sklearn_estimator_checks(backend, estimator, check):
    _checks_skip(backend)
    check(estimator)
