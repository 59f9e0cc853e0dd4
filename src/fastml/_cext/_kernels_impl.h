/* Type-generic loops of _kernels.h, included once with FM_T = float and once with double.
 * No include guard on purpose. Every pointer argument of a kernel is a separate array.
 */
#define FM_EXP FM_FN(fm_exp)
#define FM_L FM_LANES

/* --------------------------------------------------------------- element-wise */
FM_DISPATCH static void FM_FN(fastml_sigmoid)(const FM_T *FM_RESTRICT x, FM_T *FM_RESTRICT out,
                                              ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = (FM_T)1 / ((FM_T)1 + FM_EXP(-x[i]));
}

FM_DISPATCH static void FM_FN(fastml_tanh)(const FM_T *FM_RESTRICT x, FM_T *FM_RESTRICT out,
                                           ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = FM_FN(fm_tanh)(x[i]);
}

/* ------------------------------------------------------------- lane reductions */
/* max of a row; n == 0 gives -inf. An integer max reduction of the order-preserving
 * keys, because that vectorizes where a float max does not (without -ffast-math). A NaN
 * may win or not, by its sign bit: callers see NaN through exp(x - max) either way. */
FM_INLINE FM_T FM_FN(fm_row_max)(const FM_T *FM_RESTRICT x, ptrdiff_t n) {
    FM_I m = FM_FN(fm_key)(-INFINITY);
    for (ptrdiff_t j = 0; j < n; j++) {
        FM_I k = FM_FN(fm_key)(x[j]);
        m = k > m ? k : m;
    }
    return FM_FN(fm_unkey)(m);
}

/* acc[k] += exp(x[j + k] - m) over the row in lanes; with store, each exp(x - m) also
 * goes to out. The last partial lane group goes through a buffer padded with -inf, whose
 * exp adds 0 (or NaN when m is -inf, where the row's own exps are NaN already). */
FM_INLINE void FM_FN(fm_exp_lanes)(const FM_T *FM_RESTRICT x, FM_T m, FM_T *FM_RESTRICT out,
                                   ptrdiff_t n, int store, double *FM_RESTRICT acc) {
    ptrdiff_t j = 0;
    for (; j + FM_L <= n; j += FM_L)
        for (int k = 0; k < FM_L; k++) {
            FM_T e = FM_EXP(x[j + k] - m);
            if (store) out[j + k] = e;
            acc[k] += e;
        }
    if (j < n) {
        FM_T buf[FM_L];
        for (int k = 0; k < FM_L; k++) buf[k] = j + k < n ? x[j + k] : -INFINITY;
        for (int k = 0; k < FM_L; k++) {
            buf[k] = FM_EXP(buf[k] - m);
            acc[k] += buf[k];
        }
        if (store)
            for (int k = 0; j + k < n; k++) out[j + k] = buf[k];
    }
}

/* sum(exp(x - m)) in double; with store, each exp(x - m) also goes to out */
FM_INLINE double FM_FN(fm_exp_sum)(const FM_T *FM_RESTRICT x, FM_T m, FM_T *FM_RESTRICT out,
                                   ptrdiff_t n, int store) {
    double acc[FM_L] = {0};
    FM_FN(fm_exp_lanes)(x, m, out, n, store, acc);
    return fm_lanes_sum(acc);
}

FM_INLINE double FM_FN(fm_sum)(const FM_T *FM_RESTRICT a, ptrdiff_t n) {
    double acc[FM_L] = {0};
    ptrdiff_t j = 0;
    for (; j + FM_L <= n; j += FM_L)
        for (int k = 0; k < FM_L; k++) acc[k] += a[j + k];
    for (int k = 0; j + k < n; k++) acc[k] += a[j + k];
    return fm_lanes_sum(acc);
}

/* acc[k] += a[j + k] * b[j + k] in double, in lanes */
FM_INLINE void FM_FN(fm_dot_lanes)(const FM_T *FM_RESTRICT a, const FM_T *FM_RESTRICT b,
                                   ptrdiff_t n, double *FM_RESTRICT acc) {
    ptrdiff_t j = 0;
    for (; j + FM_L <= n; j += FM_L)
        for (int k = 0; k < FM_L; k++) acc[k] += (double)a[j + k] * b[j + k];
    for (int k = 0; j + k < n; k++) acc[k] += (double)a[j + k] * b[j + k];
}

FM_INLINE double FM_FN(fm_dot)(const FM_T *FM_RESTRICT a, const FM_T *FM_RESTRICT b,
                               ptrdiff_t n) {
    double acc[FM_L] = {0};
    FM_FN(fm_dot_lanes)(a, b, n, acc);
    return fm_lanes_sum(acc);
}

/* ------------------------------------------------------------------- row-wise */
/* Two sweeps over the (cache-resident) row: the max, then exp and sum; then one scale. */
FM_DISPATCH static void FM_FN(fastml_softmax_row)(const FM_T *FM_RESTRICT x,
                                                  FM_T *FM_RESTRICT out, ptrdiff_t n) {
    FM_T m = FM_FN(fm_row_max)(x, n);
    FM_T inv = (FM_T)(1 / FM_FN(fm_exp_sum)(x, m, out, n, 1));
    for (ptrdiff_t j = 0; j < n; j++) out[j] *= inv;
}

FM_DISPATCH static void FM_FN(fastml_log_softmax_row)(const FM_T *FM_RESTRICT x,
                                                      FM_T *FM_RESTRICT out, ptrdiff_t n) {
    FM_T m = FM_FN(fm_row_max)(x, n);
    FM_T lse = (FM_T)log(FM_FN(fm_exp_sum)(x, m, NULL, n, 0));
    for (ptrdiff_t j = 0; j < n; j++) out[j] = (x[j] - m) - lse;
}

FM_DISPATCH static void FM_FN(fastml_softmax_backward_row)(const FM_T *FM_RESTRICT g,
                                                           const FM_T *FM_RESTRICT y,
                                                           FM_T *FM_RESTRICT out, ptrdiff_t n) {
    FM_T dot = (FM_T)FM_FN(fm_dot)(g, y, n);
    for (ptrdiff_t j = 0; j < n; j++) out[j] = y[j] * (g[j] - dot);
}

FM_DISPATCH static void FM_FN(fastml_log_softmax_backward_row)(const FM_T *FM_RESTRICT g,
                                                               const FM_T *FM_RESTRICT y,
                                                               FM_T *FM_RESTRICT out,
                                                               ptrdiff_t n) {
    FM_T total = (FM_T)FM_FN(fm_sum)(g, n);
    for (ptrdiff_t j = 0; j < n; j++) out[j] = g[j] - FM_EXP(y[j]) * total;
}

/* -------------------------------------------------------------- cross-entropy */
/* One block of the online log-sum-exp: its max, one rescale of the running
 * sums when the max grew, then exp(x - m) summed into the lanes (and w*x when want_wx). */
FM_INLINE void FM_FN(fm_lse_block)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT w,
                                   ptrdiff_t len, int want_wx, FM_T *m_io, double *acc,
                                   double *wacc) {
    FM_T m = *m_io, bm = FM_FN(fm_row_max)(x, len);
    if (bm > m) {
        double scale = FM_EXP(m - bm);
        for (int k = 0; k < FM_L; k++) acc[k] *= scale;
        m = *m_io = bm;
    }
    FM_FN(fm_exp_lanes)(x, m, NULL, len, 0, acc);
    if (want_wx)
        FM_FN(fm_dot_lanes)(w, x, len, wacc);
}

FM_INLINE void FM_FN(fm_online_lse)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT w,
                                    ptrdiff_t n, int want_wx, FM_T *m, double *s,
                                    double *wx) {
    double acc[FM_L] = {0}, wacc[FM_L] = {0};
    ptrdiff_t j = 0;
    *m = -INFINITY;
    for (; j + FM_CE_BLOCK <= n; j += FM_CE_BLOCK)
        FM_FN(fm_lse_block)(x + j, w + j, FM_CE_BLOCK, want_wx, m, acc, wacc);
    if (j < n)
        FM_FN(fm_lse_block)(x + j, w + j, n - j, want_wx, m, acc, wacc);
    *s = fm_lanes_sum(acc);
    *wx = fm_lanes_sum(wacc);
}

/* Log-sum-exp parts of one row of logits: the max m, log(sum(exp(x - m))) and, when
 * want_wx, sum(w * x). A row of at most FM_CE_SWEEP_MAX logits is swept while it sits in
 * cache: its max, then exp(x - m) summed and, when `exps` is not NULL, stored there (the
 * gradient then needs no second exp). A longer row takes the blocked online pass (each
 * logit read once from memory). A row where that is not finite (NaN / inf logits) is
 * redone with the exact two-pass formula (NaN-propagating max, then the sum) so it comes
 * out as in the reference. Returns whether `exps` holds the row's exp(x - m). */
FM_INLINE int FM_FN(fm_ce_lse)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT w,
                               ptrdiff_t n, int want_wx, FM_T *FM_RESTRICT exps,
                               double *m_out, double *log_s_out, double *wx_out,
                               double *inv_s_out) {
    FM_T m;
    double s, wx = 0;
    int stored = 0;
    if (n <= FM_CE_SWEEP_MAX) {
        m = FM_FN(fm_row_max)(x, n);
        stored = exps != NULL;
        s = stored ? FM_FN(fm_exp_sum)(x, m, exps, n, 1) : FM_FN(fm_exp_sum)(x, m, NULL, n, 0);
        if (want_wx) wx = FM_FN(fm_dot)(w, x, n);
    } else if (want_wx) {
        FM_FN(fm_online_lse)(x, w, n, 1, &m, &s, &wx);
    } else {
        FM_FN(fm_online_lse)(x, w, n, 0, &m, &s, &wx);
    }
    if (!(isfinite(m) && isfinite(s))) {
        m = -INFINITY;
        for (ptrdiff_t j = 0; j < n; j++) m = (x[j] > m || x[j] != x[j]) ? x[j] : m;
        s = 0;
        for (ptrdiff_t j = 0; j < n; j++) s += FM_EXP(x[j] - m);
        stored = 0;
    }
    *m_out = m;
    *log_s_out = log(s);
    *wx_out = wx;
    *inv_s_out = 1 / s;
    return stored;
}

FM_DISPATCH static fm_row_lse FM_FN(fastml_ce_row_lse)(const FM_T *FM_RESTRICT x,
                                                        const FM_T *FM_RESTRICT w,
                                                        ptrdiff_t n, int want_wx) {
    fm_row_lse r;
    double inv_s;
    FM_FN(fm_ce_lse)(x, w, n, want_wx, NULL, &r.m, &r.log_s, &r.wx, &inv_s);
    return r;
}

/* One row of the cross-entropy gradient, given its log-sum-exp parts:
 * out = coef * (a * (p - onehot(t)) + b * (sw * p - w)), the b term only when smoothing;
 * p = exp(x - m - log_s), or, when `stored` (out holds exp(x - m)), out * (1 / sum). */
FM_INLINE FM_T FM_FN(fm_ce_grad_elem)(FM_T p, FM_T onehot, FM_T wj, FM_T a, FM_T b, FM_T sw,
                                      FM_T coef, int smooth) {
    FM_T g = a * (p - onehot);
    if (smooth) g = g + b * (sw * p - wj);
    return g * coef;
}

FM_INLINE void FM_FN(fm_ce_grad_loop)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT w,
                                      ptrdiff_t n, ptrdiff_t t, FM_T m, FM_T log_s,
                                      FM_T inv_s, int stored, FM_T a, FM_T b, FM_T sw,
                                      FM_T coef, int smooth, FM_T *FM_RESTRICT out) {
    FM_T pt = stored ? out[t] * inv_s : FM_EXP((x[t] - m) - log_s);
    if (stored)
        for (ptrdiff_t j = 0; j < n; j++)
            out[j] = FM_FN(fm_ce_grad_elem)(out[j] * inv_s, 0, w[j], a, b, sw, coef, smooth);
    else
        for (ptrdiff_t j = 0; j < n; j++)
            out[j] = FM_FN(fm_ce_grad_elem)(FM_EXP((x[j] - m) - log_s), 0, w[j], a, b, sw,
                                            coef, smooth);
    out[t] = FM_FN(fm_ce_grad_elem)(pt, 1, w[t], a, b, sw, coef, smooth);
}

FM_INLINE void FM_FN(fm_ce_grad)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT w,
                                 ptrdiff_t n, ptrdiff_t t, double m, double log_s,
                                 double inv_s, int stored, double a, double b, double sw,
                                 double coef, FM_T *FM_RESTRICT out) {
    if (b != 0)
        FM_FN(fm_ce_grad_loop)(x, w, n, t, (FM_T)m, (FM_T)log_s, (FM_T)inv_s, stored,
                               (FM_T)a, (FM_T)b, (FM_T)sw, (FM_T)coef, 1, out);
    else
        FM_FN(fm_ce_grad_loop)(x, w, n, t, (FM_T)m, (FM_T)log_s, (FM_T)inv_s, stored,
                               (FM_T)a, 0, 0, (FM_T)coef, 0, out);
}

FM_DISPATCH static void FM_FN(fastml_ce_grad_row)(const FM_T *FM_RESTRICT x,
                                                  const FM_T *FM_RESTRICT w, ptrdiff_t n,
                                                  ptrdiff_t t, double a, double b, double sw,
                                                  double coef, FM_T *FM_RESTRICT out) {
    double m, log_s, wx, inv_s;
    int stored = FM_FN(fm_ce_lse)(x, w, n, 0, out, &m, &log_s, &wx, &inv_s);
    FM_FN(fm_ce_grad)(x, w, n, t, m, log_s, inv_s, stored, a, b, sw, coef, out);
}

/* The fused loss and gradient of one row: its log-sum-exp parts (returned, for the
 * loss) and its gradient row from them. */
FM_DISPATCH static fm_row_lse FM_FN(fastml_ce_loss_grad_row)(
        const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT w, ptrdiff_t n, ptrdiff_t t,
        int want_wx, double a, double b, double sw, double coef, FM_T *FM_RESTRICT out) {
    fm_row_lse r;
    double inv_s;
    int stored = FM_FN(fm_ce_lse)(x, w, n, want_wx, out, &r.m, &r.log_s, &r.wx, &inv_s);
    FM_FN(fm_ce_grad)(x, w, n, t, r.m, r.log_s, inv_s, stored, a, b, sw, coef, out);
    return r;
}

/* ----------------------------------------------------- element-wise losses */
/* BCE, BCE with logits and KL divergence, per element in the dtype and in the reference's
 * order of operations (torch's formulas). No FMA contraction here, also in the AVX-512
 * clone: where a loss cancels, e.g. (1 - t) * x - logsigmoid(x) at x = -100 and t ~ 0,
 * a fused multiply-add rounds differently from the reference's product and difference
 * by up to half an ulp of the operands, far more than the loss. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define FM_LOG FM_FN(fm_log)
#define FM_LOG1P FM_FN(fm_log1p)
#define FM_LOSS_BLOCK 512

/* np.maximum / np.minimum against a constant: NaN stays NaN */
FM_INLINE FM_T FM_FN(fm_nanmax)(FM_T a, FM_T b) { return (a >= b || a != a) ? a : b; }
FM_INLINE FM_T FM_FN(fm_nanmin)(FM_T a, FM_T b) { return (a <= b || a != a) ? a : b; }

/* (t - 1) * max(log1p(-x), -100) - t * max(log(x), -100) */
FM_INLINE FM_T FM_FN(fm_bce)(FM_T x, FM_T t) {
    FM_T lo = (FM_T)-100;
    return (t - 1) * FM_FN(fm_nanmax)(FM_LOG1P(-x), lo) - t * FM_FN(fm_nanmax)(FM_LOG(x), lo);
}

/* (x - t) / max((1 - x) * x, eps) */
FM_INLINE FM_T FM_FN(fm_bce_grad)(FM_T x, FM_T t, FM_T eps) {
    return (x - t) / FM_FN(fm_nanmax)((1 - x) * x, eps);
}

/* (1 - t) * x - lw * logsigmoid(x), lw = (pw - 1) * t + 1 when has_pw, with the stable
 * logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)) */
FM_INLINE FM_T FM_FN(fm_bce_logits)(FM_T x, FM_T t, FM_T pw, int has_pw) {
    FM_T ls = FM_FN(fm_nanmin)(x, 0) - FM_LOG1P(FM_EXP(-(x < 0 ? -x : x)));
    if (has_pw) ls = ls * ((pw - 1) * t + 1);
    return (1 - t) * x - ls;
}

/* sigmoid(x) - t, or (pw * t + 1 - t) * sigmoid(x) - pw * t */
FM_INLINE FM_T FM_FN(fm_bce_logits_grad)(FM_T x, FM_T t, FM_T pw, int has_pw) {
    FM_T sig = (FM_T)1 / ((FM_T)1 + FM_EXP(-x));
    FM_T pt = pw * t;
    return has_pw ? (pt + 1 - t) * sig - pt : sig - t;
}

/* exp(t) * (t - x) with log_target, else xlogy(t, t) - t * x (0 * log(0) = 0) */
FM_INLINE FM_T FM_FN(fm_kl)(FM_T x, FM_T t, int log_target) {
    if (log_target) return FM_EXP(t) * (t - x);
    return (t == 0 ? (FM_T)0 : t * FM_LOG(t)) - t * x;
}

/* acc[k] += buf[j + k], in lanes */
FM_INLINE void FM_FN(fm_add_lanes)(const FM_T *FM_RESTRICT buf, ptrdiff_t n,
                                   double *FM_RESTRICT acc) {
    ptrdiff_t j = 0;
    for (; j + FM_L <= n; j += FM_L)
        for (int k = 0; k < FM_L; k++) acc[k] += buf[j + k];
    for (int k = 0; j + k < n; k++) acc[k] += buf[j + k];
}

/* The body of an element-wise loss over i in [0, n): with store, out[i] = ELEM; else
 * return the double sum of ELEM, computed a block at a time into a buffer (a plain loop
 * that vectorizes) whose values are then added in lanes. */
#define FM_LOSS_BODY(ELEM)                                                               \
    if (store) {                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = (ELEM);                               \
        return 0;                                                                        \
    } else {                                                                             \
        double acc[FM_L] = {0};                                                          \
        FM_T buf[FM_LOSS_BLOCK];                                                         \
        for (ptrdiff_t b = 0; b < n; b += FM_LOSS_BLOCK) {                               \
            ptrdiff_t len = n - b < FM_LOSS_BLOCK ? n - b : FM_LOSS_BLOCK;               \
            for (ptrdiff_t j = 0; j < len; j++) {                                        \
                ptrdiff_t i = b + j;                                                     \
                buf[j] = (ELEM);                                                         \
            }                                                                            \
            FM_FN(fm_add_lanes)(buf, len, acc);                                          \
        }                                                                                \
        return fm_lanes_sum(acc);                                                        \
    }

/* v * w[i] when weighted (the reference multiplies the loss / gradient by the weight) */
#define FM_W(v) (has_w ? (v) * w[i] : (v))

FM_INLINE double FM_FN(fm_bce_loop)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT t,
                                    const FM_T *FM_RESTRICT w, FM_T *FM_RESTRICT out,
                                    ptrdiff_t n, int has_w, int store) {
    FM_LOSS_BODY(FM_W(FM_FN(fm_bce)(x[i], t[i])))
}

FM_INLINE double FM_FN(fm_bce_logits_loop)(const FM_T *FM_RESTRICT x,
                                           const FM_T *FM_RESTRICT t,
                                           const FM_T *FM_RESTRICT w,
                                           const FM_T *FM_RESTRICT pw, FM_T *FM_RESTRICT out,
                                           ptrdiff_t n, int has_w, int has_pw, int store) {
    FM_LOSS_BODY(FM_W(FM_FN(fm_bce_logits)(x[i], t[i], has_pw ? pw[i] : 0, has_pw)))
}

FM_INLINE double FM_FN(fm_kl_loop)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT t,
                                   FM_T *FM_RESTRICT out, ptrdiff_t n, int log_target,
                                   int store) {
    FM_LOSS_BODY(FM_FN(fm_kl)(x[i], t[i], log_target))
}

/* The double sums of the MSE, L1 and Huber terms, each term rounded to the dtype as the
 * reference. Huber: m (|d| - m / 2) with m = min(|d|, delta), torch's 0.5 d**2 below
 * delta (|d| - |d| / 2 is exact) and delta (|d| - delta / 2) above; NaN stays NaN. */
FM_INLINE FM_T FM_FN(fm_abs)(FM_T d) { return d < 0 ? -d : d; }

FM_INLINE FM_T FM_FN(fm_huber)(FM_T d, FM_T delta) {
    FM_T z = FM_FN(fm_abs)(d), m = z < delta ? z : delta;
    return m * (z - (FM_T)0.5 * m);
}

FM_DISPATCH static double FM_FN(fastml_mse_sum)(const FM_T *FM_RESTRICT x,
                                                const FM_T *FM_RESTRICT t, ptrdiff_t n) {
    const int store = 0;
    FM_T *out = NULL;
    FM_LOSS_BODY((x[i] - t[i]) * (x[i] - t[i]))
}

FM_DISPATCH static double FM_FN(fastml_l1_sum)(const FM_T *FM_RESTRICT x,
                                               const FM_T *FM_RESTRICT t, ptrdiff_t n) {
    const int store = 0;
    FM_T *out = NULL;
    FM_LOSS_BODY(FM_FN(fm_abs)(x[i] - t[i]))
}

FM_DISPATCH static double FM_FN(fastml_huber_sum)(const FM_T *FM_RESTRICT x,
                                                  const FM_T *FM_RESTRICT t, FM_T delta,
                                                  ptrdiff_t n) {
    const int store = 0;
    FM_T *out = NULL;
    FM_LOSS_BODY(FM_FN(fm_huber)(x[i] - t[i], delta))
}

/* Entry points: out != NULL stores the per-element losses (returns 0), out == NULL returns
 * their double sum; w / pw NULL when absent. Each flag combination is its own loop. */
FM_DISPATCH static double FM_FN(fastml_bce)(const FM_T *FM_RESTRICT x,
                                            const FM_T *FM_RESTRICT t,
                                            const FM_T *FM_RESTRICT w, FM_T *FM_RESTRICT out,
                                            ptrdiff_t n) {
    if (out)
        return w ? FM_FN(fm_bce_loop)(x, t, w, out, n, 1, 1)
                 : FM_FN(fm_bce_loop)(x, t, w, out, n, 0, 1);
    return w ? FM_FN(fm_bce_loop)(x, t, w, out, n, 1, 0)
             : FM_FN(fm_bce_loop)(x, t, w, out, n, 0, 0);
}

FM_DISPATCH static double FM_FN(fastml_bce_logits)(const FM_T *FM_RESTRICT x,
                                                   const FM_T *FM_RESTRICT t,
                                                   const FM_T *FM_RESTRICT w,
                                                   const FM_T *FM_RESTRICT pw,
                                                   FM_T *FM_RESTRICT out, ptrdiff_t n) {
#define FM_BCEL_CASE(W, P, S) return FM_FN(fm_bce_logits_loop)(x, t, w, pw, out, n, W, P, S)
#define FM_BCEL_STORE(W, P) do { if (out) FM_BCEL_CASE(W, P, 1); else FM_BCEL_CASE(W, P, 0); } \
    while (0)
    if (w) {
        if (pw) FM_BCEL_STORE(1, 1); else FM_BCEL_STORE(1, 0);
    } else {
        if (pw) FM_BCEL_STORE(0, 1); else FM_BCEL_STORE(0, 0);
    }
#undef FM_BCEL_STORE
#undef FM_BCEL_CASE
}

FM_DISPATCH static double FM_FN(fastml_kl_div)(const FM_T *FM_RESTRICT x,
                                               const FM_T *FM_RESTRICT t,
                                               FM_T *FM_RESTRICT out, ptrdiff_t n,
                                               int log_target) {
    if (out)
        return log_target ? FM_FN(fm_kl_loop)(x, t, out, n, 1, 1)
                          : FM_FN(fm_kl_loop)(x, t, out, n, 0, 1);
    return log_target ? FM_FN(fm_kl_loop)(x, t, out, n, 1, 0)
                      : FM_FN(fm_kl_loop)(x, t, out, n, 0, 0);
}

/* Gradients: out = g * w (when weighted) * scale, as the reference. */
FM_INLINE void FM_FN(fm_bce_grad_loop)(const FM_T *FM_RESTRICT x, const FM_T *FM_RESTRICT t,
                                       const FM_T *FM_RESTRICT w, FM_T eps, FM_T scale,
                                       FM_T *FM_RESTRICT out, ptrdiff_t n, int has_w) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = FM_W(FM_FN(fm_bce_grad)(x[i], t[i], eps)) * scale;
}

FM_DISPATCH static void FM_FN(fastml_bce_grad)(const FM_T *FM_RESTRICT x,
                                               const FM_T *FM_RESTRICT t,
                                               const FM_T *FM_RESTRICT w, FM_T eps,
                                               FM_T scale, FM_T *FM_RESTRICT out,
                                               ptrdiff_t n) {
    if (w) FM_FN(fm_bce_grad_loop)(x, t, w, eps, scale, out, n, 1);
    else FM_FN(fm_bce_grad_loop)(x, t, w, eps, scale, out, n, 0);
}

FM_INLINE void FM_FN(fm_bce_logits_grad_loop)(const FM_T *FM_RESTRICT x,
                                              const FM_T *FM_RESTRICT t,
                                              const FM_T *FM_RESTRICT w,
                                              const FM_T *FM_RESTRICT pw, FM_T scale,
                                              FM_T *FM_RESTRICT out, ptrdiff_t n, int has_w,
                                              int has_pw) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = FM_W(FM_FN(fm_bce_logits_grad)(x[i], t[i], has_pw ? pw[i] : 0, has_pw))
                 * scale;
}

FM_DISPATCH static void FM_FN(fastml_bce_logits_grad)(const FM_T *FM_RESTRICT x,
                                                      const FM_T *FM_RESTRICT t,
                                                      const FM_T *FM_RESTRICT w,
                                                      const FM_T *FM_RESTRICT pw, FM_T scale,
                                                      FM_T *FM_RESTRICT out, ptrdiff_t n) {
#define FM_BCEL_GRAD(W, P) FM_FN(fm_bce_logits_grad_loop)(x, t, w, pw, scale, out, n, W, P)
    if (w) {
        if (pw) FM_BCEL_GRAD(1, 1); else FM_BCEL_GRAD(1, 0);
    } else {
        if (pw) FM_BCEL_GRAD(0, 1); else FM_BCEL_GRAD(0, 0);
    }
#undef FM_BCEL_GRAD
}

/* -exp(t) * scale (log_target) or -t * scale: the reference's t * -scale */
FM_DISPATCH static void FM_FN(fastml_kl_div_grad)(const FM_T *FM_RESTRICT t, FM_T scale,
                                                  FM_T *FM_RESTRICT out, ptrdiff_t n,
                                                  int log_target) {
    FM_T ns = -scale;
    if (log_target)
        for (ptrdiff_t i = 0; i < n; i++) out[i] = FM_EXP(t[i]) * ns;
    else
        for (ptrdiff_t i = 0; i < n; i++) out[i] = t[i] * ns;
}

/* --------------------------------------------------------------- GELU / SiLU */
/* The double helpers of _kernels.h per element, rounded once to FM_T. approx_tanh picks
 * GELU's tanh approximation; g * f'(x) is a double product, as in the reference. */
FM_DISPATCH static void FM_FN(fastml_gelu)(const FM_T *FM_RESTRICT x, FM_T *FM_RESTRICT out, ptrdiff_t n,
                               int approx_tanh) {
    if (approx_tanh)
        for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (FM_T)fm_gelu_tanh_d((double)x[i], sizeof(FM_T) == 8);
    else
        for (ptrdiff_t i = 0; i < n; i++) out[i] = (FM_T)fm_gelu_d((double)x[i]);
}

FM_DISPATCH static void FM_FN(fastml_gelu_backward)(const FM_T *FM_RESTRICT g, const FM_T *FM_RESTRICT x,
                                        FM_T *FM_RESTRICT out, ptrdiff_t n, int approx_tanh) {
    if (approx_tanh)
        for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (FM_T)((double)g[i] * fm_gelu_tanh_grad_d((double)x[i]));
    else
        for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (FM_T)((double)g[i] * fm_gelu_grad_d((double)x[i]));
}

FM_DISPATCH static void FM_FN(fastml_silu)(const FM_T *FM_RESTRICT x, FM_T *FM_RESTRICT out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (FM_T)fm_silu_d((double)x[i]);
}

FM_DISPATCH static void FM_FN(fastml_silu_backward)(const FM_T *FM_RESTRICT g, const FM_T *FM_RESTRICT x,
                                        FM_T *FM_RESTRICT out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = (FM_T)((double)g[i] * fm_silu_grad_d((double)x[i]));
}

#undef FM_W
#undef FM_LOSS_BODY
#undef FM_LOSS_BLOCK
#undef FM_LOG1P
#undef FM_LOG
#pragma GCC pop_options

#undef FM_EXP
#undef FM_L

/* ----------------------------------------------------------------- optimizers */
/* One Adam / AdamW update, in place, in the reference's order of operations: maximize is
 * sign = -1; decoupled weight decay multiplies param by decay (1 exactly when unused);
 * coupled adds wd * param to the gradient. The flags are literals at the two call sites
 * below, so each combination compiles to its own branch-free vector loop. */
FM_INLINE void FM_FN(fm_adam)(FM_T *FM_RESTRICT param, const FM_T *FM_RESTRICT grad,
                              FM_T *FM_RESTRICT m, FM_T *FM_RESTRICT v,
                              FM_T *FM_RESTRICT vmax, ptrdiff_t n, FM_T sign, FM_T b1c,
                              FM_T b2, FM_T b2c, FM_T bc2, FM_T eps, FM_T step_size, FM_T wd,
                              FM_T decay, int coupled, int amsgrad) {
    for (ptrdiff_t i = 0; i < n; i++) {
        FM_T g = sign * grad[i];
        FM_T p = param[i] * decay;
        if (coupled) g = g + wd * p;
        FM_T mi = m[i] + b1c * (g - m[i]);
        FM_T s = v[i] * b2 + b2c * g * g;
        m[i] = mi;
        v[i] = s;
        if (amsgrad) {  /* NaN-propagating max, as np.maximum */
            FM_T vm = vmax[i];
            s = (vm >= s || vm != vm) ? vm : s;
            vmax[i] = s;
        }
        param[i] = p - step_size * (mi / (FM_FN(fm_sqrt)(s) / bc2 + eps));
    }
}

FM_DISPATCH static void FM_FN(fastml_adam)(FM_T *FM_RESTRICT param,
                                           const FM_T *FM_RESTRICT grad, FM_T *FM_RESTRICT m,
                                           FM_T *FM_RESTRICT v, FM_T *FM_RESTRICT vmax,
                                           ptrdiff_t n, FM_T sign, FM_T b1c, FM_T b2, FM_T b2c,
                                           FM_T bc2, FM_T eps, FM_T step_size, FM_T wd,
                                           FM_T decay, int coupled, int amsgrad) {
#define FM_ADAM_CASE(C, A) FM_FN(fm_adam)(param, grad, m, v, vmax, n, sign, b1c, b2, b2c, \
                                          bc2, eps, step_size, wd, decay, C, A)
    if (coupled) {
        if (amsgrad) FM_ADAM_CASE(1, 1); else FM_ADAM_CASE(1, 0);
    } else {
        if (amsgrad) FM_ADAM_CASE(0, 1); else FM_ADAM_CASE(0, 0);
    }
#undef FM_ADAM_CASE
}

/* One RMSprop update, in place, in the reference's order of operations: sign, alphac =
 * 1 - alpha; buf is touched only with momentum and gavg only when centered. The flags are
 * literals at the call sites below: one branch-free vector loop per combination. */
FM_INLINE void FM_FN(fm_rmsprop)(FM_T *FM_RESTRICT param, const FM_T *FM_RESTRICT grad,
                                 FM_T *FM_RESTRICT sq, FM_T *FM_RESTRICT buf,
                                 FM_T *FM_RESTRICT gavg, ptrdiff_t n, FM_T sign, FM_T wd,
                                 FM_T alpha, FM_T alphac, FM_T lr, FM_T eps, FM_T mom,
                                 int coupled, int centered, int momentum) {
    for (ptrdiff_t i = 0; i < n; i++) {
        FM_T p = param[i];
        FM_T g = sign * grad[i];
        if (coupled) g = g + wd * p;
        FM_T s = sq[i] * alpha + alphac * g * g;
        sq[i] = s;
        if (centered) {
            FM_T a = gavg[i] + alphac * (g - gavg[i]);
            gavg[i] = a;
            s = s - a * a;
        }
        FM_T avg = FM_FN(fm_sqrt)(s) + eps;
        if (momentum) {
            FM_T b = buf[i] * mom + g / avg;
            buf[i] = b;
            param[i] = p - lr * b;
        } else {
            param[i] = p - lr * (g / avg);
        }
    }
}

FM_DISPATCH static void FM_FN(fastml_rmsprop)(FM_T *FM_RESTRICT param,
                                              const FM_T *FM_RESTRICT grad,
                                              FM_T *FM_RESTRICT sq, FM_T *FM_RESTRICT buf,
                                              FM_T *FM_RESTRICT gavg, ptrdiff_t n, FM_T sign,
                                              FM_T wd, FM_T alpha, FM_T alphac, FM_T lr,
                                              FM_T eps, FM_T mom, int coupled, int centered,
                                              int momentum) {
#define FM_RMSPROP_CASE(W, C, M) FM_FN(fm_rmsprop)(param, grad, sq, buf, gavg, n, sign, wd, \
                                                   alpha, alphac, lr, eps, mom, W, C, M)
#define FM_RMSPROP_MOM(W, C) \
    do { if (momentum) FM_RMSPROP_CASE(W, C, 1); else FM_RMSPROP_CASE(W, C, 0); } while (0)
    if (coupled) {
        if (centered) FM_RMSPROP_MOM(1, 1); else FM_RMSPROP_MOM(1, 0);
    } else {
        if (centered) FM_RMSPROP_MOM(0, 1); else FM_RMSPROP_MOM(0, 0);
    }
#undef FM_RMSPROP_MOM
#undef FM_RMSPROP_CASE
}

/* One dense Adagrad update, in place: clr is the decayed learning rate; coupled weight
 * decay is a literal flag at the two call sites. */
FM_INLINE void FM_FN(fm_adagrad)(FM_T *FM_RESTRICT param, const FM_T *FM_RESTRICT grad,
                                 FM_T *FM_RESTRICT sum, ptrdiff_t n, FM_T sign, FM_T wd,
                                 FM_T clr, FM_T eps, int coupled) {
    for (ptrdiff_t i = 0; i < n; i++) {
        FM_T p = param[i];
        FM_T g = sign * grad[i];
        if (coupled) g = g + wd * p;
        FM_T s = sum[i] + g * g;
        sum[i] = s;
        param[i] = p - clr * (g / (FM_FN(fm_sqrt)(s) + eps));
    }
}

FM_DISPATCH static void FM_FN(fastml_adagrad)(FM_T *FM_RESTRICT param,
                                              const FM_T *FM_RESTRICT grad,
                                              FM_T *FM_RESTRICT sum, ptrdiff_t n, FM_T sign,
                                              FM_T wd, FM_T clr, FM_T eps, int coupled) {
    if (coupled)
        FM_FN(fm_adagrad)(param, grad, sum, n, sign, wd, clr, eps, 1);
    else
        FM_FN(fm_adagrad)(param, grad, sum, n, sign, wd, clr, eps, 0);
}
