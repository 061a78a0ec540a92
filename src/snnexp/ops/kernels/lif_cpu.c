/* Fused multi-step LIF / IF on the CPU: one pass over the time steps forward, one backward.
 *
 * The maths is that of snnexp.nn.neurons.functional.lif_multistep_reference (the definition; tests compare
 * the two) and the backward written out in snnexp/ops/fused.py. Input is time-major [T, N] (N = all
 * other dims), contiguous, step t at x + t * x_step: x_step = N, or 0 for one input [N] at every step (direct
 * coding), whose gradient is then the sum over the steps, [N]. A call handles the neurons [lo, hi), so that
 * Python can split N over threads.
 *
 * Forward reads X and writes only the spikes. Backward reads X again and the gradient at the spikes: for
 * a block of neurons it recomputes H[t] and V[t] into a buffer of at most 4 MiB a thread, then runs back
 * in time. Nothing but X (which exists anyway) is kept between forward and backward, and each tensor is
 * touched once per pass: the op moves 2 tensors forward and 3 backward, the least it can.
 *
 * lif_pool_forward / lif_pool_backward are the same neurons followed by max pooling with tiling windows
 * (snnexp/ops/pooled.py): the forward pools each row of windows from a small buffer of spikes, the backward
 * gathers the gradient at the spikes from the pool's, so the layer's dense spikes and dL/dspikes never exist.
 *
 * With `norm` (snnexp/ops/normalised.py), the neurons' input is BN(X) = X alpha[c] + beta[c] per channel c,
 * formed on the fly from X (BN's output is never written); the backward then writes dL/dBN(X) where it wrote dL/dX,
 * and adds up per channel sum dL/dBN(X) and sum dL/dBN(X) x_hat, x_hat = (X - mean) invstd, from which
 * norm_input_grad makes dL/dX in place. norm is 4 rows, ld apart (alpha, beta, mean, invstd per channel; tiled for
 * inner == 1, see norm_rows); the channel of element e of a step is (e / inner) % nc (inner = H * W for NCHW maps,
 * 1 for channels_last maps and feature vectors).
 *
 * Compiled once per machine by kernels/cpu.py with -ffp-contract=off, so that the arithmetic is
 * PyTorch's eager arithmetic op for op and the spikes equal the reference's exactly.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum { SG_ATAN = 0, SG_SIGMOID = 1, SG_RECT = 2, SG_TRIANGLE = 3, SG_FAST_SIGMOID = 4 };
enum { LEAK_NONE = 0, LEAK_DECAY_INPUT = 1, LEAK_PLAIN = 2 }; /* IF; H = V + (X - (V - L))/tau; H = V - (V - L)/tau + X */

/* Neurons per inner loop. Each step of a block reads and writes a run of BLOCK contiguous values, T runs N apart:
 * the longer the runs, the better the hardware prefetcher streams them (4096 was faster than 256 and 2048 on the
 * PLIF op: docs/performance.md, "Figures behind the code"). The backward's blocks shrink with T
 * (backward_block_size) to bound its scratch, at no measurable cost. The scratch is on the heap, not the stack. */
#define BLOCK 4096
/* A backward's scratch per thread, in rows of one block: H[t] and V[t-1] of the block over time (2T + 1 rows), then
 * backward_block's 10 rows of per-neuron state; `extra` more rows (the pool backward's gathered gradient). */
#define SCRATCH_ROWS(T, extra) (2 * (T) + 11 + (extra))
#define SCRATCH_VALUES (1 << 20) /* at most, unless that leaves fewer than 64 neurons a block: 4 MiB of float32 */

/* The backward's neurons per block for a scratch of `rows` rows: BLOCK, or as many (a multiple of 64) as keep the
 * scratch within SCRATCH_VALUES: at T = 1000 a block of BLOCK would take 32 MiB of scratch a thread, twice the
 * input of a [1000, 32, 128] layer. Its speed at T = 100-1000 was level with BLOCK's. */
static int64_t backward_block_size(int64_t rows) {
    const int64_t bs = SCRATCH_VALUES / rows / 64 * 64;
    return bs > BLOCK ? BLOCK : bs < 64 ? 64 : bs;
}

/* e^x for x <= 0 in float32, for the sigmoid surrogate's backward (lif_cpu_body.h, sigmoid_grad). Our own because
 * libm's exp is a call that GCC vectorises only under -ffast-math (which the kernels must not use: it would change
 * the spikes), and with it the float backward of that surrogate ran scalar, twice as slow as with atan. Measured, the
 * backward of a fused BN-SN layer [16, 8, 16, 128, 128] float32, Sigmoid(4), min of 7, 2 shared cores: 347-374 ms
 * with libm's exp, 183-193 ms with this (atan: 164-174 ms). Cephes' expf: e^x = 2^n e^r, n = x / ln 2 rounded to
 * the nearest integer by adding and taking away 1.5 * 2^23, r = x - n ln 2 in [-ln2 / 2, ln2 / 2] (ln 2 in two
 * parts, the first 9 bits long, so that n times it is exact), e^r = 1 + r + r^2 p(r) with Cephes' degree-5 p, and 2^n
 * put together in the exponent bits. Branch-free, so that loops calling it vectorise. Relative error below 1e-7
 * (8.3e-8 over every float in [-87, 0], against double exp); the surrogate from it is within 4e-7 of the exact value
 * (tests/test_fused.py). 0 below x = -87 (e^x < 2^-125). */
static inline float exp_neg_f32(float x) {
    const float big = 12582912.0f;                /* 1.5 * 2^23: t's last bits are the integer n, two's complement */
    const float t = x * 1.44269504088896341f + big, n = t - big;       /* x log2(e) rounded to the nearest integer */
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;      /* x - n ln 2 */
    float p = 1.9875691500e-4f;                                       /* e^r = 1 + r + r^2 p(r) */
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = p * r * r + r + 1;
    uint32_t bits;                                /* 2^n: exponent field n + 127, from t's bits (no float-int */
    __builtin_memcpy(&bits, &t, 4);               /* conversion, which could overflow for x far below -87) */
    bits = (bits + 127) << 23;
    float two_n;
    __builtin_memcpy(&two_n, &bits, 4);
    return x < -87.0f ? 0 : er * two_n;
}

/* pool_cpu.c, linked into the same library: the joint forward below pools its spikes with it */
void max_pool_forward_f32(const float *x, float *y, uint8_t *pos, int64_t H, int64_t W, int64_t C, int64_t kh,
                          int64_t kw, int64_t lo, int64_t hi);
void max_pool_forward_f64(const double *x, double *y, uint8_t *pos, int64_t H, int64_t W, int64_t C, int64_t kh,
                          int64_t kw, int64_t lo, int64_t hi);

/* backward_range with the surrogate and want_tau as constants, so that each combination gets its own
 * vectorised loop (faster: docs/performance.md, "Figures behind the code"). */
#define BACKWARD_CALL(SUFFIX, KIND, TAU)                                                               \
    backward_range_##SUFFIX(KIND, TAU, x, grad_s, grad_x, h_buf, bs, T, N, x_step, lo, hi, leak, tau_inv, \
                            v_th, v_reset, soft_reset, detach_reset, sg_a, sg_b, norm, ld, nc, inner, sums)
#define BACKWARD_RANGE(SUFFIX, KIND) BY_FLAGS(BACKWARD_CALL, SUFFIX, KIND)

/* CALL(SUFFIX, KIND, want_tau) with want_tau as a constant */
#define BY_FLAGS(CALL, SUFFIX, KIND) (want_tau ? CALL(SUFFIX, KIND, 1) : CALL(SUFFIX, KIND, 0))

/* acc = RANGE(SUFFIX, kind) for the surrogate kind sg_kind, each kind its own inlined loop */
#define FOR_SURROGATE(RANGE, SUFFIX)                                                                   \
    switch (sg_kind) {                                                                                  \
    case SG_ATAN: acc = RANGE(SUFFIX, SG_ATAN); break;                                                  \
    case SG_SIGMOID: acc = RANGE(SUFFIX, SG_SIGMOID); break;                                            \
    case SG_RECT: acc = RANGE(SUFFIX, SG_RECT); break;                                                  \
    case SG_TRIANGLE: acc = RANGE(SUFFIX, SG_TRIANGLE); break;                                          \
    default: acc = RANGE(SUFFIX, SG_FAST_SIGMOID); break;                                               \
    }

#define POOL_BACKWARD_CALL(SUFFIX, KIND, TAU)                                                          \
    pool_backward_range_##SUFFIX(KIND, TAU, x, grad_y, pos, grad_x, h_buf, bs, gs, T, N, x_step, H, W, C, kh, \
                                 kw, lo, hi, leak, tau_inv, v_th, v_reset, soft_reset, detach_reset, sg_a, sg_b, \
                                 norm, ld, nc, inner, sums)
#define POOL_BACKWARD_RANGE(SUFFIX, KIND) BY_FLAGS(POOL_BACKWARD_CALL, SUFFIX, KIND)

/* The functions themselves, for float and for double: lif_cpu_body.h. */

/* kernels/cpu.py compiles the two as units of their own, in parallel (the float and the double halves of the build) */
#ifndef SNNEXP_ONLY_F64
#define TYPE float
#define SUFFIX f32
#define EXP_NEG exp_neg_f32 /* e^x, x <= 0, for the sigmoid surrogate; double keeps libm exp */
#include "lif_cpu_body.h"
#undef EXP_NEG
#undef SUFFIX
#undef TYPE
/* BLOCK, for kernels/cpu.py (which tiles BN's rows for a block to read in place, norm_rows) */
int64_t lif_block(void) { return BLOCK; }
#endif
#ifndef SNNEXP_ONLY_F32
#define TYPE double
#define SUFFIX f64
#define EXP_NEG exp
#include "lif_cpu_body.h"
#undef EXP_NEG
#undef SUFFIX
#undef TYPE
#endif
