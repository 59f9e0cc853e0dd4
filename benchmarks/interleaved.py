"""Interleaved rounds of the layer cases of ``test_bench_layers.py`` (a forward +
backward each): every backend and PyTorch run once per round, in turn (the order
rotating, as ``python -m fastml bench`` does), so a slow phase of a shared machine
slows them all alike. Prints the medians and the best fastml backend's speed
against PyTorch's (torch median / best median; above 1 is faster).

    python benchmarks/interleaved.py [--budget 3] [--cases conv2d,layer_norm]
                                     [--backends numba,cython]

``--budget``: about that many seconds of rounds per implementation (3 to 50 rounds).
pytest-benchmark runs one backend's rounds back to back, then the next one's: on a
noisy machine its ratios also measure how the machine changed in between (PyTorch's
layer_norm forward + backward took 4.5 to 14 ms in runs of one day). Quote these
ratios beside pytest-benchmark's. Needs PyTorch. The first line says which BLAS
kernels NumPy runs (see :func:`blas_line`).
"""
from __future__ import annotations

import argparse
import os
import sys


def summary(case, medians, peer="torch"):
    """One line: each median (ms) and the best non-peer's speed against the peer."""
    best = min(v for name, v in medians.items() if name != peer)
    cells = " ".join(f"{name} {v * 1e3:.3f}" for name, v in medians.items())
    return f"{case:12} {cells}  best / {peer}: {medians[peer] / best:.2f}x"


def blas_line():
    """Which BLAS kernels NumPy's GEMMs (im2col, Winograd) run: an OPENBLAS_CORETYPE
    set in the environment can pin OpenBLAS to older ones (AVX2 'Haswell' on an
    AVX-512 machine: half the GEMM speed), which PyTorch's MKL / oneDNN ignore."""
    import numpy  # noqa: F401 (loads its BLAS for threadpoolctl to see)
    from threadpoolctl import threadpool_info
    kernels = ", ".join(f"{i['internal_api']} {i.get('architecture') or ''}".strip()
                        for i in threadpool_info() if i["user_api"] == "blas")
    pinned = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
              if k in os.environ}
    return f"NumPy BLAS: {kernels}" + (f" (pinned by {pinned})" if pinned else "")


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(here, os.pardir, "tests")]
    import fastml
    import torch
    from fastml._bench import _median_times, steady_allocator
    from test_bench_layers import CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--backends", default="numba,cython")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b in fastml.available_backends()]
    torch.set_num_threads(fastml.get_num_threads())
    print(blas_line(), flush=True)
    if not steady_allocator():
        print("(glibc's malloc not found: freed memory may be faulted in again)")

    def tensor(a, grad=False):
        return torch.from_numpy(a).requires_grad_(grad)

    for case in args.cases.split(","):
        ours, theirs = CASES[case]()
        impls = [(b, ours, b) for b in backends]
        impls.append(("torch", lambda: theirs(torch, tensor), None))
        print(summary(case, _median_times(impls, args.budget)), flush=True)


if __name__ == "__main__":
    main()
