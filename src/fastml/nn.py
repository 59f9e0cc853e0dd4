"""Modules for training loops (``torch.nn`` names, explicit backward passes).

A module computes ``forward(x)`` on the current backend (through
:mod:`fastml.layers`) and caches what its ``backward(grad_out)`` needs.
``backward`` returns the gradient of the module's input and stores (overwrites)
the gradients of its parameters; there is no autograd and no accumulation.
``parameters()`` returns the live arrays, in a fixed order, so an optimizer
from :mod:`fastml.optim` updates the module in place::

    model = nn.Sequential(nn.Linear(64, 128, rng=rng), nn.ReLU(), nn.Linear(128, 10, rng=rng))
    opt = optim.Adam(model.parameters())
    logits = model(x)
    model.backward(losses.cross_entropy_grad(logits, y))
    opt.step(model.gradients())
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import layers

__all__ = ["Module", "Linear", "ReLU", "LeakyReLU", "GELU", "SiLU", "Sequential"]


class Module:
    """Base class: parameters, gradients, train/eval mode and state dicts.

    Subclasses list their parameter attributes in ``_param_names`` (an
    attribute may be None, e.g. a Linear without bias) and keep the matching
    gradients in ``self._grads``; containers override :meth:`named_children`.
    """

    _param_names: tuple = ()

    def __init__(self):
        self.training = True
        self._grads: dict = {}

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def named_children(self):
        """``(name, module)`` pairs of the direct sub-modules."""
        return ()

    def _walk(self, prefix=""):
        """``(qualified name, parameter, gradient)`` triples: own, then the children's."""
        for name in self._param_names:
            p = getattr(self, name)
            if p is not None:
                yield prefix + name, p, self._grads[name]
        for cname, child in self.named_children():
            yield from child._walk(f"{prefix}{cname}.")

    def named_parameters(self):
        """``(qualified name, live array)`` pairs, in :meth:`parameters` order."""
        return [(n, p) for n, p, _ in self._walk()]

    def parameters(self):
        """The live parameter arrays (weight before bias, children in order)."""
        return [p for _, p, _ in self._walk()]

    def gradients(self):
        """The parameter gradients stored by the last ``backward``, same order as
        :meth:`parameters` (zeros before the first ``backward``)."""
        return [g for _, _, g in self._walk()]

    def train(self, mode=True):
        """Set training mode on this module and every sub-module; returns self."""
        self.training = bool(mode)
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (``train(False)``); returns self."""
        return self.train(False)

    def state_dict(self):
        """An OrderedDict ``name -> copy of the parameter`` (``"0.weight"`` style keys)."""
        return OrderedDict((n, p.copy()) for n, p in self.named_parameters())

    def load_state_dict(self, state_dict):
        """Copy ``state_dict``'s arrays into the live parameters (optimizers keep working).

        Strict, as ``torch.nn.Module.load_state_dict``: raises KeyError for
        missing or unexpected keys and ValueError for a shape mismatch; nothing
        is modified unless every entry fits.
        """
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        values = {k: np.asarray(state_dict[k]) for k in own}
        for k, p in own.items():
            if values[k].shape != p.shape:
                raise ValueError(f"load_state_dict: '{k}' has shape {values[k].shape}, "
                                 f"the module's parameter has {p.shape}")
        for k, p in own.items():
            np.copyto(p, values[k], casting="same_kind")

    def extra_repr(self):
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = "".join(f"\n  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in children)
        return f"{type(self).__name__}({lines}\n)"

    def _cached(self, x):
        if x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return x


def _param_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"parameters must be float32 or float64, got dtype {dt}")
    return dt


class Linear(Module):
    """``y = x @ weight.T + bias`` (``torch.nn.Linear``).

    weight ``(out_features, in_features)``, bias ``(out_features,)`` (None when
    ``bias=False``), both ``dtype`` (float32 or float64). Initialised as
    PyTorch does: weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))
    (``kaiming_uniform_(a=sqrt(5))``), drawn from ``rng`` (a
    ``numpy.random.Generator``; a fresh unseeded one when None).
    Input ``(*, in_features)`` of the parameters' dtype.
    """

    _param_names = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {n!r}")
        dt = _param_dtype(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(dt)
        self.bias = rng.uniform(-bound, bound, out_features).astype(dt) if bias else None
        self._grads = {n: np.zeros_like(getattr(self, n)) for n in self._param_names
                       if getattr(self, n) is not None}
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.linear(x, self.weight, self.bias)

    def backward(self, grad_out):
        gx, self._grads["weight"], gb = layers.linear_backward(
            grad_out, self._cached(self._x), self.weight, has_bias=self.bias is not None)
        if gb is not None:
            self._grads["bias"] = gb
        return gx

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class ReLU(Module):
    """``max(x, 0)`` element-wise (``torch.nn.ReLU``); relu'(0) = 0, NaN propagates."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.relu(x)

    def backward(self, grad_out):
        return layers.relu_backward(grad_out, self._cached(self._x))


class LeakyReLU(Module):
    """``x if x > 0 else negative_slope * x`` element-wise (``torch.nn.LeakyReLU``)."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.leaky_relu(x, self.negative_slope)

    def backward(self, grad_out):
        return layers.leaky_relu_backward(grad_out, self._cached(self._x), self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class GELU(Module):
    """``x * Phi(x)`` element-wise (``torch.nn.GELU``); ``approximate`` 'none' or 'tanh'."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.gelu(x, self.approximate)

    def backward(self, grad_out):
        return layers.gelu_backward(grad_out, self._cached(self._x), self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """``x * sigmoid(x)`` element-wise (``torch.nn.SiLU``)."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.silu(x)

    def backward(self, grad_out):
        return layers.silu_backward(grad_out, self._cached(self._x))


class Sequential(Module):
    """Modules applied in order (``torch.nn.Sequential``); backward runs them in reverse.

    ``Sequential(m0, m1, ...)`` names the children ``"0"``, ``"1"``, ...;
    ``Sequential(OrderedDict(name=module, ...))`` keeps the given names.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: {name!r} is not a fastml.nn.Module "
                                f"({type(m).__name__})")
        self._modules = OrderedDict(items)

    def named_children(self):
        return tuple(self._modules.items())

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[idx]

    def forward(self, x):
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, grad_out):
        for m in reversed(self._modules.values()):
            grad_out = m.backward(grad_out)
        return grad_out
