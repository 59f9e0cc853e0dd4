"""Shape, dtype and index checks shared by every public function.

Each check runs once, in the public function, before any backend: so every
backend rejects bad input with the same error, and kernels may skip bounds
checks. Device arrays (anything with ``__cuda_array_interface__``) are
inspected through their shape and dtype only, never copied to the host.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
REDUCTIONS = ("mean", "sum", "none")


def is_device_array(a) -> bool:
    """A CUDA device array: anything with ``__cuda_array_interface__`` (Numba, CuPy,
    PyTorch CUDA tensors) or the Numba CUDA simulator's stand-in (``__cuda_ndarray__``)."""
    return a is not None and not isinstance(a, np.ndarray) and (
        hasattr(a, "__cuda_array_interface__") or getattr(a, "__cuda_ndarray__", False))


def as_array(a):
    """NumPy view of ``a`` (device arrays pass through untouched)."""
    return a if is_device_array(a) else np.asarray(a)


def contiguous(a):
    """C-contiguous version of ``a``; no copy when it already is, and a 0-d array
    stays 0-d (``np.ascontiguousarray`` would make it 1-d)."""
    if is_device_array(a):
        return a
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def float_array(op: str, name: str, a, ndim=None):
    """Validate a floating input: float32/float64 only, optional rank; C-contiguous.

    A plain ndarray takes no helper calls: each public call validates several
    inputs, and right after a large kernel has streamed through the caches every
    Python call costs several times its warm time."""
    plain = type(a) is np.ndarray
    if not plain:
        a = as_array(a)
    dt = np.dtype(a.dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{op}: argument '{name}' must be float32 or float64, got {dt}")
    if ndim is not None and len(a.shape) not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{op}: argument '{name}' must be {ndim}-dimensional, "
                         f"got shape {tuple(a.shape)}")
    if plain and a.flags.c_contiguous:
        return a
    return contiguous(a)


def same_dtype(op: str, **arrays):
    """Raise TypeError unless all non-None floating arrays share one dtype."""
    dtypes = {a.dtype for a in arrays.values() if a is not None}
    if len(dtypes) > 1:
        desc = ", ".join(f"'{n}' is {np.dtype(a.dtype)}" for n, a in arrays.items()
                         if a is not None)
        raise TypeError(f"{op}: floating arguments must share one dtype ({desc})")
    return np.dtype(next(iter(dtypes))) if dtypes else None


def check_shape(op: str, name: str, a, expected, what: str = "") -> None:
    """Raise ValueError unless ``a.shape == expected``."""
    if tuple(a.shape) != tuple(expected):
        what = f" {what}" if what else ""
        raise ValueError(f"{op}: argument '{name}' expected shape{what} {tuple(expected)}, "
                         f"got {tuple(a.shape)}")


def broadcast_to(op: str, name: str, a, shape):
    """``a`` broadcast to ``shape`` as PyTorch broadcasts a loss weight: C-contiguous,
    materialized once only when its shape differs (device arrays must match)."""
    shape = tuple(shape)
    if tuple(a.shape) == shape:
        return a
    try:
        fits = np.broadcast_shapes(tuple(a.shape), shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{op}: argument '{name}' of shape {tuple(a.shape)} does not "
                         f"broadcast to the input's shape {shape}")
    if is_device_array(a):
        raise ValueError(f"{op}: a device array '{name}' must have the input's shape {shape}, "
                         f"got {tuple(a.shape)}")
    return np.ascontiguousarray(np.broadcast_to(a, shape))


def probabilities(op: str, name: str, a) -> None:
    """Raise ValueError unless every value of ``a`` is in [0, 1] (NaN is not), as
    PyTorch's binary_cross_entropy checks. Two vectorized reductions; device
    arrays are not read (their NaN/out-of-range values propagate instead)."""
    if is_device_array(a) or a.size == 0:
        return
    lo, hi = a.min(), a.max()
    if not (lo >= 0 and hi <= 1):  # NaN fails both
        bad = a[~((a >= 0) & (a <= 1))].flat[0]
        raise ValueError(f"{op}: argument '{name}' must hold probabilities in [0, 1], "
                         f"got {bad}")


def index_array(op: str, name: str, a, upper: int, ignore_index=None):
    """Integer indices in [0, upper) (or == ignore_index) as C-contiguous int64."""
    a = as_array(a)
    dt = np.dtype(a.dtype)
    if dt.kind not in "iu" :
        raise TypeError(f"{op}: argument '{name}' must have an integer dtype, got {dt}")
    if is_device_array(a):
        raise TypeError(f"{op}: argument '{name}' must be a host (NumPy) array: its "
                        "range is checked before any kernel runs")
    if a.size:
        bad = (a < 0) | (a >= upper)
        if ignore_index is not None:
            bad &= a != ignore_index
        if bad.any():
            first = a[bad].flat[0]
            allowed = f"[0, {upper})" + (f" or ignore_index={ignore_index}"
                                          if ignore_index is not None else "")
            raise ValueError(f"{op}: argument '{name}' has index {int(first)} out of range "
                             f"{allowed}")
    return np.ascontiguousarray(a, dtype=np.int64)


def reduction(op: str, value, allowed=REDUCTIONS) -> str:
    if value not in allowed:
        raise ValueError(f"{op}: reduction must be one of {allowed}, got {value!r}")
    return value


def real_scalar(op: str, name: str, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite real number within bounds, as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: argument '{name}' must be a real number, got {type(value).__name__}")
    v = float(value)
    if v != v or (lo is not None and (v < lo or (lo_open and v == lo))) or \
            (hi is not None and (v > hi or (hi_open and v == hi))):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{op}: argument '{name}' must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return v


def positive_int(op: str, name: str, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{op}: argument '{name}' must be an int >= {minimum}, got {value!r}")
    return int(value)


def inplace_array(op: str, name: str, a, like=None):
    """A writeable float NumPy array updated in place (optimizer state)."""
    if not isinstance(a, np.ndarray) and not is_device_array(a):
        raise TypeError(f"{op}: argument '{name}' must be an array updated in place, "
                        f"got {type(a).__name__}")
    dt = np.dtype(a.dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{op}: argument '{name}' must be float32 or float64, got {dt}")
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        raise ValueError(f"{op}: argument '{name}' is updated in place and must be writeable")
    if like is not None:
        check_shape(op, name, a, like.shape, "(that of 'param')")
    return a
