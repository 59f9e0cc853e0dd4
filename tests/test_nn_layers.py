"""fastml.nn's layer modules (convolution, pooling, normalization, dropout,
embedding, activations, Flatten): finite differences, torch.nn, train/eval,
state dicts with buffers, initialization."""
from collections import OrderedDict

import numpy as np
import pytest

import fastml
from fastml import nn

from gradcheck import numeric_grad
from native import backend_fixture, reference_by_default  # noqa: F401 (autouse fixture)

USED_OPS = tuple(f"layers.{op}{suffix}" for op in (
    "conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "layer_norm", "dropout", "embedding",
    "sigmoid", "tanh", "softmax", "log_softmax", "linear", "relu") for suffix in ("", "_backward"))


backend = backend_fixture(USED_OPS)


def _distinct(rng, shape):
    """Values at least 0.01 apart (no max-pool ties within a finite-difference step)."""
    n = int(np.prod(shape))
    return rng.permutation(np.linspace(-2, 2, n)).reshape(shape) + rng.uniform(0, 1e-3, shape)


F64 = dict(dtype=np.float64)
MODULES = {
    "conv": (lambda r: nn.Conv2d(2, 3, 3, padding=1, rng=r, **F64), (2, 2, 5, 4)),
    "conv-strided-dilated": (lambda r: nn.Conv2d(2, 2, (2, 3), stride=2, padding=(1, 0),
                                                 dilation=(1, 2), bias=False, rng=r, **F64),
                             (1, 2, 7, 8)),
    "maxpool": (lambda r: nn.MaxPool2d(2), (2, 2, 4, 6)),
    "maxpool-padded": (lambda r: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 5, 5)),
    "avgpool": (lambda r: nn.AvgPool2d((2, 3), stride=1, padding=1), (2, 1, 4, 5)),
    "batchnorm1d": (lambda r: nn.BatchNorm1d(3, **F64), (6, 3)),
    "batchnorm2d": (lambda r: nn.BatchNorm2d(2, momentum=0.5, **F64), (3, 2, 2, 3)),
    "layernorm": (lambda r: nn.LayerNorm((3, 4), **F64), (2, 3, 4)),
    "sigmoid": (lambda r: nn.Sigmoid(), (3, 4)),
    "tanh": (lambda r: nn.Tanh(), (3, 4)),
    "softmax": (lambda r: nn.Softmax(dim=1), (3, 4)),
    "log_softmax": (lambda r: nn.LogSoftmax(), (3, 4)),
    "flatten": (lambda r: nn.Flatten(), (2, 3, 2)),
    "cnn": (lambda r: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=r, **F64),
                                    nn.BatchNorm2d(2, **F64), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Flatten(), nn.Linear(8, 3, rng=r, **F64)), (3, 1, 4, 4)),
}


@pytest.mark.parametrize("name", MODULES)
def test_backward_matches_finite_differences(backend, name):
    make, shape = MODULES[name]
    rng = np.random.default_rng(5)
    m = make(rng)
    for p in m.parameters():  # move weight/bias off their ones/zeros defaults
        p[...] = rng.uniform(0.5, 1.5, p.shape)
    x = _distinct(rng, shape)
    r = rng.standard_normal(m(x).shape)

    def loss():
        return float(np.sum(r * m(x)))

    m(x)
    gx = m.backward(r)
    grads = [g.copy() for g in m.gradients()]
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    for (pname, p), g in zip(m.named_parameters(), grads):
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=1e-6, atol=1e-8, err_msg=pname)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_cnn_matches_torch(backend, dtype, training):
    """Conv2d, BatchNorm2d, ReLU, MaxPool2d, Dropout (p=0: deterministic), Flatten,
    LayerNorm, Linear: outputs, input gradient, parameter gradients and running
    statistics against torch.nn loaded from our state dict (buffers included)."""
    torch = pytest.importorskip("torch")
    tn = torch.nn
    rng = np.random.default_rng(7)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, dtype=dtype, rng=rng),
                      nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Dropout(0.0), nn.Flatten(), nn.LayerNorm(16, dtype=dtype),
                      nn.Linear(16, 3, dtype=dtype, rng=rng))
    tm = tn.Sequential(tn.Conv2d(2, 4, 3, padding=1), tn.BatchNorm2d(4), tn.ReLU(),
                       tn.MaxPool2d(2), tn.Dropout(0.0), tn.Flatten(), tn.LayerNorm(16),
                       tn.Linear(16, 3)).to(torch.float64 if dtype == np.float64 else torch.float32)
    for p in m.parameters():
        p[...] = rng.uniform(-1, 1, p.shape)
    m[1].running_var[...] = rng.uniform(0.5, 2, 4)
    sd = m.state_dict()
    assert "1.running_mean" in sd and "1.num_batches_tracked" in sd
    tm.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    m.train(training)
    tm.train(training)
    x = rng.standard_normal((5, 2, 4, 4)).astype(dtype)
    g = rng.standard_normal((5, 3)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = tm(tx)
    ty.backward(torch.from_numpy(g))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m(x), ty.detach().numpy(), **tol)
    np.testing.assert_allclose(m.backward(g), tx.grad.numpy(), **tol)
    for (name, _), grad in zip(m.named_parameters(), m.gradients()):
        np.testing.assert_allclose(grad, tm.get_parameter(name).grad.numpy(), **tol, err_msg=name)
    for name, value in m.state_dict().items():
        np.testing.assert_allclose(value, tm.state_dict()[name].numpy(), **tol, err_msg=name)


def test_batch_norm_train_eval():
    rng = np.random.default_rng(0)
    m = nn.BatchNorm1d(3, momentum=0.5, dtype=np.float64)
    x = rng.standard_normal((50, 3)) * 2 + 1
    y = m(x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(m.running_mean, 0.5 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.running_var, 0.5 + 0.5 * x.var(0, ddof=1), rtol=1e-12)
    assert int(m.num_batches_tracked) == 1
    m.eval()
    before = m.running_mean.copy()
    np.testing.assert_allclose(m(x), (x - m.running_mean) / np.sqrt(m.running_var + 1e-5))
    np.testing.assert_array_equal(m.running_mean, before)
    assert int(m.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="expected a 2 or 3-d input"):
        m(np.ones((2, 3, 4, 5)))
    free = nn.BatchNorm2d(2, affine=False, track_running_stats=False, dtype=np.float64)
    assert free.parameters() == [] and list(free.state_dict()) == []
    free.eval()  # no running statistics: batch statistics in evaluation too
    out = free(rng.standard_normal((4, 2, 3, 3)))
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_dropout_train_eval_and_seeding():
    x = np.ones((100, 50), np.float32)
    a = nn.Dropout(0.3, rng=np.random.default_rng(1))
    b = nn.Dropout(0.3, rng=np.random.default_rng(1))
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)
    assert 0.6 < (ya > 0).mean() < 0.8
    np.testing.assert_allclose(ya[ya > 0], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(a.backward(x), ya)  # same mask, same scale
    assert not np.array_equal(a(x), ya)  # a new mask per call
    a.eval()
    assert a(x) is x and a.backward(x) is x
    with pytest.raises(ValueError, match="'p'"):
        nn.Dropout(1.0)


def test_embedding_module():
    m = nn.Embedding(10, 4, dtype=np.float64, rng=np.random.default_rng(0))
    idx = np.array([[1, 2, 1], [9, 0, 1]])
    y = m(idx)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y[0, 0], m.weight[1])
    assert m.backward(np.ones_like(y)) is None
    np.testing.assert_array_equal(m.gradients()[0][:, 0], [1, 3, 1, 0, 0, 0, 0, 0, 0, 1])
    big = nn.Embedding(1000, 100, rng=np.random.default_rng(1))
    assert abs(big.weight.mean()) < 0.01 and abs(big.weight.std() - 1) < 0.01  # N(0, 1)


def test_conv2d_init_matches_pytorch_default():
    m = nn.Conv2d(16, 32, 3, rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(16 * 9)
    assert m.weight.shape == (32, 16, 3, 3) and m.weight.dtype == np.float32
    assert np.abs(m.weight).max() <= bound and m.weight.max() > 0.99 * bound
    assert abs(m.weight.var() / (bound ** 2 / 3) - 1) < 0.05
    assert np.abs(m.bias).max() <= bound
    with pytest.raises(ValueError, match="in_channels"):
        nn.Conv2d(0, 2, 3)
    with pytest.raises(ValueError, match="'padding'"):
        nn.MaxPool2d(2, padding=2)


def test_state_dict_buffers_round_trip():
    a = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)),
                                  bn=nn.BatchNorm2d(2)))
    a(np.random.default_rng(1).standard_normal((4, 1, 5, 5)).astype(np.float32))
    sd = a.state_dict()
    assert list(sd) == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                        "bn.running_var", "bn.num_batches_tracked"]
    b = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), bn=nn.BatchNorm2d(2)))
    b.load_state_dict(sd)
    np.testing.assert_array_equal(b[1].running_var, a[1].running_var)
    assert int(b[1].num_batches_tracked) == 1
    assert len(b.parameters()) == 4  # buffers are not parameters


def test_flatten_and_reprs():
    f = nn.Flatten()
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert f(x).shape == (2, 60) and f.backward(f(x)).shape == x.shape
    assert nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=None, padding=0)"
    assert "BatchNorm2d(3, eps=1e-05" in repr(nn.BatchNorm2d(3))
