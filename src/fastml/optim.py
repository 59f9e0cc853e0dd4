"""Optimizer update steps (``torch.optim`` single-tensor algorithms), in place.

Each ``*_step`` updates ``param`` and its state arrays in place from ``grad``
(all the same shape and dtype, float32 or float64) and returns None. ``step``
is the 1-based step count after this update. The accelerated backends fuse
the whole update into one pass over the parameters.
"""
from __future__ import annotations

from . import _validate as v
from ._config import instance as _backend

__all__ = ["sgd_step", "adam_step"]


def _run_inplace(method, op, arrays, kwargs):
    """Validate the in-place arrays, then run the backend on contiguous views.

    A non-contiguous param or state array is updated through a contiguous
    copy that is written back afterwards.
    """
    param = v.inplace_array(op, "param", arrays["param"])
    for name, a in arrays.items():
        if a is None or name == "param":
            continue
        if name == "grad":
            arrays[name] = v.float_array(op, "grad", a)
            v.check_shape(op, "grad", arrays[name], param.shape, "(that of 'param')")
        else:
            v.inplace_array(op, name, a, like=param)
    v.same_dtype(op, **arrays)
    work = {n: (v.contiguous(a) if a is not None else None) for n, a in arrays.items()}
    getattr(_backend(), method)(*work.values(), **kwargs)
    for n, a in arrays.items():
        if n != "grad" and a is not None and work[n] is not a:
            a[...] = work[n]


def _step(op, step):
    return v.positive_int(op, "step", step)


def sgd_step(param, grad, momentum_buffer=None, *, step, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False):
    """One ``torch.optim.SGD`` update (``foreach=False``), in place.

    ``g = ±grad + weight_decay * param``; with momentum, ``buf = g`` at
    ``step == 1`` else ``buf = momentum * buf + (1 - dampening) * g``, and
    ``g = g + momentum * buf`` (nesterov) or ``g = buf``; ``param -= lr * g``.

    Shapes/dtypes: param, grad, momentum_buffer identical, float32/float64.
    momentum_buffer is required (updated in place) when momentum != 0.
    Raises TypeError (dtypes), ValueError (shapes, negative lr / momentum /
    weight_decay, step < 1, nesterov without momentum or with dampening,
    missing buffer, read-only param).
    """
    op = "sgd_step"
    step = _step(op, step)
    lr = v.real_scalar(op, "lr", lr, 0.0)
    momentum = v.real_scalar(op, "momentum", momentum, 0.0)
    dampening = v.real_scalar(op, "dampening", dampening)
    weight_decay = v.real_scalar(op, "weight_decay", weight_decay, 0.0)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"{op}: nesterov momentum requires a momentum and zero dampening")
    if momentum != 0 and momentum_buffer is None:
        raise ValueError(f"{op}: argument 'momentum_buffer' is required when momentum != 0")
    _run_inplace("sgd_step", op,
                 {"param": param, "grad": grad,
                  "momentum_buffer": momentum_buffer if momentum != 0 else None},
                 dict(step=step, lr=lr, momentum=momentum, dampening=dampening,
                      weight_decay=weight_decay, nesterov=bool(nesterov),
                      maximize=bool(maximize)))


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
              maximize=False, decoupled_weight_decay=False):
    """One ``torch.optim.Adam`` update (``foreach=False``), in place; AdamW when
    ``decoupled_weight_decay=True``.

    ``m = m + (1 - beta1) * (g - m)``, ``v = beta2 * v + (1 - beta2) * g**2``,
    ``param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)``
    (``v`` replaced by its running max with ``amsgrad``).

    Shapes/dtypes: param, grad, exp_avg, exp_avg_sq (and max_exp_avg_sq,
    required with amsgrad) identical, float32/float64.
    Raises TypeError (dtypes), ValueError (shapes, lr < 0, eps < 0, betas
    outside [0, 1), weight_decay < 0, step < 1, a missing or read-only state).
    """
    op = "adam_step"
    step = _step(op, step)
    lr = v.real_scalar(op, "lr", lr, 0.0)
    beta1 = v.real_scalar(op, "beta1", beta1, 0.0, 1.0, hi_open=True)
    beta2 = v.real_scalar(op, "beta2", beta2, 0.0, 1.0, hi_open=True)
    eps = v.real_scalar(op, "eps", eps, 0.0)
    weight_decay = v.real_scalar(op, "weight_decay", weight_decay, 0.0)
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError(f"{op}: argument 'max_exp_avg_sq' is required when amsgrad=True")
    _run_inplace("adam_step", op,
                 {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                  "max_exp_avg_sq": max_exp_avg_sq if amsgrad else None},
                 dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                      weight_decay=weight_decay, amsgrad=bool(amsgrad),
                      maximize=bool(maximize),
                      decoupled_weight_decay=bool(decoupled_weight_decay)))

