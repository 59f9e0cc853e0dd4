"""The op table: one row per public op, driving the property tests and the benchmarks.

A row names the op (as in ``fastml.backend_info()["ops"]``), how to call it
from a dict of generated arguments, a hypothesis strategy for those
arguments per dtype, its tolerance, and benchmark inputs. Adding an op to
fastml is: the reference method, its kernels, and one row here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np

import fastml
from fastml import layers, losses, optim
from fastml._config import instance

FLOATS = (np.float32, np.float64)
BASE_TOL = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-12)}
SPECIALS = (math.nan, math.inf, -math.inf)


@dataclass
class Row:
    op: str                                   # qualified op name
    call: Callable[[dict], Any]               # run the op on generated arguments
    inputs: Callable[[Any], st.SearchStrategy]  # dtype -> strategy of argument dicts
    reduces: bool = False                     # long reductions: tolerance scales with sqrt(n)
    tol: dict = field(default_factory=dict)   # dtype -> (rtol, atol) overriding BASE_TOL
    bench: Callable[[Any], dict] | None = None  # dtype -> large arguments for benchmarks
    peer: Callable[[dict], Any] | None = None   # PyTorch / scikit-learn equivalent for benchmarks
    bench_call: Callable[[dict], Any] | None = None  # in-place ops: update without copying
    large: Callable[[Any], dict] | None = None  # dtype -> large test inputs (default: bench's)
    finite: tuple = ()                          # arguments the op rejects NaN/inf in
    # with ``reduces``: the longest sum the op computes, when it is not an input's longest axis
    reduction: Callable[[dict], int] | None = None
    # the absolute error the float64 reference itself makes on these inputs (added to atol)
    reference_error: Callable[[dict], float] | None = None

    def timed(self, args):
        """What the benchmark times: the op itself, without the tests' defensive copies."""
        return (self.bench_call or self.call)(args)

    def reduction_size(self, args) -> int:
        return self.reduction(args) if self.reduction else size_of(args)

    def tolerance(self, dtype, n: int) -> tuple[float, float]:
        rtol, atol = self.tol.get(np.dtype(dtype), BASE_TOL[np.dtype(dtype)])
        scale = math.sqrt(max(n, 1)) if self.reduces else 1.0
        return rtol * scale, atol * scale


# ------------------------------------------------------------------ strategies
def elements(dtype, lo=-100.0, hi=100.0, special=True):
    """Finite values in [lo, hi], and about one in eight NaN/inf when ``special``."""
    finite = st.floats(lo, hi, width=32 if np.dtype(dtype) == np.float32 else 64)
    if not special:
        return finite
    return st.one_of(*([finite] * 7), st.sampled_from(SPECIALS))


@st.composite
def arrays(draw, dtype, shape, lo=-100.0, hi=100.0, special=True, layout=True):
    """An array of ``shape``; with ``layout``, sometimes a non-contiguous view."""
    shape = tuple(shape)
    strided = layout and len(shape) >= 1 and draw(st.booleans())
    if strided:  # every other column of a twice-as-wide array
        base = draw(hnp.arrays(dtype, shape[:-1] + (2 * shape[-1],),
                               elements=elements(dtype, lo, hi, special)))
        return base[..., ::2]
    return draw(hnp.arrays(dtype, shape, elements=elements(dtype, lo, hi, special)))


def shapes(min_dims=1, max_dims=3, min_side=0, max_side=6):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


@st.composite
def unary(draw, dtype, lo=-100.0, hi=100.0):
    return {"x": draw(arrays(dtype, draw(shapes()), lo, hi))}


@st.composite
def binary(draw, dtype, other, lo=-100.0, hi=100.0):
    shape = draw(shapes())
    return {"grad_out": draw(arrays(dtype, shape)), other: draw(arrays(dtype, shape, lo, hi))}


def row_lengths(short=8):
    """Mostly short rows, sometimes rows long enough for the kernels' vector blocks and tails."""
    return st.one_of(st.integers(0, short), st.integers(0, short), st.integers(60, 140))


@st.composite
def rowwise(draw, dtype, names, lo=-30.0, hi=30.0):
    shape = draw(st.one_of(shapes(), st.tuples(st.integers(1, 3), row_lengths())))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    out = {n: draw(arrays(dtype, shape, lo, hi)) for n in names}
    out["axis"] = axis
    return out


@st.composite
def linear_inputs(draw, dtype, backward=False):
    batch = draw(shapes(min_dims=0, max_dims=2, max_side=5))
    n_in, n_out = draw(st.integers(0, 6)), draw(st.integers(1, 6))
    d = {"x": draw(arrays(dtype, batch + (n_in,), -3, 3, special=False)),
         "weight": draw(arrays(dtype, (n_out, n_in), -3, 3, special=False))}
    if backward:
        d["grad_out"] = draw(arrays(dtype, batch + (n_out,), -3, 3, special=False))
        d["has_bias"] = draw(st.booleans())
    elif draw(st.booleans()):
        d["bias"] = draw(arrays(dtype, (n_out,), -3, 3, special=False))
    return d


@st.composite
def mse_inputs(draw, dtype, lo=-100.0, hi=100.0):
    shape = draw(shapes())
    return {"input": draw(arrays(dtype, shape, lo, hi)), "target": draw(arrays(dtype, shape, lo, hi)),
            "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}


@st.composite
def huber_inputs(draw, dtype):
    """Differences of the order of delta, so both branches (and the kink) are hit."""
    return {**draw(mse_inputs(dtype, -4.0, 4.0)), "delta": draw(st.sampled_from([0.5, 1.0, 2.5]))}


@st.composite
def loss_weight(draw, dtype, shape, lo=0.0, hi=2.0):
    """None, a weight of input's shape, or one of its trailing shapes (broadcast)."""
    kind = draw(st.sampled_from(["none", "full", "trailing"]))
    if kind == "none":
        return None
    wshape = shape if kind == "full" else shape[draw(st.integers(0, len(shape))):]
    return draw(arrays(dtype, wshape, lo, hi, special=False))


def probability_values(dtype):
    """Probabilities with the clamped ends 0 and 1 and values close to them."""
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.one_of(st.floats(0, 1, width=width), st.sampled_from([0.0, 1.0, 1e-30, 1 - 1e-7]))


@st.composite
def bce_inputs(draw, dtype):
    shape = draw(shapes())
    return {"input": draw(hnp.arrays(dtype, shape, elements=probability_values(dtype))),
            "target": draw(arrays(dtype, shape, 0.0, 1.0)),
            "weight": draw(loss_weight(dtype, shape)),
            "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}


@st.composite
def bce_logits_inputs(draw, dtype):
    shape = draw(shapes())
    return {"input": draw(arrays(dtype, shape, -100, 100)),
            "target": draw(arrays(dtype, shape, 0.0, 1.0)),
            "weight": draw(loss_weight(dtype, shape)),
            "pos_weight": draw(loss_weight(dtype, shape, 0.0, 5.0)),
            "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}


@st.composite
def kl_inputs(draw, dtype):
    shape = draw(shapes())
    log_target = draw(st.booleans())
    target = (draw(arrays(dtype, shape, -10.0, 2.0)) if log_target else
              draw(hnp.arrays(dtype, shape, elements=st.one_of(
                  probability_values(dtype), elements(dtype, -1.0, 1.0)))))
    return {"input": draw(arrays(dtype, shape, -20.0, 0.0)), "target": target,
            "reduction": draw(st.sampled_from(["mean", "batchmean", "sum", "none"])),
            "log_target": log_target}


@st.composite
def ce_inputs(draw, dtype, nll=False):
    n, c = draw(st.integers(0, 8)), max(1, draw(row_lengths()))
    ignore_index = draw(st.sampled_from([-100, 0, c - 1]))
    tdtype = draw(st.sampled_from([np.int64, np.int32, np.int16, np.uint8]))
    if np.dtype(tdtype).kind == "u" and ignore_index < 0:
        ignore_index = c - 1
    target = draw(hnp.arrays(tdtype, (n,), elements=st.one_of(
        st.integers(0, c - 1), st.just(ignore_index))))
    lo, hi = (-20, 0) if nll else (-10, 10)  # nll_loss takes log-probabilities
    d = {"input": draw(arrays(dtype, (n, c), lo, hi)), "target": target,
         "ignore_index": ignore_index,
         "reduction": draw(st.sampled_from(["mean", "sum", "none"]))}
    if not nll:
        d["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.37, 1.0]))
    if draw(st.booleans()):
        # No subnormal class weights: a 'mean' over a subnormal total weight overflows
        # its 1/total scale (to inf in PyTorch too), so backends may disagree there.
        width = 32 if np.dtype(dtype) == np.float32 else 64
        d["weight"] = draw(hnp.arrays(dtype, (c,), elements=st.floats(
            0.0, 2.0, width=width, allow_subnormal=False)))
    return d


@st.composite
def sgd_inputs(draw, dtype):
    shape = draw(shapes(max_dims=2))
    momentum = draw(st.sampled_from([0.0, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    return {"param": draw(arrays(dtype, shape, -10, 10)),
            "grad": draw(arrays(dtype, shape, -10, 10)),
            "momentum_buffer": draw(arrays(dtype, shape, -10, 10, special=False)),
            "step": draw(st.sampled_from([1, 2, 7])), "lr": draw(st.sampled_from([0.1, 1e-3])),
            "momentum": momentum, "nesterov": nesterov,
            "dampening": 0.0 if nesterov else draw(st.sampled_from([0.0, 0.25])),
            "weight_decay": draw(st.sampled_from([0.0, 1e-2])), "maximize": draw(st.booleans())}


@st.composite
def adam_inputs(draw, dtype):
    shape = draw(shapes(max_dims=2))
    return {"param": draw(arrays(dtype, shape, -10, 10)),
            "grad": draw(arrays(dtype, shape, -10, 10)),
            "exp_avg": draw(arrays(dtype, shape, -1, 1, special=False)),
            "exp_avg_sq": draw(arrays(dtype, shape, 0, 1, special=False)),
            "max_exp_avg_sq": draw(arrays(dtype, shape, 0, 2, special=False)),
            "step": draw(st.sampled_from([1, 2, 10])), "lr": draw(st.sampled_from([1e-3, 0.5])),
            "beta1": draw(st.sampled_from([0.9, 0.0])), "beta2": draw(st.sampled_from([0.999, 0.5])),
            "eps": draw(st.sampled_from([1e-8, 1e-3])),
            "weight_decay": draw(st.sampled_from([0.0, 1e-2])),
            "amsgrad": draw(st.booleans()), "maximize": draw(st.booleans()),
            "decoupled_weight_decay": draw(st.booleans())}


@st.composite
def rmsprop_inputs(draw, dtype):
    shape = draw(shapes(max_dims=2))
    return {"param": draw(arrays(dtype, shape, -10, 10)),
            "grad": draw(arrays(dtype, shape, -10, 10)),
            "square_avg": draw(arrays(dtype, shape, 0, 2, special=False)),
            "momentum_buffer": draw(arrays(dtype, shape, -1, 1, special=False)),
            "grad_avg": draw(arrays(dtype, shape, -1, 1, special=False)),
            "lr": draw(st.sampled_from([1e-2, 0.5])), "alpha": draw(st.sampled_from([0.99, 0.5])),
            "eps": draw(st.sampled_from([1e-8, 1e-3])),
            "weight_decay": draw(st.sampled_from([0.0, 1e-2])),
            "momentum": draw(st.sampled_from([0.0, 0.9])),
            "centered": draw(st.booleans()), "maximize": draw(st.booleans())}


@st.composite
def adagrad_inputs(draw, dtype):
    shape = draw(shapes(max_dims=2))
    return {"param": draw(arrays(dtype, shape, -10, 10)),
            "grad": draw(arrays(dtype, shape, -10, 10)),
            "state_sum": draw(arrays(dtype, shape, 0, 10, special=False)),
            "step": draw(st.sampled_from([1, 2, 10])), "lr": draw(st.sampled_from([1e-2, 0.5])),
            "lr_decay": draw(st.sampled_from([0.0, 0.1])),
            "weight_decay": draw(st.sampled_from([0.0, 1e-2])),
            "eps": draw(st.sampled_from([1e-10, 1e-3])), "maximize": draw(st.booleans())}


@st.composite
def columns_inputs(draw, dtype, with_scale=False, with_inf=False):
    """Columns with NaN (missing); with ``with_inf``, sometimes +-inf, which fits must detect."""
    n, f = draw(st.integers(0, 9)), draw(st.integers(0, 5))
    special = st.sampled_from(SPECIALS) if with_inf else st.just(math.nan)
    d = {"X": np.ascontiguousarray(draw(hnp.arrays(dtype, (n, f), elements=st.one_of(
        *([st.floats(-1e3, 1e3, width=32 if np.dtype(dtype) == np.float32 else 64)] * 5),
        special))))}
    if with_scale:
        d["offset"] = draw(hnp.arrays(np.float64, (f,), elements=st.floats(-10, 10)))
        d["scale"] = draw(hnp.arrays(np.float64, (f,), elements=st.floats(0.1, 10)))
    return d


@st.composite
def rows_inputs(draw, dtype):
    """Finite rows (Normalizer rejects NaN/inf), some all zero, and a norm."""
    n, f = draw(st.integers(0, 9)), draw(st.integers(0, 6))
    X = draw(hnp.arrays(dtype, (n, f), elements=st.one_of(
        st.floats(-1e3, 1e3, width=32 if np.dtype(dtype) == np.float32 else 64), st.just(0.0))))
    if n and draw(st.booleans()):
        X[draw(st.integers(0, n - 1))] = 0
    return {"X": np.ascontiguousarray(X), "norm": draw(st.sampled_from(["l1", "l2", "max"]))}


@st.composite
def quantile_inputs(draw, dtype):
    q = draw(st.lists(st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
                                st.floats(0, 1)), min_size=1, max_size=3))
    return {**draw(columns_inputs(dtype)), "q": np.array(q)}


def _label_values(draw, dtype, n):
    """Labels as the encoding kernels take them: int64 values for the float32
    parametrization (narrow spans take the kernels' dense tables, the extremes their
    sort / binary-search paths), float64 values with repeats, NaN and +-inf for float64."""
    if np.dtype(dtype) == np.float32:  # mostly a narrow span, sometimes the int64 extremes
        return draw(hnp.arrays(np.int64, (n,), elements=st.one_of(
            *([st.integers(-6, 6)] * 6), st.sampled_from([-2**63, 2**63 - 1, 10**12]))))
    return draw(hnp.arrays(np.float64, (n,), elements=st.one_of(
        st.sampled_from([0.0, -0.0, 1.5, -2.0, 1e300, math.nan, math.inf, -math.inf]),
        st.floats(-5, 5))))


@st.composite
def unique_inputs(draw, dtype):
    return {"values": _label_values(draw, dtype, draw(st.integers(0, 30)))}


@st.composite
def encode_inputs(draw, dtype):
    categories = np.unique(_label_values(draw, dtype, draw(st.integers(0, 8))))
    return {"values": _label_values(draw, dtype, draw(st.integers(0, 30))),
            "categories": categories}


SLOPES = st.sampled_from([0.01, 0.2, 0.0, -0.5, 1.5])
APPROXIMATE = st.sampled_from(["none", "tanh"])


@st.composite
def leaky_inputs(draw, dtype, backward=False):
    d = draw(binary(dtype, "x") if backward else unary(dtype))
    return {**d, "negative_slope": draw(SLOPES)}


@st.composite
def gelu_inputs(draw, dtype, backward=False):
    d = draw(binary(dtype, "x", -20, 20) if backward else unary(dtype, -20, 20))
    return {**d, "approximate": draw(APPROXIMATE)}


def _pair_st(lo, hi):
    """An int or an (h, w) pair, as the public API takes them."""
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


def _as_pair(v):
    return (v, v) if isinstance(v, int) else v


@st.composite
def conv_inputs(draw, dtype, backward=False):
    """Any stride / padding / dilation whose window fits the padded input; finite
    values (NaN/inf through a GEMM differ by summation order only in sign of zero)."""
    n, c, o = draw(st.integers(0, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding, dilation = draw(_pair_st(1, 3)), draw(_pair_st(0, 2)), draw(_pair_st(1, 2))
    (ph, pw), (dh, dw) = _as_pair(padding), _as_pair(dilation)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 8))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 8))
    d = {"x": draw(arrays(dtype, (n, c, h, w), -3, 3, special=False)),
         "weight": draw(arrays(dtype, (o, c, kh, kw), -3, 3, special=False)),
         "stride": stride, "padding": padding, "dilation": dilation}
    if backward:
        (sh, sw) = _as_pair(stride)
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        d["grad_out"] = draw(arrays(dtype, (n, o, ho, wo), -3, 3, special=False))
        d["has_bias"] = draw(st.booleans())
    elif draw(st.booleans()):
        d["bias"] = draw(arrays(dtype, (o,), -3, 3, special=False))
    return d


@st.composite
def pool_inputs(draw, dtype, backward=False):
    """Windows with NaN, +-inf and ties (values drawn from a few integers)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = draw(st.sampled_from([(kh, kw), kh]))
    kh, kw = _as_pair(kernel)
    stride = draw(st.one_of(st.none(), _pair_st(1, 3)))
    padding = draw(st.one_of(st.just(0), st.tuples(st.integers(0, kh // 2),
                                                   st.integers(0, kw // 2))))
    ph, pw = _as_pair(padding)
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 8)), draw(st.integers(max(1, kw - 2 * pw), 8))
    values = st.one_of(elements(dtype, -5, 5), st.integers(-2, 2).map(float))
    x = draw(hnp.arrays(dtype, (n, c, h, w), elements=values))
    d = {"x": x, "kernel_size": kernel, "stride": stride, "padding": padding}
    if backward:
        sh, sw = _as_pair(stride if stride is not None else kernel)
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        d["grad_out"] = draw(arrays(dtype, (n, c, ho, wo), -3, 3))
    return d


def _norm_shape(draw, min_values=1):
    """(N, C), (N, C, L) or (N, C, H, W) with at least ``min_values`` values per channel."""
    shape = draw(st.one_of(st.tuples(st.integers(1, 9), st.integers(0, 3)),
                           st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(1, 5)),
                           st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(1, 4),
                                     st.sampled_from([1, 2, 3, 40]))))
    m = shape[0] * int(np.prod(shape[2:], dtype=np.int64))
    if m < min_values:
        shape = (shape[0] + min_values,) + shape[1:]
    return shape


@st.composite
def batch_norm_inputs(draw, dtype):
    training = draw(st.booleans())
    shape = _norm_shape(draw, 2 if training else 1)
    c = shape[1]
    running = not training or draw(st.booleans())
    d = {"x": draw(arrays(dtype, shape, -10, 10, special=draw(st.booleans()))),
         "weight": draw(st.one_of(st.none(), arrays(dtype, (c,), -2, 2, special=False))),
         "bias": draw(st.one_of(st.none(), arrays(dtype, (c,), -2, 2, special=False))),
         "running_mean": (draw(arrays(dtype, (c,), -2, 2, special=False, layout=False))
                          if running else None),
         "running_var": (draw(arrays(dtype, (c,), 0.125, 3, special=False, layout=False))
                         if running else None),
         "training": training, "momentum": draw(st.sampled_from([0.1, 0.0, 1.0, 0.37])),
         "eps": draw(st.sampled_from([1e-5, 1e-3]))}
    return d


@st.composite
def batch_norm_backward_inputs(draw, dtype):
    shape = _norm_shape(draw)
    return {"grad_out": draw(arrays(dtype, shape, -3, 3)),
            "x": draw(arrays(dtype, shape, -10, 10, special=draw(st.booleans()))),
            "weight": draw(st.one_of(st.none(), arrays(dtype, shape[1:2], -2, 2, special=False))),
            "eps": draw(st.sampled_from([1e-5, 1e-3]))}


def _norm_backward_reference_error(x, g, w, eps, axes):
    """The reference's own error on a normalization backward from rounding its mean.

    Its float64 mean is off by up to d = eps log2(m) max|x| (pairwise summation, m
    values), which shifts every xhat by d invstd: grad_weight = sum(g xhat) moves by up
    to d invstd m max|g|, and grad_x = invstd (gw - mean(gw) - xhat mean(gw xhat)) by
    up to 2 d invstd^2 max|gw| max|xhat| (gw = g * weight). Large only where std << |mean|
    (a nearly constant channel or row): there the backends' shifted sums are the more
    exact ones, and the reference's rounding noise would otherwise exceed the tolerance."""
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    m = math.prod(x.shape[a] for a in axes)
    if x.size == 0:
        return 0.0
    with np.errstate(all="ignore"):
        mean = x64.mean(axis=axes, keepdims=True)
        invstd = 1 / np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
        xhat = (np.abs(x64 - mean) * invstd).max(axis=axes, keepdims=True)
        gmax = np.abs(g64).max(axis=axes, keepdims=True)
        wmax = 1.0 if w is None else max(1.0, float(np.abs(w).max()))
        d = np.finfo(np.float64).eps * math.log2(m + 1) * np.abs(x64).max(axis=axes,
                                                                           keepdims=True)
        bound = d * invstd * gmax * wmax * (2 * invstd * xhat + m)
    finite = bound[np.isfinite(bound)]
    return float(finite.max()) if finite.size else 0.0


def _batch_norm_reference_error(d):
    x = d["x"]
    return _norm_backward_reference_error(x, d["grad_out"], d["weight"], d["eps"],
                                          (0,) + tuple(range(2, x.ndim)))


def _layer_norm_reference_error(d):
    x, ns = d["x"], d["normalized_shape"]
    k = len(ns) if isinstance(ns, tuple) else 1
    return _norm_backward_reference_error(x, d["grad_out"], d["weight"], d["eps"],
                                          tuple(range(x.ndim - k, x.ndim)))


@st.composite
def layer_norm_inputs(draw, dtype, backward=False):
    """Normalized over the last one or two axes; rows long enough for vector loops."""
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=4))
    normalized = draw(st.one_of(st.tuples(row_lengths()), st.tuples(st.integers(1, 4),
                                                                     st.integers(0, 5))))
    shape = lead + normalized
    affine = draw(st.booleans())
    d = {"x": draw(arrays(dtype, shape, -10, 10, special=draw(st.booleans()))),
         "normalized_shape": normalized if len(normalized) > 1 or draw(st.booleans())
         else normalized[0],
         "weight": draw(arrays(dtype, normalized, -2, 2, special=False)) if affine else None,
         "eps": draw(st.sampled_from([1e-5, 1e-3]))}
    if backward:
        d["grad_out"] = draw(arrays(dtype, shape, -3, 3))
    elif affine and draw(st.booleans()):
        d["bias"] = draw(arrays(dtype, normalized, -2, 2, special=False))
    return d


P_DROP = st.sampled_from([0.0, 0.1, 0.5, 0.9])


@st.composite
def dropout_inputs(draw, dtype):
    return {**draw(unary(dtype)), "p": draw(P_DROP),
            "seed": draw(st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([0, 1, 2 ** 63])))}


@st.composite
def dropout_backward_inputs(draw, dtype):
    shape = draw(shapes())
    return {"grad_out": draw(arrays(dtype, shape)),
            "mask": draw(hnp.arrays(np.bool_, shape)), "p": draw(P_DROP)}


INDEX_DTYPES = st.sampled_from([np.int64, np.int32, np.int16, np.uint8])


@st.composite
def embedding_inputs(draw, dtype, backward=False):
    num, dim = draw(st.integers(1, 6)), draw(st.one_of(st.integers(0, 5), st.integers(60, 70)))
    ishape = draw(shapes(min_dims=0, max_dims=2, max_side=8))
    idx = draw(hnp.arrays(draw(INDEX_DTYPES), ishape, elements=st.integers(0, num - 1)))
    if backward:  # repeated indices: few embeddings
        return {"grad_out": draw(arrays(dtype, ishape + (dim,))), "indices": idx,
                "num_embeddings": num}
    return {"indices": idx, "weight": draw(arrays(dtype, (num, dim)))}


def _peer_activation(fname, **kwargs):
    def run(d):
        torch = _torch()
        return getattr(torch.nn.functional, fname)(torch.from_numpy(d["x"]), **kwargs)
    return run


@st.composite
def fill_inputs(draw, dtype):
    """Columns with NaN and +-inf, a missing value (NaN, or one the data holds often)
    and a fill value per column."""
    n, f = draw(st.integers(0, 9)), draw(st.integers(0, 5))
    missing = draw(st.sampled_from([math.nan, 0.0, -1.0, math.inf]))
    X = draw(hnp.arrays(dtype, (n, f), elements=st.one_of(
        *([st.floats(-1e3, 1e3, width=32 if np.dtype(dtype) == np.float32 else 64)] * 3),
        st.sampled_from(SPECIALS + (0.0, -1.0)))))
    return {"X": np.ascontiguousarray(X), "missing_value": missing,
            "fill": draw(hnp.arrays(np.float64, (f,), elements=st.floats(-1e3, 1e3)))}


@st.composite
def one_hot_inputs(draw, dtype):
    """Indices in [-1, n_columns) (-1: nothing), sometimes beyond n_columns."""
    n, f, m = draw(st.integers(0, 9)), draw(st.integers(0, 4)), draw(st.integers(0, 12))
    index = st.one_of(*([st.integers(-1, m - 1)] * 6), st.sampled_from([-5, m, m + 3]))
    return {"indices": draw(hnp.arrays(np.int64, (n, f), elements=index)),
            "n_columns": m, "dtype": np.dtype(dtype)}


def _one_hot_bench(dtype):
    """OneHotEncoder's dense output for 1,000,000 values of 100 categories."""
    values = _labels_bench(dtype)["values"]
    return {"indices": values.reshape(-1, 1), "n_columns": 100, "dtype": np.dtype(np.float64)}


def _labels_bench(dtype):
    """1,000,000 int64 labels of 100 categories (the encoders' benchmark case)."""
    return {"values": np.random.default_rng(0).integers(0, 100, 1_000_000)}


@st.composite
def polynomial_inputs(draw, dtype):
    from fastml.preprocessing._polynomial import product_table
    n, f = draw(st.integers(0, 7)), draw(st.integers(0, 5))
    hi = draw(st.integers(0, 3))
    lo = draw(st.integers(0, hi))
    left, right, keep = product_table(f, lo, hi, draw(st.booleans()), draw(st.booleans()))
    return {"X": draw(arrays(dtype, (n, f), -10, 10, layout=False)),
            "left": left, "right": right, "keep": keep}


def _polynomial_bench(dtype):
    """PolynomialFeatures(degree=2) of 100,000 x 30: 496 output columns."""
    from fastml.preprocessing._polynomial import product_table
    left, right, keep = product_table(30, 0, 2, False, True)
    X = np.random.default_rng(0).standard_normal((100_000, 30)).astype(dtype)
    return {"X": X, "left": left, "right": right, "keep": keep}


# --------------------------------------------------------------------- calls
def _copy_inplace(d, names):
    """Fresh copies of the arrays an in-place op mutates (so backends don't share state)."""
    return {k: (v.copy() if k in names and v is not None else v) for k, v in d.items()}


def _sgd(d):
    d = _copy_inplace(d, ("param", "momentum_buffer"))
    optim.sgd_step(**d)
    return d["param"], (d["momentum_buffer"] if d.get("momentum") else None)


def _adam(d):
    d = _copy_inplace(d, ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    optim.adam_step(**d)
    return d["param"], d["exp_avg"], d["exp_avg_sq"], \
        (d["max_exp_avg_sq"] if d.get("amsgrad") else None)


def _rmsprop(d):
    d = _copy_inplace(d, ("param", "square_avg", "momentum_buffer", "grad_avg"))
    optim.rmsprop_step(**d)
    return d["param"], d["square_avg"], \
        (d["momentum_buffer"] if d.get("momentum") else None), \
        (d["grad_avg"] if d.get("centered") else None)


def _adagrad(d):
    d = _copy_inplace(d, ("param", "state_sum"))
    optim.adagrad_step(**d)
    return d["param"], d["state_sum"]


def _batch_norm(d):
    d = _copy_inplace(d, ("running_mean", "running_var"))
    return layers.batch_norm(**d), d["running_mean"], d["running_var"]


def _conv_bench(dtype, backward=False):
    """The issue's case: x 64x32x28x28, weight 64x32x3x3, padding 1."""
    rng = np.random.default_rng(0)
    d = {"x": rng.standard_normal((64, 32, 28, 28)).astype(dtype),
         "weight": rng.standard_normal((64, 32, 3, 3)).astype(dtype) / 17, "padding": 1}
    if backward:
        d["grad_out"] = rng.standard_normal((64, 64, 28, 28)).astype(dtype)
    else:
        d["bias"] = rng.standard_normal(64).astype(dtype)
    return d


def _pool_bench(dtype, backward=False):
    """64x32x28x28, 2x2 windows (a CNN's downsampling step)."""
    rng = np.random.default_rng(0)
    d = {"x": rng.standard_normal((64, 32, 28, 28)).astype(dtype), "kernel_size": 2}
    if backward:
        d["grad_out"] = rng.standard_normal((64, 32, 14, 14)).astype(dtype)
    return d


def _batch_norm_bench(dtype, backward=False):
    """The issue's case: 64x64x28x28 in training mode."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64, 28, 28)).astype(dtype)
    w, b = rng.uniform(0.5, 2, 64).astype(dtype), rng.standard_normal(64).astype(dtype)
    if backward:
        return {"grad_out": rng.standard_normal(x.shape).astype(dtype), "x": x, "weight": w}
    return {"x": x, "weight": w, "bias": b, "running_mean": np.zeros(64, dtype),
            "running_var": np.ones(64, dtype), "training": True}


def _layer_norm_bench(dtype, backward=False):
    """The issue's case: 4096 x 1024."""
    rng = np.random.default_rng(0)
    d = {"x": rng.standard_normal((4096, 1024)).astype(dtype), "normalized_shape": 1024,
         "weight": rng.uniform(0.5, 2, 1024).astype(dtype)}
    if backward:
        d["grad_out"] = rng.standard_normal((4096, 1024)).astype(dtype)
    else:
        d["bias"] = rng.standard_normal(1024).astype(dtype)
    return d


def _embedding_bench(dtype, backward=False):
    """100,000 lookups in a 50,000 x 128 table."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 50_000, 100_000)
    if backward:
        return {"grad_out": rng.standard_normal((100_000, 128)).astype(dtype), "indices": idx,
                "num_embeddings": 50_000}
    return {"indices": idx, "weight": rng.standard_normal((50_000, 128)).astype(dtype)}


def _peer_torch(fname, names, drop=(), **fixed):
    """A torch.nn.functional forward on the named arguments (arrays as tensors); the
    row's other arguments pass through as keywords, except those in ``drop``."""
    def run(d):
        torch = _torch()
        args = [torch.from_numpy(d[k]) if isinstance(d[k], np.ndarray) else d[k] for k in names]
        kw = {k: v for k, v in d.items() if k not in names and k not in drop}
        return getattr(torch.nn.functional, fname)(*args, **kw, **fixed)
    return run


def _peer_batch_norm(d):
    torch = _torch()
    t = {k: torch.from_numpy(v) for k, v in d.items() if isinstance(v, np.ndarray)}
    return torch.nn.functional.batch_norm(t["x"], t["running_mean"], t["running_var"],
                                          t["weight"], t["bias"], training=True)


def _kernel(name):
    """Preprocessing kernels have no public function: call the current backend directly."""
    return lambda d: getattr(instance(), name)(**d)


def _ew_bench(dtype, names=("x",)):
    rng = np.random.default_rng(0)
    n = 4_000_000
    return {k: rng.standard_normal(n).astype(dtype) for k in names}


def _rows_bench(dtype, names=("x",)):
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal((4096, 1000)).astype(dtype) for k in names}


def _backward_bench(dtype, forward):
    """grad_out and y = forward(x): y in the forward's range, as in training."""
    d = _rows_bench(dtype, ("grad_out", "x"))
    with fastml.use_backend("numpy"):
        return {"grad_out": d["grad_out"], "y": forward(d["x"])}


def _bce_bench(dtype, **kw):
    """4M probabilities away from the clamp and soft targets."""
    rng = np.random.default_rng(0)
    n = 4_000_000
    return {"input": rng.uniform(0.01, 0.99, n).astype(dtype),
            "target": rng.uniform(0, 1, n).astype(dtype), **kw}


def _bce_logits_bench(dtype):
    rng = np.random.default_rng(0)
    d = _bce_bench(dtype)
    return {**d, "input": rng.standard_normal(d["input"].size).astype(dtype)}


def _kl_bench(dtype):
    """Log-probabilities of 4096x1000 rows against a target distribution."""
    with fastml.use_backend("numpy"):
        x = layers.log_softmax(_rows_bench(dtype)["x"])
        t = layers.softmax(np.random.default_rng(1).standard_normal(x.shape).astype(dtype))
    return {"input": x, "target": t, "reduction": "batchmean"}


def _nll_bench(dtype):
    d = _ce_bench(dtype)
    with fastml.use_backend("numpy"):
        return {**d, "input": layers.log_softmax(d["input"])}


def _peer_grad(fname):
    """PyTorch forward + autograd backward of a loss: what a ``*_grad`` replaces."""
    def run(d):
        torch = _torch()
        x = torch.from_numpy(d["input"]).requires_grad_()
        rest = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                for k, v in d.items() if k != "input"}
        getattr(torch.nn.functional, fname)(x, **rest).backward()
        return x.grad
    return run


def _ce_bench(dtype):
    rng = np.random.default_rng(0)
    return {"input": rng.standard_normal((4096, 1000)).astype(dtype),
            "target": rng.integers(0, 1000, 4096)}


def _ce_large(dtype):
    """Every option at once, and 1000-long rows: the blocked and parallel paths."""
    d = _ce_bench(dtype)
    rng = np.random.default_rng(1)
    d["target"][rng.integers(0, 4096, 100)] = -100
    return {**d, "weight": rng.uniform(0, 2, 1000).astype(dtype), "label_smoothing": 0.1,
            "reduction": "none"}


def _adam_bench(dtype):
    rng = np.random.default_rng(0)
    n = 10_000_000
    return {"param": rng.standard_normal(n).astype(dtype), "grad": rng.standard_normal(n).astype(dtype),
            "exp_avg": np.zeros(n, dtype), "exp_avg_sq": np.zeros(n, dtype), "step": 1}


def _rmsprop_bench(dtype):
    d = _adam_bench(dtype)
    return {"param": d["param"], "grad": d["grad"], "square_avg": d["exp_avg_sq"]}


def _adagrad_bench(dtype):
    d = _adam_bench(dtype)
    return {"param": d["param"], "grad": d["grad"], "state_sum": d["exp_avg_sq"], "step": 1}


def _sgd_bench(dtype):
    d = _adam_bench(dtype)
    return {"param": d["param"], "grad": d["grad"], "momentum_buffer": d["exp_avg"],
            "step": 1, "lr": 1e-3, "momentum": 0.9}


def _linear_bench(dtype, backward=False):
    rng = np.random.default_rng(0)
    d = {"x": rng.standard_normal((1024, 1024)).astype(dtype),
         "weight": rng.standard_normal((1024, 1024)).astype(dtype)}
    if backward:
        d["grad_out"] = rng.standard_normal((1024, 1024)).astype(dtype)
    else:
        d["bias"] = rng.standard_normal(1024).astype(dtype)
    return d


def _columns_bench(dtype, with_scale=False):
    rng = np.random.default_rng(0)
    d = {"X": rng.standard_normal((1_000_000, 50)).astype(dtype)}
    if with_scale:
        d["offset"], d["scale"] = rng.standard_normal(50), rng.uniform(0.5, 2, 50)
    return d


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _peer_unary(fname):
    def run(d):
        torch = _torch()
        return getattr(torch, fname)(torch.from_numpy(d["x"]))
    return run


def _pair_bench(dtype, **kw):
    x = _ew_bench(dtype)["x"]
    return {"input": x, "target": x[::-1].copy(), **kw}


def _peer_loss(fname):
    def run(d):
        torch = _torch()
        return getattr(torch.nn.functional, fname)(
            **{k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
               for k, v in d.items()})
    return run


def _peer_ce(d):
    torch = _torch()
    x = torch.from_numpy(d["input"]).requires_grad_()
    loss = torch.nn.functional.cross_entropy(x, torch.from_numpy(d["target"]))
    loss.backward()
    return x.grad


ROWS = [
    Row("layers.linear", lambda d: layers.linear(**d), lambda t: linear_inputs(t),
        reduces=True, bench=_linear_bench,
        peer=lambda d: _torch().nn.functional.linear(*(_torch().from_numpy(d[k])
                                                       for k in ("x", "weight", "bias")))),
    Row("layers.linear_backward", lambda d: layers.linear_backward(**d),
        lambda t: linear_inputs(t, backward=True), reduces=True,
        bench=lambda t: _linear_bench(t, backward=True)),
    Row("layers.relu", lambda d: layers.relu(**d), unary, bench=_ew_bench,
        peer=_peer_unary("relu")),
    Row("layers.relu_backward", lambda d: layers.relu_backward(**d),
        lambda t: binary(t, "x"), bench=lambda t: _ew_bench(t, ("grad_out", "x"))),
    Row("layers.leaky_relu", lambda d: layers.leaky_relu(**d), leaky_inputs,
        bench=lambda t: {**_ew_bench(t), "negative_slope": 0.01},
        peer=_peer_activation("leaky_relu", negative_slope=0.01)),
    Row("layers.leaky_relu_backward", lambda d: layers.leaky_relu_backward(**d),
        lambda t: leaky_inputs(t, backward=True),
        bench=lambda t: {**_ew_bench(t, ("grad_out", "x")), "negative_slope": 0.01}),
    Row("layers.gelu", lambda d: layers.gelu(**d), gelu_inputs,
        bench=lambda t: {**_ew_bench(t), "approximate": "none"},
        peer=_peer_activation("gelu")),
    Row("layers.gelu_backward", lambda d: layers.gelu_backward(**d),
        lambda t: gelu_inputs(t, backward=True),
        bench=lambda t: {**_ew_bench(t, ("grad_out", "x")), "approximate": "none"}),
    Row("layers.silu", lambda d: layers.silu(**d), unary, bench=_ew_bench,
        peer=_peer_activation("silu")),
    Row("layers.silu_backward", lambda d: layers.silu_backward(**d),
        lambda t: binary(t, "x"), bench=lambda t: _ew_bench(t, ("grad_out", "x"))),
    Row("layers.sigmoid", lambda d: layers.sigmoid(**d), unary, bench=_ew_bench,
        peer=_peer_unary("sigmoid")),
    Row("layers.sigmoid_backward", lambda d: layers.sigmoid_backward(**d),
        lambda t: binary(t, "y", 0, 1), bench=lambda t: _backward_bench(t, layers.sigmoid)),
    Row("layers.tanh", lambda d: layers.tanh(**d), unary, bench=_ew_bench,
        peer=_peer_unary("tanh")),
    Row("layers.tanh_backward", lambda d: layers.tanh_backward(**d),
        lambda t: binary(t, "y", -1, 1), bench=lambda t: _backward_bench(t, layers.tanh)),
    Row("layers.softmax", lambda d: layers.softmax(**d), lambda t: rowwise(t, ["x"]),
        bench=_rows_bench,
        peer=lambda d: _torch().softmax(_torch().from_numpy(d["x"]), dim=-1)),
    Row("layers.softmax_backward", lambda d: layers.softmax_backward(**d),
        lambda t: rowwise(t, ["grad_out", "y"], -1, 1), reduces=True,
        bench=lambda t: _backward_bench(t, layers.softmax)),
    Row("layers.log_softmax", lambda d: layers.log_softmax(**d), lambda t: rowwise(t, ["x"]),
        bench=_rows_bench,
        peer=lambda d: _torch().log_softmax(_torch().from_numpy(d["x"]), dim=-1)),
    Row("layers.log_softmax_backward", lambda d: layers.log_softmax_backward(**d),
        lambda t: rowwise(t, ["grad_out", "y"], -10, 0), reduces=True,
        bench=lambda t: _backward_bench(t, layers.log_softmax)),
    Row("layers.conv2d", lambda d: layers.conv2d(**d), conv_inputs, reduces=True,
        reduction=lambda d: d["weight"][0].size,
        bench=_conv_bench, peer=_peer_torch("conv2d", ("x", "weight", "bias"))),
    Row("layers.conv2d_backward", lambda d: layers.conv2d_backward(**d),
        lambda t: conv_inputs(t, backward=True), reduces=True,
        reduction=lambda d: max(d["weight"][0].size, d["grad_out"][:, 0].size),
        bench=lambda t: _conv_bench(t, backward=True)),
    Row("layers.max_pool2d", lambda d: layers.max_pool2d(**d), pool_inputs, bench=_pool_bench,
        peer=_peer_torch("max_pool2d", ("x", "kernel_size"))),
    Row("layers.max_pool2d_backward", lambda d: layers.max_pool2d_backward(**d),
        lambda t: pool_inputs(t, backward=True), bench=lambda t: _pool_bench(t, backward=True)),
    Row("layers.avg_pool2d", lambda d: layers.avg_pool2d(**d), pool_inputs, bench=_pool_bench,
        peer=_peer_torch("avg_pool2d", ("x", "kernel_size"))),
    Row("layers.avg_pool2d_backward", lambda d: layers.avg_pool2d_backward(**d),
        lambda t: pool_inputs(t, backward=True), bench=lambda t: _pool_bench(t, backward=True)),
    Row("layers.batch_norm", _batch_norm, batch_norm_inputs, reduces=True,
        bench=_batch_norm_bench, bench_call=lambda d: layers.batch_norm(**d),
        peer=_peer_batch_norm),
    Row("layers.batch_norm_backward", lambda d: layers.batch_norm_backward(**d),
        batch_norm_backward_inputs, reduces=True, reference_error=_batch_norm_reference_error,
        bench=lambda t: _batch_norm_bench(t, backward=True)),
    Row("layers.layer_norm", lambda d: layers.layer_norm(**d), layer_norm_inputs, reduces=True,
        bench=_layer_norm_bench,
        peer=lambda d: _peer_torch("layer_norm", ("x", "normalized_shape", "weight", "bias"))(
            {**d, "normalized_shape": (d["normalized_shape"],)})),
    Row("layers.layer_norm_backward", lambda d: layers.layer_norm_backward(**d),
        lambda t: layer_norm_inputs(t, backward=True), reduces=True,
        reference_error=_layer_norm_reference_error,
        bench=lambda t: _layer_norm_bench(t, backward=True)),
    Row("layers.dropout", lambda d: layers.dropout(**d), dropout_inputs,
        tol={np.dtype(np.float32): (0, 0), np.dtype(np.float64): (0, 0)},
        bench=lambda t: {**_ew_bench(t), "p": 0.5, "seed": 0},
        peer=_peer_torch("dropout", ("x", "p"), drop=("seed",), training=True)),
    Row("layers.dropout_backward", lambda d: layers.dropout_backward(**d),
        dropout_backward_inputs, tol={np.dtype(np.float32): (0, 0), np.dtype(np.float64): (0, 0)},
        bench=lambda t: {"grad_out": _ew_bench(t)["x"], "p": 0.5,
                         "mask": np.random.default_rng(0).random(4_000_000) < 0.5}),
    Row("layers.embedding", lambda d: layers.embedding(**d), embedding_inputs,
        tol={np.dtype(np.float32): (0, 0), np.dtype(np.float64): (0, 0)}, bench=_embedding_bench,
        peer=lambda d: _torch().nn.functional.embedding(_torch().from_numpy(d["indices"]),
                                                        _torch().from_numpy(d["weight"]))),
    Row("layers.embedding_backward", lambda d: layers.embedding_backward(**d),
        lambda t: embedding_inputs(t, backward=True), reduces=True,
        bench=lambda t: _embedding_bench(t, backward=True)),
    Row("losses.mse_loss", lambda d: losses.mse_loss(**d), mse_inputs, reduces=True,
        bench=_pair_bench, peer=_peer_loss("mse_loss")),
    Row("losses.mse_loss_grad", lambda d: losses.mse_loss_grad(**d), mse_inputs,
        bench=_pair_bench),
    Row("losses.l1_loss", lambda d: losses.l1_loss(**d), mse_inputs, reduces=True,
        bench=_pair_bench, peer=_peer_loss("l1_loss")),
    Row("losses.l1_loss_grad", lambda d: losses.l1_loss_grad(**d), mse_inputs,
        bench=_pair_bench),
    Row("losses.huber_loss", lambda d: losses.huber_loss(**d), huber_inputs, reduces=True,
        bench=lambda t: _pair_bench(t, delta=1.0), peer=_peer_loss("huber_loss")),
    Row("losses.huber_loss_grad", lambda d: losses.huber_loss_grad(**d), huber_inputs,
        bench=lambda t: _pair_bench(t, delta=1.0)),
    Row("losses.cross_entropy", lambda d: losses.cross_entropy(**d), ce_inputs, reduces=True,
        bench=_ce_bench, large=_ce_large,
        peer=lambda d: _torch().nn.functional.cross_entropy(_torch().from_numpy(d["input"]),
                                                            _torch().from_numpy(d["target"]))),
    Row("losses.cross_entropy_grad", lambda d: losses.cross_entropy_grad(**d), ce_inputs,
        reduces=True, bench=_ce_bench, large=_ce_large, peer=_peer_ce),
    Row("losses.cross_entropy_and_grad", lambda d: losses.cross_entropy_and_grad(**d),
        ce_inputs, reduces=True, bench=_ce_bench, large=_ce_large, peer=_peer_ce),
    Row("losses.binary_cross_entropy", lambda d: losses.binary_cross_entropy(**d), bce_inputs,
        reduces=True, bench=_bce_bench, peer=_peer_loss("binary_cross_entropy"),
        finite=("input",)),
    Row("losses.binary_cross_entropy_grad", lambda d: losses.binary_cross_entropy_grad(**d),
        bce_inputs, bench=_bce_bench, peer=_peer_grad("binary_cross_entropy"),
        finite=("input",)),
    Row("losses.binary_cross_entropy_with_logits",
        lambda d: losses.binary_cross_entropy_with_logits(**d), bce_logits_inputs, reduces=True,
        bench=_bce_logits_bench, peer=_peer_loss("binary_cross_entropy_with_logits")),
    Row("losses.binary_cross_entropy_with_logits_grad",
        lambda d: losses.binary_cross_entropy_with_logits_grad(**d), bce_logits_inputs,
        bench=_bce_logits_bench, peer=_peer_grad("binary_cross_entropy_with_logits")),
    Row("losses.nll_loss", lambda d: losses.nll_loss(**d), lambda t: ce_inputs(t, nll=True),
        reduces=True, bench=_nll_bench, peer=_peer_loss("nll_loss")),
    Row("losses.nll_loss_grad", lambda d: losses.nll_loss_grad(**d),
        lambda t: ce_inputs(t, nll=True), bench=_nll_bench, peer=_peer_grad("nll_loss")),
    Row("losses.kl_div", lambda d: losses.kl_div(**d), kl_inputs, reduces=True,
        bench=_kl_bench, peer=_peer_loss("kl_div")),
    Row("losses.kl_div_grad", lambda d: losses.kl_div_grad(**d), kl_inputs,
        bench=_kl_bench, peer=_peer_grad("kl_div")),
    Row("optim.sgd_step", _sgd, sgd_inputs, bench=_sgd_bench,
        bench_call=lambda d: optim.sgd_step(**d)),
    Row("optim.adam_step", _adam, adam_inputs, bench=_adam_bench,
        bench_call=lambda d: optim.adam_step(**d)),
    Row("optim.rmsprop_step", _rmsprop, rmsprop_inputs, bench=_rmsprop_bench,
        bench_call=lambda d: optim.rmsprop_step(**d)),
    Row("optim.adagrad_step", _adagrad, adagrad_inputs, bench=_adagrad_bench,
        bench_call=lambda d: optim.adagrad_step(**d)),
    Row("preprocessing.column_stats", _kernel("column_stats"), columns_inputs, reduces=True,
        tol={np.dtype(np.float32): (1e-12, 1e-9), np.dtype(np.float64): (1e-12, 1e-9)},
        bench=_columns_bench),
    Row("preprocessing.column_minmax", _kernel("column_minmax"),
        lambda t: columns_inputs(t, with_inf=True),
        tol={np.dtype(np.float32): (0, 0), np.dtype(np.float64): (0, 0)}, bench=_columns_bench),
    Row("preprocessing.column_quantiles", _kernel("column_quantiles"), quantile_inputs,
        tol={np.dtype(np.float32): (1e-14, 1e-12), np.dtype(np.float64): (1e-14, 1e-12)},
        bench=lambda t: {**_columns_bench(t), "q": np.array([0.5, 0.25, 0.75])}),
    Row("preprocessing.normalize_rows", _kernel("normalize_rows"), rows_inputs,
        bench=lambda t: {**_columns_bench(t), "norm": "l2"}),
    Row("preprocessing.polynomial_features", _kernel("polynomial_features"), polynomial_inputs,
        bench=_polynomial_bench),
    Row("preprocessing.unique_counts", _kernel("unique_counts"), unique_inputs,
        bench=_labels_bench),
    Row("preprocessing.encode_values", _kernel("encode_values"), encode_inputs,
        bench=lambda t: {**_labels_bench(t), "categories": np.unique(_labels_bench(t)["values"])}),
    Row("preprocessing.fill_missing", _kernel("fill_missing"), fill_inputs,
        tol={np.dtype(np.float32): (0, 0), np.dtype(np.float64): (0, 0)},
        bench=lambda t: {**_columns_bench(t), "missing_value": math.nan,
                         "fill": np.arange(50.0)}),
    Row("preprocessing.one_hot", _kernel("one_hot"), one_hot_inputs,
        tol={np.dtype(np.float32): (0, 0), np.dtype(np.float64): (0, 0)}, bench=_one_hot_bench),
    Row("preprocessing.standardize", _kernel("standardize"),
        lambda t: columns_inputs(t, with_scale=True, with_inf=True),
        bench=lambda t: _columns_bench(t, with_scale=True)),
    Row("preprocessing.unstandardize", _kernel("unstandardize"),
        lambda t: columns_inputs(t, with_scale=True, with_inf=True),
        bench=lambda t: _columns_bench(t, with_scale=True)),
]

ROW_BY_OP = {r.op: r for r in ROWS}


def accelerated_backends():
    return [b for b in fastml.available_backends() if b != "numpy"]


def size_of(args: dict) -> int:
    """Bound on the longest reduction in a row's inputs: their longest axis."""
    return max([max(a.shape, default=1) for a in args.values() if isinstance(a, np.ndarray)]
               or [1])
