"""Ratios from one saved benchmark run: each backend against the NumPy reference and
PyTorch / scikit-learn, and memory-bound ops against the machine's bandwidth.

    python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json [--group SUBSTRING ...]

Columns: median time (ms); ``x ref`` = reference median / this median (higher is
faster); ``x peer`` likewise against the fastest PyTorch / scikit-learn row of the
group; ``/ read`` = median / (the op's input bytes / bandwidth), the time to read
its inputs once at the best copy bandwidth of the same run (1.0 is the floor for a
memory-bound op that reads its inputs once).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

PEERS = ("torch", "sklearn")


def load(path):
    with open(path) as f:
        return json.load(f)["benchmarks"]


def bandwidth(rows):
    """Best bytes per second of the memory-bandwidth group, or None."""
    best = [r["extra_info"]["bytes_moved"] / r["stats"]["median"]
            for r in rows if r["group"] == "memory bandwidth"]
    return max(best, default=None)


def table(rows, groups=()):
    bw = bandwidth(rows)
    by_group = defaultdict(list)
    for r in rows:
        if r["group"] != "memory bandwidth" and (not groups or any(g in r["group"] for g in groups)):
            by_group[r["group"]].append(r)
    lines = []
    if bw:
        lines.append(f"copy bandwidth: {bw / 1e9:.1f} GB/s")
    lines.append(f"{'group':44} {'backend':14} {'ms':>9} {'x ref':>7} {'x peer':>7} {'/ read':>7}")
    for group in sorted(by_group):
        members = by_group[group]
        med = {r["extra_info"].get("backend", r["name"]): r["stats"]["median"] for r in members}
        ref = med.get("numpy")
        peers = [t for b, t in med.items() if b.startswith(PEERS)]
        peer = min(peers) if peers else None
        nbytes = max((r["extra_info"].get("input_bytes", 0) for r in members), default=0)
        for backend, t in sorted(med.items(), key=lambda kv: kv[1]):
            cols = [f"{group:44}", f"{backend:14}", f"{t * 1e3:9.3f}",
                    f"{ref / t:7.2f}" if ref else f"{'':7}",
                    f"{peer / t:7.2f}" if peer else f"{'':7}",
                    f"{t / (nbytes / bw):7.2f}" if bw and nbytes else f"{'':7}"]
            lines.append(" ".join(cols))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="a file written by --benchmark-json")
    ap.add_argument("--group", nargs="*", default=(), help="only groups containing these")
    args = ap.parse_args(argv)
    print(table(load(args.json), args.group))


if __name__ == "__main__":
    main()
