"""Raw numba.cuda kernels of the cuda backend; the host side is numba_cuda.py.

Every kernel is a plain ``@cuda.jit`` without a signature: nothing compiles
at import, each compiles on first launch, once per argument-type signature.

Typing rule: a float literal in a kernel is float64 and would promote float32
arithmetic to float64, so constants of the array dtype (``zero``, ``one``,
``-inf``, scales) are passed in as typed scalars. Only the kernels in
``F64_KERNELS`` compute in float64 on purpose, where the reference does.

Element-wise kernels are grid-stride loops over flat arrays. The activations gelu and
silu compute in the input's dtype (the reference: float64, rounded once) with forms that
do not cancel: sigmoid and 1 - sigmoid both from exp(-|x|), (1 + erf) as erfc, (1 + tanh u)
/ 2 as sigmoid(2u); their backward kernels give the derivative the exact zeros of the
reference's float64 evaluation (``_as_reference``), so an infinite grad_out gives its
+-inf / NaN. Near a derivative's root (gelu: x ~ -0.75, silu: x ~ -1.28) its terms
cancel, and float32 evaluates a small polynomial fitted to the reference there instead
(``_near_root``).
Row-wise kernels
(softmax family, cross-entropy) give each block whole rows (grid-stride over
rows) and reduce across the block with a shared-memory tree; blockDim.x is a
power of two <= MAX_TPB. Warp shuffles would be faster but the simulator,
which runs the tests, has none.

Column reductions (column statistics, min/max, quantile counts) put columns
across threads x (consecutive columns: coalesced row-major reads) and rows
across threads y and blocks y; each block writes one partial per column and a
second small kernel merges the (blocks, F) partials.

Quantiles are a radix select, not a sort. Each float maps to an
order-preserving unsigned key of its width (positive: sign bit set; negative:
all bits flipped; NaN: all ones, above every value, so it is never selected).
For every column and every wanted order statistic (the two neighbours
``floor(h)``, ``floor(h) + 1`` of each quantile's virtual index ``h = q (m - 1)``
over the m observed values) the key of the k-th smallest value is found bit by
bit from the top: one counting pass per bit (32 for float32, 64 for float64)
counts, per column and target, the keys that share the bits found so far and
have a 0 at this bit; a merge kernel sets the bit to 1 (and lowers k by the
count) when k is not below the count. All columns and up to ``QG`` targets per
block-z are counted in the same pass, which reads X once; no data leaves the
device and nothing is sorted. The selected values are interpolated in float64
with NumPy's lerp, products rounded separately (no FMA contraction).

Labels (1-D int64 / float64). ``encode_values`` is a grid-stride binary search
(lower bound) of each value in the small sorted categories, in NumPy's order
(NaN last and equal to NaN). ``unique_counts`` of int64 values first reduces
min / max on the device; when the range is small against n it is a
global-memory histogram (``cuda.atomic.add``) whose non-empty bins are then
compacted in order. numba.cuda has no device sort (no CUB / Thrust binding), so
wide int ranges and every float input take a bitonic sort of order-preserving
uint64 keys in global memory (int64: sign bit flipped; float64: ``_order_key``
with -0.0 keyed as 0.0 and every NaN as all ones, so NaNs form one run, last),
padded to a power of two with all-ones keys (they sort after the n real keys,
which stay the first n), one launch per (k, j) step: O(n log^2 n) work, all on
the device. The run starts of the sorted keys are compacted in order; a run's
count is the distance to the next start. Compaction (both paths): per-block
counts over contiguous chunks, a one-thread prefix sum of the few block counts,
then each block scatters its chunk through a shared-memory scan; only the
number of distinct values comes to the host, to size the result. A shared-memory
stage for the bitonic steps with j < blockDim would cut launches and traffic.
"""
import math

import numpy as np
from numba import config, cuda, float64, int64, uint64

_SIM = bool(config.ENABLE_CUDASIM)

MAX_TPB = 256                             # length of the shared reduction buffers
TILE = 4 if _SIM else 16                  # GEMM tile edge (the simulator runs a thread per CUDA thread)
_TILE_PAD = TILE + 1                      # padded row of a shared tile: no bank conflicts
COL_X, COL_Y = (4, 2) if _SIM else (32, 8)  # column kernels: columns x row lanes per block
QG = 4 if _SIM else 8                     # quantile select: targets (order statistics) per block-z

# Kernels that compute in float64 even for float32 input, as the reference does:
# loss scalars and preprocessing statistics/transforms.
_POOL = "avg_pool2d sums and the pooling gradients accumulate in float64 (reference), rounded once"
_NORM = ("batch_norm / layer_norm statistics and affine maps in float64 (reference), "
         "rounded once")
_PARTIALS = "scalar losses accumulate in float64 (reference sums with dtype=float64)"
F64_KERNELS = {
    "sum_partials": _PARTIALS, "squared_error_partials": _PARTIALS,
    "abs_error_partials": _PARTIALS, "huber_partials": _PARTIALS,
    "bce_partials": _PARTIALS, "bce_logits_partials": _PARTIALS, "kl_div_partials": _PARTIALS,
    "nll_partials": _PARTIALS, "nll_weight_partials": _PARTIALS,
    "col_stats_partial": "column_stats is float64 by contract (count, mean, M2)",
    "col_stats_merge": "column_stats is float64 by contract (count, mean, M2)",
    "affine_cols": "standardize/unstandardize compute in float64 with float64 offset/scale",
    "col_minmax_partial": "column_minmax is float64 by contract (exact widening of the result)",
    "col_minmax_merge": "column_minmax is float64 by contract (exact widening of the result)",
    "quantile_ranks": "quantile positions h = q * (m - 1) are float64, as NumPy's",
    "quantile_lerp": "column_quantiles is float64 by contract (reference interpolates in float64)",
    "normalize_rows": "norms accumulate in float64 (reference), rounded to X's dtype to divide",
    "fill_missing": "fill is float64 by contract, rounded to X's dtype as it is written",
    "max_pool2d_backward_gather": _POOL, "avg_pool2d": _POOL,
    "avg_pool2d_backward_gather": _POOL,
    "bn_stats": _NORM, "bn_forward_coef": _NORM, "bn_apply": _NORM,
    "bn_backward_coef": _NORM, "bn_backward_apply": _NORM,
    "layer_norm_rows": _NORM, "layer_norm_backward_rows": _NORM,
    "layer_norm_col_partial": _NORM, "layer_norm_col_merge": _NORM,
    "embedding_backward_scatter": "rows of repeated indices accumulate in float64 "
                                  "(reference: float64 np.add.at), with float64 atomics",
    "cast_from_float64": "rounds a float64 accumulator to the dtype (embedding_backward)",
}


# ----------------------------------------------------------- device helpers
@cuda.jit(device=True)
def _nanmax(a, b):
    """max(a, b) propagating NaN from either side, like np.maximum."""
    return b if (b > a or b != b) else a


if _SIM:
    # Kernels run as Python there, whose math.sqrt/log/log1p raise outside their domain
    # (and math.exp on overflow) where the device gives NaN/-inf/inf. NumPy's functions
    # return those, in the scalar's dtype, as the reference does.
    _sqrt, _log, _log1p, _exp = np.sqrt, np.log, np.log1p, np.exp

    def _mul_rn(a, b):
        return a * b
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _sqrt(x):
        return math.sqrt(x)

    @cuda.jit(device=True)
    def _log(x):
        return math.log(x)

    @cuda.jit(device=True)
    def _log1p(x):
        return math.log1p(x)

    @cuda.jit(device=True)
    def _exp(x):
        return math.exp(x)

    @cuda.jit(device=True)
    def _mul_rn(a, b):
        """float64 a * b rounded on its own: never contracted into an FMA with a later add."""
        return libdevice.dmul_rn(a, b)


@cuda.jit(device=True)
def _block_sum(sh, v):
    """Sum of ``v`` over the block, returned to every thread; ``sh`` is reusable after."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    h = cuda.blockDim.x // 2
    while h > 0:
        if t < h:
            sh[t] += sh[t + h]
        cuda.syncthreads()
        h //= 2
    total = sh[0]
    cuda.syncthreads()
    return total


def _make_pairwise_sum(item):
    """A device function ``(x, c, L, off, n)``: NumPy's pairwise sum (``np.add.reduce``
    of a contiguous float64 run, bit for bit) of ``item(x, c, L, e)`` for e in
    [off, off + n), by one thread. NumPy's recursion (n <= 128: eight accumulators,
    else the halves, the first rounded down to a multiple of 8) runs on an explicit
    stack: its depth is at most log2(n / 128) + 1 < 64."""
    @cuda.jit(device=True)
    def block(x, c, L, off, n):
        if n < 8:
            res = 0.0
            for e in range(off, off + n):
                res += item(x, c, L, e)
            return res
        r = cuda.local.array(8, float64)
        for k in range(8):
            r[k] = item(x, c, L, off + k)
        end = off + n - n % 8
        for i in range(off + 8, end, 8):
            for k in range(8):
                r[k] += item(x, c, L, i + k)
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for e in range(end, off + n):
            res += item(x, c, L, e)
        return res

    @cuda.jit(device=True)
    def pairwise_sum(x, c, L, off, n):
        if n <= 128:
            return block(x, c, L, off, n)
        s_off = cuda.local.array(64, int64)
        s_n = cuda.local.array(64, int64)
        s_state = cuda.local.array(64, int64)  # 0: left next, 1: right next, 2: combine
        vals = cuda.local.array(64, float64)
        sp = 1
        vp = 0
        s_off[0], s_n[0], s_state[0] = off, n, 0
        while sp > 0:
            o, m, state = s_off[sp - 1], s_n[sp - 1], s_state[sp - 1]
            half = m // 2
            half -= half % 8
            if m <= 128:
                vals[vp] = block(x, c, L, o, m)
                vp += 1
                sp -= 1
            elif state == 2:
                vals[vp - 2] = vals[vp - 2] + vals[vp - 1]
                vp -= 1
                sp -= 1
            else:
                s_state[sp - 1] = state + 1
                s_off[sp] = o if state == 0 else o + half
                s_n[sp] = half if state == 0 else m - half
                s_state[sp] = 0
                sp += 1
        return vals[0]
    return pairwise_sum


@cuda.jit(device=True)
def _row_item(x, r, L, e):
    return float64(x[r, e])


@cuda.jit(device=True)
def _channel_item(x, c, L, e):
    """Element e of channel c of x (N, C, L), in (n, l) order."""
    n = e // L
    return float64(x[n, c, e - n * L])


_row_pairwise_sum = _make_pairwise_sum(_row_item)
_channel_pairwise_sum = _make_pairwise_sum(_channel_item)


@cuda.jit(device=True)
def _block_max(sh, v):
    """NaN-propagating max of ``v`` over the block, returned to every thread."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    h = cuda.blockDim.x // 2
    while h > 0:
        if t < h:
            sh[t] = _nanmax(sh[t], sh[t + h])
        cuda.syncthreads()
        h //= 2
    total = sh[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _lse_push(m, s, v, one):
    """Online log-sum-exp: add ``v`` to the running (max m, sum s of exp(x - m))."""
    if v > m:
        return v, s * math.exp(m - v) + one
    return m, s + math.exp(v - m)


@cuda.jit(device=True)
def _lse_finish(x, row, m, s, sh_m, sh_s, zero):
    """Merge the threads' online (m, s) of ``x[row]``; returns the row's (max, sum exp(x - max)).

    A non-finite result (NaN/inf logits) is recomputed with the exact two-pass
    formula, so NaN/inf behave as in the reference's ``exp(x - max)``.
    """
    t = cuda.threadIdx.x
    sh_m[t] = m
    sh_s[t] = s
    cuda.syncthreads()
    h = cuda.blockDim.x // 2
    while h > 0:
        if t < h:
            m1, s1, m2, s2 = sh_m[t], sh_s[t], sh_m[t + h], sh_s[t + h]
            if m2 > m1:
                sh_m[t] = m2
                sh_s[t] = s1 * math.exp(m1 - m2) + s2
            elif s2 != zero:  # an empty slice (m = -inf, s = 0) changes nothing
                sh_s[t] = s1 + s2 * math.exp(m2 - m1)
        cuda.syncthreads()
        h //= 2
    m, s = sh_m[0], sh_s[0]
    cuda.syncthreads()
    if not math.isfinite(m + math.log(s)):  # block-uniform branch
        n = x.shape[1]
        # The merged m is the max of the non-NaN values: a neutral filler.
        mx = x[row, t] if t < n else m
        for j in range(t + cuda.blockDim.x, n, cuda.blockDim.x):
            mx = _nanmax(mx, x[row, j])
        m = _block_max(sh_m, mx)
        acc = zero
        for j in range(t, n, cuda.blockDim.x):
            acc += math.exp(x[row, j] - m)
        s = _block_sum(sh_s, acc)
    return m, s


@cuda.jit(device=True)
def _row_lse(x, row, sh_m, sh_s, neg_inf, zero, one):
    """(max, sum exp(x - max)) of ``x[row]`` in one online pass over the row."""
    m, s = neg_inf, zero
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        m, s = _lse_push(m, s, x[row, j], one)
    return _lse_finish(x, row, m, s, sh_m, sh_s, zero)


# ------------------------------------------------------------- element-wise
def _unary(f):
    """Grid-stride kernel ``out[i] = f(x[i], c)`` over flat arrays."""
    @cuda.jit
    def kernel(x, out, c):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            out[i] = f(x[i], c)
    return kernel


def _binary(f):
    """Grid-stride kernel ``out[i] = f(a[i], b[i], c)`` over flat arrays."""
    @cuda.jit
    def kernel(a, b, out, c):
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            out[i] = f(a[i], b[i], c)
    return kernel


@cuda.jit(device=True)
def _relu(x, zero):
    return zero if x <= zero else x  # NaN <= 0 is False: NaN passes through


@cuda.jit(device=True)
def _relu_backward(g, x, zero):
    return zero if x <= zero else g


@cuda.jit(device=True)
def _sigmoid(x, one):
    # Same value as 1 / (1 + exp(-x)) without overflowing exp for x << 0.
    if x >= one - one:
        return one / (one + math.exp(-x))
    e = math.exp(x)
    return e / (one + e)


@cuda.jit(device=True)
def _sigmoid_backward(g, y, one):
    return g * (one - y) * y


@cuda.jit(device=True)
def _tanh(x, one):
    return math.tanh(x)


@cuda.jit(device=True)
def _tanh_backward(g, y, one):
    return g * (one - y * y)


@cuda.jit(device=True)
def _leaky_relu(x, slope):
    # x > -x exactly when x > 0 (no float literal); NaN fails it and x * slope stays NaN.
    return x if x > -x else x * slope


@cuda.jit(device=True)
def _leaky_relu_backward(g, x, slope):
    return g if x > -x else g * slope


@cuda.jit(device=True)
def _sigmoid_pair(x, one):
    """(sigmoid(x), 1 - sigmoid(x)), each from exp(-|x|): no overflow, and no cancellation
    in 1 - s; NaN gives (NaN, NaN). exp's argument is never positive (the simulator's
    math.exp cannot overflow either)."""
    if x >= one - one:
        e = math.exp(-x)
        d = one + e
        return one / d, e / d
    e = math.exp(x)
    d = one + e
    return e / d, one / d


@cuda.jit(device=True)
def _silu(x, one):
    s, c = _sigmoid_pair(x, one)
    return x * s


@cuda.jit(device=True)
def _as_reference(d, x, lo, tiny):
    """A backward op's derivative d at x with the zeros of the reference's float64
    evaluation, so that an infinite grad_out gives its -inf / NaN: exactly 0 for x <= lo,
    where the reference underflows to 0 (NaN, from x = -inf, stays NaN), and -tiny (the
    dtype's smallest subnormal) where only this dtype underflows (the far left tail, where
    the derivative is negative)."""
    zero = tiny - tiny
    if x <= lo:
        return d * zero
    if d == zero:
        return -tiny
    return d


@cuda.jit(device=True)
def _near_root(d, x, root):
    """d, or near the derivative's root its polynomial: root = (r_hi, r_lo, w, a0, ..., an)
    (``numba_cuda._root_poly``), used where |h| < w, h = x - (r_hi + r_lo) (x - r_hi is
    exact there). NaN x keeps d."""
    h = (x - root[0]) - root[1]
    if abs(h) < root[2]:
        p = root[len(root) - 1]
        for k in range(len(root) - 2, 2, -1):
            p = p * h + root[k]
        return p
    return d


@cuda.jit(device=True)
def _silu_backward(g, x, one, lo, tiny, root):
    # s (1 + x (1 - s)). For x < 0, with e = exp(x): 1 + x (1 - s) = ((1 + x) + e) / (1 + e),
    # 1 + x exact near the derivative's root (x ~ -1.28), so only exp's error is left to
    # cancel there; the root polynomial takes over closest to it.
    if x >= one - one:
        e = math.exp(-x)
        d = one + e
        ds = (one + x * (e / d)) / d
    else:
        e = math.exp(x)
        d = one + e
        ds = e / d * (((one + x) + e) / d)
    return g * _as_reference(_near_root(ds, x, root), x, lo, tiny)


@cuda.jit(device=True)
def _gelu_erf(x, half, sqrt_half):
    # (1 + erf(x / sqrt 2)) as erfc(-x / sqrt 2): exact-relative for x << 0, no cancellation.
    return x * half * math.erfc(-x * sqrt_half)


@cuda.jit(device=True)
def _gelu_erf_backward(g, x, half, sqrt_half, inv_sqrt_2pi, lo, tiny, root):
    # Phi(x) + x phi(x): two ~0.23 terms cancel at the root x ~ -0.75, polynomial there.
    d = half * math.erfc(-x * sqrt_half) + x * math.exp(-half * x * x) * inv_sqrt_2pi
    return g * _as_reference(_near_root(d, x, root), x, lo, tiny)


@cuda.jit(device=True)
def _gelu_tanh(x, one, kappa, two_c):
    # (1 + tanh(u)) / 2 = sigmoid(2u), u = sqrt(2/pi) (x + kappa x^3): no cancellation.
    s, c = _sigmoid_pair(two_c * (x + kappa * (x * x * x)), one)
    return x * s


@cuda.jit(device=True)
def _gelu_tanh_backward(g, x, one, kappa, two_c, three_kappa, lo, tiny, root):
    # torch's 0.5 (1 + t) + 0.5 x (1 - t^2) u' with t = tanh(u) = 2s - 1, 1 - t^2 = 4 s (1 - s):
    # s + x s (1 - s) 2 u'. The u' factor is skipped where x s (1 - s) == 0 (finite x, s == 0
    # or 1), so an overflowing x^2 there gives s, not 0 * inf; x = +-inf keeps torch's NaN.
    x2 = x * x
    s, c = _sigmoid_pair(two_c * (x + kappa * (x2 * x)), one)
    t = x * s * c
    if t != one - one:
        t = t * (two_c * (one + three_kappa * x2))
    return g * _as_reference(_near_root(s + t, x, root), x, lo, tiny)


@cuda.jit(device=True)
def _squared_error(a, b, unused):
    d = a - b
    return d * d


@cuda.jit(device=True)
def _scaled_diff(a, b, scale):
    return (a - b) * scale


@cuda.jit(device=True)
def _abs_error(a, b, unused):
    return abs(a - b)


@cuda.jit(device=True)
def _scaled_sign(a, b, scale):
    """scale * sign(a - b), 0 where the difference is 0 or NaN (torch's sign).

    Compared with -d, not a literal 0, which would promote float32 to float64.
    """
    d = a - b
    if d > -d:
        return scale
    if d < -d:
        return -scale
    return scale - scale


@cuda.jit(device=True)
def _huber(a, b, delta, half):
    """torch's Huber term in the input dtype (half: 0.5 of that dtype)."""
    z = abs(a - b)
    return half * z * z if z < delta else delta * (z - half * delta)


relu = _unary(_relu)
relu_backward = _binary(_relu_backward)
sigmoid = _unary(_sigmoid)
sigmoid_backward = _binary(_sigmoid_backward)
tanh = _unary(_tanh)
tanh_backward = _binary(_tanh_backward)
leaky_relu = _unary(_leaky_relu)
leaky_relu_backward = _binary(_leaky_relu_backward)
silu = _unary(_silu)
squared_error = _binary(_squared_error)
scaled_diff = _binary(_scaled_diff)
abs_error = _binary(_abs_error)
scaled_sign = _binary(_scaled_sign)


@cuda.jit
def gelu_erf(x, out, half, sqrt_half):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _gelu_erf(x[i], half, sqrt_half)


@cuda.jit
def gelu_erf_backward(g, x, out, half, sqrt_half, inv_sqrt_2pi, lo, tiny, root):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _gelu_erf_backward(g[i], x[i], half, sqrt_half, inv_sqrt_2pi, lo, tiny, root)


@cuda.jit
def gelu_tanh(x, out, one, kappa, two_c):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _gelu_tanh(x[i], one, kappa, two_c)


@cuda.jit
def gelu_tanh_backward(g, x, out, one, kappa, two_c, three_kappa, lo, tiny, root):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _gelu_tanh_backward(g[i], x[i], one, kappa, two_c, three_kappa, lo, tiny,
                                     root)


@cuda.jit
def silu_backward(g, x, out, one, lo, tiny, root):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _silu_backward(g[i], x[i], one, lo, tiny, root)


@cuda.jit
def huber_error(a, b, out, delta, half):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        out[i] = _huber(a[i], b[i], delta, half)


@cuda.jit
def huber_grad(a, b, out, scale, delta):
    """scale * (a - b) clipped to [-delta, delta] with torch's branches (NaN stays NaN)."""
    sd = scale * delta
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        d = a[i] - b[i]
        out[i] = -sd if d <= -delta else (sd if d >= delta else scale * d)


@cuda.jit
def ce_target_weight(target, w, ignore_index, out, zero):
    """out[i] = w[target[i]], or 0 for an ignored row."""
    for i in range(cuda.grid(1), target.size, cuda.gridsize(1)):
        t = target[i]
        out[i] = zero if t == ignore_index else w[t]


# Probability losses. Kernel arguments: input, target, the optional same-shape arrays
# (weight, pos_weight; input fills an absent one's slot, never read), their presence
# flags, scalars, then the output: ``out`` for the element-wise kernels, float64 block
# ``partials`` for the fused loss + partial-sum kernels (in "reductions" below).
@cuda.jit(device=True)
def _bce(x, t, one, lo):
    """torch's term (t - 1) * max(log1p(-x), lo) - t * max(log(x), lo), lo = -100."""
    return (t - one) * _nanmax(_log1p(-x), lo) - t * _nanmax(_log(x), lo)


@cuda.jit(device=True)
def _bce_logits(x, t, pw, has_pw, zero, one):
    """(1 - t) * x - (1 + (pw - 1) * t) * logsigmoid(x), the stable
    logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)) (NaN passes the min)."""
    ls = (zero if x > zero else x) - _log1p(_exp(-abs(x)))
    if has_pw:
        ls = ls * ((pw - one) * t + one)
    return (one - t) * x - ls


@cuda.jit(device=True)
def _kl(x, t, log_target, zero):
    """exp(t) * (t - x) with log_target, else xlogy(t, t) - t * x (0 * log 0 = 0)."""
    if log_target:
        return _exp(t) * (t - x)
    return (zero if t == zero else t * _log(t)) - t * x


@cuda.jit
def bce_error(x, t, w, has_w, one, lo, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = _bce(x[i], t[i], one, lo)
        out[i] = v * w[i] if has_w else v


@cuda.jit
def bce_grad(x, t, w, has_w, one, eps, scale, out):
    """(x - t) / max((1 - x) * x, eps) [* w] * scale, torch's backward formula."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        g = (v - t[i]) / _nanmax((one - v) * v, eps)
        if has_w:
            g = g * w[i]
        out[i] = g * scale


@cuda.jit
def bce_logits_error(x, t, w, pw, has_w, has_pw, zero, one, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = _bce_logits(x[i], t[i], pw[i], has_pw, zero, one)
        out[i] = v * w[i] if has_w else v


@cuda.jit
def bce_logits_grad(x, t, w, pw, has_w, has_pw, one, scale, out):
    """sigmoid(x) - t, or (pw*t + 1 - t) * sigmoid(x) - pw*t; [* w] * scale."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ti = t[i]
        sig = one / (one + _exp(-x[i]))  # the reference's form: exp overflow -> 0
        if has_pw:
            pt = pw[i] * ti
            g = (pt + one - ti) * sig - pt
        else:
            g = sig - ti
        if has_w:
            g = g * w[i]
        out[i] = g * scale


@cuda.jit
def kl_div_error(x, t, log_target, zero, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = _kl(x[i], t[i], log_target, zero)


@cuda.jit
def kl_div_grad(t, log_target, neg_scale, out):
    """-scale * t, or -scale * exp(t) with log_target: only the target is read."""
    for i in range(cuda.grid(1), t.size, cuda.gridsize(1)):
        v = t[i]
        out[i] = (_exp(v) if log_target else v) * neg_scale


# nll_loss: one thread per row (grid-stride over rows) reads its target's log-probability.
# ``w`` is the (C,) class weight when ``has_w`` (otherwise any 1-D array, never read).
@cuda.jit(device=True)
def _nll_row(x, target, w, has_w, ignore_index, row, zero, one):
    """(loss, target weight) of a row: (-w[t] * x[row, t], w[t]); (0, 0) when ignored."""
    t = target[row]
    if t == ignore_index:
        return zero, zero
    wt = w[t] if has_w else one
    return -wt * x[row, t], wt


@cuda.jit
def nll_rows(x, target, w, has_w, ignore_index, zero, one, out):
    for row in range(cuda.grid(1), target.size, cuda.gridsize(1)):
        out[row] = _nll_row(x, target, w, has_w, ignore_index, row, zero, one)[0]


@cuda.jit
def nll_grad(target, w, has_w, ignore_index, zero, one, coef, out):
    """out (N, C): (-w[t]) * coef at each kept row's target, 0 elsewhere.

    Grid-stride over all N * C elements, so the dense write is coalesced; the
    input itself is never read.
    """
    c = out.shape[1]
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        r = i // c
        j = i - r * c
        t = target[r]
        if j == t and t != ignore_index:
            wt = w[t] if has_w else one
            out[r, j] = -wt * coef
        else:
            out[r, j] = zero


@cuda.jit
def affine_cols(X, offset, scale, out, inverse, inf, partials):
    """out = (X - offset) / scale, or X * scale + offset (inverse), in float64 per column;
    partials[block] = the block's count of +-inf entries of X (NaN not counted), in the
    same grid-stride pass. ``inf`` of X's dtype."""
    sh = cuda.shared.array(MAX_TPB, int64)
    F = X.shape[1]
    n_inf = 0
    for i in range(cuda.grid(1), X.size, cuda.gridsize(1)):
        r = i // F
        c = i - r * F
        x = X[r, c]
        if abs(x) == inf:
            n_inf += 1
        v = float(x)
        out[r, c] = v * scale[c] + offset[c] if inverse else (v - offset[c]) / scale[c]
    total = _block_sum(sh, n_inf)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit
def sgd(param, grad, buf, lr, momentum, one_m_dampening, weight_decay, use_wd,
        use_momentum, first, nesterov, maximize):
    """Fused torch.optim.SGD update; ``buf`` is only touched when ``use_momentum``."""
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = -grad[i] if maximize else grad[i]
        p = param[i]
        if use_wd:
            g = g + weight_decay * p
        if use_momentum:
            b = g if first else buf[i] * momentum + one_m_dampening * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] = p - lr * g


@cuda.jit
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, decay, weight_decay,
         one_m_beta1, beta2, one_m_beta2, bias_correction2_sqrt, eps, step_size,
         use_wd, decoupled, amsgrad, maximize):
    """Fused torch.optim.Adam/AdamW update; ``max_exp_avg_sq`` only touched with amsgrad."""
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = -grad[i] if maximize else grad[i]
        p = param[i]
        if use_wd:
            if decoupled:
                p = p * decay
            else:
                g = g + weight_decay * p
        m = exp_avg[i]
        m = m + one_m_beta1 * (g - m)
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + one_m_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = _nanmax(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = math.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)


@cuda.jit
def rmsprop(param, grad, square_avg, buf, grad_avg, alpha, one_m_alpha, lr, eps,
            weight_decay, momentum, use_wd, centered, use_momentum, maximize):
    """Fused torch.optim.RMSprop update; ``buf`` only touched with momentum, ``grad_avg``
    only when centered."""
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = -grad[i] if maximize else grad[i]
        p = param[i]
        if use_wd:
            g = g + weight_decay * p
        s = square_avg[i] * alpha + one_m_alpha * g * g
        square_avg[i] = s
        if centered:
            a = grad_avg[i]
            a = a + one_m_alpha * (g - a)
            grad_avg[i] = a
            s = s - a * a
        avg = _sqrt(s) + eps
        if use_momentum:
            b = buf[i] * momentum + g / avg
            buf[i] = b
            param[i] = p - lr * b
        else:
            param[i] = p - lr * (g / avg)


@cuda.jit
def adagrad(param, grad, state_sum, clr, eps, weight_decay, use_wd, maximize):
    """Fused torch.optim.Adagrad (dense) update; clr is the decayed learning rate."""
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = -grad[i] if maximize else grad[i]
        p = param[i]
        if use_wd:
            g = g + weight_decay * p
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] = p - clr * (g / (_sqrt(s) + eps))


# ------------------------------------------------------------------ row-wise
@cuda.jit
def softmax_rows(x, out, log, neg_inf, zero, one):
    """Row-wise softmax (or log_softmax when ``log``): one online pass, one write pass."""
    sh_m = cuda.shared.array(MAX_TPB, x.dtype)
    sh_s = cuda.shared.array(MAX_TPB, x.dtype)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        m, s = _row_lse(x, row, sh_m, sh_s, neg_inf, zero, one)
        log_s = math.log(s)
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            if log:
                out[row, j] = (x[row, j] - m) - log_s
            else:
                out[row, j] = math.exp(x[row, j] - m) / s


@cuda.jit
def softmax_backward_rows(g, y, out, log, zero):
    """softmax: y * (g - sum(g * y)); log_softmax (``log``): g - exp(y) * sum(g)."""
    sh = cuda.shared.array(MAX_TPB, g.dtype)
    for row in range(cuda.blockIdx.x, g.shape[0], cuda.gridDim.x):
        acc = zero
        for j in range(cuda.threadIdx.x, g.shape[1], cuda.blockDim.x):
            acc += g[row, j] if log else g[row, j] * y[row, j]
        total = _block_sum(sh, acc)
        for j in range(cuda.threadIdx.x, g.shape[1], cuda.blockDim.x):
            if log:
                out[row, j] = g[row, j] - math.exp(y[row, j]) * total
            else:
                out[row, j] = y[row, j] * (g[row, j] - total)


@cuda.jit(device=True)
def _ce_row_stats(x, w, row, smoothing, sh_m, sh_s, neg_inf, zero, one):
    """(max, sum exp(x - max), sum w*x (only when ``smoothing``, else 0)) of ``x[row]`` in
    one online pass, returned to every thread of the block."""
    m, s, wx = neg_inf, zero, zero
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        v = x[row, j]
        m, s = _lse_push(m, s, v, one)
        if smoothing:
            wx += w[j] * v
    m, s = _lse_finish(x, row, m, s, sh_m, sh_s, zero)
    if smoothing:
        wx = _block_sum(sh_s, wx)
    return m, s, wx


@cuda.jit(device=True)
def _ce_row_loss(x, w, row, t, one_m_eps, eps_over_c, sum_w, smoothing, m, log_s, wx):
    """(1-eps) w[t] (-logp[t]) (+ eps/C sum_c w[c] (-logp[c])) from the row's statistics."""
    out = one_m_eps * (-((x[row, t] - m) - log_s) * w[t])
    if smoothing:
        out = out + eps_over_c * ((m + log_s) * sum_w - wx)
    return out


@cuda.jit(device=True)
def _ce_row_grad(x, w, row, t, one_m_eps, eps_over_c, sum_w, smoothing, denom, m, log_s,
                 out, one):
    """The row's gradient (divided by ``denom``) from its statistics, into out[row]."""
    a = one_m_eps * w[t]
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        p = math.exp((x[row, j] - m) - log_s)
        g = a * (p - one if j == t else p)
        if smoothing:
            g = g + eps_over_c * (sum_w * p - w[j])
        out[row, j] = g / denom


@cuda.jit
def cross_entropy_rows(x, target, w, ignore_index, one_m_eps, eps_over_c, sum_w, smoothing,
                       loss, neg_inf, zero, one):
    """Per-row cross-entropy, fused: one online pass gives max, sum exp and sum w*x."""
    sh_m = cuda.shared.array(MAX_TPB, x.dtype)
    sh_s = cuda.shared.array(MAX_TPB, x.dtype)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        t = target[row]
        if t == ignore_index:  # exactly 0, whatever the logits
            if cuda.threadIdx.x == 0:
                loss[row] = zero
            continue
        m, s, wx = _ce_row_stats(x, w, row, smoothing, sh_m, sh_s, neg_inf, zero, one)
        if cuda.threadIdx.x == 0:
            loss[row] = _ce_row_loss(x, w, row, t, one_m_eps, eps_over_c, sum_w, smoothing,
                                     m, math.log(s), wx)


@cuda.jit
def cross_entropy_grad_rows(x, target, w, ignore_index, one_m_eps, eps_over_c, sum_w,
                            smoothing, denom, out, neg_inf, zero, one):
    """d loss / d logits: one online pass for the row's log-sum-exp, one write pass.

    ``denom`` is the 'mean' divisor (1 otherwise); ignored rows get exactly 0,
    even when every row is ignored (denom 0), as in the reference and torch.
    """
    sh_m = cuda.shared.array(MAX_TPB, x.dtype)
    sh_s = cuda.shared.array(MAX_TPB, x.dtype)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        t = target[row]
        if t == ignore_index:
            for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
                out[row, j] = zero
            continue
        m, s = _row_lse(x, row, sh_m, sh_s, neg_inf, zero, one)
        _ce_row_grad(x, w, row, t, one_m_eps, eps_over_c, sum_w, smoothing, denom, m,
                     math.log(s), out, one)


@cuda.jit
def cross_entropy_loss_grad_rows(x, target, w, ignore_index, one_m_eps, eps_over_c, sum_w,
                                 smoothing, denom, loss, grad, neg_inf, zero, one):
    """``cross_entropy_rows`` into loss and ``cross_entropy_grad_rows`` into grad from one
    online pass per row."""
    sh_m = cuda.shared.array(MAX_TPB, x.dtype)
    sh_s = cuda.shared.array(MAX_TPB, x.dtype)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        t = target[row]
        if t == ignore_index:
            if cuda.threadIdx.x == 0:
                loss[row] = zero
            for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
                grad[row, j] = zero
            continue
        m, s, wx = _ce_row_stats(x, w, row, smoothing, sh_m, sh_s, neg_inf, zero, one)
        log_s = math.log(s)
        if cuda.threadIdx.x == 0:
            loss[row] = _ce_row_loss(x, w, row, t, one_m_eps, eps_over_c, sum_w, smoothing,
                                     m, log_s, wx)
        _ce_row_grad(x, w, row, t, one_m_eps, eps_over_c, sum_w, smoothing, denom, m, log_s,
                     grad, one)


# -------------------------------------------------------------- reductions
def _partials(term):
    """Kernel: partials[block] = float64 sum of ``term(a[i], b[i], c, h)`` over the block's
    grid-stride slice; each term is computed in the input dtype, as the reference."""
    @cuda.jit
    def kernel(a, b, c, h, partials):
        sh = cuda.shared.array(MAX_TPB, float64)
        acc = 0.0
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            acc += term(a[i], b[i], c, h)
        total = _block_sum(sh, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = total
    return kernel


@cuda.jit(device=True)
def _first(a, b, c, h):
    return a


@cuda.jit(device=True)
def _squared_error_term(a, b, c, h):
    return _squared_error(a, b, c)


@cuda.jit(device=True)
def _abs_error_term(a, b, c, h):
    return _abs_error(a, b, c)


sum_partials = _partials(_first)
squared_error_partials = _partials(_squared_error_term)
abs_error_partials = _partials(_abs_error_term)
huber_partials = _partials(_huber)


@cuda.jit(device=True)
def _store_partial(sh, acc, partials):
    """partials[blockIdx.x] = the block's sum of ``acc`` (shared buffer ``sh``)."""
    total = _block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit
def bce_partials(x, t, w, has_w, one, lo, partials):
    sh = cuda.shared.array(MAX_TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = _bce(x[i], t[i], one, lo)
        acc += v * w[i] if has_w else v
    _store_partial(sh, acc, partials)


@cuda.jit
def bce_logits_partials(x, t, w, pw, has_w, has_pw, zero, one, partials):
    sh = cuda.shared.array(MAX_TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = _bce_logits(x[i], t[i], pw[i], has_pw, zero, one)
        acc += v * w[i] if has_w else v
    _store_partial(sh, acc, partials)


@cuda.jit
def kl_div_partials(x, t, log_target, zero, partials):
    sh = cuda.shared.array(MAX_TPB, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        acc += _kl(x[i], t[i], log_target, zero)
    _store_partial(sh, acc, partials)


@cuda.jit
def nll_partials(x, target, w, has_w, ignore_index, zero, one, partials):
    """partials (2, blocks): each block's float64 sums of the row losses and target weights."""
    sh = cuda.shared.array(MAX_TPB, float64)
    loss, weight = 0.0, 0.0
    for row in range(cuda.grid(1), target.size, cuda.gridsize(1)):
        v, wt = _nll_row(x, target, w, has_w, ignore_index, row, zero, one)
        loss += v
        weight += wt
    _store_partial(sh, loss, partials[0])
    _store_partial(sh, weight, partials[1])


@cuda.jit
def nll_weight_partials(target, w, has_w, ignore_index, zero, one, partials):
    """Each block's float64 sum of the kept rows' target weights (nll_loss_grad's 'mean')."""
    sh = cuda.shared.array(MAX_TPB, float64)
    acc = 0.0
    for row in range(cuda.grid(1), target.size, cuda.gridsize(1)):
        t = target[row]
        if t != ignore_index:
            acc += w[t] if has_w else one
    _store_partial(sh, acc, partials)


@cuda.jit(device=True)
def _column_sum(sh, v):
    """Sum of ``v`` over the block's row lanes (threadIdx.y), per column lane
    (threadIdx.x); ``sh`` is (COL_Y, COL_X). The total is valid in row lane 0."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    sh[ty, tx] = v
    cuda.syncthreads()
    h = COL_Y // 2
    while h > 0:
        if ty < h:
            sh[ty, tx] += sh[ty + h, tx]
        cuda.syncthreads()
        h //= 2
    return sh[0, tx]


@cuda.jit
def col_sum_partial(X, out, zero):
    """out[blockIdx.y, c] = sum of column c over the rows of block-row blockIdx.y.

    Threads x walk consecutive columns (coalesced row-major reads), threads y
    interleave rows; launched again on its own (G, F) output to finish the sum.
    """
    sh = cuda.shared.array((COL_Y, COL_X), X.dtype)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    acc = zero
    if col < X.shape[1]:
        for r in range(cuda.blockIdx.y * COL_Y + ty, X.shape[0], COL_Y * cuda.gridDim.y):
            acc += X[r, col]
    total = _column_sum(sh, acc)
    if ty == 0 and col < X.shape[1]:
        out[cuda.blockIdx.y, col] = total


@cuda.jit(device=True)
def _chan(na, ma, m2a, nb, mb, m2b):
    """Merge two (count, mean, M2) summaries (Chan et al.)."""
    if nb == 0.0:
        return na, ma, m2a
    if na == 0.0:
        return nb, mb, m2b
    n = na + nb
    d = mb - ma
    return n, ma + d * (nb / n), m2a + m2b + d * d * (na * nb / n)


@cuda.jit
def col_stats_partial(X, part):
    """part[:, blockIdx.y, c] = NaN-ignoring (count, sum, mean, M2) of column c over a row slice.

    Welford per thread over interleaved rows (threads x on consecutive
    columns: coalesced row-major reads), then a Chan merge across threads y.
    The plain sum rides along so the final mean is sum / count, as in the
    reference (Welford's running mean turns an inf into NaN).
    """
    sh = cuda.shared.array((4, COL_Y, COL_X), float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    n, total, mean, m2 = 0.0, 0.0, 0.0, 0.0
    if col < X.shape[1]:
        for r in range(cuda.blockIdx.y * COL_Y + ty, X.shape[0], COL_Y * cuda.gridDim.y):
            v = float(X[r, col])
            if v == v:
                n += 1.0
                total += v
                d = v - mean
                mean += d / n
                m2 += d * (v - mean)
    sh[0, ty, tx], sh[1, ty, tx], sh[2, ty, tx], sh[3, ty, tx] = n, total, mean, m2
    cuda.syncthreads()
    h = COL_Y // 2
    while h > 0:
        if ty < h:
            n, mean, m2 = _chan(sh[0, ty, tx], sh[2, ty, tx], sh[3, ty, tx],
                                sh[0, ty + h, tx], sh[2, ty + h, tx], sh[3, ty + h, tx])
            sh[0, ty, tx], sh[2, ty, tx], sh[3, ty, tx] = n, mean, m2
            sh[1, ty, tx] += sh[1, ty + h, tx]
        cuda.syncthreads()
        h //= 2
    if ty == 0 and col < X.shape[1]:
        for k in range(4):
            part[k, cuda.blockIdx.y, col] = sh[k, 0, tx]


@cuda.jit
def col_stats_merge(part, out):
    """out[:, c] = (count, sum / count or 0, M2): Chan merge of the block-row summaries."""
    for c in range(cuda.grid(1), part.shape[2], cuda.gridsize(1)):
        n, total, mean, m2 = 0.0, 0.0, 0.0, 0.0
        for b in range(part.shape[1]):
            n, mean, m2 = _chan(n, mean, m2, part[0, b, c], part[2, b, c], part[3, b, c])
            total += part[1, b, c]
        out[0, c], out[1, c], out[2, c] = n, total / n if n > 0.0 else 0.0, m2


# ------------------------------------------------------ preprocessing: columns
@cuda.jit
def col_minmax_partial(X, part, inf):
    """part[0|1, blockIdx.y, c] = NaN-ignoring min | max of column c over a row slice.

    Compared in X's dtype (NaN fails every comparison, so it is skipped; an
    empty slice keeps the identities +inf, -inf); widened to float64 on store.
    """
    sh_lo = cuda.shared.array((COL_Y, COL_X), X.dtype)
    sh_hi = cuda.shared.array((COL_Y, COL_X), X.dtype)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    lo, hi = inf, -inf
    if col < X.shape[1]:
        for r in range(cuda.blockIdx.y * COL_Y + ty, X.shape[0], COL_Y * cuda.gridDim.y):
            v = X[r, col]
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    sh_lo[ty, tx] = lo
    sh_hi[ty, tx] = hi
    cuda.syncthreads()
    h = COL_Y // 2
    while h > 0:
        if ty < h:
            if sh_lo[ty + h, tx] < sh_lo[ty, tx]:
                sh_lo[ty, tx] = sh_lo[ty + h, tx]
            if sh_hi[ty + h, tx] > sh_hi[ty, tx]:
                sh_hi[ty, tx] = sh_hi[ty + h, tx]
        cuda.syncthreads()
        h //= 2
    if ty == 0 and col < X.shape[1]:
        part[0, cuda.blockIdx.y, col] = sh_lo[0, tx]
        part[1, cuda.blockIdx.y, col] = sh_hi[0, tx]


@cuda.jit
def col_minmax_merge(part, out):
    """out[:, c] = (min, max) of the block-row partials of column c."""
    for c in range(cuda.grid(1), part.shape[2], cuda.gridsize(1)):
        lo, hi = part[0, 0, c], part[1, 0, c]
        for b in range(1, part.shape[1]):  # partials are never NaN
            if part[0, b, c] < lo:
                lo = part[0, b, c]
            if part[1, b, c] > hi:
                hi = part[1, b, c]
        out[0, c], out[1, c] = lo, hi


@cuda.jit
def col_observed_partial(X, part):
    """part[blockIdx.y, c] = number of non-NaN values of column c over a row slice (int64)."""
    sh = cuda.shared.array((COL_Y, COL_X), int64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    m = 0
    if col < X.shape[1]:
        for r in range(cuda.blockIdx.y * COL_Y + ty, X.shape[0], COL_Y * cuda.gridDim.y):
            v = X[r, col]
            if v == v:
                m += 1
    total = _column_sum(sh, m)
    if ty == 0 and col < X.shape[1]:
        part[cuda.blockIdx.y, col] = total


@cuda.jit(device=True)
def _order_key(u, sign, mag, inf, ones):
    """Order-preserving unsigned key of a float's bits u: NaN -> all ones (above +inf)."""
    if (u & mag) > inf:
        return ones
    if u & sign:
        return u ^ ones
    return u | sign


@cuda.jit
def quantile_ranks(part, q, count, rank, prefix, zero):
    """count[c] = observed values of column c (merging ``part``, (blocks, F)); for each
    quantile j, rank[2j, c] and rank[2j + 1, c] = the 0-based order statistics
    NumPy's 'linear' method reads (both m - 1 at or past the last one); prefix = 0."""
    F = count.size
    for i in range(cuda.grid(1), q.size * F, cuda.gridsize(1)):
        j = i // F
        c = i - j * F
        m = part[0, c]
        for b in range(1, part.shape[0]):
            m += part[b, c]
        if j == 0:
            count[c] = m
        h = q[j] * float(m - 1)
        if m == 0:  # nothing to select (the result is NaN)
            lo, hi = 0, 0
        elif h >= m - 1:
            lo, hi = m - 1, m - 1
        else:  # also for a whole h, as NumPy (0 * (b - a) there: NaN when b is inf)
            lo = math.floor(h)  # an int64
            hi = lo + 1
        rank[2 * j, c] = lo
        rank[2 * j + 1, c] = hi
        prefix[2 * j, c] = zero
        prefix[2 * j + 1, c] = zero


@cuda.jit
def quantile_count(bits, prefix, mask, part, sign, mag, inf, ones):
    """One radix-select pass: part[blockIdx.y, t, c] = keys of column c in a row slice
    whose bits under ``mask`` (those found so far and this pass's bit) equal prefix[t, c]
    (whose bit of this pass is 0), for the targets t of block-z.

    ``bits`` is X viewed as unsigned integers of its width; threads x on
    consecutive columns (coalesced), threads y and blocks y on rows, one read
    of each value for all the block's targets.
    """
    sh = cuda.shared.array((QG, COL_Y, COL_X), int64)
    cnt = cuda.local.array(QG, int64)
    pre = cuda.local.array(QG, bits.dtype)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    t0 = cuda.blockIdx.z * QG
    T = prefix.shape[0]
    for g in range(QG):
        cnt[g] = 0
        pre[g] = prefix[t0 + g, col] if t0 + g < T and col < bits.shape[1] else ones
    if col < bits.shape[1]:
        for r in range(cuda.blockIdx.y * COL_Y + ty, bits.shape[0], COL_Y * cuda.gridDim.y):
            key = _order_key(bits[r, col], sign, mag, inf, ones) & mask
            for g in range(QG):
                if key == pre[g]:
                    cnt[g] += 1
    for g in range(QG):
        sh[g, ty, tx] = cnt[g]
    cuda.syncthreads()
    h = COL_Y // 2
    while h > 0:
        if ty < h:
            for g in range(QG):
                sh[g, ty, tx] += sh[g, ty + h, tx]
        cuda.syncthreads()
        h //= 2
    if ty == 0 and col < bits.shape[1]:
        for g in range(QG):
            if t0 + g < T:
                part[cuda.blockIdx.y, t0 + g, col] = sh[g, 0, tx]


@cuda.jit
def quantile_merge(part, rank, prefix, bit, last, vbits, sign, ones):
    """Close one radix-select pass: with c0 the count of target (t, c) below this bit,
    the bit is 1 (and the rank drops by c0) when rank >= c0. After the ``last``
    pass, vbits[t, c] = the selected value's bits (X's dtype viewed as unsigned)."""
    F = rank.shape[1]
    for i in range(cuda.grid(1), rank.size, cuda.gridsize(1)):
        t = i // F
        c = i - t * F
        below = part[0, t, c]
        for b in range(1, part.shape[0]):
            below += part[b, t, c]
        key = prefix[t, c]
        if rank[t, c] >= below:
            rank[t, c] -= below
            key = key | bit
            prefix[t, c] = key
        if last:
            vbits[t, c] = key ^ sign if key & sign else key ^ ones


@cuda.jit
def quantile_lerp(vals, q, count, out):
    """out[j, c] = NumPy's 'linear' quantile q[j] of column c from its two selected
    neighbours vals[2j, c], vals[2j + 1, c]; NaN when the column has no observed value.

    NumPy's own arithmetic: past the last index, gamma = h + 1 against both
    neighbours the last value; ``a + d * g``, or ``b - d * (1 - g)`` when g >= 0.5.
    """
    F = count.size
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        j = i // F
        c = i - j * F
        m = count[c]
        if m == 0:
            out[j, c] = math.nan
            continue
        a = float(vals[2 * j, c])
        b = float(vals[2 * j + 1, c])
        h = q[j] * float(m - 1)
        prev = -1.0 if h >= m - 1 else float(math.floor(h))
        g = h - prev
        d = b - a
        if g >= 0.5:
            out[j, c] = b - _mul_rn(d, 1.0 - g)
        else:
            out[j, c] = a + _mul_rn(d, g)


# --------------------------------------------------------- preprocessing: rows
@cuda.jit
def normalize_rows(X, out, kind, tiny, one):
    """out[row] = X[row] / its norm, kind 0: l1, 1: l2, 2: max |x|; one block per row.

    The norm accumulates in float64 and is rounded to X's dtype (through a
    one-element local array of that dtype) before dividing, as the reference;
    a norm below ``tiny`` (10 eps of the dtype) divides by one.
    """
    sh = cuda.shared.array(MAX_TPB, float64)
    rounded = cuda.local.array(1, X.dtype)
    for row in range(cuda.blockIdx.x, X.shape[0], cuda.gridDim.x):
        acc = 0.0
        for j in range(cuda.threadIdx.x, X.shape[1], cuda.blockDim.x):
            a = abs(float(X[row, j]))
            if kind == 0:
                acc += a
            elif kind == 1:
                acc += _mul_rn(a, a)  # rounded as the reference's a * a (no FMA)
            else:
                acc = _nanmax(acc, a)
        if kind == 2:
            total = _block_max(sh, acc)
        else:
            total = _block_sum(sh, acc)
            if kind == 1:
                total = _sqrt(total)
        rounded[0] = total
        nrm = rounded[0]
        if nrm < tiny:
            nrm = one
        for j in range(cuda.threadIdx.x, X.shape[1], cuda.blockDim.x):
            out[row, j] = X[row, j] / nrm


@cuda.jit
def polynomial_features(X, left, right, keep, out, one):
    """out[r, i] = monomial keep[i] of row r, in X's dtype.

    Monomial k is ``M[left[k]] * X[right[k]]`` (left -1: the constant 1, right
    -1: no factor). Each thread walks k's chain of lower monomials and
    multiplies its factors from the lowest degree up, the reference's order,
    so results are bitwise equal; one thread per output element (flat, so
    writes are coalesced), chains are a few steps (the degree) long.
    """
    K = keep.size
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        r = i // K
        col = i - r * K
        k = keep[col]
        depth = 0
        m = k
        while m >= 0:
            depth += 1
            m = left[m]
        acc = one
        for d in range(depth - 1, -1, -1):  # the monomial d steps below k, lowest first
            m = k
            for _ in range(d):
                m = left[m]
            f = right[m]
            if f >= 0:
                acc = acc * X[r, f]
        out[r, col] = acc


@cuda.jit
def fill_missing(X, fill, missing, is_nan, inf, out, partials):
    """out = X with missing entries (NaN when ``is_nan``, else == ``missing``) set to
    fill[column], rounded to X's dtype; partials[block] = the block's count of
    non-finite (NaN, +-inf) entries not missing. Flat X / out, grid-stride; ``missing`` and ``inf`` of X's dtype."""
    sh = cuda.shared.array(MAX_TPB, int64)
    F = fill.size
    c = 0
    for i in range(cuda.grid(1), X.size, cuda.gridsize(1)):
        v = X[i]
        if (v != v) if is_nan else (v == missing):
            out[i] = fill[i % F]
        else:
            out[i] = v
            if not abs(v) < inf:  # NaN or +-inf
                c += 1
    total = _block_sum(sh, c)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit
def fill_const(a, value):
    """a[i] = value (flat, grid-stride): one_hot's zeroed output."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit
def one_hot_scatter(indices, out, one):
    """out[r, indices[r, j]] = one for every in-range index (out zeroed first); grid-stride
    over the n * F indices. Repeats in a row write the same value: a benign race."""
    F = indices.shape[1]
    m = out.shape[1]
    for i in range(cuda.grid(1), indices.size, cuda.gridsize(1)):
        r = i // F
        c = indices[r, i - r * F]
        if c >= 0 and c < m:  # out-of-range (-1: ignored / dropped) sets nothing
            out[r, c] = one


# ------------------------------------------------------- preprocessing: labels
# unique_counts / encode_values on 1-D int64 or float64 labels. See the module notes.
@cuda.jit
def label_encode(values, cats, codes):
    """codes[i] = position of values[i] in the sorted distinct ``cats`` (NaN last), -1
    where absent: a binary search (lower bound) per value, grid-stride.

    Ordered as NumPy sorts: NaN above everything and equal to NaN; -0.0 == 0.0.
    The comparisons work for int64 too (``v != v`` is never true there).
    """
    m = cats.size
    for i in range(cuda.grid(1), values.size, cuda.gridsize(1)):
        v = values[i]
        lo = 0
        hi = m
        while lo < hi:
            mid = (lo + hi) // 2
            c = cats[mid]
            if c < v or (c == c and v != v):  # c sorts before v
                lo = mid + 1
            else:
                hi = mid
        code = -1
        if lo < m:
            c = cats[lo]
            if c == v or (c != c and v != v):
                code = lo
        codes[i] = code


@cuda.jit
def label_minmax_partial(lo_in, hi_in, part):
    """part[0, b] = min of lo_in, part[1, b] = max of hi_in over block b's grid-stride
    share (int64, size > 0); launched again with one block on its own rows to merge."""
    sh_lo = cuda.shared.array(MAX_TPB, int64)
    sh_hi = cuda.shared.array(MAX_TPB, int64)
    t = cuda.threadIdx.x
    lo = lo_in[0]
    hi = hi_in[0]
    for i in range(cuda.grid(1), lo_in.size, cuda.gridsize(1)):
        if lo_in[i] < lo:
            lo = lo_in[i]
        if hi_in[i] > hi:
            hi = hi_in[i]
    sh_lo[t] = lo
    sh_hi[t] = hi
    cuda.syncthreads()
    h = cuda.blockDim.x // 2
    while h > 0:
        if t < h:
            if sh_lo[t + h] < sh_lo[t]:
                sh_lo[t] = sh_lo[t + h]
            if sh_hi[t + h] > sh_hi[t]:
                sh_hi[t] = sh_hi[t + h]
        cuda.syncthreads()
        h //= 2
    if t == 0:
        part[0, cuda.blockIdx.x] = sh_lo[0]
        part[1, cuda.blockIdx.x] = sh_hi[0]


@cuda.jit
def zero_int64(a):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = 0


@cuda.jit
def label_histogram(values, lo, hist):
    """hist[v - lo] += 1 for every value (global-memory atomics; hist zeroed first)."""
    for i in range(cuda.grid(1), values.size, cuda.gridsize(1)):
        cuda.atomic.add(hist, values[i] - lo, 1)


@cuda.jit
def label_keys(bits, is_float, keys, sign, mag, inf, ones):
    """keys[i] = order-preserving uint64 key of value i (``bits``: the values viewed as
    uint64); keys[n:] = all ones (padding to the sort's power of two, never read back).

    int64: the sign bit flipped. float64: ``_order_key``, with -0.0 keyed as 0.0 and
    every NaN as all ones (one run, last), NumPy's equal_nan.
    """
    n = bits.size
    for i in range(cuda.grid(1), keys.size, cuda.gridsize(1)):
        if i >= n:
            keys[i] = ones
        elif is_float:
            u = bits[i]
            keys[i] = sign if not (u & mag) else _order_key(u, sign, mag, inf, ones)
        else:
            keys[i] = bits[i] ^ sign


@cuda.jit
def bitonic_step(keys, j, k):
    """One compare-exchange step (k, j) of an ascending bitonic sort of ``keys``
    (power-of-two size), in global memory: one thread per pair (i, i + j)."""
    half = keys.size // 2
    for t in range(cuda.grid(1), half, cuda.gridsize(1)):
        i = ((t // j) * 2) * j + t % j
        a = keys[i]
        b = keys[i + j]
        if (a > b) if (i & k) == 0 else (a < b):
            keys[i] = b
            keys[i + j] = a


@cuda.jit(device=True)
def _is_head(src, i, runs, zero):
    """Whether item i is kept by the compaction: the start of a run of equal sorted keys
    (``runs``), else a non-empty histogram bin."""
    if runs:
        return i == 0 or src[i] != src[i - 1]
    return src[i] != zero


@cuda.jit(device=True)
def _chunk(n):
    """[start, end) of this block's contiguous share of n items.

    (No ``min``: under compile_ptx without a GPU, numba 0.68 fails to type the
    builtin on two ints, "2 argument types given, but function takes 1 arguments".)
    """
    size = (n + cuda.gridDim.x - 1) // cuda.gridDim.x
    start = cuda.blockIdx.x * size
    end = start + size
    return start, (end if end < n else n)


@cuda.jit
def head_count(src, n, runs, zero, counts):
    """counts[b] = kept items (``_is_head``) among the first n of ``src`` in block b's chunk."""
    sh = cuda.shared.array(MAX_TPB, int64)
    start, end = _chunk(n)
    c = 0
    for i in range(start + cuda.threadIdx.x, end, cuda.blockDim.x):
        if _is_head(src, i, runs, zero):
            c += 1
    total = _block_sum(sh, c)
    if cuda.threadIdx.x == 0:
        counts[cuda.blockIdx.x] = total


@cuda.jit
def head_offsets(counts, offsets):
    """offsets[b] = exclusive prefix sum of the (few) block counts, offsets[-1] = total:
    one thread."""
    if cuda.grid(1) == 0:
        acc = 0
        for b in range(counts.size):
            offsets[b] = acc
            acc += counts[b]
        offsets[counts.size] = acc


@cuda.jit
def head_scatter(src, n, runs, zero, offsets, idx):
    """idx[offsets[b] + r] = index of the r-th kept item of block b's chunk, in order:
    the block walks its chunk a blockDim tile at a time, places each tile's kept items
    by a shared-memory inclusive scan (Hillis-Steele) of their flags."""
    sh = cuda.shared.array(MAX_TPB, int64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    start, end = _chunk(n)
    base = offsets[cuda.blockIdx.x]
    for s in range(start, end, nt):  # the same trip count for the whole block
        i = s + t
        f = 1 if i < end and _is_head(src, i, runs, zero) else 0
        sh[t] = f
        cuda.syncthreads()
        d = 1
        while d < nt:
            v = sh[t - d] if t >= d else 0
            cuda.syncthreads()
            sh[t] += v
            cuda.syncthreads()
            d *= 2
        incl = sh[t]
        total = sh[nt - 1]
        cuda.syncthreads()
        if f:
            idx[base + incl - 1] = i
        base += total


@cuda.jit
def hist_emit(hist, idx, lo, vals, counts):
    """Distinct value and count p from the p-th non-empty histogram bin idx[p]."""
    for p in range(cuda.grid(1), idx.size, cuda.gridsize(1)):
        i = idx[p]
        vals[p] = lo + i
        counts[p] = hist[i]


@cuda.jit
def run_emit(keys, idx, n, is_float, sign, ones, vbits, counts):
    """Distinct value p (its bits, into ``vbits``: the output viewed as uint64) from the
    key of the run starting at idx[p] of the sorted keys; its count, the run's length."""
    D = idx.size
    for p in range(cuda.grid(1), D, cuda.gridsize(1)):
        i = idx[p]
        counts[p] = (idx[p + 1] if p + 1 < D else n) - i
        key = keys[i]
        if is_float:
            vbits[p] = key ^ sign if key & sign else key ^ ones
        else:
            vbits[p] = key ^ sign


# ---------------------------------------------------------------------- GEMM
@cuda.jit
def gemm(a, b, bias, out, trans_a, trans_b, has_bias, zero):
    """out = op(a) @ op(b) (+ bias per column); op transposes when trans_a / trans_b.

    Shared-memory tiles of TILE x TILE (padded by one column against bank
    conflicts); each load is coalesced whether or not its operand is transposed.
    blockIdx.x walks row tiles of out, blockIdx.y column tiles.
    """
    sa = cuda.shared.array((TILE, _TILE_PAD), a.dtype)
    sb = cuda.shared.array((TILE, _TILE_PAD), a.dtype)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    M, N = out.shape
    K = a.shape[0] if trans_a else a.shape[1]
    row0 = cuda.blockIdx.x * TILE
    col0 = cuda.blockIdx.y * TILE
    acc = zero
    for k0 in range(0, K, TILE):
        if trans_a:  # a is (K, M): sa[i, k] = a[k0 + k, row0 + i]
            r, k = row0 + tx, k0 + ty
            sa[tx, ty] = a[k, r] if r < M and k < K else zero
        else:        # a is (M, K): sa[i, k] = a[row0 + i, k0 + k]
            r, k = row0 + ty, k0 + tx
            sa[ty, tx] = a[r, k] if r < M and k < K else zero
        if trans_b:  # b is (N, K): sb[k, j] = b[col0 + j, k0 + k]
            c, k = col0 + ty, k0 + tx
            sb[tx, ty] = b[c, k] if c < N and k < K else zero
        else:        # b is (K, N): sb[k, j] = b[k0 + k, col0 + j]
            c, k = col0 + tx, k0 + ty
            sb[ty, tx] = b[k, c] if c < N and k < K else zero
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    i, j = row0 + ty, col0 + tx
    if i < M and j < N:
        if has_bias:
            acc += bias[j]
        out[i, j] = acc


# ------------------------------------------------------------------ layers: conv
# conv2d is im2col + ONE GEMM over the whole batch: the columns are laid out
# (C kh kw, N Ho Wo) (samples side by side along the GEMM's N dimension), so
# out2 (O, N Ho Wo) = weight (O, C kh kw) @ cols, and a permute kernel moves it to
# (N, O, Ho Wo) with the bias added. The backward pass permutes grad_out to
# (O, N Ho Wo) the same way: grad_weight = g2 @ cols.T, grad_cols = weight.T @ g2
# (both the tiled ``gemm``), then ``col2im_gather`` sums, per pixel of grad_x, the
# column entries that map to it (a gather: no atomics, deterministic).
@cuda.jit
def im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, wo, zero):
    """cols[(c kh + i) kw + j, (n Ho + oh) Wo + ow] = xpad[n, c, oh sh + i dh, ow sw + j dw]
    (0 in the padding); grid-stride over cols. x (N, C, H, W), cols (C kh kw, N Ho Wo)."""
    n_img, C, H, W = x.shape
    NP = cols.shape[1]
    P = NP // n_img
    for e in range(cuda.grid(1), cols.size, cuda.gridsize(1)):
        k = e // NP
        q = e - k * NP
        n = q // P
        p = q - n * P
        oh = p // wo
        ow = p - oh * wo
        c = k // (kh * kw)
        r = k - c * (kh * kw)
        i = r // kw
        j = r - i * kw
        y = oh * sh - ph + i * dh
        xx = ow * sw - pw + j * dw
        if 0 <= y < H and 0 <= xx < W:
            cols[k, q] = x[n, c, y, xx]
        else:
            cols[k, q] = zero


@cuda.jit
def conv_permute(src, dst, bias, has_bias, to_batch):
    """Between the GEMM layout (O, N P) and the batch layout (N, O, P), flat arrays.

    to_batch: dst (N, O, P) [n, o, p] = src[o, n P + p] (+ bias[o]); else the reverse
    (no bias): dst (O, N P) [o, n P + p] = src (N, O, P) [n, o, p]. ``src``/``dst`` are 3-D
    views (N, O, P) / (O, N, P) of the two layouts.
    """
    if to_batch:
        N, O, P = dst.shape
    else:
        N, O, P = src.shape
    total = N * O * P
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        n = e // (O * P)
        r = e - n * (O * P)
        o = r // P
        p = r - o * P
        if to_batch:
            v = src[o, n, p]
            if has_bias:
                v += bias[o]
            dst[n, o, p] = v
        else:
            dst[o, n, p] = src[n, o, p]


@cuda.jit
def col2im_gather(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, zero):
    """out (N, C, H, W) [n, c, y, x] = sum of the cols (C kh kw, N Ho Wo) entries that
    im2col read from (y, x): over the kernel offsets (i, j) in order, those with
    ``y + ph - i dh = oh sh`` and ``x + pw - j dw = ow sw`` inside the output grid."""
    N, C, H, W = out.shape
    P = ho * wo
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n = e // (C * H * W)
        r = e - n * (C * H * W)
        c = r // (H * W)
        r -= c * (H * W)
        y = r // W
        xx = r - y * W
        acc = zero
        for i in range(kh):
            ty = y + ph - i * dh
            if ty < 0 or ty % sh != 0 or ty // sh >= ho:
                continue
            oh = ty // sh
            for j in range(kw):
                tx = xx + pw - j * dw
                if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                    continue
                acc += cols[(c * kh + i) * kw + j, n * P + oh * wo + tx // sw]
        out[n, c, y, xx] = acc


@cuda.jit
def row_sum(X, out, zero):
    """out[r] = sum of row r of X (rows, n), in X's dtype: one block per row
    (grid-stride over rows), a shared-memory tree across the block."""
    sh = cuda.shared.array(MAX_TPB, X.dtype)
    t = cuda.threadIdx.x
    rows, n = X.shape
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        acc = zero
        for j in range(t, n, cuda.blockDim.x):
            acc += X[r, j]
        total = _block_sum(sh, acc)
        if t == 0:
            out[r] = total


# --------------------------------------------------------------- layers: pooling
@cuda.jit
def max_pool2d_argmax(x, out, idx, want_idx, kh, kw, sh, sw, ph, pw, neg_inf):
    """One thread per output element (grid-stride): torch's CPU scan, as the reference's
    ``_max_pool_argmax``: the window clipped to the input, visited row by row; an element
    replaces the maximum when larger or NaN; the index starts at the window's first
    in-bounds element and the maximum at -inf. out (N, C, Ho, Wo); idx (same shape,
    int64, ``h W + w``) written when ``want_idx``."""
    N, C, H, W = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        nc = e // (ho * wo)
        r = e - nc * (ho * wo)
        oh = r // wo
        ow = r - oh * wo
        n = nc // C
        c = nc - n * C
        r0 = oh * sh - ph
        c0 = ow * sw - pw
        best = neg_inf
        bi = (r0 if r0 > 0 else 0) * W + (c0 if c0 > 0 else 0)
        for i in range(kh):
            y = r0 + i
            if y < 0 or y >= H:
                continue
            for j in range(kw):
                xx = c0 + j
                if xx < 0 or xx >= W:
                    continue
                v = x[n, c, y, xx]
                if v > best or v != v:
                    best = v
                    bi = y * W + xx
        out[n, c, oh, ow] = best
        if want_idx:
            idx[n, c, oh, ow] = bi


@cuda.jit
def max_pool2d_backward_gather(grad_out, idx, out, kh, kw, sh, sw, ph, pw):
    """out (N, C, H, W) [n, c, y, x] = the float64 sum (rounded once) of grad_out over the
    windows whose argmax (``idx`` from ``max_pool2d_argmax``) is (y, x), in the windows'
    row-major order (as the reference's np.add.at): a gather, no atomics."""
    N, C, H, W = out.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        nc = e // (H * W)
        flat = e - nc * (H * W)
        n = nc // C
        c = nc - n * C
        y = flat // W
        xx = flat - y * W
        acc = 0.0
        for ii in range(kh):
            ty = y + ph - (kh - 1 - ii)  # window row oh ascending
            if ty < 0 or ty % sh != 0 or ty // sh >= ho:
                continue
            oh = ty // sh
            for jj in range(kw):
                tx = xx + pw - (kw - 1 - jj)
                if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                    continue
                ow = tx // sw
                if idx[n, c, oh, ow] == flat:
                    acc += float64(grad_out[n, c, oh, ow])
        out[n, c, y, xx] = acc


@cuda.jit
def avg_pool2d(x, out, kh, kw, sh, sw, ph, pw):
    """One thread per output element: the float64 window sum (padding counts as 0) over
    kh kw, rounded once (count_include_pad, as the reference)."""
    N, C, H, W = x.shape
    ho, wo = out.shape[2], out.shape[3]
    area = float64(kh * kw)
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        nc = e // (ho * wo)
        r = e - nc * (ho * wo)
        oh = r // wo
        ow = r - oh * wo
        n = nc // C
        c = nc - n * C
        r0 = oh * sh - ph
        c0 = ow * sw - pw
        acc = 0.0
        for i in range(kh):
            y = r0 + i
            if y < 0 or y >= H:
                continue
            for j in range(kw):
                xx = c0 + j
                if 0 <= xx < W:
                    acc += float64(x[n, c, y, xx])
        out[n, c, oh, ow] = acc / area


@cuda.jit
def avg_pool2d_backward_gather(grad_out, out, kh, kw, sh, sw, ph, pw):
    """out (N, C, H, W) [n, c, y, x] = float64 sum of grad_out / (kh kw) over the windows
    that cover (y, x) (the reference's col2im, in its kernel-offset order), rounded once."""
    N, C, H, W = out.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    area = float64(kh * kw)
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        nc = e // (H * W)
        flat = e - nc * (H * W)
        n = nc // C
        c = nc - n * C
        y = flat // W
        xx = flat - y * W
        acc = 0.0
        for i in range(kh):
            ty = y + ph - i
            if ty < 0 or ty % sh != 0 or ty // sh >= ho:
                continue
            oh = ty // sh
            for j in range(kw):
                tx = xx + pw - j
                if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                    continue
                acc += float64(grad_out[n, c, oh, tx // sw]) / area
        out[n, c, y, xx] = acc


# ---------------------------------------------------------- layers: normalization
# Statistics in float64 for both dtypes, two passes (mean, then squared deviations),
# as the reference's ``_channel_stats`` / layer_norm: one block per channel (batch_norm)
# or row (layer_norm), grid-stride, shared-memory tree sums.
@cuda.jit(device=True)
def _bn_deviation_sums(sh, x, g, has_g, c, mean):
    """Over channel c of x (N, C, L), block-summed: sum((x - mean)**2) and, when
    ``has_g``, sum(g) and sum(g (x - mean))."""
    N, C, L = x.shape
    acc = 0.0
    sg = 0.0
    sgd = 0.0
    for e in range(cuda.threadIdx.x, N * L, cuda.blockDim.x):
        n = e // L
        d = float64(x[n, c, e - n * L]) - mean
        acc += d * d
        if has_g:
            gv = float64(g[n, c, e - n * L])
            sg += gv
            sgd += gv * d
    acc = _block_sum(sh, acc)
    if has_g:
        sg = _block_sum(sh, sg)
        sgd = _block_sum(sh, sgd)
    return acc, sg, sgd


@cuda.jit(device=True)
def _broadcast(sh, v):
    """Thread 0's ``v``, returned to every thread."""
    if cuda.threadIdx.x == 0:
        sh[0] = v
    cuda.syncthreads()
    v = sh[0]
    cuda.syncthreads()
    return v


@cuda.jit
def bn_stats(x, g, has_g, stats):
    """stats (4, C) float64 per channel of x (N, C, L): mean, biased variance (two passes)
    and, when ``has_g`` (g like x), sum(g) and sum(g (x - mean)).

    Where the g sums are not finite while x's statistics are, an infinite g times x - mean
    makes the result, so the tree-summed mean is replaced by the reference's to the last
    bit (NumPy's order: C == 1 one pairwise sum, else the segments' pairwise sums in
    order), by one thread, and the second pass redone: inf * 0 = NaN, inf * tiny = +-inf
    exactly where the reference has them."""
    sh = cuda.shared.array(MAX_TPB, float64)
    t = cuda.threadIdx.x
    N, C, L = x.shape
    m = N * L
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        acc = 0.0
        for e in range(t, m, cuda.blockDim.x):
            n = e // L
            acc += float64(x[n, c, e - n * L])
        mean = _block_sum(sh, acc) / float64(m)
        ssd, sg, sgd = _bn_deviation_sums(sh, x, g, has_g, c, mean)
        if (has_g and not (math.isfinite(sg) and math.isfinite(sgd))
                and math.isfinite(mean) and math.isfinite(ssd)):  # block-uniform
            total = 0.0
            if t == 0:
                if C == 1:
                    total = _channel_pairwise_sum(x, 0, L, 0, m)
                else:
                    for n in range(N):
                        total += _channel_pairwise_sum(x, c, L, n * L, L)
            mean = _broadcast(sh, total) / float64(m)
            ssd, sg, sgd = _bn_deviation_sums(sh, x, g, has_g, c, mean)
        if t == 0:
            stats[0, c] = mean
            stats[1, c] = ssd / float64(m)
            stats[2, c] = sg
            stats[3, c] = sgd


@cuda.jit
def bn_forward_coef(stats, weight, bias, rmean, rvar, has_w, has_b, training, update,
                    one_m_mom, mom, fm, eps, coef):
    """One thread per channel: coef (2, C) float64 = (scale, shift) of y = x scale + shift.

    Training: the batch statistics, and when ``update`` the running ones in place as the
    reference: ``(1 - momentum) r`` in r's dtype (``one_m_mom``), plus ``momentum * stat``
    in float64 (unbiased variance ``var m / (m - 1)``), rounded once. Evaluation: the
    running statistics."""
    for c in range(cuda.grid(1), coef.shape[1], cuda.gridsize(1)):
        if training:
            mean = stats[0, c]
            var = stats[1, c]
            if update:
                unbiased = var * fm / (fm - 1.0)
                rmean[c] = float64(one_m_mom * rmean[c]) + mom * mean
                rvar[c] = float64(one_m_mom * rvar[c]) + mom * unbiased
        else:
            mean = float64(rmean[c])
            var = float64(rvar[c])
        scale = 1.0 / _sqrt(var + eps)
        shift = -mean * scale
        if has_w:
            w = float64(weight[c])
            scale = scale * w
            shift = shift * w
        if has_b:
            shift = shift + float64(bias[c])
        coef[0, c] = scale
        coef[1, c] = shift


@cuda.jit
def bn_apply(x, coef, out):
    """out = x coef[0, c] + coef[1, c] in float64, rounded once; x, out (N, C, L) flat."""
    N, C, L = x.shape
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        n = e // (C * L)
        r = e - n * (C * L)
        c = r // L
        l = r - c * L
        out[n, c, l] = _mul_rn(float64(x[n, c, l]), coef[0, c]) + coef[1, c]


@cuda.jit
def bn_backward_coef(stats, weight, has_w, fm, eps, coef, grad_weight, grad_bias):
    """One thread per channel: coef (5, C) float64 = (mean, invstd, k, sum_g / m,
    sum_gx / m) with xhat = (x - mean) invstd, sum_gx = sum(g xhat), k = invstd (* weight);
    grad_weight = sum_gx, grad_bias = sum_g in the dtype when ``has_w``."""
    for c in range(cuda.grid(1), coef.shape[1], cuda.gridsize(1)):
        mean = stats[0, c]
        invstd = 1.0 / _sqrt(stats[1, c] + eps)
        sum_g = stats[2, c]
        sum_gx = stats[3, c] * invstd if fm > 0.0 else 0.0  # no values: 0, not 0 * NaN
        k = invstd
        if has_w:
            k = invstd * float64(weight[c])
            grad_weight[c] = sum_gx
            grad_bias[c] = sum_g
        coef[0, c] = mean
        coef[1, c] = invstd
        coef[2, c] = k
        coef[3, c] = sum_g / fm
        coef[4, c] = sum_gx / fm


@cuda.jit
def bn_backward_apply(g, x, coef, out):
    """grad_x = k (g - sum_g / m - xhat sum_gx / m) per element, float64, rounded once."""
    N, C, L = x.shape
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        n = e // (C * L)
        r = e - n * (C * L)
        c = r // L
        l = r - c * L
        xhat = (float64(x[n, c, l]) - coef[0, c]) * coef[1, c]
        out[n, c, l] = coef[2, c] * (float64(g[n, c, l]) - coef[3, c] - xhat * coef[4, c])


@cuda.jit
def layer_norm_rows(x, weight, bias, has_w, has_b, eps, out):
    """One block per row of x (rows, n): float64 mean and biased variance (two passes),
    y = (x - mean) / sqrt(var + eps) (* weight) (+ bias), rounded once."""
    sh = cuda.shared.array(MAX_TPB, float64)
    t = cuda.threadIdx.x
    rows, n = x.shape
    fn = float64(n)
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        acc = 0.0
        for j in range(t, n, cuda.blockDim.x):
            acc += float64(x[r, j])
        mean = _block_sum(sh, acc) / fn
        acc = 0.0
        for j in range(t, n, cuda.blockDim.x):
            d = float64(x[r, j]) - mean
            acc += d * d
        std = _sqrt(_block_sum(sh, acc) / fn + eps)
        for j in range(t, n, cuda.blockDim.x):
            y = (float64(x[r, j]) - mean) / std
            if has_w:
                y = y * float64(weight[j])
            if has_b:
                y = y + float64(bias[j])
            out[r, j] = y


@cuda.jit(device=True)
def _ln_deviation_sums(sh, g, x, weight, has_w, r, mean):
    """Over row r, block-summed: sum((x - mean)**2), sum(gw), sum(gw (x - mean)) with
    gw = g (* weight)."""
    acc = 0.0
    sg = 0.0
    sgd = 0.0
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        d = float64(x[r, j]) - mean
        acc += d * d
        gw = float64(g[r, j])
        if has_w:
            gw = gw * float64(weight[j])
        sg += gw
        sgd += gw * d
    return _block_sum(sh, acc), _block_sum(sh, sg), _block_sum(sh, sgd)


@cuda.jit
def layer_norm_backward_rows(g, x, weight, has_w, eps, out, rowstats):
    """One block per row: float64 mean, invstd = 1 / sqrt(var + eps), gw = g (* weight),
    grad_x = invstd (gw - mean(gw) - xhat mean(gw xhat)), rounded once; rowstats (2, rows)
    gets (mean, invstd) for the column sums of grad_weight. A row whose gw sums are not
    finite while x's statistics are gets the reference's mean to the last bit (NumPy's
    pairwise sum, one thread), as ``bn_stats``."""
    sh = cuda.shared.array(MAX_TPB, float64)
    t = cuda.threadIdx.x
    rows, n = x.shape
    fn = float64(n)
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        acc = 0.0
        for j in range(t, n, cuda.blockDim.x):
            acc += float64(x[r, j])
        mean = _block_sum(sh, acc) / fn
        ssd, sg, sgd = _ln_deviation_sums(sh, g, x, weight, has_w, r, mean)
        if (not (math.isfinite(sg) and math.isfinite(sgd))
                and math.isfinite(mean) and math.isfinite(ssd)):  # block-uniform
            total = 0.0
            if t == 0:
                total = _row_pairwise_sum(x, r, n, 0, n)
            mean = _broadcast(sh, total) / fn
            ssd, sg, sgd = _ln_deviation_sums(sh, g, x, weight, has_w, r, mean)
        invstd = 1.0 / _sqrt(ssd / fn + eps)
        mg = sg / fn
        mgx = sgd * invstd / fn
        for j in range(t, n, cuda.blockDim.x):
            xhat = (float64(x[r, j]) - mean) * invstd
            gw = float64(g[r, j])
            if has_w:
                gw = gw * float64(weight[j])
            out[r, j] = invstd * (gw - mg - xhat * mgx)
        if t == 0:
            rowstats[0, r] = mean
            rowstats[1, r] = invstd


@cuda.jit
def layer_norm_col_partial(g, x, rowstats, part):
    """part (2, blocks-y, n) float64: per column, the sums of g xhat and g over a slice
    of rows (the column-reduction pattern: threads x on columns, y on rows)."""
    sh = cuda.shared.array((2, COL_Y, COL_X), float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    rows, n = x.shape
    sgx = 0.0
    sg = 0.0
    if col < n:
        for r in range(cuda.blockIdx.y * COL_Y + ty, rows, COL_Y * cuda.gridDim.y):
            gv = float64(g[r, col])
            sgx += gv * ((float64(x[r, col]) - rowstats[0, r]) * rowstats[1, r])
            sg += gv
    sh[0, ty, tx] = sgx
    sh[1, ty, tx] = sg
    cuda.syncthreads()
    h = COL_Y // 2
    while h > 0:
        if ty < h:
            sh[0, ty, tx] += sh[0, ty + h, tx]
            sh[1, ty, tx] += sh[1, ty + h, tx]
        cuda.syncthreads()
        h //= 2
    if ty == 0 and col < n:
        part[0, cuda.blockIdx.y, col] = sh[0, 0, tx]
        part[1, cuda.blockIdx.y, col] = sh[1, 0, tx]


@cuda.jit
def layer_norm_col_merge(part, grad_weight, grad_bias):
    """grad_weight, grad_bias (n,) = the float64 sums of the partials, rounded once."""
    for c in range(cuda.grid(1), part.shape[2], cuda.gridsize(1)):
        sgx = 0.0
        sg = 0.0
        for b in range(part.shape[1]):
            sgx += part[0, b, c]
            sg += part[1, b, c]
        grad_weight[c] = sgx
        grad_bias[c] = sg


# ------------------------------------------------------- layers: dropout, embedding
if _SIM:
    def _mul_u64(a, b):
        """a * b modulo 2**64 (the simulator: Python ints, NumPy scalars would warn)."""
        return np.uint64((int(a) * int(b)) & 0xFFFFFFFFFFFFFFFF)
else:
    @cuda.jit(device=True)
    def _mul_u64(a, b):
        return a * b


@cuda.jit(device=True)
def _splitmix_keep(seed, i, threshold, golden, mix1, mix2):
    """The reference's ``dropout_keep`` of element i: all uint64, modulo 2**64."""
    z = seed + _mul_u64(uint64(i + 1), golden)
    z = _mul_u64(z ^ (z >> uint64(30)), mix1)
    z = _mul_u64(z ^ (z >> uint64(27)), mix2)
    z = z ^ (z >> uint64(31))
    return (z >> uint64(11)) >= threshold


@cuda.jit
def dropout(x, seed, threshold, golden, mix1, mix2, scale, zero, out, mask):
    """mask[i] = splitmix64 keep bit of (seed, i); out[i] = x[i] (scale or 0); flat."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        keep = _splitmix_keep(seed, i, threshold, golden, mix1, mix2)
        mask[i] = keep
        out[i] = x[i] * (scale if keep else zero)


@cuda.jit
def dropout_backward(g, mask, scale, zero, out):
    """out[i] = g[i] (scale where mask[i], else 0); flat."""
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        out[i] = g[i] * (scale if mask[i] else zero)


@cuda.jit
def embedding(indices, weight, out):
    """out (n, dim) [i, j] = weight[indices[i], j]; grid-stride over out."""
    dim = weight.shape[1]
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        i = e // dim
        j = e - i * dim
        out[i, j] = weight[indices[i], j]


@cuda.jit
def embedding_backward_scatter(grad_out, indices, acc):
    """acc (num, dim) float64 (zeroed) [indices[i], j] += grad_out[i, j]: float64
    atomics, one thread per grad_out element (the order of the adds varies; float64
    keeps the result within rounding of the reference's float64 np.add.at)."""
    dim = grad_out.shape[1]
    for e in range(cuda.grid(1), grad_out.size, cuda.gridsize(1)):
        i = e // dim
        j = e - i * dim
        cuda.atomic.add(acc, (indices[i], j), float64(grad_out[i, j]))


@cuda.jit
def cast_from_float64(src, out):
    """out = src rounded to out's dtype; flat."""
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        out[i] = src[i]
