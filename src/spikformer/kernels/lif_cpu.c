/* Multi-step LIF, forward and backward, for CPU tensors laid out as [T, M] (time first, contiguous).
 *
 * Built at first use by spikformer/kernels/cpu.py with the system C compiler and called through ctypes:
 * no PyTorch headers, so it compiles in well under a second. Each element runs its whole time loop in
 * registers; blocks of LIF_BLOCK elements keep the inner loop vectorisable and are split over threads.
 *
 * Arithmetic follows the reference (spikformer.neuron.lif_reference) operation by operation, and the
 * library is compiled with -ffp-contract=off, so spikes are bit-identical to PyTorch's: for float32 and
 * float64 directly, for bfloat16 and float16 by rounding to the storage type after every operation, as
 * PyTorch's CPU element-wise kernels do. Those kernels also round a scalar subtrahend (V_reset, V_th) to
 * the storage type but divide by a float scalar (tau); so do we. The backward pass recomputes H from the saved input and follows the
 * reference's autograd order; only the exponential in the sigmoid differs (by about one ulp).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LIF_BLOCK 256
#define LIF_MAX_THREADS 256

enum { LIF_F32 = 0, LIF_F64 = 1, LIF_BF16 = 2, LIF_F16 = 3 };

typedef struct {
    int dtype;
    const void *x;    /* input [T, M] */
    const void *g;    /* grad of spikes [T, M] (backward) */
    void *out;        /* spikes (forward) or grad of input (backward) [T, M] */
    int64_t T, M;
    double tau, v_threshold, v_reset, alpha;
    int detach_reset;
    int status;
} lif_job;

/* --- scalar helpers ------------------------------------------------------------------------------ */

static inline float bits_to_float(uint32_t u) {
    union { uint32_t u; float f; } c;
    c.u = u;
    return c.f;
}

static inline uint32_t float_to_bits(float f) {
    union { uint32_t u; float f; } c;
    c.f = f;
    return c.u;
}

static inline float bf16_load(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

/* Round to nearest even, NaN to the canonical quiet NaN: c10::BFloat16's conversion. */
static inline uint16_t bf16_store(float f) {
    uint32_t u = float_to_bits(f);
    if (f != f) return (uint16_t)0x7FC0;
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_round(float f) { return bf16_load(bf16_store(f)); }

/* exp for float without libm calls, so that the loop vectorises (Cephes' expf; about 1 ulp). */
static inline float lif_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick: floorf would need -fno-trapping-math to vectorise */
    const float magic = 12582912.0f;
    float n = (x * 1.44269504088896341f + magic) - magic;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * bits_to_float((uint32_t)((int32_t)n + 127) << 23);
}

/* --- the kernels, once per storage type ----------------------------------------------------------
 * STOR: storage type; COMP: compute type; LOAD/STORE convert; RND rounds a COMP to STOR precision. */

#define LIF_DEFINE(NAME, STOR, COMP, LOAD, STORE, RND, EXP)                                              \
    static void NAME##_forward(const lif_job *job, int64_t i0, int64_t i1) {                             \
        const STOR *x = (const STOR *)job->x;                                                           \
        STOR *s = (STOR *)job->out;                                                                     \
        const int64_t T = job->T, M = job->M;                                                           \
        const COMP tau = (COMP)job->tau, vth = RND((COMP)job->v_threshold), vr = RND((COMP)job->v_reset); \
        const COMP v_rest = vr, one = (COMP)1, zero = (COMP)0;                                          \
        COMP v[LIF_BLOCK];                                                                              \
        for (int64_t b = i0; b < i1; b += LIF_BLOCK) {                                                  \
            const int64_t n = i1 - b < LIF_BLOCK ? i1 - b : LIF_BLOCK;                                  \
            for (int64_t j = 0; j < n; ++j) v[j] = v_rest;                                              \
            for (int64_t t = 0; t < T; ++t) {                                                           \
                const STOR *xt = x + t * M + b;                                                         \
                STOR *st = s + t * M + b;                                                               \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    const COMP h = RND(v[j] + RND(RND(LOAD(xt[j]) - RND(v[j] - vr)) / tau));            \
                    const int fired = h >= vth;                                                         \
                    st[j] = STORE(fired ? one : zero);                                                  \
                    v[j] = fired ? v_rest : h;                                                          \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    static void NAME##_backward(const lif_job *job, int64_t i0, int64_t i1, COMP *hbuf) {               \
        const STOR *x = (const STOR *)job->x;                                                           \
        const STOR *g = (const STOR *)job->g;                                                           \
        STOR *gx = (STOR *)job->out;                                                                    \
        const int64_t T = job->T, M = job->M;                                                           \
        const COMP tau = (COMP)job->tau, vth = RND((COMP)job->v_threshold), vr = RND((COMP)job->v_reset); \
        const COMP alpha = (COMP)job->alpha, v_rest = vr, one = (COMP)1, zero = (COMP)0;                \
        const int detach = job->detach_reset;                                                           \
        COMP v[LIF_BLOCK], gv[LIF_BLOCK];                                                               \
        for (int64_t b = i0; b < i1; b += LIF_BLOCK) {                                                  \
            const int64_t n = i1 - b < LIF_BLOCK ? i1 - b : LIF_BLOCK;                                  \
            for (int64_t j = 0; j < n; ++j) v[j] = v_rest;                                              \
            for (int64_t t = 0; t < T; ++t) { /* recompute H */                                         \
                const STOR *xt = x + t * M + b;                                                         \
                COMP *ht = hbuf + t * LIF_BLOCK;                                                        \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    const COMP h = RND(v[j] + RND(RND(LOAD(xt[j]) - RND(v[j] - vr)) / tau));            \
                    ht[j] = h;                                                                          \
                    v[j] = h >= vth ? v_rest : h;                                                       \
                }                                                                                       \
            }                                                                                           \
            for (int64_t j = 0; j < n; ++j) gv[j] = zero;                                               \
            for (int64_t t = T - 1; t >= 0; --t) {                                                      \
                const STOR *gt = g + t * M + b;                                                         \
                STOR *gxt = gx + t * M + b;                                                             \
                const COMP *ht = hbuf + t * LIF_BLOCK;                                                  \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    const COMP h = ht[j];                                                               \
                    const COMP sgm = one / (one + EXP(-(alpha * (h - vth))));                           \
                    const COMP sg = alpha * sgm * (one - sgm);                                          \
                    const COMP not_fired = h >= vth ? zero : one;                                       \
                    const COMP dv_dh = detach ? not_fired : not_fired + (vr - h) * sg;                  \
                    const COMP gh = LOAD(gt[j]) * sg + gv[j] * dv_dh;                                   \
                    const COMP gxv = gh / tau;                                                          \
                    gxt[j] = STORE(gxv);                                                                \
                    gv[j] = gh - gxv;                                                                   \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }

#define ID(a) (a)
LIF_DEFINE(lif_f32, float, float, ID, ID, ID, lif_expf)
LIF_DEFINE(lif_f64, double, double, ID, ID, ID, exp)
LIF_DEFINE(lif_bf16, uint16_t, float, bf16_load, bf16_store, bf16_round, lif_expf)

#if defined(__FLT16_MAX__)
#define LIF_HAS_F16 1
#define F16_LOAD(a) ((float)(a))
#define F16_STORE(a) ((_Float16)(a))
#define F16_RND(a) ((float)(_Float16)(a))
LIF_DEFINE(lif_f16, _Float16, float, F16_LOAD, F16_STORE, F16_RND, lif_expf)
#else
#define LIF_HAS_F16 0
#endif

/* --- dispatch and threads ------------------------------------------------------------------------ */

static size_t compute_size(int dtype) { return dtype == LIF_F64 ? sizeof(double) : sizeof(float); }

static void run_range(lif_job *job, int backward, int64_t i0, int64_t i1) {
    if (i0 >= i1) return;
    if (!backward) {
        switch (job->dtype) {
            case LIF_F32: lif_f32_forward(job, i0, i1); break;
            case LIF_F64: lif_f64_forward(job, i0, i1); break;
            case LIF_BF16: lif_bf16_forward(job, i0, i1); break;
#if LIF_HAS_F16
            case LIF_F16: lif_f16_forward(job, i0, i1); break;
#endif
            default: job->status = -1;
        }
        return;
    }
    void *hbuf = malloc((size_t)job->T * LIF_BLOCK * compute_size(job->dtype));
    if (!hbuf) {
        job->status = -2;
        return;
    }
    switch (job->dtype) {
        case LIF_F32: lif_f32_backward(job, i0, i1, (float *)hbuf); break;
        case LIF_F64: lif_f64_backward(job, i0, i1, (double *)hbuf); break;
        case LIF_BF16: lif_bf16_backward(job, i0, i1, (float *)hbuf); break;
#if LIF_HAS_F16
        case LIF_F16: lif_f16_backward(job, i0, i1, (float *)hbuf); break;
#endif
        default: job->status = -1;
    }
    free(hbuf);
}

typedef struct {
    lif_job *job;
    int backward;
    int64_t i0, i1;
} lif_task;

static void *run_task(void *arg) {
    lif_task *task = (lif_task *)arg;
    run_range(task->job, task->backward, task->i0, task->i1);
    return NULL;
}

/* Split [0, M) into nthreads chunks aligned to 64 elements, so that no two threads share a cache line. */
static int run_parallel(lif_job *job, int backward, int nthreads) {
    const int64_t M = job->M;
    const int64_t min_per_thread = 16384;
    if (nthreads > LIF_MAX_THREADS) nthreads = LIF_MAX_THREADS;
    if ((int64_t)nthreads * min_per_thread > M * job->T) nthreads = (int)(M * job->T / min_per_thread);
    if (nthreads < 1) nthreads = 1;
    job->status = 0;
    if (nthreads == 1) {
        run_range(job, backward, 0, M);
        return job->status;
    }
    lif_task tasks[LIF_MAX_THREADS];
    pthread_t threads[LIF_MAX_THREADS];
    int started[LIF_MAX_THREADS];
    const int64_t chunk = ((M + nthreads - 1) / nthreads + 63) / 64 * 64;
    for (int k = 0; k < nthreads; ++k) {
        int64_t i0 = (int64_t)k * chunk, i1 = i0 + chunk;
        tasks[k].job = job;
        tasks[k].backward = backward;
        tasks[k].i0 = i0 < M ? i0 : M;
        tasks[k].i1 = i1 < M ? i1 : M;
        started[k] = 0;
    }
    for (int k = 1; k < nthreads; ++k)
        started[k] = pthread_create(&threads[k], NULL, run_task, &tasks[k]) == 0;
    run_task(&tasks[0]);
    for (int k = 1; k < nthreads; ++k) {
        if (started[k])
            pthread_join(threads[k], NULL);
        else
            run_task(&tasks[k]); /* could not start a thread: do its share here */
    }
    return job->status;
}

/* --- the exported functions ---------------------------------------------------------------------- */

int lif_supports(int dtype) {
    return dtype == LIF_F32 || dtype == LIF_F64 || dtype == LIF_BF16 || (dtype == LIF_F16 && LIF_HAS_F16);
}

/* spikes[t, i] = LIF(x[:, i])[t]. Returns 0, or -1 for an unsupported dtype, -2 when out of memory. */
int lif_forward(int dtype, const void *x, void *spikes, int64_t T, int64_t M, double tau, double v_threshold,
                double v_reset, int nthreads) {
    lif_job job = {dtype, x, NULL, spikes, T, M, tau, v_threshold, v_reset, 0.0, 1, 0};
    return run_parallel(&job, 0, nthreads);
}

/* grad_x from the layer input x and the gradient of the spikes (H is recomputed). */
int lif_backward(int dtype, const void *x, const void *grad_spikes, void *grad_x, int64_t T, int64_t M,
                 double tau, double v_threshold, double v_reset, double alpha, int detach_reset,
                 int nthreads) {
    lif_job job = {dtype, x, grad_spikes, grad_x, T, M, tau, v_threshold, v_reset, alpha, detach_reset, 0};
    return run_parallel(&job, 1, nthreads);
}
