"""Losses and their gradients (``torch.nn.functional`` semantics).

``reduction`` is ``'mean'`` (default), ``'sum'`` or ``'none'``. A reduced loss
comes back as a Python float; ``'none'`` gives an array. Each ``name_grad``
takes the same arguments as ``name`` and returns the gradient of the
(reduced) loss with respect to ``input``, same shape and dtype as ``input``;
with ``reduction='none'`` it is the gradient of the sum of the per-element
losses. A ``'mean'`` over zero elements is NaN, as in PyTorch.
"""
from __future__ import annotations

import numpy as np

from . import _validate as v
from ._config import instance as _backend

__all__ = ["mse_loss", "mse_loss_grad", "l1_loss", "l1_loss_grad", "huber_loss",
           "huber_loss_grad", "binary_cross_entropy", "binary_cross_entropy_grad",
           "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_grad",
           "cross_entropy", "cross_entropy_grad", "cross_entropy_and_grad", "nll_loss", "nll_loss_grad",
           "kl_div", "kl_div_grad"]


def _pair(op, input, target):
    input = v.float_array(op, "input", input)
    target = v.float_array(op, "target", target)
    v.same_dtype(op, input=input, target=target)
    v.check_shape(op, "target", target, input.shape, "(that of 'input')")
    return input, target


def mse_loss(input, target, reduction="mean"):
    """Mean squared error ``(input - target)**2`` (``torch.nn.functional.mse_loss``).

    input and target: same shape (no broadcasting), float32 or float64.
    Returns a float (``'mean'``, ``'sum'``) or an array shaped like input
    (``'none'``). Raises TypeError (dtypes), ValueError (shapes, reduction).
    """
    input, target = _pair("mse_loss", input, target)
    r = v.reduction("mse_loss", reduction)
    out = _backend().mse_loss(input, target, r)
    return out if r == "none" else float(out)


def mse_loss_grad(input, target, reduction="mean"):
    """Gradient of :func:`mse_loss` w.r.t. input: ``2 * (input - target)`` (/ n for 'mean').

    Same arguments, shapes and errors as :func:`mse_loss`; returns an array
    shaped like input.
    """
    input, target = _pair("mse_loss_grad", input, target)
    return _backend().mse_loss_grad(input, target, v.reduction("mse_loss_grad", reduction))


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error ``|input - target|`` (``torch.nn.functional.l1_loss``).

    Same shapes, returns and errors as :func:`mse_loss`.
    """
    input, target = _pair("l1_loss", input, target)
    r = v.reduction("l1_loss", reduction)
    out = _backend().l1_loss(input, target, r)
    return out if r == "none" else float(out)


def l1_loss_grad(input, target, reduction="mean"):
    """Gradient of :func:`l1_loss` w.r.t. input: ``sign(input - target)`` (/ n for 'mean').

    0 where ``input == target``, and where the difference is NaN, as PyTorch
    (its sign of NaN is 0). Same arguments and errors as :func:`l1_loss`.
    """
    input, target = _pair("l1_loss_grad", input, target)
    return _backend().l1_loss_grad(input, target, v.reduction("l1_loss_grad", reduction))


def _huber_args(op, input, target, reduction, delta):
    input, target = _pair(op, input, target)
    return (input, target, v.reduction(op, reduction),
            v.real_scalar(op, "delta", delta, 0.0, lo_open=True))


def huber_loss(input, target, reduction="mean", delta=1.0):
    """Huber loss (``torch.nn.functional.huber_loss``), with ``z = |input - target|``:
    ``0.5 * z**2`` where ``z < delta``, else ``delta * (z - 0.5 * delta)``.

    Same shapes and returns as :func:`mse_loss`; ``delta`` must be > 0.
    Raises TypeError (dtypes, non-real delta), ValueError (shapes, reduction, delta).
    """
    args = _huber_args("huber_loss", input, target, reduction, delta)
    out = _backend().huber_loss(*args)
    return out if args[2] == "none" else float(out)


def huber_loss_grad(input, target, reduction="mean", delta=1.0):
    """Gradient of :func:`huber_loss` w.r.t. input: ``input - target`` clipped to
    ``[-delta, delta]`` (/ n for 'mean'); NaN where the difference is NaN.

    Same arguments and errors as :func:`huber_loss`.
    """
    return _backend().huber_loss_grad(*_huber_args("huber_loss_grad", input, target,
                                                   reduction, delta))


def _elementwise_weight(op, name, weight, input):
    """An optional weight broadcast to input's shape (materialized once when it differs)."""
    if weight is None:
        return None
    weight = v.float_array(op, name, weight)
    v.same_dtype(op, input=input, **{name: weight})
    return v.broadcast_to(op, name, weight, input.shape)


def _bce_args(op, input, target, weight, reduction):
    input, target = _pair(op, input, target)
    v.probabilities(op, "input", input)
    return (input, target, _elementwise_weight(op, "weight", weight, input),
            v.reduction(op, reduction))


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy of probabilities (``torch.nn.functional.binary_cross_entropy``).

    Per element ``-w * (t * log(x) + (1 - t) * log(1 - x))``, each log clamped
    to >= -100 as PyTorch does, so x = 0 or 1 gives a finite loss.
    Shapes: input and target the same shape (float32/float64); input holds
    probabilities in [0, 1]; weight (optional) broadcasts to input's shape.
    Returns a float (``'mean'``, ``'sum'``) or an array shaped like input
    (``'none'``). Raises TypeError (dtypes) and ValueError (shapes, an input
    value outside [0, 1] or NaN, as PyTorch's check, reduction).
    """
    args = _bce_args("binary_cross_entropy", input, target, weight, reduction)
    out = _backend().binary_cross_entropy(*args)
    return out if args[3] == "none" else float(out)


def binary_cross_entropy_grad(input, target, weight=None, reduction="mean"):
    """Gradient of :func:`binary_cross_entropy` w.r.t. input, shaped like input.

    ``w * (x - t) / max(x * (1 - x), 1e-12)`` (/ n for 'mean'), PyTorch's
    backward formula, finite at x = 0 and 1. Same arguments and errors as
    :func:`binary_cross_entropy`.
    """
    return _backend().binary_cross_entropy_grad(
        *_bce_args("binary_cross_entropy_grad", input, target, weight, reduction))


def _bce_logits_args(op, input, target, weight, reduction, pos_weight):
    input, target = _pair(op, input, target)
    return (input, target, _elementwise_weight(op, "weight", weight, input),
            v.reduction(op, reduction), _elementwise_weight(op, "pos_weight", pos_weight, input))


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """Sigmoid + binary cross-entropy from logits, numerically stable
    (``torch.nn.functional.binary_cross_entropy_with_logits``).

    Per element ``w * ((1 - t) * x - (1 + (pw - 1) * t) * logsigmoid(x))`` with
    ``logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))``: no overflow for any
    finite |x|. Shapes: input (logits) and target the same shape,
    float32/float64; weight and pos_weight (the weight of positive examples,
    usually ``(C,)`` for input ``(N, C)``) broadcast to input's shape.
    Returns a float, or an array shaped like input for ``'none'``. Raises
    TypeError (dtypes) and ValueError (shapes, reduction).
    """
    args = _bce_logits_args("binary_cross_entropy_with_logits", input, target, weight,
                            reduction, pos_weight)
    out = _backend().binary_cross_entropy_with_logits(*args)
    return out if args[3] == "none" else float(out)


def binary_cross_entropy_with_logits_grad(input, target, weight=None, reduction="mean",
                                          pos_weight=None):
    """Gradient of :func:`binary_cross_entropy_with_logits` w.r.t. the logits.

    ``w * (sigmoid(x) - t)``, or with pos_weight
    ``w * ((pw * t + 1 - t) * sigmoid(x) - pw * t)`` (/ n for 'mean'), as
    PyTorch's backward. Same arguments and errors as the loss.
    """
    return _backend().binary_cross_entropy_with_logits_grad(
        *_bce_logits_args("binary_cross_entropy_with_logits_grad", input, target, weight,
                          reduction, pos_weight))


def _class_args(op, input, target, weight, ignore_index, reduction):
    """(N, C) scores, (N,) class targets, optional (C,) class weights (cross_entropy, nll_loss)."""
    input = v.float_array(op, "input", input, ndim=2)
    n, c = input.shape
    if c == 0:
        raise ValueError(f"{op}: argument 'input' must have at least one class, got shape {(n, c)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{op}: argument 'ignore_index' must be an int, got {ignore_index!r}")
    target = v.as_array(target)
    v.check_shape(op, "target", target, (n,), "(N,)")
    target = v.index_array(op, "target", target, c, ignore_index)
    if weight is not None:
        weight = v.float_array(op, "weight", weight)
        v.check_shape(op, "weight", weight, (c,), "(C,)")
        v.same_dtype(op, input=input, weight=weight)
    return input, target, weight, int(ignore_index), v.reduction(op, reduction)


def _ce_args(op, input, target, weight, ignore_index, reduction, label_smoothing):
    return (*_class_args(op, input, target, weight, ignore_index, reduction),
            v.real_scalar(op, "label_smoothing", label_smoothing, 0.0, 1.0))


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy from logits (``torch.nn.functional.cross_entropy``).

    Shapes: input ``(N, C)`` float32/float64 logits; target ``(N,)`` class
    indices of any integer dtype, each in ``[0, C)`` or equal to
    ``ignore_index``; weight ``(C,)`` per-class weights, same dtype as input.
    Per row: ``(1 - eps) * w[t] * -log p[t] + eps / C * sum_c w[c] * -log p[c]``
    (``eps = label_smoothing``), 0 for ignored rows; ``'mean'`` divides the sum
    by the summed ``w[t]`` of the rows not ignored (NaN when all are ignored).
    The accelerated backends fuse log-softmax and the loss: one pass over each
    row of logits, no softmax written to memory.

    Returns a float, or an ``(N,)`` array for ``reduction='none'``.
    Raises TypeError (dtypes, non-int targets) and ValueError (shapes, a
    target out of range, C == 0, label_smoothing outside [0, 1], reduction).
    """
    args = _ce_args("cross_entropy", input, target, weight, ignore_index, reduction,
                    label_smoothing)
    out = _backend().cross_entropy(*args)
    return out if args[4] == "none" else float(out)


def cross_entropy_grad(input, target, weight=None, ignore_index=-100, reduction="mean",
                       label_smoothing=0.0):
    """Gradient of :func:`cross_entropy` w.r.t. the logits, ``(N, C)``.

    Per row ``(1 - eps) * w[t] * (p - onehot(t)) + eps / C * (sum(w) * p - w)``,
    scaled by ``1 / sum(w[t])`` for ``'mean'``; rows whose target is
    ``ignore_index`` get exactly 0. Same arguments and errors as
    :func:`cross_entropy`; fused in the accelerated backends (no softmax
    written to memory, one read of each row for its statistics and one to
    write the gradient).
    """
    args = _ce_args("cross_entropy_grad", input, target, weight, ignore_index, reduction,
                    label_smoothing)
    return _backend().cross_entropy_grad(*args)


def cross_entropy_and_grad(input, target, weight=None, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0):
    """``(cross_entropy(...), cross_entropy_grad(...))`` from one fused pass.

    What a training step needs: the loss and its gradient w.r.t. the logits, each
    row of logits read once for its log-sum-exp, which then gives both the row's
    loss and its gradient row (scikit-learn's ``loss_gradient``; in PyTorch, the
    forward plus autograd's backward). Same arguments, values and errors as
    :func:`cross_entropy`; returns ``(loss, grad)``: loss a float, or an ``(N,)``
    array for ``reduction='none'``, and grad ``(N, C)`` of input's dtype.
    """
    args = _ce_args("cross_entropy_and_grad", input, target, weight, ignore_index,
                    reduction, label_smoothing)
    loss, grad = _backend().cross_entropy_and_grad(*args)
    return (loss if args[4] == "none" else float(loss)), grad


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities (``torch.nn.functional.nll_loss``).

    Shapes: input ``(N, C)`` float32/float64 log-probabilities (e.g. from
    :func:`fastml.layers.log_softmax`); target ``(N,)`` class indices of any
    integer dtype, each in ``[0, C)`` or equal to ``ignore_index``; weight
    ``(C,)``. Per row ``-w[t] * input[i, t]``, exactly 0 for ignored rows;
    ``'mean'`` divides by the summed ``w[t]`` of the kept rows (NaN when all
    are ignored). Returns a float, or an ``(N,)`` array for ``'none'``.
    Raises TypeError (dtypes) and ValueError (shapes, a target out of range,
    C == 0, reduction).
    """
    args = _class_args("nll_loss", input, target, weight, ignore_index, reduction)
    out = _backend().nll_loss(*args)
    return out if args[4] == "none" else float(out)


def nll_loss_grad(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Gradient of :func:`nll_loss` w.r.t. input, ``(N, C)``: ``-w[t]`` at each kept
    row's target (/ the summed ``w[t]`` for ``'mean'``), 0 elsewhere. Same
    arguments and errors as :func:`nll_loss`.
    """
    return _backend().nll_loss_grad(
        *_class_args("nll_loss_grad", input, target, weight, ignore_index, reduction))


KL_REDUCTIONS = ("mean", "batchmean", "sum", "none")


def _kl_args(op, input, target, reduction, log_target):
    input, target = _pair(op, input, target)
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"{op}: argument 'log_target' must be a bool, got {log_target!r}")
    return input, target, v.reduction(op, reduction, KL_REDUCTIONS), bool(log_target)


def kl_div(input, target, reduction="mean", log_target=False):
    """Kullback-Leibler divergence (``torch.nn.functional.kl_div``); input holds
    log-probabilities, target probabilities (log-probabilities with ``log_target``).

    Per element ``t * (log(t) - x)`` (0 where t == 0), or
    ``exp(t) * (t - x)`` with ``log_target``. ``reduction='batchmean'`` divides
    the sum by ``input.shape[0]`` (the mathematically correct KL divergence);
    ``'mean'`` divides by the number of elements, as PyTorch (which warns
    about it). Shapes: input and target the same shape, float32/float64.
    Returns a float, or an array shaped like input for ``'none'``. Raises
    TypeError (dtypes, non-bool log_target) and ValueError (shapes, reduction).
    """
    args = _kl_args("kl_div", input, target, reduction, log_target)
    out = _backend().kl_div(*args)
    return out if args[2] == "none" else float(out)


def kl_div_grad(input, target, reduction="mean", log_target=False):
    """Gradient of :func:`kl_div` w.r.t. input: ``-t`` (``-exp(t)`` with
    ``log_target``), divided by the element count for 'mean' and by
    ``input.shape[0]`` for 'batchmean'. Same arguments and errors as :func:`kl_div`.
    """
    return _backend().kl_div_grad(*_kl_args("kl_div_grad", input, target, reduction,
                                            log_target))
