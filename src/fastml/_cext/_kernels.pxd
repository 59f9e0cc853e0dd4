# The vectorized, CPU-dispatched loops of _kernels.h, with fused-type wrappers
# that pick the float32 / float64 version.
from cython cimport floating


cdef extern from "_kernels.h" nogil:
    ctypedef struct fm_row_lse:
        double m        # the row max
        double log_s    # log(sum(exp(x - m)))
        double wx       # sum(w * x), when asked for

    void fastml_sigmoid_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_sigmoid_f64(const double* x, double* out, Py_ssize_t n)
    void fastml_tanh_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_tanh_f64(const double* x, double* out, Py_ssize_t n)
    void fastml_softmax_row_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_softmax_row_f64(const double* x, double* out, Py_ssize_t n)
    void fastml_log_softmax_row_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_log_softmax_row_f64(const double* x, double* out, Py_ssize_t n)
    void fastml_softmax_backward_row_f32(const float* g, const float* y, float* out,
                                         Py_ssize_t n)
    void fastml_softmax_backward_row_f64(const double* g, const double* y, double* out,
                                         Py_ssize_t n)
    void fastml_log_softmax_backward_row_f32(const float* g, const float* y, float* out,
                                             Py_ssize_t n)
    void fastml_log_softmax_backward_row_f64(const double* g, const double* y, double* out,
                                             Py_ssize_t n)
    fm_row_lse fastml_ce_row_lse_f32(const float* x, const float* w, Py_ssize_t n,
                                     int want_wx)
    fm_row_lse fastml_ce_row_lse_f64(const double* x, const double* w, Py_ssize_t n,
                                     int want_wx)
    void fastml_ce_grad_row_f32(const float* x, const float* w, Py_ssize_t n, Py_ssize_t t,
                                double a, double b, double sw, double coef, float* out)
    void fastml_ce_grad_row_f64(const double* x, const double* w, Py_ssize_t n, Py_ssize_t t,
                                double a, double b, double sw, double coef, double* out)
    fm_row_lse fastml_ce_loss_grad_row_f32(const float* x, const float* w, Py_ssize_t n,
                                           Py_ssize_t t, int want_wx, double a, double b,
                                           double sw, double coef, float* out)
    fm_row_lse fastml_ce_loss_grad_row_f64(const double* x, const double* w, Py_ssize_t n,
                                           Py_ssize_t t, int want_wx, double a, double b,
                                           double sw, double coef, double* out)

    double fastml_bce_f32(const float* x, const float* t, const float* w, float* out,
                          Py_ssize_t n)
    double fastml_bce_f64(const double* x, const double* t, const double* w, double* out,
                          Py_ssize_t n)
    void fastml_bce_grad_f32(const float* x, const float* t, const float* w, float eps,
                             float scale, float* out, Py_ssize_t n)
    void fastml_bce_grad_f64(const double* x, const double* t, const double* w, double eps,
                             double scale, double* out, Py_ssize_t n)
    double fastml_bce_logits_f32(const float* x, const float* t, const float* w,
                                 const float* pw, float* out, Py_ssize_t n)
    double fastml_bce_logits_f64(const double* x, const double* t, const double* w,
                                 const double* pw, double* out, Py_ssize_t n)
    void fastml_bce_logits_grad_f32(const float* x, const float* t, const float* w,
                                    const float* pw, float scale, float* out, Py_ssize_t n)
    void fastml_bce_logits_grad_f64(const double* x, const double* t, const double* w,
                                    const double* pw, double scale, double* out,
                                    Py_ssize_t n)
    double fastml_mse_sum_f32(const float* x, const float* t, Py_ssize_t n)
    double fastml_mse_sum_f64(const double* x, const double* t, Py_ssize_t n)
    double fastml_l1_sum_f32(const float* x, const float* t, Py_ssize_t n)
    double fastml_l1_sum_f64(const double* x, const double* t, Py_ssize_t n)
    double fastml_huber_sum_f32(const float* x, const float* t, float delta, Py_ssize_t n)
    double fastml_huber_sum_f64(const double* x, const double* t, double delta, Py_ssize_t n)
    double fastml_kl_div_f32(const float* x, const float* t, float* out, Py_ssize_t n,
                             int log_target)
    double fastml_kl_div_f64(const double* x, const double* t, double* out, Py_ssize_t n,
                             int log_target)
    void fastml_kl_div_grad_f32(const float* t, float scale, float* out, Py_ssize_t n,
                                int log_target)
    void fastml_kl_div_grad_f64(const double* t, double scale, double* out, Py_ssize_t n,
                                int log_target)

    void fastml_gelu_f32(const float* x, float* out, Py_ssize_t n, int approx_tanh)
    void fastml_gelu_f64(const double* x, double* out, Py_ssize_t n, int approx_tanh)
    void fastml_gelu_backward_f32(const float* g, const float* x, float* out, Py_ssize_t n,
                                  int approx_tanh)
    void fastml_gelu_backward_f64(const double* g, const double* x, double* out,
                                  Py_ssize_t n, int approx_tanh)
    void fastml_silu_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_silu_f64(const double* x, double* out, Py_ssize_t n)
    void fastml_silu_backward_f32(const float* g, const float* x, float* out, Py_ssize_t n)
    void fastml_silu_backward_f64(const double* g, const double* x, double* out,
                                  Py_ssize_t n)

    void fastml_adam_f32(float* param, const float* grad, float* m, float* v, float* vmax,
                         Py_ssize_t n, float sign, float b1c, float b2, float b2c, float bc2,
                         float eps, float step_size, float wd, float decay, int coupled,
                         int amsgrad)
    void fastml_adam_f64(double* param, const double* grad, double* m, double* v,
                         double* vmax, Py_ssize_t n, double sign, double b1c, double b2,
                         double b2c, double bc2, double eps, double step_size, double wd,
                         double decay, int coupled, int amsgrad)
    void fastml_rmsprop_f32(float* param, const float* grad, float* sq, float* buf,
                            float* gavg, Py_ssize_t n, float sign, float wd, float alpha,
                            float alphac, float lr, float eps, float mom, int coupled,
                            int centered, int momentum)
    void fastml_rmsprop_f64(double* param, const double* grad, double* sq, double* buf,
                            double* gavg, Py_ssize_t n, double sign, double wd, double alpha,
                            double alphac, double lr, double eps, double mom, int coupled,
                            int centered, int momentum)
    void fastml_adagrad_f32(float* param, const float* grad, float* sum, Py_ssize_t n,
                            float sign, float wd, float clr, float eps, int coupled)
    void fastml_adagrad_f64(double* param, const double* grad, double* sum, Py_ssize_t n,
                            double sign, double wd, double clr, double eps, int coupled)


    void fastml_gelu_fast_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_gelu_backward_fast_f32(const float* g, const float* x, float* out,
                                       Py_ssize_t n)
    void fastml_silu_fast_f32(const float* x, float* out, Py_ssize_t n)
    void fastml_silu_backward_fast_f32(const float* g, const float* x, float* out,
                                       Py_ssize_t n)

    double fastml_pairwise_f32(const float* a, Py_ssize_t n)
    double fastml_pairwise_f64(const double* a, Py_ssize_t n)

    void fastml_layer_norm_rows_f32(const float* x, const float* w, const float* b,
                                    double eps, float* out, Py_ssize_t lo, Py_ssize_t hi,
                                    Py_ssize_t n)
    void fastml_layer_norm_rows_f64(const double* x, const double* w, const double* b,
                                    double eps, double* out, Py_ssize_t lo, Py_ssize_t hi,
                                    Py_ssize_t n)
    void fastml_layer_norm_backward_rows_f32(const float* g, const float* x, const float* w,
                                             double eps, float* gx, Py_ssize_t lo,
                                             Py_ssize_t hi, Py_ssize_t n, double* colw,
                                             double* colb)
    void fastml_layer_norm_backward_rows_f64(const double* g, const double* x,
                                             const double* w, double eps, double* gx,
                                             Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t n,
                                             double* colw, double* colb)
    void fastml_bn_channel_sums_f32(const float* x, const float* g, Py_ssize_t N,
                                    Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, double sh,
                                    double* res)
    void fastml_bn_channel_sums_f64(const double* x, const double* g, Py_ssize_t N,
                                    Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, double sh,
                                    double* res)
    void fastml_bn_apply_plane_f32(const float* x, double a, double b, float* out,
                                   Py_ssize_t L)
    void fastml_bn_apply_plane_f64(const double* x, double a, double b, double* out,
                                   Py_ssize_t L)
    void fastml_bn_backward_apply_plane_f32(const float* g, const float* x, double mu,
                                            double inv, double k, double a, double b,
                                            float* out, Py_ssize_t L)
    void fastml_bn_backward_apply_plane_f64(const double* g, const double* x, double mu,
                                            double inv, double k, double a, double b,
                                            double* out, Py_ssize_t L)


cdef inline void sigmoid_k(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_sigmoid_f32(x, out, n)
    else:
        fastml_sigmoid_f64(x, out, n)


cdef inline void gelu_k(const floating* x, floating* out, Py_ssize_t n,
                        int approx_tanh) noexcept nogil:
    if floating is float:
        if approx_tanh:
            fastml_gelu_f32(x, out, n, approx_tanh)
        else:
            fastml_gelu_fast_f32(x, out, n)
    else:
        fastml_gelu_f64(x, out, n, approx_tanh)


cdef inline void gelu_backward_k(const floating* g, const floating* x, floating* out,
                                 Py_ssize_t n, int approx_tanh) noexcept nogil:
    if floating is float:
        if approx_tanh:
            fastml_gelu_backward_f32(g, x, out, n, approx_tanh)
        else:
            fastml_gelu_backward_fast_f32(g, x, out, n)
    else:
        fastml_gelu_backward_f64(g, x, out, n, approx_tanh)


cdef inline void silu_k(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_silu_fast_f32(x, out, n)
    else:
        fastml_silu_f64(x, out, n)


cdef inline void silu_backward_k(const floating* g, const floating* x, floating* out,
                                 Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_silu_backward_fast_f32(g, x, out, n)
    else:
        fastml_silu_backward_f64(g, x, out, n)


cdef inline void tanh_k(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_tanh_f32(x, out, n)
    else:
        fastml_tanh_f64(x, out, n)


cdef inline void softmax_row(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_softmax_row_f32(x, out, n)
    else:
        fastml_softmax_row_f64(x, out, n)


cdef inline void log_softmax_row(const floating* x, floating* out,
                                 Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_log_softmax_row_f32(x, out, n)
    else:
        fastml_log_softmax_row_f64(x, out, n)


cdef inline void softmax_backward_row(const floating* g, const floating* y, floating* out,
                                      Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_softmax_backward_row_f32(g, y, out, n)
    else:
        fastml_softmax_backward_row_f64(g, y, out, n)


cdef inline void log_softmax_backward_row(const floating* g, const floating* y, floating* out,
                                          Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_log_softmax_backward_row_f32(g, y, out, n)
    else:
        fastml_log_softmax_backward_row_f64(g, y, out, n)


cdef inline fm_row_lse ce_row_lse(const floating* x, const floating* w, Py_ssize_t n,
                                  bint want_wx) noexcept nogil:
    if floating is float:
        return fastml_ce_row_lse_f32(x, w, n, want_wx)
    else:
        return fastml_ce_row_lse_f64(x, w, n, want_wx)


cdef inline void ce_grad_row(const floating* x, const floating* w, Py_ssize_t n, Py_ssize_t t,
                             double a, double b, double sw, double coef,
                             floating* out) noexcept nogil:
    if floating is float:
        fastml_ce_grad_row_f32(x, w, n, t, a, b, sw, coef, out)
    else:
        fastml_ce_grad_row_f64(x, w, n, t, a, b, sw, coef, out)


cdef inline fm_row_lse ce_loss_grad_row(const floating* x, const floating* w, Py_ssize_t n,
                                        Py_ssize_t t, bint want_wx, double a, double b,
                                        double sw, double coef, floating* out) noexcept nogil:
    if floating is float:
        return fastml_ce_loss_grad_row_f32(x, w, n, t, want_wx, a, b, sw, coef, out)
    else:
        return fastml_ce_loss_grad_row_f64(x, w, n, t, want_wx, a, b, sw, coef, out)


cdef inline void layer_norm_rows(const floating* x, const floating* w, const floating* b,
                                 double eps, floating* out, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastml_layer_norm_rows_f32(x, w, b, eps, out, lo, hi, n)
    else:
        fastml_layer_norm_rows_f64(x, w, b, eps, out, lo, hi, n)


cdef inline void layer_norm_backward_rows(const floating* g, const floating* x,
                                          const floating* w, double eps, floating* gx,
                                          Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t n,
                                          double* colw, double* colb) noexcept nogil:
    if floating is float:
        fastml_layer_norm_backward_rows_f32(g, x, w, eps, gx, lo, hi, n, colw, colb)
    else:
        fastml_layer_norm_backward_rows_f64(g, x, w, eps, gx, lo, hi, n, colw, colb)


cdef inline void bn_channel_sums(const floating* x, const floating* g, Py_ssize_t N,
                                 Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, double sh,
                                 double* res) noexcept nogil:
    if floating is float:
        fastml_bn_channel_sums_f32(x, g, N, C, L, c, sh, res)
    else:
        fastml_bn_channel_sums_f64(x, g, N, C, L, c, sh, res)


cdef inline void bn_apply_plane(const floating* x, double a, double b, floating* out,
                                Py_ssize_t L) noexcept nogil:
    if floating is float:
        fastml_bn_apply_plane_f32(x, a, b, out, L)
    else:
        fastml_bn_apply_plane_f64(x, a, b, out, L)


cdef inline void bn_backward_apply_plane(const floating* g, const floating* x, double mu,
                                         double inv, double k, double a, double b,
                                         floating* out, Py_ssize_t L) noexcept nogil:
    if floating is float:
        fastml_bn_backward_apply_plane_f32(g, x, mu, inv, k, a, b, out, L)
    else:
        fastml_bn_backward_apply_plane_f64(g, x, mu, inv, k, a, b, out, L)


cdef inline double pairwise_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """NumPy's pairwise sum of a[:n] in double (bit for bit np.sum of the float64 row)."""
    if floating is float:
        return fastml_pairwise_f32(a, n)
    else:
        return fastml_pairwise_f64(a, n)
