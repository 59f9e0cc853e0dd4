"""fastml._bench.steady_allocator: benchmarks keep freed memory for reuse, so no
implementation pays page faults that another did not (see its docstring)."""
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
