"""Test helpers: fixtures running a test on the CPU backends that have native kernels
for the ops it uses, and on the reference otherwise."""
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


def backend_fixture(ops):
    """A ``backend`` fixture: the test runs once per CPU backend with native kernels for
    ``ops``, inside ``use_backend``."""
    @pytest.fixture(params=CPU_BACKENDS)
    def backend(request):
        with fastml.use_backend(require_native(request.param, ops)):
            yield request.param
    return backend


@pytest.fixture(autouse=True)
def reference_by_default():
    """Tests that do not ask for ``backend`` run on the reference."""
    with fastml.use_backend("numpy"):
        yield
