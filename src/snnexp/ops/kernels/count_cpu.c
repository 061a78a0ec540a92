/* Spike counting for the activity counters of a test pass (snnexp/activity.py, `nonzero_counts`).
 *
 * One pass over rows [lo, hi) of an [N, F] matrix (dense rows) adds, for each column f, the entries that are not 0
 * to counts[f], and returns 1 if every entry it read is -1, 0 or 1 (spikes), else 0. A NaN counts as not 0 and is
 * no spike, as PyTorch's x != 0 and (x == 0) | (|x| == 1) say. The count and the check in one read of the layer's
 * input replace three passes of torch ops over it (bench/bench_test_pass.py). Python splits the rows over threads,
 * each with its own counts.
 */
#include <stdint.h>

#define DEFINE_COUNT(TYPE, SUFFIX)                                                                     \
int count_nonzero_##SUFFIX(const TYPE *x, int32_t *counts, int64_t F, int64_t lo, int64_t hi) {          \
    int spikes = 1;                                                                                    \
    for (int64_t r = lo; r < hi; r++) {                                                                \
        const TYPE *row = x + r * F;                                                                   \
        int ok = 1;                                                                                    \
        _Pragma("omp simd reduction(&:ok)")                                                            \
        for (int64_t f = 0; f < F; f++) {                                                              \
            const TYPE v = row[f];                                                                     \
            counts[f] += (v != 0);                                                                     \
            ok &= (v == 0) | (v == 1) | (v == -1);                                                     \
        }                                                                                              \
        spikes &= ok;                                                                                  \
    }                                                                                                  \
    return spikes;                                                                                     \
}

DEFINE_COUNT(float, f32)
DEFINE_COUNT(double, f64)
