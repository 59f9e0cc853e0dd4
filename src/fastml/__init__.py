"""fastml: accelerated ML primitives with interchangeable backends.

Backends: ``numpy`` (the reference), ``numba`` (CPU JIT), ``cython``
(compiled extensions) and ``cuda`` (numba.cuda kernels). ``FASTML_BACKEND``
is read once, when fastml is imported (``auto`` picks the first available of
cython, numba, numpy); changing the variable afterwards has no effect: use
:func:`set_backend` or :func:`use_backend`.

``import fastml`` compiles nothing and does not import scikit-learn; numba
kernels compile on first use. ``fastml.preprocessing`` imports scikit-learn.
"""
from ._config import (
    BackendUnavailableError,
    available_backends,
    backend_info,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)

from ._config import init_from_env as _init_from_env

_init_from_env()

from . import layers, losses, nn, optim  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "available_backends", "backend_info", "get_backend",
    "get_num_threads", "set_backend", "set_num_threads", "use_backend",
    "layers", "losses", "optim", "nn", "__version__",
]


def __getattr__(name):
    # fastml.preprocessing imports scikit-learn, so it is loaded on first access.
    if name == "preprocessing":
        import importlib
        return importlib.import_module("fastml.preprocessing")
    raise AttributeError(f"module 'fastml' has no attribute {name!r}")
