"""pytest-benchmark: each transformer's fit_transform per backend and scikit-learn's,
one group per case. Scalers and SimpleImputer on 1,000,000 x 50 float64 (the
imputer's with 10% NaN); PolynomialFeatures (degree 2) on 100,000 x 30 float64;
the encoders on 1,000,000 int64 values of 100 categories (one column)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn import impute as ski
from sklearn import preprocessing as skp

import fastml
from fastml import preprocessing
from fastml._compat import simulator_enabled

BACKENDS = [b for b in fastml.available_backends() if not (b == "cuda" and simulator_enabled())]


@functools.lru_cache(maxsize=None)
def data(kind):
    rng = np.random.default_rng(0)
    if kind == "labels":
        return rng.integers(0, 100, (1_000_000, 1))
    rows, cols = (100_000, 30) if kind == "small" else (1_000_000, 50)
    X = rng.standard_normal((rows, cols)) * 3 + 1
    if kind == "nan":
        X[rng.random(X.shape) < 0.1] = np.nan
    return X


# (case id, transformer name, constructor arguments, data kind)
CASES = [("StandardScaler", "StandardScaler", {}, "dense"),
         ("MinMaxScaler", "MinMaxScaler", {}, "dense"),
         ("MaxAbsScaler", "MaxAbsScaler", {}, "dense"),
         ("RobustScaler", "RobustScaler", {}, "dense"),
         ("Normalizer", "Normalizer", {}, "dense"),
         ("PolynomialFeatures", "PolynomialFeatures", {"degree": 2}, "small"),
         ("OneHotEncoder-csr", "OneHotEncoder", {}, "labels"),
         ("OneHotEncoder-dense", "OneHotEncoder", {"sparse_output": False}, "labels"),
         ("OrdinalEncoder", "OrdinalEncoder", {}, "labels"),
         ("SimpleImputer-mean", "SimpleImputer", {}, "nan"),
         ("SimpleImputer-median", "SimpleImputer", {"strategy": "median"}, "nan")]
IDS = [c[0] for c in CASES]
SKLEARN = {**{c[1]: getattr(skp, c[1], None) for c in CASES},
           "SimpleImputer": ski.SimpleImputer}


def _run(benchmark, make, case, kwargs, kind, label):
    X = data(kind)
    benchmark.group = f"{case}.fit_transform"
    benchmark.extra_info["backend"] = label
    benchmark.extra_info["input_bytes"] = X.nbytes
    benchmark(lambda: make(**kwargs).fit_transform(X))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,name,kwargs,kind", CASES, ids=IDS)
def test_fastml(benchmark, case, name, kwargs, kind, backend):
    make = getattr(preprocessing, name)
    with fastml.use_backend(backend):
        make(**kwargs).fit_transform(data(kind)[:1000])  # compile
        _run(benchmark, make, case, kwargs, kind, backend)


@pytest.mark.parametrize("case,name,kwargs,kind", CASES, ids=IDS)
def test_sklearn(benchmark, case, name, kwargs, kind):
    _run(benchmark, SKLEARN[name], case, kwargs, kind, "sklearn")
