/* Winograd F(2x2, 3x3) transforms of conv2d's 3x3 stride-1 path (backends/_conv.py
 * runs the GEMMs between them and documents the algorithm and its tile layout).
 *
 * Tiles are 2x2 outputs on a grid of th tile rows and s = tw + 1 tile columns, the last
 * of each row junk: then tile t = i s + j reads its 4x4 window from the padded plane's
 * four (row, column) parity planes at t, t + 1, t + s and t + s + 1, so each transform
 * is one flat loop over a plane's tiles with unit-stride loads and stores (compiled per
 * CPU like _kernels.h; ivdep: the 16 transformed planes are disjoint rows of one
 * array). A padded plane is built by copying its rows into a zeroed row-parity buffer
 * and splitting the columns by parity.
 */
#ifndef FASTML_WINOGRAD_H
#define FASTML_WINOGRAD_H
#include <string.h>
#include "_kernels.h"

#define FM_T float
#define FM_I int32_t
#define FM_SFX f32
#define FM_EXPONENT INT32_C(0x7F800000)
#include "_winograd_impl.h"
#undef FM_T
#undef FM_I
#undef FM_SFX
#undef FM_EXPONENT

#define FM_T double
#define FM_I int64_t
#define FM_SFX f64
#define FM_EXPONENT INT64_C(0x7FF0000000000000)
#include "_winograd_impl.h"
#undef FM_T
#undef FM_I
#undef FM_SFX
#undef FM_EXPONENT
#endif
