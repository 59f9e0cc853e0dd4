"""Interleaved rounds of the layer cases of ``test_bench_layers.py`` (a forward +
backward each): every backend and PyTorch run once per round, in turn, so a slow
phase of a shared machine slows them all alike. Prints the medians and the best
fastml backend's speed against PyTorch's (torch median / best median; above 1 is
faster).

    python benchmarks/interleaved.py [--rounds 30] [--cases conv2d,layer_norm]
                                     [--backends numba,cython]

pytest-benchmark runs one backend's rounds back to back, then the next one's: on a
noisy machine its ratios also measure how the machine changed in between (PyTorch's
layer_norm forward + backward took 4.5 to 14 ms in runs of one day). Quote these
ratios beside pytest-benchmark's. Needs PyTorch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def measure(fns, rounds):
    """{name: [seconds per round]}: each round calls every fn once, in order (each
    called twice untimed first: JIT compilation, caches, PyTorch's thread pool)."""
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(case, times, peer="torch"):
    """One line: each median (ms) and the best non-peer's speed against the peer."""
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    best = min(v for name, v in med.items() if name != peer)
    cells = " ".join(f"{name} {v:.3f}" for name, v in med.items())
    return f"{case:12} {cells}  best / {peer}: {med[peer] / best:.2f}x"


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(here, os.pardir, "tests")]
    import fastml
    import torch
    from test_bench_layers import CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--backends", default="numba,cython")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b in fastml.available_backends()]
    torch.set_num_threads(fastml.get_num_threads())

    def tensor(a, grad=False):
        return torch.from_numpy(a).requires_grad_(grad)

    for case in args.cases.split(","):
        ours, theirs = CASES[case]()
        fns = {}
        for b in backends:
            def run(b=b):
                with fastml.use_backend(b):
                    ours()
            fns[b] = run
        fns["torch"] = lambda: theirs(torch, tensor)
        print(summary(case, measure(fns, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
