"""fastml.nn modules and fastml.optim optimizer classes.

Modules: finite differences (float64), PyTorch (torch.nn), live parameters,
state dicts, train/eval, initialisation. Optimizers: tracked against
torch.optim over 50 steps, constructor validation, state-dict round trips.
"""
from collections import OrderedDict

import numpy as np
import pytest

import fastml
from fastml import layers, losses, nn, optim

from gradcheck import numeric_grad
from native import backend_fixture, reference_by_default  # noqa: F401 (autouse fixture)

# What modules and optimizers run; a backend's own kernels are tested in test_ops.py.
USED_OPS = ("layers.linear", "layers.linear_backward", "layers.relu", "layers.relu_backward",
            "losses.cross_entropy", "losses.cross_entropy_grad", "optim.sgd_step",
            "optim.adam_step", "optim.rmsprop_step", "optim.adagrad_step")


backend = backend_fixture(USED_OPS)


def _mlp(seed=0, dtype=np.float32, sizes=(5, 7, 3)):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1], dtype=dtype, rng=rng), nn.ReLU(),
                         nn.Linear(sizes[1], sizes[2], dtype=dtype, rng=rng))


# ------------------------------------------------------------ finite differences
def _away_from_zero(rng, shape):
    """Values with |x| >= 0.1, so no ReLU kink lies within a finite-difference step."""
    x = rng.uniform(0.1, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return x


@pytest.mark.parametrize("make", [
    lambda rng: nn.Linear(4, 3, dtype=np.float64, rng=rng),
    lambda rng: nn.Linear(4, 3, bias=False, dtype=np.float64, rng=rng),
    lambda rng: nn.ReLU(),
    lambda rng: nn.LeakyReLU(0.2),
    lambda rng: nn.GELU(),
    lambda rng: nn.GELU("tanh"),
    lambda rng: nn.SiLU(),
    lambda rng: nn.Sequential(nn.Linear(4, 6, dtype=np.float64, rng=rng), nn.ReLU(),
                              nn.Linear(6, 2, dtype=np.float64, rng=rng)),
], ids=["linear", "linear-nobias", "relu", "leaky_relu", "gelu", "gelu-tanh", "silu",
        "sequential"])
def test_backward_matches_finite_differences(backend, make):
    rng = np.random.default_rng(1)
    m = make(rng)
    x = _away_from_zero(rng, (5, 4))
    out_shape = m(x).shape
    r = rng.standard_normal(out_shape)  # loss = sum(r * m(x)), so grad_out = r

    def loss():
        return float(np.sum(r * m(x)))

    m(x)
    gx = m.backward(r)
    grads = [g.copy() for g in m.gradients()]
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    for p, g in zip(m.parameters(), grads):
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=1e-6, atol=1e-8)


def test_linear_batched_leading_dims(backend):
    m = nn.Linear(4, 3, dtype=np.float64, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 4))
    y = m(x)
    assert y.shape == (2, 5, 3)
    gx = m.backward(np.ones_like(y))
    assert gx.shape == x.shape
    np.testing.assert_allclose(m.gradients()[1], np.full(3, 10.0))


# ------------------------------------------------------------------- torch.nn
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_modules_match_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    rng = np.random.default_rng(2)
    m = _mlp(3, dtype, sizes=(6, 8, 4))
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    tm = tm.to(tdtype)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((10, 6)).astype(dtype)
    g = rng.standard_normal((10, 4)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = tm(tx)
    ty.backward(torch.from_numpy(g))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m(x), ty.detach().numpy(), **tol)
    np.testing.assert_allclose(m.backward(g), tx.grad.numpy(), **tol)
    for (name, _), grad in zip(m.named_parameters(), m.gradients()):
        assert grad.dtype == dtype
        np.testing.assert_allclose(grad, tm.get_parameter(name).grad.numpy(), **tol, err_msg=name)


# ---------------------------------------------------------- module behaviour
def test_parameters_are_live_and_ordered():
    m = _mlp()
    params = m.parameters()
    assert [p.shape for p in params] == [(7, 5), (7,), (3, 7), (3,)]
    assert params[0] is m[0].weight and params[1] is m[0].bias and params[2] is m[2].weight
    assert [g.shape for g in m.gradients()] == [p.shape for p in params]
    assert all(not g.any() for g in m.gradients())  # zeros before the first backward


def test_optimizer_step_changes_module_output():
    rng = np.random.default_rng(0)
    m = _mlp()
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    opt = optim.SGD(m.parameters(), lr=0.5)
    before = m(x)
    loss0 = losses.cross_entropy(before, y)
    m.backward(losses.cross_entropy_grad(before, y))
    opt.step(m.gradients())
    after = m(x)
    assert not np.allclose(before, after)
    assert losses.cross_entropy(after, y) < loss0


def test_backward_overwrites_gradients(backend):
    m = nn.Linear(3, 2, rng=np.random.default_rng(0))
    x = np.ones((4, 3), np.float32)
    m(x)
    m.backward(np.ones((4, 2), np.float32))
    m(x)
    m.backward(np.ones((4, 2), np.float32))  # not accumulated
    _, gw, gb = layers.linear_backward(np.ones((4, 2), np.float32), x, m.weight)
    np.testing.assert_array_equal(m.gradients()[0], gw)
    np.testing.assert_array_equal(m.gradients()[1], gb)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.ReLU().backward(np.ones(3, np.float32))


def test_dtype_mismatch_raises():
    m = nn.Linear(2, 2)  # float32 parameters
    with pytest.raises(TypeError, match="dtype"):
        m(np.ones((1, 2)))


def test_state_dict_round_trip():
    a, b = _mlp(0), _mlp(1)
    sd = a.state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(v is not p for v, p in zip(sd.values(), a.parameters()))  # copies
    params_b = b.parameters()
    b.load_state_dict(sd)
    assert all(p is q for p, q in zip(params_b, b.parameters()))  # loaded in place
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    sd["0.bias"][:] = 100  # the state dict is a copy
    assert not np.any(a[0].bias == 100)


def test_load_state_dict_is_strict():
    m = _mlp()
    before = [p.copy() for p in m.parameters()]
    sd = _mlp(5).state_dict()
    with pytest.raises(KeyError, match="missing"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "2.bias"})
    with pytest.raises(KeyError, match="unexpected"):
        m.load_state_dict({**sd, "3.weight": np.zeros(2)})
    bad = OrderedDict(sd)
    bad["2.weight"] = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match="shape"):
        m.load_state_dict(bad)
    for p, q in zip(m.parameters(), before):  # nothing was modified
        np.testing.assert_array_equal(p, q)


def test_sequential_ordered_dict_names_and_slicing():
    rng = np.random.default_rng(0)
    m = nn.Sequential(OrderedDict(fc=nn.Linear(2, 3, rng=rng), act=nn.ReLU()))
    assert list(m.state_dict()) == ["fc.weight", "fc.bias"]
    assert len(m) == 2 and isinstance(m[1], nn.ReLU)
    assert list(m[:1].state_dict()) == ["fc.weight", "fc.bias"]
    with pytest.raises(TypeError, match="not a fastml.nn.Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_train_eval_recursive():
    m = _mlp()
    assert m.training and all(c.training for c in m)
    assert m.eval() is m
    assert not m.training and not any(c.training for c in m)
    assert m.train() is m
    assert m.training and all(c.training for c in m)


def test_repr():
    assert repr(nn.Linear(3, 2, bias=False)) == "Linear(in_features=3, out_features=2, bias=False)"
    assert "(1): ReLU()" in repr(_mlp())


# -------------------------------------------------------------- initialisation
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_init_matches_pytorch_default(dtype):
    m = nn.Linear(400, 300, dtype=dtype, rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(400)
    assert m.weight.dtype == dtype and m.bias.dtype == dtype
    assert m.weight.shape == (300, 400) and m.bias.shape == (300,)
    for p in (m.weight, m.bias):
        assert np.all(np.abs(p) <= bound)
    # U(-b, b): mean 0, variance b**2 / 3 (torch's kaiming_uniform_(a=sqrt(5)))
    assert abs(m.weight.mean()) < 0.01 * bound
    assert abs(m.weight.var() / (bound ** 2 / 3) - 1) < 0.02
    assert m.weight.min() < -0.99 * bound and m.weight.max() > 0.99 * bound


def test_linear_init_reproducible_from_seed():
    a = nn.Linear(8, 4, rng=np.random.default_rng(42))
    b = nn.Linear(8, 4, rng=np.random.default_rng(42))
    c = nn.Linear(8, 4, rng=np.random.default_rng(43))
    d = nn.Linear(8, 4, dtype=np.float64, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.array_equal(a.weight, c.weight)
    np.testing.assert_array_equal(a.weight, d.weight.astype(np.float32))
    assert nn.Linear(3, 2).weight.dtype == np.float32  # unseeded default


def test_linear_arguments():
    m = nn.Linear(3, 2, bias=False)
    assert m.bias is None and len(m.parameters()) == 1 and list(m.state_dict()) == ["weight"]
    assert nn.Linear(0, 2)(np.zeros((4, 0), np.float32)).shape == (4, 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Linear(3, 2, dtype=np.float16)
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(-1, 2)


# ============================================================== optimizers
def _torch_opt(torch, name, tparams, kwargs):
    return getattr(torch.optim, name)(tparams, foreach=False, **kwargs)


OPT_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.005, centered=True, momentum=0.5, eps=1e-6)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.05)),
    ("Adagrad", dict(initial_accumulator_value=0.1, eps=1e-6, maximize=True)),
]


def _params(rng, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in [(3, 4), (5,), (2, 3, 2)]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kwargs", OPT_CASES, ids=[f"{n}-{k}" for n, k in OPT_CASES])
def test_optimizer_tracks_torch(backend, name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = _params(rng, dtype)
    tparams = [torch.from_numpy(p.copy()) for p in params]
    opt = getattr(optim, name)(params, **kwargs)
    topt = _torch_opt(torch, name, tparams, kwargs)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for step in range(50):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        opt.step(grads)
        topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p, tp.numpy(), **tol, err_msg=f"step {step + 1}")
    for i, tp in enumerate(tparams):  # the state follows torch's too
        for key, value in topt.state[tp].items():
            if key == "step":
                assert opt.state[i]["step"] == int(value)
            elif value is not None:
                np.testing.assert_allclose(opt.state[i][key], value.numpy(), **tol)


@pytest.mark.parametrize("cls,kwargs,match", [
    (optim.SGD, dict(lr=-0.1), "Invalid learning rate"),
    (optim.SGD, dict(lr=float("nan")), "Invalid learning rate"),
    (optim.SGD, dict(momentum=-0.5), "Invalid momentum value"),
    (optim.SGD, dict(weight_decay=-1), "Invalid weight_decay value"),
    (optim.SGD, dict(nesterov=True), "Nesterov momentum requires"),
    (optim.SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
    (optim.Adam, dict(lr=-1e-3), "Invalid learning rate"),
    (optim.Adam, dict(eps=-1e-8), "Invalid epsilon value"),
    (optim.Adam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (optim.Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (optim.Adam, dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (optim.AdamW, dict(lr=-1), "Invalid learning rate"),
    (optim.RMSprop, dict(lr=-1e-2), "Invalid learning rate"),
    (optim.RMSprop, dict(eps=-1.0), "Invalid epsilon value"),
    (optim.RMSprop, dict(momentum=-0.1), "Invalid momentum value"),
    (optim.RMSprop, dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (optim.RMSprop, dict(alpha=-0.5), "Invalid alpha value"),
    (optim.Adagrad, dict(lr=float("nan")), "Invalid learning rate"),
    (optim.Adagrad, dict(lr_decay=-0.1), "Invalid lr_decay value"),
    (optim.Adagrad, dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (optim.Adagrad, dict(initial_accumulator_value=-1), "Invalid initial_accumulator_value"),
    (optim.Adagrad, dict(eps=-1e-10), "Invalid epsilon value"),
])
def test_constructor_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([np.zeros(3)], **kwargs)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop,
                                 optim.Adagrad])
def test_params_validation(cls):
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    with pytest.raises(TypeError, match="NumPy array"):
        cls([[1.0, 2.0]])
    with pytest.raises(TypeError, match="float32 or float64"):
        cls([np.zeros(3, np.int64)])
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        cls([ro])


def test_defaults_follow_torch():
    p = [np.zeros(2)]
    assert optim.SGD(p).param_groups[0]["lr"] == 1e-3
    adam = optim.Adam(p).defaults
    assert adam["betas"] == (0.9, 0.999) and adam["eps"] == 1e-8 and adam["weight_decay"] == 0
    adamw = optim.AdamW(p).defaults
    assert adamw["weight_decay"] == 1e-2 and adamw["decoupled_weight_decay"] is True
    rms = optim.RMSprop(p).defaults
    assert rms["lr"] == 1e-2 and rms["alpha"] == 0.99 and rms["eps"] == 1e-8
    adagrad = optim.Adagrad(p).defaults
    assert adagrad["lr"] == 1e-2 and adagrad["eps"] == 1e-10 and adagrad["lr_decay"] == 0


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam])
def test_step_checks_every_gradient_first(cls):
    params = [np.ones(3), np.ones((2, 2))]
    opt = cls(params, lr=0.1)
    with pytest.raises(ValueError, match="expected 2 gradients"):
        opt.step([np.ones(3)])
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.ones(3), np.ones(4)])
    with pytest.raises(TypeError, match="dtype"):
        opt.step([np.ones(3), np.ones((2, 2), np.float32)])
    assert all(np.all(p == 1) for p in params) and opt.state == {}  # nothing changed


def test_none_gradient_skips_parameter():
    params = [np.ones(3), np.ones(2)]
    opt = optim.Adam(params, lr=0.1)
    opt.step([None, np.ones(2)])
    np.testing.assert_array_equal(params[0], 1)
    assert not np.allclose(params[1], 1)
    assert list(opt.state) == [1]


def test_state_is_lazy_and_torch_shaped():
    sgd = optim.SGD([np.ones(3)], lr=0.1)
    assert sgd.state == {}
    sgd.step([np.ones(3)])
    assert sgd.state[0] == {"step": 1, "momentum_buffer": None}
    adam = optim.Adam([np.ones(3)], amsgrad=True)
    adam.step([np.ones(3)])
    assert set(adam.state[0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    rms = optim.RMSprop([np.ones(3)])
    rms.step([np.ones(3)])
    assert set(rms.state[0]) == {"step", "square_avg"}
    rms = optim.RMSprop([np.ones(3)], momentum=0.9, centered=True)
    rms.step([np.ones(3)])
    assert set(rms.state[0]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}
    adagrad = optim.Adagrad([np.ones(3)], initial_accumulator_value=0.5)
    adagrad.step([np.ones(3)])
    assert set(adagrad.state[0]) == {"step", "sum"}
    np.testing.assert_array_equal(adagrad.state[0]["sum"], 1.5)


def test_param_groups_lr_change_takes_effect():
    p = [np.zeros(2)]
    opt = optim.SGD(p, lr=1.0)
    opt.param_groups[0]["lr"] = 0.5
    opt.step([np.ones(2)])
    np.testing.assert_array_equal(p[0], -0.5)


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_state_dict_round_trip(name, kwargs, dtype):
    rng = np.random.default_rng(0)
    params = _params(rng, dtype)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(20)]
    opt = getattr(optim, name)(params, **kwargs)
    for g in grads[:10]:
        opt.step(g)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1, 2]
    assert set(sd["state"]) == {0, 1, 2}
    clone_params = [p.copy() for p in params]
    restored = getattr(optim, name)(clone_params, lr=123.0)  # hyper-parameters come from sd
    restored.load_state_dict(sd)
    assert restored.param_groups[0]["lr"] == kwargs["lr"]
    assert restored.param_groups[0]["params"][0] is clone_params[0]
    for g in grads[10:]:
        opt.step(g)
        restored.step(g)
    for p, q in zip(params, clone_params):
        np.testing.assert_array_equal(p, q)
    # the saved dict holds copies: continuing did not change it
    assert all(st["step"] == 10 for st in sd["state"].values())


def test_optimizer_load_state_dict_errors():
    params = [np.ones(3), np.ones(2)]
    opt = optim.Adam(params)
    opt.step([np.ones(3), np.ones(2)])
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameters"):
        optim.Adam([np.ones(3)]).load_state_dict(sd)
    with pytest.raises(ValueError, match="hyper-parameters"):
        optim.SGD([np.ones(3), np.ones(2)]).load_state_dict(sd)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam([np.ones(3), np.ones(4)]).load_state_dict(sd)
