"""Backend selection: FASTML_BACKEND at import, set_backend, use_backend.

Precedence, highest first: the innermost ``use_backend`` block of the
current thread / async task (a ContextVar), then the process-wide choice
made by ``set_backend``, then ``FASTML_BACKEND`` as read once when fastml
was imported. Setting ``FASTML_BACKEND`` after import changes nothing.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading

from . import _compat

# auto order; cuda is never picked implicitly and comes last.
BACKENDS = ("cython", "numba", "numpy", "cuda")
_AUTO = ("cython", "numba", "numpy")

_CLASSES = {
    "numpy": ("fastml.backends.reference", "ReferenceBackend"),
    "numba": ("fastml.backends.numba_cpu", "NumbaBackend"),
    "cython": ("fastml.backends.cython", "CythonBackend"),
    "cuda": ("fastml.backends.numba_cuda", "CudaBackend"),
}


class BackendUnavailableError(ImportError):
    """A backend was asked for by name but cannot run here (the message says why)."""


_lock = threading.Lock()
_instances: dict = {}
_global_name: str | None = None
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastml_backend", default=None)
_num_threads: int | None = None
_CPU_COUNT = os.cpu_count() or 1  # os.cpu_count() costs microseconds: read it once


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown fastml backend {name!r}; valid names: "
                         f"{', '.join(BACKENDS)} (or 'auto' for FASTML_BACKEND)")
    return name


def _require(name: str) -> str:
    _check_name(name)
    ok, why = _compat.STATUS[name]()
    if not ok:
        raise BackendUnavailableError(f"fastml backend {name!r} is not available: {why}")
    return name


def _resolve(name) -> str:
    """Map 'auto'/'' to the first available backend; validate others."""
    if name in (None, "", "auto"):
        for cand in _AUTO:
            if _compat.STATUS[cand]()[0]:
                return cand
    return _require(name)


def init_from_env() -> None:
    """Read FASTML_BACKEND once (called by fastml/__init__.py)."""
    global _global_name
    _global_name = _resolve(os.environ.get("FASTML_BACKEND", "").strip().lower() or "auto")


def available_backends() -> tuple[str, ...]:
    """Backends that can run here, in ``auto`` order, ``cuda`` last."""
    return tuple(b for b in BACKENDS if _compat.STATUS[b]()[0])


def get_backend() -> str:
    """The backend the calling thread / task uses now."""
    return _scoped.get() or _global_name


def set_backend(name: str) -> None:
    """Select the process-wide backend (seen by every thread not inside ``use_backend``).

    Raises ValueError for an unknown name and BackendUnavailableError when
    the backend cannot run here.
    """
    global _global_name
    _global_name = _resolve(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: use backend ``name`` in this thread / async task only."""
    token = _scoped.set(_resolve(name))
    try:
        yield
    finally:
        _scoped.reset(token)


def strict() -> bool:
    """FASTML_STRICT=1 turns every reference fallback of an accelerated backend into an error."""
    return os.environ.get("FASTML_STRICT", "") not in ("", "0")


def instance(name: str | None = None):
    """The (cached) backend object for ``name``, or for the current backend."""
    name = name or get_backend()
    inst = _instances.get(name)
    if inst is None:
        with _lock:
            inst = _instances.get(name)
            if inst is None:
                _require(name)
                mod, cls = _CLASSES[name]
                inst = getattr(importlib.import_module(mod), cls)()
                if strict() and name != "numpy":
                    _make_strict(inst)
                _instances[name] = inst
    return inst


def _make_strict(inst) -> None:
    from .backends.reference import ReferenceBackend, fallback_ops
    for qual, meth in fallback_ops(type(inst)).items():
        def _raise(*args, _q=qual, **kwargs):
            raise NotImplementedError(f"FASTML_STRICT: backend {inst.name!r} has no "
                                      f"native kernel for {_q}")
        setattr(inst, meth, _raise)
    assert isinstance(inst, ReferenceBackend)


def set_num_threads(n: int) -> None:
    """Bound the CPU threads of the numba and cython backends (process-wide)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _num_threads = min(n, _CPU_COUNT)


def get_num_threads() -> int:
    """Threads the numba and cython backends may use (default: all cores)."""
    return _num_threads or _CPU_COUNT


_blas_limit = {"applied": None, "controller": None}


def _set_blas_threads(n: int) -> None:
    """The BLAS pool's bound, set only when it differs from the last one applied."""
    if _blas_limit["applied"] != n:
        if _blas_limit["controller"] is None:
            from threadpoolctl import ThreadpoolController
            _blas_limit["controller"] = ThreadpoolController()
        _blas_limit["controller"].limit(limits=n, user_api="blas")
        _blas_limit["applied"] = n


def limit_blas_threads() -> None:
    """Bound the BLAS pool behind GEMM (NumPy's matmul) to get_num_threads().

    Called by the accelerated CPU backends before a GEMM; re-applied only when
    the bound changed.
    """
    _set_blas_threads(get_num_threads())


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS runs in its caller's thread inside the block (a kernel that runs its own
    threads, each with its GEMMs); the bound is get_num_threads() again after it."""
    _set_blas_threads(1)
    try:
        yield
    finally:
        limit_blas_threads()


def backend_info() -> dict:
    """Availability, versions, threads and per-op native coverage of every backend.

    ``info["backends"][name]`` has ``available`` (bool), ``reason`` (str, when
    not available), ``versions``, ``num_threads`` and, for cuda, ``gpu``.
    ``info["ops"][qualified_op][backend]`` is ``"native"`` or ``"reference"``
    for every available backend. ``info["current"]`` is ``get_backend()``.
    """
    from .backends.reference import ReferenceBackend, fallback_ops
    info = {"current": get_backend(), "backends": {}, "ops": {}}
    for name in BACKENDS:
        ok, why = _compat.STATUS[name]()
        entry = {"available": ok}
        if not ok:
            entry["reason"] = why
        entry["versions"] = _compat.versions(name)
        if name in ("numba", "cython"):
            entry["num_threads"] = get_num_threads()
        if name == "cuda" and ok:
            entry["gpu"] = instance("cuda").device_name()
        info["backends"][name] = entry
    for qual in ReferenceBackend.OPS:
        info["ops"][qual] = {}
    for name in available_backends():
        cls = type(instance(name))
        fb = fallback_ops(cls) if name != "numpy" else {}
        for qual in ReferenceBackend.OPS:
            info["ops"][qual][name] = "reference" if qual in fb else "native"
    return info
