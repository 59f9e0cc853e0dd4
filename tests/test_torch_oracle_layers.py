"""The reference's convolution, pooling, normalization, dropout and embedding
against PyTorch, forward and backward."""
from __future__ import annotations

import numpy as np
import pytest

import fastml
from fastml import layers

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(2024)
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


@pytest.fixture(autouse=True)
def _reference():
    with fastml.use_backend("numpy"):
        yield


def rand(*shape, dtype=np.float64):
    return RNG.uniform(-2, 2, shape).astype(dtype)


def t_(a, grad=False):
    """torch runs in float64 on the (float32 or float64) values: the exact answer
    that the float32 results are compared with."""
    return torch.from_numpy(np.array(a, dtype=np.float64)).requires_grad_(grad)


def close(actual, expected, dtype, n=1):
    """float64: 1e-10 relative; float32: within 1e-5 relative of the float64
    result, times sqrt(n) for a sum of n products rounded in float32 (conv2d's GEMM)."""
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.dtype == dtype and actual.shape == expected.shape
    if dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5 * np.sqrt(n),
                                   atol=1e-6 * np.sqrt(n), equal_nan=True)


CONV_CASES = [  # (N, C, H, W), (O, kh, kw), stride, padding, dilation
    ((2, 3, 7, 6), (4, 3, 3), 1, 0, 1),
    ((1, 2, 8, 8), (3, 3, 3), 1, 1, 1),
    ((3, 2, 9, 7), (2, 2, 3), 2, 1, 1),
    ((2, 3, 10, 9), (4, 3, 2), (2, 1), (1, 2), (2, 1)),
    ((1, 1, 5, 5), (1, 5, 5), 1, 0, 1),        # kernel as large as the input
    ((2, 4, 6, 5), (3, 1, 1), 3, 0, 1),        # 1x1, stride larger than 1
    ((1, 2, 11, 11), (2, 3, 3), 3, 2, 2),
]


@DTYPES
@pytest.mark.parametrize("xs,ws,stride,padding,dilation", CONV_CASES)
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "view"])
def test_conv2d_vs_torch(dtype, xs, ws, stride, padding, dilation, strided):
    x = rand(*xs[:3], 2 * xs[3], dtype=dtype)
    x = x[..., ::2] if strided else x[..., :xs[3]]
    w = rand(ws[0], xs[1], *ws[1:], dtype=dtype)
    b = rand(ws[0], dtype=dtype)
    tx, tw, tb = t_(x, True), t_(w, True), t_(b, True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding, dilation=dilation)
    g = rand(*ty.shape, dtype=dtype)
    ty.backward(t_(g))
    k = w[0].size
    y = layers.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    close(y, ty, dtype, k)
    gx, gw, gb = layers.conv2d_backward(g, x, w, stride=stride, padding=padding,
                                        dilation=dilation)
    close(gx, tx.grad, dtype, k)
    close(gw, tw.grad, dtype, g[:, 0].size)
    close(gb, tb.grad, dtype, g[:, 0].size)
    assert layers.conv2d_backward(g, x, w, stride, padding, dilation, has_bias=False)[2] is None


def test_conv2d_unbatched_and_no_bias():
    x, w = rand(2, 6, 5), rand(3, 2, 3, 3)
    y = layers.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, F.conv2d(t_(x), t_(w), padding=1).numpy(), rtol=1e-12)
    gx, gw, gb = layers.conv2d_backward(np.ones_like(y), x, w, padding=1, has_bias=False)
    assert gx.shape == x.shape and gw.shape == w.shape and gb is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=rand(1, 2, 5, 5), weight=rand(3, 3, 3, 3)), "'weight'.*input channels"),
    (dict(x=rand(1, 2, 3, 3), weight=rand(3, 2, 5, 5)), "'weight'.*larger than the padded"),
    (dict(x=rand(1, 2, 3, 3), weight=rand(3, 2, 3, 3), dilation=2), "'weight'.*larger"),
    (dict(x=rand(1, 2, 5, 5), weight=rand(3, 2, 3, 3), stride=0), "'stride'"),
    (dict(x=rand(1, 2, 5, 5), weight=rand(3, 2, 3, 3), padding=-1), "'padding'"),
    (dict(x=rand(1, 2, 5, 5), weight=rand(3, 2, 3, 3), bias=rand(2)), "'bias'"),
    (dict(x=rand(2, 5, 5), weight=rand(3, 2, 3)), "'weight'"),
])
def test_conv2d_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layers.conv2d(**kwargs)


def test_conv2d_type_errors():
    with pytest.raises(TypeError, match="'stride'"):
        layers.conv2d(rand(1, 1, 4, 4), rand(1, 1, 2, 2), stride=1.5)
    with pytest.raises(TypeError, match="'x'"):
        layers.conv2d(np.ones((1, 1, 4, 4), np.int64), rand(1, 1, 2, 2))
    with pytest.raises(TypeError, match="share one dtype"):
        layers.conv2d(rand(1, 1, 4, 4, dtype=np.float32), rand(1, 1, 2, 2))
    with pytest.raises(ValueError, match="'grad_out'"):
        layers.conv2d_backward(rand(1, 1, 2, 2), rand(1, 1, 4, 4), rand(1, 1, 2, 2))


POOL_CASES = [  # (N, C, H, W), kernel_size, stride, padding
    ((2, 3, 6, 6), 2, None, 0),
    ((1, 2, 7, 5), 3, 2, 1),
    ((2, 1, 9, 8), (3, 2), (2, 3), (1, 1)),
    ((1, 1, 4, 4), 4, 1, 2),
    ((3, 2, 5, 6), (1, 3), 1, (0, 1)),
    ((1, 1, 1, 1), 1, None, 0),
]


@DTYPES
@pytest.mark.parametrize("xs,kernel,stride,padding", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_vs_torch(dtype, xs, kernel, stride, padding, kind):
    x = rand(*xs, dtype=dtype)
    if kind == "max":  # ties, NaN (one and two in a window), -inf windows
        x.reshape(-1)[::5] = 1.0
        x[0, 0, 0, :2] = np.nan if x.shape[3] > 1 else x[0, 0, 0, :2]
        x[-1, -1, -1, :] = -np.inf
    tfn = F.max_pool2d if kind == "max" else F.avg_pool2d
    tx = t_(x, True)
    ty = tfn(tx, kernel, stride, padding)
    g = rand(*ty.shape, dtype=dtype)
    ty.backward(t_(g))
    y = getattr(layers, f"{kind}_pool2d")(x, kernel, stride, padding)
    close(y, ty, dtype)
    gx = getattr(layers, f"{kind}_pool2d_backward")(g, x, kernel, stride, padding)
    close(gx, tx.grad, dtype, 9)


def test_max_pool2d_picks_as_torch():
    """Ties go to the first maximum, NaNs to the last NaN, all -inf windows to
    their first element (checked against torch's gradient)."""
    x = np.array([[[[np.nan, 1, np.nan, 2, 5, 5, -np.inf, -np.inf]]]])
    tx = t_(x, True)
    F.max_pool2d(tx, (1, 2), stride=2).sum().backward()
    g = layers.max_pool2d_backward(np.ones((1, 1, 1, 4)), x, (1, 2), stride=2)
    np.testing.assert_array_equal(g, tx.grad.numpy())
    tx = t_(x, True)
    F.max_pool2d(tx, (1, 4)).sum().backward()
    g = layers.max_pool2d_backward(np.ones((1, 1, 1, 2)), x, (1, 4))
    np.testing.assert_array_equal(g, tx.grad.numpy())
    assert g[0, 0, 0].tolist() == [0, 0, 1, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("fn", ["max_pool2d", "avg_pool2d"])
def test_pool2d_errors(fn):
    f = getattr(layers, fn)
    with pytest.raises(ValueError, match="'kernel_size'.*larger"):
        f(rand(1, 1, 3, 3), 5)
    with pytest.raises(ValueError, match="'padding'.*half"):
        f(rand(1, 1, 6, 6), 2, padding=2)
    with pytest.raises(ValueError, match="'kernel_size'"):
        f(rand(1, 1, 6, 6), 0)
    with pytest.raises(ValueError, match="'grad_out'"):
        getattr(layers, fn + "_backward")(rand(1, 1, 2, 2), rand(1, 1, 6, 6), 2)


@DTYPES
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 5), (1, 2, 1, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_vs_torch(dtype, shape, affine):
    x = rand(*shape, dtype=dtype) * 3 + 1
    c = shape[1]
    w, b = (rand(c, dtype=dtype), rand(c, dtype=dtype)) if affine else (None, None)
    rm, rv = rand(c, dtype=dtype), np.abs(rand(c, dtype=dtype)) + 0.5
    trm, trv = t_(rm), t_(rv)
    tx = t_(x, True)
    tw, tb = (t_(w, True), t_(b, True)) if affine else (None, None)
    ty = F.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.3, eps=1e-3)
    g = rand(*shape, dtype=dtype)
    ty.backward(t_(g))
    y = layers.batch_norm(x, w, b, rm, rv, training=True, momentum=0.3, eps=1e-3)
    n = x.size // c
    close(y, ty, dtype, n)
    close(rm, trm, dtype, n)
    close(rv, trv, dtype, n)
    gx, gw, gb = layers.batch_norm_backward(g, x, w, eps=1e-3)
    close(gx, tx.grad, dtype, n)
    if affine:
        close(gw, tw.grad, dtype, n)
        close(gb, tb.grad, dtype, n)
    else:
        assert gw is None and gb is None


@DTYPES
def test_batch_norm_eval_vs_torch(dtype):
    x, w, b = rand(4, 3, 2, 2, dtype=dtype), rand(3, dtype=dtype), rand(3, dtype=dtype)
    rm, rv = rand(3, dtype=dtype), np.abs(rand(3, dtype=dtype)) + 0.5
    before = rm.copy(), rv.copy()
    ty = F.batch_norm(t_(x), t_(rm), t_(rv), t_(w), t_(b), training=False)
    close(layers.batch_norm(x, w, b, rm, rv, training=False), ty, dtype)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


def test_batch_norm_errors():
    x = rand(4, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layers.batch_norm(rand(1, 3), None, None)
    with pytest.raises(ValueError, match="'running_mean'.*training=False"):
        layers.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="both"):
        layers.batch_norm(x, None, None, running_mean=np.zeros(3))
    with pytest.raises(ValueError, match="'weight'"):
        layers.batch_norm(x, rand(4), None)
    with pytest.raises(ValueError, match="'momentum'"):
        layers.batch_norm(x, None, None, momentum=1.5)
    with pytest.raises(ValueError, match="'eps'"):
        layers.batch_norm(x, None, None, eps=0.0)
    with pytest.raises(ValueError, match="writeable"):
        rm = np.zeros(3)
        rm.flags.writeable = False
        layers.batch_norm(x, None, None, rm, np.ones(3))


@DTYPES
@pytest.mark.parametrize("shape,normalized", [((6, 10), 10), ((2, 3, 4, 5), (4, 5)),
                                              ((3, 7), (7,)), ((5, 1), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_vs_torch(dtype, shape, normalized, affine):
    x = rand(*shape, dtype=dtype) * 2 + 3
    ns = (normalized,) if isinstance(normalized, int) else normalized
    w, b = (rand(*ns, dtype=dtype), rand(*ns, dtype=dtype)) if affine else (None, None)
    tx = t_(x, True)
    tw, tb = (t_(w, True), t_(b, True)) if affine else (None, None)
    ty = F.layer_norm(tx, ns, tw, tb, eps=1e-4)
    g = rand(*shape, dtype=dtype)
    ty.backward(t_(g))
    n = int(np.prod(ns))
    close(layers.layer_norm(x, normalized, w, b, eps=1e-4), ty, dtype, n)
    gx, gw, gb = layers.layer_norm_backward(g, x, normalized, w, eps=1e-4)
    close(gx, tx.grad, dtype, n)
    if affine:
        close(gw, tw.grad, dtype, x.size // n)
        close(gb, tb.grad, dtype, x.size // n)
    else:
        assert gw is None and gb is None


def test_layer_norm_errors():
    with pytest.raises(ValueError, match="'normalized_shape'"):
        layers.layer_norm(rand(3, 4), 5)
    with pytest.raises(TypeError, match="'normalized_shape'"):
        layers.layer_norm(rand(3, 4), 4.0)
    with pytest.raises(ValueError, match="'weight'"):
        layers.layer_norm(rand(3, 4), 4, weight=rand(3))


def test_dropout_statistics_and_scaling():
    """The mask is Bernoulli(1 - p) (a binomial test at 5 sigma), kept values are
    x / (1 - p), the gradient uses the same mask, and eval mode is the identity."""
    x = rand(200_000)
    for p in (0.1, 0.5, 0.9):
        y, mask = layers.dropout(x, p, seed=11)
        n, kept = x.size, mask.sum()
        assert abs(kept - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
        np.testing.assert_array_equal(y[mask], x[mask] * np.float64(1 / (1 - p)))
        assert not y[~mask].any()
        g = layers.dropout_backward(np.ones_like(x), mask, p)
        np.testing.assert_array_equal(g, np.where(mask, 1 / (1 - p), 0.0))
    # neighbouring elements are independent: P(both kept) = (1 - p)^2
    _, mask = layers.dropout(x, 0.5, seed=3)
    both = np.mean(mask[1:] & mask[:-1])
    assert abs(both - 0.25) < 5 * np.sqrt(0.25 * 0.75 / x.size)
    y, mask = layers.dropout(x, 0.5, training=False)
    assert y is x and mask.all()
    assert (layers.dropout(x, 0.0, seed=1)[1]).all()


def test_dropout_seeds():
    x = rand(1000)
    a, b = layers.dropout(x, 0.5, seed=5), layers.dropout(x, 0.5, seed=5)
    np.testing.assert_array_equal(a[1], b[1])
    assert (layers.dropout(x, 0.5, seed=6)[1] != a[1]).any()
    assert (layers.dropout(x, 0.5)[1] != layers.dropout(x, 0.5)[1]).any()
    with pytest.raises(ValueError, match="'p'"):
        layers.dropout(x, 1.0)
    with pytest.raises(ValueError, match="'p'"):
        layers.dropout(x, -0.1)
    with pytest.raises(TypeError, match="'seed'"):
        layers.dropout(x, 0.5, seed=1.5)
    with pytest.raises(TypeError, match="'mask'"):
        layers.dropout_backward(x, np.ones(1000), 0.5)


def test_dropout_nan_stays_nan_as_torch():
    """torch multiplies by a 0/scale noise tensor, so a dropped NaN is still NaN."""
    x = np.full(64, np.nan)
    y, mask = layers.dropout(x, 0.5, seed=0)
    assert np.isnan(y).all() and not mask.all()


@DTYPES
def test_embedding_vs_torch(dtype):
    w = rand(7, 4, dtype=dtype)
    idx = np.array([[0, 3, 3], [6, 3, 1]], np.int32)
    tw = t_(w, True)
    ty = F.embedding(torch.from_numpy(idx.astype(np.int64)), tw)
    g = rand(2, 3, 4, dtype=dtype)
    ty.backward(t_(g))
    close(layers.embedding(idx, w), ty, dtype)
    close(layers.embedding_backward(g, idx, 7), tw.grad, dtype, 3)


def test_embedding_errors():
    with pytest.raises(ValueError, match="'indices'.*out of range"):
        layers.embedding(np.array([0, 7]), rand(7, 2))
    with pytest.raises(ValueError, match="'indices'.*out of range"):
        layers.embedding(np.array([-1]), rand(7, 2))
    with pytest.raises(TypeError, match="'indices'"):
        layers.embedding(np.array([0.0]), rand(7, 2))
    with pytest.raises(ValueError, match="'grad_out'"):
        layers.embedding_backward(rand(2, 3), np.array([0, 1, 2]), 4)
