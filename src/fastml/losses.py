"""Losses and their gradients (``torch.nn.functional`` semantics).

``reduction`` is ``'mean'`` (default), ``'sum'`` or ``'none'``. A reduced loss
comes back as a Python float; ``'none'`` gives an array. Each ``name_grad``
takes the same arguments as ``name`` and returns the gradient of the
(reduced) loss with respect to ``input``, same shape and dtype as ``input``;
with ``reduction='none'`` it is the gradient of the sum of the per-element
losses. A ``'mean'`` over zero elements is NaN, as in PyTorch.
"""
from __future__ import annotations

from . import _validate as v
from ._config import instance as _backend

__all__ = ["mse_loss", "mse_loss_grad", "l1_loss", "l1_loss_grad", "huber_loss",
           "huber_loss_grad", "cross_entropy", "cross_entropy_grad"]


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


def _ce_args(op, input, target, weight, ignore_index, reduction, label_smoothing):
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
    r = v.reduction(op, reduction)
    ls = v.real_scalar(op, "label_smoothing", label_smoothing, 0.0, 1.0)
    return input, target, weight, int(ignore_index), r, ls


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
