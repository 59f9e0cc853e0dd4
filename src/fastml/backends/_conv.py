"""conv2d on the CPU backends: native im2col / col2im kernels around BLAS GEMMs.

The numba and cython backends pass their own (serial) kernels in; the GEMMs are
NumPy's matmul (its OpenBLAS), never a hand-written loop. A backend may also pass
:class:`Winograd` transforms (cython does), used for 3x3 stride-1 convolutions: see
the section at the end of this module and docs/backends.md.

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
from typing import NamedTuple

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


def conv2d(im2col, x, weight, bias, stride, padding, dilation, winograd=None):
    """The reference's ``conv2d`` with the backend's ``im2col(x, cols, geometry)``, and
    its :class:`Winograd` kernels (if any) where :func:`winograd_applies`."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = conv_output_size(x.shape, weight.shape[2:], stride, padding, dilation)
    geometry = _geometry(weight, stride, padding, dilation)
    w2 = weight.reshape(o, -1)
    out = np.empty((n, o, ho * wo), x.dtype)
    fast = winograd is not None and winograd_applies(x, weight, stride, padding, dilation)
    if fast:
        u = _winograd_weight(weight)
        out4 = out.reshape(n, o, ho, wo)

    def work(lo, hi):
        if fast and _winograd_conv(winograd, x[lo:hi], u, bias, padding, out4[lo:hi]):
            return
        cols = _im2col(im2col, x[lo:hi], weight, geometry, ho * wo)
        np.matmul(w2, cols, out=out[lo:hi])
        if bias is not None:
            out[lo:hi] += bias[:, None]

    sample_bytes = (_winograd_bytes(x, weight, ho, wo) if fast
                    else weight[0].size * ho * wo * x.itemsize)
    _over_batch(work, n, sample_bytes)
    return out.reshape(n, o, ho, wo)


def conv2d_backward(im2col, col2im, grad_out, x, weight, stride, padding, dilation, has_bias,
                    winograd=None):
    """The reference's ``conv2d_backward`` with the backend's ``im2col`` and
    ``col2im(cols, grad_x, geometry)`` (which overwrites every element of grad_x), and
    its :class:`Winograd` transforms (if any) where :func:`winograd_applies`."""
    n, o = x.shape[0], weight.shape[0]
    ho, wo = grad_out.shape[2:]
    if winograd is not None and winograd_applies(x, weight, stride, padding, dilation):
        grads = _winograd_backward(winograd, grad_out, x, weight, padding, has_bias)
        if grads is not None:
            return grads
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


# ------------------------------------------------------------ Winograd F(2x2, 3x3)
# 3x3 stride-1 convolutions as 16 GEMMs of (O, C) @ (C, tiles), one per point of the
# 4x4 transformed tile (Lavin & Gray, "Fast Algorithms for Convolutional Neural
# Networks", 2016): 2.25x fewer multiply-adds than im2col's GEMM, on the same BLAS.
# Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A per 2x2 output tile; grad_x is the same algorithm on
# grad_out with the flipped, transposed kernel; grad_weight its transpose in g,
# Gᵀ [(A γ Aᵀ) ⊙ (Bᵀ d B)] G summed over tiles. The backend supplies the transforms.
#
# Accuracy: the transforms add and subtract up to 4 inputs (and halve the weights),
# so a float32 result is off by a few more ulps of sum |w| |x| than im2col's (tested
# against the bound of running the algorithm on |values|). NaN and inf: the ±
# transforms turn a lone inf into NaN where the direct sum gives ±inf, and large
# finite inputs can overflow in them; so a forward slice whose output is not all
# finite, or a backward with any non-finite result, is computed again by im2col, which
# makes the non-finite results exactly the direct method's.

_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])

# The transforms cost C + O per tile, the GEMM work they save C O. Measured (2 threads,
# forward + backward, 64 x C x 28 x 28, C = O, Winograd / im2col time): C = 4: 0.94-0.99,
# 8: 0.80-1.06, 12: 0.70-0.76, 16: 0.70-0.74, 32: 0.68-0.74.
WINOGRAD_MIN_CHANNELS = 16


class Winograd(NamedTuple):
    """A backend's F(2x2, 3x3) transforms, on tiles laid out as ``_winograd_tiles``."""
    input: object        # (x, ph, pw, v): v (16, C, nb tt) = Bᵀ d B per 4x4 window d
    output: object       # (m, bias or None, out) -> whether all finite: Aᵀ M A (+ bias)
    grad_output: object  # (g, pg): pg (16, O, nb tt) = A γ Aᵀ per 2x2 tile γ of g


def winograd_applies(x, weight, stride, padding, dilation):
    """Whether conv2d (and its backward) take the Winograd path: a 3x3 kernel, stride
    and dilation 1, padding at most 2 (grad_x pads by 2 - p), enough channels."""
    return (weight.shape[2:] == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and max(padding) <= 2
            and min(x.shape[1], weight.shape[0]) >= WINOGRAD_MIN_CHANNELS)


def _winograd_tiles(ho, wo):
    """Tiles per plane of an ho x wo output: th = ceil(ho / 2) rows of s = ceil(wo / 2) + 1
    2x2 tiles, the last of each row junk (it makes tile t = i s + j's 4x4 input window
    start at flat offset t of the padded plane's four (row, column) parity planes, so a
    transform is one unit-stride loop over t; the junk tile is computed and dropped)."""
    return -(-ho // 2) * (-(-wo // 2) + 1)


def _winograd_weight(weight):
    """U (16, O, C) = G g Gᵀ per (o, c), computed in float64."""
    o, c = weight.shape[:2]
    u = (_G @ weight.astype(np.float64) @ _G.T).transpose(2, 3, 0, 1)
    return np.ascontiguousarray(u.reshape(16, o, c), dtype=weight.dtype)


def _winograd_bytes(x, weight, ho, wo):
    """Scratch bytes per sample: the transformed input and output tiles."""
    return 16 * (x.shape[1] + weight.shape[0]) * _winograd_tiles(ho, wo) * x.itemsize


def _winograd_conv(kern, x, u, bias, padding, out):
    """out (nb, O, Ho, Wo) = conv2d of the slice x by Winograd; False (out then
    garbage) when it is not all finite."""
    nb, c = x.shape[:2]
    o = u.shape[1]
    tt = nb * _winograd_tiles(*out.shape[2:])
    v = _buffer("wino_in", (16, c, tt), x.dtype)
    kern.input(x, *padding, v)
    return kern.output(np.matmul(u, v, out=_buffer("wino_out", (16, o, tt), x.dtype)), bias, out)


def _winograd_backward(kern, grad_out, x, weight, padding, has_bias):
    """conv2d_backward by Winograd, or None when a result is not all finite.

    grad_x is the convolution of grad_out with the flipped, transposed kernel and
    padding 2 - p (F(2x2, 3x3) again); grad_weight is Gᵀ [Σ (A γ Aᵀ) ⊙ (Bᵀ d B)] G, the
    sum over all tiles of the batch transformed once at the end."""
    n, c = x.shape[:2]
    o = weight.shape[0]
    ho, wo = grad_out.shape[2:]
    u_x = _winograd_weight(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    grad_x = np.empty_like(x)

    def work(lo, hi):
        """This slice's grad_x and partial transformed grad_weight (16, O, C) and grad_bias;
        None when its grad_x is not all finite."""
        g = grad_out[lo:hi]
        if not _winograd_conv(kern, g, u_x, None, (2 - padding[0], 2 - padding[1]),
                              grad_x[lo:hi]):
            return None
        tt = (hi - lo) * _winograd_tiles(ho, wo)
        v = _buffer("wino_in", (16, c, tt), x.dtype)
        pg = _buffer("wino_out", (16, o, tt), x.dtype)
        kern.input(x[lo:hi], *padding, v)
        kern.grad_output(g, pg)
        # the sums over the slice's tiles; pg[5] = (A γ Aᵀ)[1, 1] is a tile's sum of γ
        return np.matmul(pg, v.transpose(0, 2, 1)), pg[5].sum(axis=1) if has_bias else None

    partials = _over_batch(work, n, _winograd_bytes(x, weight, *x.shape[2:]))
    if any(p is None for p in partials):
        return None
    if not partials:  # an empty batch
        return grad_x, np.zeros(weight.shape, x.dtype), np.zeros(o, x.dtype) if has_bias else None
    wg = functools.reduce(np.add, (p[0] for p in partials)).astype(np.float64)
    grad_weight = (_G.T @ wg.reshape(4, 4, o, c).transpose(2, 3, 0, 1) @ _G).astype(x.dtype)
    if not np.isfinite(grad_weight).all():
        return None
    grad_bias = functools.reduce(np.add, (p[1] for p in partials)) if has_bias else None
    return grad_x, grad_weight, grad_bias
