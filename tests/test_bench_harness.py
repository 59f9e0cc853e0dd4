"""fastml._bench's harness: freed memory kept for reuse (``steady_allocator``), so no
implementation pays page faults that another did not, and untimed warm-up rounds."""
import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: allocate two 16 MB arrays, then a third while both are alive,
# free all three, four times over; print the page faults of the third allocation after
# the first round. glibc's default returns the freed memory (over 32 MB at the top of
# the heap) to the kernel, so the third allocation faults its pages in again each round.
_PATTERN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "steady":
        from fastml._bench import steady_allocator
        assert steady_allocator()
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = 0
    for i in range(5):
        a, b = np.ones(4 << 20, np.float32), np.ones(4 << 20, np.float32)
        f0 = faults()
        c = np.ones(4 << 20, np.float32)
        total += faults() - f0 if i else 0
        del a, b, c
    print(total)
""")


def _warm_faults(mode):
    out = subprocess.run([sys.executable, "-c", _PATTERN, mode], capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_steady_allocator_reuses_freed_memory():
    default = _warm_faults("default")
    if default < 256:
        pytest.skip(f"this malloc keeps the memory anyway ({default} faults)")
    assert _warm_faults("steady") < 64


def test_median_times_skips_warmup_rounds(monkeypatch):
    """A library slow on its first calls (PyTorch on a new size) must not pull the
    medians: the warm-up rounds are not timed. A fake clock, advanced by each call."""
    from fastml import _bench
    clock = {"now": 0.0, "calls": 0}

    def slow_start():  # 3 slow calls (1 s), then fast ones (1 ms)
        clock["calls"] += 1
        clock["now"] += 1.0 if clock["calls"] <= 3 else 0.001

    def steady():
        clock["now"] += 0.002

    def once(fn, backend):  # _once on the fake clock
        start = clock["now"]
        fn()
        return clock["now"] - start

    monkeypatch.setattr(_bench, "_once", once)
    medians = _bench._median_times([("a", slow_start, None), ("b", steady, None)],
                                   budget=0.01, warmup=3)
    assert medians == {"a": pytest.approx(0.001), "b": pytest.approx(0.002)}
