"""conv2d on the CPU backends: native im2col / col2im kernels around BLAS GEMMs.

The numba and cython backends pass their own (serial) kernels in; the GEMMs are
NumPy's matmul (its OpenBLAS), never a hand-written loop.

Columns are laid out (N, C kh kw, Ho Wo) as the reference's: ``cols[n, (c kh + i) kw +
j, oh Wo + ow] = xpad[n, c, oh sh + i dh, ow sw + j dw]``, so ``weight.reshape(O, -1) @
cols`` is one GEMM per sample (NumPy's stacked matmul) written straight into the
output's (N, O, Ho Wo), and ``weight.T @ grad_out`` reads grad_out as it is: no
permuted copies (an earlier (C kh kw, N, Ho Wo) layout made one GEMM per slice but
needed both; measured 2 cores, per-sample GEMMs run as fast). The geometry tuple
handed to the kernels is ``(kh, kw, sh, sw, ph, pw, dh, dw)``.

The batch is cut into slices of about _SLICE_BYTES of columns (at least one slice
per thread, ``get_num_threads()``), and worker threads run the slices' im2col,
GEMMs, permutes and col2im with BLAS single-threaded in each worker; grad_weight and
grad_bias are the sums of the slices' partial products. Measured (2 cores,
x 64x32x28x28, w 64x32x3x3, pad 1): OpenBLAS splits these skinny GEMMs (M = 64,
K = 288) poorly over its own threads, 13.8 ms for the forward GEMM against 11.7 ms
for two concurrent single-threaded halves (grad_cols 13.2 / 8.3 ms), and the column
kernels run in parallel too instead of serially between GEMMs (a parallel kernel
right after a threaded GEMM fought OpenBLAS's spinning workers: im2col + GEMM took
58 ms instead of 25). Slices of a few MB of columns (3 samples here) are then read
by their GEMM from cache rather than memory: forward + backward 46 ms against 58 ms
for one slice per thread (medians, interleaved runs).

The columns and the GEMM's product are scratch, never returned, so each worker
keeps its buffers and reuses them (when the batch's 58 MB of columns was one buffer,
a fresh one per call cost ~8 ms of page faults).
"""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._config import get_num_threads, limit_blas_threads, single_threaded_blas
from .reference import conv_output_size

_scratch = threading.local()
_pool = {"executor": None, "workers": 0}
_pool_lock = threading.Lock()


def _buffer(slot, shape, dtype):
    """This thread's reusable scratch array ``slot`` of ``shape`` (grown when too small)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    bufs = _scratch.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


_SLICE_BYTES = 3 << 20  # a slice's columns: written by im2col, read back from cache


def _over_batch(work, n, sample_bytes):
    """``[work(lo, hi) for each slice]`` of a batch of n, in batch order: slices of
    about _SLICE_BYTES of columns (``sample_bytes`` per sample), at least one per thread,
    run by a pool of exactly that many worker threads with single-threaded BLAS; with
    one thread, or a lone slice, they run here, with the BLAS pool."""
    k = min(get_num_threads(), n)
    if k == 0:
        return []
    per = max(1, min(-(-n // k), _SLICE_BYTES // max(sample_bytes, 1)))
    slices = [(lo, min(lo + per, n)) for lo in range(0, n, per)]
    if len(slices) == 1 or k == 1:
        limit_blas_threads()  # one thread: BLAS bound to 1 as well
        return [work(lo, hi) for lo, hi in slices]
    with _pool_lock:  # callers on several threads share one pool, of exactly k workers
        if _pool["workers"] != k:
            if _pool["executor"] is not None:
                _pool["executor"].shutdown(wait=False)
            _pool["executor"] = ThreadPoolExecutor(k, thread_name_prefix="fastml-conv")
            _pool["workers"] = k
        executor = _pool["executor"]
    err = np.geterr()  # NumPy's error state is per thread: the workers take the caller's

    def in_worker(lo, hi):
        with np.errstate(**err):
            return work(lo, hi)

    with single_threaded_blas():
        futures = [executor.submit(in_worker, lo, hi) for lo, hi in slices]
        return [f.result() for f in futures]


def _geometry(weight, stride, padding, dilation):
    kh, kw = weight.shape[2:]
    return (kh, kw, *stride, *padding, *dilation)


def _im2col(im2col, x, weight, geometry, length):
    """Scratch columns (N, C kh kw, length) of x, filled by the backend's kernel."""
    cols = _buffer("cols", (x.shape[0], weight[0].size, length), x.dtype)
    im2col(x, cols, geometry)
    return cols


def conv2d(im2col, x, weight, bias, stride, padding, dilation):
    """The reference's ``conv2d`` with the backend's ``im2col(x, cols, geometry)``."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = conv_output_size(x.shape, weight.shape[2:], stride, padding, dilation)
    geometry = _geometry(weight, stride, padding, dilation)
    w2 = weight.reshape(o, -1)
    out = np.empty((n, o, ho * wo), x.dtype)

    def work(lo, hi):
        cols = _im2col(im2col, x[lo:hi], weight, geometry, ho * wo)
        np.matmul(w2, cols, out=out[lo:hi])
        if bias is not None:
            out[lo:hi] += bias[:, None]

    _over_batch(work, n, weight[0].size * ho * wo * x.itemsize)
    return out.reshape(n, o, ho, wo)


def conv2d_backward(im2col, col2im, grad_out, x, weight, stride, padding, dilation, has_bias):
    """The reference's ``conv2d_backward`` with the backend's ``im2col`` and
    ``col2im(cols, grad_x, geometry)`` (which overwrites every element of grad_x)."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = grad_out.shape[2:]
    geometry = _geometry(weight, stride, padding, dilation)
    w2 = weight.reshape(o, -1)
    grad_x = np.empty_like(x)

    def work(lo, hi):
        """This slice's grad_x, and its partial grad_weight (C kh kw, O) and grad_bias."""
        cols = _im2col(im2col, x[lo:hi], weight, geometry, ho * wo)
        g = grad_out[lo:hi].reshape(hi - lo, o, ho * wo)
        # cols @ g.T per sample: BLAS ran this orientation faster than g @ cols.T
        per_sample = np.matmul(cols, g.transpose(0, 2, 1),
                               out=_buffer("prod", (hi - lo, cols.shape[1], o), x.dtype))
        partial = (per_sample.sum(axis=0), g.sum(axis=(0, 2)) if has_bias else None)
        col2im(np.matmul(w2.T, g, out=cols), grad_x[lo:hi], geometry)  # cols is spent
        return partial

    partials = _over_batch(work, n, weight[0].size * ho * wo * x.itemsize)
    if not partials:  # an empty batch
        grad_weight = np.zeros(weight.shape, x.dtype)
        return grad_x, grad_weight, np.zeros(o, x.dtype) if has_bias else None
    grad_weight = np.ascontiguousarray(
        functools.reduce(np.add, (p[0] for p in partials)).T).reshape(weight.shape)
    grad_bias = functools.reduce(np.add, (p[1] for p in partials)) if has_bias else None
    return grad_x, grad_weight, grad_bias
