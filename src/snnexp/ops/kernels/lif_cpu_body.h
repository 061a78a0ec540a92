/* The body of lif_cpu.c for one floating-point type: included there once per type, with TYPE (float or double) and
 * SUFFIX (f32 or f64) defined; NAME(f) is f_f32 or f_f64. A header rather than a macro, so that compiler errors
 * point at their line and a debugger steps through it. lif_cpu.c's comment says what
 * the functions compute; the macros BACKWARD_RANGE, POOL_BACKWARD_RANGE and FOR_SURROGATE are defined there. */
#define NAME(f) NAME_(f, SUFFIX)
#define NAME_(f, suffix) NAME__(f, suffix)
#define NAME__(f, suffix) f##_##suffix

/* A neuron's settings, one record passed by pointer to every kernel that runs neurons (kernels/cpu.py mirrors it
 * with ctypes: LifParams; tests/test_fused.py checks the two field by field). Each kernel copies the fields into
 * locals of the same names first, which its body and the macros of lif_cpu.c use. */
typedef struct {
    int leak, soft_reset, detach_reset, sg_kind;  /* LEAK_*, bool, bool, SG_* */
    TYPE tau_inv, v_th, v_reset, sg_a, sg_b;
} NAME(lif_params);

#define LIF_PARAMS(r)                                                                                    \
    const int leak = (r)->leak, soft_reset = (r)->soft_reset, detach_reset = (r)->detach_reset;          \
    const int sg_kind = (r)->sg_kind;                                                                    \
    const TYPE tau_inv = (r)->tau_inv, v_th = (r)->v_th, v_reset = (r)->v_reset;                         \
    const TYPE sg_a = (r)->sg_a, sg_b = (r)->sg_b;                                                       \
    (void)detach_reset; (void)sg_kind; (void)sg_a; (void)sg_b  /* the forward kernels use the first five */

/* The step from V[t-1] and X[t] to H[t]. */
static inline TYPE NAME(charge)(int leak, TYPE v, TYPE x, TYPE tau_inv, TYPE leak_to) {
    if (leak == LEAK_NONE) return v + x;
    if (leak == LEAK_DECAY_INPUT) return v + (x - (v - leak_to)) * tau_inv;
    return v - (v - leak_to) * tau_inv + x;
}
/* V[t] from H[t]: soft reset subtracts V_th, hard reset sets V_reset. */
static inline TYPE NAME(reset)(int soft_reset, TYPE h, int s, TYPE v_th, TYPE v_reset) {
    return soft_reset ? (s ? h - v_th : h) : (s ? v_reset : h);
}
/* The sigmoid surrogate's derivative a s (1 - s), s = sigma(a x), as a e / (1 + e)^2 with e = e^-|a x| (the same
 * value; no cancellation in 1 - s, so that it is accurate to a few ulp relative everywhere). EXP_NEG: lif_cpu.c. */
static inline TYPE NAME(sigmoid_grad)(TYPE x, TYPE a) {
    const TYPE ax = a * x, e = EXP_NEG(ax < 0 ? ax : -ax), s = 1 / (1 + e);
    return a * e * s * s;
}
/* The surrogate's derivative at x = H - V_th (snnexp/surrogate.py has the formulas). */
static inline TYPE NAME(surrogate_grad)(int kind, TYPE x, TYPE a, TYPE b) {
    switch (kind) {
    case SG_ATAN: { TYPE y = (TYPE)(M_PI / 2) * a * x; return (a / 2) / (1 + y * y); } /* a = alpha */
    case SG_SIGMOID: return NAME(sigmoid_grad)(x, a);  /* backward_block uses sigmoid_grads */
    case SG_RECT: return (x < 0 ? -x : x) < a / 2 ? b : 0;               /* a = width, b = height */
    case SG_TRIANGLE: { TYPE y = 1 - (x < 0 ? -x : x) / a; y = y > 0 ? y : 0; return y * b; }
    default: { TYPE y = 1 + a * (x < 0 ? -x : x); return 1 / (y * y); }  /* fast sigmoid, a = slope */
    }
}
/* BN's alpha, beta and mean for the elements [e0, e0 + n) of a step: rows 0-2 of norm (ld apart) from the element's
 * channel on. For channels last (inner == 1) norm's rows are tiled (row r, element i: channel i % nc, cpu.py) and
 * the block reads them in place; otherwise each channel's value is spread over its run of inner elements in buf
 * (3 rows, buf_ld apart). (Finding the channel per element, by division, made the joined op slower than BN apart.) */
static void NAME(norm_rows)(const TYPE *norm, int64_t ld, int64_t nc, int64_t inner, int64_t e0, int64_t n,
                               TYPE *buf, int64_t buf_ld, const TYPE **rows) {
    if (inner == 1) {
        for (int r = 0; r < 3; r++) rows[r] = norm + r * ld + e0 % nc;
        return;
    }
    int64_t c = e0 / inner % nc, k = e0 % inner;  /* the channel of the next element, and its place in it */
    for (int64_t i = 0; i < n; k = 0, c = c + 1 == nc ? 0 : c + 1) {
        const int64_t len = inner - k < n - i ? inner - k : n - i;
        for (int r = 0; r < 3; r++) {
            const TYPE value = norm[r * ld + c];
            for (int64_t j = 0; j < len; j++) buf[r * buf_ld + i + j] = value;
        }
        i += len;
    }
    for (int r = 0; r < 3; r++) rows[r] = buf + r * buf_ld;
}
/* sums[c] += g_y, sums[nc + c] += g_yx invstd over the elements [e0, e0 + n) of a step (g_yx: sum dL/dY (X - mean),
 * invstd is norm's row 3). */
static void NAME(norm_add_sums)(const TYPE *norm, int64_t ld, int64_t nc, int64_t inner, int64_t e0, int64_t n,
                                   const TYPE *g_y, const TYPE *g_yx, double *sums) {
    const TYPE *is = norm + 3 * ld;
    int64_t c = e0 / inner % nc, k = e0 % inner;
    for (int64_t i = 0; i < n;) {
        if (inner == 1) {  /* channels c, c + 1, ... */
            const int64_t len = nc - c < n - i ? nc - c : n - i;
            for (int64_t j = 0; j < len; j++) {
                sums[c + j] += g_y[i + j];
                sums[nc + c + j] += (double)g_yx[i + j] * is[c + j];
            }
            i += len; c = 0;
        } else {  /* channel c only */
            const int64_t len = inner - k < n - i ? inner - k : n - i;
            double s_y = 0, s_yx = 0;
            _Pragma("omp simd reduction(+:s_y, s_yx)")
            for (int64_t j = 0; j < len; j++) { s_y += g_y[i + j]; s_yx += g_yx[i + j]; }
            sums[c] += s_y; sums[nc + c] += s_yx * is[c];
            i += len; k = 0; c = c + 1 == nc ? 0 : c + 1;
        }
    }
}
/* One step of n neurons: the spikes of X[t] (xt; with `affine`, of xt a + b) into st, V[t-1] -> V[t] in v. */
static inline __attribute__((always_inline)) void NAME(fire)(
        const int affine, const TYPE *xt, const TYPE *a, const TYPE *b, TYPE *st, TYPE *v, int64_t n, int leak,
        TYPE tau_inv, TYPE leak_to, TYPE v_th, TYPE v_reset, int soft_reset) {
    _Pragma("omp simd")
    for (int64_t i = 0; i < n; i++) {
        const TYPE h = NAME(charge)(leak, v[i], affine ? xt[i] * a[i] + b[i] : xt[i], tau_inv, leak_to);
        const int s = (h - v_th) >= 0;
        st[i] = s ? 1 : 0;
        v[i] = NAME(reset)(soft_reset, h, s, v_th, v_reset);
    }
}

/* The backward's forward again, one step of n neurons: H[t] into ht, V[t] into vt and v (as fire_, with `affine`
 * for BN(X) = xt a + b). */
static inline __attribute__((always_inline)) void NAME(recharge)(
        const int affine, const TYPE *xt, const TYPE *a, const TYPE *b, TYPE *ht, TYPE *vt, TYPE *v, int64_t n,
        int leak, TYPE tau_inv, TYPE leak_to, TYPE v_th, TYPE v_reset, int soft_reset) {
    _Pragma("omp simd")
    for (int64_t i = 0; i < n; i++) {
        const TYPE h = NAME(charge)(leak, v[i], affine ? xt[i] * a[i] + b[i] : xt[i], tau_inv, leak_to);
        ht[i] = h;
        v[i] = vt[i] = NAME(reset)(soft_reset, h, (h - v_th) >= 0, v_th, v_reset);
    }
}

/* The BN's work in the backward, as functions of their own: inlined, it made backward_block too large for GCC to
 * unswitch the runtime reset flags, and the backward without a BN ran slower; as copies per (surrogate, want_tau)
 * it doubled the build time (figures: docs/performance.md, "Figures behind the code"). */
static __attribute__((noinline)) void NAME(recharge_norm)(
        const TYPE *xt, const TYPE *a, const TYPE *b, TYPE *ht, TYPE *vt, TYPE *v, int64_t n, int leak, TYPE tau_inv,
        TYPE leak_to, TYPE v_th, TYPE v_reset, int soft_reset) {
    NAME(recharge)(1, xt, a, b, ht, vt, v, n, leak, tau_inv, leak_to, v_th, v_reset, soft_reset);
}
/* One step's share of BN's sums: g_y += dL/dY, g_yx += dL/dY (X - mean). */
static __attribute__((noinline)) void NAME(norm_step_sums)(const TYPE *gy, const TYPE *xt, const TYPE *m,
                                                              TYPE *g_y, TYPE *g_yx, int64_t n) {
    _Pragma("omp simd")
    for (int64_t i = 0; i < n; i++) { g_y[i] += gy[i]; g_yx[i] += gy[i] * (xt[i] - m[i]); }
}

/* The sigmoid surrogate's derivative at H - V_th of n neurons, into sg: a loop of its own, for backward_block (there,
 * the exp made its loop too large for GCC to unswitch the runtime reset flags, and it stayed scalar). */
static __attribute__((noinline)) void NAME(sigmoid_grads)(const TYPE *ht, TYPE *sg, int64_t n, TYPE v_th, TYPE a) {
    _Pragma("omp simd")
    for (int64_t i = 0; i < n; i++) sg[i] = NAME(sigmoid_grad)(ht[i] - v_th, a);
}

/* The spikes of X for the neurons [lo, hi). Returns 0, or -1 if the buffer could not be allocated. */
int NAME(lif_forward)(const TYPE *x, TYPE *spikes, int64_t T, int64_t N, int64_t x_step, int64_t lo,
                         int64_t hi, const NAME(lif_params) *params,
                         const TYPE *norm, int64_t ld, int64_t nc, int64_t inner) {
    LIF_PARAMS(params);
    const TYPE leak_to = soft_reset ? 0 : v_reset;
    TYPE *v = malloc(sizeof(TYPE) * 4 * BLOCK), *buf = v + BLOCK;  /* V of a block; BN's rows (norm_rows) */
    const TYPE *rows[3] = {NULL, NULL, NULL};  /* BN's alpha, beta, mean of the block */
    if (!v) return -1;
    for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
        const int64_t n = hi - b0 < BLOCK ? hi - b0 : BLOCK;
        for (int64_t i = 0; i < n; i++) v[i] = leak_to;
        if (norm) NAME(norm_rows)(norm, ld, nc, inner, b0, n, buf, BLOCK, rows);
        for (int64_t t = 0; t < T; t++) {
            const TYPE *xt = x + t * x_step + b0;
            TYPE *st = spikes + t * N + b0;
            if (norm) NAME(fire)(1, xt, rows[0], rows[1], st, v, n, leak, tau_inv, leak_to, v_th, v_reset,
                                    soft_reset);
            else NAME(fire)(0, xt, NULL, NULL, st, v, n, leak, tau_inv, leak_to, v_th, v_reset, soft_reset);
        }
    }
    free(v);
    return 0;
}

/* The backward pass of the n <= bs neurons [b0, b0 + n), h_buf their scratch (SCRATCH_ROWS(T, 0) rows of bs):
 * the gradient at their spikes of step t is gs[t * gs_stride + i]. Returns their share of dL/d(1/tau) (times
 * 1/tau for decay_input). With a BN (norm) the input was BN(X) (norm): grad_x gets dL/dBN(X), and sums [2, nc]
 * the block's sum of dL/dBN(X) and of dL/dBN(X) x_hat per channel. Inlined once per (kind, want_tau): see
 * BACKWARD_RANGE; the BN's work is in functions of its own (recharge_norm, norm_step_sums), not in copies. */
static inline __attribute__((always_inline)) double NAME(backward_block)(
        const int kind, const int want_tau, const TYPE *x, const TYPE *gs, int64_t gs_stride,
        TYPE *grad_x, TYPE *h_buf, int64_t bs, int64_t T, int64_t x_step, int64_t b0, int64_t n, int leak,
        TYPE tau_inv, TYPE v_th, TYPE v_reset, int soft_reset, int detach_reset, TYPE sg_a, TYPE sg_b,
        const TYPE *norm, int64_t ld, int64_t nc, int64_t inner, double *sums) {
    const TYPE leak_to = soft_reset ? 0 : v_reset;
    const int affine = norm != NULL;
    const TYPE keep = leak == LEAK_NONE ? 1 : 1 - tau_inv;  /* dH[t]/dV[t-1] */
    const TYPE gx_scale = leak == LEAK_DECAY_INPUT ? tau_inv : 1;  /* dH[t]/dX[t] */
    const int decay_input = leak == LEAK_DECAY_INPUT;
    TYPE *v_buf = h_buf + T * bs;  /* V[t-1] of one block, t = 0..T */
    TYPE *v = h_buf + (2 * T + 1) * bs, *gv = v + bs;  /* then 10 rows (SCRATCH_ROWS): */
    TYPE *g_tau = gv + bs;  /* each neuron's share of dL/d(1/tau) */
    TYPE *g_sum = g_tau + bs, *g_step = g_sum + bs;  /* x_step = 0: dL/dx summed over the steps, one step's */
    TYPE *buf = g_step + bs, *g_y = buf + 3 * bs, *g_yx = g_y + bs;  /* affine: BN's rows, its sums */
    const TYPE *rows[3] = {NULL, NULL, NULL}, *a = NULL, *b = NULL, *m = NULL;
    double acc = 0;
    for (int64_t i = 0; i < n; i++) { v[i] = leak_to; gv[i] = 0; g_tau[i] = 0; g_sum[i] = 0; }
    if (affine) {
        NAME(norm_rows)(norm, ld, nc, inner, b0, n, buf, bs, rows);
        a = rows[0]; b = rows[1]; m = rows[2];
        for (int64_t i = 0; i < n; i++) { g_y[i] = 0; g_yx[i] = 0; }
    }
    for (int64_t i = 0; i < n; i++) v_buf[i] = leak_to;
    for (int64_t t = 0; t < T; t++) {  /* forward again, keeping H[t] and V[t] (V[-1] = rest) */
        const TYPE *xt = x + t * x_step + b0;
        TYPE *ht = h_buf + t * bs, *vt = v_buf + (t + 1) * bs;
        if (affine) NAME(recharge_norm)(xt, a, b, ht, vt, v, n, leak, tau_inv, leak_to, v_th, v_reset, soft_reset);
        else NAME(recharge)(0, xt, a, b, ht, vt, v, n, leak, tau_inv, leak_to, v_th, v_reset, soft_reset);
    }
    for (int64_t t = T - 1; t >= 0; t--) {  /* and back */
        const TYPE *ht = h_buf + t * bs, *gst = gs + t * gs_stride;
        const TYPE *vprev = v_buf + t * bs;  /* V[t-1] */
        const TYPE *xt = x + t * x_step + b0;
        /* x_step = 0: the step's dL/dx goes to g_step, then into g_sum; an unconditional store keeps the
         * loop vectorised (a store under `if (x_step)` is control flow GCC does not if-convert; figures:
         * docs/performance.md, "Figures behind the code") */
        TYPE *gxt = x_step ? grad_x + t * x_step + b0 : g_step;
        /* sigmoid: the surrogate's derivatives first, into gxt, which the loop reads before it overwrites them
         * (inside it, the exp kept the loop scalar, twice as slow: exp_neg_f32 in lif_cpu.c) */
        if (kind == SG_SIGMOID) NAME(sigmoid_grads)(ht, gxt, n, v_th, sg_a);
        _Pragma("omp simd")
        for (int64_t i = 0; i < n; i++) {
            const TYPE h = ht[i];
            const int s = (h - v_th) >= 0;
            const TYPE sg = kind == SG_SIGMOID ? gxt[i] : NAME(surrogate_grad)(kind, h - v_th, sg_a, sg_b);
            TYPE dv_dh;
            if (soft_reset) dv_dh = detach_reset ? 1 : 1 - v_th * sg;
            else dv_dh = (s ? 0 : 1) + (detach_reset ? 0 : (v_reset - h) * sg);
            const TYPE gh = gst[i] * sg + gv[i] * dv_dh;
            gxt[i] = gh * gx_scale;
            gv[i] = gh * keep;
            /* dH/d(1/tau): decay_input X - (V[t-1] - L) = (H - V[t-1]) / (1/tau), divided at the end;
             * otherwise L - V[t-1] */
            if (want_tau) g_tau[i] += gh * ((decay_input ? h : leak_to) - vprev[i]);
        }
        /* BN's sums in a loop of their own: in the one above they made its body too large for GCC to unswitch
         * the runtime reset flags, and it ran 2.8x slower (PLIF after BN, atan). x_step = 0: below. */
        if (affine && x_step) NAME(norm_step_sums)(gxt, xt, m, g_y, g_yx, n);
        if (!x_step)
            for (int64_t i = 0; i < n; i++) g_sum[i] += g_step[i];
    }
    if (!x_step)
        for (int64_t i = 0; i < n; i++) grad_x[b0 + i] = g_sum[i];
    if (want_tau)  /* summed per neuron over t in the loop (which then vectorises), over neurons here */
        for (int64_t i = 0; i < n; i++) acc += g_tau[i];
    if (affine && !x_step)  /* one x at every step: its sums are those of the summed gradient g_sum */
        for (int64_t i = 0; i < n; i++) { g_y[i] = g_sum[i]; g_yx[i] = g_sum[i] * (x[b0 + i] - m[i]); }
    if (affine)  /* likewise BN's sums, per channel */
        NAME(norm_add_sums)(norm, ld, nc, inner, b0, n, g_y, g_yx, sums);
    return acc;
}

/* The backward pass over the neurons [lo, hi), the gradient at the spikes dense in grad_s [T, N], in blocks of
 * bs neurons. */
static inline __attribute__((always_inline)) double NAME(backward_range)(
        const int kind, const int want_tau, const TYPE *x, const TYPE *grad_s, TYPE *grad_x,
        TYPE *h_buf, int64_t bs, int64_t T, int64_t N, int64_t x_step, int64_t lo, int64_t hi, int leak,
        TYPE tau_inv, TYPE v_th, TYPE v_reset, int soft_reset, int detach_reset, TYPE sg_a, TYPE sg_b,
        const TYPE *norm, int64_t ld, int64_t nc, int64_t inner, double *sums) {
    double acc = 0;
    for (int64_t b0 = lo; b0 < hi; b0 += bs) {
        const int64_t n = hi - b0 < bs ? hi - b0 : bs;
        acc += NAME(backward_block)(kind, want_tau, x, grad_s + b0, N, grad_x, h_buf, bs, T, x_step, b0,
                                       n, leak, tau_inv, v_th, v_reset, soft_reset, detach_reset, sg_a, sg_b,
                                       norm, ld, nc, inner, sums);
    }
    return acc;
}

/* The backward pass of neurons followed by max pooling with tiling kh x kw windows (pool_cpu.c): the
 * gradient at the spikes is not a tensor but the pool's, dL/dy [T, M, Ho, Wo, C] with the positions pos of
 * the forward: spike (h, w, c) of map m gets its window's gradient if it is the window's chosen position,
 * else 0. Rows [lo, hi) of the M * H rows of [M, H, W, C] (an NCHW map is C = 1); each row is cut into
 * blocks of whole pixels (or of channels, when C > bs), whose gradient is gathered into gs, a T x bs
 * buffer that stays in cache, so that the dense dL/dspikes of the layer is never written or read. */
static inline __attribute__((always_inline)) double NAME(pool_backward_range)(
        const int kind, const int want_tau, const TYPE *x, const TYPE *grad_y,
        const uint8_t *pos, TYPE *grad_x, TYPE *h_buf, int64_t bs, TYPE *gs, int64_t T, int64_t N,
        int64_t x_step, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw, int64_t lo, int64_t hi, int leak,
        TYPE tau_inv, TYPE v_th, TYPE v_reset, int soft_reset, int detach_reset, TYPE sg_a, TYPE sg_b,
        const TYPE *norm, int64_t ld, int64_t nc, int64_t inner, double *sums) {
    const int64_t Ho = H / kh, Wo = W / kw, Ny = N / (H * W) * Ho * Wo;  /* Ny: pooled values a step */
    const int64_t px = C <= bs ? bs / C : 1, cn = C <= bs ? C : bs;  /* pixels, channels */
    double acc = 0;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t m = r / H, h = r % H, oh = h / kh;
        for (int64_t w0 = 0; w0 < W; w0 += px)
            for (int64_t c0 = 0; c0 < C; c0 += cn) {
                const int64_t nw = W - w0 < px ? W - w0 : px, cb = C - c0 < cn ? C - c0 : cn;
                const int64_t n = nw * cb, b0 = (r * W + w0) * C + c0;
                for (int64_t t = 0; t < T; t++)
                    for (int64_t j = 0; j < nw; j++) {
                        const int64_t w = w0 + j, ow = w / kw;
                        TYPE *g = gs + t * n + j * cb;
                        if (oh >= Ho || ow >= Wo) {  /* outside every window: no gradient */
                            for (int64_t c = 0; c < cb; c++) g[c] = 0;
                            continue;
                        }
                        const int64_t src = t * Ny + ((m * Ho + oh) * Wo + ow) * C + c0;
                        const uint8_t code = (uint8_t)((h % kh) * kw + w % kw);
                        const TYPE *gy = grad_y + src;
                        const uint8_t *q = pos + src;
                        _Pragma("omp simd")
                        for (int64_t c = 0; c < cb; c++) g[c] = q[c] == code ? gy[c] : 0;
                    }
                acc += NAME(backward_block)(kind, want_tau, x, gs, n, grad_x, h_buf, bs, T, x_step, b0,
                                               n, leak, tau_inv, v_th, v_reset, soft_reset, detach_reset,
                                               sg_a, sg_b, norm, ld, nc, inner, sums);
            }
    }
    return acc;
}

/* grad_x from grad_s; with want_tau, also *grad_tau_inv = sum over [lo, hi) and t of dL/dH dH/d(1/tau).
 * Returns 0, or -1 if the buffer could not be allocated. */
int NAME(lif_backward)(const TYPE *x, const TYPE *grad_s, TYPE *grad_x, int64_t T, int64_t N,
                          int64_t x_step, int64_t lo, int64_t hi, const NAME(lif_params) *params,
                          int want_tau, double *grad_tau_inv, const TYPE *norm, int64_t ld, int64_t nc,
                          int64_t inner, double *sums) {
    LIF_PARAMS(params);
    const int64_t bs = backward_block_size(SCRATCH_ROWS(T, 0));
    TYPE *h_buf = malloc(sizeof(TYPE) * bs * SCRATCH_ROWS(T, 0));
    double acc = 0;
    if (!h_buf) return -1;
    FOR_SURROGATE(BACKWARD_RANGE, SUFFIX);
    free(h_buf);
    *grad_tau_inv = leak == LEAK_DECAY_INPUT ? acc / tau_inv : acc;
    return 0;
}

/* Neurons followed by max pooling with tiling kh x kw windows, forward: the pooled spikes and the positions
 * of the window maxima, as max_pool_forward gives them, without writing the spikes themselves. The neurons
 * [M, H, W, C] (x_step as in lif_forward) are taken kh rows at a time, the rows of one row of windows
 * (contiguous in memory); their spikes of step t go to a buffer of kh rows and are pooled from there.
 * Rows below the last window feed no output and are skipped. Output rows [lo, hi) of the M * Ho. With
 * `counts` (the neurons of one sample, maps_per_sample maps of H x W x C, or NULL), each neuron's spikes over the
 * T steps and the samples of these rows are added to it: one array per thread, summed by the caller (the rows
 * below the last window are not counted: the caller counts only maps the windows tile). */
int NAME(lif_pool_forward)(const TYPE *x, TYPE *y, uint8_t *pos, int64_t T, int64_t N, int64_t x_step,
                              int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw, int64_t lo, int64_t hi,
                              const NAME(lif_params) *params,
                              const TYPE *norm, int64_t ld, int64_t nc, int64_t inner, TYPE *counts,
                              int64_t maps_per_sample) {
    LIF_PARAMS(params);
    const int64_t Ho = H / kh, Wo = W / kw, Ny = N / (H * W) * Ho * Wo, R = kh * W * C;
    const TYPE leak_to = soft_reset ? 0 : v_reset;
    TYPE *v = malloc(sizeof(TYPE) * 6 * R), *s = v + R, *buf = v + 2 * R;  /* buf: BN's rows (norm_rows) */
    TYPE *cnt = v + 5 * R;  /* with counts: the rows' spikes so far */
    const TYPE *rows[3] = {NULL, NULL, NULL};
    if (!v) return -1;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t e0 = ((r / Ho) * H + (r % Ho) * kh) * W * C;  /* map r / Ho, first row of the windows */
        for (int64_t i = 0; i < R; i++) v[i] = leak_to;
        if (counts) for (int64_t i = 0; i < R; i++) cnt[i] = 0;
        if (norm) NAME(norm_rows)(norm, ld, nc, inner, e0, R, buf, R, rows);
        for (int64_t t = 0; t < T; t++) {
            const TYPE *xt = x + t * x_step + e0;
            if (norm) NAME(fire)(1, xt, rows[0], rows[1], s, v, R, leak, tau_inv, leak_to, v_th, v_reset,
                                    soft_reset);
            else NAME(fire)(0, xt, NULL, NULL, s, v, R, leak, tau_inv, leak_to, v_th, v_reset, soft_reset);
            NAME(max_pool_forward)(s, y + t * Ny + r * Wo * C, pos + t * Ny + r * Wo * C, kh, W, C, kh,
                                      kw, 0, 1);
            if (counts) {
                _Pragma("omp simd")
                for (int64_t i = 0; i < R; i++) cnt[i] += s[i];
            }
        }
        if (counts) {  /* added at the rows' place in one sample: the calling thread's own counts */
            TYPE *ct = counts + ((r / Ho) % maps_per_sample * H + (r % Ho) * kh) * W * C;
            _Pragma("omp simd")
            for (int64_t i = 0; i < R; i++) ct[i] += cnt[i];
        }
    }
    free(v);
    return 0;
}

/* lif_backward for neurons followed by tiling max pooling: from dL/dy and pos of the pool (see
 * pool_backward_range); rows [lo, hi) of the M * H rows of one step. */
int NAME(lif_pool_backward)(const TYPE *x, const TYPE *grad_y, const uint8_t *pos, TYPE *grad_x,
                               int64_t T, int64_t N, int64_t x_step, int64_t H, int64_t W, int64_t C,
                               int64_t kh, int64_t kw, int64_t lo, int64_t hi, const NAME(lif_params) *params,
                               int want_tau, double *grad_tau_inv, const TYPE *norm,
                               int64_t ld, int64_t nc, int64_t inner, double *sums) {
    LIF_PARAMS(params);
    const int64_t bs = backward_block_size(SCRATCH_ROWS(T, T));  /* and the gathered gradient, T rows */
    TYPE *h_buf = malloc(sizeof(TYPE) * bs * SCRATCH_ROWS(T, T));
    double acc = 0;
    if (!h_buf) return -1;
    TYPE *gs = h_buf + bs * SCRATCH_ROWS(T, 0);
    FOR_SURROGATE(POOL_BACKWARD_RANGE, SUFFIX);
    free(h_buf);
    *grad_tau_inv = leak == LEAK_DECAY_INPUT ? acc / tau_inv : acc;
    return 0;
}

/* BN's dL/dX from dL/dBN(X) in g, in place: g = k1[c] g + k2[c] x + k3[c], coef = [3, nc] (normalised.py
 * derives them from the sums). Rows [lo, hi) of nc * inner elements each. */
void NAME(norm_input_grad)(const TYPE *x, TYPE *g, const TYPE *coef, int64_t nc, int64_t inner, int64_t lo,
                              int64_t hi) {
    const TYPE *k1 = coef, *k2 = coef + nc, *k3 = coef + 2 * nc;
    for (int64_t r = lo; r < hi; r++) {
        const TYPE *xr = x + r * nc * inner;
        TYPE *gr = g + r * nc * inner;
        if (inner == 1) {  /* channels last: the coefficients vary along the row */
            _Pragma("omp simd")
            for (int64_t c = 0; c < nc; c++) gr[c] = k1[c] * gr[c] + k2[c] * xr[c] + k3[c];
            continue;
        }
        for (int64_t c = 0; c < nc; c++) {
            const TYPE *xc = xr + c * inner;
            TYPE *gc = gr + c * inner;
            _Pragma("omp simd")
            for (int64_t i = 0; i < inner; i++) gc[i] = k1[c] * gc[i] + k2[c] * xc[i] + k3[c];
        }
    }
}

#undef LIF_PARAMS
#undef NAME__
#undef NAME_
#undef NAME
