"""LabelEncoder against scikit-learn's, on every backend."""
import numpy as np
import pytest
from sklearn import datasets
from sklearn import preprocessing as skp
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastml.preprocessing import LabelEncoder

from preprocessing_support import backend_fixture

backend = backend_fixture("unique_counts", "encode_values")

LABELS = {
    "int": np.array([3, 1, 3, 7, 1, -2, 7, 7]),
    "int8": np.array([3, 1, 3, -7], dtype=np.int8),
    "uint32": np.array([9, 0, 9, 4], dtype=np.uint32),
    "bool": np.array([True, False, True]),
    "float32": np.array([2.5, 1.0, -0.5, 2.5], dtype=np.float32),
    "float-nan": np.array([2.5, np.nan, 1.0, np.nan, 2.5, -np.inf]),
    "str": np.array(["b", "a", "c", "b"]),
    "object": np.array(["x", "yy", "x"], dtype=object),
    "uint64": np.array([2**63 + 5, 3, 2**63 + 5], dtype=np.uint64),
}


@parametrize_with_checks([LabelEncoder()])
def test_sklearn_estimator_checks(backend, estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", LABELS)
def test_matches_sklearn(backend, name):
    y = LABELS[name]
    ours, ref = LabelEncoder().fit(y), skp.LabelEncoder().fit(y)
    np.testing.assert_array_equal(ours.classes_, ref.classes_)
    assert ours.classes_.dtype == ref.classes_.dtype
    codes = ours.transform(y)
    np.testing.assert_array_equal(codes, ref.transform(y))
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(ours.fit_transform(y), ref.fit_transform(y))
    np.testing.assert_array_equal(ours.inverse_transform(codes), y)


@pytest.mark.parametrize("loader", [datasets.load_iris, datasets.load_wine, datasets.load_digits])
def test_dataset_targets(backend, loader):
    y = loader(return_X_y=True)[1]
    np.testing.assert_array_equal(LabelEncoder().fit_transform(y * 3 + 1),
                                  skp.LabelEncoder().fit_transform(y * 3 + 1))


def test_errors_and_empty(backend):
    with pytest.raises(NotFittedError):
        LabelEncoder().transform([1])
    enc = LabelEncoder().fit([1, 2, 2])
    with pytest.raises(ValueError, match=r"unseen labels: \[np.int64\(3\), np.int64\(4\)\]"):
        enc.transform([1, 3, 4, 3])
    with pytest.raises(ValueError, match="unseen labels"):
        enc.inverse_transform([0, 2])
    assert enc.transform([]).size == 0 and enc.inverse_transform([]).size == 0
    with pytest.raises(ValueError, match="unseen labels"):
        LabelEncoder().fit([1.0, 2.0]).transform([1.0, np.nan])
