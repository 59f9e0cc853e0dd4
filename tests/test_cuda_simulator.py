"""The test harness's fixes to the Numba CUDA simulator (tests/conftest.py) hold.

The cuda property tests run on the simulator, one Python thread per CUDA
thread; a race in the simulator would show as a rare, unrelated failure of
some property test.
"""
import numpy as np
import pytest
from numba import config

import fastml
from fastml import layers

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="needs the CUDA simulator")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_warning_in_a_kernel_does_not_break_sibling_threads():
    # A float32 overflow warns; the first warning in a module adds
    # __warningregistry__ to the globals that sibling threads iterate.
    from fastml.backends import _cuda_kernels

    x = np.full(256, -1e30, np.float32)
    g = np.full(256, 3e38, np.float32)
    with fastml.use_backend("cuda"):
        for _ in range(300):
            vars(_cuda_kernels).pop("__warningregistry__", None)
            out = layers.leaky_relu_backward(g, x, negative_slope=100.0)
    assert np.all(np.isinf(out))
