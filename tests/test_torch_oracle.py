"""The reference against PyTorch: forward, backward, losses, gradients and optimizer steps."""
from __future__ import annotations

import numpy as np
import pytest

import fastml
from fastml import layers, losses, optim

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(4321)


@pytest.fixture(autouse=True)
def _reference():
    with fastml.use_backend("numpy"):
        yield


def rand(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape)


TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def t_(a, grad=False):
    return torch.from_numpy(np.array(a)).requires_grad_(grad)


def close(actual, expected, dtype):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


@DTYPES
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_vs_torch(dtype, has_bias):
    x, w, b, g = (rand(*s).astype(dtype) for s in [(2, 5, 7), (3, 7), (3,), (2, 5, 3)])
    tx, tw, tb = t_(x, True), t_(w, True), t_(b, True)
    y = F.linear(tx, tw, tb if has_bias else None)
    y.backward(t_(g))
    close(layers.linear(x, w, b if has_bias else None), y, dtype)
    gx, gw, gb = layers.linear_backward(g, x, w, has_bias)
    close(gx, tx.grad, dtype)
    close(gw, tw.grad, dtype)
    if has_bias:
        close(gb, tb.grad, dtype)


ELEMENTWISE = [("relu", torch.relu, False), ("sigmoid", torch.sigmoid, True),
               ("tanh", torch.tanh, True)]


@DTYPES
@pytest.mark.parametrize("name,tfn,from_output", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise_vs_torch(dtype, name, tfn, from_output):
    x = np.concatenate([rand(50) * 10, [0.0, -0.0, np.nan, np.inf, -np.inf, 50, -50]]).astype(dtype)
    g = rand(x.size).astype(dtype)
    tx = t_(x, True)
    ty = tfn(tx)
    ty.backward(t_(g))
    y = getattr(layers, name)(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), equal_nan=True, **TOL[dtype])
    got = getattr(layers, name + "_backward")(g, y if from_output else x)
    np.testing.assert_allclose(got, tx.grad.numpy(), equal_nan=True, **TOL[dtype])


ACTIVATIONS = [("leaky_relu", {"negative_slope": 0.01}), ("leaky_relu", {"negative_slope": -0.3}),
               ("gelu", {"approximate": "none"}), ("gelu", {"approximate": "tanh"}),
               ("silu", {})]


@DTYPES
@pytest.mark.parametrize("name,kwargs", ACTIVATIONS, ids=lambda a: str(a))
def test_activations_vs_torch(dtype, name, kwargs):
    x = np.concatenate([rand(200) * 10, [0.0, -0.0, 1e-30, -1e-30, 8.0, -8.0, 30.0, -30.0],
                        np.linspace(-6, 6, 49)]).astype(dtype)
    g = rand(x.size).astype(dtype)
    tx = t_(x, True)
    ty = getattr(F, name)(tx, **kwargs)
    ty.backward(t_(g))
    np.testing.assert_allclose(getattr(layers, name)(x, **kwargs), ty.detach().numpy(),
                               **TOL[dtype])
    np.testing.assert_allclose(getattr(layers, name + "_backward")(g, x, **kwargs),
                               tx.grad.numpy(), **TOL[dtype])


def test_activation_argument_errors():
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="'approximate'"):
        layers.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match="'approximate'"):
        layers.gelu_backward(x, x, approximate=None)
    with pytest.raises(TypeError, match="'negative_slope'"):
        layers.leaky_relu(x, negative_slope="0.1")
    with pytest.raises(TypeError, match="'x'"):
        layers.silu(np.ones(3, np.int64))


@DTYPES
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_rowwise_vs_torch(dtype, axis, name):
    x = (rand(6, 9) * 5).astype(dtype)
    x[1, 2], x[2, 3], x[3, :] = np.nan, np.inf, -np.inf
    g = rand(6, 9).astype(dtype)
    tx = t_(x, True)
    ty = getattr(torch, name)(tx, dim=axis)
    ty.backward(t_(g))
    y = getattr(layers, name)(x, axis)
    np.testing.assert_allclose(y, ty.detach().numpy(), equal_nan=True, **TOL[dtype])
    got = getattr(layers, name + "_backward")(g, y, axis)
    np.testing.assert_allclose(got, tx.grad.numpy(), equal_nan=True, **TOL[dtype])


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_vs_torch(dtype, reduction):
    x, t = rand(4, 6).astype(dtype), rand(4, 6).astype(dtype)
    tx = t_(x, True)
    tl = F.mse_loss(tx, t_(t), reduction=reduction)
    tl.sum().backward()
    close(losses.mse_loss(x, t, reduction), tl, dtype)
    close(losses.mse_loss_grad(x, t, reduction), tx.grad, dtype)


def _diffs(dtype, delta=1.0):
    """(x, t) whose differences include 0, exactly +-delta, NaN and +-inf (from inf - inf too)."""
    t = rand(4, 6)
    x = t + rand(4, 6) * 3
    t[0] = np.round(t[0] * 8) / 8  # eighths: t + delta is exact for the deltas tested
    x[0] = t[0] + [0.0, delta, -delta, np.nan, np.inf, -np.inf]
    x[1, 0], t[1, 0] = np.inf, np.inf
    x[1, 1], t[1, 1] = -np.inf, 1.0
    x[1, 2], t[1, 2] = 1.0, np.nan
    x, t = x.astype(dtype), t.astype(dtype)
    assert (x[0, :3] - t[0, :3] == np.array([0.0, delta, -delta], dtype)).all()
    return x, t


def _vs_torch(dtype, fname, x, t, reduction, **kw):
    tx = t_(x, True)
    tl = getattr(F, fname)(tx, t_(t), reduction=reduction, **kw)
    tl.sum().backward()
    for got, want in [(getattr(losses, fname)(x, t, reduction, **kw), tl),
                      (getattr(losses, fname + "_grad")(x, t, reduction, **kw), tx.grad)]:
        np.testing.assert_allclose(got, want.detach().numpy(), equal_nan=True, **TOL[dtype])
    # without the special values: finite results, also for the reduced losses
    tx = t_(x[2:], True)
    tl = getattr(F, fname)(tx, t_(t[2:]), reduction=reduction, **kw)
    tl.sum().backward()
    close(getattr(losses, fname)(x[2:], t[2:], reduction, **kw), tl, dtype)
    close(getattr(losses, fname + "_grad")(x[2:], t[2:], reduction, **kw), tx.grad, dtype)


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_l1_vs_torch(dtype, reduction):
    _vs_torch(dtype, "l1_loss", *_diffs(dtype), reduction)


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("delta", [0.5, 1.0, 2.5])
def test_huber_vs_torch(dtype, reduction, delta):
    _vs_torch(dtype, "huber_loss", *_diffs(dtype, delta), reduction, delta=delta)


def test_huber_rejects_non_positive_delta_as_torch():
    x = rand(3)
    for delta in (0.0, -1.0):
        with pytest.raises(RuntimeError, match="delta"):
            F.huber_loss(t_(x), t_(x), delta=delta)
        with pytest.raises(ValueError, match="delta"):
            losses.huber_loss(x, x, delta=delta)


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_vs_torch(dtype, reduction, weighted, label_smoothing, ignore_index):
    x = (rand(7, 5) * 3).astype(dtype)
    t = np.array([0, 4, -100, 2, 1, 2, 3]) if ignore_index == -100 else np.array([0, 4, 2, 2, 1, 3, 3])
    w = rand(5, lo=0.1, hi=2.0).astype(dtype) if weighted else None
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=label_smoothing)
    tx = t_(x, True)
    tl = F.cross_entropy(tx, torch.from_numpy(t), **{**kw, "weight": None if w is None else t_(w)})
    tl.sum().backward()
    close(losses.cross_entropy(x, t, **kw), tl, dtype)
    close(losses.cross_entropy_grad(x, t, **kw), tx.grad, dtype)


def test_cross_entropy_all_ignored_mean_is_nan():
    x = rand(3, 4)
    t = np.full(3, -100)
    tl = F.cross_entropy(t_(x), torch.from_numpy(t))
    assert np.isnan(losses.cross_entropy(x, t)) and torch.isnan(tl)


def _loss_vs_torch(dtype, fname, args, kw, tkw=None, finite_only=False):
    """fastml's loss and gradient against torch's forward and autograd backward."""
    tx = t_(args[0], True)
    tl = getattr(F, fname)(tx, *(t_(a) for a in args[1:]), **(tkw or kw))
    tl.sum().backward()
    for got, want in [(getattr(losses, fname)(*args, **kw), tl),
                      (getattr(losses, fname + "_grad")(*args, **kw), tx.grad)]:
        want = want.detach().numpy()
        if finite_only:
            assert np.isfinite(got).all() and np.isfinite(want).all()
        np.testing.assert_allclose(got, want, equal_nan=True, **TOL[dtype])


def _torch_weights(kw):
    return {k: (t_(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


WEIGHTS = ["none", "full", "per-class", "per-row"]


def _weight(kind, shape, dtype, lo=0.1, hi=2.0):
    """No weight, one of input's shape, or one broadcast over rows (C,) or columns (N, 1)."""
    wshape = {"none": None, "full": shape, "per-class": shape[-1:],
              "per-row": shape[:1] + (1,)}[kind]
    return None if wshape is None else rand(*wshape, lo=lo, hi=hi).astype(dtype)


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", WEIGHTS)
def test_bce_vs_torch(dtype, reduction, weight):
    x = rand(4, 6, lo=0.0, hi=1.0)
    x[0, :4] = [0.0, 1.0, 1e-30, 1 - 1e-7]  # the log clamp at -100 and the grad's epsilon
    t = rand(4, 6, lo=0.0, hi=1.0)
    t[1, :3] = [0.0, 1.0, 0.5]
    x, t = x.astype(dtype), t.astype(dtype)
    kw = dict(weight=_weight(weight, x.shape, dtype), reduction=reduction)
    _loss_vs_torch(dtype, "binary_cross_entropy", (x, t), kw, _torch_weights(kw))


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("pos_weight", ["none", "per-class", "full"])
def test_bce_with_logits_vs_torch(dtype, reduction, weight, pos_weight):
    x = rand(4, 6, lo=-8, hi=8)
    x[0, :4] = [0.0, 500.0, -500.0, 1e-3]  # stable for large |logits|
    t = rand(4, 6, lo=0.0, hi=1.0)
    t[1, :2] = [0.0, 1.0]
    x, t = x.astype(dtype), t.astype(dtype)
    kw = dict(weight=_weight(weight, x.shape, dtype), reduction=reduction,
              pos_weight=_weight(pos_weight, x.shape, dtype, 0.5, 4.0))
    _loss_vs_torch(dtype, "binary_cross_entropy_with_logits", (x, t), kw, _torch_weights(kw),
                   finite_only=True)


@DTYPES
def test_bce_with_logits_special_values_vs_torch(dtype):
    x = np.array([np.nan, np.inf, -np.inf, np.inf, 3.0, 1.0], dtype)
    t = np.array([0.5, 0.0, 1.0, 1.0, np.nan, np.inf], dtype)
    _loss_vs_torch(dtype, "binary_cross_entropy_with_logits", (x, t), dict(reduction="none"))


@pytest.mark.parametrize("bad", [-0.1, 1.5, np.nan])
def test_bce_rejects_non_probabilities_as_torch(bad):
    x = np.array([0.2, bad, 0.5])
    t = np.full(3, 0.5)
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(t_(x), t_(t))
    for fn in (losses.binary_cross_entropy, losses.binary_cross_entropy_grad):
        with pytest.raises(ValueError, match="'input'.*\\[0, 1\\]"):
            fn(x, t)


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_nll_vs_torch(dtype, reduction, weighted, ignore_index):
    x = np.log(rand(7, 5, lo=0.01, hi=1.0)).astype(dtype)
    t = np.array([0, 4, -100, 2, 1, 2, 3]) if ignore_index == -100 else np.array([0, 4, 2, 2, 1, 3, 3])
    w = rand(5, lo=0.1, hi=2.0).astype(dtype) if weighted else None
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction)
    tx = t_(x, True)
    tl = F.nll_loss(tx, torch.from_numpy(t), **{**kw, "weight": None if w is None else t_(w)})
    tl.sum().backward()
    close(losses.nll_loss(x, t, **kw), tl, dtype)
    close(losses.nll_loss_grad(x, t, **kw), tx.grad, dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_nll_all_ignored_as_torch(reduction):
    x, t = rand(3, 4), np.full(3, -100)
    tx = t_(x, True)
    tl = F.nll_loss(tx, torch.from_numpy(t), reduction=reduction)
    tl.backward()
    np.testing.assert_allclose(losses.nll_loss(x, t, reduction=reduction), tl.item(),
                               equal_nan=True)
    assert not losses.nll_loss_grad(x, t, reduction=reduction).any() and not tx.grad.any()


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_vs_torch(dtype, reduction, log_target):
    x = np.log(rand(4, 6, lo=0.01, hi=1.0))
    t = rand(4, 6, lo=0.0, hi=1.0)
    t[0, :2] = 0.0  # xlogy(0, 0) = 0
    if log_target:
        t = np.log(t + 0.01)
    x, t = x.astype(dtype), t.astype(dtype)
    _loss_vs_torch(dtype, "kl_div", (x, t), dict(reduction=reduction, log_target=log_target))


@DTYPES
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_special_values_vs_torch(dtype, log_target):
    x = np.array([-np.inf, np.nan, -1.0, -2.0, np.inf, -0.5], dtype)
    t = np.array([0.0, 0.5, np.nan, -0.5, 0.2, np.inf], dtype)
    _loss_vs_torch(dtype, "kl_div", (x, t), dict(reduction="none", log_target=log_target))


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
             dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
             dict(lr=0.01, weight_decay=0.1, maximize=True)]
ADAM_CASES = [dict(), dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1), dict(amsgrad=True, lr=0.05),
              dict(maximize=True, eps=1e-3), dict(decoupled=True, weight_decay=0.1, lr=0.02),
              dict(decoupled=True, amsgrad=True, weight_decay=0.01)]


@DTYPES
@pytest.mark.parametrize("case", SGD_CASES, ids=str)
def test_sgd_step_vs_torch(dtype, case):
    p = rand(17).astype(dtype)
    tp = t_(p.copy(), True)
    opt = torch.optim.SGD([tp], foreach=False, **case)
    buf = np.zeros_like(p)
    kw = {k: v for k, v in case.items()}
    for step in range(1, 21):
        g = rand(17).astype(dtype)
        tp.grad = t_(g)
        opt.step()
        optim.sgd_step(p, g, buf, step=step, **kw)
    close(p, tp, dtype)


@DTYPES
@pytest.mark.parametrize("case", ADAM_CASES, ids=str)
def test_adam_step_vs_torch(dtype, case):
    case = dict(case)
    decoupled = case.pop("decoupled", False)
    p = rand(17).astype(dtype)
    tp = t_(p.copy(), True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([tp], foreach=False, **{"weight_decay": 0.0, **case})
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    beta1, beta2 = case.pop("betas", (0.9, 0.999))
    for step in range(1, 21):
        g = rand(17).astype(dtype)
        tp.grad = t_(g)
        opt.step()
        optim.adam_step(p, g, m, v, vmax, step=step, beta1=beta1, beta2=beta2,
                        decoupled_weight_decay=decoupled, **case)
    close(p, tp, dtype)


RMSPROP_CASES = [dict(), dict(lr=0.05, alpha=0.9, weight_decay=0.1), dict(momentum=0.9),
                 dict(centered=True, lr=0.02), dict(centered=True, momentum=0.5, eps=1e-3),
                 dict(maximize=True, weight_decay=0.01, momentum=0.3, centered=True)]
ADAGRAD_CASES = [dict(), dict(lr=0.1, lr_decay=0.05), dict(weight_decay=0.1, eps=1e-6),
                 dict(maximize=True, lr_decay=0.01, weight_decay=0.01)]


@DTYPES
@pytest.mark.parametrize("case", RMSPROP_CASES, ids=str)
def test_rmsprop_step_vs_torch(dtype, case):
    p = rand(17).astype(dtype)
    tp = t_(p.copy(), True)
    opt = torch.optim.RMSprop([tp], foreach=False, **case)
    sq, buf, gavg = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for _ in range(20):
        g = rand(17).astype(dtype)
        tp.grad = t_(g)
        opt.step()
        optim.rmsprop_step(p, g, sq, buf, gavg, **case)
    close(p, tp, dtype)
    close(sq, opt.state[tp]["square_avg"], dtype)


@DTYPES
@pytest.mark.parametrize("case", ADAGRAD_CASES, ids=str)
def test_adagrad_step_vs_torch(dtype, case):
    p = rand(17).astype(dtype)
    tp = t_(p.copy(), True)
    opt = torch.optim.Adagrad([tp], foreach=False, **case)
    state_sum = np.zeros_like(p)
    for step in range(1, 21):
        g = rand(17).astype(dtype)
        tp.grad = t_(g)
        opt.step()
        optim.adagrad_step(p, g, state_sum, step=step, **case)
    close(p, tp, dtype)
    close(state_sum, opt.state[tp]["sum"], dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_grad_all_ignored_is_zero(reduction):
    x = rand(3, 4)
    t = np.full(3, -100)
    tx = t_(x, True)
    F.cross_entropy(tx, torch.from_numpy(t), reduction=reduction).backward()
    got = losses.cross_entropy_grad(x, t, reduction=reduction)
    assert not tx.grad.any() and not got.any() and not np.isnan(got).any()
