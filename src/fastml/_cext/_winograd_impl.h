/* Type-generic loops of _winograd.h, included once with FM_T = float and once with
 * double. No include guard on purpose. */

/* even[u] = src[2u], odd[u] = src[2u + 1], u < n */
FM_INLINE void FM_FN(fm_split_columns)(const FM_T *FM_RESTRICT src, FM_T *FM_RESTRICT even,
                                       FM_T *FM_RESTRICT odd, ptrdiff_t n) {
    for (ptrdiff_t u = 0; u < n; u++) {
        even[u] = src[2 * u];
        odd[u] = src[2 * u + 1];
    }
}

/* The four parity planes p + k blk (k = 2 row parity + column parity, blk >= rows s)
 * of an h x w plane placed at (r0, c0) of a zero plane with `rows` rows of 2 s
 * columns per row parity; buf (2, rows, 2 s) is zero outside the plane's rows and
 * columns, which stay the same from plane to plane. */
FM_INLINE void FM_FN(fm_parity_planes)(const FM_T *FM_RESTRICT plane, ptrdiff_t h, ptrdiff_t w,
                                       ptrdiff_t r0, ptrdiff_t c0, ptrdiff_t rows, ptrdiff_t s,
                                       FM_T *FM_RESTRICT buf, FM_T *FM_RESTRICT p,
                                       ptrdiff_t blk) {
    ptrdiff_t half = rows * 2 * s;
    for (ptrdiff_t y = 0; y < h; y++) {
        ptrdiff_t r = r0 + y;
        memcpy(buf + (r & 1) * half + (r >> 1) * 2 * s + c0, plane + y * w,
               (size_t)w * sizeof(FM_T));
    }
    for (int q = 0; q < 2; q++)
        FM_FN(fm_split_columns)(buf + q * half, p + 2 * q * blk, p + (2 * q + 1) * blk,
                                rows * s);
}

/* v[xi vstride + t] = (B^T d B)[xi / 4][xi % 4] for the tiles t < tt of one plane whose
 * parity planes start at p (block length blk). */
FM_INLINE void FM_FN(fm_input_tiles)(const FM_T *FM_RESTRICT p, ptrdiff_t blk, ptrdiff_t s,
                                     FM_T *FM_RESTRICT v, ptrdiff_t vstride, ptrdiff_t tt) {
    const FM_T *e0 = p, *o0 = p + blk, *e1 = p + 2 * blk, *o1 = p + 3 * blk;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
    for (ptrdiff_t t = 0; t < tt; t++) {
        FM_T r[4][4];
        for (int a = 0; a < 4; a++) {  /* row a of the window: d[a][0..3] */
            const FM_T *e = (a & 1) ? e1 : e0, *o = (a & 1) ? o1 : o0;
            ptrdiff_t k = t + (a >> 1) * s;
            FM_T d0 = e[k], d1 = o[k], d2 = e[k + 1], d3 = o[k + 1];
            r[a][0] = d0 - d2;
            r[a][1] = d1 + d2;
            r[a][2] = d2 - d1;
            r[a][3] = d1 - d3;
        }
        for (int b = 0; b < 4; b++) {
            v[(0 + b) * vstride + t] = r[0][b] - r[2][b];
            v[(4 + b) * vstride + t] = r[1][b] + r[2][b];
            v[(8 + b) * vstride + t] = r[2][b] - r[1][b];
            v[(12 + b) * vstride + t] = r[1][b] - r[3][b];
        }
    }
}

/* v (16, nc, nb tt): the transformed tiles of x (nb, nc, h, w) padded by (ph, pw);
 * scratch holds 2 (th + 1) 2 s + 4 ((th + 1) s + 1) values. */
FM_DISPATCH static void FM_FN(fastml_winograd_input)(
        const FM_T *FM_RESTRICT x, ptrdiff_t nb, ptrdiff_t nc, ptrdiff_t h, ptrdiff_t w,
        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t th, ptrdiff_t s, FM_T *FM_RESTRICT v,
        FM_T *FM_RESTRICT scratch) {
    ptrdiff_t tt = th * s, blk = (th + 1) * s + 1, vstride = nc * nb * tt;
    FM_T *buf = scratch, *p = scratch + 2 * (th + 1) * 2 * s;
    memset(scratch, 0, (size_t)(2 * (th + 1) * 2 * s + 4 * blk) * sizeof(FM_T));
    for (ptrdiff_t n = 0; n < nb; n++)
        for (ptrdiff_t c = 0; c < nc; c++) {
            FM_FN(fm_parity_planes)(x + (n * nc + c) * h * w, h, w, ph, pw, th + 1, s, buf,
                                    p, blk);
            FM_FN(fm_input_tiles)(p, blk, s, v + c * nb * tt + n * tt, vstride, tt);
        }
}

/* out (nb, no, ho, wo) = A^T m A per tile of m (16, no, nb tt), plus bias[o] (bias may
 * be NULL); scratch holds 2 th 2 s values. Returns whether every tile's outputs (the
 * junk column's too) are finite: the largest exponent field, an integer max that
 * vectorizes with the loop. */
FM_DISPATCH static int FM_FN(fastml_winograd_output)(
        const FM_T *FM_RESTRICT m, ptrdiff_t nb, ptrdiff_t no, ptrdiff_t ho, ptrdiff_t wo,
        const FM_T *FM_RESTRICT bias, FM_T *FM_RESTRICT out, FM_T *FM_RESTRICT scratch) {
    ptrdiff_t th = (ho + 1) / 2, s = (wo + 1) / 2 + 1, tt = th * s, mstride = no * nb * tt;
    FM_T *q0 = scratch, *q1 = scratch + th * 2 * s;
    FM_I top = 0;
    for (ptrdiff_t n = 0; n < nb; n++)
        for (ptrdiff_t o = 0; o < no; o++) {
            const FM_T *mp = m + o * nb * tt + n * tt;
            FM_T bo = bias ? bias[o] : (FM_T)0;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
            for (ptrdiff_t t = 0; t < tt; t++) {
                FM_T z[2][4], y[4];
                for (int b = 0; b < 4; b++) {
                    FM_T m0 = mp[b * mstride + t], m1 = mp[(4 + b) * mstride + t];
                    FM_T m2 = mp[(8 + b) * mstride + t], m3 = mp[(12 + b) * mstride + t];
                    z[0][b] = m0 + m1 + m2;
                    z[1][b] = m1 - m2 - m3;
                }
                y[0] = z[0][0] + z[0][1] + z[0][2] + bo;
                y[1] = z[0][1] - z[0][2] - z[0][3] + bo;
                y[2] = z[1][0] + z[1][1] + z[1][2] + bo;
                y[3] = z[1][1] - z[1][2] - z[1][3] + bo;
                q0[2 * t] = y[0];
                q0[2 * t + 1] = y[1];
                q1[2 * t] = y[2];
                q1[2 * t + 1] = y[3];
                for (int k = 0; k < 4; k++) {
                    FM_I bits;
                    memcpy(&bits, y + k, sizeof bits);
                    bits &= FM_EXPONENT;
                    top = bits > top ? bits : top;
                }
            }
            FM_T *op = out + (n * no + o) * ho * wo;
            for (ptrdiff_t y = 0; y < ho; y++)
                memcpy(op + y * wo, ((y & 1) ? q1 : q0) + (y >> 1) * 2 * s,
                       (size_t)wo * sizeof(FM_T));
        }
    return top != FM_EXPONENT;
}

/* pg (16, no, nb tt) = A g A^T per 2x2 tile of g (nb, no, ho, wo) on the forward's
 * tile grid (zero beyond the plane and on the junk column): grad_weight's transform.
 * scratch holds 2 th 2 s + 4 th s values. */
FM_DISPATCH static void FM_FN(fastml_winograd_grad_output)(
        const FM_T *FM_RESTRICT g, ptrdiff_t nb, ptrdiff_t no, ptrdiff_t ho, ptrdiff_t wo,
        FM_T *FM_RESTRICT pg, FM_T *FM_RESTRICT scratch) {
    ptrdiff_t th = (ho + 1) / 2, s = (wo + 1) / 2 + 1, tt = th * s, pstride = no * nb * tt;
    FM_T *buf = scratch, *q = scratch + 2 * th * 2 * s;
    memset(scratch, 0, (size_t)(2 * th * 2 * s + 4 * tt) * sizeof(FM_T));
    for (ptrdiff_t n = 0; n < nb; n++)
        for (ptrdiff_t o = 0; o < no; o++) {
            FM_FN(fm_parity_planes)(g + (n * no + o) * ho * wo, ho, wo, 0, 0, th, s, buf, q, tt);
            FM_T *pp = pg + o * nb * tt + n * tt;
            const FM_T *g00 = q, *g01 = q + tt, *g10 = q + 2 * tt, *g11 = q + 3 * tt;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
            for (ptrdiff_t t = 0; t < tt; t++) {
                /* A g, A = [[1, 0], [1, 1], [1, -1], [0, -1]]; then (A g) A^T */
                FM_T a[4][2] = {{g00[t], g01[t]},
                                {g00[t] + g10[t], g01[t] + g11[t]},
                                {g00[t] - g10[t], g01[t] - g11[t]},
                                {-g10[t], -g11[t]}};
                for (int r = 0; r < 4; r++) {
                    pp[(4 * r) * pstride + t] = a[r][0];
                    pp[(4 * r + 1) * pstride + t] = a[r][0] + a[r][1];
                    pp[(4 * r + 2) * pstride + t] = a[r][0] - a[r][1];
                    pp[(4 * r + 3) * pstride + t] = -a[r][1];
                }
            }
        }
}
