"""The pure-NumPy reference: the single source of truth for every op.

Every method here receives input already validated by the public API
(fastml.layers / losses / optim / preprocessing): floating arrays share one
dtype, shapes agree, indices are in range, arrays are C-contiguous. Row-wise
ops (softmax, log_softmax) receive 2-D ``(rows, n)`` arrays; the public
function moves the reduced axis last. Accelerated backends subclass
``ReferenceBackend`` and override the methods they have kernels for, with
exactly the same signatures.

Formulas follow PyTorch's CPU kernels (``torch.nn.functional``,
``torch.optim`` single-tensor algorithms) and scikit-learn (preprocessing).
"""
from __future__ import annotations

import functools
import inspect
import warnings

import numpy as np


def op(module: str):
    """Mark a reference method as the public op ``module.<method name>``.

    NaN and inf propagate silently, as in PyTorch and the compiled backends,
    so NumPy's floating-point warnings are off inside the reference ops.
    """
    def mark(fn):
        @functools.wraps(fn)
        def quiet(*args, **kwargs):
            with np.errstate(all="ignore"):
                return fn(*args, **kwargs)
        quiet._fastml_op = f"{module}.{fn.__name__}"
        return quiet
    return mark


BCE_EPS = float(np.float32(1e-12))  # torch's binary_cross_entropy_backward clamp


def _reduce(values, reduction, count=None):
    """Apply a PyTorch reduction; 'mean' over zero elements is NaN."""
    if reduction == "none":
        return values
    total = values.sum(dtype=np.float64)
    if reduction == "sum":
        return float(total)
    n = values.size if count is None else count
    return float(np.float64(total) / np.float64(n))


def _grad_scale(reduction, size, k=1.0):
    """Factor of an element-wise loss gradient: k / size for 'mean' (k when empty), else k."""
    return k / size if reduction == "mean" and size else k


_SQRT_HALF = 0.7071067811865476        # 1 / sqrt(2)
_SQRT_2_OVER_PI = 0.7978845608028654   # sqrt(2 / pi)
_INV_SQRT_2PI = 0.3989422804014327     # 1 / sqrt(2 pi)
_GELU_KAPPA = 0.044715


def _erf(x):
    from scipy.special import erf  # NumPy has no erf; SciPy is a dependency
    return erf(x)


def _count_inf(X):
    return int(np.count_nonzero(np.isinf(X)))


# ------------------------------------------------------------ layer helpers
def conv_output_size(x_shape, kernel, stride, padding, dilation):
    """(Ho, Wo) of a convolution or pooling window over x (N, C, H, W) (torch's
    formula, floor mode): ``(H + 2 p - d (k - 1) - 1) // s + 1``."""
    return tuple((x_shape[2 + a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1)
                 // stride[a] + 1 for a in (0, 1))


def pool_output(x, kernel, stride, padding):
    """An uninitialized (N, C, Ho, Wo) array for a pooling of x, in x's dtype."""
    return np.empty(x.shape[:2] + conv_output_size(x.shape, kernel, stride, padding, (1, 1)),
                    x.dtype)


def _windows(x, kernel, stride, padding, dilation, out_hw, fill=0):
    """Read-only view (N, C, kh, kw, Ho, Wo) of x zero-padded (or ``fill``-padded):
    ``[n, c, i, j, oh, ow] = xpad[n, c, oh sh + i dh, ow sw + j dw]``."""
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, x.shape[:2] + tuple(kernel) + tuple(out_hw),
        (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3]), writeable=False)


def im2col(x, kernel, stride, padding, dilation, out_hw):
    """x (N, C, H, W) -> columns (N, C kh kw, Ho Wo), rows ordered (c, i, j)
    as ``weight.reshape(O, -1)``'s columns."""
    n, c = x.shape[:2]
    win = _windows(x, kernel, stride, padding, dilation, out_hw)
    return win.reshape(n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1])


def col2im(cols, x_shape, kernel, stride, padding, dilation, out_hw):
    """The transpose of :func:`im2col`: columns (N, C kh kw, Ho Wo) summed back
    into (N, C, H, W), padding dropped; in cols' dtype."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    grad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            grad[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                 j * dw:j * dw + sw * (wo - 1) + 1:sw] += cols[:, :, i, j]
    return np.ascontiguousarray(grad[:, :, ph:ph + h, pw:pw + w])


def _max_pool_argmax(x, kernel, stride, padding):
    """(max (N, C, Ho, Wo), flat index h * W + w into each (H, W) plane).

    torch's CPU scan: windows clipped to the input, visited row by row; an
    element replaces the maximum when it is larger or NaN, so ties keep the
    first, NaNs the last, and an all -inf window its first element."""
    n, c, h, w = x.shape
    ho, wo = conv_output_size(x.shape, kernel, stride, padding, (1, 1))
    r0 = np.arange(ho) * stride[0] - padding[0]
    c0 = np.arange(wo) * stride[1] - padding[1]
    best = np.full((n, c, ho, wo), -np.inf, x.dtype)
    idx = np.broadcast_to(np.maximum(r0, 0)[:, None] * w + np.maximum(c0, 0), best.shape).copy()
    for i in range(kernel[0]):
        r = r0 + i
        for j in range(kernel[1]):
            col = c0 + j
            valid = ((r >= 0) & (r < h))[:, None] & ((col >= 0) & (col < w))
            val = x[:, :, np.clip(r, 0, h - 1)][:, :, :, np.clip(col, 0, w - 1)]
            take = valid & ((val > best) | np.isnan(val))
            best = np.where(take, val, best)
            idx = np.where(take, r[:, None] * w + col, idx)
    return best, idx


def update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """torch's in-place update from a batch's float64 mean and biased variance over m
    values: ``r = (1 - momentum) r + momentum * stat``, with the unbiased variance."""
    unbiased = var * m / (m - 1)
    running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    running_var[...] = (1 - momentum) * running_var + momentum * unbiased


def batch_norm_affine(mean, var, weight, bias, eps):
    """Per-channel float64 (scale, shift) with ``y = x * scale + shift`` equal to
    ``(x - mean) / sqrt(var + eps) * weight + bias`` (weight, bias may be None)."""
    scale = 1 / np.sqrt(var + eps)
    shift = -mean * scale
    if weight is not None:
        scale, shift = scale * weight, shift * weight
    if bias is not None:
        shift = shift + bias
    return scale, shift


def _channel_stats(x64):
    """Per-channel mean and biased variance of x (N, C, L) in float64, two passes
    (NaN, silently, for channels without values)."""
    m = x64.shape[0] * x64.shape[2]
    mean = x64.sum(axis=(0, 2)) / m
    var = ((x64 - mean[:, None]) ** 2).sum(axis=(0, 2)) / m
    return mean, var


def _row_stats(x64):
    """Per-row mean and biased variance of x (rows, n), keepdims, in float64."""
    n = x64.shape[1]
    mean = x64.sum(axis=1, keepdims=True) / n
    return mean, ((x64 - mean) ** 2).sum(axis=1, keepdims=True) / n


# splitmix64 (Steele, Lea & Flood 2014): the dropout mask's counter-based hash.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def dropout_threshold(p: float) -> int:
    """Element i is dropped when the top 53 bits of its hash are below this:
    ``floor(p 2**53)``, so P(drop) = p to within 2**-53."""
    return int(p * 2.0 ** 53)


def dropout_keep(seed: int, n: int, p: float):
    """Keep mask (n,) bool: ``splitmix64(seed + (i + 1) * golden) >> 11 >=
    dropout_threshold(p)``, all arithmetic modulo 2**64."""
    z = np.uint64(seed) + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)) >= np.uint64(dropout_threshold(p))


def dropout_scale(p: float, dtype):
    """The factor of kept elements, ``1 / (1 - p)`` rounded to ``dtype``."""
    return np.dtype(dtype).type(1.0 / (1.0 - p))


class ReferenceBackend:
    """NumPy implementations of every fastml op."""

    name = "numpy"
    OPS: dict = {}  # qualified op name -> method name, filled in below

    # ------------------------------------------------------------------ layers
    @op("layers")
    def linear(self, x, weight, bias):
        """x (N, in), weight (out, in), bias (out,) or None -> (N, out)."""
        out = x @ weight.T
        if bias is not None:
            out += bias
        return out

    @op("layers")
    def linear_backward(self, grad_out, x, weight, has_bias):
        """grad_out (N, out), x (N, in) -> (grad_x, grad_weight, grad_bias|None)."""
        grad_x = grad_out @ weight
        grad_weight = grad_out.T @ x
        grad_bias = grad_out.sum(axis=0) if has_bias else None
        return grad_x, grad_weight, grad_bias

    @op("layers")
    def relu(self, x):
        # NaN <= 0 is False, so NaN passes through as in torch.relu.
        return np.where(x <= 0, np.zeros((), x.dtype), x)

    @op("layers")
    def relu_backward(self, grad_out, x):
        # torch's threshold_backward: x <= 0 -> 0, else grad (relu'(0) = 0).
        return np.where(x <= 0, np.zeros((), x.dtype), grad_out)

    @op("layers")
    def leaky_relu(self, x, negative_slope):
        # torch: x > 0 ? x : x * negative_slope (NaN stays NaN)
        return np.where(x > 0, x, x * x.dtype.type(negative_slope))

    @op("layers")
    def leaky_relu_backward(self, grad_out, x, negative_slope):
        # torch's leaky_relu_backward: x > 0 ? grad : grad * negative_slope
        return np.where(x > 0, grad_out, grad_out * x.dtype.type(negative_slope))

    @op("layers")
    def gelu(self, x, approximate):
        """x * Phi(x) (``'none'``: the normal CDF through erf) or its tanh
        approximation (``'tanh'``), in float64, rounded once to x's dtype."""
        x64 = x.astype(np.float64)
        if approximate == "tanh":
            cdf = 0.5 * (1 + np.tanh(_SQRT_2_OVER_PI * (x64 + _GELU_KAPPA * x64 ** 3)))
        else:
            cdf = 0.5 * (1 + _erf(x64 * _SQRT_HALF))
        return (x64 * cdf).astype(x.dtype)

    @op("layers")
    def gelu_backward(self, grad_out, x, approximate):
        """grad_out * gelu'(x), torch's formulas, in float64, rounded once."""
        x64 = x.astype(np.float64)
        if approximate == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (x64 + _GELU_KAPPA * x64 ** 3))
            d_inner = _SQRT_2_OVER_PI * (1 + 3 * _GELU_KAPPA * x64 * x64)
            grad = 0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * d_inner
        else:
            grad = 0.5 * (1 + _erf(x64 * _SQRT_HALF)) + \
                x64 * np.exp(-0.5 * x64 * x64) * _INV_SQRT_2PI
        return (grad_out * grad).astype(x.dtype)

    @op("layers")
    def silu(self, x):
        """x * sigmoid(x) = x / (1 + exp(-x)), in float64, rounded once to x's dtype."""
        x64 = x.astype(np.float64)
        return (x64 / (1 + np.exp(-x64))).astype(x.dtype)

    @op("layers")
    def silu_backward(self, grad_out, x):
        """grad_out * s * (1 + x * (1 - s)), s = sigmoid(x) (torch's formula)."""
        x64 = x.astype(np.float64)
        s = 1 / (1 + np.exp(-x64))
        return (grad_out * (s * (1 + x64 * (1 - s)))).astype(x.dtype)

    @op("layers")
    def sigmoid(self, x):
        return 1 / (1 + np.exp(-x))

    @op("layers")
    def sigmoid_backward(self, grad_out, y):
        return grad_out * (1 - y) * y

    @op("layers")
    def tanh(self, x):
        return np.tanh(x)

    @op("layers")
    def tanh_backward(self, grad_out, y):
        return grad_out * (1 - y * y)

    @op("layers")
    def softmax(self, x):
        """Row-wise softmax of x (rows, n)."""
        if x.shape[1] == 0:
            return x.copy()
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    @op("layers")
    def softmax_backward(self, grad_out, y):
        """grad_x = y * (grad_out - sum(grad_out * y)) per row."""
        return y * (grad_out - (grad_out * y).sum(axis=1, keepdims=True))

    @op("layers")
    def log_softmax(self, x):
        """Row-wise log-softmax of x (rows, n)."""
        if x.shape[1] == 0:
            return x.copy()
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    @op("layers")
    def log_softmax_backward(self, grad_out, y):
        """grad_x = grad_out - exp(y) * sum(grad_out) per row."""
        return grad_out - np.exp(y) * grad_out.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------ convolution
    @op("layers")
    def conv2d(self, x, weight, bias, stride, padding, dilation):
        """x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> (N, O, Ho, Wo).

        stride, padding, dilation are (h, w) pairs. Lowered to im2col plus one
        BLAS GEMM per sample (``np.matmul`` over the batch), in x's dtype.
        """
        n, o = x.shape[0], weight.shape[0]
        ho, wo = conv_output_size(x.shape, weight.shape[2:], stride, padding, dilation)
        cols = im2col(x, weight.shape[2:], stride, padding, dilation, (ho, wo))
        out = np.matmul(weight.reshape(o, -1), cols)
        if bias is not None:
            out += bias[:, None]
        return out.reshape(n, o, ho, wo)

    @op("layers")
    def conv2d_backward(self, grad_out, x, weight, stride, padding, dilation, has_bias):
        """grad_out (N, O, Ho, Wo) -> (grad_x (N, C, H, W), grad_weight (O, C, kh, kw),
        grad_bias (O,) or None): two GEMMs and col2im (the transpose of im2col)."""
        n, o = x.shape[0], weight.shape[0]
        ho, wo = grad_out.shape[2:]
        g = grad_out.reshape(n, o, ho * wo)
        cols = im2col(x, weight.shape[2:], stride, padding, dilation, (ho, wo))
        grad_weight = np.tensordot(g, cols, axes=([0, 2], [0, 2])).reshape(weight.shape)
        grad_cols = np.matmul(weight.reshape(o, -1).T, g)
        grad_x = col2im(grad_cols, x.shape, weight.shape[2:], stride, padding, dilation, (ho, wo))
        grad_bias = grad_out.sum(axis=(0, 2, 3)) if has_bias else None
        return grad_x, grad_weight.astype(x.dtype, copy=False), grad_bias

    # ---------------------------------------------------------------- pooling
    @op("layers")
    def max_pool2d(self, x, kernel_size, stride, padding):
        """x (N, C, H, W) -> (N, C, Ho, Wo): the maximum of each window; padding
        never wins, a NaN in a window gives NaN (torch's CPU kernel)."""
        return _max_pool_argmax(x, kernel_size, stride, padding)[0]

    @op("layers")
    def max_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        """Each window's grad_out goes to the element :func:`max_pool2d` picked
        (the first maximum; the last NaN; the window's first element when all are
        -inf), accumulated where windows overlap."""
        _, idx = _max_pool_argmax(x, kernel_size, stride, padding)
        n, c, h, w = x.shape
        grad = np.zeros((n * c, h * w), np.float64)
        rows = np.repeat(np.arange(n * c), idx.shape[2] * idx.shape[3])
        np.add.at(grad, (rows, idx.reshape(-1)), grad_out.reshape(-1))
        return grad.astype(x.dtype).reshape(x.shape)

    @op("layers")
    def avg_pool2d(self, x, kernel_size, stride, padding):
        """x (N, C, H, W) -> (N, C, Ho, Wo): window sums over kh * kw, padding
        counted as zeros (torch's count_include_pad=True), summed in float64."""
        kh, kw = kernel_size
        ho, wo = conv_output_size(x.shape, kernel_size, stride, padding, (1, 1))
        win = _windows(x.astype(np.float64), kernel_size, stride, padding, (1, 1), (ho, wo))
        return (win.sum(axis=(2, 3)) / (kh * kw)).astype(x.dtype)

    @op("layers")
    def avg_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        """grad_out / (kh * kw) spread over each window (accumulated in float64)."""
        kh, kw = kernel_size
        n, c = x.shape[:2]
        ho, wo = grad_out.shape[2:]
        g = np.broadcast_to((grad_out.astype(np.float64) / (kh * kw))[:, :, None, None],
                            (n, c, kh, kw, ho, wo)).reshape(n, c * kh * kw, ho * wo)
        return col2im(g, x.shape, kernel_size, stride, padding, (1, 1), (ho, wo)).astype(x.dtype)

    # ---------------------------------------------------------- normalization
    @op("layers")
    def batch_norm(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        """x (N, C, L) -> (N, C, L), statistics per channel over N and L.

        Training: normalizes with the batch mean and biased variance, and updates
        ``running_mean``/``running_var`` (C,) in place when given, with the
        unbiased variance: ``r = (1 - momentum) r + momentum * stat`` (torch).
        Evaluation: normalizes with the running statistics. Statistics and the
        affine map in float64, rounded once.
        """
        x64 = x.astype(np.float64)
        if training:
            mean, var = _channel_stats(x64)
            if running_mean is not None and x.size:  # an empty batch leaves them (torch)
                update_running_stats(running_mean, running_var, mean, var,
                                     x.shape[0] * x.shape[2], momentum)
        else:
            mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        scale, shift = batch_norm_affine(mean, var, weight, bias, eps)
        return (x64 * scale[:, None] + shift[:, None]).astype(x.dtype)

    @op("layers")
    def batch_norm_backward(self, grad_out, x, weight, eps):
        """Training-mode gradients, x and grad_out (N, C, L) -> (grad_x, grad_weight
        (C,) or None, grad_bias (C,) or None); None when weight is None (no affine).

        ``grad_x = w / sigma * (g - mean(g) - xhat * mean(g * xhat))`` per channel,
        statistics recomputed from x (torch's batch_norm_backward), in float64."""
        x64, g = x.astype(np.float64), grad_out.astype(np.float64)
        mean, var = _channel_stats(x64)
        invstd = 1 / np.sqrt(var + eps)
        xhat = (x64 - mean[:, None]) * invstd[:, None]
        sum_g = g.sum(axis=(0, 2))
        sum_gx = (g * xhat).sum(axis=(0, 2))
        m = x.shape[0] * x.shape[2]
        k = invstd if weight is None else invstd * weight
        grad_x = k[:, None] * (g - (sum_g / m)[:, None] - xhat * (sum_gx / m)[:, None])
        if weight is None:
            return grad_x.astype(x.dtype), None, None
        return grad_x.astype(x.dtype), sum_gx.astype(x.dtype), sum_g.astype(x.dtype)

    @op("layers")
    def layer_norm(self, x, weight, bias, eps):
        """x (rows, n) normalized per row (biased variance), then ``* weight + bias``
        (each (n,) or None); in float64, rounded once (torch.nn.functional.layer_norm)."""
        x64 = x.astype(np.float64)
        mean, var = _row_stats(x64)
        y = (x64 - mean) / np.sqrt(var + eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y.astype(x.dtype)

    @op("layers")
    def layer_norm_backward(self, grad_out, x, weight, eps):
        """x, grad_out (rows, n) -> (grad_x, grad_weight (n,) or None, grad_bias
        (n,) or None); None when weight is None. In float64, rounded once."""
        x64, g = x.astype(np.float64), grad_out.astype(np.float64)
        n = x.shape[1]
        mean, var = _row_stats(x64)
        invstd = 1 / np.sqrt(var + eps)
        xhat = (x64 - mean) * invstd
        gw = g if weight is None else g * weight
        grad_x = invstd * (gw - gw.sum(axis=1, keepdims=True) / n
                           - xhat * (gw * xhat).sum(axis=1, keepdims=True) / n) if n else gw
        if weight is None:
            return grad_x.astype(x.dtype), None, None
        return (grad_x.astype(x.dtype), (g * xhat).sum(axis=0).astype(x.dtype),
                g.sum(axis=0).astype(x.dtype))

    # ------------------------------------------------------ dropout, embedding
    @op("layers")
    def dropout(self, x, p, seed):
        """Training-mode dropout of x (any shape): ``(y, mask)``.

        ``mask[i]`` (flat C order) is :func:`dropout_keep` of ``(seed, i)``: a
        counter-based hash, so every backend draws the same mask. Kept values
        are multiplied by ``1 / (1 - p)`` (rounded to x's dtype), dropped ones by
        0 (so NaN stays NaN, as torch's ``input * noise``).
        """
        mask = dropout_keep(seed, x.size, p).reshape(x.shape)
        return x * np.where(mask, dropout_scale(p, x.dtype), x.dtype.type(0)), mask

    @op("layers")
    def dropout_backward(self, grad_out, mask, p):
        """grad_out * (mask ? 1 / (1 - p) : 0)."""
        return grad_out * np.where(mask, dropout_scale(p, grad_out.dtype), grad_out.dtype.type(0))

    @op("layers")
    def embedding(self, indices, weight):
        """indices (n,) int64 in range, weight (num, dim) -> weight[indices] (n, dim)."""
        return weight[indices]

    @op("layers")
    def embedding_backward(self, grad_out, indices, num_embeddings):
        """grad_out (n, dim), indices (n,) -> grad_weight (num_embeddings, dim):
        rows of repeated indices accumulate (in float64, rounded once)."""
        grad = np.zeros((num_embeddings, grad_out.shape[1]), np.float64)
        np.add.at(grad, indices, grad_out)
        return grad.astype(grad_out.dtype)

    # ------------------------------------------------------------------ losses
    @op("losses")
    def mse_loss(self, input, target, reduction):
        d = input - target
        return _reduce(d * d, reduction)

    @op("losses")
    def mse_loss_grad(self, input, target, reduction):
        d = input - target
        scale = _grad_scale(reduction, input.size, 2.0)
        return (d * input.dtype.type(scale)).astype(input.dtype, copy=False)

    @op("losses")
    def l1_loss(self, input, target, reduction):
        return _reduce(np.abs(input - target), reduction)

    @op("losses")
    def l1_loss_grad(self, input, target, reduction):
        """scale * sign(d), 0 where d is 0 or NaN (torch's sign of NaN is 0)."""
        d = input - target
        s = input.dtype.type(_grad_scale(reduction, input.size))
        zero = input.dtype.type(0)
        return np.where(d > 0, s, np.where(d < 0, -s, zero))

    @op("losses")
    def huber_loss(self, input, target, reduction, delta):
        """0.5*z**2 where z = |d| < delta, else delta*(z - 0.5*delta), in the input dtype as torch."""
        t = input.dtype.type
        z = np.abs(input - target)
        return _reduce(np.where(z < t(delta), t(0.5) * z * z, t(delta) * (z - t(0.5 * delta))),
                       reduction)

    @op("losses")
    def huber_loss_grad(self, input, target, reduction, delta):
        """scale * d clipped to [-delta, delta]: torch's branches (d NaN gives NaN)."""
        t = input.dtype.type
        d = input - target
        s = t(_grad_scale(reduction, input.size))
        sd = s * t(delta)
        return np.where(d <= -t(delta), -sd, np.where(d >= t(delta), sd, s * d))

    @staticmethod
    def _target_weights(input, target, weight, ignore_index):
        """Kept-row mask, safe class indices, class weights and per-row target weights."""
        keep = target != ignore_index
        safe_t = np.where(keep, target, 0)
        w = np.ones(input.shape[1], input.dtype) if weight is None else weight
        wt = np.where(keep, w[safe_t], 0).astype(input.dtype)
        return keep, safe_t, w, wt

    def _ce_parts(self, input, target, weight, ignore_index, label_smoothing):
        """log-probabilities, per-row target weights and the kept-row mask."""
        keep, safe_t, w, wt = self._target_weights(input, target, weight, ignore_index)
        return self.log_softmax(input), keep, safe_t, w, wt

    @op("losses")
    def cross_entropy(self, input, target, weight, ignore_index, reduction, label_smoothing):
        """input (N, C) logits, target (N,) int64 -> loss (float, or (N,) for 'none').

        As torch.nn.functional.cross_entropy: per row
        (1-eps) * w[t] * -logp[t] + eps/C * sum_c w[c] * -logp[c], ignored rows 0;
        'mean' divides by the summed target weights of the kept rows.
        """
        n, c = input.shape
        logp, keep, safe_t, w, wt = self._ce_parts(input, target, weight, ignore_index,
                                                   label_smoothing)
        # Ignored rows contribute exactly 0, even when their logits are NaN.
        nll = np.where(keep, -logp[np.arange(n), safe_t] * wt, 0)
        loss = (1 - label_smoothing) * nll
        if label_smoothing > 0:
            smooth = -(logp * w).sum(axis=1)
            loss = loss + (label_smoothing / c) * np.where(keep, smooth, 0)
        loss = loss.astype(input.dtype, copy=False)
        return _reduce(loss, reduction, count=wt.sum(dtype=np.float64))

    @op("losses")
    def cross_entropy_grad(self, input, target, weight, ignore_index, reduction, label_smoothing):
        """d loss / d input, (N, C); for 'none' the gradient of the summed losses."""
        n, c = input.shape
        logp, keep, safe_t, w, wt = self._ce_parts(input, target, weight, ignore_index,
                                                   label_smoothing)
        p = np.exp(logp)
        onehot = np.zeros_like(input)
        onehot[np.arange(n), safe_t] = 1
        grad = (1 - label_smoothing) * wt[:, None] * (p - onehot)
        if label_smoothing > 0:
            grad = grad + (label_smoothing / c) * (w.sum() * p - w)
        if reduction == "mean":
            grad = grad / wt.sum(dtype=np.float64)
        # Ignored rows get exactly 0, also when every row is ignored (0/0 above), as torch.
        return np.where(keep[:, None], grad, 0).astype(input.dtype, copy=False)

    @op("losses")
    def cross_entropy_and_grad(self, input, target, weight, ignore_index, reduction,
                               label_smoothing):
        """(cross_entropy, cross_entropy_grad) of the same arguments, from one call."""
        args = (input, target, weight, ignore_index, reduction, label_smoothing)
        return self.cross_entropy(*args), self.cross_entropy_grad(*args)

    @op("losses")
    def binary_cross_entropy(self, input, target, weight, reduction):
        """input probabilities in [0, 1]; weight None or input's shape.

        torch's CPU kernel: ``(t - 1) * max(log1p(-x), -100) - t * max(log(x), -100)``,
        times weight, in the input dtype.
        """
        t = input.dtype.type
        loss = ((target - t(1)) * np.maximum(np.log1p(-input), t(-100))
                - target * np.maximum(np.log(input), t(-100)))
        if weight is not None:
            loss = loss * weight
        return _reduce(loss, reduction)

    @op("losses")
    def binary_cross_entropy_grad(self, input, target, weight, reduction):
        """``(x - t) / max(x * (1 - x), eps)`` times weight, as torch's backward kernel.

        torch's eps is 1e-12 rounded to float32 (9.999999960e-13), in float64 too.
        """
        t = input.dtype.type
        grad = (input - target) / np.maximum((t(1) - input) * input, t(BCE_EPS))
        if weight is not None:
            grad = grad * weight
        return grad * t(_grad_scale(reduction, input.size))

    @op("losses")
    def binary_cross_entropy_with_logits(self, input, target, weight, reduction, pos_weight):
        """input logits; weight and pos_weight None or input's shape.

        torch's formula: ``(1 - t) * x - lw * logsigmoid(x)`` with
        ``lw = 1 + (pos_weight - 1) * t`` and the stable
        ``logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))``; times weight.
        """
        t = input.dtype.type
        log_sigmoid = np.minimum(input, t(0)) - np.log1p(np.exp(-np.abs(input)))
        if pos_weight is not None:
            log_sigmoid = log_sigmoid * ((pos_weight - t(1)) * target + t(1))
        loss = (t(1) - target) * input - log_sigmoid
        if weight is not None:
            loss = loss * weight
        return _reduce(loss, reduction)

    @op("losses")
    def binary_cross_entropy_with_logits_grad(self, input, target, weight, reduction,
                                              pos_weight):
        """``sigmoid(x) - t``, or ``(pw*t + 1 - t) * sigmoid(x) - pw*t``; times weight."""
        t = input.dtype.type
        sig = t(1) / (t(1) + np.exp(-input))
        if pos_weight is None:
            grad = sig - target
        else:
            pt = pos_weight * target
            grad = (pt + t(1) - target) * sig - pt
        if weight is not None:
            grad = grad * weight
        return grad * t(_grad_scale(reduction, input.size))

    @op("losses")
    def nll_loss(self, input, target, weight, ignore_index, reduction):
        """input (N, C) log-probabilities, target (N,) -> ``-w[t] * input[i, t]`` per row.

        Ignored rows give exactly 0; 'mean' divides by the summed ``w[t]`` of
        the kept rows, as torch.nn.functional.nll_loss.
        """
        keep, safe_t, _, wt = self._target_weights(input, target, weight, ignore_index)
        picked = input[np.arange(input.shape[0]), safe_t]
        loss = np.where(keep, -wt * picked, 0).astype(input.dtype, copy=False)
        return _reduce(loss, reduction, count=wt.sum(dtype=np.float64))

    @op("losses")
    def nll_loss_grad(self, input, target, weight, ignore_index, reduction):
        """``-w[t] * coef`` at each kept row's target, 0 elsewhere; coef = 1/sum(w[t]) for 'mean'."""
        keep, safe_t, _, wt = self._target_weights(input, target, weight, ignore_index)
        coef = 1.0
        if reduction == "mean":
            with np.errstate(divide="ignore"):
                coef = np.float64(1.0) / wt.sum(dtype=np.float64)
        grad = np.zeros_like(input)
        rows = np.flatnonzero(keep)
        grad[rows, safe_t[rows]] = -wt[rows] * input.dtype.type(coef)
        return grad

    @staticmethod
    def _kl_scale(input, reduction):
        """The factor of the summed loss: 1/numel for 'mean', 1/batch for 'batchmean'."""
        if reduction == "mean":
            return input.size
        if reduction == "batchmean" and input.ndim:
            return input.shape[0]
        return None

    @op("losses")
    def kl_div(self, input, target, reduction, log_target):
        """Pointwise ``xlogy(t, t) - t * x`` (``exp(t) * (t - x)`` with log_target), as torch.

        'batchmean' divides the sum by ``input.shape[0]`` (a 0-d input: by 1).
        """
        t = input.dtype.type
        if log_target:
            loss = np.exp(target) * (target - input)
        else:
            # xlogy(t, t): 0 where t == 0 (NaN stays NaN, t < 0 gives NaN).
            loss = np.where(target == t(0), t(0), target * np.log(target)) - target * input
        if reduction in ("none", "sum"):
            return _reduce(loss, reduction)
        return _reduce(loss, "mean", count=self._kl_scale(input, reduction))

    @op("losses")
    def kl_div_grad(self, input, target, reduction, log_target):
        """``-t`` (``-exp(t)`` with log_target), scaled as the reduction."""
        t = input.dtype.type
        count = self._kl_scale(input, reduction)
        scale = t(1.0 / count) if count else t(1)
        return (np.exp(target) if log_target else target) * -scale

    # ------------------------------------------------------------------- optim
    @op("optim")
    def sgd_step(self, param, grad, momentum_buffer, step, lr, momentum, dampening,
                 weight_decay, nesterov, maximize):
        """torch.optim.SGD single-tensor update, in place."""
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = g + weight_decay * param
        if momentum != 0:
            if step == 1:
                momentum_buffer[...] = g
            else:
                momentum_buffer *= momentum
                momentum_buffer += (1 - dampening) * g
            g = g + momentum * momentum_buffer if nesterov else momentum_buffer
        param -= lr * g

    @op("optim")
    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr,
                  beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  decoupled_weight_decay):
        """torch.optim.Adam / AdamW single-tensor update, in place."""
        g = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled_weight_decay:
                param *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * param
        exp_avg += (1 - beta1) * (g - exp_avg)          # torch's lerp_(g, 1 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        if amsgrad:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            denom = np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        param -= step_size * (exp_avg / denom)

    @op("optim")
    def rmsprop_step(self, param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha,
                     eps, weight_decay, momentum, centered, maximize):
        """torch.optim.RMSprop single-tensor update, in place."""
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = g + weight_decay * param
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if centered:
            grad_avg += (1 - alpha) * (g - grad_avg)    # torch's lerp_(g, 1 - alpha)
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = np.sqrt(square_avg) + eps
        if momentum > 0:
            momentum_buffer *= momentum
            momentum_buffer += g / avg
            param -= lr * momentum_buffer
        else:
            param -= lr * (g / avg)

    @op("optim")
    def adagrad_step(self, param, grad, state_sum, step, lr, lr_decay, weight_decay, eps,
                     maximize):
        """torch.optim.Adagrad single-tensor (dense) update, in place."""
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = g + weight_decay * param
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum += g * g
        param -= clr * (g / (np.sqrt(state_sum) + eps))

    # ----------------------------------------------------------- preprocessing
    @op("preprocessing")
    def column_stats(self, X):
        """NaN-ignoring per-column (count, mean, M2) of X (n, F), all float64 (F,).

        M2 is the sum of squared deviations from the mean, so the statistics of
        two chunks merge exactly (Chan et al.); a column with no observed value
        has count 0, mean 0 and M2 0.
        """
        X64 = X.astype(np.float64, copy=False)
        observed = ~np.isnan(X64)
        count = observed.sum(axis=0).astype(np.float64)
        total = np.where(observed, X64, 0).sum(axis=0)
        mean = np.where(count > 0, total / count, 0.0)
        dev = np.where(observed, X64 - mean, 0)
        m2 = (dev * dev).sum(axis=0)
        return count, mean, m2

    @op("preprocessing")
    def standardize(self, X, offset, scale):
        """(X - offset) / scale, column-wise; X (n, F), offset and scale float64 (F,):
        ``(X', n_inf)``.

        Computed in float64 and returned in X's dtype, as scikit-learn's
        in-place ``X -= mean_; X /= scale_`` does. NaN stays NaN. ``n_inf``
        (int) counts the +-inf entries of X: the transform's finite check, made
        in the same pass.
        """
        return ((X - offset) / scale).astype(X.dtype, copy=False), _count_inf(X)

    @op("preprocessing")
    def unstandardize(self, X, offset, scale):
        """X * scale + offset, column-wise, and the count of +-inf entries of X: the
        inverse of ``standardize``."""
        return (X * scale + offset).astype(X.dtype, copy=False), _count_inf(X)


    @op("preprocessing")
    def column_minmax(self, X):
        """NaN-ignoring per-column (min, max) of X (n, F), both float64 (F,).

        A column with no observed value gives (+inf, -inf), the identities of
        ``fmin``/``fmax``, so the results of chunks merge with ``np.fmin`` /
        ``np.fmax``; an inf in the data shows as min -inf or max +inf.
        """
        lo = np.fmin.reduce(X, axis=0, initial=np.inf)
        hi = np.fmax.reduce(X, axis=0, initial=-np.inf)
        return lo.astype(np.float64), hi.astype(np.float64)

    @op("preprocessing")
    def column_quantiles(self, X, q):
        """NaN-ignoring per-column quantiles of X (n, F) at the fractions q (k,) in
        [0, 1]: float64 (k, F), NaN for a column with no observed value.

        NumPy's default ('linear') method, as ``np.nanquantile``: at virtual
        index ``h = q * (m - 1)`` of the m sorted observed values,
        ``a + (b - a) * g`` with ``a, b`` the values at ``floor(h)``,
        ``floor(h) + 1`` and ``g = h - floor(h)``, written ``b - (b - a) * (1 - g)``
        when ``g >= 0.5`` (NumPy's lerp). The accelerated backends select
        (no full sort per column).
        """
        if X.shape[0] == 0:  # np.nanquantile collapses the q axis of an empty X
            return np.full((q.size, X.shape[1]), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            out = np.nanquantile(X.astype(np.float64), q, axis=0)
        return out.reshape(q.size, X.shape[1])

    @op("preprocessing")
    def unique_counts(self, values):
        """Sorted distinct values of a 1-D int64 or float64 array and how often each
        occurs (int64): ``np.unique(values, return_counts=True)``; every NaN counts
        as one value, sorted last (NumPy's ``equal_nan``)."""
        return np.unique(values, return_counts=True)

    @op("preprocessing")
    def encode_values(self, values, categories):
        """Position of each value in ``categories`` (sorted distinct values of the
        same dtype, NaN last if present) as int64, -1 where absent; NaN finds a
        NaN category. values (n,) -> (n,)."""
        if categories.size == 0:
            return np.full(values.shape, -1, dtype=np.int64)
        pos = np.searchsorted(categories, values)  # NaN sorts last, as in categories
        hit = categories[np.minimum(pos, categories.size - 1)]
        found = (hit == values) | (np.isnan(hit) & np.isnan(values) if values.dtype.kind == "f"
                                   else False)
        return np.where(found, pos, -1).astype(np.int64)

    @op("preprocessing")
    def fill_missing(self, X, missing_value, fill):
        """X (n, F) float32/float64 with its missing entries replaced column-wise by
        fill (F,) float64 (rounded to X's dtype): ``(X', n_bad)``.

        An entry is missing when it is NaN (``missing_value`` NaN) or equals
        ``missing_value``; ``n_bad`` (int) counts the entries of X that are not
        finite (NaN, +-inf) and not missing, so one pass both imputes and makes
        the finite check scikit-learn's SimpleImputer makes.
        """
        missing = np.isnan(X) if np.isnan(missing_value) else X == missing_value
        out = np.where(missing, fill.astype(X.dtype), X)
        return out, int(np.count_nonzero(~np.isfinite(X) & ~missing))

    @op("preprocessing")
    def one_hot(self, indices, n_columns, dtype):
        """Dense one-hot rows: indices (n, F) int64 -> (n, n_columns) of ``dtype``
        (float32 or float64), 1 at ``[i, indices[i, j]]`` for every j and 0
        elsewhere. An index outside ``[0, n_columns)`` (-1: an ignored unknown or
        dropped category) sets nothing."""
        out = np.zeros((indices.shape[0], n_columns), dtype)
        rows = np.broadcast_to(np.arange(indices.shape[0])[:, None], indices.shape)
        hit = (indices >= 0) & (indices < n_columns)
        out[rows[hit], indices[hit]] = 1
        return out

    @op("preprocessing")
    def normalize_rows(self, X, norm):
        """Each row of X (n, F) divided by its norm: ``'l1'`` (sum of |x|), ``'l2'``
        or ``'max'`` (max |x|), as sklearn.preprocessing.normalize; a row whose
        norm is below ``10 * eps`` of X's dtype is left as it is. Norms are
        accumulated in float64 and rounded to X's dtype before dividing."""
        a = np.abs(X).astype(np.float64)
        if norm == "l1":
            norms = a.sum(axis=1)
        elif norm == "l2":
            norms = np.sqrt((a * a).sum(axis=1))
        else:
            norms = a.max(axis=1, initial=0.0)
        norms = norms.astype(X.dtype)
        norms[norms < 10 * np.finfo(X.dtype).eps] = 1
        return X / norms[:, None]


    @op("preprocessing")
    def polynomial_features(self, X, left, right, keep):
        """Monomials of X's columns: X (n, F) -> (n, len(keep)) in X's dtype.

        Monomial k of the full list is ``M[:, left[k]] * X[:, right[k]]``,
        where ``left[k] == -1`` stands for 1 and ``right[k] == -1`` for no
        factor (so monomial 0 is the constant); the output holds the
        monomials ``keep``, in order (as sklearn.preprocessing.PolynomialFeatures).
        """
        full = np.empty((X.shape[0], left.size), X.dtype)
        for k in range(left.size):
            base = full[:, left[k]] if left[k] >= 0 else X.dtype.type(1)
            full[:, k] = base * X[:, right[k]] if right[k] >= 0 else base
        return np.ascontiguousarray(full[:, keep])


ReferenceBackend.OPS = {
    fn._fastml_op: name
    for name, fn in vars(ReferenceBackend).items()
    if callable(fn) and hasattr(fn, "_fastml_op")
}


def fallback_ops(cls) -> dict:
    """Ops of ``cls`` that are not overridden, i.e. run the reference."""
    return {q: m for q, m in ReferenceBackend.OPS.items()
            if getattr(cls, m) is getattr(ReferenceBackend, m)}


def signature_mismatches(cls) -> list[str]:
    """Overrides whose signature differs from the reference's."""
    bad = []
    for q, m in ReferenceBackend.OPS.items():
        mine, ref = getattr(cls, m), getattr(ReferenceBackend, m)
        if mine is not ref and inspect.signature(mine) != inspect.signature(ref):
            bad.append(f"{q}: {inspect.signature(mine)} != {inspect.signature(ref)}")
    return bad
