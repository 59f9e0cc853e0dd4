"""Test configuration shared by every test module.

Before anything imports numba: the cuda backend runs on the Numba CUDA
simulator unless FASTML_TEST_GPU=1 asks for the real device; FASTML_STRICT=1
makes any reference fallback of an accelerated backend an error, so a
property test can never pass because the reference ran twice.
"""
import os
import sys
import threading


def _lock_simulator_shared_arrays():
    """Make the simulator's static shared-array allocation thread-safe.

    The simulator (numba 0.68) gives each (file, line) of a block one array,
    found or created with an unlocked check-then-insert; a thread switch in
    between (the short switch interval below makes them frequent) leaves one
    thread of the block its own private array, and the block's reduction then
    reads memory nobody wrote (seen as garbage counts in the radix select).
    Same lookup, under a lock; the dynamic (size 0) case is left to numba.
    """
    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    cls = kernelapi.FakeCUDAShared
    original, lock = cls.array, threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:
            return original(self, shape, dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    cls.array = array


def _snapshot_simulator_globals():
    """Make the simulator's swap of the ``cuda`` global thread-safe.

    Around every kernel and device-function call, the simulator (numba 0.68)
    iterates the function's module globals to find ``cuda``. A thread whose
    NumPy scalar op warns (float32 overflow in a kernel) makes Python add
    ``__warningregistry__`` to those same globals, and a sibling thread's
    iteration then dies with "dictionary changed size during iteration" (seen
    once in CI). Same swap, over a snapshot: ``dict(globals)`` runs in C,
    holding the GIL.
    """
    from contextlib import contextmanager

    from numba import cuda
    from numba.cuda.simulator import kernel

    @contextmanager
    def swapped_cuda_module(fn, fake_cuda_module):
        fn_globs = fn.__globals__
        orig = {k: v for k, v in dict(fn_globs).items() if v is cuda}
        fn_globs.update(dict.fromkeys(orig, fake_cuda_module))
        try:
            yield
        finally:
            fn_globs.update(orig)

    kernel.swapped_cuda_module = swapped_cuda_module


if os.environ.get("FASTML_TEST_GPU", "") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    # The simulator runs one Python thread per CUDA thread and syncs them often;
    # a short switch interval makes its kernels several times faster.
    sys.setswitchinterval(1e-4)
    _lock_simulator_shared_arrays()
    _snapshot_simulator_globals()
os.environ.setdefault("FASTML_STRICT", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
# "ci": few examples per (op, backend, dtype) so the whole matrix stays fast;
# "thorough": a nightly-style run (HYPOTHESIS_PROFILE=thorough).
settings.register_profile("ci", max_examples=20, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
