"""The contract every backend shares: selection, validation errors, coverage, dispatch."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastml
from fastml import layers, losses, optim
from fastml._config import BACKENDS, instance
from fastml.backends.reference import ReferenceBackend, fallback_ops, signature_mismatches

ALL = fastml.available_backends()
ACCEL = [b for b in ALL if b != "numpy"]


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=e, timeout=300)


# ----------------------------------------------------------------- selection
def test_available_backends_order():
    assert ALL[0] in ("cython", "numba", "numpy")
    assert list(ALL) == [b for b in BACKENDS if b in ALL]
    assert "numpy" in ALL


def test_set_and_use_backend_scoping():
    start = fastml.get_backend()
    try:
        fastml.set_backend("numpy")
        assert fastml.get_backend() == "numpy"
        for b in ALL:
            with fastml.use_backend(b):
                assert fastml.get_backend() == b
            assert fastml.get_backend() == "numpy"
    finally:
        fastml.set_backend(start)


def test_use_backend_is_per_thread():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def worker():
        inside.wait()
        seen["other"] = fastml.get_backend()
        release.set()

    t = threading.Thread(target=worker)
    t.start()
    with fastml.use_backend("numpy"):
        inside.set()
        release.wait(10)
    t.join()
    assert seen["other"] == fastml.get_backend()


@pytest.mark.parametrize("call", [fastml.set_backend, lambda n: fastml.use_backend(n).__enter__()])
def test_unknown_backend_name(call):
    with pytest.raises(ValueError, match="cython, numba, numpy, cuda"):
        call("torch")


def test_backend_unavailable_error_is_import_error():
    assert issubclass(fastml.BackendUnavailableError, ImportError)


@pytest.mark.parametrize("value,expected", [("", None), ("auto", None), ("numpy", "numpy"),
                                            ("NumPy", "numpy")])
def test_env_var_read_at_import(value, expected):
    r = run_python("import os, fastml; print(fastml.get_backend()); "
                   "os.environ['FASTML_BACKEND'] = 'numpy'; print(fastml.get_backend())",
                   FASTML_BACKEND=value)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split()
    assert first == (expected or ALL[0])
    assert second == first  # setting the variable after import changes nothing


def test_env_var_unknown_and_unavailable():
    r = run_python("import fastml", FASTML_BACKEND="tensorflow")
    assert r.returncode != 0 and "ValueError" in r.stderr and "valid names" in r.stderr
    r = run_python("import fastml", FASTML_BACKEND="cuda", NUMBA_ENABLE_CUDASIM="0",
                   CUDA_VISIBLE_DEVICES="")
    if "cuda" in ALL and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("a real GPU is present")
    assert r.returncode != 0 and "BackendUnavailableError" in r.stderr


def test_import_is_cheap():
    """import fastml compiles nothing and does not import scikit-learn or numba.cuda."""
    r = run_python("import sys, fastml; print('sklearn' in sys.modules, "
                   "'numba.cuda' in sys.modules)", FASTML_BACKEND="numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_num_threads():
    n0 = fastml.get_num_threads()
    try:
        fastml.set_num_threads(1)
        assert fastml.get_num_threads() == 1
        with pytest.raises(ValueError):
            fastml.set_num_threads(0)
    finally:
        fastml.set_num_threads(n0)


# ----------------------------------------------------------------- coverage
def test_backend_info_structure():
    info = fastml.backend_info()
    assert set(info["backends"]) == set(BACKENDS)
    for name, entry in info["backends"].items():
        assert entry["available"] == (name in ALL)
        assert entry["available"] or entry["reason"]
        assert "numpy" in entry["versions"]
    assert set(info["ops"]) == set(ReferenceBackend.OPS)
    for op, per in info["ops"].items():
        assert set(per) == set(ALL), op
        assert per["numpy"] == "native"


@pytest.mark.parametrize("backend", ACCEL)
def test_every_op_native(backend):
    assert fallback_ops(type(instance(backend))) == {}


@pytest.mark.parametrize("backend", ACCEL)
def test_override_signatures_match_reference(backend):
    assert signature_mismatches(type(instance(backend))) == []


@pytest.mark.parametrize("backend", ACCEL)
def test_dispatch_reaches_backend(backend, monkeypatch):
    calls = []
    cls = type(instance(backend))
    real = cls.relu
    monkeypatch.setattr(cls, "relu", lambda self, x: calls.append(self.name) or real(self, x))
    with fastml.use_backend(backend):
        layers.relu(np.ones(3, np.float32))
    assert calls == [backend]


def test_strict_mode_turns_fallback_into_error():
    code = ("from fastml.backends.numba_cpu import NumbaBackend\n"
            "from fastml.backends.reference import ReferenceBackend\n"
            "NumbaBackend.relu = ReferenceBackend.relu  # simulate a missing kernel\n"
            "import numpy as np, fastml\n"
            "with fastml.use_backend('numba'):\n"
            "    fastml.layers.relu(np.ones(2, np.float32))\n")
    if "numba" not in ALL:
        pytest.skip("numba unavailable")
    r = run_python(code, FASTML_STRICT="1")
    assert r.returncode != 0 and "no native kernel for layers.relu" in r.stderr
    assert run_python(code).returncode == 0


# --------------------------------------------------------------- validation
f32, f64 = np.float32, np.float64
x32 = np.ones((4, 3), f32)
BAD_CALLS = [
    (TypeError, "'x' must be float32 or float64, got int64", layers.relu, (np.ones(3, np.int64),)),
    (TypeError, "got bool", layers.sigmoid, (np.ones(3, bool),)),
    (TypeError, "got float16", layers.tanh, (np.ones(3, np.float16),)),
    (TypeError, "share one dtype", layers.relu_backward, (x32, x32.astype(f64))),
    (ValueError, "relu_backward: argument 'grad_out' expected shape", layers.relu_backward,
     (np.ones((4, 2), f32), x32)),
    (ValueError, r"linear: argument 'x' expected shape \(\*, in_features\) \(4, 5\), got \(4, 3\)",
     layers.linear, (x32, np.ones((2, 5), f32))),
    (ValueError, "linear: argument 'bias' expected shape", layers.linear,
     (x32, np.ones((2, 3), f32), np.ones(3, f32))),
    (TypeError, "share one dtype", layers.linear, (x32, np.ones((2, 3), f64))),
    (ValueError, "axis", layers.softmax, (x32, 2)),
    (ValueError, "mse_loss: argument 'target' expected shape", losses.mse_loss,
     (x32, np.ones((3, 4), f32))),
    (ValueError, "reduction", losses.mse_loss, (x32, x32, "avg")),
    (ValueError, "l1_loss: argument 'target' expected shape", losses.l1_loss,
     (x32, np.ones((3, 4), f32))),
    (ValueError, "reduction", losses.l1_loss_grad, (x32, x32, "avg")),
    (TypeError, "share one dtype", losses.l1_loss, (x32, x32.astype(f64))),
    (ValueError, "huber_loss_grad: argument 'target' expected shape", losses.huber_loss_grad,
     (x32, np.ones(12, f32))),
    (ValueError, "reduction", losses.huber_loss, (x32, x32, "batchmean")),
    (ValueError, "huber_loss: argument 'delta'", losses.huber_loss, (x32, x32, "mean", 0.0)),
    (ValueError, "huber_loss_grad: argument 'delta'", losses.huber_loss_grad,
     (x32, x32, "sum", -1.0)),
    (ValueError, "argument 'delta'", losses.huber_loss, (x32, x32, "mean", float("nan"))),
    (TypeError, "argument 'delta' must be a real number", losses.huber_loss,
     (x32, x32, "mean", "1")),
    (ValueError, r"index 3 out of range \[0, 3\)", losses.cross_entropy, (x32, np.array([0, 1, 2, 3]))),
    (ValueError, "index -1 out of range", losses.cross_entropy, (x32, np.array([0, -1, 2, 1]))),
    (TypeError, "integer dtype", losses.cross_entropy, (x32, np.zeros(4, f32))),
    (ValueError, r"'target' expected shape \(N,\) \(4,\)", losses.cross_entropy_grad,
     (x32, np.zeros(3, np.int64))),
    (ValueError, r"'weight' expected shape \(C,\)", losses.cross_entropy,
     (x32, np.zeros(4, np.int64), np.ones(4, f32))),
    (ValueError, r"cross_entropy_and_grad: .*'target' expected shape",
     losses.cross_entropy_and_grad, (x32, np.zeros(3, np.int64))),
    (ValueError, "label_smoothing", lambda x, t: losses.cross_entropy(x, t, label_smoothing=1.5),
     (x32, np.zeros(4, np.int64))),
    (ValueError, r"binary_cross_entropy: argument 'input' must hold probabilities in \[0, 1\], "
     "got 1.5", losses.binary_cross_entropy, (np.array([0.5, 1.5], f32), np.ones(2, f32))),
    (ValueError, "got nan", losses.binary_cross_entropy_grad,
     (np.array([np.nan, 0.5]), np.ones(2))),
    (ValueError, "got -0.25", losses.binary_cross_entropy, (np.array([-0.25]), np.ones(1))),
    (ValueError, r"binary_cross_entropy: argument 'weight' of shape \(4,\) does not broadcast",
     losses.binary_cross_entropy, (x32 / 2, x32, np.ones(4, f32))),
    (ValueError, "binary_cross_entropy: argument 'target' expected shape",
     losses.binary_cross_entropy, (x32 / 2, np.ones(12, f32))),
    (TypeError, "share one dtype", losses.binary_cross_entropy, (x32 / 2, x32, np.ones(3, f64))),
    (ValueError, r"binary_cross_entropy_with_logits: argument 'pos_weight' of shape \(2,\)",
     lambda x, t, pw: losses.binary_cross_entropy_with_logits(x, t, pos_weight=pw),
     (x32, x32, np.ones(2, f32))),
    (ValueError, "binary_cross_entropy_with_logits_grad: argument 'weight' of shape",
     losses.binary_cross_entropy_with_logits_grad, (x32, x32, np.ones((4, 3, 1), f32))),
    (TypeError, "'pos_weight' must be float32 or float64",
     lambda x, t, pw: losses.binary_cross_entropy_with_logits(x, t, pos_weight=pw),
     (x32, x32, np.ones(3, np.int64))),
    (ValueError, "reduction", losses.binary_cross_entropy_with_logits, (x32, x32, None, "batchmean")),
    (ValueError, r"nll_loss: argument 'target' has index 3 out of range \[0, 3\)",
     losses.nll_loss, (x32, np.array([0, 1, 2, 3]))),
    (ValueError, "index -5 out of range", losses.nll_loss_grad, (x32, np.array([0, -5, 2, 1]))),
    (ValueError, r"nll_loss: argument 'weight' expected shape \(C,\)", losses.nll_loss,
     (x32, np.zeros(4, np.int64), np.ones(2, f32))),
    (ValueError, r"nll_loss_grad: argument 'input' must be 2-dimensional", losses.nll_loss_grad,
     (np.ones(4, f32), np.zeros(4, np.int64))),
    (TypeError, "integer dtype", losses.nll_loss, (x32, np.zeros(4, f32))),
    (ValueError, "kl_div: argument 'target' expected shape", losses.kl_div,
     (x32, np.ones((3, 4), f32))),
    (ValueError, "kl_div_grad: reduction", losses.kl_div_grad, (x32, x32, "avg")),
    (TypeError, "'log_target' must be a bool", losses.kl_div, (x32, x32, "sum", "yes")),
    (ValueError, "conv2d: argument 'weight' of shape .* expects 2 input channels, x has 3",
     layers.conv2d, (np.ones((1, 3, 5, 5), f32), np.ones((4, 2, 3, 3), f32))),
    (ValueError, "conv2d: argument 'weight': kernel .* larger than the padded input",
     layers.conv2d, (np.ones((1, 2, 2, 2), f32), np.ones((4, 2, 3, 3), f32))),
    (ValueError, "max_pool2d: argument 'kernel_size'.*larger", layers.max_pool2d,
     (np.ones((1, 1, 2, 2), f32), 3)),
    (ValueError, "avg_pool2d: argument 'padding'", layers.avg_pool2d,
     (np.ones((1, 1, 4, 4), f32), 2, 1, 2)),
    (ValueError, "batch_norm: argument 'x' .* more than 1 value per channel", layers.batch_norm,
     (np.ones((1, 3), f32), None, None)),
    (ValueError, "layer_norm: argument 'normalized_shape'", layers.layer_norm, (x32, 4)),
    (ValueError, r"dropout: argument 'p' must be in \[0.0, 1.0\)", layers.dropout, (x32, 1.0)),
    (ValueError, r"embedding: argument 'indices' has index 4 out of range \[0, 4\)",
     layers.embedding, (np.array([0, 4]), np.ones((4, 2), f32))),
]


@pytest.mark.parametrize("exc,match,fn,args", BAD_CALLS,
                         ids=[f"{i}-{c[2].__name__}" for i, c in enumerate(BAD_CALLS)])
@pytest.mark.parametrize("backend", ALL)
def test_bad_input_same_error_everywhere(backend, exc, match, fn, args):
    with fastml.use_backend(backend), pytest.raises(exc, match=match):
        fn(*args)


@pytest.mark.parametrize("backend", ALL)
def test_optimizer_argument_errors(backend):
    p, g = np.zeros(5, f32), np.ones(5, f32)
    with fastml.use_backend(backend):
        with pytest.raises(ValueError, match="momentum_buffer"):
            optim.sgd_step(p, g, step=1, lr=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="'step'"):
            optim.sgd_step(p, g, step=0, lr=0.1)
        with pytest.raises(ValueError, match="'lr'"):
            optim.adam_step(p, g, np.zeros(5, f32), np.zeros(5, f32), step=1, lr=-1.0)
        with pytest.raises(ValueError, match="'exp_avg' expected shape"):
            optim.adam_step(p, g, np.zeros(4, f32), np.zeros(5, f32), step=1)
        with pytest.raises(TypeError, match="share one dtype"):
            optim.adam_step(p, g, np.zeros(5, f64), np.zeros(5, f32), step=1)
        ro = np.zeros(5, f32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            optim.sgd_step(ro, g, step=1, lr=0.1)
    assert not p.any()  # nothing ran


@pytest.mark.parametrize("backend", ALL)
def test_noncontiguous_param_updated_in_place(backend):
    base = np.arange(12, dtype=f64).reshape(3, 4)
    view = base[:, ::2]
    g = np.ones_like(view)
    expect = base.copy()
    expect[:, ::2] -= 0.5
    with fastml.use_backend(backend):
        optim.sgd_step(view, g, step=1, lr=0.5)
    np.testing.assert_array_equal(base, expect)


@pytest.mark.parametrize("backend", ALL)
def test_noncontiguous_inputs_match_contiguous(backend):
    """Strided views (every other column, a transpose) are made contiguous once by
    validation; every backend then gives what it gives for a contiguous copy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16)).astype(f32)[:, ::2]         # (6, 8), strided
    g = rng.standard_normal((8, 6)).astype(f32).T                 # (6, 8), transposed
    w = rng.standard_normal(16).astype(f32)[::2]
    img = rng.standard_normal((2, 3, 8, 10)).astype(f32)[..., ::2]  # (2, 3, 8, 5)
    k = rng.standard_normal((4, 3, 3, 3)).astype(f32)
    calls = [
        lambda x, g, w, img: layers.layer_norm(x, 8, w, w),
        lambda x, g, w, img: layers.layer_norm_backward(g, x, 8, w),
        lambda x, g, w, img: layers.gelu(x),
        lambda x, g, w, img: layers.batch_norm(img, None, None, training=True),
        lambda x, g, w, img: layers.conv2d(img, k, None, padding=1),
    ]
    dense = [np.ascontiguousarray(a) for a in (x, g, w, img)]
    with fastml.use_backend(backend):
        for call in calls:
            got, want = call(x, g, w, img), call(*dense)
            for a, b in zip(got if isinstance(got, tuple) else (got,),
                            want if isinstance(want, tuple) else (want,)):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ALL)
def test_zero_size_batches(backend):
    with fastml.use_backend(backend):
        assert layers.linear(np.ones((0, 3), f32), np.ones((2, 3), f32)).shape == (0, 2)
        assert layers.softmax(np.ones((0, 5), f64)).shape == (0, 5)
        assert np.isnan(losses.mse_loss(np.ones(0, f32), np.ones(0, f32)))
        assert np.isnan(losses.cross_entropy(np.ones((0, 4), f32), np.zeros(0, np.int64)))
        assert losses.cross_entropy_grad(np.ones((0, 4), f32), np.zeros(0, np.int64)).shape == (0, 4)
        loss, grad = losses.cross_entropy_and_grad(np.ones((0, 4), f32), np.zeros(0, np.int64))
        assert np.isnan(loss) and grad.shape == (0, 4)
        assert np.isnan(losses.nll_loss(np.ones((0, 4), f32), np.zeros(0, np.int64)))
        assert losses.nll_loss_grad(np.ones((0, 4), f32), np.zeros(0, np.int64)).shape == (0, 4)
        empty = np.ones((0, 3), f64)
        assert np.isnan(losses.binary_cross_entropy(empty, empty))
        assert losses.binary_cross_entropy_with_logits(empty, empty, reduction="sum") == 0.0
        assert np.isnan(losses.kl_div(empty, empty, reduction="batchmean"))
        assert losses.kl_div_grad(empty, empty, reduction="batchmean").shape == (0, 3)
        x0, w = np.ones((0, 2, 5, 5), f32), np.ones((3, 2, 3, 3), f32)
        assert layers.conv2d(x0, w, padding=1).shape == (0, 3, 5, 5)
        assert [np.shape(g) for g in layers.conv2d_backward(
            np.ones((0, 3, 3, 3), f32), x0, w)] == [x0.shape, w.shape, (3,)]
        assert layers.max_pool2d(x0, 2).shape == (0, 2, 2, 2)
        assert layers.avg_pool2d_backward(np.ones((0, 2, 2, 2), f32), x0, 2).shape == x0.shape
        assert layers.layer_norm(np.ones((0, 4), f32), 4).shape == (0, 4)
        assert layers.embedding(np.zeros((0, 3), np.int64), np.ones((2, 5), f32)).shape == (0, 3, 5)
        assert not layers.embedding_backward(np.ones((0, 5), f32), np.zeros(0, np.int64), 2).any()
        rm, rv = np.zeros(2, f32), np.ones(2, f32)  # an empty batch leaves them, as torch
        assert layers.batch_norm(x0, None, None, rm, rv).shape == x0.shape
        assert not rm.any() and (rv == 1).all()
        gx, gw, gb = layers.batch_norm_backward(x0, x0, np.ones(2, f32))
        assert gx.shape == x0.shape and not gw.any() and not gb.any()


@pytest.mark.parametrize("backend", [b for b in ACCEL if b != "cuda"])
def test_concurrent_calls_from_threads(backend):
    """Parallel CPU kernels called from several threads at once must not abort or mix results."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((512, 1000)).astype(f32) for _ in range(4)]
    with fastml.use_backend("numpy"):
        expected = [layers.softmax(x) for x in xs]
    out = [None] * 4

    def work(i):
        with fastml.use_backend(backend):
            for _ in range(3):
                out[i] = layers.softmax(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o, e in zip(out, expected):
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_zero_dim_inputs_give_zero_dim_results(backend):
    """A 0-d input is C-contiguous as it is: validation must not turn it 1-d."""
    x = np.array(0.25, f32)
    with fastml.use_backend(backend):
        outs = [layers.relu(x), layers.tanh_backward(x, x), losses.mse_loss_grad(x, x),
                losses.kl_div(x, x, "none"), losses.kl_div_grad(x, x, "batchmean"),
                losses.binary_cross_entropy_with_logits(x, x, reduction="none")]
    assert [np.shape(o) for o in outs] == [()] * len(outs)
