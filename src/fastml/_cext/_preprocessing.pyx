"""Preprocessing kernels: NaN-ignoring column statistics, the standard scaling, column
min/max and quantiles, row normalization, polynomial features, the encoders' label
kernels, missing-value imputation and dense one-hot rows.

The statistics and scalings walk X row by row (its memory order) and do their math in
double; column_quantiles gathers one column at a time into a per-thread buffer and
selects; polynomial_features multiplies in X's dtype, as the reference.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.float cimport DBL_EPSILON, FLT_EPSILON
from libc.math cimport INFINITY, NAN, fabs, floor, sqrt
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy, memset

from ._scalar cimport PAR_MIN_WORK, fabs_, nanmax

# Rows per block in column_stats: a block this size stays in cache, so its
# second sweep (squared deviations) does not read X from memory again.
cdef enum:
    BLOCK_BYTES = 65536

# column_quantiles: columns per block (one cache line of a row), and the rows from
# which it brackets the order statistics by a sample instead of selecting among all.
cdef enum:
    QBLOCK_BYTES = 64
    SAMPLE_MIN_N = 32768

# standardize / unstandardize: rows given the exact (NaN-blind) inf test at once after
# a row whose plain test a NaN tripped.
cdef enum:
    EXACT_ROWS = 32


cdef inline void _merge(double* count, double* mean, double* m2, const double* b_count,
                        const double* b_mean, const double* b_m2, Py_ssize_t F) noexcept nogil:
    """Fold the statistics b_* of a disjoint set of rows into (count, mean, m2): Chan et al.

    The mean is the count-weighted average (not mean + delta * nb / n), so a
    column whose mean is infinite stays infinite as in a plain sum.
    """
    cdef Py_ssize_t j
    cdef double na, nb, n, delta
    for j in range(F):
        nb = b_count[j]
        if nb == 0:
            continue
        na = count[j]
        if na == 0:
            count[j], mean[j], m2[j] = nb, b_mean[j], b_m2[j]
            continue
        n = na + nb
        delta = b_mean[j] - mean[j]
        m2[j] += b_m2[j] + delta * delta * (na * nb / n)
        mean[j] = (na * mean[j] + nb * b_mean[j]) / n
        count[j] = n


cdef void _rows_stats(const floating* X, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t F,
                      Py_ssize_t block, double* st) noexcept nogil:
    """Statistics of rows [lo, hi) of X into st = (count, mean, m2, 3 block scratch) x F."""
    cdef double* count = st
    cdef double* mean = st + F
    cdef double* m2 = st + 2 * F
    cdef double* b_count = st + 3 * F
    cdef double* b_mean = st + 4 * F
    cdef double* b_m2 = st + 5 * F
    cdef const floating* row
    cdef Py_ssize_t b0, b1, i, j
    cdef double x, d
    cdef bint ok
    b0 = lo
    while b0 < hi:
        b1 = min(b0 + block, hi)
        memset(b_count, 0, 3 * F * sizeof(double))
        for i in range(b0, b1):
            row = X + i * F
            for j in range(F):
                x = row[j]
                ok = x == x
                b_count[j] += ok
                b_mean[j] += x if ok else 0.0
        for j in range(F):
            if b_count[j] > 0:
                b_mean[j] /= b_count[j]
        for i in range(b0, b1):
            row = X + i * F
            for j in range(F):
                x = row[j]
                d = x - b_mean[j] if x == x else 0.0
                b_m2[j] += d * d
        _merge(count, mean, m2, b_count, b_mean, b_m2, F)
        b0 = b1


def column_stats(const floating[:, ::1] X, int num_threads):
    """(count, mean, M2) per column of X (n, F), NaN ignored, each float64 (F,).

    Threads take contiguous row ranges; their statistics merge in order.
    """
    cdef Py_ssize_t n = X.shape[0], F = X.shape[1], c, nchunks = 1
    cdef Py_ssize_t block = max(1, BLOCK_BYTES // max(1, F * <Py_ssize_t>sizeof(floating)))
    if n * F >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, n))
    state = np.zeros((nchunks, 6, F))
    cdef double[:, :, ::1] st = state
    if n and F:
        for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                        use_threads_if=nchunks > 1):
            _rows_stats(&X[0, 0], c * n // nchunks, (c + 1) * n // nchunks, F, block,
                        &st[c, 0, 0])
        with nogil:
            for c in range(1, nchunks):
                _merge(&st[0, 0, 0], &st[0, 1, 0], &st[0, 2, 0],
                       &st[c, 0, 0], &st[c, 1, 0], &st[c, 2, 0], F)
    return state[0, 0].copy(), state[0, 1].copy(), state[0, 2].copy()


cdef inline bint _scale_row(const floating* x, const double* a, const double* b,
                            bint inverse, bint exact, Py_ssize_t F,
                            floating* o) noexcept nogil:
    """o = (x - a) / b (inverse: x * b + a) in double, rounded to x's dtype; returns
    whether x may hold a +-inf: with exact, only if it does, else also if it holds a NaN.

    Called with constant inverse and exact, so the loop is the arithmetic, (exact) a
    select, and a bitwise OR, and vectorizes as _fill_row's (counting double compares
    into an integer does not, at SSE2): z - z is +0.0 (no bit set) when z is finite, NaN
    otherwise, so the OR is nonzero only for a row with a non-finite z. The exact loop
    takes z = 0 for a NaN, two more instructions a vector.
    """
    cdef Py_ssize_t j
    cdef floating v, z
    cdef uint32_t bad32 = 0, b32
    cdef uint64_t bad64 = 0, b64
    for j in range(F):
        v = x[j]
        if inverse:
            o[j] = <floating>(v * b[j] + a[j])
        else:
            o[j] = <floating>((v - a[j]) / b[j])
        if exact:
            z = v if v == v else 0
        else:
            z = v
        z = z - z
        if floating is float:
            memcpy(&b32, &z, sizeof(z))
            bad32 |= b32
        else:
            memcpy(&b64, &z, sizeof(z))
            bad64 |= b64
    return bad32 != 0 or bad64 != 0


cdef inline bint _any_inf(const floating* x, Py_ssize_t F) noexcept nogil:
    """Whether x[:F] holds a +-inf: _scale_row's exact test alone (vectorized)."""
    cdef Py_ssize_t j
    cdef floating v, z
    cdef uint32_t bad32 = 0, b32
    cdef uint64_t bad64 = 0, b64
    for j in range(F):
        v = x[j]
        z = v if v == v else 0
        z = z - z
        if floating is float:
            memcpy(&b32, &z, sizeof(z))
            bad32 |= b32
        else:
            memcpy(&b64, &z, sizeof(z))
            bad64 |= b64
    return bad32 != 0 or bad64 != 0


cdef inline Py_ssize_t _count_inf(const floating* x, Py_ssize_t F) noexcept nogil:
    """How many of x[:F] are +-inf (one at a time: for the rare row that has one)."""
    cdef Py_ssize_t j, cnt = 0
    for j in range(F):
        cnt += fabs_(x[j]) == INFINITY
    return cnt


cdef Py_ssize_t _scale_rows(const floating* X, const double* a, const double* b,
                            bint inverse, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t F,
                            floating* out) noexcept nogil:
    """_scale_row over rows [lo, hi) of X into out; returns the count of +-inf in them.

    A row goes through the plain test (x - x), which a NaN also trips: a tripped row,
    cache-hot now, is tested again for an inf alone, and counted only if it has one
    (rare: the caller raises). NaN is an allowed (missing) value and may be in most
    rows, so after a row that tripped on NaN alone the next EXACT_ROWS rows take the
    exact test at once; with no NaN, every row costs the plain test only.
    """
    cdef Py_ssize_t i, n_inf = 0, exact_rows = 0
    cdef const floating* x
    cdef floating* o
    cdef bint bad
    for i in range(lo, hi):
        x = X + i * F
        o = out + i * F
        if exact_rows > 0:
            exact_rows -= 1
            if inverse:
                bad = _scale_row(x, a, b, True, True, F, o)
            else:
                bad = _scale_row(x, a, b, False, True, F, o)
            if bad:
                n_inf += _count_inf(x, F)
        else:
            if inverse:
                bad = _scale_row(x, a, b, True, False, F, o)
            else:
                bad = _scale_row(x, a, b, False, False, F, o)
            if bad:
                if _any_inf(x, F):
                    n_inf += _count_inf(x, F)
                else:
                    exact_rows = EXACT_ROWS
    return n_inf


cdef Py_ssize_t _scale(const floating[:, ::1] X, const double[::1] a, const double[::1] b,
                       bint inverse, floating[:, ::1] out, int num_threads) except -1:
    """X through _scale_rows into out; threads take contiguous row ranges and their
    inf counts are a reduction."""
    cdef Py_ssize_t c, n = X.shape[0], F = X.shape[1], n_inf = 0, nchunks = 1
    if a.shape[0] != F or b.shape[0] != F:
        raise ValueError(f"offset and scale have {a.shape[0]} and {b.shape[0]} values "
                         f"for {F} columns")
    if out.shape[0] != n or out.shape[1] != F:
        raise ValueError(f"out has shape {(out.shape[0], out.shape[1])}, X {(n, F)}")
    if n == 0 or F == 0:
        return 0
    if n * F >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, n))
    for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=nchunks > 1):
        n_inf += _scale_rows(&X[0, 0], &a[0], &b[0], inverse, c * n // nchunks,
                             (c + 1) * n // nchunks, F, &out[0, 0])
    return n_inf


def standardize(const floating[:, ::1] X, const double[::1] offset, const double[::1] scale,
                floating[:, ::1] out, int num_threads):
    """out = (X - offset) / scale, in double, rounded to X's dtype; returns the count of
    +-inf entries of X, made in the same pass."""
    return _scale(X, offset, scale, False, out, num_threads)


def unstandardize(const floating[:, ::1] X, const double[::1] offset, const double[::1] scale,
                  floating[:, ::1] out, int num_threads):
    """out = X * scale + offset, in double, rounded to X's dtype; returns the count of
    +-inf entries of X, made in the same pass."""
    return _scale(X, offset, scale, True, out, num_threads)


# ------------------------------------------------------------------ column_minmax
cdef void _rows_minmax(const floating* X, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t F,
                       floating* mn, floating* mx) noexcept nogil:
    """Fold rows [lo, hi) of X into the running (mn, mx) per column; NaN compares false,
    so it never enters (the selects vectorize to min/max blends)."""
    cdef const floating* row
    cdef Py_ssize_t i, j
    cdef floating x, a, b
    for i in range(lo, hi):
        row = X + i * F
        for j in range(F):
            x = row[j]
            a = mn[j]
            b = mx[j]
            mn[j] = x if x < a else a
            mx[j] = x if x > b else b


def column_minmax(const floating[:, ::1] X, int num_threads):
    """NaN-ignoring (min, max) per column of X (n, F), each float64 (F,); (+inf, -inf)
    for a column with no observed value. Threads take contiguous row ranges."""
    cdef Py_ssize_t n = X.shape[0], F = X.shape[1], c, j, nchunks = 1
    if n * F >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, n))
    dtype = np.float32 if floating is float else np.float64
    state = np.empty((nchunks, 2, F), dtype)
    state[:, 0] = np.inf
    state[:, 1] = -np.inf
    cdef floating[:, :, ::1] st = state
    cdef floating a, b
    if n and F:
        for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                        use_threads_if=nchunks > 1):
            _rows_minmax(&X[0, 0], c * n // nchunks, (c + 1) * n // nchunks, F,
                         &st[c, 0, 0], &st[c, 1, 0])
        with nogil:
            for c in range(1, nchunks):
                for j in range(F):
                    a = st[c, 0, j]
                    b = st[c, 1, j]
                    if a < st[0, 0, j]:
                        st[0, 0, j] = a
                    if b > st[0, 1, j]:
                        st[0, 1, j] = b
    return state[0, 0].astype(np.float64), state[0, 1].astype(np.float64)


# --------------------------------------------------------------- column_quantiles
cdef int _cmp_double(const void* a, const void* b) noexcept nogil:
    cdef double x = (<const double*>a)[0], y = (<const double*>b)[0]
    return (x > y) - (x < y)


cdef inline void _swap(double* a, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef double t = a[i]
    a[i] = a[j]
    a[j] = t


cdef void _select(double* a, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t k) noexcept nogil:
    """Reorder a[lo..hi] (inclusive, no NaN) so that a[k] holds its value of rank k there,
    with nothing larger before it and nothing smaller after it.

    Hoare/Wirth selection with a median-of-three pivot; a range still long after
    2 log2(n) + 8 rounds (adversarial input) is finished by qsort instead.
    """
    cdef Py_ssize_t i, j, mid, n = hi - lo + 1
    cdef double pivot, x
    cdef int rounds = 8
    while n > 1:
        n >>= 1
        rounds += 2
    while hi > lo:
        if hi - lo < 16:  # short range: insertion sort
            for i in range(lo + 1, hi + 1):
                x = a[i]
                j = i - 1
                while j >= lo and a[j] > x:
                    a[j + 1] = a[j]
                    j -= 1
                a[j + 1] = x
            return
        if rounds == 0:
            qsort(a + lo, hi - lo + 1, sizeof(double), _cmp_double)
            return
        rounds -= 1
        mid = lo + (hi - lo) // 2
        # a[lo] <= a[mid] <= a[hi]: the pivot's neighbours stop both scans (sentinels)
        if a[mid] < a[lo]:
            _swap(a, lo, mid)
        if a[hi] < a[lo]:
            _swap(a, lo, hi)
        if a[hi] < a[mid]:
            _swap(a, mid, hi)
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while pivot < a[j]:
                j -= 1
            if i <= j:
                _swap(a, i, j)
                i += 1
                j -= 1
        # now a[lo..j] <= pivot <= a[i..hi], and a[j+1..i-1] == pivot
        if j < k:
            lo = i
        if k < i:
            hi = j


cdef Py_ssize_t _needed_ranks(Py_ssize_t m, const double* q, Py_ssize_t nq,
                              Py_ssize_t* need) noexcept nogil:
    """The order statistics (ranks, sorted, distinct) the quantiles q of m values read:
    floor(h) and floor(h) + 1 at h = (m - 1) * q, only m - 1 at or above m - 1."""
    cdef Py_ssize_t t, i, s, k, p, nneed = 0
    cdef double h
    for t in range(nq):
        h = (m - 1) * q[t]
        if h >= m - 1:
            need[nneed] = m - 1
            nneed += 1
        else:
            p = <Py_ssize_t>floor(h)
            need[nneed] = p
            need[nneed + 1] = p + 1
            nneed += 2
    for i in range(1, nneed):  # insertion sort of the few ranks
        k = need[i]
        s = i - 1
        while s >= 0 and need[s] > k:
            need[s + 1] = need[s]
            s -= 1
        need[s + 1] = k
    s = 0
    for i in range(nneed):  # drop duplicates
        if s == 0 or need[i] != need[s - 1]:
            need[s] = need[i]
            s += 1
    return s


cdef void _multi_select(double* a, Py_ssize_t m, const Py_ssize_t* ranks,
                        Py_ssize_t nr) noexcept nogil:
    """Put the values of the sorted distinct ranks of a[:m] in place, each selected in
    the part after the previous one (a rank right after the previous: a min scan)."""
    cdef Py_ssize_t i, s, k, p, start = 0
    cdef double best
    for i in range(nr):
        k = ranks[i]
        if k == start:
            best = a[start]
            p = start
            for s in range(start + 1, m):
                if a[s] < best:
                    best = a[s]
                    p = s
            _swap(a, start, p)
        else:
            _select(a, start, m - 1, k)
        start = k + 1


cdef void _interpolate(Py_ssize_t m, const double* q, Py_ssize_t nq, const Py_ssize_t* need,
                       const double* vals, Py_ssize_t nneed, double* out,
                       Py_ssize_t F) noexcept nogil:
    """out[t * F] = quantile q[t] of m values whose order statistic need[i] is vals[i]:
    NumPy's _quantile and _lerp operation for operation (at or above the last index
    both neighbours are the last value and gamma is h - (-1))."""
    cdef Py_ssize_t t, i, p, pn
    cdef double h, g, a = 0, b = 0, d
    for t in range(nq):
        h = (m - 1) * q[t]
        if h >= m - 1:
            p = m - 1
            pn = p
            g = h - (-1.0)
        else:
            p = <Py_ssize_t>floor(h)
            pn = p + 1
            g = h - <double>p
        for i in range(nneed):
            if need[i] == p:
                a = vals[i]
            if need[i] == pn:
                b = vals[i]
        d = b - a
        if g >= 0.5:
            out[t * F] = b - d * (1.0 - g)
        else:
            out[t * F] = a + d * g


cdef void _gathered_quantiles(const floating* X, Py_ssize_t n, Py_ssize_t F, Py_ssize_t col,
                              const double* q, Py_ssize_t nq, double* buf, Py_ssize_t* need,
                              double* vals, double* out) noexcept nogil:
    """Quantiles of column col of X into out[t * F + col]: its observed values copied
    into buf (n), then the order statistics selected."""
    cdef Py_ssize_t i, t, m = 0, nneed
    cdef double x
    for i in range(n):
        x = X[i * F + col]
        if x == x:
            buf[m] = x
            m += 1
    if m == 0:
        for t in range(nq):
            out[t * F + col] = NAN
        return
    nneed = _needed_ranks(m, q, nq, need)
    _multi_select(buf, m, need, nneed)
    for i in range(nneed):
        vals[i] = buf[need[i]]
    _interpolate(m, q, nq, need, vals, nneed, out + col, F)


cdef inline uint64_t _xorshift(uint64_t* s) noexcept nogil:
    s[0] ^= s[0] >> 12
    s[0] ^= s[0] << 25
    s[0] ^= s[0] >> 27
    return s[0] * <uint64_t>2685821657736338717ULL


cdef Py_ssize_t _brackets(const floating* X, Py_ssize_t n, Py_ssize_t F, Py_ssize_t col,
                          const double* q, Py_ssize_t nq, double* sample, Py_ssize_t ns,
                          Py_ssize_t* ranks, double* lo, double* hi) noexcept nogil:
    """Value intervals [lo, hi] (sorted, disjoint; returns how many, 0 if the sample is
    too thin) that very likely hold the order statistics the quantiles q of column col
    read, from a random sample of ns rows: each spans the sample quantile +- 4 sigma."""
    cdef uint64_t state = <uint64_t>(col + 1) * <uint64_t>0x9E3779B97F4A7C15ULL
    cdef Py_ssize_t i, s = 0, t, nr = 0, f, r, d, T
    cdef double x, h, a, b
    for i in range(ns):
        x = X[<Py_ssize_t>(_xorshift(&state) % <uint64_t>n) * F + col]
        if x == x:
            sample[s] = x
            s += 1
    if s < 64:
        return 0
    d = 2 * <Py_ssize_t>sqrt(<double>s) + 8  # 4 sigma of a sample rank: sqrt(s q (1 - q)) <= sqrt(s) / 2
    for t in range(nq):
        h = (s - 1) * q[t]
        f = <Py_ssize_t>floor(h)
        if f - d >= 0:
            ranks[nr] = f - d
            nr += 1
        if f + 1 + d <= s - 1:
            ranks[nr] = f + 1 + d
            nr += 1
    for i in range(1, nr):
        r = ranks[i]
        t = i - 1
        while t >= 0 and ranks[t] > r:
            ranks[t + 1] = ranks[t]
            t -= 1
        ranks[t + 1] = r
    t = 0
    for i in range(nr):
        if t == 0 or ranks[i] != ranks[t - 1]:
            ranks[t] = ranks[i]
            t += 1
    _multi_select(sample, s, ranks, t)
    T = 0
    for t in range(nq):  # the intervals, then sorted by lo and merged where they overlap
        h = (s - 1) * q[t]
        f = <Py_ssize_t>floor(h)
        a = sample[f - d] if f - d >= 0 else -INFINITY
        b = sample[f + 1 + d] if f + 1 + d <= s - 1 else INFINITY
        i = T
        while i > 0 and lo[i - 1] > a:
            lo[i] = lo[i - 1]
            hi[i] = hi[i - 1]
            i -= 1
        lo[i] = a
        hi[i] = b
        T += 1
    t = 0
    for i in range(1, T):
        if lo[i] <= hi[t]:
            if hi[i] > hi[t]:
                hi[t] = hi[i]
        else:
            t += 1
            lo[t] = lo[i]
            hi[t] = hi[i]
    return t + 1


cdef inline Py_ssize_t _scan(const floating* col, Py_ssize_t F, Py_ssize_t i0,
                             Py_ssize_t i1, const double* l, const double* h, int nb,
                             Py_ssize_t* cnt, double* buf, Py_ssize_t k) noexcept nogil:
    """Rows [i0, i1) of one column (stride F) against nb brackets [l, h]: cnt[0] +=
    observed, cnt[1 + t] += below l[t], cnt[5 + t] += up to h[t]; values inside a
    bracket appended to buf at k (returns the new k). Called with a constant nb, so
    the bracket loops unroll and the counts stay in registers. Branch-free but for
    the rare append (NaN compares false everywhere)."""
    cdef Py_ssize_t i, t, m = 0
    cdef Py_ssize_t b[4]
    cdef Py_ssize_t u[4]
    cdef double x
    cdef bint inside
    for t in range(nb):
        b[t] = 0
        u[t] = 0
    for i in range(i0, i1):
        x = col[i * F]
        m += x == x
        inside = False
        for t in range(nb):
            b[t] += x < l[t]
            u[t] += x <= h[t]
            inside = inside | ((x >= l[t]) & (x <= h[t]))
        if inside:
            buf[k] = x
            k += 1
    cnt[0] += m
    for t in range(nb):
        cnt[1 + t] += b[t]
        cnt[5 + t] += u[t]
    return k


cdef void _bracket_pass(const floating* X, Py_ssize_t n, Py_ssize_t F, Py_ssize_t c0,
                        Py_ssize_t G, Py_ssize_t nq, const Py_ssize_t* T, const double* lo,
                        const double* hi, Py_ssize_t* counts, double* bufs,
                        Py_ssize_t* nb) noexcept nogil:
    """One pass over the rows for columns [c0, c0 + G) (_scan per column with its
    T[g] <= 4 brackets; counts (G, 9) as _scan's cnt). The rows go in blocks that
    stay in cache while each column of the block reads them."""
    cdef Py_ssize_t rb = max(16, 65536 // max(1, F * <Py_ssize_t>sizeof(floating)))
    cdef Py_ssize_t i0, i1, g
    cdef const floating* col
    cdef const double* l
    cdef const double* h
    cdef Py_ssize_t* cnt
    cdef double* buf
    i0 = 0
    while i0 < n:
        i1 = min(i0 + rb, n)
        for g in range(G):
            col = X + c0 + g
            l = lo + g * nq
            h = hi + g * nq
            cnt = counts + 9 * g
            buf = bufs + g * n
            if T[g] == 1:
                nb[g] = _scan(col, F, i0, i1, l, h, 1, cnt, buf, nb[g])
            elif T[g] == 2:
                nb[g] = _scan(col, F, i0, i1, l, h, 2, cnt, buf, nb[g])
            elif T[g] == 3:
                nb[g] = _scan(col, F, i0, i1, l, h, 3, cnt, buf, nb[g])
            elif T[g] == 4:
                nb[g] = _scan(col, F, i0, i1, l, h, 4, cnt, buf, nb[g])
        i0 = i1


cdef void _block_quantiles(const floating* X, Py_ssize_t n, Py_ssize_t F, Py_ssize_t c0,
                           Py_ssize_t G, const double* q, Py_ssize_t nq, double* bufs,
                           double* sample, Py_ssize_t ns, Py_ssize_t* ints,
                           double* dbls, double* out) noexcept nogil:
    """Quantiles of columns [c0, c0 + G) of X into out (nq, F).

    Sampled (ns > 0): each column's brackets from a sample, then one pass over the
    rows for the whole block (a row's G values share a cache line; _bracket_pass)
    counting the observed values and those below / up to each bracket, copying
    those inside the brackets into the column's buffer (n), where the order
    statistics are then selected. A column whose sample is too thin, with over 4
    brackets, or whose statistics fall outside the brackets (unlikely) is gathered
    whole, as every column when ns == 0.
    """
    # per column g: T (brackets), nb (values in brackets), counts (see _scan)
    cdef Py_ssize_t* T = ints
    cdef Py_ssize_t* nb = ints + G
    cdef Py_ssize_t* counts = ints + 2 * G  # (G, 9): observed, below (4), up to (4)
    cdef Py_ssize_t* need = counts + 9 * G
    cdef Py_ssize_t* mapped = need + 2 * nq
    cdef double* lo = dbls
    cdef double* hi = dbls + G * nq
    cdef double* vals = hi + G * nq
    cdef double* buf
    cdef Py_ssize_t g, i, t, k, u, nneed, off
    cdef bint ok
    for g in range(G):
        T[g] = 0
        if ns:
            T[g] = _brackets(X, n, F, c0 + g, q, nq, sample, ns, need, lo + g * nq,
                             hi + g * nq)
            if T[g] > 4:
                T[g] = 0
        nb[g] = 0
        for t in range(9):
            counts[9 * g + t] = 0
    if ns:
        _bracket_pass(X, n, F, c0, G, nq, T, lo, hi, counts, bufs, nb)
    for g in range(G):
        buf = bufs + g * n
        ok = T[g] > 0
        if ok:
            nneed = _needed_ranks(counts[9 * g], q, nq, need)
            for i in range(nneed):  # each rank's place among the bracketed values
                k = need[i]
                ok = False
                off = 0
                for t in range(T[g]):
                    u = 9 * g + 1 + t  # below; u + 4: up to
                    if counts[u] <= k < counts[u + 4]:
                        mapped[i] = off + k - counts[u]
                        ok = True
                        break
                    off += counts[u + 4] - counts[u]
                if not ok:
                    break
        if ok:
            _multi_select(buf, nb[g], mapped, nneed)
            for i in range(nneed):
                vals[i] = buf[mapped[i]]
            _interpolate(counts[9 * g], q, nq, need, vals, nneed, out + c0 + g, F)
        else:
            _gathered_quantiles(X, n, F, c0 + g, q, nq, buf, need, vals, out)


def column_quantiles(const floating[:, ::1] X, const double[::1] q, int num_threads):
    """NaN-ignoring quantiles q (k,) of each column of X (n, F): float64 (k, F), NaN for
    an unobserved column. Blocks of columns (a cache line of a row) in parallel; see
    _block_quantiles: selection among the values a sample brackets, no full sort."""
    cdef Py_ssize_t n = X.shape[0], F = X.shape[1], nq = q.shape[0], b, nblocks, c0, G
    cdef Py_ssize_t width = max(1, QBLOCK_BYTES // <Py_ssize_t>sizeof(floating)), ns = 0
    result = np.empty((nq, F))
    cdef double[:, ::1] out = result
    cdef double* bufs = NULL
    cdef double* sample = NULL
    cdef Py_ssize_t* ints = NULL
    cdef double* dbls = NULL
    cdef int failed = 0
    if nq == 0 or F == 0:
        return result
    if n == 0:
        result[...] = np.nan
        return result
    if n >= SAMPLE_MIN_N:
        ns = min(n // 4, <Py_ssize_t>(n ** (2.0 / 3.0)))
    width = min(width, F)
    nblocks = (F + width - 1) // width
    with nogil, parallel(num_threads=num_threads,
                         use_threads_if=nblocks > 1 and n * F >= PAR_MIN_WORK):
        bufs = <double*>malloc(width * n * sizeof(double))  # pages touched only as filled
        sample = <double*>malloc(max(ns, 1) * sizeof(double))
        ints = <Py_ssize_t*>malloc((11 * width + 4 * nq) * sizeof(Py_ssize_t))
        dbls = <double*>malloc((2 * width * nq + 2 * nq) * sizeof(double))
        for b in prange(nblocks, schedule="static", chunksize=1):
            if bufs == NULL or sample == NULL or ints == NULL or dbls == NULL:
                failed += 1  # a reduction: visible after the loop
            else:
                c0 = b * width
                G = min(width, F - c0)
                _block_quantiles(&X[0, 0], n, F, c0, G, &q[0], nq, bufs, sample, ns, ints,
                                 dbls, &out[0, 0])
        free(bufs)
        free(sample)
        free(ints)
        free(dbls)
    if failed:
        raise MemoryError()
    return result


# ----------------------------------------------------------------- normalize_rows
cdef enum:
    NORM_L1 = 0
    NORM_L2 = 1
    NORM_MAX = 2


cdef inline double _row_norm(const floating* x, Py_ssize_t F, int norm) noexcept nogil:
    """The l1 / l2 / max norm of x[:F] accumulated in double (four partial sums)."""
    cdef Py_ssize_t j = 0
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, a0, a1, a2, a3
    if norm == NORM_MAX:
        for j in range(F):
            s0 = nanmax(s0, fabs(<double>x[j]))
        return s0
    if norm == NORM_L1:
        while j + 4 <= F:
            s0 += fabs(<double>x[j])
            s1 += fabs(<double>x[j + 1])
            s2 += fabs(<double>x[j + 2])
            s3 += fabs(<double>x[j + 3])
            j += 4
        while j < F:
            s0 += fabs(<double>x[j])
            j += 1
        return (s0 + s1) + (s2 + s3)
    while j + 4 <= F:
        a0 = x[j]
        a1 = x[j + 1]
        a2 = x[j + 2]
        a3 = x[j + 3]
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
        j += 4
    while j < F:
        a0 = x[j]
        s0 += a0 * a0
        j += 1
    return sqrt((s0 + s1) + (s2 + s3))


def normalize_rows(const floating[:, ::1] X, int norm, floating[:, ::1] out, int num_threads):
    """out = each row of X divided by its norm (0 l1, 1 l2, 2 max), rounded to X's dtype
    first; rows whose norm is below 10 * eps of the dtype are copied unchanged."""
    cdef Py_ssize_t i, j, n = X.shape[0], F = X.shape[1]
    cdef floating tiny = 10 * (FLT_EPSILON if floating is float else DBL_EPSILON)
    cdef floating nrm
    if F == 0:
        return
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n * F >= PAR_MIN_WORK):
        nrm = <floating>_row_norm(&X[i, 0], F, norm)
        if nrm < tiny:
            nrm = 1
        for j in range(F):
            out[i, j] = X[i, j] / nrm


# ------------------------------------------------------------ polynomial_features
def polynomial_features(const floating[:, ::1] X, const int64_t[::1] left,
                        const int64_t[::1] right, const int64_t[::1] keep,
                        floating[:, ::1] out, int num_threads):
    """out[i, c] = monomial keep[c] of row i, where monomial k is
    ``(left[k] < 0 ? 1 : M[left[k]]) * (right[k] < 0 ? 1 : X[i, right[k]])``.

    Each row builds all monomials in its thread's scratch (they fit in L1 for the
    usual sizes), then writes its output row contiguously; rows in parallel.
    """
    cdef Py_ssize_t i, k, c, l, r, n = X.shape[0], F = X.shape[1]
    cdef Py_ssize_t K = left.shape[0], L = keep.shape[0]
    cdef floating* full = NULL
    cdef const floating* x0 = NULL
    cdef const floating* row
    cdef floating base
    cdef int failed = 0
    if n == 0 or L == 0:
        return
    if F:
        x0 = &X[0, 0]
    with nogil, parallel(num_threads=num_threads, use_threads_if=n * K >= PAR_MIN_WORK):
        full = <floating*>malloc(K * sizeof(floating))
        for i in prange(n, schedule="static"):
            if full == NULL:
                failed += 1  # a reduction: visible after the loop
            else:
                row = x0 + i * F
                for k in range(K):
                    l = left[k]
                    r = right[k]
                    base = full[l] if l >= 0 else 1
                    full[k] = base * row[r] if r >= 0 else base
                for c in range(L):
                    out[i, c] = full[keep[c]]
        free(full)
    if failed:
        raise MemoryError()


# ------------------------------------------------------ unique_counts / encode_values
# The encoders' kernels, over 1-D int64 or float64 labels. Integers whose span
# (max - min + 1) is small next to the number of values take sort-free dense paths:
#
# * unique_counts counts into a table indexed by value - min when the span is at most
#   n + DENSE_MIN_SPAN (the table costs no more than the values; DENSE_MIN_SPAN = 4096
#   entries, 32 KiB, is cheaper than any sort's fixed cost, so small inputs with a
#   small span count too). Threads count contiguous chunks into their own tables when
#   each chunk is at least DENSE_CHUNK_RATIO spans long (then the tables' zeroing and
#   merging stay a small fraction of the counting), and the tables are summed. A span
#   up to DENSE_LANES_SPAN (four 64 KiB tables, cache-resident) counts into four
#   interleaved sub-tables per chunk, so repeats of one value don't serialize.
#   Otherwise (floats, wide spans) NumPy sorts a copy, exactly as np.unique does (so
#   which of -0.0 / 0.0 represents their run is the same) and a compiled pass
#   run-length encodes it, every NaN in the final run.
# * encode_values looks codes up in an int32 table over the categories' span when the
#   span is at most 2 * n + DENSE_MIN_LOOKUP (the table's fill, at most 8 n bytes plus
#   256 KiB, is paid back by lookups that replace a log2(m)-step binary search);
#   otherwise each value binary-searches the non-NaN categories (branch-free) and a
#   NaN maps to the first NaN category. Values run in parallel above PAR_MIN_WORK.
#
# Spans are taken in uint64 arithmetic, so the extremes of int64 never overflow, and
# value - min in uint64 is below the span exactly when min <= value <= max: a single
# comparison bounds every table access.
cdef enum:
    DENSE_MIN_SPAN = 4096
    DENSE_CHUNK_RATIO = 4
    DENSE_LANES_SPAN = 8192
    DENSE_MIN_LOOKUP = 65536

ctypedef fused label_t:
    int64_t
    double


cdef void _int_minmax_range(const int64_t* v, Py_ssize_t lo, Py_ssize_t hi,
                            int64_t* out) noexcept nogil:
    """(min, max) of v[lo:hi] (non-empty) into out[0], out[1]: four independent
    (min, max) pairs of conditional moves, so the loop is not one dependency chain."""
    cdef int64_t a0 = v[lo], a1 = v[lo], a2 = v[lo], a3 = v[lo], x
    cdef int64_t b0 = v[lo], b1 = v[lo], b2 = v[lo], b3 = v[lo]
    cdef Py_ssize_t i = lo + 1
    while i + 4 <= hi:
        x = v[i]
        a0 = x if x < a0 else a0
        b0 = x if x > b0 else b0
        x = v[i + 1]
        a1 = x if x < a1 else a1
        b1 = x if x > b1 else b1
        x = v[i + 2]
        a2 = x if x < a2 else a2
        b2 = x if x > b2 else b2
        x = v[i + 3]
        a3 = x if x < a3 else a3
        b3 = x if x > b3 else b3
        i += 4
    while i < hi:
        x = v[i]
        a0 = x if x < a0 else a0
        b0 = x if x > b0 else b0
        i += 1
    a0 = a1 if a1 < a0 else a0
    a2 = a3 if a3 < a2 else a2
    b0 = b1 if b1 > b0 else b0
    b2 = b3 if b3 > b2 else b2
    out[0] = a2 if a2 < a0 else a0
    out[1] = b2 if b2 > b0 else b0


cdef void _int_minmax(const int64_t* v, Py_ssize_t n, int num_threads,
                      int64_t* lo, int64_t* hi) noexcept nogil:
    """(min, max) of v[:n], n > 0; threads take contiguous chunks above PAR_MIN_WORK."""
    cdef Py_ssize_t c, nchunks = 1
    cdef int64_t st[2 * 64]
    if n >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, 64))
    for c in prange(nchunks, schedule="static", num_threads=num_threads,
                    use_threads_if=nchunks > 1):
        _int_minmax_range(v, c * n // nchunks, (c + 1) * n // nchunks, &st[2 * c])
    lo[0] = st[0]
    hi[0] = st[1]
    for c in range(1, nchunks):
        if st[2 * c] < lo[0]:
            lo[0] = st[2 * c]
        if st[2 * c + 1] > hi[0]:
            hi[0] = st[2 * c + 1]


cdef void _count_range(const int64_t* v, Py_ssize_t lo, Py_ssize_t hi, uint64_t vmin,
                       uint64_t span, Py_ssize_t lanes, int64_t* table) noexcept nogil:
    """table[v - vmin] += 1 for v in v[lo:hi]. With lanes == 4, table holds four
    sub-tables of span counts and consecutive values go to different ones, so a run of
    equal values does not serialize on one counter. An index out of [0, span)
    (impossible when vmin and span come from these values) is skipped, not written."""
    cdef Py_ssize_t i = lo
    cdef uint64_t d0, d1, d2, d3
    if lanes == 4:
        while i + 4 <= hi:
            d0 = <uint64_t>v[i] - vmin
            d1 = <uint64_t>v[i + 1] - vmin
            d2 = <uint64_t>v[i + 2] - vmin
            d3 = <uint64_t>v[i + 3] - vmin
            if d0 < span:
                table[d0] += 1
            if d1 < span:
                table[span + d1] += 1
            if d2 < span:
                table[2 * span + d2] += 1
            if d3 < span:
                table[3 * span + d3] += 1
            i += 4
    while i < hi:
        d0 = <uint64_t>v[i] - vmin
        if d0 < span:
            table[d0] += 1
        i += 1


def _unique_counts_dense(const int64_t[::1] values, int64_t vmin, Py_ssize_t span,
                         int num_threads):
    """Sorted distinct values and counts of values, all within [vmin, vmin + span)."""
    cdef Py_ssize_t n = values.shape[0], c, k, j, m = 0, nchunks = 1, ntables
    cdef Py_ssize_t lanes = 4 if span <= DENSE_LANES_SPAN else 1
    if n >= PAR_MIN_WORK:
        nchunks = max(1, min(num_threads, n // (DENSE_CHUNK_RATIO * lanes * span)))
    ntables = nchunks * lanes
    tables = np.zeros((ntables, span), np.int64)  # calloc: zero pages
    cdef int64_t[:, ::1] t = tables
    cdef int64_t s
    for c in prange(nchunks, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=nchunks > 1):
        _count_range(&values[0], c * n // nchunks, (c + 1) * n // nchunks,
                     <uint64_t>vmin, <uint64_t>span, lanes, &t[c * lanes, 0])
    with nogil:
        for j in range(span):
            s = t[0, j]
            for c in range(1, ntables):
                s = s + t[c, j]
            t[0, j] = s
            m += s != 0
    uniq = np.empty(m, np.int64)
    counts = np.empty(m, np.int64)
    cdef int64_t[::1] u = uniq, cnt = counts
    with nogil:
        k = 0
        for j in range(span):
            s = t[0, j]
            if s != 0:
                u[k] = <int64_t>(<uint64_t>vmin + <uint64_t>j)
                cnt[k] = s
                k += 1
    return uniq, counts


def _run_lengths(const label_t[::1] a):
    """Distinct values and run lengths of the sorted a (NaNs last, one run): the first
    element of each run represents it, as in np.unique."""
    cdef Py_ssize_t n = a.shape[0], end = n, i, k, m = 0
    dtype = np.int64 if label_t is int64_t else np.float64
    if label_t is double:
        while end > 0 and a[end - 1] != a[end - 1]:
            end -= 1
    with nogil:
        if end > 0:
            m = 1
            for i in range(1, end):
                m += a[i] != a[i - 1]
        if end < n:
            m += 1
    uniq = np.empty(m, dtype)
    counts = np.empty(m, np.int64)
    cdef label_t[::1] u = uniq
    cdef int64_t[::1] cnt = counts
    cdef Py_ssize_t start = 0
    with nogil:
        k = 0
        for i in range(1, end + 1):
            if i == end or a[i] != a[i - 1]:
                u[k] = a[start]
                cnt[k] = i - start
                k += 1
                start = i
        if end < n:
            u[k] = a[end]
            cnt[k] = n - end
    return uniq, counts


def unique_counts(values, int num_threads):
    """Sorted distinct values of the contiguous 1-D int64 or float64 ``values`` and their
    int64 counts: ``np.unique(values, return_counts=True)``."""
    cdef const int64_t[::1] iv
    cdef int64_t lo, hi
    cdef Py_ssize_t n = values.shape[0]
    if values.dtype == np.int64 and n > 0:
        iv = values
        with nogil:
            _int_minmax(&iv[0], n, num_threads, &lo, &hi)
        if <uint64_t>hi - <uint64_t>lo < <uint64_t>(n + DENSE_MIN_SPAN):
            return _unique_counts_dense(iv, lo, <Py_ssize_t>(<uint64_t>hi - <uint64_t>lo) + 1,
                                        num_threads)
    return _run_lengths(np.sort(values))


def _encode_dense(const int64_t[::1] values, const int64_t[::1] categories,
                  int64_t[::1] out, Py_ssize_t span, int num_threads):
    """out[i] = position of values[i] among categories (sorted, distinct, m < 2**31,
    spanning [categories[0], categories[0] + span)), -1 where absent."""
    cdef Py_ssize_t n = values.shape[0], m = categories.shape[0], i
    cdef uint64_t vmin = <uint64_t>categories[0], d
    table = np.full(span, -1, np.int32)
    cdef int32_t[::1] t = table
    with nogil:
        for i in range(m - 1, -1, -1):  # backwards: a repeated category keeps its first code
            d = <uint64_t>categories[i] - vmin
            if d < <uint64_t>span:
                t[d] = <int32_t>i
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        d = <uint64_t>values[i] - vmin
        out[i] = t[d] if d < <uint64_t>span else -1


cdef inline Py_ssize_t _lower_bound(const label_t* a, Py_ssize_t m, label_t x) noexcept nogil:
    """First position in the sorted a[:m] (no NaN) whose value is not below x (m if none);
    branch-free halving (the select compiles to a conditional move)."""
    cdef Py_ssize_t base = 0, half
    if m == 0:
        return 0
    while m > 1:
        half = m >> 1
        base = base + half if a[base + half - 1] < x else base
        m -= half
    return base + (a[base] < x)


def _encode_search(const label_t[::1] values, const label_t[::1] categories,
                   int64_t[::1] out, int num_threads):
    """out[i] = position of values[i] among the sorted categories (NaN last), -1 where
    absent; a NaN finds the first NaN category."""
    cdef Py_ssize_t n = values.shape[0], m = categories.shape[0], real = m, i, p
    cdef const label_t* c = &categories[0]
    cdef label_t x
    if label_t is double:
        while real > 0 and categories[real - 1] != categories[real - 1]:
            real -= 1
    cdef int64_t nan_code = real if real < m else -1
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n >= PAR_MIN_WORK):
        x = values[i]
        if label_t is double:
            if x != x:
                out[i] = nan_code
                continue
        p = _lower_bound(c, real, x)
        out[i] = p if (p < real and c[p] == x) else -1


def encode_values(values, categories, int64_t[::1] out, int num_threads):
    """out (n,) int64 = the codes of the contiguous 1-D ``values`` in the sorted distinct
    ``categories`` of the same dtype (int64 or float64), -1 where absent."""
    cdef Py_ssize_t n = values.shape[0], m = categories.shape[0]
    cdef const int64_t[::1] ic
    cdef uint64_t span
    if n == 0:
        return
    if m == 0:
        out[:] = -1
        return
    if values.dtype == np.int64 and m <= INT32_MAX:
        ic = categories
        span = <uint64_t>ic[m - 1] - <uint64_t>ic[0]
        if span < <uint64_t>(2 * n + DENSE_MIN_LOOKUP):
            _encode_dense(values, ic, out, <Py_ssize_t>span + 1, num_threads)
            return
    _encode_search(values, categories, out, num_threads)


# -------------------------------------------------------------- fill_missing / one_hot
cdef inline Py_ssize_t _fill_row(const floating* x, const floating* fill, floating mv,
                                 bint nan_mode, Py_ssize_t F, floating* o) noexcept nogil:
    """o = x with its missing entries replaced by fill; returns how many entries are not
    finite (NaN, +-inf) and not missing.

    Called with a constant nan_mode, so the loop is compares, selects and a bitwise OR,
    and vectorizes (counting double compares into an integer does not, on SSE2): z - z
    is +0.0 (no bit set) when z is finite, NaN otherwise, so the OR is nonzero only for
    a row with a kept non-finite entry, and only such a row is counted (rare).
    """
    cdef Py_ssize_t j, cnt = 0
    cdef floating v, f, w, z
    cdef bint miss
    cdef uint32_t bad32 = 0, b32
    cdef uint64_t bad64 = 0, b64
    for j in range(F):
        v = x[j]
        f = fill[j]  # loaded unconditionally: a conditional load blocks vectorizing
        miss = (v != v) if nan_mode else (v == mv)
        w = f if miss else v
        z = 0 if miss else v
        o[j] = w
        z = z - z
        if floating is float:
            memcpy(&b32, &z, sizeof(z))
            bad32 |= b32
        else:
            memcpy(&b64, &z, sizeof(z))
            bad64 |= b64
    if bad32 == 0 and bad64 == 0:
        return 0
    for j in range(F):
        v = x[j]
        miss = (v != v) if nan_mode else (v == mv)
        cnt += not miss and not (fabs_(v) < INFINITY)  # NaN compares false
    return cnt


def fill_missing(const floating[:, ::1] X, double missing_value, const double[::1] fill,
                 floating[:, ::1] out, int num_threads):
    """out = X with each missing entry (NaN if missing_value is NaN, else equal to it)
    replaced by fill[j] rounded to X's dtype; returns the count of entries that are not
    finite and not missing. Rows in parallel, the counts a reduction."""
    cdef Py_ssize_t i, n = X.shape[0], F = X.shape[1], n_bad = 0
    # compared in X's dtype, as NumPy compares X == missing_value
    cdef floating mv = <floating>missing_value
    cdef bint nan_mode = missing_value != missing_value
    dtype = np.float32 if floating is float else np.float64
    cdef const floating[::1] f = np.asarray(fill).astype(dtype)
    if f.shape[0] != F:
        raise ValueError(f"fill has {f.shape[0]} values for {F} columns")
    if n == 0 or F == 0:
        return 0
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n * F >= PAR_MIN_WORK):
        if nan_mode:
            n_bad += _fill_row(&X[i, 0], &f[0], mv, True, F, &out[i, 0])
        else:
            n_bad += _fill_row(&X[i, 0], &f[0], mv, False, F, &out[i, 0])
    return n_bad


def one_hot(const int64_t[:, ::1] indices, floating[:, ::1] out, int num_threads):
    """out[i, indices[i, j]] = 1 for each index in [0, out.shape[1]) (others set nothing);
    out arrives zeroed. Rows in parallel: out is np.zeros' lazily zeroed pages, so
    their page faults (the real cost) are taken by every thread."""
    cdef Py_ssize_t i, j, n = indices.shape[0], F = indices.shape[1], m = out.shape[1]
    cdef uint64_t d
    for i in prange(n, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=n * m >= PAR_MIN_WORK):
        for j in range(F):
            d = <uint64_t>indices[i, j]  # one unsigned test: negatives wrap above m
            if d < <uint64_t>m:
                out[i, d] = 1
