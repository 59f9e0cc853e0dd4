"""pytest-benchmark: a layer's forward + backward, as a training step runs them,
each backend against PyTorch's forward + autograd backward in the same run.

Run: ``python -m pytest benchmarks/test_bench_layers.py --benchmark-only
--benchmark-json=layers.json && python benchmarks/report.py layers.json``.
Sizes are the issue's: conv2d x 64x32x28x28 with a 64x32x3x3 kernel (padding 1),
batch_norm 64x64x28x28 (training), layer_norm 4096x1024, activations 4M values;
float32 throughout.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastml
from fastml import layers

from optable import ROW_BY_OP
from test_bench_ops import BACKENDS


def _args(op):
    return ROW_BY_OP[op].bench(np.float32)


def _conv():
    d = _args("layers.conv2d_backward")
    x, w, g = d["x"], d["weight"], d["grad_out"]
    b = np.zeros(w.shape[0], np.float32)

    def ours():
        layers.conv2d(x, w, b, padding=1)
        return layers.conv2d_backward(g, x, w, padding=1)

    def theirs(torch, t):
        y = torch.nn.functional.conv2d(t(x, True), t(w, True), t(b, True), padding=1)
        y.backward(t(g))
    return ours, theirs


def _batch_norm():
    d = _args("layers.batch_norm")
    x, w, b = d["x"], d["weight"], d["bias"]
    g = _args("layers.batch_norm_backward")["grad_out"]
    rm, rv = np.zeros_like(b), np.ones_like(b)

    def ours():
        layers.batch_norm(x, w, b, rm, rv, training=True)
        return layers.batch_norm_backward(g, x, w)

    def theirs(torch, t):
        y = torch.nn.functional.batch_norm(t(x, True), t(rm), t(rv), t(w, True), t(b, True),
                                           training=True)
        y.backward(t(g))
    return ours, theirs


def _layer_norm():
    d = _args("layers.layer_norm")
    x, w, b = d["x"], d["weight"], d["bias"]
    g = _args("layers.layer_norm_backward")["grad_out"]

    def ours():
        layers.layer_norm(x, 1024, w, b)
        return layers.layer_norm_backward(g, x, 1024, w)

    def theirs(torch, t):
        y = torch.nn.functional.layer_norm(t(x, True), (1024,), t(w, True), t(b, True))
        y.backward(t(g))
    return ours, theirs


def _activation(name, **kwargs):
    def make():
        d = _args(f"layers.{name}_backward")
        x, g = d["x"], d["grad_out"]
        fwd, bwd = getattr(layers, name), getattr(layers, f"{name}_backward")

        def ours():
            fwd(x, **kwargs)
            return bwd(g, x, **kwargs)

        def theirs(torch, t):
            y = getattr(torch.nn.functional, name)(t(x, True), **kwargs)
            y.backward(t(g))
        return ours, theirs
    return make


def _max_pool():
    x = _args("layers.max_pool2d")["x"]
    g = _args("layers.max_pool2d_backward")["grad_out"]

    def ours():
        layers.max_pool2d(x, 2)
        return layers.max_pool2d_backward(g, x, 2)

    def theirs(torch, t):
        torch.nn.functional.max_pool2d(t(x, True), 2).backward(t(g))
    return ours, theirs


CASES = {"conv2d": _conv, "batch_norm": _batch_norm, "layer_norm": _layer_norm,
         "max_pool2d": _max_pool, "gelu": _activation("gelu"), "silu": _activation("silu"),
         "leaky_relu": _activation("leaky_relu", negative_slope=0.01)}


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
@pytest.mark.parametrize("case", CASES)
def test_forward_backward(benchmark, case, backend):
    ours, theirs = CASES[case]()
    benchmark.group = f"{case} forward + backward"
    benchmark.extra_info["backend"] = backend
    if backend == "torch":
        torch = pytest.importorskip("torch")
        torch.set_num_threads(fastml.get_num_threads())

        def t(a, grad=False):
            return torch.from_numpy(a).requires_grad_(grad)
        benchmark(theirs, torch, t)
        return
    with fastml.use_backend(backend):
        ours()  # compile (numba) and warm caches outside the timing
        benchmark(ours)
