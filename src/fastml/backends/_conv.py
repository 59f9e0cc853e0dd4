"""conv2d on the CPU backends: native im2col / col2im kernels around BLAS GEMMs.

The numba and cython backends pass their own kernels in; the GEMMs are NumPy's
matmul (its OpenBLAS), one per sample over the batch, never a hand-written loop.

Columns are laid out (N, C kh kw, Ho Wo): ``cols[n] = im2col(x[n])`` is the
right-hand operand of ``weight.reshape(O, -1) @ cols[n]``, whose product lands
directly in the output's (N, O, Ho Wo) layout. The geometry tuple handed to
the kernels is ``(kh, kw, sh, sw, ph, pw, dh, dw)``.

The columns are scratch, never returned, so each thread keeps one buffer and
reuses it: a fresh 58 MB buffer per call (x 64x32x28x28, 3x3) cost ~8 ms of page
faults, half the time of the GEMM that fills the same memory.
"""
from __future__ import annotations

import threading

import numpy as np

from .._config import limit_blas_threads
from .reference import conv_output_size

_scratch = threading.local()


def _columns(shape, dtype):
    """This thread's reusable scratch array of ``shape`` (grown when too small)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _scratch.buf = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _geometry(weight, stride, padding, dilation):
    kh, kw = weight.shape[2:]
    return (kh, kw, *stride, *padding, *dilation)


def _im2col(im2col, x, weight, geometry, out_hw):
    n, k = x.shape[0], weight[0].size
    cols = _columns((n, k, out_hw[0] * out_hw[1]), x.dtype)
    im2col(x, cols, geometry)
    return cols


def conv2d(im2col, x, weight, bias, stride, padding, dilation):
    """The reference's ``conv2d`` with the backend's ``im2col(x, cols, geometry)``."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = conv_output_size(x.shape, weight.shape[2:], stride, padding, dilation)
    cols = _im2col(im2col, x, weight, _geometry(weight, stride, padding, dilation), (ho, wo))
    limit_blas_threads()
    out = np.matmul(weight.reshape(o, -1), cols)
    if bias is not None:
        out += bias[:, None]
    return out.reshape(n, o, ho, wo)


def conv2d_backward(im2col, col2im, grad_out, x, weight, stride, padding, dilation, has_bias):
    """The reference's ``conv2d_backward`` with the backend's ``im2col`` and
    ``col2im(cols, grad_x, geometry)`` (which overwrites every element of grad_x)."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = grad_out.shape[2:]
    geometry = _geometry(weight, stride, padding, dilation)
    g = grad_out.reshape(n, o, ho * wo)
    cols = _im2col(im2col, x, weight, geometry, (ho, wo))
    limit_blas_threads()
    # sum_n cols[n] @ g[n].T: (K, O) per sample, which BLAS runs faster than g[n] @ cols[n].T
    grad_weight = np.ascontiguousarray(
        np.matmul(cols, g.transpose(0, 2, 1)).sum(axis=0).T).reshape(weight.shape)
    grad_cols = np.matmul(weight.reshape(o, -1).T, g, out=cols)  # cols is no longer needed
    grad_x = np.empty_like(x)
    col2im(grad_cols, grad_x, geometry)
    grad_bias = grad_out.sum(axis=(0, 2, 3)) if has_bias else None
    return grad_x, grad_weight, grad_bias
