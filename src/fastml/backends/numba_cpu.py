"""Numba CPU backend: njit kernels (``_numba_kernels``) overriding the reference ops.

Inputs arrive validated and C-contiguous (see ``reference``). Each kernel has
a serial and a parallel twin; the parallel one runs only above
``PARALLEL_MIN`` elements, with ``fastml.get_num_threads()`` threads applied
on every call (``numba.set_num_threads`` is per calling thread). GEMM is
BLAS through ``np.dot``.

Threading layer: numba's default order already prefers ``tbb``, then ``omp``,
both safe for concurrent launches from several threads; we don't override a
user's ``NUMBA_THREADING_LAYER``. When the layer turns out to be
``workqueue``, which aborts on concurrent launches, one thread at a time runs
the parallel twin and the others run the serial twin.
"""
from __future__ import annotations

import contextlib
import functools
import threading

import numba
import numpy as np
from numba.core import config as _numba_config

from .. import _config
from . import _conv
from ._activation_roots import root_poly, zero_tail
from . import _numba_kernels as K
from .reference import (BCE_EPS, ReferenceBackend, _grad_scale, _reduce, batch_norm_affine,
                        conv_output_size, dropout_scale, dropout_threshold, op, pool_output,
                        update_running_stats)

PARALLEL_MIN = 1 << 17  # elements; below this thread start-up costs more than it saves

_launch_lock = threading.Lock()
_layer_safe = False  # known only after the first parallel launch
_NO_SLOT_NEEDED = contextlib.nullcontext(True)  # once the layer is known safe


@contextlib.contextmanager
def _parallel_slot():
    """Yield whether this thread may launch a parallel kernel now (until the
    threading layer is known: then ``_NO_SLOT_NEEDED``)."""
    global _layer_safe
    got = _launch_lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            _layer_safe = numba.threading_layer() in ("tbb", "omp")
            _launch_lock.release()


def _run(twin, size, *args, chunked=False, parallel_min=PARALLEL_MIN):
    """Run the parallel twin for big inputs (``size >= parallel_min``) when
    allowed, else the serial one.

    ``chunked`` kernels take the number of row chunks (one per thread) last.
    """
    threads = min(_config.get_num_threads(), _numba_config.NUMBA_NUM_THREADS)
    if size >= parallel_min and threads > 1:
        with _NO_SLOT_NEEDED if _layer_safe else _parallel_slot() as ok:
            if ok:
                numba.set_num_threads(threads)
                return twin.parallel(*args, threads) if chunked else twin.parallel(*args)
    return twin.serial(*args, 1) if chunked else twin.serial(*args)


def _affine64(n, weight, bias):
    """layer_norm's weight and bias as float64 (n,) arrays, ones and zeros where None:
    the kernels compute in float64 (exact conversions, made once rather than per row;
    no copy when they already are float64); x * 1.0 is x, and x + 0.0 is x but for
    the sign of a zero."""
    w64 = np.ones(n) if weight is None else weight.astype(np.float64, copy=False)
    b64 = np.zeros(n) if bias is None else bias.astype(np.float64, copy=False)
    return w64, b64


@functools.cache
def _f32_consts(key):
    """(lo, root) of the float32 gelu ('none') / silu backward kernels (see
    ``_activation_roots``): the zero tail's threshold and the near-root polynomial."""
    f32 = np.dtype(np.float32)
    return zero_tail(f32, key)[0], root_poly(key, f32)


def _map(twin, first, *rest):
    """Element-wise kernel over flat views of the arrays (scalars pass as they
    are); output allocated once, like ``first``."""
    out = np.empty_like(first)
    flat = (a.reshape(-1) if isinstance(a, np.ndarray) else a for a in (first, *rest))
    _run(twin, first.size, *flat, out.reshape(-1))
    return out


def _reduced(twin, reduction, input, target, *consts):
    """'sum' or 'mean' of an element-wise loss from its float64-summing kernel."""
    total = _run(twin, input.size, input.reshape(-1), target.reshape(-1), *consts)
    if reduction == "sum":
        return float(total)
    return float(total / input.size) if input.size else float("nan")


def _flat(*arrays):
    return tuple(a.reshape(-1) if isinstance(a, np.ndarray) else a for a in arrays)


def _chunked_map(twin, first, *rest):
    """Chunked element-wise kernel (one chunk per thread) over flat views;
    output allocated once, like ``first``."""
    out = np.empty_like(first)
    _run(twin, first.size, *_flat(first, *rest, out), chunked=True)
    return out


def _chunked_reduced(twin, reduction, first, *rest, count=None):
    """'sum', or the sum / count ('mean': count defaults to the element count;
    NaN over zero elements), of a chunked float64-summing kernel."""
    total = _run(twin, first.size, *_flat(first, *rest), chunked=True)
    if reduction == "sum":
        return float(total)
    return float(np.float64(total) / np.float64(first.size if count is None else count))


def _rows(twin, first, *rest):
    """Row-wise kernel over (rows, n) arrays; output allocated once, like ``first``."""
    out = np.empty_like(first)
    if out.size:
        _run(twin, first.size, first, *rest, out)
    return out


def _rows_counted(twin, first, *rest):
    """Chunked row-wise kernel over (rows, n) arrays that also returns a count
    (summed over its chunks): ``(out, count)``, out allocated once, like ``first``."""
    out = np.empty_like(first)
    n = _run(twin, first.size, first, *rest, out, chunked=True) if out.size else 0
    return out, int(n)


class NumbaBackend(ReferenceBackend):
    name = "numba"

    # ------------------------------------------------------------------ layers
    @op("layers")
    def linear(self, x, weight, bias):
        _config.limit_blas_threads()
        out = np.dot(x, weight.T)
        if bias is not None:
            # Serial on purpose, here and for grad_bias: an OpenMP team between two
            # threaded BLAS calls fights BLAS's spinning workers (2x slower linear).
            K.add_bias.serial(out, bias)
        return out

    @op("layers")
    def linear_backward(self, grad_out, x, weight, has_bias):
        _config.limit_blas_threads()
        grad_x = np.dot(grad_out, weight)
        grad_weight = np.dot(grad_out.T, x)
        grad_bias = None
        if has_bias:
            grad_bias = K.column_sum.serial(grad_out, 1).astype(grad_out.dtype)
        return grad_x, grad_weight, grad_bias

    @op("layers")
    def relu(self, x):
        return _map(K.relu, x)

    @op("layers")
    def relu_backward(self, grad_out, x):
        return _map(K.relu_backward, grad_out, x)

    @op("layers")
    def leaky_relu(self, x, negative_slope):
        return _map(K.leaky_relu, x, float(negative_slope))

    @op("layers")
    def leaky_relu_backward(self, grad_out, x, negative_slope):
        return _map(K.leaky_relu_backward, grad_out, x, float(negative_slope))

    @op("layers")
    def gelu(self, x, approximate):
        if approximate == "tanh":
            return _map(K.gelu_tanh, x)
        return _map(K.gelu_erf_f32 if x.dtype == np.float32 else K.gelu_erf, x)

    @op("layers")
    def gelu_backward(self, grad_out, x, approximate):
        if approximate == "tanh":
            return _map(K.gelu_tanh_backward, grad_out, x)
        if x.dtype == np.float32:
            return _map(K.gelu_erf_backward_f32, grad_out, x, *_f32_consts("none"))
        return _map(K.gelu_erf_backward, grad_out, x)

    @op("layers")
    def silu(self, x):
        return _map(K.silu_f32 if x.dtype == np.float32 else K.silu, x)

    @op("layers")
    def silu_backward(self, grad_out, x):
        if x.dtype == np.float32:
            return _map(K.silu_backward_f32, grad_out, x, *_f32_consts("silu"))
        return _map(K.silu_backward, grad_out, x)

    @op("layers")
    def sigmoid(self, x):
        return _map(K.sigmoid, x)

    @op("layers")
    def sigmoid_backward(self, grad_out, y):
        return _map(K.sigmoid_backward, grad_out, y)

    @op("layers")
    def tanh(self, x):
        return _map(K.tanh, x)

    @op("layers")
    def tanh_backward(self, grad_out, y):
        return _map(K.tanh_backward, grad_out, y)

    @op("layers")
    def softmax(self, x):
        return _rows(K.softmax, x)

    @op("layers")
    def softmax_backward(self, grad_out, y):
        return _rows(K.softmax_backward, grad_out, y)

    @op("layers")
    def log_softmax(self, x):
        return _rows(K.log_softmax, x)

    @op("layers")
    def log_softmax_backward(self, grad_out, y):
        return _rows(K.log_softmax_backward, grad_out, y)

    # ------------------------------------------------------------- convolution
    @op("layers")
    def conv2d(self, x, weight, bias, stride, padding, dilation):
        return _conv.conv2d(_im2col, x, weight, bias, stride, padding, dilation)

    @op("layers")
    def conv2d_backward(self, grad_out, x, weight, stride, padding, dilation, has_bias):
        return _conv.conv2d_backward(_im2col, _col2im, grad_out, x, weight, stride, padding,
                                     dilation, has_bias)

    # ----------------------------------------------------------------- pooling
    @op("layers")
    def max_pool2d(self, x, kernel_size, stride, padding):
        out = pool_output(x, kernel_size, stride, padding)
        if out.size:
            _run(K.max_pool2d, x.size, x, *kernel_size, *stride, *padding, out)
        return out

    @op("layers")
    def max_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        out = np.empty_like(x)
        if out.size:
            _run(K.max_pool2d_backward, x.size, grad_out, x, *kernel_size, *stride, *padding,
                 out, chunked=True)
        return out

    @op("layers")
    def avg_pool2d(self, x, kernel_size, stride, padding):
        out = pool_output(x, kernel_size, stride, padding)
        if out.size:
            _run(K.avg_pool2d, x.size, x, *kernel_size, *stride, *padding, out)
        return out

    @op("layers")
    def avg_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        out = np.empty_like(x)
        if out.size:
            _run(K.avg_pool2d_backward, x.size, grad_out, *kernel_size, *stride, *padding,
                 out, chunked=True)
        return out

    # ----------------------------------------------------------- normalization
    @op("layers")
    def batch_norm(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        c = x.shape[1]
        out = np.empty_like(x)
        if not training:
            scale, shift = batch_norm_affine(running_mean.astype(np.float64),
                                             running_var.astype(np.float64), weight, bias, eps)
            if out.size:
                _run(K.batch_norm_apply, x.size, x, scale, shift, out)
            return out
        mean, var = np.empty(c), np.empty(c)
        if x.size:
            dummy = x[0, :, 0]
            _run(K.batch_norm_train, x.size, x, dummy if weight is None else weight,
                 dummy if bias is None else bias, weight is not None, bias is not None,
                 float(eps), mean, var, out)
        if running_mean is not None:
            update_running_stats(running_mean, running_var, mean, var,
                                 x.shape[0] * x.shape[2], momentum)
        return out

    @op("layers")
    def batch_norm_backward(self, grad_out, x, weight, eps):
        c = x.shape[1]
        sum_g, sum_gx = np.zeros(c), np.zeros(c)
        out = np.empty_like(x)
        if x.size:
            redo = np.empty(c, np.bool_)
            if _run(K.batch_norm_backward, x.size, grad_out, x,
                    x[0, :, 0] if weight is None else weight, weight is not None, float(eps),
                    sum_g, sum_gx, redo, out):
                # The reference's formulas, its mean to the last bit (see the kernel).
                x64 = x.astype(np.float64)
                mean = x64.mean(axis=(0, 2))
                m = x.shape[0] * x.shape[2]
                for ch in np.flatnonzero(redo):
                    xc = x64[:, ch, :]
                    invstd = 1 / np.sqrt(((xc - mean[ch]) ** 2).mean() + eps)
                    xhat = (xc - mean[ch]) * invstd
                    g = grad_out[:, ch, :].astype(np.float64)
                    sum_gx[ch] = (g * xhat).sum()
                    k = invstd if weight is None else invstd * weight[ch]
                    out[:, ch, :] = k * (g - sum_g[ch] / m - xhat * (sum_gx[ch] / m))
        if weight is None:
            return out, None, None
        return out, sum_gx.astype(x.dtype), sum_g.astype(x.dtype)

    @op("layers")
    def layer_norm(self, x, weight, bias, eps):
        out = np.empty_like(x)
        if out.size:
            w64, b64 = _affine64(x.shape[1], weight, bias)
            affine = weight is not None or bias is not None
            _run(K.layer_norm, x.size, x, affine, w64, b64, float(eps), out, chunked=True)
        return out

    @op("layers")
    def layer_norm_backward(self, grad_out, x, weight, eps):
        rows, n = x.shape
        out = np.empty_like(x)
        gw = gb = np.zeros(n)
        if out.size:
            redo = np.empty(rows, np.bool_)
            w64 = _affine64(n, weight, None)[0]
            gw, gb, any_redo = _run(K.layer_norm_backward, x.size, grad_out, x, w64,
                                    weight is not None, float(eps), redo, out, chunked=True)
            if any_redo:
                # The reference's formulas on those rows, its mean to the last bit
                # (see the kernel); their column sums added last.
                rr = np.flatnonzero(redo)
                x64, g = x[rr].astype(np.float64), grad_out[rr].astype(np.float64)
                mean = x64.mean(axis=1, keepdims=True)
                invstd = 1 / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True) + eps)
                xhat = (x64 - mean) * invstd
                gwr = g if weight is None else g * weight
                out[rr] = invstd * (gwr - gwr.mean(axis=1, keepdims=True)
                                    - xhat * (gwr * xhat).mean(axis=1, keepdims=True))
                if weight is not None:
                    gw += (g * xhat).sum(axis=0)
                    gb += g.sum(axis=0)
        if weight is None:
            return out, None, None
        return out, gw.astype(x.dtype), gb.astype(x.dtype)

    # ------------------------------------------------------- dropout, embedding
    @op("layers")
    def dropout(self, x, p, seed):
        out = np.empty_like(x)
        mask = np.empty(x.shape, np.bool_)
        _run(K.dropout, x.size, x.reshape(-1), np.uint64(seed),
             np.uint64(dropout_threshold(p)), dropout_scale(p, x.dtype), out.reshape(-1),
             mask.reshape(-1))
        return out, mask

    @op("layers")
    def dropout_backward(self, grad_out, mask, p):
        return _map(K.dropout_backward, grad_out, mask, dropout_scale(p, grad_out.dtype))

    @op("layers")
    def embedding(self, indices, weight):
        out = np.empty((indices.size, weight.shape[1]), weight.dtype)
        if out.size:
            _run(K.embedding, out.size, indices, weight, out)
        return out

    @op("layers")
    def embedding_backward(self, grad_out, indices, num_embeddings):
        out = np.empty((num_embeddings, grad_out.shape[1]), grad_out.dtype)
        if out.size:
            start, order = K.index_buckets(indices, num_embeddings)
            _run(K.embedding_backward, max(out.size, grad_out.size), grad_out, start, order,
                 out, chunked=True)
        return out

    # ------------------------------------------------------------------ losses
    @op("losses")
    def mse_loss(self, input, target, reduction):
        if reduction == "none":
            return _map(K.squared_error, input, target)
        return _reduced(K.squared_error_sum, reduction, input, target)

    @op("losses")
    def mse_loss_grad(self, input, target, reduction):
        scale = _grad_scale(reduction, input.size, 2.0)
        return _map(K.scaled_difference, input, target, input.dtype.type(scale))

    @op("losses")
    def l1_loss(self, input, target, reduction):
        if reduction == "none":
            return _map(K.abs_error, input, target)
        return _reduced(K.abs_error_sum, reduction, input, target)

    @op("losses")
    def l1_loss_grad(self, input, target, reduction):
        scale = _grad_scale(reduction, input.size)
        return _map(K.scaled_sign, input, target, input.dtype.type(scale))

    @op("losses")
    def huber_loss(self, input, target, reduction, delta):
        delta = input.dtype.type(delta)
        if reduction == "none":
            return _map(K.huber_error, input, target, delta)
        return _chunked_reduced(K.huber_error_sum, reduction, input, target, delta)

    @op("losses")
    def huber_loss_grad(self, input, target, reduction, delta):
        t = input.dtype.type
        return _map(K.huber_grad, input, target, t(_grad_scale(reduction, input.size)), t(delta))

    @staticmethod
    def _ce_weights(input, target, weight, ignore_index):
        """(per-class weights, their float64 sum, float64 sum of the kept targets' weights)."""
        w = np.ones(input.shape[1], input.dtype) if weight is None else weight
        return w, float(w.sum(dtype=np.float64)), K.target_weight_sum(target, w, ignore_index)

    @op("losses")
    def cross_entropy(self, input, target, weight, ignore_index, reduction, label_smoothing):
        w, wsum, kept = self._ce_weights(input, target, weight, ignore_index)
        loss = np.empty(input.shape[0], input.dtype)
        _run(K.cross_entropy_rows, input.size, input, target, w, wsum, ignore_index,
             float(label_smoothing), loss, chunked=True)
        return _reduce(loss, reduction, count=kept)

    @staticmethod
    def _ce_grad_coef(kept, reduction):
        """The gradient's scale: 1 / sum of the kept w[target] for 'mean', else 1."""
        with np.errstate(divide="ignore"):
            return float(np.float64(1.0) / kept) if reduction == "mean" else 1.0

    @op("losses")
    def cross_entropy_grad(self, input, target, weight, ignore_index, reduction, label_smoothing):
        w, wsum, kept = self._ce_weights(input, target, weight, ignore_index)
        grad = np.empty_like(input)
        _run(K.cross_entropy_grad_rows, input.size, input, target, w, wsum, ignore_index,
             float(label_smoothing), self._ce_grad_coef(kept, reduction), grad)
        return grad

    @op("losses")
    def cross_entropy_and_grad(self, input, target, weight, ignore_index, reduction,
                               label_smoothing):
        w, wsum, kept = self._ce_weights(input, target, weight, ignore_index)
        loss = np.empty(input.shape[0], input.dtype)
        grad = np.empty_like(input)
        _run(K.cross_entropy_loss_grad_rows, input.size, input, target, w, wsum, ignore_index,
             float(label_smoothing), self._ce_grad_coef(kept, reduction), loss, grad)
        return _reduce(loss, reduction, count=kept), grad

    @op("losses")
    def binary_cross_entropy(self, input, target, weight, reduction):
        args = (input, target, input if weight is None else weight, weight is not None)
        if reduction == "none":
            return _chunked_map(K.bce, *args)
        return _chunked_reduced(K.bce_sum, reduction, *args)

    @op("losses")
    def binary_cross_entropy_grad(self, input, target, weight, reduction):
        t = input.dtype.type
        return _map(K.bce_grad, input, target, input if weight is None else weight,
                    weight is not None, t(_grad_scale(reduction, input.size)), t(BCE_EPS))

    @staticmethod
    def _bce_logits_args(input, target, weight, pos_weight):
        return (input, target, input if weight is None else weight,
                input if pos_weight is None else pos_weight,
                weight is not None, pos_weight is not None)

    @op("losses")
    def binary_cross_entropy_with_logits(self, input, target, weight, reduction, pos_weight):
        args = self._bce_logits_args(input, target, weight, pos_weight)
        if reduction == "none":
            return _chunked_map(K.bce_logits, *args)
        return _chunked_reduced(K.bce_logits_sum, reduction, *args)

    @op("losses")
    def binary_cross_entropy_with_logits_grad(self, input, target, weight, reduction,
                                              pos_weight):
        scale = input.dtype.type(_grad_scale(reduction, input.size))
        return _map(K.bce_logits_grad, *self._bce_logits_args(input, target, weight, pos_weight),
                    scale)

    @op("losses")
    def nll_loss(self, input, target, weight, ignore_index, reduction):
        w = np.ones(input.shape[1], input.dtype) if weight is None else weight
        if reduction == "none":
            loss = np.empty(input.shape[0], input.dtype)
            K.nll_rows(input, target, w, ignore_index, loss)
            return loss
        total, kept = K.nll_sum(input, target, w, ignore_index)
        if reduction == "sum":
            return float(total)
        return float(np.float64(total) / np.float64(kept))  # all ignored: 0/0 = NaN

    @op("losses")
    def nll_loss_grad(self, input, target, weight, ignore_index, reduction):
        w = np.ones(input.shape[1], input.dtype) if weight is None else weight
        coef = 1.0
        if reduction == "mean":
            coef = np.float64(1.0) / np.float64(K.target_weight_sum(target, w, ignore_index))
        # np.zeros (calloc: fresh pages come zeroed, not written twice), not
        # np.zeros_like (a fill pass); then one store per kept row.
        grad = np.zeros(input.shape, input.dtype)
        if grad.size:
            K.nll_grad(target, w, ignore_index, input.dtype.type(coef), grad)
        return grad

    @op("losses")
    def kl_div(self, input, target, reduction, log_target):
        if reduction == "none":
            return _chunked_map(K.kl, input, target, log_target)
        count = self._kl_scale(input, reduction)  # None for 'sum' (unused) and 0-d 'batchmean'
        return _chunked_reduced(K.kl_sum, reduction, input, target, log_target, count=count)

    @op("losses")
    def kl_div_grad(self, input, target, reduction, log_target):
        t = input.dtype.type
        count = self._kl_scale(input, reduction)
        scale = t(1.0 / count) if count else t(1)
        return _map(K.kl_grad, target, log_target, -scale)

    # ------------------------------------------------------------------- optim
    @op("optim")
    def sgd_step(self, param, grad, momentum_buffer, step, lr, momentum, dampening,
                 weight_decay, nesterov, maximize):
        t = param.dtype.type
        has_momentum = momentum != 0
        buf = momentum_buffer if has_momentum else param  # placeholder, never touched
        _run(K.sgd, param.size, param.reshape(-1), grad.reshape(-1), buf.reshape(-1),
             t(lr), t(momentum), t(1 - dampening), t(weight_decay), t(-1 if maximize else 1),
             weight_decay != 0, has_momentum, step == 1, bool(nesterov))

    @op("optim")
    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr,
                  beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  decoupled_weight_decay):
        t = param.dtype.type
        decoupled = decoupled_weight_decay and weight_decay != 0
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        vmax = max_exp_avg_sq if amsgrad else exp_avg_sq  # placeholder when unused
        _run(K.adam, param.size, param.reshape(-1), grad.reshape(-1), exp_avg.reshape(-1),
             exp_avg_sq.reshape(-1), vmax.reshape(-1),
             t(-1 if maximize else 1), t(1 - lr * weight_decay if decoupled else 1),
             t(weight_decay), t(1 - beta1), t(beta2), t(1 - beta2),
             t(lr / bias_correction1), t(bias_correction2_sqrt), t(eps),
             weight_decay != 0 and not decoupled_weight_decay, bool(amsgrad))

    @op("optim")
    def rmsprop_step(self, param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha,
                     eps, weight_decay, momentum, centered, maximize):
        t = param.dtype.type
        has_momentum = momentum > 0
        buf = momentum_buffer if has_momentum else param  # placeholders, never touched
        avg = grad_avg if centered else param
        _run(K.rmsprop, param.size, param.reshape(-1), grad.reshape(-1), square_avg.reshape(-1),
             buf.reshape(-1), avg.reshape(-1), t(-1 if maximize else 1), t(weight_decay),
             t(alpha), t(1 - alpha), t(lr), t(eps), t(momentum), weight_decay != 0,
             bool(centered), has_momentum)

    @op("optim")
    def adagrad_step(self, param, grad, state_sum, step, lr, lr_decay, weight_decay, eps,
                     maximize):
        t = param.dtype.type
        _run(K.adagrad, param.size, param.reshape(-1), grad.reshape(-1), state_sum.reshape(-1),
             t(-1 if maximize else 1), t(weight_decay), t(lr / (1 + (step - 1) * lr_decay)),
             t(eps), weight_decay != 0)

    # ----------------------------------------------------------- preprocessing
    @op("preprocessing")
    def column_stats(self, X):
        return _run(K.column_stats, X.size, X, chunked=True)

    @op("preprocessing")
    def standardize(self, X, offset, scale):
        return _rows_counted(K.standardize, X, offset, scale)

    @op("preprocessing")
    def unstandardize(self, X, offset, scale):
        return _rows_counted(K.unstandardize, X, offset, scale)

    @op("preprocessing")
    def column_minmax(self, X):
        return _run(K.column_minmax, X.size, X, chunked=True)

    @op("preprocessing")
    def column_quantiles(self, X, q):
        q = q.reshape(-1)
        out = np.empty((q.size, X.shape[1]))
        if out.size:
            _run(K.column_quantiles, X.size, X, q, out, chunked=True)
        return out

    @op("preprocessing")
    def fill_missing(self, X, missing_value, fill):
        out = np.empty_like(X)
        missing = X.dtype.type(missing_value)  # as NumPy compares: rounded to X's dtype
        n_bad = _run(K.fill_missing, X.size, X, missing, bool(np.isnan(missing)),
                     fill.astype(X.dtype), out, chunked=True)
        return out, int(n_bad)

    @op("preprocessing")
    def one_hot(self, indices, n_columns, dtype):
        # np.zeros: calloc's lazily zeroed pages, faulted in by the scatter's
        # threads; writing whole rows into np.empty measured slower (1M x 100
        # float64, 2 cores: 99 ms vs 73 ms; serial scatter 119 ms).
        out = np.zeros((indices.shape[0], n_columns), dtype)
        if out.size and indices.size:
            _run(K.one_hot, out.size, indices, out)
        return out

    @op("preprocessing")
    def normalize_rows(self, X, norm):
        tiny = X.dtype.type(10 * np.finfo(X.dtype).eps)
        return _rows(K.normalize_rows, X, _NORMS[norm], tiny)

    @op("preprocessing")
    def polynomial_features(self, X, left, right, keep):
        out = np.empty((X.shape[0], keep.size), X.dtype)
        if out.size:
            k = keep.size
            contiguous = k and keep[-1] - keep[0] == k - 1 and \
                np.array_equal(keep, np.arange(keep[0], keep[0] + k))
            _run(K.polynomial_features, out.size, X, _product_runs(left, right), keep,
                 int(keep[0]) if contiguous else -1, left.size, out, chunked=True)
        return out

    @op("preprocessing")
    def unique_counts(self, values):
        n = values.size
        if n == 0:
            return values.copy(), np.zeros(0, np.int64)
        if values.dtype == np.int64:
            lo, hi = _run(K.int_range, n, values, chunked=True,
                          parallel_min=DENSE_PARALLEL_MIN)
            nan, exact = 0, True
        else:
            lo, hi, nan, exact = _run(K.float_scan, n, values, chunked=True,
                                      parallel_min=DENSE_PARALLEL_MIN)
            if nan == n:
                return values[:1].copy(), np.array([n], np.int64)
        if exact and _dense(lo, hi, n):
            size = int(hi) - int(lo) + 1
            lo = values.dtype.type(lo)
            counts = _run(K.count_dense, n, values, lo, size, chunked=True,
                          parallel_min=DENSE_PARALLEL_MIN)
            return K.dense_uniques(counts, lo, nan, values)
        return K.sorted_uniques(np.sort(values))  # NumPy's sort: np.unique's own

    @op("preprocessing")
    def encode_values(self, values, categories):
        out = np.empty(values.shape, np.int64)
        m = categories.size
        if m and categories.dtype.kind == "f" and np.isnan(categories[-1]):
            nan_code, m = m - 1, m - 1  # the NaN category, last
        else:
            nan_code = -1
        cats = categories[:m]
        if m == 0:
            out.fill(-1)
            if nan_code >= 0:
                out[np.isnan(values)] = nan_code
            return out
        lo, hi = cats[0], cats[-1]
        exact = cats.dtype.kind == "i" or bool(np.isfinite(lo) and np.isfinite(hi)
                                                and (np.floor(cats) == cats).all())
        if exact and _dense(lo, hi, values.size):
            table = np.full(int(hi) - int(lo) + 1, -1, np.int64)
            table[(cats - lo).astype(np.int64)] = np.arange(m)
            _run(K.encode_dense, values.size, values, lo, hi, table, nan_code, out,
                 parallel_min=DENSE_PARALLEL_MIN)
        else:
            _run(K.encode_sorted, values.size, values, cats, m, nan_code, out)
        return out


def _im2col(x, cols, geometry):
    """``_conv``'s im2col: fills every element of cols (N, C kh kw, Ho Wo)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    ho, wo = conv_output_size(x.shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if cols.size:  # serial: _conv runs one batch slice per thread
        K.im2col.serial(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


def _col2im(cols, grad_x, geometry):
    """``_conv``'s col2im: overwrites every element of grad_x (N, C, H, W)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    ho, wo = conv_output_size(grad_x.shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if grad_x.size:
        K.col2im.serial(cols, grad_x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)


_NORMS = {"l1": 0, "l2": 1, "max": 2}

# The encoders' dense-table paths (``unique_counts``, ``encode_values``) run when
# the integer values span at most n + DENSE_SLACK slots (n: the number of
# values): a table no bigger than the input, counted or looked up in O(n + span)
# without sorting; wider spans sort (NumPy) or binary-search the categories.
DENSE_SLACK = 1024
# The dense passes (range scan, counting, table lookup) cost about 0.5-1 ns per
# value serially: below 4M values a whole pass takes a few ms at most, and an
# OpenMP team gains at most the core count on it while exposing the call to
# oversubscription (measured on a loaded 2-core machine, 1M labels: median
# about even, 90th percentile 30 ms parallel vs 5 ms serial). The binary
# search (tens of ns per value) keeps PARALLEL_MIN; the sort path is NumPy's
# sort and one serial run-length pass.
DENSE_PARALLEL_MIN = 1 << 22


def _dense(lo, hi, n):
    """Whether the integers lo..hi (int64, or integral float64) fit a dense table
    for n values."""
    return int(hi) - int(lo) + 1 <= n + DENSE_SLACK


def _product_runs(left, right):
    """The recipe of ``polynomial_features`` as runs, int64 (R, 4): (start, left,
    right, length) for monomials start..start+length-1 that share ``left`` and
    take consecutive features ``right``, ``right + 1``, ... (so a run is one
    vectorizable loop); a monomial without factor (right -1) is a run of its own."""
    n = left.size
    brk = np.ones(n, bool)
    brk[1:] = ((left[1:] != left[:-1]) | (right[1:] != right[:-1] + 1)
               | (right[1:] < 0) | (right[:-1] < 0))
    starts = np.flatnonzero(brk)
    lengths = np.diff(np.append(starts, n))
    return np.ascontiguousarray(
        np.stack([starts, left[starts], right[starts], lengths], axis=1), dtype=np.int64)
