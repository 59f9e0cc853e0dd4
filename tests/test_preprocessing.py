"""fastml.preprocessing.StandardScaler against scikit-learn, on every backend.

scikit-learn's StandardScaler is the oracle (bundled datasets only, no
download), except where fastml deliberately differs: chunked partial_fit with
a column unobserved in one chunk (scikit-learn gives NaN; fastml the statistics
of the whole), and sparse input (not supported).
"""
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import datasets
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler as SkStandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastml
from fastml import _compat, _config
from fastml.preprocessing import StandardScaler

from preprocessing_support import DTYPES, LOADERS, backend_fixture
from preprocessing_support import inject_nan as _inject_nan
from preprocessing_support import rows_for as _rows

CONFIGS = [dict(with_mean=m, with_std=s) for m in (True, False) for s in (True, False)]
backend = backend_fixture("column_stats", "standardize", "unstandardize")


def _tol(X):
    """(rtol, atol for means, atol for variances): stats are float64 either way."""
    big = float(np.nanmax(np.abs(X))) if np.isfinite(X).any() else 1.0
    return 1e-9, 1e-12 * max(big, 1.0), 1e-12 * max(big, 1.0) ** 2


def _assert_same_attributes(ours, ref, X, counts=True):
    rtol, atol_mean, atol_var = _tol(X)
    for name, atol in (("mean_", atol_mean), ("var_", atol_var), ("scale_", np.sqrt(atol_var))):
        a, b = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype == np.float64, name
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
    if counts:
        np.testing.assert_allclose(ours.n_samples_seen_, ref.n_samples_seen_, rtol=1e-12)
        assert np.ndim(ours.n_samples_seen_) == np.ndim(ref.n_samples_seen_)
    assert ours.n_features_in_ == ref.n_features_in_


def _assert_same_output(ours, ref, dtype, magnitude=0.0):
    """Outputs agree; ``magnitude`` (per column) is the size of the terms summed,
    so the rounding of a float32 transform is ~eps32 * magnitude."""
    assert ours.dtype == ref.dtype == dtype
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    # scikit-learn transforms float32 in float32, fastml in float64 then rounds.
    rtol, k = (1e-5, 8) if dtype == np.float32 else (1e-10, 1000)
    atol = rtol + k * np.finfo(dtype).eps * np.asarray(magnitude)
    np.testing.assert_array_less(np.abs(ours.astype(np.float64) - ref), rtol * np.abs(ref) + atol)


def _magnitudes(ref, X, Z):
    """Per-column magnitude of the terms in transform(X) and inverse_transform(Z)."""
    offset = np.abs(ref.mean_) if ref.with_mean else 0.0
    scale = ref.scale_ if ref.with_std else 1.0
    return ((np.nanmax(np.abs(X), axis=0) + offset) / scale,
            np.nanmax(np.abs(Z), axis=0) * scale + offset)


# --------------------------------------------------------- scikit-learn checks
@parametrize_with_checks(
    [StandardScaler(), StandardScaler(with_mean=False), StandardScaler(with_std=False),
     StandardScaler(with_mean=False, with_std=False), StandardScaler(copy=False)],
    expected_failed_checks=lambda est: (
        {"check_methods_sample_order_invariance":
         "copy=False transforms the check's X in place between its two calls "
         "(scikit-learn's own StandardScaler(copy=False) fails it too)"}
        if not est.copy else {}),
)
def test_sklearn_estimator_checks(backend, estimator, check):
    if backend == "cuda" and _compat.simulator_enabled():
        pytest.skip("the checks' data is too big for the CUDA simulator; the other "
                    "tests run cuda on tiny data (FASTML_TEST_GPU=1 runs these on a GPU)")
    check(estimator)


def test_tags():
    tags = StandardScaler().__sklearn_tags__()
    assert tags.input_tags.allow_nan
    assert not tags.input_tags.sparse
    assert tags.transformer_tags.preserves_dtype == ["float64", "float32"]


def test_import_fastml_does_not_import_sklearn():
    code = ("import sys, fastml; assert 'sklearn' not in sys.modules; "
            "fastml.preprocessing; assert 'sklearn' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dispatch_reaches_backend_ops(monkeypatch):
    """fit is one column_stats call per chunk; transforms are one op call each."""
    calls = []
    inst = _config.instance("numpy")
    for op in ("column_stats", "standardize", "unstandardize"):
        real = getattr(inst, op)
        monkeypatch.setattr(inst, op, lambda *a, _op=op, _f=real: calls.append(_op) or _f(*a))
    X = np.random.default_rng(0).normal(size=(30, 4))
    with fastml.use_backend("numpy"):
        sc = StandardScaler().fit(X)
        sc.inverse_transform(sc.transform(X))
        sc.partial_fit(X)
    assert calls == ["column_stats", "standardize", "unstandardize", "column_stats"]


# --------------------------------------------------- scikit-learn as the oracle
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"mean{int(c['with_mean'])}"
                                                          f"-std{int(c['with_std'])}")
@pytest.mark.parametrize("nan", [False, True], ids=["dense", "nan"])
def test_matches_sklearn_on_datasets(backend, loader, dtype, config, nan):
    X = _rows(backend, loader(return_X_y=True)[0]).astype(dtype)
    if nan:
        X = _inject_nan(X, np.random.default_rng(0))
    ours, ref = StandardScaler(**config).fit(X), SkStandardScaler(**config).fit(X)
    # scikit-learn's dense counts are float64 (it documents int); the values agree.
    _assert_same_attributes(ours, ref, X)
    assert np.asarray(ours.n_samples_seen_).dtype == np.int64
    assert (np.ndim(ours.n_samples_seen_) == 1) == nan
    Z = ref.transform(X)
    forward, inverse = _magnitudes(ref, X, Z)
    _assert_same_output(ours.transform(X), Z, dtype, forward)
    _assert_same_output(ours.fit_transform(X), ref.fit_transform(X), dtype, forward)
    _assert_same_output(ours.inverse_transform(Z), ref.inverse_transform(Z), dtype, inverse)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", CONFIGS[:3], ids=["mean-std", "mean", "std"])
def test_matches_sklearn_with_sample_weight(backend, loader, dtype, config):
    rng = np.random.default_rng(1)
    X = _inject_nan(_rows(backend, loader(return_X_y=True)[0]).astype(dtype), rng)
    w = rng.random(X.shape[0]) * 3
    ours = StandardScaler(**config).fit(X, sample_weight=w)
    ref = SkStandardScaler(**config).fit(X, sample_weight=w)
    _assert_same_attributes(ours, ref, X)
    assert np.asarray(ours.n_samples_seen_).dtype == np.float64
    Z = ref.transform(X)
    _assert_same_output(ours.transform(X), Z, dtype, _magnitudes(ref, X, Z)[0])


def test_sample_weight_counts_without_statistics(backend):
    """with_mean=with_std=False: n_samples_seen_ sums the weights, as scikit-learn
    documents (its dense code counts unweighted samples there)."""
    rng = np.random.default_rng(2)
    X = _inject_nan(rng.normal(size=(20, 3)), rng, 0.2)
    w = rng.random(20)
    sc = StandardScaler(with_mean=False, with_std=False).fit(X, sample_weight=w)
    np.testing.assert_allclose(sc.n_samples_seen_, w @ ~np.isnan(X))
    assert sc.mean_ is None and sc.var_ is None and sc.scale_ is None


def test_integer_weights_equal_repeated_rows(backend):
    rng = np.random.default_rng(3)
    X = _inject_nan(rng.normal(size=(15, 4)), rng)
    w = rng.integers(0, 4, 15)
    ours = StandardScaler().fit(X, sample_weight=w)
    repeated = StandardScaler().fit(np.repeat(X, w, axis=0))
    _assert_same_attributes(ours, repeated, X, counts=False)
    np.testing.assert_allclose(ours.n_samples_seen_, repeated.n_samples_seen_)


def test_near_constant_features_get_unit_scale(backend):
    X = np.column_stack([np.full(20, 1e3), np.full(20, 0.1) + 1e-17 * np.arange(20),
                         np.arange(20.0), np.zeros(20)])
    ours, ref = StandardScaler().fit(X), SkStandardScaler().fit(X)
    np.testing.assert_array_equal(ours.scale_ == 1.0, ref.scale_ == 1.0)
    np.testing.assert_array_equal(ours.scale_[[0, 1, 3]], 1.0)
    _assert_same_output(ours.transform(X), ref.transform(X), np.float64)


def test_integer_input_becomes_float64(backend):
    X = np.arange(24).reshape(8, 3)
    ours = StandardScaler().fit(X)
    _assert_same_output(ours.transform(X), SkStandardScaler().fit(X).transform(X), np.float64)


def test_float16_kept_as_in_sklearn(backend):
    X = np.random.default_rng(4).normal(size=(12, 3)).astype(np.float16)
    ours, ref = StandardScaler().fit(X), SkStandardScaler().fit(X)
    _assert_same_attributes(ours, ref, X.astype(np.float64))
    out, expected = ours.transform(X), ref.transform(X)
    assert out.dtype == expected.dtype == np.float16
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------- partial_fit
def _assert_chunked_equals_whole(X, bounds, config=None):
    config = config or {}
    chunked = StandardScaler(**config)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        chunked.partial_fit(X[lo:hi])
    whole = StandardScaler(**config).fit(X)
    rtol, atol_mean, atol_var = _tol(X)
    np.testing.assert_array_equal(chunked.n_samples_seen_, whole.n_samples_seen_)
    assert np.ndim(chunked.n_samples_seen_) == np.ndim(whole.n_samples_seen_)
    for name, atol in (("mean_", atol_mean), ("var_", atol_var)):
        a, b = getattr(chunked, name), getattr(whole, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
    if whole.scale_ is not None:
        # Away from the near-constant bound, where rounding may decide either way.
        n = np.asarray(whole.n_samples_seen_, dtype=np.float64)
        eps = np.finfo(np.float64).eps
        bound = n * eps * whole.var_ + (n * whole.mean_ * eps) ** 2
        clear = ~((whole.var_ > bound / 16) & (whole.var_ < bound * 16))
        np.testing.assert_allclose(chunked.scale_[clear], whole.scale_[clear],
                                   rtol=rtol, atol=np.sqrt(atol_var))
    return chunked, whole


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_partial_fit_chunks_equal_fit(backend, dtype, config):
    X = _rows(backend, datasets.load_wine(return_X_y=True)[0]).astype(dtype)
    X = _inject_nan(X, np.random.default_rng(5), 0.05)
    n = X.shape[0]
    _assert_chunked_equals_whole(X, [0, 1, n // 3, n // 2 + 1, n], config)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_partial_fit_chunk_with_unobserved_column(backend, dtype):
    """One chunk has a column of NaN only: it must contribute nothing to that
    column (scikit-learn's partial_fit yields NaN there; fastml the right answer)."""
    rng = np.random.default_rng(6)
    X = rng.normal(5.0, 2.0, (30, 3)).astype(dtype)
    X[10:20, 1] = np.nan
    chunked, whole = _assert_chunked_equals_whole(X, [0, 10, 20, 30])
    ref = SkStandardScaler().fit(X)
    _assert_same_attributes(chunked, ref, X)
    assert np.isfinite(chunked.mean_).all() and np.isfinite(chunked.scale_).all()
    np.testing.assert_array_equal(chunked.n_samples_seen_, [30, 20, 30])
    # ... also when it is the first chunk.
    X[:10, 2] = np.nan
    _assert_chunked_equals_whole(X, [0, 10, 30])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # scikit-learn's
def test_column_never_observed_is_nan_as_in_sklearn(backend):
    X = np.random.default_rng(7).normal(size=(10, 2))
    X[:, 1] = np.nan
    ours, ref = StandardScaler().fit(X), SkStandardScaler().fit(X)
    assert np.isnan(ours.mean_[1]) and np.isnan(ours.var_[1]) and np.isnan(ours.scale_[1])
    np.testing.assert_array_equal(ours.n_samples_seen_, [10, 0])
    _assert_same_attributes(ours, ref, X)
    # Observed later: the column's statistics are then those of that chunk.
    Y = np.random.default_rng(8).normal(size=(5, 2))
    ours.partial_fit(Y)
    np.testing.assert_allclose(ours.mean_[1], Y[:, 1].mean(), rtol=1e-12)
    np.testing.assert_allclose(ours.var_[1], Y[:, 1].var(), rtol=1e-12)


def test_n_samples_seen_semantics(backend):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(12, 3))
    sc = StandardScaler().partial_fit(X)
    assert isinstance(sc.n_samples_seen_, np.integer) and sc.n_samples_seen_ == 12
    Y = X.copy()
    Y[0, 1] = np.nan
    sc.partial_fit(Y)
    assert sc.n_samples_seen_.dtype == np.int64
    np.testing.assert_array_equal(sc.n_samples_seen_, [24, 23, 24])
    sc.partial_fit(X, sample_weight=np.full(12, 0.5))
    assert sc.n_samples_seen_.dtype == np.float64
    np.testing.assert_array_equal(sc.n_samples_seen_, [30, 29, 30])
    sc.fit(X)  # fit starts over
    assert isinstance(sc.n_samples_seen_, np.integer) and sc.n_samples_seen_ == 12
    sc.fit(X, sample_weight=np.full(12, 2.0))
    assert sc.n_samples_seen_ == 24.0 and np.ndim(sc.n_samples_seen_) == 0
    assert np.asarray(sc.n_samples_seen_).dtype == np.float64


# The backend fixture only selects the backend: sharing it across examples is fine.
@settings(suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_property_partial_fit_equals_fit(backend, data, dtype):
    n_rows = data.draw(st.integers(1, 12 if backend == "cuda" else 60), label="rows")
    n_features = data.draw(st.integers(1, 5), label="features")
    width = 32 if dtype == np.float32 else 64
    finite = st.floats(-1e3, 1e3, width=width)
    X = data.draw(hnp.arrays(dtype, (n_rows, n_features),
                             elements=st.one_of(finite, finite, st.just(np.nan))), label="X")
    cuts = data.draw(st.lists(st.integers(1, n_rows), max_size=4, unique=True), label="cuts")
    bounds = [0, *sorted(c for c in cuts if c < n_rows), n_rows]
    config = data.draw(st.sampled_from(CONFIGS), label="config")
    _assert_chunked_equals_whole(X, bounds, config)


# ------------------------------------------------------------ transforms
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_inverse_transform_round_trip(backend, dtype, config):
    X = _inject_nan(_rows(backend, datasets.load_iris(return_X_y=True)[0]).astype(dtype),
                    np.random.default_rng(10))
    sc = StandardScaler(**config).fit(X)
    back = sc.inverse_transform(sc.transform(X))
    assert back.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(back, X, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("order", ["C", "F"])
def test_copy_false_works_in_place(backend, dtype, order):
    rng = np.random.default_rng(11)
    X = np.asarray(_inject_nan(rng.normal(3, 2, (20, 4)), rng), dtype=dtype, order=order)
    sc = StandardScaler(copy=False).fit(X)
    expected = SkStandardScaler().fit(X).transform(X)
    original = X.copy()

    out = sc.transform(X)
    assert out is X
    _assert_same_output(X, expected, dtype)
    back = sc.inverse_transform(X)
    assert back is X
    np.testing.assert_allclose(X, original, rtol=1e-5, atol=1e-5)

    # The copy argument overrides the estimator's; copy=True never touches X.
    X = original.copy()
    sc.copy = True
    assert sc.transform(X, copy=False) is X
    X = original.copy()
    out = StandardScaler().fit(X).transform(X)
    assert out is not X
    np.testing.assert_array_equal(X, original)


def test_copy_false_on_input_it_cannot_write(backend):
    X = np.random.default_rng(12).normal(size=(10, 3))
    sc = StandardScaler(copy=False).fit(X)
    readonly = X.copy()
    readonly.flags.writeable = False
    out = sc.transform(readonly)
    assert out is not readonly
    np.testing.assert_array_equal(readonly, X)
    ints = np.arange(30).reshape(10, 3)
    out = sc.transform(ints)
    assert out.dtype == np.float64 and ints.dtype.kind == "i"
    as_list = X.tolist()
    np.testing.assert_allclose(sc.transform(as_list), sc.transform(X.copy()), rtol=1e-15)


def test_get_feature_names_out(backend):
    sc = StandardScaler().fit(np.ones((3, 2)))
    np.testing.assert_array_equal(sc.get_feature_names_out(), ["x0", "x1"])
    assert clone(sc).get_params() == sc.get_params()


def test_dataframe_feature_names(backend):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0, 4.0], "b": [0.0, np.nan, 1.0]})
    sc = StandardScaler().fit(df)
    np.testing.assert_array_equal(sc.feature_names_in_, ["a", "b"])
    np.testing.assert_array_equal(sc.get_feature_names_out(), ["a", "b"])
    out = sc.set_output(transform="pandas").transform(df)
    assert list(out.columns) == ["a", "b"]


# ---------------------------------------------------------------- errors
def test_errors(backend):
    X = np.random.default_rng(13).normal(size=(10, 3))
    for method in ("transform", "inverse_transform"):
        with pytest.raises(NotFittedError):
            getattr(StandardScaler(), method)(X)
    sc = StandardScaler().fit(X)
    for method in ("transform", "inverse_transform", "partial_fit"):
        with pytest.raises(ValueError, match="features"):
            getattr(sc, method)(X[:, :2])
    bad = X.copy()
    bad[2, 1] = np.inf
    for method in ("transform", "inverse_transform", "fit"):
        with pytest.raises(ValueError, match="infinity"):
            getattr(sc, method)(bad)
    with pytest.raises(NotFittedError):  # a failed fit leaves it unfitted
        sc.transform(X)
    sc.fit(X)
    with pytest.raises(TypeError, match="[Ss]parse"):
        StandardScaler().fit(scipy.sparse.csr_array(X))
    with pytest.raises(TypeError, match="[Ss]parse"):
        sc.transform(scipy.sparse.csr_array(X))
    with pytest.raises(ValueError, match="2D"):
        StandardScaler().fit(X[:, 0])
    with pytest.raises(ValueError, match="sample_weight"):
        StandardScaler().fit(X, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="with_mean"):
        StandardScaler(with_mean="yes").fit(X)
