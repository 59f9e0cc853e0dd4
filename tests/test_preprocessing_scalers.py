"""MinMaxScaler, MaxAbsScaler and Normalizer against scikit-learn, on every backend.

scikit-learn is the oracle (bundled datasets only), except where fastml
deliberately differs: chunked partial_fit with a feature unobserved in one
chunk (scikit-learn gives NaN; fastml the range of the whole) and sparse input
(not supported).
"""
import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import datasets
from sklearn import preprocessing as skp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastml import _compat
from fastml.preprocessing import MaxAbsScaler, MinMaxScaler, Normalizer, RobustScaler

from preprocessing_support import DTYPES, LOADERS, backend_fixture, inject_nan, rows_for

backend = backend_fixture("column_minmax", "column_quantiles", "normalize_rows", "standardize",
                          "unstandardize")
SK = {MinMaxScaler: skp.MinMaxScaler, MaxAbsScaler: skp.MaxAbsScaler, Normalizer: skp.Normalizer,
      RobustScaler: skp.RobustScaler}
RANGE_SCALERS = [MinMaxScaler(), MinMaxScaler(feature_range=(-3, 0.5), clip=True),
                 MaxAbsScaler(), MaxAbsScaler(clip=True)]
NORMALIZERS = [Normalizer(), Normalizer("l1"), Normalizer("max")]
ROBUST = [RobustScaler(), RobustScaler(with_centering=False),
          RobustScaler(with_scaling=False, quantile_range=(5.0, 60.0)),
          RobustScaler(quantile_range=(10.0, 90.0), unit_variance=True)]


def sk_twin(est):
    return SK[type(est)](**est.get_params())


def assert_close(ours, ref, dtype):
    """Same dtype, shape and NaN; values within a few ulp of the dtype (fastml
    applies the affine map in float64 and rounds once, scikit-learn in X's dtype)."""
    assert ours.dtype == ref.dtype == dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    tol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


@parametrize_with_checks(RANGE_SCALERS + NORMALIZERS + ROBUST + [MinMaxScaler(copy=False)],
                         expected_failed_checks=lambda est: (
                             {"check_methods_sample_order_invariance":
                              "copy=False transforms the check's X in place between its "
                              "two calls (scikit-learn's own copy=False scalers fail it too)"}
                             if not est.copy else {}))
def test_sklearn_estimator_checks(backend, estimator, check):
    if backend == "cuda" and _compat.simulator_enabled():
        pytest.skip("the checks' data is too big for the CUDA simulator; the other "
                    "tests run cuda on tiny data (FASTML_TEST_GPU=1 runs these on a GPU)")
    check(estimator)


# --------------------------------------------------- scikit-learn as the oracle
ATTRIBUTES = ("min_", "scale_", "data_min_", "data_max_", "data_range_", "max_abs_",
              "center_", "n_samples_seen_", "n_features_in_")


def assert_same_attributes(ours, ref, rtol=0.0):
    """Same attributes and dtypes; values equal (min/max are exact), or within
    ``rtol`` (RobustScaler: scikit-learn's median averages the middle pair,
    the quantile kernel interpolates between them in float64)."""
    for name in ATTRIBUTES:
        if hasattr(ref, name):
            a, b = getattr(ours, name), getattr(ref, name)
            assert (a is None) == (b is None), name
            assert np.asarray(a).dtype == np.asarray(b).dtype, name
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # scikit-learn's
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("est", RANGE_SCALERS, ids=repr)
@pytest.mark.parametrize("nan", [False, True], ids=["dense", "nan"])
def test_range_scalers_match_sklearn_on_datasets(backend, loader, dtype, est, nan):
    X = rows_for(backend, loader(return_X_y=True)[0]).astype(dtype)
    if nan:
        X = inject_nan(X, np.random.default_rng(0))
    ours, ref = est.__class__(**est.get_params()).fit(X), sk_twin(est).fit(X)
    assert_same_attributes(ours, ref)
    Z = ref.transform(X)
    assert_close(ours.transform(X), Z, dtype)
    assert_close(ours.fit_transform(X), ref.fit_transform(X), dtype)
    assert_close(ours.inverse_transform(Z), ref.inverse_transform(Z), dtype)
    held_out = X * 1.5 - 1  # outside the fitted range: clip=True clips it
    assert_close(ours.transform(held_out), ref.transform(held_out), dtype)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # scikit-learn's
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("est", ROBUST, ids=repr)
@pytest.mark.parametrize("nan", [False, True], ids=["dense", "nan"])
def test_robust_scaler_matches_sklearn_on_datasets(backend, loader, dtype, est, nan):
    if backend == "cuda" and loader is not datasets.load_iris:
        pytest.skip("the radix select runs 32-64 counting passes: on the CUDA simulator, "
                    "iris only (column_quantiles' property tests cover the rest)")
    X = rows_for(backend, loader(return_X_y=True)[0]).astype(dtype)
    if nan:
        X = inject_nan(X, np.random.default_rng(1), 0.2)
    ours, ref = clone(est).fit(X), sk_twin(est).fit(X)
    assert_same_attributes(ours, ref, rtol=2 * np.finfo(dtype).eps)
    Z = ref.transform(X)
    assert_close(ours.transform(X), Z, dtype)
    assert_close(ours.inverse_transform(Z), ref.inverse_transform(Z), dtype)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("est", NORMALIZERS, ids=repr)
def test_normalizer_matches_sklearn_on_datasets(backend, loader, dtype, est):
    X = rows_for(backend, loader(return_X_y=True)[0]).astype(dtype)
    X[1] = 0  # a zero row stays zero
    out = est.fit_transform(X)
    assert_close(out, sk_twin(est).fit_transform(X), dtype)
    assert not out[1].any()


def test_constant_and_unobserved_features(backend):
    X = np.column_stack([np.full(12, 3.0), np.arange(12.0), np.full(12, np.nan), np.zeros(12)])
    for est in (MinMaxScaler(), MaxAbsScaler(), RobustScaler()):
        with pytest.warns(RuntimeWarning, match="All-NaN"):
            ref = sk_twin(est).fit(X)
        ours = est.fit(X)
        assert_same_attributes(ours, ref)
        assert_close(ours.transform(X), ref.transform(X), np.float64)


def test_integer_input_becomes_float64(backend):
    X = np.arange(24).reshape(8, 3)
    for est in (MinMaxScaler(), MaxAbsScaler(), Normalizer(), RobustScaler()):
        assert_close(est.fit_transform(X), sk_twin(est).fit_transform(X), np.float64)


# ------------------------------------------------------------- partial_fit
def _chunked(est, X, bounds):
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        est.partial_fit(X[lo:hi])
    return est


@pytest.mark.parametrize("est", RANGE_SCALERS, ids=repr)
def test_partial_fit_chunk_with_unobserved_feature(backend, est):
    """A chunk with a feature of NaN only leaves that feature's range as the other
    chunks make it (scikit-learn's partial_fit yields NaN there)."""
    rng = np.random.default_rng(6)
    X = rng.normal(5.0, 2.0, (30, 3))
    X[10:20, 1] = np.nan
    X[:10, 2] = np.nan
    chunked = _chunked(est.__class__(**est.get_params()), X, [0, 10, 20, 30])
    with pytest.warns(RuntimeWarning, match="All-NaN"):
        assert np.isnan(_chunked(sk_twin(est), X, [0, 10, 20, 30]).scale_).any()
    assert_same_attributes(chunked, sk_twin(est).fit(X))


@settings(suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), dtype=st.sampled_from(DTYPES),
       est=st.sampled_from([MinMaxScaler(), MaxAbsScaler()]))
def test_property_partial_fit_equals_fit(backend, data, dtype, est):
    n_rows = data.draw(st.integers(1, 12 if backend == "cuda" else 40), label="rows")
    finite = st.floats(-1e3, 1e3, width=32 if dtype == np.float32 else 64)
    X = data.draw(hnp.arrays(dtype, (n_rows, data.draw(st.integers(1, 5), label="features")),
                             elements=st.one_of(finite, finite, st.just(np.nan))), label="X")
    cuts = data.draw(st.lists(st.integers(1, n_rows), max_size=4, unique=True), label="cuts")
    bounds = [0, *sorted(c for c in cuts if c < n_rows), n_rows]
    whole = est.__class__().fit(X)
    assert_same_attributes(_chunked(est.__class__(), X, bounds), whole)


# ------------------------------------------------------------ transforms
@pytest.mark.parametrize("est", [MinMaxScaler(copy=False), MaxAbsScaler(copy=False),
                                 Normalizer(copy=False), RobustScaler(copy=False)], ids=repr)
def test_copy_false_works_in_place(backend, est):
    X = np.random.default_rng(11).normal(3, 2, (20, 4))
    expected = sk_twin(est).fit(X).transform(X.copy())
    assert est.fit(X).transform(X) is X
    assert_close(X, expected, np.float64)
    X = np.random.default_rng(11).normal(3, 2, (20, 4))
    assert est.fit_transform(X) is X  # fit_transform too, as scikit-learn's
    assert_close(X, expected, np.float64)
    assert est.transform(X.tolist(), copy=False) is not X


def test_inverse_round_trip(backend):
    X = inject_nan(datasets.load_iris(return_X_y=True)[0][:24], np.random.default_rng(3))
    for est in (MinMaxScaler((-1, 1)), MaxAbsScaler(), RobustScaler()):
        np.testing.assert_allclose(est.inverse_transform(est.fit_transform(X)), X,
                                   rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- errors
def test_errors(backend):
    X = np.random.default_rng(13).normal(size=(10, 3))
    bad = X.copy()
    bad[2, 1] = -np.inf
    for cls in (MinMaxScaler, MaxAbsScaler, RobustScaler):
        with pytest.raises(NotFittedError):
            cls().transform(X)
    # Normalizer is stateless: no fit needed, as scikit-learn's (requires_fit=False).
    assert_close(Normalizer().transform(X), skp.Normalizer().transform(X), np.float64)
    for cls in (MinMaxScaler, MaxAbsScaler, Normalizer, RobustScaler):
        est = cls().fit(X)
        with pytest.raises(ValueError, match="features"):
            est.transform(X[:, :2])
        with pytest.raises(ValueError, match="infinity"):
            cls().fit(bad)  # the fit's kernel finds it (no separate finiteness pass)
        with pytest.raises(ValueError, match="infinity"):
            cls().fit_transform(bad)  # MinMax/MaxAbs: validated once, by that kernel
        with pytest.raises(ValueError, match="infinity"):
            est.transform(bad)
        with pytest.raises(TypeError, match="sparse"):
            cls().fit(scipy.sparse.csr_array(X))
    with pytest.raises(ValueError, match="NaN"):
        Normalizer().fit(X).transform(inject_nan(X, np.random.default_rng(0), 0.5))
    with pytest.raises(ValueError, match=r"feature range must be smaller.*\(2, 1\)"):
        MinMaxScaler(feature_range=(2, 1)).fit(X)
    with pytest.raises(ValueError, match=r"Invalid quantile range: \(80, 20\)"):
        RobustScaler(quantile_range=(80, 20)).fit(X)
    with pytest.raises(ValueError, match="norm"):
        Normalizer(norm="l3").fit(X)
    pos_inf = X.copy()
    pos_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        MinMaxScaler().fit(X).partial_fit(pos_inf)
