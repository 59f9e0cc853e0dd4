"""Compile every cuda-backend kernel to PTX for sm_90, float32 and float64.

``numba.cuda.compile_ptx`` needs NVVM (a CUDA toolkit) but no GPU: it catches
typing errors the simulator cannot, and float64 promotion in float32 kernels
(a ``.f64`` instruction in their PTX). The simulator replaces numba.cuda for
the whole process (and conftest.py turns it on), so the kernels compile in a
child process with NUMBA_ENABLE_CUDASIM=0.

The ``gpu``-marked test runs on a real device only.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

# Argument kinds: f1/f2 arrays of the dtype (1-D / 2-D, C order), d1/d2/d3 float64
# arrays, i1/i2/i3 int64 arrays, s a scalar of the dtype, i an int64 scalar, b a bool;
# k / k2 the unsigned integer of the dtype's width (uint32 / uint64): scalar / 2-D array;
# u / u1 uint64 scalar / 1-D array (label keys); v1 1-D labels, as the label ops'
# property tests draw them: int64 in the float32 run, float64 in the float64 run;
# r the tuple of the dtype of a backward op's root polynomial (_activation_roots.root_poly);
# f3/f4 3-D / 4-D arrays of the dtype, i4 a 4-D int64 array, m1 a 1-D bool array (dropout
# masks), D a float64 scalar.
UNARY = ("f1", "f1", "s")
BINARY = ("f1", "f1", "f1", "s")
PARTIALS = ("f1", "f1", "s", "s", "d1")
KERNELS = {
    "relu": UNARY, "sigmoid": UNARY, "tanh": UNARY,
    "relu_backward": BINARY, "sigmoid_backward": BINARY, "tanh_backward": BINARY,
    "leaky_relu": UNARY, "leaky_relu_backward": BINARY,
    "silu": UNARY, "silu_backward": BINARY + ("s", "s", "r"),
    "gelu_erf": UNARY + ("s",), "gelu_erf_backward": BINARY + ("s",) * 4 + ("r",),
    "gelu_tanh": UNARY + ("s", "s"), "gelu_tanh_backward": BINARY + ("s",) * 5 + ("r",),
    "squared_error": BINARY, "scaled_diff": BINARY, "abs_error": BINARY, "scaled_sign": BINARY,
    "huber_error": BINARY + ("s",), "huber_grad": BINARY + ("s",),
    "ce_target_weight": ("i1", "f1", "i", "f1", "s"),
    "affine_cols": ("f2", "d1", "d1", "f2", "b", "s", "i1"),
    "sgd": ("f1",) * 3 + ("s",) * 4 + ("b",) * 5,
    "adam": ("f1",) * 5 + ("s",) * 8 + ("b",) * 4,
    "rmsprop": ("f1",) * 5 + ("s",) * 6 + ("b",) * 4,
    "adagrad": ("f1",) * 3 + ("s",) * 3 + ("b",) * 2,
    "softmax_rows": ("f2", "f2", "b", "s", "s", "s"),
    "softmax_backward_rows": ("f2", "f2", "f2", "b", "s"),
    "cross_entropy_rows": ("f2", "i1", "f1", "i", "s", "s", "s", "b", "f1", "s", "s", "s"),
    "cross_entropy_grad_rows": ("f2", "i1", "f1", "i", "s", "s", "s", "b", "s", "f2",
                                "s", "s", "s"),
    "cross_entropy_loss_grad_rows": ("f2", "i1", "f1", "i", "s", "s", "s", "b", "s", "f1",
                                     "f2", "s", "s", "s"),
    "bce_error": ("f1", "f1", "f1", "b", "s", "s", "f1"),
    "bce_grad": ("f1", "f1", "f1", "b", "s", "s", "s", "f1"),
    "bce_logits_error": ("f1",) * 4 + ("b", "b", "s", "s", "f1"),
    "bce_logits_grad": ("f1",) * 4 + ("b", "b", "s", "s", "f1"),
    "kl_div_error": ("f1", "f1", "b", "s", "f1"),
    "kl_div_grad": ("f1", "b", "s", "f1"),
    "nll_rows": ("f2", "i1", "f1", "b", "i", "s", "s", "f1"),
    "nll_grad": ("i1", "f1", "b", "i", "s", "s", "s", "f2"),
    "sum_partials": PARTIALS, "squared_error_partials": PARTIALS,
    "abs_error_partials": PARTIALS, "huber_partials": PARTIALS,
    "bce_partials": ("f1", "f1", "f1", "b", "s", "s", "d1"),
    "bce_logits_partials": ("f1",) * 4 + ("b", "b", "s", "s", "d1"),
    "kl_div_partials": ("f1", "f1", "b", "s", "d1"),
    "nll_partials": ("f2", "i1", "f1", "b", "i", "s", "s", "d2"),
    "nll_weight_partials": ("i1", "f1", "b", "i", "s", "s", "d1"),
    "col_sum_partial": ("f2", "f2", "s"),
    "col_stats_partial": ("f2", "d3"),
    "col_stats_merge": ("d3", "d2"),
    "col_minmax_partial": ("f2", "d3", "s"),
    "col_minmax_merge": ("d3", "d2"),
    "col_observed_partial": ("f2", "i2"),
    "quantile_ranks": ("i2", "d1", "i1", "i2", "k2", "k"),
    "quantile_count": ("k2", "k2", "k", "i3", "k", "k", "k", "k"),
    "quantile_merge": ("i3", "i2", "k2", "k", "b", "k2", "k", "k"),
    "quantile_lerp": ("f2", "d1", "i1", "d2"),
    "normalize_rows": ("f2", "f2", "i", "s", "s"),
    "polynomial_features": ("f2", "i1", "i1", "i1", "f2", "s"),
    "fill_missing": ("f1", "d1", "s", "b", "s", "f1", "i1"),
    "fill_const": ("f1", "s"),
    "one_hot_scatter": ("i2", "f2", "s"),
    "gemm": ("f2", "f2", "f1", "f2", "b", "b", "b", "s"),
    "label_encode": ("v1", "v1", "i1"),
    "label_minmax_partial": ("i1", "i1", "i2"),
    "zero_int64": ("i1",),
    "label_histogram": ("i1", "i", "i1"),
    "label_keys": ("u1", "b", "u1", "u", "u", "u", "u"),
    "bitonic_step": ("u1", "i", "i"),
    "head_count": ("u1", "i", "b", "u", "i1"),
    "head_offsets": ("i1", "i1"),
    "head_scatter": ("u1", "i", "b", "u", "i1", "i1"),
    "hist_emit": ("i1", "i1", "i", "i1", "i1"),
    "run_emit": ("u1", "i1", "i", "b", "u", "u", "u1", "i1"),
    "im2col": ("f4", "f2") + ("i",) * 9 + ("s",),
    "conv_permute": ("f3", "f3", "f1", "b", "b"),
    "col2im_gather": ("f2", "f4") + ("i",) * 10 + ("s",),
    "row_sum": ("f2", "f1", "s"),
    "max_pool2d_argmax": ("f4", "f4", "i4", "b") + ("i",) * 6 + ("s",),
    "max_pool2d_backward_gather": ("f4", "i4", "f4") + ("i",) * 6,
    "avg_pool2d": ("f4", "f4") + ("i",) * 6,
    "avg_pool2d_backward_gather": ("f4", "f4") + ("i",) * 6,
    "bn_stats": ("f3", "f3", "b", "d2"),
    "bn_forward_coef": ("d2",) + ("f1",) * 4 + ("b",) * 4 + ("s", "D", "D", "D", "d2"),
    "bn_apply": ("f3", "d2", "f3"),
    "bn_backward_coef": ("d2", "f1", "b", "D", "D", "d2", "f1", "f1"),
    "bn_backward_apply": ("f3", "f3", "d2", "f3"),
    "layer_norm_rows": ("f2", "f1", "f1", "b", "b", "D", "f2"),
    "layer_norm_backward_rows": ("f2", "f2", "f1", "b", "D", "f2", "d2"),
    "layer_norm_col_partial": ("f2", "f2", "d2", "d3"),
    "layer_norm_col_merge": ("d3", "f1", "f1"),
    "dropout": ("f1", "u", "u", "u", "u", "u", "s", "s", "f1", "m1"),
    "dropout_backward": ("f1", "m1", "s", "s", "f1"),
    "embedding": ("i1", "f2", "f2"),
    "embedding_backward_scatter": ("f2", "i1", "d2"),
    "cast_from_float64": ("d1", "f1"),
}


def _signature(kinds, dtype):
    from numba import types
    from fastml.backends._activation_roots import _ROOT_DEGREE
    f = types.float32 if dtype == "float32" else types.float64
    u = types.uint32 if dtype == "float32" else types.uint64
    table = {
        "f1": f[::1], "f2": f[:, ::1], "f3": f[:, :, ::1], "f4": f[:, :, :, ::1], "s": f,
        "i4": types.int64[:, :, :, ::1], "m1": types.boolean[::1], "D": types.float64,
        "d1": types.float64[::1], "d2": types.float64[:, ::1], "d3": types.float64[:, :, ::1],
        "i1": types.int64[::1], "i2": types.int64[:, ::1], "i3": types.int64[:, :, ::1],
        "i": types.int64, "b": types.boolean, "k": u, "k2": u[:, ::1],
        "u": types.uint64, "u1": types.uint64[::1],
        "v1": (types.int64 if dtype == "float32" else types.float64)[::1],
        "r": types.UniTuple(f, 4 + _ROOT_DEGREE),
    }
    return tuple(table[k] for k in kinds)


def _compile_all(dtype):
    """Child process: compile every kernel for dtype, print one JSON report line."""
    try:
        from numba import cuda
        from numba.cuda.cudadrv import nvvm
        from numba.cuda.dispatcher import CUDADispatcher
        why = "" if nvvm.is_available() else "NVVM (CUDA toolkit) not found"
    except Exception as exc:  # numba.cuda itself does not import
        why = f"numba.cuda does not import: {exc!r}"
    if why:
        print(json.dumps({"skip": why}))
        return
    if not cuda.is_available():
        # Device functions called from a kernel compile for the *current* device's
        # compute capability even under compile_ptx; with no GPU, name sm_90 for them.
        import types

        import numba.cuda.dispatcher as dispatcher
        dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    from fastml.backends import _cuda_kernels as k
    report = {"kernels": sorted(n for n, v in vars(k).items()
                                if isinstance(v, CUDADispatcher) and not n.startswith("_")),
              "f64_kernels": sorted(k.F64_KERNELS), "results": {}}
    for name, kinds in KERNELS.items():
        try:
            ptx, _ = cuda.compile_ptx(getattr(k, name).py_func, _signature(kinds, dtype),
                                      cc=(9, 0))
            res = {"entry": ".entry" in ptx,
                   "f64": [ln.strip() for ln in ptx.splitlines() if ".f64" in ln][:5]}
        except Exception as exc:
            res = {"error": repr(exc)[:2000]}
        report["results"][f"{name}:{dtype}"] = res
    print(json.dumps(report))


@pytest.fixture(scope="module")
def ptx_report():
    """Compile in child processes where the simulator is off (conftest turns it on here)."""
    import fastml
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastml.__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0",
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    # one child per dtype, side by side (NVVM is single-threaded; CI has 2 cores)
    children = [subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, %r); import test_cuda_ptx; "
                               "test_cuda_ptx._compile_all(%r)" % (here, dtype)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for dtype in ("float32", "float64")]
    try:
        outputs = [child.communicate(timeout=1200) for child in children]
    finally:
        for child in children:
            child.kill()  # no-op for the finished ones
    report = None
    for child, (out, err) in zip(children, outputs):
        if child.returncode != 0:
            pytest.fail(f"PTX compilation process failed:\n{err[-4000:]}")
        part = json.loads(out.strip().splitlines()[-1])
        if "skip" in part:
            pytest.skip(f"numba.cuda.compile_ptx unavailable: {part['skip']}")
        if report is None:
            report = part
        else:
            report["results"].update(part["results"])
    return report


def test_every_kernel_is_listed(ptx_report):
    assert ptx_report["kernels"] == sorted(KERNELS)
    assert set(ptx_report["f64_kernels"]) <= set(KERNELS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_compiles_without_f64_promotion(ptx_report, name, dtype):
    res = ptx_report["results"][f"{name}:{dtype}"]
    assert "error" not in res, res.get("error")
    assert res["entry"]
    if dtype == "float32" and name not in ptx_report["f64_kernels"]:
        assert not res["f64"], f"{name} promotes float32 to float64: {res['f64']}"
    if dtype == "float32" and name in ptx_report["f64_kernels"]:
        assert res["f64"], f"{name} is listed in F64_KERNELS but has no float64 code"


def _real_gpu():
    if SIMULATOR:
        return False
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU and FASTML_TEST_GPU=1 (simulator off)")
def test_cross_entropy_grad_on_gpu():
    from numba import cuda
    from fastml.backends.numba_cuda import CudaBackend
    from fastml.backends.reference import ReferenceBackend
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 300)
    args = (t, None, -100, "mean", 0.1)
    ref = ReferenceBackend().cross_entropy_grad(x, *args)
    host = CudaBackend().cross_entropy_grad(x, *args)
    dev = CudaBackend().cross_entropy_grad(cuda.to_device(x), *args)
    assert isinstance(host, np.ndarray)
    assert cuda.is_cuda_array(dev)
    np.testing.assert_allclose(host, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dev.copy_to_host(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU and FASTML_TEST_GPU=1 (simulator off)")
def test_no_recompilation_across_calls():
    """A kernel compiles once per argument-type signature: a second round of the same
    calls (new arrays, other sizes, same dtypes) adds no overload to any dispatcher."""
    import fastml
    from fastml import layers, losses
    from fastml.backends import _cuda_kernels as K

    def overloads():
        return {name: len(d.overloads) for name, d in vars(K).items() if hasattr(d, "overloads")}

    def round_(n):
        rng = np.random.default_rng(n)
        x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        with fastml.use_backend("cuda"):
            layers.conv2d_backward(layers.conv2d(x, w, padding=1), x, w, padding=1)
            layers.batch_norm(x, None, None)
            layers.gelu(x)
            losses.cross_entropy_grad(x.reshape(n, -1), np.zeros(n, np.int64))

    round_(4)
    first = overloads()
    round_(9)
    assert overloads() == first


@pytest.mark.skipif(not (SIMULATOR or _real_gpu()), reason="needs the CUDA simulator or a GPU")
def test_device_arrays_in_device_arrays_out():
    """Device inputs give device outputs (no host round trip); in-place steps update them."""
    from numba import cuda
    from fastml.backends.numba_cuda import CudaBackend
    from fastml.backends.reference import ReferenceBackend
    be, ref = CudaBackend(), ReferenceBackend()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5))
    t = np.array([0, 4, -100])
    cases = [("relu", (x,)), ("softmax", (x,)), ("column_stats", (x,)),
             ("leaky_relu_backward", (x, x, 0.2)), ("silu_backward", (x, x)),
             ("gelu", (x, "tanh")), ("gelu_backward", (x, x, "none")),
             ("cross_entropy", (x, t, None, -100, "none", 0.1)),
             ("binary_cross_entropy_with_logits_grad", (x, x, x, "mean", x)),
             ("nll_loss_grad", (x, t, x[0], -100, "mean")),
             ("kl_div", (x, x, "none", True)),
             ("linear_backward", (np.ascontiguousarray(x[:, :2]), x, x[:2], True)),
             ("column_minmax", (x,)), ("column_quantiles", (x, np.array([0.25, 0.5, 1.0]))),
             ("normalize_rows", (x, "l2")),
             ("polynomial_features", (x, np.array([-1, 0, 0, 0, 1, 1, 2]),
                                      np.array([-1, 0, 1, 2, 0, 1, 0]),
                                      np.array([0, 2, 5, 6])))]
    for name, args in cases:
        dev_args = [cuda.to_device(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
                    else a for a in args]
        got, want = getattr(be, name)(*dev_args), getattr(ref, name)(*args)
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert not isinstance(g, np.ndarray), f"{name} came back to the host"
            np.testing.assert_allclose(g.copy_to_host(), w, rtol=1e-12, atol=1e-12)
    state = [rng.normal(size=6), rng.normal(size=6), rng.normal(size=6), rng.random(6)]
    want = [a.copy() for a in state]
    dev = [cuda.to_device(a) for a in state]
    kw = dict(step=3, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
              amsgrad=False, maximize=False, decoupled_weight_decay=True)
    ref.adam_step(*want, None, **kw)
    be.adam_step(*dev, None, **kw)
    for d, w in zip(dev, want):
        np.testing.assert_allclose(d.copy_to_host(), w, rtol=1e-12, atol=1e-12)
    xm = x.copy()
    xm[0, 1], xm[1, 2], xm[2, 0] = np.nan, np.inf, -np.inf
    out, n_bad = be.fill_missing(cuda.to_device(xm), np.nan, cuda.to_device(np.arange(5.0)))
    want, want_inf = ref.fill_missing(xm, np.nan, np.arange(5.0))
    assert not isinstance(out, np.ndarray) and type(n_bad) is int and n_bad == want_inf == 2
    np.testing.assert_array_equal(out.copy_to_host(), want)
    off, sc = rng.normal(size=5), rng.random(5) + 0.5
    for name in ("standardize", "unstandardize"):  # device out, the inf count an int
        got, n_inf = getattr(be, name)(cuda.to_device(xm), cuda.to_device(off),
                                       cuda.to_device(sc))
        want, want_inf = getattr(ref, name)(xm, off, sc)
        assert not isinstance(got, np.ndarray), f"{name} came back to the host"
        assert type(n_inf) is int and n_inf == want_inf == 2
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-12, atol=1e-12)
    idx = np.array([[0, 3], [-1, 2], [4, 5]])  # -1 and 5 (== n_columns) set nothing
    got = be.one_hot(cuda.to_device(idx), 5, np.float32)
    assert not isinstance(got, np.ndarray), "one_hot came back to the host"
    np.testing.assert_array_equal(got.copy_to_host(), ref.one_hot(idx, 5, np.float32))
    labels = [np.array([3, -1, 3, 9, 2**40]), np.array([2.5, np.nan, -0.0, 0.0, np.nan])]
    for y in labels:  # int64 (sorted: wide range) and float64 labels stay on the device
        cats = np.unique(y[:3])
        for got, want in [(be.unique_counts(cuda.to_device(y)), ref.unique_counts(y)),
                          ((be.encode_values(cuda.to_device(y), cuda.to_device(cats)),),
                           (ref.encode_values(y, cats),))]:
            for g, w in zip(got, want):
                assert not isinstance(g, np.ndarray), "a label op came back to the host"
                np.testing.assert_array_equal(g.copy_to_host(), w)


@pytest.mark.skipif(not (SIMULATOR or _real_gpu()), reason="needs the CUDA simulator or a GPU")
@pytest.mark.parametrize("case", ["hist", "wide-int", "int64-extremes", "float", "zeros-nan",
                                  "one", "pow2"])
def test_unique_counts_paths(case):
    """Both unique_counts paths (histogram of a small int range; bitonic sort of keys for
    wide ints and floats), sizes around the sort's power-of-two padding, -0.0 == 0.0,
    NaNs as one value, sorted last; encode_values on the same labels."""
    from fastml.backends.numba_cuda import CudaBackend
    from fastml.backends.reference import ReferenceBackend
    rng = np.random.default_rng(len(case))
    i64 = np.iinfo(np.int64)
    y = {"hist": rng.integers(-20, 20, 77),
         "wide-int": rng.integers(-10**15, 10**15, 45) // 10**13 * 10**13,
         "int64-extremes": np.array([i64.max, i64.min, 0, -1, i64.max, i64.min + 1]),
         "float": rng.normal(size=70).round(1),
         "zeros-nan": np.array([0.0, np.nan, -0.0, -np.inf, np.inf, np.nan, -0.0, 1e-300]),
         "one": np.array([7.0]),
         "pow2": rng.integers(0, 3, 32) * 1e10}[case]
    got, want = CudaBackend().unique_counts(y), ReferenceBackend().unique_counts(y)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    for cats in (want[0], want[0][::2], want[0][:0]):
        cats = np.ascontiguousarray(cats)
        np.testing.assert_array_equal(CudaBackend().encode_values(y, cats),
                                      ReferenceBackend().encode_values(y, cats))
