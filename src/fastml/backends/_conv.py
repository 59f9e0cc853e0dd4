"""conv2d on the CPU backends: native im2col / col2im kernels around BLAS GEMMs.

The numba and cython backends pass their own kernels in; the GEMMs are NumPy's
matmul (its OpenBLAS), one per product for the whole batch, never a hand-written loop.

Columns are laid out (C kh kw, N, Ho Wo): ``cols[(c kh + i) kw + j, n, oh Wo + ow] =
xpad[n, c, oh sh + i dh, ow sw + j dw]``, so ``weight.reshape(O, -1) @ cols`` is one
GEMM over the whole batch. Its (O, N, Ho Wo) product is permuted to the output's
(N, O, Ho Wo) by NumPy while the bias is added (one pass). The geometry tuple
handed to the kernels is ``(kh, kw, sh, sw, ph, pw, dh, dw)``.

Why one GEMM and not one per sample: on a busy 2-core machine each of the 64
per-sample GEMMs of the benchmark waited for OpenBLAS's worker threads (a whole
forward pass once took 180 ms instead of 14); one large GEMM synchronizes once and
was as fast or faster on a quiet machine (x 64x32x28x28, 3x3: forward 13.5 vs 14 ms,
grad_weight 14 vs 15.5, grad_cols 12.5 vs 16).

The columns and the GEMM's product are scratch, never returned, so each thread
keeps its buffers and reuses them: a fresh 58 MB buffer per call cost ~8 ms of page
faults, half the time of the GEMM that fills it.
"""
from __future__ import annotations

import threading

import numpy as np

from .._config import limit_blas_threads
from .reference import conv_output_size

_scratch = threading.local()


def _buffer(slot, shape, dtype):
    """This thread's reusable scratch array ``slot`` of ``shape`` (grown when too small)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    bufs = _scratch.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _geometry(weight, stride, padding, dilation):
    kh, kw = weight.shape[2:]
    return (kh, kw, *stride, *padding, *dilation)


def _im2col(im2col, x, weight, geometry, length):
    """Scratch columns (C kh kw, N, length) of x, filled by the backend's kernel."""
    cols = _buffer("cols", (weight[0].size, x.shape[0], length), x.dtype)
    im2col(x, cols, geometry)
    return cols


def conv2d(im2col, x, weight, bias, stride, padding, dilation):
    """The reference's ``conv2d`` with the backend's ``im2col(x, cols, geometry)``."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = conv_output_size(x.shape, weight.shape[2:], stride, padding, dilation)
    cols = _im2col(im2col, x, weight, _geometry(weight, stride, padding, dilation), ho * wo)
    limit_blas_threads()
    prod = np.matmul(weight.reshape(o, -1), cols.reshape(cols.shape[0], -1),
                     out=_buffer("prod", (o, n * ho * wo), x.dtype))
    out = np.empty((n, o, ho * wo), x.dtype)
    by_sample = prod.reshape(o, n, ho * wo).transpose(1, 0, 2)
    if bias is None:
        np.copyto(out, by_sample)
    else:
        np.add(by_sample, bias[:, None], out=out)
    return out.reshape(n, o, ho, wo)


def conv2d_backward(im2col, col2im, grad_out, x, weight, stride, padding, dilation, has_bias):
    """The reference's ``conv2d_backward`` with the backend's ``im2col`` and
    ``col2im(cols, grad_x, geometry)`` (which overwrites every element of grad_x)."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = grad_out.shape[2:]
    geometry = _geometry(weight, stride, padding, dilation)
    cols = _im2col(im2col, x, weight, geometry, ho * wo)
    cols2 = cols.reshape(cols.shape[0], -1)
    g = _buffer("prod", (o, n, ho * wo), x.dtype)  # grad_out as (O, N, Ho Wo)
    np.copyto(g, grad_out.reshape(n, o, ho * wo).transpose(1, 0, 2))
    g2 = g.reshape(o, -1)
    limit_blas_threads()
    # (cols @ g.T).T: BLAS ran this orientation faster than g @ cols.T
    grad_weight = np.ascontiguousarray(np.matmul(cols2, g2.T).T).reshape(weight.shape)
    grad_cols = np.matmul(weight.reshape(o, -1).T, g2, out=cols2)  # cols is no longer needed
    grad_x = np.empty_like(x)
    col2im(grad_cols.reshape(cols.shape), grad_x, geometry)
    grad_bias = g.sum(axis=(1, 2)) if has_bias else None
    return grad_x, grad_weight, grad_bias
