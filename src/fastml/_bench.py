"""``python -m fastml bench``: the main ops side by side on each backend and, where
installed, PyTorch (CPU) and scikit-learn.

Each implementation is called in three untimed rounds (JIT backends compile there;
first calls on a new size are slow), then timed in 3 to 50 interleaved rounds (about
0.3 s of the slowest one); the table shows the median. Inputs are NumPy arrays on
every backend (cuda: copies to and from the device included). PyTorch gets the same
arrays through ``torch.from_numpy`` (no copy). The run first keeps freed memory in
the C heap (:func:`steady_allocator`).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import statistics
import sys
import time

import numpy as np

import fastml
from fastml import layers, losses, optim


def steady_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse (``mallopt``): blocks up to
    32 MB come from the heap, and the heap is not trimmed. Returns whether it applied
    (glibc on Linux only).

    Why: by default glibc returns big freed blocks to the kernel, and the next
    allocation of that size faults its pages in again (zero-filled). Whether that
    happens hangs on the order of allocations and frees: PyTorch's layer_norm
    training step on 4096x1024 float32 faulted about 3,000 pages per step (twice
    its time) where fastml's kernels faulted none, and which library paid changed
    with what ran before. Benchmarks compare kernels, so no implementation pays it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and \
        bool(mallopt(m_trim_threshold, 1 << 30))


def _preprocessing():
    try:
        from fastml import preprocessing
    except ImportError:  # its row is skipped rather than failing the whole bench
        return None
    return preprocessing if hasattr(preprocessing, "StandardScaler") else None


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _adam(p, g, m, v):
    optim.adam_step(p, g, m, v, step=10)


def _torch_peers(torch, op, args):
    """PyTorch's equivalent of ``op`` on the same arrays, as a zero-argument callable."""
    F = torch.nn.functional
    a = [torch.from_numpy(x) for x in args]
    if op == "relu":
        return lambda: torch.relu(a[0])
    if op == "softmax":
        return lambda: torch.softmax(a[0], dim=1)
    if op == "cross_entropy+grad":
        a[0].requires_grad_(True)
        return lambda: torch.autograd.grad(F.cross_entropy(a[0], a[1]), a[0])
    if op == "linear":
        return lambda: F.linear(*a)
    if op == "adam_step":
        p = a[0].clone()
        p.grad = a[1]
        return torch.optim.Adam([p], foreach=False).step
    raise KeyError(op)


def _cases(quick):
    """(op label, size label, kernels it runs, fastml call or None, its args, peers) per op.

    ``peers`` maps a peer name to a zero-argument callable; inputs are
    converted when the case is built, so no conversion is timed.
    """
    rng = np.random.default_rng(0)
    f32 = np.float32
    n_el = 10_000 if quick else 2_000_000
    rows, cls = (64, 100) if quick else (2048, 1000)
    n_lin = 64 if quick else 1024
    n_adam = 10_000 if quick else 1_000_000
    n_pre, f_pre = (1000, 10) if quick else (200_000, 50)

    logits = (3 * rng.standard_normal((rows, cls))).astype(f32)
    cases = [
        ("relu", f"{n_el:,} float32", ("layers.relu",), layers.relu,
         (rng.standard_normal(n_el).astype(f32),)),
        ("softmax", f"{rows}x{cls} float32", ("layers.softmax",), layers.softmax, (logits,)),
        ("cross_entropy+grad", f"{rows}x{cls} float32",
         ("losses.cross_entropy_and_grad",), losses.cross_entropy_and_grad,
         (logits, rng.integers(0, cls, rows))),
        ("linear", f"({n_lin}x{n_lin}) @ ({n_lin}x{n_lin}).T + b, float32", ("layers.linear",),
         layers.linear, (rng.standard_normal((n_lin, n_lin)).astype(f32),
                         (rng.standard_normal((n_lin, n_lin)) / np.sqrt(n_lin)).astype(f32),
                         rng.standard_normal(n_lin).astype(f32))),
        ("adam_step", f"{n_adam:,} float32", ("optim.adam_step",), _adam,
         (rng.standard_normal(n_adam).astype(f32), rng.standard_normal(n_adam).astype(f32),
          np.zeros(n_adam, f32), np.zeros(n_adam, f32))),
    ]
    torch = _torch()
    out = [(op, size, kernels, call, args,
            {"torch": _torch_peers(torch, op, args[:2] if op == "adam_step" else args)}
            if torch else {}) for op, size, kernels, call, args in cases]

    from sklearn.preprocessing import StandardScaler  # a dependency of fastml
    X = rng.standard_normal((n_pre, f_pre)) * 5 + 2
    pre = _preprocessing()
    out.append(("StandardScaler.fit_transform", f"{n_pre:,}x{f_pre} float64",
                ("preprocessing.column_stats", "preprocessing.standardize"),
                (lambda X: pre.StandardScaler().fit_transform(X)) if pre else None, (X,),
                {"sklearn": lambda: StandardScaler().fit_transform(X)}))
    return out


def _once(fn, backend):
    """Seconds of one ``fn()`` call on ``backend`` (None: a peer, no backend)."""
    with fastml.use_backend(backend) if backend else contextlib.nullcontext():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _rotated(impls, r):
    """impls starting at the (r mod len)-th."""
    return impls[r % len(impls):] + impls[:r % len(impls)]


def _median_times(impls, budget, warmup=3):
    """Median seconds per implementation: ``warmup`` untimed rounds (JIT compilation,
    and first calls on a new size: PyTorch's layer_norm training step on 4096x1024
    took 27-145 ms in its first 2-6 calls, then 2-5 ms), then 3 to 50 rounds (about
    ``budget`` seconds of the slowest implementation), each timing every
    implementation once, so load changes on a shared machine hit all of them alike.
    The order rotates from round to round: a library whose threads keep spinning
    after a call (OpenMP) slows whatever runs next, and that must not always be the
    same implementation."""
    for r in range(max(1, warmup)):
        slowest = max(_once(fn, b) for _, fn, b in _rotated(impls, r))
    rounds = int(min(50, max(3, budget / max(slowest, 1e-6))))
    times = {name: [] for name, _, _ in impls}
    for r in range(rounds):
        for name, fn, b in _rotated(impls, r):
            times[name].append(_once(fn, b))
    return {name: statistics.median(t) for name, t in times.items()}


def run(backends, *, quick=False, peers=True):
    """Time every case on each backend (and the peers); returns (headers, rows, results).

    ``results``: dicts with op, size, impl, seconds, speedup (vs numpy, or
    None) and fallback (True when the backend ran the reference for a kernel).
    """
    steady_allocator()
    ops = fastml.backend_info()["ops"]
    results = []
    for op, size, kernels, call, args, peer_calls in _cases(quick):
        impls = [(b, functools.partial(call, *args), b) for b in backends] if call else []
        impls += [(name, fn, None) for name, fn in peer_calls.items()] if peers else []
        if not impls:
            continue
        medians = _median_times(impls, 0.05 if quick else 0.3, warmup=1 if quick else 3)
        base = medians.get("numpy")
        for impl, sec in medians.items():
            fallback = impl in backends and any(ops[k][impl] != "native" for k in kernels)
            results.append({"op": op, "size": size, "impl": impl, "seconds": sec,
                            "speedup": base / sec if base else None, "fallback": fallback})
        print(f"  {op}: done", flush=True)
    headers = ["op", "size", "implementation", "median ms", "speed-up vs numpy"]
    rows = [[r["op"], r["size"], r["impl"] + ("*" if r["fallback"] else ""),
             f"{1e3 * r['seconds']:.3f}",
             f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"] for r in results]
    return headers, rows, results


def pyplot():
    """matplotlib.pyplot on the Agg backend, or SystemExit saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("fastml bench --plot needs matplotlib, which is not installed: "
                         "pip install 'fastml[bench]'") from None
    return plt


def plot(results, path):
    """Grouped bar chart of the speed-ups vs numpy (log scale), written to ``path``."""
    plt = pyplot()
    ops = list(dict.fromkeys(r["op"] for r in results))
    impls = list(dict.fromkeys(r["impl"] for r in results if r["speedup"] is not None))
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ops)), 4))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, op in enumerate(ops):
            for r in results:
                if r["op"] == op and r["impl"] == impl and r["speedup"] is not None:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(r["speedup"])
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ops)), ops, rotation=20, ha="right")
    ax.set_ylabel("speed-up vs numpy (log)")
    ax.set_title(f"fastml {fastml.__version__} bench")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
