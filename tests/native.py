"""Test helpers: the CPU backends, and skipping those without native kernels for some ops."""
import pytest

import fastml

CPU_BACKENDS = [b for b in fastml.available_backends() if b != "cuda"]


def require_native(backend, ops):
    """Skip the test unless ``backend`` has native kernels for every op in ``ops``
    (FASTML_STRICT=1 turns any fallback into an error); returns ``backend``."""
    info = fastml.backend_info()["ops"]
    missing = [q for q in ops if info[q][backend] != "native"]
    if missing:
        pytest.skip(f"backend {backend!r} has no native kernel yet for {missing}")
    return backend
