/* The paper's LRN (§3.3) as one pass over memory, forward and backward, for float32 and
   bfloat16 tensors (bf16 is read and written as bf16 and computed in float32).

   Built at run time by alexnet/native.py with the machine's C compiler and loaded with
   ctypes (no torch headers: it compiles in well under a second and does not depend on
   torch's C++ ABI). Tensors are channels_last, seen as `rows` rows of `channels`
   contiguous values (one row per pixel), split among threads (below).

       d[c] = k + alpha * sum_{|j - c| <= half} x[j]^2,  y[c] = x[c] * d[c]^-beta
       grad_x[c] = g[c] d[c]^-beta - 2 alpha beta x[c] sum_{|j - c| <= half} g[j] y[j] / d[j]

   Forward reads x and writes y; backward reads x and g, recomputes d and d^-beta in
   cache and writes grad_x: 5 passes over memory, where the composed torch operations
   take about 15. Why by hand: no library ships the paper's LRN (sum, not mean, of
   squares) as a fused CPU kernel, and torch.compile's code for it was slower than the
   composed operations on the CPU we measured (docs/BENCHMARKS.md).

   Rows are processed in blocks of about BLOCK values, as flat arrays: the window sum
   adds each neighbour where a 0/1 mask says it lies in the same row. So every loop runs
   over hundreds of values, whatever the channel count (a loop per row of 28 channels
   would spend its time in the vector loop's scalar tail). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 512
/* Blocks of rows are shared among the OpenMP threads of the runtime torch already loaded
   (native.py links to it), so the kernel runs on torch's own intra-op threads. Built
   without OpenMP the pragmas are ignored and the caller splits the rows among threads.
   Calls smaller than this many values stay on one thread. */
#define PARALLEL_MIN_VALUES 65536

/* d^-beta: the paper's beta = 0.75 as 1 / sqrt(d sqrt(d)), two correctly rounded square
   roots and a division, which the compiler vectorises; any other beta through powf. */
static inline float neg_pow(float d, float beta) { return beta == 0.75f ? 1.0f / sqrtf(d * sqrtf(d)) : powf(d, -beta); }

/* bfloat16 <-> float32: the top 16 bits of a float; rounding to nearest even, NaN kept NaN
   (what torch's c10::BFloat16 does). */
static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

typedef struct {
    int64_t rows_per_block, n, half;
    float *masks;  /* 2 * half arrays of n: [2(o-1)] below by o, [2(o-1)+1] above by o */
    float *padded; /* n + 2 half: the summed values, at padded[half .. half + n) */
    float *sum, *scale;
    float *x, *g, *out; /* a block in float32 (bf16 tensors are converted into these) */
} Work;

/* Returns 0, or 1 when out of memory (then w->masks is NULL, which free accepts). */
static int work_init(Work *w, int64_t channels, int64_t half) {
    w->rows_per_block = channels >= BLOCK ? 1 : BLOCK / channels;
    w->n = w->rows_per_block * channels;
    w->half = half;
    w->masks = malloc(sizeof(float) * (2 * half * w->n + w->n + 2 * half + 5 * w->n));
    if (!w->masks) return 1;
    w->padded = w->masks + 2 * half * w->n;
    w->sum = w->padded + w->n + 2 * half;
    w->scale = w->sum + w->n;
    w->x = w->scale + w->n;
    w->g = w->x + w->n;
    w->out = w->g + w->n;
    for (int64_t i = 0; i < w->n + 2 * half; i++) w->padded[i] = 0.0f;
    for (int64_t o = 1; o <= half; o++)
        for (int64_t i = 0; i < w->n; i++) {
            int64_t c = i % channels;
            w->masks[2 * (o - 1) * w->n + i] = c - o >= 0 ? 1.0f : 0.0f;
            w->masks[(2 * (o - 1) + 1) * w->n + i] = c + o < channels ? 1.0f : 0.0f;
        }
    return 0;
}

/* w->sum[i] = sum of w->padded over i's channel window, for the first n values */
static void window_sum(const Work *w, int64_t n) {
    const float *p = w->padded + w->half;
    float *out = w->sum;
    for (int64_t i = 0; i < n; i++) out[i] = p[i];
    for (int64_t o = 1; o <= w->half; o++) {
        const float *below = w->masks + 2 * (o - 1) * w->n, *above = below + w->n;
        /* a select, not a multiply: an infinite value in another row stays out (inf * 0 is NaN) */
        for (int64_t i = 0; i < n; i++)
            out[i] += (below[i] != 0.0f ? p[i - o] : 0.0f) + (above[i] != 0.0f ? p[i + o] : 0.0f);
    }
}

/* One block of n values: out = LRN(x) */
static void block_forward(Work *w, const float *x, float *out, int64_t n, float k, float alpha, float beta) {
    float *p = w->padded + w->half;
    for (int64_t i = 0; i < n; i++) p[i] = x[i] * x[i];
    window_sum(w, n);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * neg_pow(k + alpha * w->sum[i], beta);
}

/* One block of n values: out = the gradient of LRN at x, given the output's gradient g */
static void block_backward(Work *w, const float *x, const float *g, float *out, int64_t n, float k, float alpha,
                           float beta) {
    float *p = w->padded + w->half;
    const float factor = -2.0f * alpha * beta;
    for (int64_t i = 0; i < n; i++) p[i] = x[i] * x[i];
    window_sum(w, n);
    for (int64_t i = 0; i < n; i++) {
        float d = k + alpha * w->sum[i];
        w->scale[i] = neg_pow(d, beta);
        p[i] = g[i] * x[i] * w->scale[i] / d; /* g * y / d */
    }
    window_sum(w, n);
    for (int64_t i = 0; i < n; i++) out[i] = g[i] * w->scale[i] + factor * x[i] * w->sum[i];
}

static const float *as_float(const void *data, int bf16, int64_t offset, int64_t n, float *buffer) {
    if (!bf16) return (const float *)data + offset;
    const uint16_t *h = (const uint16_t *)data + offset;
    for (int64_t i = 0; i < n; i++) buffer[i] = from_bf16(h[i]);
    return buffer;
}

/* Forward (g NULL: out = LRN(x)) or backward (out = the gradient at x given the output's
   gradient g) over `rows` rows of `channels` values; the tensors are float32, or bfloat16
   when bf16 is 1. Returns 0, or -1 when out of memory. */
static int run(const void *x, const void *g, void *out, int64_t rows, int64_t channels, int64_t half, float k,
               float alpha, float beta, int bf16) {
    int failed = 0;
#pragma omp parallel if (rows * channels >= PARALLEL_MIN_VALUES) reduction(| : failed)
    {
        Work w;
        failed = work_init(&w, channels, half);
        int64_t blocks = (rows + w.rows_per_block - 1) / w.rows_per_block;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            if (failed) continue;
            int64_t offset = b * w.rows_per_block * channels;
            int64_t n = (rows * channels - offset < w.n ? rows * channels - offset : w.n);
            const float *xb = as_float(x, bf16, offset, n, w.x);
            float *ob = bf16 ? w.out : (float *)out + offset;
            if (g)
                block_backward(&w, xb, as_float(g, bf16, offset, n, w.g), ob, n, k, alpha, beta);
            else
                block_forward(&w, xb, ob, n, k, alpha, beta);
            if (bf16)
                for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[offset + i] = to_bf16(ob[i]);
        }
        free(w.masks);
    }
    return failed ? -1 : 0;
}

int lrn_forward(const void *x, void *y, int64_t rows, int64_t channels, int64_t half, float k, float alpha,
                float beta, int bf16) {
    return run(x, NULL, y, rows, channels, half, k, alpha, beta, bf16);
}

int lrn_backward(const void *x, const void *g, void *grad, int64_t rows, int64_t channels, int64_t half, float k,
                 float alpha, float beta, int bf16) {
    return run(x, g, grad, rows, channels, half, k, alpha, beta, bf16);
}
