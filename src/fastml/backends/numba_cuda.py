"""CUDA backend: numba.cuda kernels (in ``_cuda_kernels``) for every reference op.

Data movement: NumPy arrays in -> NumPy arrays out (copied to the device and
back); arrays with ``__cuda_array_interface__`` in (Numba device arrays,
CuPy, PyTorch CUDA tensors) -> Numba device arrays out, with no host round
trip. Optimizer steps update device arrays in place, and copy the updated
param and state back into NumPy arrays that were passed in.

GEMM: numba.cuda has no cuBLAS binding, so ``linear`` / ``linear_backward``
run a tiled shared-memory GEMM kernel with the bias add fused; it is correct
but well below cuBLAS speed on large matrices. conv2d is im2col into (C kh kw, N Ho Wo)
columns plus ONE such GEMM for the whole batch (a permute kernel adds the bias and
restores (N, O, Ho, Wo)); its backward pass is two GEMMs and a col2im gather (no atomics).
Pooling gradients are gathers per input pixel; batch_norm / layer_norm statistics are
float64 block reductions; dropout hashes the reference's splitmix64 mask on the device;
embedding_backward accumulates with float64 atomics (add order varies, rounded once).

Scalar losses sum per-block float64 partials on the device and add the small
partials array on the host. Column reductions (column_stats, column_minmax)
write per-block partials that a second kernel merges on the device;
column_quantiles is a radix select on the device (bit by bit over the
floats' order-preserving integer keys, every column and quantile at once),
described in ``_cuda_kernels``. unique_counts: a histogram with atomics for
int64 labels of a small range (min / max reduced on the device first), else a
bitonic sort of order-preserving keys in global memory (numba.cuda has no
device sort); encode_values: a binary search per value. fill_missing imputes and
counts the remaining infinities in one pass (per-block int64 counts), as
standardize / unstandardize count the +-inf entries of X while transforming; one_hot
zero-fills its output, then scatters the in-range indices. Launch configurations
come from one cached probe of the device; kernels compile once per dtype
signature, on first use.
"""
from __future__ import annotations

import functools

import numpy as np

from .._validate import is_device_array
from ._activation_roots import root_poly, zero_tail
from .reference import (_GELU_KAPPA, _GOLDEN, _INV_SQRT_2PI, _MIX1, _MIX2, _SQRT_2_OVER_PI,
                        _SQRT_HALF, BCE_EPS, ReferenceBackend, _grad_scale, conv_output_size,
                        dropout_scale, dropout_threshold)

_F64 = np.dtype(np.float64)


def _k():
    """The kernel module, imported on first use: importing fastml must not import numba.cuda."""
    from . import _cuda_kernels
    return _cuda_kernels


@functools.cache
def _launch_limits():
    """(threads per block for grid-stride kernels, for block reductions, minimum, max blocks)."""
    from numba import config, cuda
    if config.ENABLE_CUDASIM:  # the simulator runs one Python thread per CUDA thread
        return 8, 4, 1, 2
    dev = cuda.get_current_device()
    return 256, 256, dev.WARP_SIZE, 32 * dev.MULTIPROCESSOR_COUNT


def _cdiv(a, b):
    return -(-a // b)


def _launch_1d(kernel, n, *args):
    """Grid-stride launch over n elements (nothing to do for n == 0)."""
    if n:
        tpb, _, _, max_blocks = _launch_limits()
        kernel[min(_cdiv(n, tpb), max_blocks), tpb](*args)


def _launch_rows(kernel, rows, n, *args):
    """Rows of length n, whole rows per block: a power-of-two block covering the row, capped."""
    if rows and n:
        _, red_tpb, min_tpb, max_blocks = _launch_limits()
        tpb = min(red_tpb, max(min_tpb, 1 << (n - 1).bit_length()))
        kernel[min(rows, max_blocks), tpb](*args)


def _launch_blocks(kernel, rows, n, *args):
    """One block per row (grid-stride over rows) of n items, n may be 0: a power-of-two
    block covering n, capped (``_launch_rows`` without its skip of empty rows)."""
    if rows:
        _, red_tpb, min_tpb, max_blocks = _launch_limits()
        tpb = min(red_tpb, max(min_tpb, 1 << max(n - 1, 0).bit_length()))
        kernel[min(rows, max_blocks), tpb](*args)




def _flat(d):
    return d.reshape(d.size)


class _IO:
    """Puts one call's inputs on the device and brings results back to where they came from."""

    def __init__(self, *arrays):
        self.device = any(is_device_array(a) for a in arrays)

    @staticmethod
    def put(a):
        from numba import cuda
        if a is None or getattr(a, "__cuda_ndarray__", False):
            return a
        if is_device_array(a):
            return cuda.as_cuda_array(a)
        return cuda.to_device(np.ascontiguousarray(a))

    @staticmethod
    def empty(shape, dtype):
        from numba import cuda
        return cuda.device_array(shape, dtype)

    def get(self, d):
        return d if self.device else d.copy_to_host()


def _consts(dtype, *values):
    return tuple(dtype.type(v) for v in values)


def _block_partials(kernel, n, *args, parts=1, dtype=_F64):
    """Totals of a fused partial-sum kernel over n > 0 items (grid-stride).

    The kernel takes ``args`` then a partials array of ``dtype`` (float64 sums;
    int64 counts), (blocks,) or (parts, blocks), that each block fills with its
    sum(s); the host adds the small partials: a Python float / int (parts == 1)
    or an array of ``parts`` totals.
    """
    _, tpb, _, max_blocks = _launch_limits()
    blocks = min(_cdiv(n, tpb), max_blocks)
    partials = _IO.empty(blocks if parts == 1 else (parts, blocks), dtype)
    kernel[blocks, tpb](*args, partials)
    totals = partials.copy_to_host().sum(axis=-1)
    return totals.item() if parts == 1 else totals


def _partial_sum(kernel, a, b, c=0, h=0):
    """float64 sum of a partial-sum kernel's terms over flat device arrays a, b (constants c, h
    of their dtype): device partials, host total."""
    if a.size == 0:
        return 0.0
    return _block_partials(kernel, a.size, a, b, *_consts(a.dtype, c, h))


def _sum64(a):
    """float64 sum of a flat device array."""
    return _partial_sum(_k().sum_partials, a, a)


def _loss_total(kernel, reduction, input, target, *consts):
    """'sum' or 'mean' of an element-wise loss from its partial-sum kernel."""
    if input.size:
        io = _IO(input, target)
        total = _partial_sum(kernel, _flat(io.put(input)), _flat(io.put(target)), *consts)
    else:
        total = 0.0
    return total if reduction == "sum" else _mean(total, input.size)


def _mean(total, count):
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / np.float64(count))


def _column_grid(n, F):
    gx = _cdiv(F, _k().COL_X)
    return gx, max(1, min(_cdiv(n, _k().COL_Y), _launch_limits()[3] // gx))


def _col_sum(X, out):
    """out (F,) = column sums of the device matrix X (n, F), in X's dtype."""
    n, F = X.shape
    if F == 0:
        return
    k = _k()
    gx, gy = _column_grid(n, F)
    zero = X.dtype.type(0)
    part = _IO.empty((gy, F), X.dtype)
    k.col_sum_partial[(gx, gy), (k.COL_X, k.COL_Y)](X, part, zero)
    k.col_sum_partial[(gx, 1), (k.COL_X, k.COL_Y)](part, out.reshape(1, F), zero)


def _gemm(a, b, bias, out, trans_a, trans_b):
    """out = op(a) @ op(b) (+ bias) on device arrays."""
    if out.size:
        k = _k()
        M, N = out.shape
        # Without a bias any 1-D array of the dtype fills the slot; the kernel ignores it.
        k.gemm[(_cdiv(M, k.TILE), _cdiv(N, k.TILE)), (k.TILE, k.TILE)](
            a, b, out[0] if bias is None else bias, out, trans_a, trans_b,
            bias is not None, out.dtype.type(0))


def _map(kernel, consts, *arrays, extra=()):
    """Element-wise kernel over same-shape arrays -> new array of that shape.

    ``consts``, a number or a tuple of them, follow the output in the arrays' dtype;
    ``extra`` arguments, as they are, follow them.
    """
    consts = consts if isinstance(consts, tuple) else (consts,)
    io = _IO(*arrays)
    out = io.empty(arrays[0].shape, arrays[0].dtype)
    if out.size:
        _launch_1d(kernel, out.size, *[_flat(io.put(a)) for a in arrays], _flat(out),
                   *_consts(arrays[0].dtype, *consts), *extra)
    return io.get(out)


def _softmax(x, log):
    io = _IO(x)
    out = io.empty(x.shape, x.dtype)
    _launch_rows(_k().softmax_rows, *x.shape, io.put(x), out, log,
                 *_consts(x.dtype, -np.inf, 0, 1))
    return io.get(out)


def _softmax_backward(grad_out, y, log):
    io = _IO(grad_out, y)
    out = io.empty(y.shape, y.dtype)
    _launch_rows(_k().softmax_backward_rows, *y.shape, io.put(grad_out), io.put(y), out, log,
                 y.dtype.type(0))
    return io.get(out)


def _loss_args(io, arrays, optional):
    """Flat device arrays, then the optional ones (the first array fills an absent one's
    slot, never read), then their presence flags: the probability-loss kernels' head."""
    dev = [_flat(io.put(a)) for a in arrays]
    return (*dev, *[dev[0] if a is None else _flat(io.put(a)) for a in optional],
            *[a is not None for a in optional])


def _pointwise(kernel, arrays, optional=(), tail=()):
    """kernel(*arrays, *optional, *present, *tail, out) -> ``out`` shaped like arrays[0]."""
    io = _IO(*arrays, *optional)
    out = io.empty(arrays[0].shape, arrays[0].dtype)
    if out.size:
        _launch_1d(kernel, out.size, *_loss_args(io, arrays, optional), *tail, _flat(out))
    return io.get(out)


def _loss(kernels, reduction, input, target, optional=(), tail=(), count=None):
    """An element-wise loss: its terms for 'none' (kernels[0]), else the float64 'sum', or
    that sum / count (default: the element count), from the fused partials kernel kernels[1]."""
    if reduction == "none":
        return _pointwise(kernels[0], (input, target), optional, tail)
    total = 0.0
    if input.size:
        io = _IO(input, target, *optional)
        total = _block_partials(kernels[1], input.size,
                                *_loss_args(io, (input, target), optional), *tail)
    return total if reduction == "sum" else _mean(total, input.size if count is None else count)


def _class_weight(io, weight, filler):
    """(device class weight, has_weight); without a weight the 1-D device array ``filler``
    of the input dtype fills the kernel's slot, never read."""
    return (filler, False) if weight is None else (io.put(weight), True)


def _ce_setup(input, target, weight, ignore_index, reduction, label_smoothing):
    """Device inputs and typed scalars shared by cross_entropy and its gradient.

    Returns (io, x, t, w, scalars, count); count (sum of the kept rows'
    target weights) is computed only for reduction='mean'.
    """
    k = _k()
    n, c = input.shape
    dt = input.dtype
    io = _IO(input, weight)
    x, t = io.put(input), io.put(target)
    w = io.put(weight if weight is not None else np.ones(c, dt))
    smoothing = label_smoothing > 0
    if not smoothing:
        sum_w = 0.0
    elif weight is None:
        sum_w = c
    elif is_device_array(weight):
        sum_w = _sum64(w)
    else:
        sum_w = weight.sum()  # in the dtype, as the reference's w.sum()
    count = None
    if reduction == "mean" and n:
        wt = io.empty(n, dt)
        _launch_1d(k.ce_target_weight, n, t, w, ignore_index, wt, dt.type(0))
        count = _sum64(wt)
    scalars = (ignore_index, *_consts(dt, 1 - label_smoothing, label_smoothing / c, sum_w),
               smoothing)
    return io, x, t, w, scalars, count


def _step(kernel, arrays, *scalars):
    """Run an in-place update kernel; copy updated state back into NumPy arrays."""
    param = arrays[0]
    if param.size == 0:
        return
    dev = [_IO.put(a) for a in arrays]
    # Unused optional state arrays: the param fills the slot (the kernel never touches it).
    flat = [_flat(d if d is not None else dev[0]) for d in dev]
    _launch_1d(kernel, param.size, *flat, *scalars)
    for i, (a, d) in enumerate(zip(arrays, dev)):
        if i != 1 and a is not None and not is_device_array(a):  # all but grad
            d.copy_to_host(a)


def _affine(X, offset, scale, inverse):
    """``(out, n_inf)``: (X - offset) / scale, or X * scale + offset when ``inverse``
    (float64 math, X's dtype), and the count of +-inf entries of X from the same pass."""
    io = _IO(X, offset, scale)
    out = io.empty(X.shape, X.dtype)
    n_inf = 0
    if X.size:
        n_inf = _block_partials(_k().affine_cols, X.size, io.put(X), io.put(offset),
                                io.put(scale), out, bool(inverse), *_consts(X.dtype, np.inf),
                                dtype=np.int64)
    return io.get(out), int(n_inf)


_NORM_KIND = {"l1": 0, "l2": 1, "max": 2}


def _key_consts(dtype):
    """The unsigned key type of a float dtype and its (sign, magnitude mask, +inf bits,
    all ones) constants, for the radix select."""
    key = np.dtype(np.uint32 if dtype == np.float32 else np.uint64)
    width = 8 * key.itemsize
    sign = 1 << (width - 1)
    inf = int(np.array(np.inf, dtype).view(key))
    return key, tuple(key.type(v) for v in (sign, sign - 1, inf, (1 << width) - 1))


_HIST_SLACK = 1 << 16  # unique_counts: an int64 range up to 2 n + this many bins is histogrammed


def _compact(src, n, runs, zero):
    """Device int64 indices, in order, of the items i < n of the uint64 device array
    ``src`` kept by ``_is_head`` (run starts of sorted keys when ``runs``, else non-empty
    bins of a histogram viewed as uint64): per-block counts over contiguous chunks, their
    prefix sum (one thread), then each block scatters its chunk's indices. Only the total comes to the host, to size the
    result."""
    k = _k()
    _, tpb, _, max_blocks = _launch_limits()
    blocks = min(_cdiv(n, tpb), max_blocks)
    counts = _IO.empty(blocks, np.int64)
    offsets = _IO.empty(blocks + 1, np.int64)
    k.head_count[blocks, tpb](src, n, runs, zero, counts)
    k.head_offsets[1, 1](counts, offsets)
    total = int(offsets[blocks:].copy_to_host()[0])
    idx = _IO.empty(total, np.int64)
    k.head_scatter[blocks, tpb](src, n, runs, zero, offsets, idx)
    return idx


def _fill(a, value):
    """Fill the device array a with value (of a's dtype)."""
    if a.size:
        _launch_1d(_k().fill_const, a.size, _flat(a), a.dtype.type(value))


def _im2col(x, kernel, stride, padding, dilation, out_hw):
    """Device columns (C kh kw, N Ho Wo) of the device image batch x (N, C, H, W)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    n, c = x.shape[:2]
    cols = _IO.empty((c * kh * kw, n * ho * wo), x.dtype)
    _launch_1d(_k().im2col, cols.size, x, cols, kh, kw, sh, sw, ph, pw, dh, dw, wo,
               x.dtype.type(0))
    return cols


def _pool_geometry(kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return kh, kw, sh, sw, ph, pw


def _max_pool_argmax(xd, kernel, stride, padding, out, idx):
    """Launch the argmax scan: out (N, C, Ho, Wo) the maxima, idx the flat h W + w
    indices (or None: not written)."""
    if out.size:
        want = idx is not None
        if not want:
            idx = _IO.empty((1, 1, 1, 1), np.int64)  # a slot the kernel never writes
        _launch_1d(_k().max_pool2d_argmax, out.size, xd, out, idx, want,
                   *_pool_geometry(kernel, stride, padding), xd.dtype.type(-np.inf))


class CudaBackend(ReferenceBackend):
    name = "cuda"

    def device_name(self) -> str:
        from numba import cuda
        if cuda.is_available() and not getattr(cuda, "simulator", None):
            return cuda.get_current_device().name
        return "simulator"

    # ------------------------------------------------------------ layers
    def linear(self, x, weight, bias):
        io = _IO(x, weight, bias)
        out = io.empty((x.shape[0], weight.shape[0]), x.dtype)
        _gemm(io.put(x), io.put(weight), io.put(bias), out, False, True)
        return io.get(out)

    def linear_backward(self, grad_out, x, weight, has_bias):
        io = _IO(grad_out, x, weight)
        g = io.put(grad_out)
        grad_x = io.empty(x.shape, x.dtype)
        grad_weight = io.empty(weight.shape, x.dtype)
        _gemm(g, io.put(weight), None, grad_x, False, False)   # grad_out @ weight
        _gemm(g, io.put(x), None, grad_weight, True, False)    # grad_out.T @ x
        grad_bias = None
        if has_bias:
            grad_bias = io.empty(weight.shape[0], x.dtype)
            _col_sum(g, grad_bias)
            grad_bias = io.get(grad_bias)
        return io.get(grad_x), io.get(grad_weight), grad_bias

    def relu(self, x):
        return _map(_k().relu, 0, x)

    def relu_backward(self, grad_out, x):
        return _map(_k().relu_backward, 0, grad_out, x)

    def leaky_relu(self, x, negative_slope):
        return _map(_k().leaky_relu, negative_slope, x)

    def leaky_relu_backward(self, grad_out, x, negative_slope):
        return _map(_k().leaky_relu_backward, negative_slope, grad_out, x)

    # gelu / silu compute in the input's dtype (float32 stays float32), not in float64
    # as the reference does; the forms avoid cancellation, the backward ops keep the
    # reference's zeros (zero_tail) and take a polynomial near the derivative's root
    # (root_poly); see _cuda_kernels.
    def gelu(self, x, approximate):
        if approximate == "tanh":
            return _map(_k().gelu_tanh, (1, _GELU_KAPPA, 2 * _SQRT_2_OVER_PI), x)
        return _map(_k().gelu_erf, (0.5, _SQRT_HALF), x)

    def gelu_backward(self, grad_out, x, approximate):
        if approximate == "tanh":
            kernel, consts = _k().gelu_tanh_backward, (1, _GELU_KAPPA, 2 * _SQRT_2_OVER_PI,
                                                       3 * _GELU_KAPPA)
        else:
            kernel, consts = _k().gelu_erf_backward, (0.5, _SQRT_HALF, _INV_SQRT_2PI)
        return _map(kernel, (*consts, *zero_tail(x.dtype, approximate)), grad_out, x,
                    extra=(root_poly(approximate, x.dtype),))

    def silu(self, x):
        return _map(_k().silu, 1, x)

    def silu_backward(self, grad_out, x):
        return _map(_k().silu_backward, (1, *zero_tail(x.dtype, "silu")), grad_out, x,
                    extra=(root_poly("silu", x.dtype),))

    def sigmoid(self, x):
        return _map(_k().sigmoid, 1, x)

    def sigmoid_backward(self, grad_out, y):
        return _map(_k().sigmoid_backward, 1, grad_out, y)

    def tanh(self, x):
        return _map(_k().tanh, 1, x)

    def tanh_backward(self, grad_out, y):
        return _map(_k().tanh_backward, 1, grad_out, y)

    def softmax(self, x):
        return _softmax(x, False)

    def softmax_backward(self, grad_out, y):
        return _softmax_backward(grad_out, y, False)

    def log_softmax(self, x):
        return _softmax(x, True)

    def log_softmax_backward(self, grad_out, y):
        return _softmax_backward(grad_out, y, True)

    # ------------------------------------------------------ convolution, pooling
    # conv2d: im2col into (C kh kw, N Ho Wo) columns, then ONE tiled GEMM for the whole
    # batch (weight (O, C kh kw) @ cols -> (O, N Ho Wo)) and a permute kernel to
    # (N, O, Ho, Wo) that adds the bias. Backward: grad_out permuted to (O, N Ho Wo);
    # grad_weight = g @ cols.T and grad_cols = weight.T @ g (tiled GEMMs), grad_x by the
    # col2im gather (per pixel, a sum over the column entries that map to it: no
    # atomics), grad_bias a block row sum of g.
    def conv2d(self, x, weight, bias, stride, padding, dilation):
        k = _k()
        n, o = x.shape[0], weight.shape[0]
        kernel = tuple(weight.shape[2:])
        ho, wo = conv_output_size(x.shape, kernel, stride, padding, dilation)
        io = _IO(x, weight, bias)
        out = io.empty((n, o, ho, wo), x.dtype)
        if out.size:
            p = ho * wo
            cols = _im2col(io.put(x), kernel, stride, padding, dilation, (ho, wo))
            tmp = io.empty((o, n * p), x.dtype)
            _gemm(io.put(weight).reshape(o, cols.shape[0]), cols, None, tmp, False, False)
            b = io.put(bias)
            _launch_1d(k.conv_permute, out.size, tmp.reshape(o, n, p), out.reshape(n, o, p),
                       _flat(out) if b is None else b, bias is not None, True)
        return io.get(out)

    def conv2d_backward(self, grad_out, x, weight, stride, padding, dilation, has_bias):
        k = _k()
        dt = x.dtype
        n, c = x.shape[:2]
        o = weight.shape[0]
        kernel = tuple(weight.shape[2:])
        ho, wo = grad_out.shape[2:]
        p = ho * wo
        kk = c * kernel[0] * kernel[1]
        io = _IO(grad_out, x, weight)
        grad_x = io.empty(x.shape, dt)
        grad_weight = io.empty(weight.shape, dt)
        g2 = io.empty((o, n * p), dt)
        if g2.size:
            _launch_1d(k.conv_permute, g2.size, io.put(grad_out).reshape(n, o, p),
                       g2.reshape(o, n, p), _flat(g2), False, False)
        cols = _im2col(io.put(x), kernel, stride, padding, dilation, (ho, wo))
        _gemm(g2, cols, None, grad_weight.reshape(o, kk), False, True)  # zeros when n == 0
        if grad_x.size:
            w2 = io.put(weight).reshape(o, kk)
            grad_cols = io.empty((kk, n * p), dt)
            _gemm(w2, g2, None, grad_cols, True, False)
            (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
            _launch_1d(k.col2im_gather, grad_x.size, grad_cols, grad_x, *kernel, sh, sw, ph, pw,
                       dh, dw, ho, wo, dt.type(0))
        grad_bias = None
        if has_bias:
            grad_bias = io.empty(o, dt)
            if g2.size:
                _launch_rows(k.row_sum, o, n * p, g2, grad_bias, dt.type(0))
            else:
                _fill(grad_bias, 0)
            grad_bias = io.get(grad_bias)
        return io.get(grad_x), io.get(grad_weight), grad_bias

    # Pooling: one thread per output element for the forward scans; the backward passes
    # are gathers, one thread per input pixel over the windows that cover it (max pool:
    # the argmax indices of a first scan decide), summed in float64 and rounded once.
    def max_pool2d(self, x, kernel_size, stride, padding):
        ho, wo = conv_output_size(x.shape, kernel_size, stride, padding, (1, 1))
        io = _IO(x)
        out = io.empty(tuple(x.shape[:2]) + (ho, wo), x.dtype)
        _max_pool_argmax(io.put(x) if out.size else None, kernel_size, stride, padding, out,
                         None)
        return io.get(out)

    def max_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        io = _IO(grad_out, x)
        grad_x = io.empty(x.shape, x.dtype)
        if grad_out.size:
            xd = io.put(x)
            best = io.empty(grad_out.shape, x.dtype)
            idx = io.empty(grad_out.shape, np.int64)
            _max_pool_argmax(xd, kernel_size, stride, padding, best, idx)
            _launch_1d(_k().max_pool2d_backward_gather, grad_x.size, io.put(grad_out), idx,
                       grad_x, *_pool_geometry(kernel_size, stride, padding))
        else:
            _fill(grad_x, 0)
        return io.get(grad_x)

    def avg_pool2d(self, x, kernel_size, stride, padding):
        ho, wo = conv_output_size(x.shape, kernel_size, stride, padding, (1, 1))
        io = _IO(x)
        out = io.empty(tuple(x.shape[:2]) + (ho, wo), x.dtype)
        if out.size:
            _launch_1d(_k().avg_pool2d, out.size, io.put(x), out,
                       *_pool_geometry(kernel_size, stride, padding))
        return io.get(out)

    def avg_pool2d_backward(self, grad_out, x, kernel_size, stride, padding):
        io = _IO(grad_out, x)
        grad_x = io.empty(x.shape, x.dtype)
        if grad_out.size:
            _launch_1d(_k().avg_pool2d_backward_gather, grad_x.size, io.put(grad_out), grad_x,
                       *_pool_geometry(kernel_size, stride, padding))
        else:
            _fill(grad_x, 0)
        return io.get(grad_x)

    # ------------------------------------------------------------ normalization
    # Statistics in float64 for both dtypes (two passes, as the reference): batch_norm one
    # block per channel, then a per-channel kernel (scale / shift, running statistics
    # updated in place), then an element-wise map; layer_norm one block per row, and its
    # grad_weight / grad_bias column sums as column partials merged on the device.
    def batch_norm(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        k = _k()
        dt = x.dtype
        N, C, L = x.shape
        io = _IO(x, weight, bias, running_mean, running_var)
        out = io.empty(x.shape, dt)
        if C == 0:
            return io.get(out)
        xd = io.put(x)
        filler = _flat(out)
        update = bool(training) and running_mean is not None
        rm, rv = io.put(running_mean), io.put(running_var)
        stats = io.empty((4, C), _F64)
        if training:
            _launch_blocks(k.bn_stats, C, N * L, xd, xd, False, stats)
        coef = io.empty((2, C), _F64)
        m = N * L
        with np.errstate(over="ignore"):
            one_m_mom = dt.type(1 - momentum)
        _launch_1d(k.bn_forward_coef, C, stats, *[filler if a is None else io.put(a)
                                                  for a in (weight, bias)],
                   filler if rm is None else rm, filler if rv is None else rv,
                   weight is not None, bias is not None, bool(training), update, one_m_mom,
                   np.float64(momentum), np.float64(m), np.float64(eps), coef)
        if x.size:
            _launch_1d(k.bn_apply, x.size, xd, coef, out)
        if update:
            for a, d in ((running_mean, rm), (running_var, rv)):
                if not is_device_array(a):
                    d.copy_to_host(a)
        return io.get(out)

    def batch_norm_backward(self, grad_out, x, weight, eps):
        k = _k()
        dt = x.dtype
        N, C, L = x.shape
        io = _IO(grad_out, x, weight)
        grad_x = io.empty(x.shape, dt)
        has_w = weight is not None
        gw = io.empty(C, dt) if has_w else None
        gb = io.empty(C, dt) if has_w else None
        if C:
            xd, gd = io.put(x), io.put(grad_out)
            filler = _flat(grad_x)
            stats = io.empty((4, C), _F64)
            _launch_blocks(k.bn_stats, C, N * L, xd, gd, True, stats)
            coef = io.empty((5, C), _F64)
            _launch_1d(k.bn_backward_coef, C, stats, io.put(weight) if has_w else filler,
                       has_w, np.float64(N * L), np.float64(eps), coef,
                       gw if has_w else filler, gb if has_w else filler)
            if x.size:
                _launch_1d(k.bn_backward_apply, x.size, gd, xd, coef, grad_x)
        if not has_w:
            return io.get(grad_x), None, None
        return io.get(grad_x), io.get(gw), io.get(gb)

    def layer_norm(self, x, weight, bias, eps):
        rows, n = x.shape
        io = _IO(x, weight, bias)
        out = io.empty(x.shape, x.dtype)
        if rows and n:
            filler = out[0]
            _launch_rows(_k().layer_norm_rows, rows, n, io.put(x),
                         *[filler if a is None else io.put(a) for a in (weight, bias)],
                         weight is not None, bias is not None, np.float64(eps), out)
        return io.get(out)

    def layer_norm_backward(self, grad_out, x, weight, eps):
        k = _k()
        rows, n = x.shape
        dt = x.dtype
        io = _IO(grad_out, x, weight)
        grad_x = io.empty(x.shape, dt)
        has_w = weight is not None
        gw = io.empty(n, dt) if has_w else None
        gb = io.empty(n, dt) if has_w else None
        if rows and n:
            xd, gd = io.put(x), io.put(grad_out)
            rowstats = io.empty((2, rows), _F64)
            _launch_rows(k.layer_norm_backward_rows, rows, n, gd, xd,
                         io.put(weight) if has_w else grad_x[0], has_w, np.float64(eps),
                         grad_x, rowstats)
            if has_w:
                gx, gy = _column_grid(rows, n)
                part = io.empty((2, gy, n), _F64)
                k.layer_norm_col_partial[(gx, gy), (k.COL_X, k.COL_Y)](gd, xd, rowstats, part)
                _launch_1d(k.layer_norm_col_merge, n, part, gw, gb)
        elif has_w:
            _fill(gw, 0)
            _fill(gb, 0)
        if not has_w:
            return io.get(grad_x), None, None
        return io.get(grad_x), io.get(gw), io.get(gb)

    # -------------------------------------------------------- dropout, embedding
    # dropout: the reference's splitmix64 counter hash in uint64 on the device (bit-identical
    # mask); embedding: a gather; embedding_backward: float64 atomics (cuda.atomic.add)
    # into a zeroed float64 (num, dim) accumulator, rounded once to the dtype (the add
    # order varies between runs, within float64 rounding of the reference's np.add.at).
    def dropout(self, x, p, seed):
        dt = x.dtype
        io = _IO(x)
        out = io.empty(x.shape, dt)
        mask = io.empty(x.shape, np.bool_)
        if x.size:
            _launch_1d(_k().dropout, x.size, _flat(io.put(x)), np.uint64(seed),
                       np.uint64(dropout_threshold(p)), _GOLDEN, _MIX1, _MIX2,
                       dropout_scale(p, dt), dt.type(0), _flat(out), _flat(mask))
        return io.get(out), io.get(mask)

    def dropout_backward(self, grad_out, mask, p):
        dt = grad_out.dtype
        io = _IO(grad_out, mask)
        out = io.empty(grad_out.shape, dt)
        if out.size:
            _launch_1d(_k().dropout_backward, out.size, _flat(io.put(grad_out)),
                       _flat(io.put(mask)), dropout_scale(p, dt), dt.type(0), _flat(out))
        return io.get(out)

    def embedding(self, indices, weight):
        io = _IO(indices, weight)
        out = io.empty((indices.shape[0], weight.shape[1]), weight.dtype)
        if out.size:
            _launch_1d(_k().embedding, out.size, io.put(indices), io.put(weight), out)
        return io.get(out)

    def embedding_backward(self, grad_out, indices, num_embeddings):
        k = _k()
        dim = grad_out.shape[1]
        io = _IO(grad_out, indices)
        out = io.empty((num_embeddings, dim), grad_out.dtype)
        if out.size:
            acc = io.empty((num_embeddings, dim), _F64)
            _fill(acc, 0)
            if grad_out.size:
                _launch_1d(k.embedding_backward_scatter, grad_out.size, io.put(grad_out),
                           io.put(indices), acc)
            _launch_1d(k.cast_from_float64, acc.size, _flat(acc), _flat(out))
        return io.get(out)

    # ------------------------------------------------------------ losses
    def mse_loss(self, input, target, reduction):
        if reduction == "none":
            return _map(_k().squared_error, 0, input, target)
        return _loss_total(_k().squared_error_partials, reduction, input, target)

    def mse_loss_grad(self, input, target, reduction):
        return _map(_k().scaled_diff, _grad_scale(reduction, input.size, 2.0), input, target)

    def l1_loss(self, input, target, reduction):
        if reduction == "none":
            return _map(_k().abs_error, 0, input, target)
        return _loss_total(_k().abs_error_partials, reduction, input, target)

    def l1_loss_grad(self, input, target, reduction):
        return _map(_k().scaled_sign, _grad_scale(reduction, input.size), input, target)

    def huber_loss(self, input, target, reduction, delta):
        if reduction == "none":
            return _map(_k().huber_error, (delta, 0.5), input, target)
        return _loss_total(_k().huber_partials, reduction, input, target, delta, 0.5)

    def huber_loss_grad(self, input, target, reduction, delta):
        return _map(_k().huber_grad, (_grad_scale(reduction, input.size), delta), input, target)

    @staticmethod
    def _ce_reduced(io, loss, reduction, count):
        if reduction == "none":
            return io.get(loss)
        total = _sum64(loss)
        return total if reduction == "sum" else _mean(total, 0.0 if count is None else count)

    def cross_entropy(self, input, target, weight, ignore_index, reduction, label_smoothing):
        io, x, t, w, scalars, count = _ce_setup(input, target, weight, ignore_index,
                                                     reduction, label_smoothing)
        loss = io.empty(input.shape[0], input.dtype)
        _launch_rows(_k().cross_entropy_rows, *input.shape, x, t, w, *scalars, loss,
                     *_consts(input.dtype, -np.inf, 0, 1))
        return self._ce_reduced(io, loss, reduction, count)

    def cross_entropy_grad(self, input, target, weight, ignore_index, reduction,
                           label_smoothing):
        io, x, t, w, scalars, count = _ce_setup(input, target, weight, ignore_index,
                                                     reduction, label_smoothing)
        grad = io.empty(input.shape, input.dtype)
        denom = 1.0 if count is None else count
        _launch_rows(_k().cross_entropy_grad_rows, *input.shape, x, t, w, *scalars,
                     input.dtype.type(denom), grad, *_consts(input.dtype, -np.inf, 0, 1))
        return io.get(grad)

    def cross_entropy_and_grad(self, input, target, weight, ignore_index, reduction,
                               label_smoothing):
        io, x, t, w, scalars, count = _ce_setup(input, target, weight, ignore_index,
                                                     reduction, label_smoothing)
        loss = io.empty(input.shape[0], input.dtype)
        grad = io.empty(input.shape, input.dtype)
        denom = 1.0 if count is None else count
        _launch_rows(_k().cross_entropy_loss_grad_rows, *input.shape, x, t, w, *scalars,
                     input.dtype.type(denom), loss, grad, *_consts(input.dtype, -np.inf, 0, 1))
        return self._ce_reduced(io, loss, reduction, count), io.get(grad)

    def binary_cross_entropy(self, input, target, weight, reduction):
        k = _k()
        return _loss((k.bce_error, k.bce_partials), reduction, input, target, (weight,),
                     _consts(input.dtype, 1, -100))

    def binary_cross_entropy_grad(self, input, target, weight, reduction):
        return _pointwise(_k().bce_grad, (input, target), (weight,),
                          _consts(input.dtype, 1, BCE_EPS, _grad_scale(reduction, input.size)))

    def binary_cross_entropy_with_logits(self, input, target, weight, reduction, pos_weight):
        k = _k()
        return _loss((k.bce_logits_error, k.bce_logits_partials), reduction, input, target,
                     (weight, pos_weight), _consts(input.dtype, 0, 1))

    def binary_cross_entropy_with_logits_grad(self, input, target, weight, reduction,
                                              pos_weight):
        return _pointwise(_k().bce_logits_grad, (input, target), (weight, pos_weight),
                          _consts(input.dtype, 1, _grad_scale(reduction, input.size)))

    def nll_loss(self, input, target, weight, ignore_index, reduction):
        k = _k()
        n, dt = input.shape[0], input.dtype
        io = _IO(input, weight)
        loss = io.empty(n, dt) if reduction == "none" else None
        total, count = 0.0, 0.0
        if n:
            x = io.put(input)
            args = (x, io.put(target), *_class_weight(io, weight, _flat(x)), ignore_index,
                    *_consts(dt, 0, 1))
            if reduction == "none":
                _launch_1d(k.nll_rows, n, *args, loss)
            else:  # one fused pass: the loss sum and the kept rows' weight sum
                total, count = _block_partials(k.nll_partials, n, *args, parts=2)
        if reduction == "none":
            return io.get(loss)
        return float(total) if reduction == "sum" else _mean(total, count)

    def nll_loss_grad(self, input, target, weight, ignore_index, reduction):
        k = _k()
        n, dt = input.shape[0], input.dtype
        io = _IO(input, weight)
        grad = io.empty(input.shape, dt)
        if n:  # the gradient does not depend on input's values: they never go to the device
            head = (io.put(target), *_class_weight(io, weight, _flat(grad)), ignore_index)
            coef = 1.0
            if reduction == "mean":
                count = _block_partials(k.nll_weight_partials, n, *head, *_consts(dt, 0, 1))
                with np.errstate(divide="ignore"):
                    coef = np.float64(1.0) / np.float64(count)
            with np.errstate(over="ignore"):
                consts = _consts(dt, 0, 1, coef)
            _launch_1d(k.nll_grad, grad.size, *head, *consts, grad)
        return io.get(grad)

    def kl_div(self, input, target, reduction, log_target):
        k = _k()
        count = self._kl_scale(input, reduction) if reduction != "sum" else None
        return _loss((k.kl_div_error, k.kl_div_partials), reduction, input, target,
                     tail=(bool(log_target), input.dtype.type(0)), count=count)

    def kl_div_grad(self, input, target, reduction, log_target):
        count = self._kl_scale(input, reduction)
        scale = input.dtype.type(1.0 / count) if count else input.dtype.type(1)
        io = _IO(input, target)
        out = io.empty(target.shape, target.dtype)
        if out.size:  # only the target is read
            _launch_1d(_k().kl_div_grad, out.size, _flat(io.put(target)), bool(log_target),
                       -scale, _flat(out))
        return io.get(out)

    # ------------------------------------------------------------- optim
    def sgd_step(self, param, grad, momentum_buffer, step, lr, momentum, dampening,
                 weight_decay, nesterov, maximize):
        _step(_k().sgd, (param, grad, momentum_buffer if momentum != 0 else None),
                   *_consts(param.dtype, lr, momentum, 1 - dampening, weight_decay),
                   weight_decay != 0, momentum != 0, step == 1, bool(nesterov), bool(maximize))

    def adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr,
                  beta1, beta2, eps, weight_decay, amsgrad, maximize,
                  decoupled_weight_decay):
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        _step(_k().adam,
                   (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None),
                   *_consts(param.dtype, 1 - lr * weight_decay, weight_decay, 1 - beta1, beta2,
                            1 - beta2, bias_correction2_sqrt, eps, lr / bias_correction1),
                   weight_decay != 0, bool(decoupled_weight_decay), bool(amsgrad),
                   bool(maximize))

    def rmsprop_step(self, param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha,
                     eps, weight_decay, momentum, centered, maximize):
        _step(_k().rmsprop,
              (param, grad, square_avg, momentum_buffer if momentum > 0 else None,
               grad_avg if centered else None),
              *_consts(param.dtype, alpha, 1 - alpha, lr, eps, weight_decay, momentum),
              weight_decay != 0, bool(centered), momentum > 0, bool(maximize))

    def adagrad_step(self, param, grad, state_sum, step, lr, lr_decay, weight_decay, eps,
                     maximize):
        _step(_k().adagrad, (param, grad, state_sum),
              *_consts(param.dtype, lr / (1 + (step - 1) * lr_decay), eps, weight_decay),
              weight_decay != 0, bool(maximize))

    # ----------------------------------------------------- preprocessing
    def column_stats(self, X):
        k = _k()
        io = _IO(X)
        n, F = X.shape
        out = io.empty((3, F), _F64)
        if F:
            gx, gy = _column_grid(n, F)
            part = io.empty((4, gy, F), _F64)
            k.col_stats_partial[(gx, gy), (k.COL_X, k.COL_Y)](io.put(X), part)
            _launch_1d(k.col_stats_merge, F, part, out)
        out = io.get(out)
        return out[0], out[1], out[2]

    def standardize(self, X, offset, scale):
        return _affine(X, offset, scale, False)

    def unstandardize(self, X, offset, scale):
        return _affine(X, offset, scale, True)

    def column_minmax(self, X):
        k = _k()
        io = _IO(X)
        n, F = X.shape
        out = io.empty((2, F), _F64)
        if F:
            gx, gy = _column_grid(n, F)
            part = io.empty((2, gy, F), _F64)
            k.col_minmax_partial[(gx, gy), (k.COL_X, k.COL_Y)](io.put(X), part,
                                                               X.dtype.type(np.inf))
            _launch_1d(k.col_minmax_merge, F, part, out)
        out = io.get(out)
        return out[0], out[1]

    def column_quantiles(self, X, q):
        k = _k()
        io = _IO(X)
        n, F = X.shape
        nq = q.size
        out = io.empty((nq, F), _F64)
        if F and nq:
            T = 2 * nq  # targets: the two order statistics around each quantile
            key, (sign, mag, inf, ones) = _key_consts(X.dtype)
            x = io.put(X)
            dq = io.put(q if is_device_array(q) else np.asarray(q, np.float64))
            gx, gy = _column_grid(n, F)
            observed = io.empty((gy, F), np.int64)
            k.col_observed_partial[(gx, gy), (k.COL_X, k.COL_Y)](x, observed)
            count = io.empty(F, np.int64)
            rank = io.empty((T, F), np.int64)
            prefix = io.empty((T, F), key)
            _launch_1d(k.quantile_ranks, nq * F, observed, dq, count, rank, prefix,
                       key.type(0))
            vals = io.empty((T, F), X.dtype)
            if n:  # else every column is unobserved: NaN without selecting
                bits, vbits = x.view(key), vals.view(key)
                part = io.empty((gy, T, F), np.int64)
                grid = (gx, gy, _cdiv(T, k.QG))
                found = 0
                for b in range(8 * key.itemsize - 1, -1, -1):
                    bit = 1 << b
                    k.quantile_count[grid, (k.COL_X, k.COL_Y)](
                        bits, prefix, key.type(found | bit), part, sign, mag, inf, ones)
                    _launch_1d(k.quantile_merge, T * F, part, rank, prefix, key.type(bit),
                               b == 0, vbits, sign, ones)
                    found |= bit
            _launch_1d(k.quantile_lerp, nq * F, vals, dq, count, out)
        return io.get(out)

    def normalize_rows(self, X, norm):
        io = _IO(X)
        out = io.empty(X.shape, X.dtype)
        _launch_rows(_k().normalize_rows, *X.shape, io.put(X), out, _NORM_KIND[norm],
                     *_consts(X.dtype, 10 * np.finfo(X.dtype).eps, 1))
        return io.get(out)

    def polynomial_features(self, X, left, right, keep):
        io = _IO(X)
        out = io.empty((X.shape[0], keep.size), X.dtype)
        if out.size:
            _launch_1d(_k().polynomial_features, out.size, io.put(X),
                       *[io.put(a if is_device_array(a) else np.asarray(a, np.int64))
                         for a in (left, right, keep)], out, X.dtype.type(1))
        return io.get(out)

    def fill_missing(self, X, missing_value, fill):
        io = _IO(X, fill)
        out = io.empty(X.shape, X.dtype)
        n_bad = 0
        if X.size:
            is_nan = bool(np.isnan(missing_value))
            with np.errstate(over="ignore"):  # as NumPy compares X with a Python float
                missing, inf = _consts(X.dtype, 0 if is_nan else missing_value, np.inf)
            n_bad = _block_partials(_k().fill_missing, X.size, _flat(io.put(X)),
                                    io.put(fill), missing, is_nan, inf, _flat(out),
                                    dtype=np.int64)
        return io.get(out), n_bad

    def one_hot(self, indices, n_columns, dtype):
        k = _k()
        dtype = np.dtype(dtype)
        io = _IO(indices)
        out = io.empty((indices.shape[0], n_columns), dtype)
        if out.size:
            _launch_1d(k.fill_const, out.size, _flat(out), dtype.type(0))
            if indices.size:
                _launch_1d(k.one_hot_scatter, indices.size, io.put(indices), out,
                           dtype.type(1))
        return io.get(out)

    def unique_counts(self, values):
        k = _k()
        io = _IO(values)
        n = values.size
        if n == 0:
            return io.get(io.empty(0, values.dtype)), io.get(io.empty(0, np.int64))
        v = io.put(values)
        if values.dtype.kind == "i":
            # min / max on the device (per-block partials, merged by one block), then a
            # histogram when the range is small against n.
            _, tpb, _, max_blocks = _launch_limits()
            blocks = min(_cdiv(n, tpb), max_blocks)
            part = io.empty((2, blocks), np.int64)
            k.label_minmax_partial[blocks, tpb](v, v, part)
            lohi = io.empty((2, 1), np.int64)
            k.label_minmax_partial[1, tpb](part[0], part[1], lohi)
            lo, hi = (int(x) for x in lohi.copy_to_host()[:, 0])
            bins = hi - lo + 1  # Python ints: no overflow
            if bins <= 2 * n + _HIST_SLACK:
                hist = io.empty(bins, np.int64)
                _launch_1d(k.zero_int64, bins, hist)
                _launch_1d(k.label_histogram, n, v, np.int64(lo), hist)
                idx = _compact(hist.view(np.uint64), bins, False, np.uint64(0))
                vals = io.empty(idx.size, np.int64)
                counts = io.empty(idx.size, np.int64)
                _launch_1d(k.hist_emit, idx.size, hist, idx, np.int64(lo), vals, counts)
                return io.get(vals), io.get(counts)
        # Sort the order-preserving keys (bitonic, padded to a power of two), then
        # compact the starts of the runs of equal keys.
        key, (sign, mag, inf, ones) = _key_consts(_F64)  # uint64 keys for int64 too
        is_float = values.dtype.kind == "f"
        size = 1 << (n - 1).bit_length()
        keys = io.empty(size, key)
        _launch_1d(k.label_keys, size, v.view(key), is_float, keys, sign, mag, inf, ones)
        kk = 2
        while kk <= size:
            j = kk // 2
            while j >= 1:
                _launch_1d(k.bitonic_step, size // 2, keys, j, kk)
                j //= 2
            kk *= 2
        idx = _compact(keys, n, True, key.type(0))
        vals = io.empty(idx.size, values.dtype)
        counts = io.empty(idx.size, np.int64)
        _launch_1d(k.run_emit, idx.size, keys, idx, n, is_float, sign, ones, vals.view(key),
                   counts)
        return io.get(vals), io.get(counts)

    def encode_values(self, values, categories):
        io = _IO(values, categories)
        codes = io.empty(values.shape, np.int64)
        if values.size:
            _launch_1d(_k().label_encode, values.size, _flat(io.put(values)),
                       _flat(io.put(categories)), _flat(codes))
        return io.get(codes)
