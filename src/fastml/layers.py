"""Layer ops and their backward passes (``torch.nn.functional`` semantics).

Every function validates its input once, then calls the current backend
(see :func:`fastml.get_backend`). Floating inputs are float32 or float64 and
must share one dtype; the result has that dtype. Integer, bool or float16
input raises ``TypeError`` naming the argument. Inputs are never modified.
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as v
from ._config import instance as _backend
from .backends.reference import conv_output_size

__all__ = [
    "linear", "linear_backward", "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",
    "gelu", "gelu_backward", "silu", "silu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "log_softmax",
    "log_softmax_backward", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward", "batch_norm", "batch_norm_backward", "layer_norm",
    "layer_norm_backward", "dropout", "dropout_backward", "embedding", "embedding_backward",
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
    rows = math.prod(x.shape[:-1])
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
    rows = math.prod(x.shape[:-1])
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
    rows = math.prod(shape[:-1])
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


# ------------------------------------------------------ convolution, pooling
def _pair(op, name, value, minimum):
    """An int or a pair of ints, each >= minimum, as a tuple (h, w)."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or \
            any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in pair):
        raise TypeError(f"{op}: argument '{name}' must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: argument '{name}' must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _image(op, name, a):
    """A float (N, C, H, W) input; an unbatched (C, H, W) one gains N = 1.
    Returns (array, whether it was unbatched)."""
    a = v.float_array(op, name, a, ndim=(3, 4))
    return (a[None], True) if a.ndim == 3 else (a, False)


def _window_output(op, x, kernel, stride, padding, dilation, kernel_name):
    """(Ho, Wo), or ValueError naming ``kernel_name`` when the (dilated) kernel
    is larger than the padded input."""
    ho, wo = conv_output_size(x.shape, kernel, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{op}: argument '{kernel_name}': kernel {tuple(kernel)} (dilation "
            f"{tuple(dilation)}) is larger than the padded input {x.shape[2] + 2 * padding[0]}"
            f"x{x.shape[3] + 2 * padding[1]}")
    return ho, wo


def _conv_args(op, x, weight, stride, padding, dilation):
    x, unbatched = _image(op, "x", x)
    weight = v.float_array(op, "weight", weight, ndim=4)
    stride = _pair(op, "stride", stride, 1)
    padding = _pair(op, "padding", padding, 0)
    dilation = _pair(op, "dilation", dilation, 1)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: argument 'weight' of shape {tuple(weight.shape)} expects "
                         f"{weight.shape[1]} input channels, x has {x.shape[1]}")
    out_hw = _window_output(op, x, weight.shape[2:], stride, padding, dilation, "weight")
    return x, unbatched, weight, stride, padding, dilation, out_hw


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D cross-correlation (``torch.nn.functional.conv2d``, groups=1).

    Shapes: x ``(N, C, H, W)`` (or unbatched ``(C, H, W)``), weight
    ``(O, C, kh, kw)``, bias ``(O,)`` or None -> ``(N, O, Ho, Wo)`` with
    ``Ho = (H + 2 padding - dilation (kh - 1) - 1) // stride + 1`` (same for W).
    ``stride`` (>= 1), ``padding`` (>= 0, zeros) and ``dilation`` (>= 1) take an
    int or an (h, w) pair. Dtype: float32 or float64, shared by all arguments.

    Lowered to im2col plus BLAS GEMM (no hand-written GEMM); the cython backend
    takes 3x3 stride-1 convolutions with >= 16 input and output channels by Winograd
    F(2x2, 3x3) (Lavin & Gray 2016; 16 BLAS GEMMs, float32 results a few ulps of
    sum |w| |x| further from exact; docs/backends.md). Raises TypeError
    (dtypes, non-int sizes) and ValueError (channel mismatch naming 'weight', a
    kernel larger than the padded input naming 'weight', bad sizes or shapes).
    """
    op = "conv2d"
    x, unbatched, weight, stride, padding, dilation, _ = _conv_args(
        op, x, weight, stride, padding, dilation)
    bias = None if bias is None else v.float_array(op, "bias", bias, ndim=1)
    v.same_dtype(op, x=x, weight=weight, bias=bias)
    if bias is not None:
        v.check_shape(op, "bias", bias, weight.shape[:1], "(out_channels,)")
    y = _backend().conv2d(x, weight, bias, stride, padding, dilation)
    return y[0] if unbatched else y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, has_bias=True):
    """Gradients of :func:`conv2d` (its autograd in torch).

    Shapes: grad_out ``(N, O, Ho, Wo)``, x ``(N, C, H, W)``, weight
    ``(O, C, kh, kw)`` (or all unbatched). Returns ``(grad_x like x,
    grad_weight like weight, grad_bias (O,) or None)``; grad_bias is None when
    ``has_bias`` is False. Raises TypeError / ValueError as :func:`conv2d`, and
    ValueError when grad_out's shape is not the forward output's.
    """
    op = "conv2d_backward"
    x, unbatched, weight, stride, padding, dilation, (ho, wo) = _conv_args(
        op, x, weight, stride, padding, dilation)
    grad_out = v.float_array(op, "grad_out", grad_out, ndim=3 if unbatched else 4)
    grad_out = grad_out[None] if unbatched else grad_out
    v.same_dtype(op, grad_out=grad_out, x=x, weight=weight)
    v.check_shape(op, "grad_out", grad_out, (x.shape[0], weight.shape[0], ho, wo),
                  "(N, out_channels, Ho, Wo)")
    gx, gw, gb = _backend().conv2d_backward(grad_out, x, weight, stride, padding, dilation,
                                            bool(has_bias))
    return (gx[0] if unbatched else gx), gw, gb


def pool_geometry(op, kernel_size, stride, padding):
    """Validated (kernel, stride, padding) pairs of a pooling window; stride
    defaults to the kernel, padding is at most half the kernel (as torch)."""
    kernel = _pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else _pair(op, "stride", stride, 1)
    padding = _pair(op, "padding", padding, 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: argument 'padding' {padding} must be at most half of "
                         f"kernel_size {kernel}")
    return kernel, stride, padding


def _pool_args(op, x, kernel_size, stride, padding):
    x, unbatched = _image(op, "x", x)
    kernel, stride, padding = pool_geometry(op, kernel_size, stride, padding)
    out_hw = _window_output(op, x, kernel, stride, padding, (1, 1), "kernel_size")
    return x, unbatched, kernel, stride, padding, out_hw


def _pool(op, method, x, kernel_size, stride, padding):
    x, unbatched, kernel, stride, padding, _ = _pool_args(op, x, kernel_size, stride, padding)
    y = getattr(_backend(), method)(x, kernel, stride, padding)
    return y[0] if unbatched else y


def _pool_backward(op, method, grad_out, x, kernel_size, stride, padding):
    x, unbatched, kernel, stride, padding, out_hw = _pool_args(
        op, x, kernel_size, stride, padding)
    grad_out = v.float_array(op, "grad_out", grad_out, ndim=3 if unbatched else 4)
    grad_out = grad_out[None] if unbatched else grad_out
    v.same_dtype(op, grad_out=grad_out, x=x)
    v.check_shape(op, "grad_out", grad_out, x.shape[:2] + out_hw, "(N, C, Ho, Wo)")
    g = getattr(_backend(), method)(grad_out, x, kernel, stride, padding)
    return g[0] if unbatched else g


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over each window (``torch.nn.functional.max_pool2d``; dilation 1,
    floor mode).

    Shapes: x ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(N, C, Ho, Wo)``,
    ``Ho = (H + 2 padding - kh) // stride + 1``. ``kernel_size`` (>= 1),
    ``stride`` (>= 1; default kernel_size) and ``padding`` (>= 0, at most half
    the kernel; padding never wins) take an int or an (h, w) pair. float32 or
    float64. A NaN in a window gives NaN. Raises TypeError / ValueError (naming
    'kernel_size' when the window is larger than the padded input, 'padding').
    """
    return _pool("max_pool2d", "max_pool2d", x, kernel_size, stride, padding)


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of :func:`max_pool2d` (torch's ``max_pool2d_with_indices_backward``):
    each window's grad_out goes to its maximum (the first of ties, the last NaN),
    accumulated where windows overlap. grad_out ``(N, C, Ho, Wo)``, x as forward.
    Returns grad_x like x. Raises TypeError / ValueError.
    """
    return _pool_backward("max_pool2d_backward", "max_pool2d_backward", grad_out, x,
                          kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window (``torch.nn.functional.avg_pool2d`` with
    count_include_pad=True, floor mode): window sum / (kh * kw), the zero padding
    counted. Shapes and arguments as :func:`max_pool2d`. Raises TypeError / ValueError.
    """
    return _pool("avg_pool2d", "avg_pool2d", x, kernel_size, stride, padding)


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of :func:`avg_pool2d`: grad_out / (kh * kw) over each window.
    grad_out ``(N, C, Ho, Wo)``, x as forward. Returns grad_x like x.
    """
    return _pool_backward("avg_pool2d_backward", "avg_pool2d_backward", grad_out, x,
                          kernel_size, stride, padding)


# ------------------------------------------------------------ normalization
def _eps(op, eps):
    return v.real_scalar(op, "eps", eps, lo=0.0, lo_open=True)


def _affine(op, name, a, shape):
    if a is None:
        return None
    a = v.float_array(op, name, a)
    v.check_shape(op, name, a, shape, "(that of the normalized axes)")
    return a


def _channels(op, x):
    """x (N, C, *) as (N, C, L)."""
    x = v.float_array(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: argument 'x' must have shape (N, C) or (N, C, *), "
                         f"got {tuple(x.shape)}")
    return x, x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def batch_norm(x, weight, bias, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5):
    """Batch normalization per channel (``torch.nn.functional.batch_norm``).

    Shapes: x ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; weight, bias,
    running_mean, running_var ``(C,)`` or None (no scale / shift / running
    statistics). Dtype float32/float64, shared. Training: the batch mean and
    biased variance over every axis but C normalize x, and running_mean /
    running_var (both or neither) are updated **in place** with the unbiased
    variance: ``r = (1 - momentum) r + momentum * stat``. Evaluation
    (``training=False``): the running statistics normalize x.
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Raises TypeError (dtypes, running statistics not writeable arrays) and
    ValueError (shapes; only one running statistic; evaluation without them;
    training with one value per channel; momentum outside [0, 1]; eps <= 0).
    """
    op = "batch_norm"
    x_in, x = _channels(op, x)
    c = x.shape[1]
    weight = _affine(op, "weight", weight, (c,))
    bias = _affine(op, "bias", bias, (c,))
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: arguments 'running_mean' and 'running_var' must both be "
                         "given or both be None")
    if running_mean is not None:
        running_mean = v.inplace_array(op, "running_mean", running_mean)
        running_var = v.inplace_array(op, "running_var", running_var)
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            v.check_shape(op, name, r, (c,), "(C,)")
            if not r.flags.c_contiguous:
                raise ValueError(f"{op}: argument '{name}' is updated in place and must be "
                                 "C-contiguous")
    v.same_dtype(op, x=x, weight=weight, bias=bias, running_mean=running_mean,
                 running_var=running_var)
    momentum = v.real_scalar(op, "momentum", momentum, 0.0, 1.0)
    eps = _eps(op, eps)
    training = bool(training)
    if training and x.shape[0] * x.shape[2] == 1:
        raise ValueError(f"{op}: argument 'x' of shape {tuple(x_in.shape)}: expected more "
                         "than 1 value per channel when training")
    if not training and running_mean is None:
        raise ValueError(f"{op}: argument 'running_mean' must be given when training=False")
    if x.size == 0 and not v.is_device_array(x):
        return np.empty(x_in.shape, x_in.dtype)  # torch leaves the running statistics as they are
    y = _backend().batch_norm(x, weight, bias, running_mean, running_var, training,
                              momentum, eps)
    return y.reshape(x_in.shape)


def batch_norm_backward(grad_out, x, weight, eps=1e-5):
    """Training-mode gradients of :func:`batch_norm` (torch's ``batch_norm_backward``
    with batch statistics, recomputed from x).

    Shapes: grad_out and x ``(N, C, *)``, weight ``(C,)`` or None. Returns
    ``(grad_x like x, grad_weight (C,), grad_bias (C,))``, the last two None
    when weight is None. Raises TypeError / ValueError as :func:`batch_norm`.
    """
    op = "batch_norm_backward"
    x_in, x = _channels(op, x)
    grad_out = v.float_array(op, "grad_out", grad_out)
    weight = _affine(op, "weight", weight, (x.shape[1],))
    v.same_dtype(op, grad_out=grad_out, x=x, weight=weight)
    v.check_shape(op, "grad_out", grad_out, x_in.shape, "(that of 'x')")
    gx, gw, gb = _backend().batch_norm_backward(grad_out.reshape(x.shape), x, weight,
                                                _eps(op, eps))
    return gx.reshape(x_in.shape), gw, gb


def _normalized(op, x, normalized_shape):
    """x (*, *normalized_shape) as (rows, n) and normalized_shape as a tuple."""
    if type(normalized_shape) is int:  # the common case, without the loops below
        shape = (normalized_shape,)
    else:
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
            else normalized_shape
        if not isinstance(shape, (tuple, list)) or not shape or \
                any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in shape):
            raise TypeError(f"{op}: argument 'normalized_shape' must be an int or a non-empty "
                            f"tuple of ints, got {normalized_shape!r}")
        shape = tuple(int(s) for s in shape)
    x = v.float_array(op, "x", x)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        raise ValueError(f"{op}: argument 'normalized_shape' {shape} must be the trailing "
                         f"dimensions of x, got x of shape {tuple(x.shape)}")
    n = math.prod(shape)
    rows = math.prod(x.shape[:x.ndim - len(shape)])
    return x, x.reshape(rows, n), shape


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization over the trailing ``normalized_shape`` axes
    (``torch.nn.functional.layer_norm``): mean and biased variance per sample,
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Shapes: x ``(*, *normalized_shape)``; weight, bias ``normalized_shape`` or
    None. float32/float64, shared. Raises TypeError (dtypes, normalized_shape
    not ints) and ValueError (normalized_shape not x's trailing shape, weight /
    bias shapes, eps <= 0).
    """
    op = "layer_norm"
    x, x2, shape = _normalized(op, x, normalized_shape)
    weight = _affine(op, "weight", weight, shape)
    bias = _affine(op, "bias", bias, shape)
    v.same_dtype(op, x=x, weight=weight, bias=bias)
    n = x2.shape[1]
    y = _backend().layer_norm(x2, None if weight is None else weight.reshape(n),
                              None if bias is None else bias.reshape(n), _eps(op, eps))
    return y.reshape(x.shape)


def layer_norm_backward(grad_out, x, normalized_shape, weight=None, eps=1e-5):
    """Gradients of :func:`layer_norm`. grad_out and x ``(*, *normalized_shape)``,
    weight ``normalized_shape`` or None. Returns ``(grad_x like x, grad_weight,
    grad_bias)`` (each shaped normalized_shape), the last two None when weight is
    None. Raises TypeError / ValueError as :func:`layer_norm`.
    """
    op = "layer_norm_backward"
    x, x2, shape = _normalized(op, x, normalized_shape)
    grad_out = v.float_array(op, "grad_out", grad_out)
    weight = _affine(op, "weight", weight, shape)
    v.same_dtype(op, grad_out=grad_out, x=x, weight=weight)
    v.check_shape(op, "grad_out", grad_out, x.shape, "(that of 'x')")
    n = x2.shape[1]
    gx, gw, gb = _backend().layer_norm_backward(
        grad_out.reshape(x2.shape), x2, None if weight is None else weight.reshape(n),
        _eps(op, eps))
    if gw is not None:
        gw, gb = gw.reshape(shape), gb.reshape(shape)
    return gx.reshape(x.shape), gw, gb


# ---------------------------------------------------- dropout, embedding
def _p(op, p):
    return v.real_scalar(op, "p", p, 0.0, 1.0, hi_open=True)


def dropout(x, p=0.5, training=True, seed=None):
    """Dropout (``torch.nn.functional.dropout``), returning ``(y, mask)``.

    x: any shape, float32/float64. ``mask`` (bool, x's shape) is True where an
    element is kept; each is dropped with probability ``p`` in [0, 1), and kept
    ones are scaled by ``1 / (1 - p)``. The mask is a counter-based hash
    (splitmix64) of ``seed`` and the element's flat index, so one seed gives one
    mask on every backend; ``seed=None`` draws a fresh one. ``training=False``
    returns ``(x, all-True mask)``. Raises TypeError (dtype, non-int seed) and
    ValueError (p outside [0, 1), seed outside [0, 2**64)).
    """
    op = "dropout"
    x = v.float_array(op, "x", x)
    p = _p(op, p)
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2 ** 63))
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{op}: argument 'seed' must be an int or None, got "
                        f"{type(seed).__name__}")
    elif not 0 <= seed < 2 ** 64:
        raise ValueError(f"{op}: argument 'seed' must be in [0, 2**64), got {seed}")
    if not training:
        return x, np.ones(x.shape, bool)
    return _backend().dropout(x, p, int(seed))


def dropout_backward(grad_out, mask, p=0.5):
    """Gradient of :func:`dropout`: ``grad_out * mask / (1 - p)``.

    grad_out float32/float64, mask bool of the same shape (from :func:`dropout`).
    Raises TypeError (dtypes) and ValueError (shapes, p outside [0, 1)).
    """
    op = "dropout_backward"
    grad_out = v.float_array(op, "grad_out", grad_out)
    mask = v.as_array(mask)
    if np.dtype(mask.dtype) != np.bool_:
        raise TypeError(f"{op}: argument 'mask' must be a bool array, got {mask.dtype}")
    v.check_shape(op, "mask", mask, grad_out.shape, "(that of 'grad_out')")
    return _backend().dropout_backward(grad_out, v.contiguous(mask), _p(op, p))


def embedding(indices, weight):
    """Rows of ``weight`` (``torch.nn.functional.embedding``).

    indices: any shape, any integer dtype, each in [0, num_embeddings);
    weight ``(num_embeddings, embedding_dim)`` float32/float64 ->
    ``indices.shape + (embedding_dim,)``. Raises TypeError (dtypes) and
    ValueError (an index out of range, weight not 2-D).
    """
    op = "embedding"
    weight = v.float_array(op, "weight", weight, ndim=2)
    shape = tuple(np.shape(indices))
    idx = v.index_array(op, "indices", indices, weight.shape[0])
    out = _backend().embedding(idx.reshape(-1), weight)
    return out.reshape(shape + (weight.shape[1],))


def embedding_backward(grad_out, indices, num_embeddings):
    """Gradient of :func:`embedding` for weight: ``(num_embeddings, embedding_dim)``,
    the rows of grad_out ``indices.shape + (embedding_dim,)`` summed per index
    (repeated indices accumulate). Raises TypeError / ValueError as :func:`embedding`.
    """
    op = "embedding_backward"
    num = v.positive_int(op, "num_embeddings", num_embeddings, minimum=0)
    shape = tuple(np.shape(indices))
    idx = v.index_array(op, "indices", indices, num)
    grad_out = v.float_array(op, "grad_out", grad_out)
    if grad_out.ndim != len(shape) + 1 or tuple(grad_out.shape[:-1]) != shape:
        raise ValueError(f"{op}: argument 'grad_out' expected shape {shape} + "
                         f"(embedding_dim,), got {tuple(grad_out.shape)}")
    return _backend().embedding_backward(grad_out.reshape(idx.size, grad_out.shape[-1]),
                                         idx.reshape(-1), num)
