"""Layer ops and their backward passes (``torch.nn.functional`` semantics).

Every function validates its input once, then calls the current backend
(see :func:`fastml.get_backend`). Floating inputs are float32 or float64 and
must share one dtype; the result has that dtype. Integer, bool or float16
input raises ``TypeError`` naming the argument. Inputs are never modified.
"""
from __future__ import annotations

import numpy as np

from . import _validate as v
from ._config import instance as _backend

__all__ = [
    "linear", "linear_backward", "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",
    "gelu", "gelu_backward", "silu", "silu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "log_softmax",
    "log_softmax_backward",
]


# ------------------------------------------------------------------- linear
def linear(x, weight, bias=None):
    """Affine map ``y = x @ weight.T + bias`` (``torch.nn.functional.linear``).

    Shapes: x ``(*, in_features)``, weight ``(out_features, in_features)``,
    bias ``(out_features,)`` or None -> y ``(*, out_features)``.
    Dtype: float32 or float64, shared by all arguments.

    Raises TypeError (non-float or mixed dtypes) and ValueError (shapes that
    do not agree). The matrix product is BLAS GEMM on every CPU backend.
    """
    op = "linear"
    x = v.float_array(op, "x", x)
    weight = v.float_array(op, "weight", weight, ndim=2)
    bias = None if bias is None else v.float_array(op, "bias", bias, ndim=1)
    v.same_dtype(op, x=x, weight=weight, bias=bias)
    if x.ndim < 1:
        raise ValueError(f"{op}: argument 'x' must have at least 1 dimension, got shape ()")
    out_f, in_f = weight.shape
    v.check_shape(op, "x", x, x.shape[:-1] + (in_f,), "(*, in_features)")
    if bias is not None:
        v.check_shape(op, "bias", bias, (out_f,), "(out_features,)")
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    y = _backend().linear(x.reshape(rows, in_f), weight, bias)
    return y.reshape(x.shape[:-1] + (out_f,))


def linear_backward(grad_out, x, weight, has_bias=True):
    """Gradients of :func:`linear` (``torch.nn.functional.linear`` autograd).

    Shapes: grad_out ``(*, out_features)``, x ``(*, in_features)``,
    weight ``(out_features, in_features)``.
    Returns ``(grad_x (*, in), grad_weight (out, in), grad_bias (out,) or None)``;
    grad_bias is None when ``has_bias`` is False.
    Raises TypeError / ValueError as :func:`linear`.
    """
    op = "linear_backward"
    grad_out = v.float_array(op, "grad_out", grad_out)
    x = v.float_array(op, "x", x)
    weight = v.float_array(op, "weight", weight, ndim=2)
    v.same_dtype(op, grad_out=grad_out, x=x, weight=weight)
    if x.ndim < 1:
        raise ValueError(f"{op}: argument 'x' must have at least 1 dimension, got shape ()")
    out_f, in_f = weight.shape
    v.check_shape(op, "x", x, x.shape[:-1] + (in_f,), "(*, in_features)")
    v.check_shape(op, "grad_out", grad_out, x.shape[:-1] + (out_f,), "(*, out_features)")
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    gx, gw, gb = _backend().linear_backward(grad_out.reshape(rows, out_f),
                                            x.reshape(rows, in_f), weight, bool(has_bias))
    return gx.reshape(x.shape), gw, gb


# --------------------------------------------------------------- element-wise
def _unary(op, x):
    return v.float_array(op, "x", x)


def _binary(op, grad_out, other, other_name):
    grad_out = v.float_array(op, "grad_out", grad_out)
    other = v.float_array(op, other_name, other)
    v.same_dtype(op, grad_out=grad_out, **{other_name: other})
    v.check_shape(op, "grad_out", grad_out, other.shape, f"(that of '{other_name}')")
    return grad_out, other


def relu(x):
    """``max(x, 0)`` element-wise (``torch.relu``); any shape, float32/float64.

    NaN stays NaN. Raises TypeError for a non-float dtype.
    """
    return _backend().relu(_unary("relu", x))


def relu_backward(grad_out, x):
    """Gradient of :func:`relu`: ``grad_out`` where ``x > 0``, else 0 (relu'(0) = 0).

    grad_out and x have the same shape and dtype. Follows torch's
    ``threshold_backward`` (so a NaN in x passes grad_out through).
    Raises TypeError (dtype) and ValueError (shape mismatch).
    """
    return _backend().relu_backward(*_binary("relu_backward", grad_out, x, "x"))


def _slope(op, negative_slope):
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.number)):
        raise TypeError(f"{op}: argument 'negative_slope' must be a real number, got "
                        f"{type(negative_slope).__name__}")
    return float(negative_slope)


def leaky_relu(x, negative_slope=0.01):
    """``x if x > 0 else negative_slope * x`` element-wise
    (``torch.nn.functional.leaky_relu``); any shape, float32/float64.

    NaN stays NaN. Raises TypeError (non-float x, non-real negative_slope).
    """
    op = "leaky_relu"
    return _backend().leaky_relu(_unary(op, x), _slope(op, negative_slope))


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    """Gradient of :func:`leaky_relu`: ``grad_out`` where ``x > 0``, else
    ``negative_slope * grad_out`` (torch's ``leaky_relu_backward``; slope at 0).

    grad_out and x share shape and dtype. Raises TypeError / ValueError.
    """
    op = "leaky_relu_backward"
    return _backend().leaky_relu_backward(*_binary(op, grad_out, x, "x"),
                                          _slope(op, negative_slope))


def _approximate(op, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{op}: argument 'approximate' must be 'none' or 'tanh', "
                         f"got {approximate!r}")
    return approximate


def gelu(x, approximate="none"):
    """Gaussian error linear unit ``x * Phi(x)`` element-wise
    (``torch.nn.functional.gelu``); any shape, float32/float64.

    ``approximate='none'``: ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``;
    ``'tanh'``: ``(1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`` (Hendrycks &
    Gimpel, 2016). Raises TypeError (dtype) and ValueError (approximate).
    """
    op = "gelu"
    return _backend().gelu(_unary(op, x), _approximate(op, approximate))


def gelu_backward(grad_out, x, approximate="none"):
    """Gradient of :func:`gelu` at x times grad_out (torch's ``gelu_backward``
    formulas). grad_out and x share shape and dtype. Raises TypeError / ValueError.
    """
    op = "gelu_backward"
    return _backend().gelu_backward(*_binary(op, grad_out, x, "x"),
                                    _approximate(op, approximate))


def silu(x):
    """Sigmoid linear unit (swish) ``x * sigmoid(x)`` element-wise
    (``torch.nn.functional.silu``); any shape, float32/float64. Raises TypeError.
    """
    return _backend().silu(_unary("silu", x))


def silu_backward(grad_out, x):
    """Gradient of :func:`silu`: ``grad_out * s * (1 + x (1 - s))``, s = sigmoid(x).

    grad_out and x share shape and dtype. Raises TypeError / ValueError.
    """
    return _backend().silu_backward(*_binary("silu_backward", grad_out, x, "x"))


def sigmoid(x):
    """``1 / (1 + exp(-x))`` element-wise (``torch.sigmoid``); any shape, float32/float64."""
    return _backend().sigmoid(_unary("sigmoid", x))


def sigmoid_backward(grad_out, y):
    """Gradient of :func:`sigmoid` from its output y: ``grad_out * (1 - y) * y``.

    grad_out and y share shape and dtype. Raises TypeError / ValueError.
    """
    return _backend().sigmoid_backward(*_binary("sigmoid_backward", grad_out, y, "y"))


def tanh(x):
    """Hyperbolic tangent element-wise (``torch.tanh``); any shape, float32/float64."""
    return _backend().tanh(_unary("tanh", x))


def tanh_backward(grad_out, y):
    """Gradient of :func:`tanh` from its output y: ``grad_out * (1 - y**2)``.

    grad_out and y share shape and dtype. Raises TypeError / ValueError.
    """
    return _backend().tanh_backward(*_binary("tanh_backward", grad_out, y, "y"))


# ----------------------------------------------------------------- row-wise
def _axis(op, ndim, axis):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: argument 'axis' must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: argument 'axis' {axis} is out of range for {ndim}-d input")
    return int(axis) % ndim


def _rowwise(op, method, arrays, names, axis):
    """Run a row-wise kernel along ``axis``: move it last, flatten to (rows, n)."""
    arrays = [v.float_array(op, n, a) for a, n in zip(arrays, names)]
    v.same_dtype(op, **dict(zip(names, arrays)))
    for a, n in zip(arrays[1:], names[1:]):
        v.check_shape(op, n, a, arrays[0].shape, f"(that of '{names[0]}')")
    if arrays[0].ndim == 0:
        raise ValueError(f"{op}: argument '{names[0]}' must have at least 1 dimension")
    ax = _axis(op, arrays[0].ndim, axis)
    if ax != arrays[0].ndim - 1:  # host arrays only reach here with a non-last axis
        arrays = [np.ascontiguousarray(np.moveaxis(a, ax, -1)) for a in arrays]
    shape = tuple(arrays[0].shape)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    flat = [a.reshape(rows, shape[-1]) for a in arrays]
    out = getattr(_backend(), method)(*flat).reshape(shape)
    return np.moveaxis(out, -1, ax) if ax != len(shape) - 1 else out


def softmax(x, axis=-1):
    """Softmax along ``axis`` (``torch.softmax(x, dim=axis)``); float32/float64, any shape.

    Computed as ``exp(x - max) / sum(exp(x - max))``: a NaN or +inf in a slice
    makes that slice NaN, as in PyTorch. Raises TypeError (dtype, axis type),
    ValueError (axis out of range, 0-d input).
    """
    return _rowwise("softmax", "softmax", [x], ["x"], axis)


def softmax_backward(grad_out, y, axis=-1):
    """Gradient of :func:`softmax` from its output y: ``y * (g - sum(g * y))`` along axis.

    grad_out and y share shape and dtype. Raises TypeError / ValueError.
    """
    return _rowwise("softmax_backward", "softmax_backward", [grad_out, y], ["grad_out", "y"], axis)


def log_softmax(x, axis=-1):
    """Log-softmax along ``axis`` (``torch.log_softmax``): ``x - max - log(sum(exp(x - max)))``.

    float32/float64, any shape. Raises TypeError / ValueError as :func:`softmax`.
    """
    return _rowwise("log_softmax", "log_softmax", [x], ["x"], axis)


def log_softmax_backward(grad_out, y, axis=-1):
    """Gradient of :func:`log_softmax` from its output y: ``g - exp(y) * sum(g)`` along axis.

    grad_out and y share shape and dtype. Raises TypeError / ValueError.
    """
    return _rowwise("log_softmax_backward", "log_softmax_backward", [grad_out, y],
                    ["grad_out", "y"], axis)
