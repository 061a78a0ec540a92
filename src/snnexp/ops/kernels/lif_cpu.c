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
#include "lif_cpu_body.h"
#undef SUFFIX
#undef TYPE
/* BLOCK, for kernels/cpu.py (which tiles BN's rows for a block to read in place, norm_rows) */
int64_t lif_block(void) { return BLOCK; }
#endif
#ifndef SNNEXP_ONLY_F32
#define TYPE double
#define SUFFIX f64
#include "lif_cpu_body.h"
#undef SUFFIX
#undef TYPE
#endif
