"""The reference itself: backward passes against central finite differences (float64)."""
from __future__ import annotations

import numpy as np
import pytest

import fastml
from fastml import layers, losses

from gradcheck import numeric_grad


@pytest.fixture(autouse=True)
def _reference():
    with fastml.use_backend("numpy"):
        yield


RNG = np.random.default_rng(1234)


def rand(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape)


FD = dict(rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------- finite differences
@pytest.mark.parametrize("batch", [(5,), (2, 3), ()])
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_backward_fd(batch, has_bias):
    x, w, b = rand(*batch, 4), rand(3, 4), rand(3)
    g = rand(*batch, 3)
    bias = b if has_bias else None
    loss = lambda: float((g * layers.linear(x, w, bias)).sum())  # noqa: E731
    gx, gw, gb = layers.linear_backward(g, x, w, has_bias)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), **FD)
    np.testing.assert_allclose(gw, numeric_grad(loss, w), **FD)
    if has_bias:
        np.testing.assert_allclose(gb, numeric_grad(loss, b), **FD)
    else:
        assert gb is None


# forward, backward, does the backward take the output (True) or the input (False)
UNARY = [(layers.relu, layers.relu_backward, False),
         (layers.sigmoid, layers.sigmoid_backward, True),
         (layers.tanh, layers.tanh_backward, True)]


@pytest.mark.parametrize("fwd,bwd,from_output", UNARY, ids=lambda f: getattr(f, "__name__", ""))
def test_elementwise_backward_fd(fwd, bwd, from_output):
    x = rand(4, 5)
    x[np.abs(x) < 0.05] = 0.5  # keep relu away from its kink
    g = rand(4, 5)
    loss = lambda: float((g * fwd(x)).sum())  # noqa: E731
    got = bwd(g, fwd(x) if from_output else x)
    np.testing.assert_allclose(got, numeric_grad(loss, x), **FD)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("fwd,bwd", [(layers.softmax, layers.softmax_backward),
                                     (layers.log_softmax, layers.log_softmax_backward)])
def test_rowwise_backward_fd(fwd, bwd, axis):
    x, g = rand(3, 4, 5), rand(3, 4, 5)
    loss = lambda: float((g * fwd(x, axis)).sum())  # noqa: E731
    np.testing.assert_allclose(bwd(g, fwd(x, axis), axis), numeric_grad(loss, x), **FD)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_grad_fd(reduction):
    x, t = rand(3, 4), rand(3, 4)
    loss = lambda: float(np.sum(losses.mse_loss(x, t, reduction)))  # noqa: E731
    np.testing.assert_allclose(losses.mse_loss_grad(x, t, reduction), numeric_grad(loss, x), **FD)


def _off_kinks(d, *kinks):
    """d with the entries within 0.05 of a kink of the loss moved 0.5 away from it."""
    for k in kinks:
        d[np.abs(d - k) < 0.05] = k + 0.5
    return d


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_l1_grad_fd(reduction):
    t = rand(3, 4)
    x = t + _off_kinks(rand(3, 4), 0.0)
    loss = lambda: float(np.sum(losses.l1_loss(x, t, reduction)))  # noqa: E731
    np.testing.assert_allclose(losses.l1_loss_grad(x, t, reduction), numeric_grad(loss, x), **FD)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_grad_fd(reduction, delta):
    t = rand(3, 4)
    x = t + _off_kinks(rand(3, 4) * 3, -delta, delta)
    loss = lambda: float(np.sum(losses.huber_loss(x, t, reduction, delta)))  # noqa: E731
    np.testing.assert_allclose(losses.huber_loss_grad(x, t, reduction, delta),
                               numeric_grad(loss, x), **FD)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_grad_fd(reduction, weighted, label_smoothing):
    x = rand(6, 4)
    t = np.array([0, 3, -100, 1, 2, 3])
    w = rand(4, lo=0.1, hi=2.0) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=label_smoothing)
    loss = lambda: float(np.sum(losses.cross_entropy(x, t, **kw)))  # noqa: E731
    got = losses.cross_entropy_grad(x, t, **kw)
    np.testing.assert_allclose(got, numeric_grad(loss, x), **FD)
    assert not got[2].any()  # the ignored row


def _fd_loss_grad(fname, x, *args, **kw):
    loss = lambda: float(np.sum(getattr(losses, fname)(x, *args, **kw)))  # noqa: E731
    np.testing.assert_allclose(getattr(losses, fname + "_grad")(x, *args, **kw),
                               numeric_grad(loss, x), **FD)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_grad_fd(reduction, weighted):
    x, t = rand(3, 4, lo=0.05, hi=0.95), rand(3, 4, lo=0.0, hi=1.0)
    _fd_loss_grad("binary_cross_entropy", x, t, rand(4, lo=0.1) if weighted else None, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weighted", [False, True])
def test_bce_with_logits_grad_fd(reduction, weighted, pos_weighted):
    x, t = rand(3, 4, lo=-4, hi=4), rand(3, 4, lo=0.0, hi=1.0)
    _fd_loss_grad("binary_cross_entropy_with_logits", x, t,
                  rand(3, 4, lo=0.1) if weighted else None, reduction,
                  rand(4, lo=0.5, hi=3.0) if pos_weighted else None)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_grad_fd(reduction, weighted):
    x, t = rand(6, 4, lo=-5, hi=0), np.array([0, 3, -100, 1, 2, 3])
    _fd_loss_grad("nll_loss", x, t, rand(4, lo=0.1) if weighted else None, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_grad_fd(reduction, log_target):
    x, t = rand(3, 4, lo=-5, hi=0), rand(3, 4, lo=0.0, hi=1.0)
    _fd_loss_grad("kl_div", x, np.log(t) if log_target else t, reduction, log_target)
