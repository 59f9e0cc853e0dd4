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


def test_public_api_keeps_device_arrays_on_the_device():
    """Through the public functions (validation included), device arrays in give device
    arrays out, in-place running statistics stay on the device, and the values are the
    reference's."""
    from numba import cuda
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((2, 4, 6, 5))
    c = rng.standard_normal(3)
    cases = [
        (layers.conv2d, (x, w), dict(padding=1)),
        (layers.conv2d_backward, (g, x, w), dict(padding=1)),
        (layers.max_pool2d, (x, 2), {}),
        (layers.avg_pool2d_backward, (x[:, :, :3, :2], x, 2), {}),
        (layers.batch_norm, (x, c, c), dict(training=True)),
        (layers.batch_norm_backward, (x, x, c), {}),
        (layers.layer_norm, (x, (6, 5)), {}),
        (layers.layer_norm_backward, (x, x, 5, x[0, 0, 0]), {}),
        (layers.dropout, (x, 0.5), dict(seed=3)),
        (layers.relu, (x,), {}),
    ]
    for fn, args, kwargs in cases:
        with fastml.use_backend("numpy"):
            want = fn(*args, **kwargs)
        dev = [cuda.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
               for a in args]
        with fastml.use_backend("cuda"):
            got = fn(*dev, **kwargs)
        for gv, wv in zip(got if isinstance(got, tuple) else (got,),
                          want if isinstance(want, tuple) else (want,)):
            assert not isinstance(gv, np.ndarray), f"{fn.__name__} came back to the host"
            np.testing.assert_allclose(gv.copy_to_host(), wv, rtol=1e-12, atol=1e-12,
                                       err_msg=fn.__name__)
    rm, rv = cuda.to_device(np.zeros(3)), cuda.to_device(np.ones(3))
    with fastml.use_backend("cuda"):
        layers.batch_norm(cuda.to_device(x), None, None, rm, rv, momentum=1.0)
    np.testing.assert_allclose(rm.copy_to_host(), x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rv.copy_to_host(), x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
