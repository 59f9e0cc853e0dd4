"""Test configuration shared by every test module.

Before anything imports numba: the cuda backend runs on the Numba CUDA
simulator unless FASTML_TEST_GPU=1 asks for the real device; FASTML_STRICT=1
makes any reference fallback of an accelerated backend an error, so a
property test can never pass because the reference ran twice.
"""
import os
import sys

if os.environ.get("FASTML_TEST_GPU", "") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    # The simulator runs one Python thread per CUDA thread and syncs them often;
    # a short switch interval makes its kernels several times faster.
    sys.setswitchinterval(1e-4)
os.environ.setdefault("FASTML_STRICT", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])
# "ci": few examples per (op, backend, dtype) so the whole matrix stays fast;
# "thorough": a nightly-style run (HYPOTHESIS_PROFILE=thorough).
settings.register_profile("ci", max_examples=20, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
