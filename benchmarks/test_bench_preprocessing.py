"""pytest-benchmark: StandardScaler fit + transform on 1,000,000 x 50 float64, per backend
and scikit-learn, in one group."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import fastml
from fastml._compat import simulator_enabled

BACKENDS = [b for b in fastml.available_backends() if not (b == "cuda" and simulator_enabled())]


@functools.lru_cache(maxsize=1)
def data():
    return np.random.default_rng(0).standard_normal((1_000_000, 50)) * 3 + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_standard_scaler(benchmark, backend):
    from fastml.preprocessing import StandardScaler
    X = data()
    benchmark.group = "StandardScaler.fit_transform"
    benchmark.extra_info["backend"] = backend
    with fastml.use_backend(backend):
        StandardScaler().fit_transform(X[:1000])  # compile outside the timing
        benchmark(lambda: StandardScaler().fit_transform(X))


def test_standard_scaler_sklearn(benchmark):
    from sklearn.preprocessing import StandardScaler
    X = data()
    benchmark.group = "StandardScaler.fit_transform"
    benchmark.extra_info["backend"] = "scikit-learn"
    benchmark(lambda: StandardScaler().fit_transform(X))
