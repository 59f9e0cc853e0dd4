"""LabelEncoder against scikit-learn's, on every backend."""
import numpy as np
import pytest
from sklearn import datasets
from sklearn import preprocessing as skp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from fastml import _config
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


def test_tags_declare_a_one_d_target_transformer():
    """As scikit-learn's own LabelEncoder: check_estimator skips it for these tags
    (it takes y, not X), so the tags themselves are what is checked."""
    ours, ref = LabelEncoder().__sklearn_tags__(), skp.LabelEncoder().__sklearn_tags__()
    assert not ours.input_tags.two_d_array and ours.target_tags.one_d_labels
    assert ours.input_tags == ref.input_tags and ours.target_tags == ref.target_tags
    assert clone(LabelEncoder()).get_params() == {}


def test_encode_values_next_to_a_nan_category(backend):
    """Values absent from categories that end in NaN: -1, not NaN's position."""
    values = np.array([5.0, np.inf, np.nan, 1.0, -3.0, 1e300])
    codes = _config.instance(backend).encode_values(values, np.array([1.0, 2.0, np.nan]))
    np.testing.assert_array_equal(codes, [-1, -1, 2, 0, -1, -1])
    ints = np.array([7, 1, -4, 3], dtype=np.int64)
    codes = _config.instance(backend).encode_values(ints, np.array([-4, 3], dtype=np.int64))
    np.testing.assert_array_equal(codes, [-1, -1, 0, 1])


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
