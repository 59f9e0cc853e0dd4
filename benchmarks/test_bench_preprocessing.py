"""pytest-benchmark: each transformer's fit_transform per backend and scikit-learn's,
one group per transformer. Scalers on 1,000,000 x 50 float64; PolynomialFeatures
(degree 2) on 100,000 x 30 float64."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn import preprocessing as skp

import fastml
from fastml import preprocessing
from fastml._compat import simulator_enabled

BACKENDS = [b for b in fastml.available_backends() if not (b == "cuda" and simulator_enabled())]


@functools.lru_cache(maxsize=2)
def data(rows, cols):
    return np.random.default_rng(0).standard_normal((rows, cols)) * 3 + 1


# (transformer name, constructor arguments, data shape)
CASES = [("StandardScaler", {}, (1_000_000, 50)),
         ("MinMaxScaler", {}, (1_000_000, 50)),
         ("MaxAbsScaler", {}, (1_000_000, 50)),
         ("RobustScaler", {}, (1_000_000, 50)),
         ("Normalizer", {}, (1_000_000, 50)),
         ("PolynomialFeatures", {"degree": 2}, (100_000, 30))]
IDS = [c[0] for c in CASES]


def _run(benchmark, module, name, kwargs, shape, label):
    X = data(*shape)
    benchmark.group = f"{name}.fit_transform"
    benchmark.extra_info["backend"] = label
    benchmark.extra_info["input_bytes"] = X.nbytes
    make = getattr(module, name)
    benchmark(lambda: make(**kwargs).fit_transform(X))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_fastml(benchmark, name, kwargs, shape, backend):
    with fastml.use_backend(backend):
        getattr(preprocessing, name)(**kwargs).fit_transform(data(*shape)[:1000])  # compile
        _run(benchmark, preprocessing, name, kwargs, shape, backend)


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_sklearn(benchmark, name, kwargs, shape):
    _run(benchmark, skp, name, kwargs, shape, "sklearn")
