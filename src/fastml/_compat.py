"""What can be imported here, and why not: probed once, lazily.

Nothing in this module imports numba or the compiled extensions at import
time; each probe runs the first time someone asks and its answer is cached.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os


@functools.cache
def numba_status() -> tuple[bool, str]:
    """(available, reason-if-not) for the numba CPU backend."""
    try:
        import numba  # noqa: F401
    except Exception as exc:  # ImportError, or a broken llvmlite
        return False, f"import numba failed: {exc!r}"
    return True, ""


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """(available, reason-if-not) for the numba.cuda backend.

    Works with numba's built-in CUDA target and with the ``numba-cuda``
    package (which provides ``numba.cuda`` when installed).
    """
    ok, why = numba_status()
    if not ok:
        return False, why
    try:
        from numba import cuda
    except Exception as exc:
        return False, f"import numba.cuda failed: {exc!r} (pip install 'fastml[cuda]')"
    if simulator_enabled():
        return True, ""
    try:
        if not cuda.is_available():
            return False, ("numba.cuda found no usable CUDA GPU/driver "
                           "(set NUMBA_ENABLE_CUDASIM=1 to use the simulator)")
    except Exception as exc:
        return False, f"numba.cuda.is_available() failed: {exc!r}"
    return True, ""


def simulator_enabled() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


CEXT_MODULES = ("_common", "_elementwise", "_rowwise", "_losses", "_optim", "_preprocessing",
                "_linear")


@functools.cache
def cython_status() -> tuple[bool, str]:
    """(available, reason-if-not) for the compiled Cython extensions."""
    for mod in CEXT_MODULES:
        try:
            importlib.import_module(f"fastml._cext.{mod}")
        except Exception as exc:
            return False, (f"import fastml._cext.{mod} failed: {exc!r} "
                           "(the extensions are built by 'pip install .' or a wheel)")
    return True, ""


STATUS = {
    "numpy": lambda: (True, ""),
    "cython": cython_status,
    "numba": numba_status,
    "cuda": cuda_status,
}


@functools.cache
def versions(name: str) -> dict[str, str]:
    """Library versions that matter for backend ``name``."""
    import numpy
    out = {"numpy": numpy.__version__}
    if name == "numpy":
        import scipy
        out["scipy"] = scipy.__version__
    if name in ("numba", "cuda") and numba_status()[0]:
        import numba
        out["numba"] = numba.__version__
        import llvmlite
        out["llvmlite"] = llvmlite.__version__
    if name == "cuda":
        try:
            out["numba-cuda"] = importlib.metadata.version("numba-cuda")
        except Exception:
            out["numba-cuda"] = "not installed (numba's built-in CUDA target)"
    if name == "cython":
        try:
            out["Cython (build)"] = importlib.import_module("fastml._cext._common").CYTHON_VERSION
            out["openmp"] = str(importlib.import_module("fastml._cext._common").openmp_enabled())
        except Exception:
            pass
    return out

