"""Cython backend: the compiled kernels in fastml._cext overriding the reference ops.

Each method allocates the output, flattens element-wise arrays to 1-D views
(inputs arrive C-contiguous, so these are free) and passes the thread bound
``fastml.get_num_threads()`` to the kernel on every call. Per-step optimizer
scalars are computed here, once per call, in double as the reference does.
"""
import math

import numpy as np

from .._cext import _elementwise, _layers, _linear, _losses, _optim, _preprocessing, _rowwise
from .._config import get_num_threads, limit_blas_threads
from . import _conv
from .reference import (BCE_EPS, ReferenceBackend, _grad_scale, batch_norm_affine,
                        dropout_scale, dropout_threshold, op, pool_output,
                        update_running_stats)


def _flat(a):
    return a.reshape(-1)


def _vec(a):
    """Column offsets / scales as contiguous float64, as the kernels take them."""
    return np.ascontiguousarray(a, dtype=np.float64)


def _index(a):
    """Index tables as contiguous int64, as the kernels take them."""
    return np.ascontiguousarray(a, dtype=np.int64)


def _unary(kernel, x):
    out = np.empty_like(x)
    kernel(_flat(x), _flat(out), get_num_threads())
    return out


def _binary(kernel, a, b):
    out = np.empty_like(b)
    kernel(_flat(a), _flat(b), _flat(out), get_num_threads())
    return out


def _reduced(kernel, reduction, input, target, *params):
    """'sum' or 'mean' of an element-wise loss from its double-summing kernel."""
    total = kernel(_flat(input), _flat(target), *params, get_num_threads())
    if reduction == "sum":
        return total
    return total / input.size if input.size else math.nan


def _opt(a):
    """An optional element-wise weight, flattened (None stays None)."""
    return None if a is None else _flat(a)


def _elementwise_grad(kernel, input, target, scale, *params):
    out = np.empty_like(input)
    kernel(_flat(input), _flat(target), scale, *params, _flat(out), get_num_threads())
    return out


def _class_reduced(reduction, per_row, total, weight_sum):
    """A class-target loss (cross_entropy, nll_loss): the per-row losses, their sum, or the
    sum over the summed target weights ('mean'; NaN when every row is ignored)."""
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return total
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(total) / np.float64(weight_sum))


# conv2d's im2col / col2im run serially (num_threads=1): _conv runs one batch slice
# per thread.
def _im2col(x, cols, geometry):
    _layers.im2col(x, cols, geometry, 1)


def _col2im(cols, grad_x, geometry):
    _layers.col2im(cols, grad_x, geometry, 1)


_WINOGRAD = _conv.Winograd(_layers.winograd_input, _layers.winograd_output,
                           _layers.winograd_grad_output)


class CythonBackend(ReferenceBackend):
    name = "cython"

    # ------------------------------------------------------------------ layers
    @op("layers")  # quiet NumPy's matmul warnings on NaN/inf, as the reference
    def linear(self, x, weight, bias):
        limit_blas_threads()
        out = x @ weight.T
        if bias is not None:
            _linear.add_bias(out, bias)
        return out

    @op("layers")
    def linear_backward(self, grad_out, x, weight, has_bias):
        limit_blas_threads()
        grad_x = grad_out @ weight
        grad_weight = grad_out.T @ x
        grad_bias = None
        if has_bias:
            grad_bias = np.empty(weight.shape[0], x.dtype)
            _linear.column_sums(grad_out, grad_bias)
        return grad_x, grad_weight, grad_bias

    def relu(self, x):
        return _unary(_elementwise.relu, x)

    def relu_backward(self, grad_out, x):
        return _binary(_elementwise.relu_backward, grad_out, x)

    def leaky_relu(self, x, negative_slope):
        out = np.empty_like(x)
        _elementwise.leaky_relu(_flat(x), negative_slope, _flat(out), get_num_threads())
        return out

    def leaky_relu_backward(self, grad_out, x, negative_slope):
        out = np.empty_like(x)
        _elementwise.leaky_relu_backward(_flat(grad_out), _flat(x), negative_slope,
                                         _flat(out), get_num_threads())
        return out

    def gelu(self, x, approximate):
        out = np.empty_like(x)
        _elementwise.gelu(_flat(x), approximate == "tanh", _flat(out), get_num_threads())
        return out

    def gelu_backward(self, grad_out, x, approximate):
        out = np.empty_like(x)
        _elementwise.gelu_backward(_flat(grad_out), _flat(x), approximate == "tanh",
                                   _flat(out), get_num_threads())
        return out

    def silu(self, x):
        return _unary(_elementwise.silu, x)

    def silu_backward(self, grad_out, x):
        return _binary(_elementwise.silu_backward, grad_out, x)

    def sigmoid(self, x):
        return _unary(_elementwise.sigmoid, x)

    def sigmoid_backward(self, grad_out, y):
        return _binary(_elementwise.sigmoid_backward, grad_out, y)

    def tanh(self, x):
        return _unary(_elementwise.tanh, x)

    def tanh_backward(self, grad_out, y):
        return _binary(_elementwise.tanh_backward, grad_out, y)

    def softmax(self, x):
        out = np.empty_like(x)
        _rowwise.softmax(x, out, get_num_threads())
        return out

    def softmax_backward(self, grad_out, y):
        out = np.empty_like(y)
        _rowwise.softmax_backward(grad_out, y, out, get_num_threads())
        return out

    def log_softmax(self, x):
        out = np.empty_like(x)
        _rowwise.log_softmax(x, out, get_num_threads())
        return out

    def log_softmax_backward(self, grad_out, y):
        out = np.empty_like(y)
        _rowwise.log_softmax_backward(grad_out, y, out, get_num_threads())
        return out

    # ------------------------------------------------------------ convolution
    @op("layers")  # quiet NumPy's matmul warnings on NaN/inf, as the reference
    def conv2d(self, x, weight, bias, stride, padding, dilation):
        return _conv.conv2d(_im2col, x, weight, bias, stride, padding, dilation, _WINOGRAD)

    @op("layers")
    def conv2d_backward(self, grad_out, x, weight, stride, padding, dilation, has_bias):
        return _conv.conv2d_backward(_im2col, _col2im, grad_out, x, weight, stride, padding,
                                     dilation, has_bias, _WINOGRAD)

    # ---------------------------------------------------------------- pooling
    @op("layers")
    def max_pool2d(self, x, kernel_size, stride, padding):
        out = pool_output(x, kernel_size, stride, padding)
        _layers.max_pool2d(x, out, tuple(kernel_size), tuple(stride), tuple(padding),
                           get_num_threads())
        return out

    @op("layers")
    def max_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        out = np.empty_like(x)
        _layers.max_pool2d_backward(grad_out, x, out, tuple(kernel_size), tuple(stride),
                                    tuple(padding), get_num_threads())
        return out

    @op("layers")
    def avg_pool2d(self, x, kernel_size, stride, padding):
        out = pool_output(x, kernel_size, stride, padding)
        _layers.avg_pool2d(x, out, tuple(kernel_size), tuple(stride), tuple(padding),
                           get_num_threads())
        return out

    @op("layers")
    def avg_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        out = np.empty_like(x)
        _layers.avg_pool2d_backward(grad_out, out, tuple(kernel_size), tuple(stride),
                                    tuple(padding), get_num_threads())
        return out

    # ---------------------------------------------------------- normalization
    @op("layers")  # the per-channel scalars below are NumPy, as in the reference
    def batch_norm(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        c = x.shape[1]
        if training:
            mean, var = np.empty(c), np.empty(c)
            _layers.batch_norm_stats(x, mean, var, get_num_threads())
            if running_mean is not None:
                update_running_stats(running_mean, running_var, mean, var,
                                     x.shape[0] * x.shape[2], momentum)
        else:
            mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        scale, shift = batch_norm_affine(mean, var, weight, bias, eps)
        out = np.empty_like(x)
        _layers.batch_norm_apply(x, _vec(scale), _vec(shift), out, get_num_threads())
        return out

    @op("layers")
    def batch_norm_backward(self, grad_out, x, weight, eps):
        c = x.shape[1]
        mean, var, sum_g, sum_gxc = (np.empty(c) for _ in range(4))
        _layers.batch_norm_backward_stats(grad_out, x, mean, var, sum_g, sum_gxc,
                                          get_num_threads())
        invstd = 1 / np.sqrt(var + eps)
        m = x.shape[0] * x.shape[2]
        sum_gx = sum_gxc * invstd if m else np.zeros(c)  # sum(g * xhat); 0 over no values
        k = invstd if weight is None else invstd * weight
        grad_x = np.empty_like(x)
        _layers.batch_norm_backward_apply(grad_out, x, mean, invstd, _vec(k), sum_g / m,
                                          sum_gx / m, grad_x, get_num_threads())
        if weight is None:
            return grad_x, None, None
        return grad_x, sum_gx.astype(x.dtype), sum_g.astype(x.dtype)

    @op("layers")
    def layer_norm(self, x, weight, bias, eps):
        out = np.empty_like(x)
        _layers.layer_norm(x, weight, bias, eps, out, get_num_threads())
        return out

    @op("layers")
    def layer_norm_backward(self, grad_out, x, weight, eps):
        grad_x = np.empty_like(x)
        gw = gb = None
        if weight is not None:
            gw, gb = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
        _layers.layer_norm_backward(grad_out, x, weight, eps, grad_x, gw, gb, get_num_threads())
        return grad_x, gw, gb

    # ------------------------------------------------------ dropout, embedding
    @op("layers")
    def dropout(self, x, p, seed):
        out = np.empty_like(x)
        mask = np.empty(x.shape, np.bool_)
        _layers.dropout(_flat(x), seed, dropout_threshold(p), dropout_scale(p, x.dtype),
                        _flat(out), _flat(mask.view(np.uint8)), get_num_threads())
        return out, mask

    @op("layers")
    def dropout_backward(self, grad_out, mask, p):
        out = np.empty_like(grad_out)
        _layers.dropout_backward(_flat(grad_out), _flat(mask.view(np.uint8)),
                                 dropout_scale(p, grad_out.dtype), _flat(out),
                                 get_num_threads())
        return out

    @op("layers")
    def embedding(self, indices, weight):
        out = np.empty((indices.shape[0], weight.shape[1]), weight.dtype)
        _layers.embedding(_index(indices), weight, out, get_num_threads())
        return out

    @op("layers")
    def embedding_backward(self, grad_out, indices, num_embeddings):
        out = np.empty((num_embeddings, grad_out.shape[1]), grad_out.dtype)
        _layers.embedding_backward(grad_out, _index(indices), out, get_num_threads())
        return out

    # ------------------------------------------------------------------ losses
    def mse_loss(self, input, target, reduction):
        if reduction == "none":
            return _binary(_losses.mse_none, input, target)
        return _reduced(_losses.mse_sum, reduction, input, target)

    def mse_loss_grad(self, input, target, reduction):
        return _elementwise_grad(_losses.mse_grad, input, target,
                                 _grad_scale(reduction, input.size, 2.0))

    def l1_loss(self, input, target, reduction):
        if reduction == "none":
            return _binary(_losses.l1_none, input, target)
        return _reduced(_losses.l1_sum, reduction, input, target)

    def l1_loss_grad(self, input, target, reduction):
        return _elementwise_grad(_losses.l1_grad, input, target,
                                 _grad_scale(reduction, input.size))

    def huber_loss(self, input, target, reduction, delta):
        if reduction == "none":
            out = np.empty_like(input)
            _losses.huber_none(_flat(input), _flat(target), delta, _flat(out), get_num_threads())
            return out
        return _reduced(_losses.huber_sum, reduction, input, target, delta)

    def huber_loss_grad(self, input, target, reduction, delta):
        return _elementwise_grad(_losses.huber_grad, input, target,
                                 _grad_scale(reduction, input.size), delta)

    @staticmethod
    def _class_weight(input, weight):
        return np.ones(input.shape[1], input.dtype) if weight is None else weight

    def cross_entropy(self, input, target, weight, ignore_index, reduction, label_smoothing):
        out = np.empty(input.shape[0], input.dtype)
        total, wsum = _losses.cross_entropy(input, target, self._class_weight(input, weight),
                                            ignore_index, label_smoothing, out,
                                            get_num_threads())
        return _class_reduced(reduction, out, total, wsum)

    @staticmethod
    def _ce_grad_coef(target, w, ignore_index, reduction):
        """The gradient's scale: 1 / sum of the kept w[target] for 'mean', else 1."""
        if reduction != "mean":
            return 1.0
        with np.errstate(divide="ignore"):
            return float(1.0 / np.float64(_losses.target_weight_sum(target, w, ignore_index)))

    def cross_entropy_grad(self, input, target, weight, ignore_index, reduction,
                           label_smoothing):
        w = self._class_weight(input, weight)
        out = np.empty_like(input)
        _losses.cross_entropy_grad(input, target, w, ignore_index, label_smoothing,
                                   self._ce_grad_coef(target, w, ignore_index, reduction), out,
                                   get_num_threads())
        return out

    def cross_entropy_and_grad(self, input, target, weight, ignore_index, reduction,
                               label_smoothing):
        w = self._class_weight(input, weight)
        loss = np.empty(input.shape[0], input.dtype)
        grad = np.empty_like(input)
        total, wsum = _losses.cross_entropy_and_grad(
            input, target, w, ignore_index, label_smoothing,
            self._ce_grad_coef(target, w, ignore_index, reduction), loss, grad,
            get_num_threads())
        return _class_reduced(reduction, loss, total, wsum), grad

    def binary_cross_entropy(self, input, target, weight, reduction):
        if reduction == "none":
            out = np.empty_like(input)
            _losses.bce_none(_flat(input), _flat(target), _opt(weight), _flat(out),
                             get_num_threads())
            return out
        return _reduced(_losses.bce_sum, reduction, input, target, _opt(weight))

    def binary_cross_entropy_grad(self, input, target, weight, reduction):
        return _elementwise_grad(_losses.bce_grad, input, target,
                                 _grad_scale(reduction, input.size), _opt(weight), BCE_EPS)

    def binary_cross_entropy_with_logits(self, input, target, weight, reduction, pos_weight):
        if reduction == "none":
            out = np.empty_like(input)
            _losses.bce_logits_none(_flat(input), _flat(target), _opt(weight), _opt(pos_weight),
                                    _flat(out), get_num_threads())
            return out
        return _reduced(_losses.bce_logits_sum, reduction, input, target, _opt(weight),
                        _opt(pos_weight))

    def binary_cross_entropy_with_logits_grad(self, input, target, weight, reduction,
                                              pos_weight):
        return _elementwise_grad(_losses.bce_logits_grad, input, target,
                                 _grad_scale(reduction, input.size), _opt(weight),
                                 _opt(pos_weight))

    def nll_loss(self, input, target, weight, ignore_index, reduction):
        out = np.empty(input.shape[0], input.dtype) if reduction == "none" else None
        total, wsum = _losses.nll_loss(input, target, self._class_weight(input, weight),
                                       ignore_index, out, get_num_threads())
        return _class_reduced(reduction, out, total, wsum)

    def nll_loss_grad(self, input, target, weight, ignore_index, reduction):
        w = self._class_weight(input, weight)
        coef = 1.0
        if reduction == "mean":
            with np.errstate(divide="ignore"):
                coef = float(1.0 / np.float64(_losses.target_weight_sum(target, w, ignore_index)))
        out = np.zeros(input.shape, input.dtype)  # calloc: zero pages, not a fill
        _losses.nll_loss_grad(target, w, ignore_index, coef, out, get_num_threads())
        return out

    def kl_div(self, input, target, reduction, log_target):
        if reduction == "none":
            out = np.empty_like(input)
            _losses.kl_div_none(_flat(input), _flat(target), log_target, _flat(out),
                                get_num_threads())
            return out
        total = _losses.kl_div_sum(_flat(input), _flat(target), log_target, get_num_threads())
        if reduction == "sum":
            return total
        count = self._kl_scale(input, reduction) or input.size  # 'batchmean' of a 0-d: 1
        return total / count if count else math.nan

    def kl_div_grad(self, input, target, reduction, log_target):
        count = self._kl_scale(input, reduction)
        out = np.empty_like(target)
        _losses.kl_div_grad(_flat(target), 1.0 / count if count else 1.0, log_target,
                            _flat(out), get_num_threads())
        return out

    # ------------------------------------------------------------------- optim
    def sgd_step(self, param, grad, momentum_buffer, step, lr, momentum, dampening,
                 weight_decay, nesterov, maximize):
        _optim.sgd_step(_flat(param), _flat(grad),
                        None if momentum_buffer is None else _flat(momentum_buffer),
                        lr, momentum, 1 - dampening, weight_decay, step == 1, nesterov,
                        maximize, get_num_threads())

    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr,
                  beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  decoupled_weight_decay):
        _optim.adam_step(_flat(param), _flat(grad), _flat(exp_avg), _flat(exp_avg_sq),
                         _flat(max_exp_avg_sq) if amsgrad else None,
                         1 - beta1, beta2, 1 - beta2, (1 - beta2 ** step) ** 0.5, eps,
                         lr / (1 - beta1 ** step), weight_decay, 1 - lr * weight_decay,
                         decoupled_weight_decay, amsgrad, maximize, get_num_threads())

    def rmsprop_step(self, param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha,
                     eps, weight_decay, momentum, centered, maximize):
        _optim.rmsprop_step(_flat(param), _flat(grad), _flat(square_avg),
                            _flat(momentum_buffer) if momentum > 0 else None,
                            _flat(grad_avg) if centered else None, lr, alpha, eps,
                            weight_decay, momentum, centered, maximize, get_num_threads())

    def adagrad_step(self, param, grad, state_sum, step, lr, lr_decay, weight_decay, eps,
                     maximize):
        _optim.adagrad_step(_flat(param), _flat(grad), _flat(state_sum),
                            lr / (1 + (step - 1) * lr_decay), weight_decay, eps, maximize,
                            get_num_threads())

    # ----------------------------------------------------------- preprocessing
    def column_stats(self, X):
        return _preprocessing.column_stats(X, get_num_threads())

    def standardize(self, X, offset, scale):
        out = np.empty_like(X)
        n_inf = _preprocessing.standardize(X, _vec(offset), _vec(scale), out, get_num_threads())
        return out, int(n_inf)

    def unstandardize(self, X, offset, scale):
        out = np.empty_like(X)
        n_inf = _preprocessing.unstandardize(X, _vec(offset), _vec(scale), out, get_num_threads())
        return out, int(n_inf)

    def column_minmax(self, X):
        return _preprocessing.column_minmax(X, get_num_threads())

    def column_quantiles(self, X, q):
        q = np.ascontiguousarray(q, dtype=np.float64).reshape(-1)
        return _preprocessing.column_quantiles(X, q, get_num_threads())

    _NORMS = {"l1": 0, "l2": 1, "max": 2}

    def normalize_rows(self, X, norm):
        out = np.empty_like(X)
        _preprocessing.normalize_rows(X, self._NORMS[norm], out, get_num_threads())
        return out

    def polynomial_features(self, X, left, right, keep):
        out = np.empty((X.shape[0], keep.size), X.dtype)
        _preprocessing.polynomial_features(X, _index(left), _index(right), _index(keep), out,
                                           get_num_threads())
        return out

    def unique_counts(self, values):
        return _preprocessing.unique_counts(np.ascontiguousarray(values), get_num_threads())

    def encode_values(self, values, categories):
        out = np.empty(values.shape, np.int64)
        _preprocessing.encode_values(np.ascontiguousarray(values),
                                     np.ascontiguousarray(categories), out,
                                     get_num_threads())
        return out

    def fill_missing(self, X, missing_value, fill):
        out = np.empty_like(X)
        n_bad = _preprocessing.fill_missing(X, float(missing_value), _vec(fill), out,
                                            get_num_threads())
        return out, int(n_bad)

    def one_hot(self, indices, n_columns, dtype):
        out = np.zeros((indices.shape[0], n_columns), dtype)  # calloc: lazily zeroed pages
        _preprocessing.one_hot(_index(indices), out, get_num_threads())
        return out
