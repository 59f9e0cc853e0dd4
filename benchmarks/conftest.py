"""Benchmarks share the op table with the tests (tests/optable.py), and run with
freed memory kept for reuse (``fastml._bench.steady_allocator``)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
if os.environ.get("FASTML_TEST_GPU", "") != "1":
    # Timing the simulator means nothing: cuda rows run only on a real GPU.
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")

from fastml._bench import steady_allocator  # noqa: E402 (after the environment is set)

steady_allocator()
