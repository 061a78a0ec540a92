/* Max pooling with windows that tile the map (kernel == stride, no padding, no dilation), on the CPU.
 *
 * The maps are [N, H, W, C] in memory (channels_last; an NCHW map is the same with N*C maps of C = 1).
 * Forward writes the maximum of each window and, as one byte, its position in the window (row-major). The
 * first maximum wins and a NaN always wins (the later of two NaNs), as in PyTorch's max_pool2d, so the
 * gradient goes where PyTorch sends it; on 0/1 spikes most windows tie.
 *
 * Backward writes dL/dx once, densely: each element gets its window's gradient if it is the window's chosen
 * position, else 0. PyTorch's backward zero-fills dL/dx and then scatters into it through 8-byte indices,
 * two passes over the largest tensor of the layer (bench/bench_train_step.py measures the difference).
 * Calls handle rows [lo, hi) of the N*Ho output rows (forward) or N*H input rows (backward), so that Python
 * can split the work over threads.
 */
#include <math.h>
#include <stdint.h>

#define BLOCK 64 /* channels per inner loop */

#define DEFINE_POOL(TYPE, SUFFIX)                                                                      \
void max_pool_forward_##SUFFIX(const TYPE *x, TYPE *y, uint8_t *pos, int64_t H, int64_t W, int64_t C,     \
                               int64_t kh, int64_t kw, int64_t lo, int64_t hi) {                        \
    const int64_t Ho = H / kh, Wo = W / kw;                                                             \
    for (int64_t r = lo; r < hi; r++) {               /* output row r: map n = r / Ho, row oh = r % Ho */ \
        const TYPE *xr = x + ((r / Ho) * H + (r % Ho) * kh) * W * C;                                     \
        TYPE *yr = y + r * Wo * C;                                                                      \
        uint8_t *pr = pos + r * Wo * C;                                                                 \
        for (int64_t ow = 0; ow < Wo; ow++) {                                                           \
            const TYPE *xw = xr + ow * kw * C;                                                          \
            TYPE *yw = yr + ow * C;                                                                     \
            uint8_t *pw = pr + ow * C;                                                                  \
            for (int64_t c0 = 0; c0 < C; c0 += BLOCK) {  /* a block of channels, kept in registers/L1 */  \
                const int64_t n = C - c0 < BLOCK ? C - c0 : BLOCK;                                      \
                TYPE best[BLOCK];                                                                       \
                int32_t at[BLOCK];                                                                      \
                for (int64_t c = 0; c < n; c++) { best[c] = xw[c0 + c]; at[c] = 0; }                    \
                for (int64_t i = 0; i < kh; i++)                                                        \
                    for (int64_t j = 0; j < kw; j++) {                                                  \
                        const TYPE *xe = xw + (i * W + j) * C + c0;                                     \
                        const int32_t p = (int32_t)(i * kw + j);                                        \
                        _Pragma("omp simd")                                                             \
                        for (int64_t c = 0; c < n; c++) {                                               \
                            const int take = (xe[c] > best[c]) | (xe[c] != xe[c]);  /* NaN != NaN */    \
                            best[c] = take ? xe[c] : best[c];                                           \
                            at[c] = take ? p : at[c];                                                   \
                        }                                                                               \
                    }                                                                                   \
                for (int64_t c = 0; c < n; c++) { yw[c0 + c] = best[c]; pw[c0 + c] = (uint8_t)at[c]; }  \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
void max_pool_backward_##SUFFIX(const TYPE *grad_y, const uint8_t *pos, TYPE *grad_x, int64_t H,          \
                                int64_t W, int64_t C, int64_t kh, int64_t kw, int64_t lo, int64_t hi) {  \
    const int64_t Ho = H / kh, Wo = W / kw;                                                             \
    for (int64_t r = lo; r < hi; r++) {               /* input row r: map n = r / H, row h = r % H */   \
        const int64_t n = r / H, h = r % H, oh = h / kh;                                                \
        TYPE *gx = grad_x + r * W * C;                                                                  \
        if (oh >= Ho) {                               /* rows below the last window get no gradient */  \
            for (int64_t e = 0; e < W * C; e++) gx[e] = 0;                                              \
            continue;                                                                                   \
        }                                                                                               \
        const TYPE *gy = grad_y + (n * Ho + oh) * Wo * C;                                               \
        const uint8_t *py = pos + (n * Ho + oh) * Wo * C;                                               \
        for (int64_t w = 0; w < W; w++) {                                                               \
            const int64_t ow = w / kw;                                                                  \
            TYPE *ge = gx + w * C;                                                                      \
            if (ow >= Wo) { for (int64_t c = 0; c < C; c++) ge[c] = 0; continue; }                      \
            const uint8_t p = (uint8_t)((h % kh) * kw + w % kw);                                        \
            const TYPE *g = gy + ow * C;                                                                \
            const uint8_t *q = py + ow * C;                                                             \
            for (int64_t c = 0; c < C; c++) ge[c] = q[c] == p ? g[c] : 0;                               \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE_POOL(float, f32)
DEFINE_POOL(double, f64)
