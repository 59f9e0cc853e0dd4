"""What the preprocessing test modules share: the per-backend fixture, data sets, NaN injection."""
import numpy as np
import pytest
from sklearn import datasets

import fastml
from fastml import _config
from fastml.backends.reference import fallback_ops

DTYPES = [np.float32, np.float64]
LOADERS = [datasets.load_digits, datasets.load_iris, datasets.load_wine,
           datasets.load_breast_cancer, datasets.load_diabetes]
# The cuda backend runs on the simulator here: tiny data only.
CUDA_ROWS = 24


def backend_fixture(*ops):
    """A fixture running a test under each available backend (use_backend, this
    thread only); under FASTML_STRICT, skipped where the backend lacks one of ``ops``."""
    @pytest.fixture(params=fastml.available_backends())
    def backend(request):
        name = request.param
        if name != "numpy" and _config.strict():
            missing = set(fallback_ops(type(_config.instance(name)))) & \
                {f"preprocessing.{op}" for op in ops}
            if missing:
                pytest.skip(f"FASTML_STRICT: backend {name!r} has no native kernel for "
                            f"{sorted(missing)} yet")
        with fastml.use_backend(name):
            yield name
    return backend


def rows_for(backend, X):
    return X[:CUDA_ROWS] if backend == "cuda" else X


def inject_nan(X, rng, frac=0.1):
    X = X.copy()
    X[rng.random(X.shape) < frac] = np.nan
    return X
