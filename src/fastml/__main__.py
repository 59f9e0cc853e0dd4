"""The command line: ``python -m fastml {info,demo,bench}`` (also the ``fastml`` script)."""
from __future__ import annotations

import argparse
import sys

import fastml

CPU_ORDER = ("numpy", "numba", "cython")  # numpy first: the others are compared with it


def format_table(headers, rows) -> str:
    """Left-aligned columns, a dashed rule under the header."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _int_at_least(lo):
    def parse(text):
        n = int(text)
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {n}")
        return n
    return parse


def _backends(requested):
    """The backends to run: the requested ones (checked), else every available CPU backend."""
    if not requested:
        avail = fastml.available_backends()
        return [b for b in CPU_ORDER if b in avail]
    names = [n.strip().lower() for item in requested for n in item.split(",") if n.strip()]
    for name in names:
        try:
            with fastml.use_backend(name):
                pass
        except (ValueError, fastml.BackendUnavailableError) as exc:
            raise SystemExit(f"fastml: {exc}") from None
    return list(dict.fromkeys(names))


def cmd_info(args) -> int:
    info = fastml.backend_info()
    import numpy
    print(f"fastml {fastml.__version__}, numpy {numpy.__version__}, "
          f"python {sys.version.split()[0]}; current backend: {info['current']}\n")
    rows = []
    for name, b in info["backends"].items():
        versions = ", ".join(f"{k} {v}" for k, v in b["versions"].items() if k != "numpy")
        note = b.get("gpu", "") if b["available"] else b["reason"]
        rows.append([name, "yes" if b["available"] else "no", b.get("num_threads", "-"),
                     versions, note])
    print(format_table(["backend", "available", "threads", "versions", "GPU / reason"], rows))
    avail = [n for n, b in info["backends"].items() if b["available"]]
    rows = [[op] + [cov[n] for n in avail] for op, cov in info["ops"].items()]
    rows.append(["native ops"] + [f"{sum(cov[n] == 'native' for cov in info['ops'].values())}"
                                  f"/{len(info['ops'])}" for n in avail])
    print()
    print(format_table(["op"] + avail, rows))
    return 0


def cmd_demo(args) -> int:
    from . import _demo
    backends = _backends(args.backends)
    what = (f"a 64-{args.hidden}-10 MLP" if args.model == "mlp" else
            "a CNN (conv 1->8 3x3 pad 1, ReLU, max-pool 2, linear 128->10)")
    print(f"Training {what} on scikit-learn's digits (75/25 stratified split) "
          f"with Adam, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}")
    headers, rows, results = _demo.run(backends, epochs=args.epochs, seed=args.seed,
                                       batch_size=args.batch_size, lr=args.lr,
                                       hidden=args.hidden, model=args.model)
    print()
    print(format_table(headers, rows))
    accs = [r["accuracy"] for r in results]
    print(f"\naccuracy spread across backends: {100 * (max(accs) - min(accs)):.2f} percentage "
          "points; s/epoch excludes the warm-up step (JIT compilation)")
    return 0


def cmd_bench(args) -> int:
    from . import _bench
    if args.plot:
        _bench.pyplot()  # fail before the timings, not after
    headers, rows, results = _bench.run(_backends(args.backends), quick=args.quick,
                                        peers=not args.no_peers)
    print()
    print(format_table(headers, rows))
    if any(r["fallback"] for r in results):
        print("\n* this backend has no native kernel for (part of) the op: the reference ran")
    if args.plot:
        _bench.plot(results, args.plot)
        print(f"\nplot written to {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastml", description=fastml.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{info,demo,bench}")
    sub.add_parser("info", help="backends, versions, threads, GPU and native coverage per op")
    backends_help = ("backends to run, e.g. 'numpy,numba' (default: every available CPU "
                     "backend; cuda only when named)")

    d = sub.add_parser("demo", help="train a small MLP or CNN on the digits data set with "
                                    "each backend")
    d.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: 64-hidden-10; cnn: conv2d(1->8, 3x3, pad 1), ReLU, max_pool2d(2), "
                        "linear")
    d.add_argument("--backends", nargs="+", metavar="NAME", help=backends_help)
    d.add_argument("--epochs", type=_int_at_least(1), default=20)
    d.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="initialisation and batch-order seed")
    d.add_argument("--batch-size", type=_int_at_least(1), default=32)
    d.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate (default: 1e-3 mlp, 1e-2 cnn)")
    d.add_argument("--hidden", type=_int_at_least(1), default=128,
                   help="hidden units (mlp)")

    b = sub.add_parser("bench", help="time the main ops on each backend, PyTorch and scikit-learn")
    b.add_argument("--backends", nargs="+", metavar="NAME", help=backends_help)
    b.add_argument("--quick", action="store_true",
                   help="tiny sizes (a smoke test, not a benchmark)")
    b.add_argument("--no-peers", action="store_true", help="skip the PyTorch / scikit-learn rows")
    b.add_argument("--plot", metavar="PNG", help="also write a bar chart (needs matplotlib)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"info": cmd_info, "demo": cmd_demo, "bench": cmd_bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
