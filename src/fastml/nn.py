"""Modules for training loops (``torch.nn`` names, explicit backward passes).

A module computes ``forward(x)`` on the current backend (through
:mod:`fastml.layers`) and caches what its ``backward(grad_out)`` needs.
``backward`` returns the gradient of the module's input and stores (overwrites)
the gradients of its parameters; there is no autograd and no accumulation.
``parameters()`` returns the live arrays, in a fixed order, so an optimizer
from :mod:`fastml.optim` updates the module in place::

    model = nn.Sequential(nn.Linear(64, 128, rng=rng), nn.ReLU(), nn.Linear(128, 10, rng=rng))
    opt = optim.Adam(model.parameters())
    loss, grad = losses.cross_entropy_and_grad(model(x), y)
    model.backward(grad)
    opt.step(model.gradients())
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import layers

__all__ = ["Module", "Linear", "Conv2d", "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh",
           "Softmax", "LogSoftmax", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
           "LayerNorm", "Dropout", "Embedding", "Flatten", "Sequential"]


class Module:
    """Base class: parameters, gradients, train/eval mode and state dicts.

    Subclasses list their parameter attributes in ``_param_names`` (an
    attribute may be None, e.g. a Linear without bias) and keep the matching
    gradients in ``self._grads``; state that is not trained (batch norm's
    running statistics) is listed in ``_buffer_names``: it is in the state dict,
    not in :meth:`parameters`. Containers override :meth:`named_children`.
    """

    _param_names: tuple = ()
    _buffer_names: tuple = ()

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

    def _state(self, prefix=""):
        """``(qualified name, live array)`` of parameters and buffers, in torch's
        state-dict order: own parameters, own buffers, then each child's."""
        for name in self._param_names + self._buffer_names:
            a = getattr(self, name)
            if a is not None:
                yield prefix + name, a
        for cname, child in self.named_children():
            yield from child._state(f"{prefix}{cname}.")

    def state_dict(self):
        """An OrderedDict ``name -> copy`` of every parameter and buffer
        (``"0.weight"``, ``"1.running_mean"`` style keys, as torch)."""
        return OrderedDict((n, np.array(a, copy=True)) for n, a in self._state())

    def load_state_dict(self, state_dict):
        """Copy ``state_dict``'s arrays into the live parameters and buffers
        (optimizers keep working).

        Strict, as ``torch.nn.Module.load_state_dict``: raises KeyError for
        missing or unexpected keys and ValueError for a shape mismatch; nothing
        is modified unless every entry fits.
        """
        own = OrderedDict(self._state())
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


def _count(cls, name, n, minimum=0):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{cls}: {name} must be an int >= {minimum}, got {n!r}")
    return int(n)


def _uniform_init(rng, fan_in, shape, dt):
    """torch's default for Linear and Conv2d weights and biases (kaiming_uniform_ with
    a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, shape).astype(dt)


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
        in_features = _count("Linear", "in_features", in_features)
        out_features = _count("Linear", "out_features", out_features)
        dt = _param_dtype(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = in_features, out_features
        self.weight = _uniform_init(rng, in_features, (out_features, in_features), dt)
        self.bias = _uniform_init(rng, in_features, out_features, dt) if bias else None
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


class Conv2d(Module):
    """2-D convolution (``torch.nn.Conv2d``, groups=1, zero padding).

    weight ``(out_channels, in_channels, kh, kw)``, bias ``(out_channels,)`` (None
    when ``bias=False``), ``dtype`` float32 or float64, both ~ U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) with ``fan_in = in_channels * kh * kw`` (PyTorch's default),
    drawn from ``rng``. ``kernel_size``, ``stride``, ``padding``, ``dilation``:
    an int or an (h, w) pair. Input ``(N, in_channels, H, W)``.
    """

    _param_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        in_channels = _count("Conv2d", "in_channels", in_channels, 1)
        out_channels = _count("Conv2d", "out_channels", out_channels, 1)
        kh, kw = layers._pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = layers._pair("Conv2d", "stride", stride, 1)
        self.padding = layers._pair("Conv2d", "padding", padding, 0)
        self.dilation = layers._pair("Conv2d", "dilation", dilation, 1)
        dt = _param_dtype(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        fan_in = in_channels * kh * kw
        self.weight = _uniform_init(rng, fan_in, (out_channels, in_channels, kh, kw), dt)
        self.bias = _uniform_init(rng, fan_in, out_channels, dt) if bias else None
        self._grads = {n: np.zeros_like(getattr(self, n)) for n in self._param_names
                       if getattr(self, n) is not None}
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def backward(self, grad_out):
        gx, self._grads["weight"], gb = layers.conv2d_backward(
            grad_out, self._cached(self._x), self.weight, self.stride, self.padding,
            self.dilation, has_bias=self.bias is not None)
        if gb is not None:
            self._grads["bias"] = gb
        return gx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")


class _Stateless(Module):
    """A module without parameters whose backward needs its input (or output)."""

    def __init__(self):
        super().__init__()
        self._saved = None

    def backward(self, grad_out):
        return self._backward(grad_out, self._cached(self._saved))


class Sigmoid(_Stateless):
    """``1 / (1 + exp(-x))`` element-wise (``torch.nn.Sigmoid``)."""

    def forward(self, x):
        self._saved = layers.sigmoid(x)
        return self._saved

    def _backward(self, grad_out, y):
        return layers.sigmoid_backward(grad_out, y)


class Tanh(_Stateless):
    """``tanh(x)`` element-wise (``torch.nn.Tanh``)."""

    def forward(self, x):
        self._saved = layers.tanh(x)
        return self._saved

    def _backward(self, grad_out, y):
        return layers.tanh_backward(grad_out, y)


class Softmax(_Stateless):
    """Softmax along ``dim`` (``torch.nn.Softmax``; default the last axis)."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        self._saved = layers.softmax(x, self.dim)
        return self._saved

    def _backward(self, grad_out, y):
        return layers.softmax_backward(grad_out, y, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """Log-softmax along ``dim`` (``torch.nn.LogSoftmax``; default the last axis)."""

    def forward(self, x):
        self._saved = layers.log_softmax(x, self.dim)
        return self._saved

    def _backward(self, grad_out, y):
        return layers.log_softmax_backward(grad_out, y, self.dim)


class MaxPool2d(_Stateless):
    """Maximum over windows (``torch.nn.MaxPool2d``, dilation 1, floor mode);
    ``stride`` defaults to ``kernel_size``."""

    _fn, _bwd = staticmethod(layers.max_pool2d), staticmethod(layers.max_pool2d_backward)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        layers.pool_geometry(type(self).__name__, kernel_size, stride, padding)  # fail early

    def forward(self, x):
        self._saved = x
        return self._fn(x, self.kernel_size, self.stride, self.padding)

    def _backward(self, grad_out, x):
        return self._bwd(grad_out, x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    """Mean over windows (``torch.nn.AvgPool2d``, count_include_pad=True, floor mode)."""

    _fn, _bwd = staticmethod(layers.avg_pool2d), staticmethod(layers.avg_pool2d_backward)


class _BatchNorm(Module):
    """Batch normalization over every axis but the channels (axis 1).

    weight (ones) and bias (zeros) ``(num_features,)`` when ``affine``;
    buffers running_mean (zeros), running_var (ones) and num_batches_tracked
    (0-d int64) when ``track_running_stats``, all as ``torch.nn.BatchNorm*d``.
    Training: batch statistics, running statistics updated in place. Evaluation:
    the running statistics (batch statistics when not tracked). ``momentum``
    must be a number (torch's cumulative ``momentum=None`` is not supported).
    """

    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    _ndims: tuple = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        c = _count(name, "num_features", num_features, 1)
        dt = _param_dtype(dtype)
        self.num_features, self.eps, self.momentum = c, eps, momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.weight = np.ones(c, dt) if affine else None
        self.bias = np.zeros(c, dt) if affine else None
        self.running_mean = np.zeros(c, dt) if track_running_stats else None
        self.running_var = np.ones(c, dt) if track_running_stats else None
        self.num_batches_tracked = np.array(0, np.int64) if track_running_stats else None
        self._grads = {n: np.zeros(c, dt) for n in self._param_names if affine}
        self._x = None
        self._batch_stats = True

    def forward(self, x):
        if np.ndim(x) not in self._ndims:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(map(str, self._ndims))}"
                             f"-d input, got shape {np.shape(x)}")
        self._x = x
        self._batch_stats = self.training or self.running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked += 1
        return layers.batch_norm(x, self.weight, self.bias, self.running_mean,
                                 self.running_var, training=self._batch_stats,
                                 momentum=self.momentum, eps=self.eps)

    def backward(self, grad_out):
        x = self._cached(self._x)
        if self._batch_stats:
            gx, gw, gb = layers.batch_norm_backward(grad_out, x, self.weight, self.eps)
        else:
            # Evaluation: y = x * s + t per channel, s = weight / sqrt(running_var + eps);
            # grad_x = grad_out * s is the same batch_norm with zero mean and no shift.
            gx = layers.batch_norm(grad_out, self.weight, None, np.zeros_like(self.running_mean),
                                   self.running_var, training=False, eps=self.eps)
            axes = (0,) + tuple(range(2, np.ndim(x)))
            shape = (1, -1) + (1,) * (np.ndim(x) - 2)
            xhat = (x - self.running_mean.reshape(shape)) / np.sqrt(
                self.running_var.reshape(shape) + self.eps)
            gw, gb = (grad_out * xhat).sum(axis=axes), grad_out.sum(axis=axes)
        if self.affine:
            self._grads["weight"], self._grads["bias"] = gw, gb
        return gx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d``: input ``(N, C)`` or ``(N, C, L)``."""

    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d``: input ``(N, C, H, W)``."""

    _ndims = (4,)


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` axes
    (``torch.nn.LayerNorm``): weight ones and bias zeros of ``normalized_shape``
    when ``elementwise_affine`` (bias None when ``bias=False``)."""

    _param_names = ("weight", "bias")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype=np.float32):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
            else tuple(normalized_shape)
        for s in shape:
            _count("LayerNorm", "normalized_shape", s)
        dt = _param_dtype(dtype)
        self.normalized_shape, self.eps = tuple(int(s) for s in shape), eps
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(shape, dt) if elementwise_affine else None
        self.bias = np.zeros(shape, dt) if elementwise_affine and bias else None
        self._grads = {n: np.zeros(shape, dt) for n in self._param_names
                       if getattr(self, n) is not None}
        self._x = None

    def forward(self, x):
        self._x = x
        return layers.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def backward(self, grad_out):
        gx, gw, gb = layers.layer_norm_backward(grad_out, self._cached(self._x),
                                                self.normalized_shape, self.weight, self.eps)
        if gw is not None:
            self._grads["weight"] = gw
            if self.bias is not None:
                self._grads["bias"] = gb
        return gx

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class Dropout(Module):
    """Dropout (``torch.nn.Dropout``): in training, each element is zeroed with
    probability ``p`` and the rest scaled by ``1 / (1 - p)``; the identity in
    evaluation. Each call's mask seed is drawn from ``rng`` (a
    ``numpy.random.Generator``; a fresh unseeded one when None), so a seeded rng
    reproduces the masks on every backend."""

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        self.p = layers._p("Dropout", p)
        self._rng = np.random.default_rng() if rng is None else rng
        self._mask = None

    def forward(self, x):
        if not self.training:
            self._mask = None
            return x
        y, self._mask = layers.dropout(x, self.p, training=True,
                                       seed=int(self._rng.integers(0, 2 ** 63)))
        return y

    def backward(self, grad_out):
        if self._mask is None:
            return grad_out
        return layers.dropout_backward(grad_out, self._mask, self.p)

    def extra_repr(self):
        return f"p={self.p}"


class Embedding(Module):
    """A lookup table (``torch.nn.Embedding``): weight ``(num_embeddings,
    embedding_dim)`` ~ N(0, 1) from ``rng`` (PyTorch's default). Input: integer
    indices of any shape; output ``indices.shape + (embedding_dim,)``.
    ``backward`` stores the weight's gradient (repeated indices accumulate) and
    returns None: indices have no gradient."""

    _param_names = ("weight",)

    def __init__(self, num_embeddings, embedding_dim, *, dtype=np.float32, rng=None):
        super().__init__()
        self.num_embeddings = _count("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = _count("Embedding", "embedding_dim", embedding_dim)
        rng = np.random.default_rng() if rng is None else rng
        self.weight = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(
            _param_dtype(dtype))
        self._grads = {"weight": np.zeros_like(self.weight)}
        self._indices = None

    def forward(self, indices):
        self._indices = indices
        return layers.embedding(indices, self.weight)

    def backward(self, grad_out):
        self._grads["weight"] = layers.embedding_backward(
            grad_out, self._cached(self._indices), self.num_embeddings)
        return None

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Flatten(Module):
    """Flattens axes ``start_dim..end_dim`` into one (``torch.nn.Flatten``; default
    all but the batch axis). A view; backward restores the input's shape."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self._shape = None

    def forward(self, x):
        shape = np.shape(x)
        nd = len(shape)
        start, end = self.start_dim % max(nd, 1), self.end_dim % max(nd, 1)
        if nd == 0 or start > end:
            raise ValueError(f"Flatten: start_dim {self.start_dim} and end_dim {self.end_dim} "
                             f"do not fit an input of shape {shape}")
        self._shape = shape
        return np.reshape(x, shape[:start] + (-1,) + shape[end + 1:])

    def backward(self, grad_out):
        return np.reshape(grad_out, self._cached(self._shape))

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


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
