"""SimpleImputer against scikit-learn's, on every backend."""
import warnings

import numpy as np
import pytest
from sklearn import impute as ski
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastml import _compat
from fastml.preprocessing import SimpleImputer

from preprocessing_support import DTYPES, LOADERS, backend_fixture, inject_nan, rows_for

backend = backend_fixture("column_stats", "column_quantiles", "unique_counts", "fill_missing")

STRATEGIES = ["mean", "median", "most_frequent", "constant"]


def _data(backend, X):
    """A data set's X; on the CUDA simulator its first rows and columns only (the
    simulated median selection takes seconds per column)."""
    return X[:, :6] if backend == "cuda" else X


def _fit_both(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn about all-missing features
        ours, ref = SimpleImputer(**params).fit(X), ski.SimpleImputer(**params).fit(X)
        return ours, ref, ours.transform(X), ref.transform(X)


def _same(ours, ref, out, expected, dtype):
    """Same statistics and output. Means are sums in another order (scikit-learn
    accumulates float32 means in float32, the kernels in float64 per thread chunk):
    their rounding is bounded by a few ulps of the largest |value|, not of the mean."""
    eps = np.finfo(dtype).eps
    tol = {"rtol": 4 * eps, "atol": 16 * eps * np.nanmax(np.abs(expected), initial=0)}
    assert ours.statistics_.dtype == ref.statistics_.dtype
    np.testing.assert_allclose(ours.statistics_.astype(float), ref.statistics_.astype(float),
                               **tol)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **tol)
    assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_sklearn_on_datasets(backend, loader, dtype, strategy):
    if backend == "cuda" and strategy == "median" and loader is not LOADERS[1]:
        pytest.skip("the simulated median selection takes seconds: iris only")
    rng = np.random.default_rng(0)
    X = inject_nan(_data(backend, rows_for(backend, loader(return_X_y=True)[0])).astype(dtype),
                   rng)
    X[:, 1] = np.nan  # a feature with no observed value: dropped
    _same(*_fit_both(X, strategy=strategy), dtype)
    _same(*_fit_both(X, strategy=strategy, keep_empty_features=True, add_indicator=True), dtype)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_zero_as_missing_value(backend, strategy):
    """digits' zeros as the missing value (most pixels of the border are 0)."""
    from sklearn.datasets import load_digits
    X = _data(backend, rows_for(backend, load_digits().data))
    _same(*_fit_both(X, strategy=strategy, missing_values=0.0), np.float64)
    with pytest.raises(ValueError, match="Input X contains NaN"):  # NaN is not missing here
        SimpleImputer(strategy=strategy, missing_values=0.0).fit(inject_nan(X, np.random.default_rng(1)))


@pytest.mark.parametrize("strategy", ["most_frequent", "constant"])
def test_integer_and_object_input(backend, strategy):
    rng = np.random.default_rng(2)
    ints = rng.integers(-1, 4, (40, 3))
    _, _, out, expected = _fit_both(ints, strategy=strategy, missing_values=-1)
    assert out.dtype == expected.dtype == ints.dtype
    np.testing.assert_array_equal(out, expected)
    objects = np.array(["a", "b", "b", None], dtype=object)[rng.integers(0, 4, (30, 2))]
    _, _, out, expected = _fit_both(objects, strategy=strategy, missing_values=None)
    np.testing.assert_array_equal(out, expected)


def test_most_frequent_ties_take_the_smallest(backend):
    X = np.array([[3.0, 1.0], [1.0, np.nan], [3.0, 2.0], [1.0, 2.0], [np.nan, 1.0]])
    imp = SimpleImputer(strategy="most_frequent").fit(X)
    np.testing.assert_array_equal(imp.statistics_, [1.0, 1.0])


def test_callable_strategy(backend):
    X = inject_nan(np.random.default_rng(3).normal(size=(30, 4)), np.random.default_rng(4))
    _same(*_fit_both(X, strategy=np.nanmax), np.float64)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bad_input(backend, strategy):
    with pytest.raises(NotFittedError):
        SimpleImputer(strategy=strategy).transform([[1.0]])
    X = np.array([[1.0, np.nan], [3.0, 4.0]])
    imp = SimpleImputer(strategy=strategy).fit(X)
    with pytest.raises(ValueError, match="X has 3 features"):
        imp.transform(np.ones((2, 3)))
    for bad in (np.array([[np.inf, 1.0], [2.0, np.nan]]), np.array([[1.0, -np.inf], [2.0, 3.0]])):
        with pytest.raises(ValueError, match="infinity"):
            SimpleImputer(strategy=strategy).fit(bad)
        with pytest.raises(ValueError, match="infinity"):
            imp.transform(bad)
    with pytest.raises(TypeError, match="sparse"):
        import scipy.sparse
        SimpleImputer(strategy=strategy).fit(scipy.sparse.csr_matrix(X))


def test_parameter_errors(backend):
    with pytest.raises(ValueError, match="non-numeric data"):
        SimpleImputer().fit([["a", "b"]])
    with pytest.raises(ValueError, match="cannot be cast"):
        SimpleImputer(strategy="constant", fill_value="x").fit(np.ones((2, 2)))
    with pytest.raises(ValueError, match="both numerical"):
        SimpleImputer(missing_values="x").fit(np.ones((2, 2)))


def test_copy_false_imputes_in_place(backend):
    X = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 6.0]])
    imp = SimpleImputer(copy=False).fit(X)
    out = imp.transform(X)
    assert out is X
    np.testing.assert_array_equal(X, [[1.0, 5.0], [3.0, 4.0], [2.0, 6.0]])


def test_inverse_transform(backend):
    X = np.array([[1.0, np.nan, 7.0], [np.nan, np.nan, 8.0], [3.0, np.nan, np.nan]])
    params = {"add_indicator": True}
    ours, ref, out, expected = _fit_both(X, **params)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(ours.inverse_transform(out), ref.inverse_transform(expected))
    with pytest.raises(ValueError, match="add_indicator=True"):
        SimpleImputer().fit(X).inverse_transform(X)


def _checks_skip(backend):
    if backend == "cuda" and _compat.simulator_enabled():
        pytest.skip("the checks' data is too big for the CUDA simulator")


@parametrize_with_checks([SimpleImputer(), SimpleImputer(strategy="median"),
                          SimpleImputer(strategy="most_frequent", add_indicator=True),
                          SimpleImputer(strategy="constant", keep_empty_features=True),
                          SimpleImputer(missing_values=0.0)],
                         expected_failed_checks=lambda est: (
                             {"check_dtype_object": "'constant' never looks at the values, so "
                              "a dict among them is no error (scikit-learn's own "
                              "SimpleImputer(strategy='constant') fails this check too)"}
                             if est.strategy == "constant" else {}))
def test_sklearn_estimator_checks(backend, estimator, check):
    _checks_skip(backend)
    check(estimator)
