"""Benchmarks share the op table with the tests (tests/optable.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
if os.environ.get("FASTML_TEST_GPU", "") != "1":
    # Timing the simulator means nothing: cuda rows run only on a real GPU.
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
