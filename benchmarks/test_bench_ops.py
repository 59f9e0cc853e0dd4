"""pytest-benchmark: one group per op, one row per backend, plus PyTorch where installed.

Run: ``python -m pytest benchmarks --benchmark-only --benchmark-group-by=group``
(see README for saving and comparing runs). Sizes are those where speed
matters: 4M-element activations, 4096x1000 row-wise ops and cross_entropy,
1024x1024 linear, 10M-parameter optimizer steps, 1Mx50 column statistics.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import fastml
from fastml._compat import simulator_enabled

from optable import ROWS

BACKENDS = [b for b in fastml.available_backends() if not (b == "cuda" and simulator_enabled())]
BENCH_ROWS = [r for r in ROWS if r.bench is not None]


def bench_dtype(row):
    return np.float64 if row.op.startswith("preprocessing.") else np.float32


@functools.lru_cache(maxsize=2)
def inputs(op):
    row = next(r for r in ROWS if r.op == op)
    return row.bench(bench_dtype(row))


def input_bytes(args) -> int:
    """Bytes an op must read at least once: the sizes of its array arguments."""
    return sum(a.nbytes for a in args.values() if isinstance(a, np.ndarray))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", BENCH_ROWS, ids=lambda r: r.op)
def test_backend(benchmark, row, backend):
    args = inputs(row.op)
    benchmark.group = row.op
    benchmark.extra_info["backend"] = backend
    benchmark.extra_info["input_bytes"] = input_bytes(args)
    with fastml.use_backend(backend):
        row.timed(args)  # compile (numba) and warm caches outside the timing
        benchmark(row.timed, args)


@pytest.mark.parametrize("row", [r for r in BENCH_ROWS if r.peer], ids=lambda r: r.op)
def test_torch(benchmark, row):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(fastml.get_num_threads())
    args = inputs(row.op)
    benchmark.group = row.op
    benchmark.extra_info["backend"] = "torch"
    benchmark(row.peer, args)


def _torch_adam(fused):
    torch = pytest.importorskip("torch")
    n = 10_000_000
    p = torch.randn(n, requires_grad=True)
    p.grad = torch.randn(n)
    kw = {"fused": True} if fused else {"foreach": True}
    try:
        opt = torch.optim.Adam([p], **kw)
        opt.step()
    except RuntimeError as exc:  # fused Adam may not exist for CPU in this torch
        pytest.skip(str(exc))
    return opt


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_torch_adam(benchmark, fused):
    opt = _torch_adam(fused)
    benchmark.group = "optim.adam_step"
    benchmark.extra_info["backend"] = f"torch-{'fused' if fused else 'foreach'}"
    benchmark(opt.step)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_cross_entropy_loss_and_grad(benchmark, backend):
    """What a training step needs, side by side: fastml's loss then its gradient (two fused
    passes) against torch's forward + autograd backward."""
    from optable import _peer_ce
    from fastml import losses
    args = inputs("losses.cross_entropy")
    benchmark.group = "losses.cross_entropy + grad"
    benchmark.extra_info["backend"] = backend
    if backend == "torch":
        torch = pytest.importorskip("torch")
        torch.set_num_threads(fastml.get_num_threads())
        benchmark(_peer_ce, args)
        return
    with fastml.use_backend(backend):
        step = lambda: (losses.cross_entropy(**args), losses.cross_entropy_grad(**args))  # noqa: E731
        step()
        benchmark(step)


BANDWIDTH_BYTES = 256 << 20  # well past the last-level cache


@pytest.mark.parametrize("how", ["numpy", "torch"])
def test_memory_bandwidth(benchmark, how):
    """A large array copy: the machine's memory bandwidth in this run, the yardstick of
    memory-bound ops (``benchmarks/report.py`` divides each op's input bytes by it).
    A copy moves 2x its size (read + write, as STREAM counts it); torch's copy is threaded."""
    benchmark.group = "memory bandwidth"
    benchmark.extra_info["backend"] = how
    benchmark.extra_info["bytes_moved"] = 2 * BANDWIDTH_BYTES
    src = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    dst = np.empty_like(src)
    if how == "numpy":
        benchmark(np.copyto, dst, src)
        return
    torch = pytest.importorskip("torch")
    torch.set_num_threads(fastml.get_num_threads())
    tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
    benchmark(tdst.copy_, tsrc)
