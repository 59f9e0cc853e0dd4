"""PolynomialFeatures against scikit-learn's, on every backend."""
import numpy as np
import pytest
import scipy.sparse
from sklearn import preprocessing as skp
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastml import _compat
from fastml.preprocessing import PolynomialFeatures

from preprocessing_support import DTYPES, LOADERS, backend_fixture, rows_for

backend = backend_fixture("polynomial_features")
CONFIGS = [dict(), dict(degree=3), dict(degree=(2, 3)), dict(degree=3, interaction_only=True),
           dict(include_bias=False), dict(degree=0), dict(degree=(0, 2), include_bias=False),
           dict(degree=(3, 3), interaction_only=True, include_bias=False), dict(order="F")]


@parametrize_with_checks([PolynomialFeatures(), PolynomialFeatures(degree=(1, 3),
                                                                   interaction_only=True)])
def test_sklearn_estimator_checks(backend, estimator, check):
    if backend == "cuda" and _compat.simulator_enabled():
        pytest.skip("the checks' data is too big for the CUDA simulator")
    check(estimator)


@pytest.mark.parametrize("loader", LOADERS[1:], ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_matches_sklearn_on_datasets(backend, loader, dtype, config):
    X = rows_for(backend, loader(return_X_y=True)[0][:, :6]).astype(dtype)
    ours, ref = PolynomialFeatures(**config).fit(X), skp.PolynomialFeatures(**config).fit(X)
    out, expected = ours.transform(X), ref.transform(X)
    assert out.dtype == expected.dtype == dtype and out.shape == expected.shape
    assert out.flags.f_contiguous == expected.flags.f_contiguous
    # Products of up to 3 factors: a few roundings of the dtype apart.
    np.testing.assert_allclose(out, expected, rtol=8 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(ours.powers_, ref.powers_)
    assert ours.n_output_features_ == ref.n_output_features_
    np.testing.assert_array_equal(ours.get_feature_names_out(), ref.get_feature_names_out())
    names = [f"f{i}" for i in range(X.shape[1])]
    np.testing.assert_array_equal(ours.get_feature_names_out(names),
                                  ref.get_feature_names_out(names))


def test_integer_input_and_no_features(backend):
    X = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(PolynomialFeatures(3).fit_transform(X),
                                  skp.PolynomialFeatures(3).fit_transform(X))


def test_errors(backend):
    X = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(NotFittedError):
        PolynomialFeatures().transform(X)
    est = PolynomialFeatures().fit(X)
    with pytest.raises(ValueError, match="features"):
        est.transform(X[:, :2])
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.transform(bad)
    with pytest.raises(ValueError, match="empty output"):
        PolynomialFeatures(0, include_bias=False).fit(X)
    with pytest.raises(ValueError, match="min_degree <= max_degree"):
        PolynomialFeatures((3, 2)).fit(X)
    with pytest.raises(ValueError, match="degree"):
        PolynomialFeatures((1, 2, 3)).fit(X)
    with pytest.raises(TypeError, match="sparse"):
        PolynomialFeatures().fit(scipy.sparse.csr_array(X))
