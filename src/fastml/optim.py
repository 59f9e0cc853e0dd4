"""Optimizer update steps (``torch.optim`` single-tensor algorithms), in place.

Each ``*_step`` updates ``param`` and its state arrays in place from ``grad``
(all the same shape and dtype, float32 or float64) and returns None. ``step``
is the 1-based step count after this update. The accelerated backends fuse
the whole update into one pass over the parameters.

The classes :class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`RMSprop` and
:class:`Adagrad` hold the state of
a list of parameter arrays (updated in place) and call these steps, as
``torch.optim`` does: ``opt.step(grads)`` takes one gradient per parameter.
"""
from __future__ import annotations

import numpy as np

from . import _validate as v
from ._config import instance as _backend

__all__ = ["sgd_step", "adam_step", "rmsprop_step", "adagrad_step", "Optimizer", "SGD", "Adam",
           "AdamW", "RMSprop", "Adagrad"]


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



def rmsprop_step(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
    """One ``torch.optim.RMSprop`` update (``foreach=False``), in place.

    ``g = ±grad + weight_decay * param``, ``sq = alpha * sq + (1 - alpha) * g**2``;
    centered: ``ga = ga + (1 - alpha) * (g - ga)`` and ``avg = sqrt(sq - ga**2) + eps``,
    else ``avg = sqrt(sq) + eps``; with momentum ``buf = momentum * buf + g / avg``
    and ``param -= lr * buf``, else ``param -= lr * g / avg``.

    Shapes/dtypes: param, grad, square_avg (and momentum_buffer, required when
    momentum > 0, and grad_avg, required when centered) identical, float32/float64.
    Raises TypeError (dtypes), ValueError (shapes, negative lr / alpha / eps /
    weight_decay / momentum, a missing or read-only state).
    """
    op = "rmsprop_step"
    lr = v.real_scalar(op, "lr", lr, 0.0)
    alpha = v.real_scalar(op, "alpha", alpha, 0.0)
    eps = v.real_scalar(op, "eps", eps, 0.0)
    weight_decay = v.real_scalar(op, "weight_decay", weight_decay, 0.0)
    momentum = v.real_scalar(op, "momentum", momentum, 0.0)
    if momentum > 0 and momentum_buffer is None:
        raise ValueError(f"{op}: argument 'momentum_buffer' is required when momentum > 0")
    if centered and grad_avg is None:
        raise ValueError(f"{op}: argument 'grad_avg' is required when centered=True")
    _run_inplace("rmsprop_step", op,
                 {"param": param, "grad": grad, "square_avg": square_avg,
                  "momentum_buffer": momentum_buffer if momentum > 0 else None,
                  "grad_avg": grad_avg if centered else None},
                 dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                      momentum=momentum, centered=bool(centered), maximize=bool(maximize)))


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False):
    """One ``torch.optim.Adagrad`` update (``foreach=False``, dense), in place.

    ``g = ±grad + weight_decay * param``, ``state_sum += g**2``,
    ``param -= lr / (1 + (step - 1) * lr_decay) * g / (sqrt(state_sum) + eps)``.

    Shapes/dtypes: param, grad, state_sum identical, float32/float64.
    Raises TypeError (dtypes), ValueError (shapes, negative lr / lr_decay /
    weight_decay / eps, step < 1, a read-only state).
    """
    op = "adagrad_step"
    step = _step(op, step)
    lr = v.real_scalar(op, "lr", lr, 0.0)
    lr_decay = v.real_scalar(op, "lr_decay", lr_decay, 0.0)
    weight_decay = v.real_scalar(op, "weight_decay", weight_decay, 0.0)
    eps = v.real_scalar(op, "eps", eps, 0.0)
    _run_inplace("adagrad_step", op, {"param": param, "grad": grad, "state_sum": state_sum},
                 dict(step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                      maximize=bool(maximize)))



# ------------------------------------------------------------------- classes
class Optimizer:
    """Base class: one parameter group, lazily allocated per-parameter state.

    ``param_groups[0]`` holds ``"params"`` (the live arrays) and the
    hyper-parameters; changing e.g. ``param_groups[0]["lr"]`` affects the next
    step, as in PyTorch. ``state[i]`` is the state of parameter ``i``,
    created by its first update.
    """

    def __init__(self, params, defaults):
        name = type(self).__name__
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{name}: params[{i}] must be a NumPy array updated in place, "
                                f"got {type(p).__name__}")
            v.inplace_array(name, f"params[{i}]", p)
        self.defaults = dict(defaults)
        self.param_groups = [{"params": params, **defaults}]
        self.state: dict = {}

    def step(self, grads):
        """Update every parameter in place from its gradient (same order as the params).

        ``grads[i]`` has the shape and dtype of ``params[i]``, or is None to
        leave that parameter (and its state) untouched. Every gradient is
        checked before any parameter changes. Raises ValueError (wrong count
        or shape) and TypeError (dtype).
        """
        op = f"{type(self).__name__}.step"
        group = self.param_groups[0]
        params = group["params"]
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"{op}: expected {len(params)} gradients (one per parameter), "
                             f"got {len(grads)}")
        checked = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                g = v.float_array(op, f"grads[{i}]", g)
                v.check_shape(op, f"grads[{i}]", g, p.shape, f"(that of params[{i}])")
                v.same_dtype(op, **{f"params[{i}]": p, f"grads[{i}]": g})
            checked.append(g)
        for i, (p, g) in enumerate(zip(params, checked)):
            if g is not None:
                self._update(p, g, self.state.setdefault(i, self._init_state(p)), group)

    def _init_state(self, param) -> dict:
        raise NotImplementedError

    def _update(self, param, grad, state, group) -> None:
        raise NotImplementedError

    def state_dict(self):
        """``{"state": {i: {name: copy}}, "param_groups": [{**hyper, "params": [0..n-1]}]}``:
        ``torch.optim.Optimizer.state_dict``'s layout, with copies of the arrays."""
        group = dict(self.param_groups[0])
        group["params"] = list(range(len(group["params"])))
        state = {i: {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in st.items()}
                 for i, st in self.state.items()}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and copies of the state saved by :meth:`state_dict`.

        Raises ValueError when the saved optimizer has a different number of
        parameters, other hyper-parameter names, or state shapes that do not
        match the parameters.
        """
        name = type(self).__name__
        params = self.param_groups[0]["params"]
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            saved = sum(len(g["params"]) for g in groups)
            raise ValueError(f"{name}.load_state_dict: the saved state is for {saved} parameters "
                             f"in {len(groups)} group(s); this optimizer has one group of "
                             f"{len(params)}")
        hyper = {k: x for k, x in groups[0].items() if k != "params"}
        if set(hyper) != set(self.defaults):
            raise ValueError(f"{name}.load_state_dict: hyper-parameters {sorted(hyper)} do not "
                             f"match {sorted(self.defaults)}")
        state = {}
        for i, st in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i} of "
                                 f"{len(params)}")
            state[i] = {}
            for k, x in st.items():
                if isinstance(x, np.ndarray):
                    if x.shape != params[i].shape:
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter {i} "
                                         f"has shape {x.shape}, the parameter {params[i].shape}")
                    x = np.array(x, dtype=params[i].dtype)
                state[i][k] = x
        self.param_groups[0] = {"params": params, **hyper}
        self.state = state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (``torch.optim.SGD``), via :func:`sgd_step`.

    State per parameter: ``step`` and ``momentum_buffer`` (None while
    momentum is 0). Raises ValueError for a negative lr, momentum or
    weight_decay, and for nesterov without momentum or with dampening.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _init_state(self, param):
        return {"step": 0, "momentum_buffer": None}

    def _update(self, param, grad, state, group):
        state["step"] += 1
        fresh = group["momentum"] != 0 and state["momentum_buffer"] is None
        if fresh:  # sgd_step fills a fresh buffer with the gradient, as torch does
            state["momentum_buffer"] = np.empty_like(param)
        sgd_step(param, grad, state["momentum_buffer"], step=1 if fresh else state["step"],
                 lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                 weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                 maximize=group["maximize"])


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``), via :func:`adam_step`; AdamW with
    ``decoupled_weight_decay=True``.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``. Raises ValueError for a negative lr, eps or
    weight_decay and for betas outside [0, 1).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _init_state(self, param):
        return {"step": 0, "exp_avg": np.zeros_like(param), "exp_avg_sq": np.zeros_like(param)}

    def _update(self, param, grad, state, group):
        state["step"] += 1
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(param)
        beta1, beta2 = group["betas"]
        adam_step(param, grad, state["exp_avg"], state["exp_avg_sq"],
                  state.get("max_exp_avg_sq"), step=state["step"], lr=group["lr"],
                  beta1=beta1, beta2=beta2, eps=group["eps"],
                  weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
                  maximize=group["maximize"],
                  decoupled_weight_decay=group["decoupled_weight_decay"])


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): ``param *= 1 - lr * weight_decay``
    before the Adam update; weight_decay defaults to 1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``), via :func:`rmsprop_step`.

    State per parameter: ``step``, ``square_avg`` and, as torch, ``momentum_buffer``
    when momentum > 0 and ``grad_avg`` when centered. Raises ValueError for a
    negative lr, eps, momentum, weight_decay or alpha.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _init_state(self, param):
        return {"step": 0, "square_avg": np.zeros_like(param)}

    def _update(self, param, grad, state, group):
        state["step"] += 1
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = np.zeros_like(param)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = np.zeros_like(param)
        rmsprop_step(param, grad, state["square_avg"], state.get("momentum_buffer"),
                     state.get("grad_avg"), lr=group["lr"], alpha=group["alpha"],
                     eps=group["eps"], weight_decay=group["weight_decay"],
                     momentum=group["momentum"], centered=group["centered"],
                     maximize=group["maximize"])


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``), via :func:`adagrad_step`.

    State per parameter: ``step`` and ``sum`` (starting at
    initial_accumulator_value). Raises ValueError for a negative lr, lr_decay,
    weight_decay, initial_accumulator_value or eps.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, *, maximize=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))

    def _init_state(self, param):
        return {"step": 0, "sum": np.full_like(param,
                                               self.param_groups[0]["initial_accumulator_value"])}

    def _update(self, param, grad, state, group):
        state["step"] += 1
        adagrad_step(param, grad, state["sum"], step=state["step"], lr=group["lr"],
                     lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                     eps=group["eps"], maximize=group["maximize"])
