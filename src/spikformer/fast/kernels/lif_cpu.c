/* Multi-step LIF, forward and backward, for CPU tensors laid out as [T, M] (time first, contiguous).
 *
 * Built by spikformer/fast/kernels/cpu.py with the system C compiler (ahead of time by `spikformer
 * build-kernels`, else at first use) and called through ctypes, with the signatures of spikformer_kernels.h:
 * no PyTorch headers, so it compiles in well under a second. Each element runs its whole time loop in
 * registers; blocks of LIF_BLOCK elements keep the inner loop vectorisable and are split over threads.
 *
 * Arithmetic follows the reference (spikformer.neurons.lif_backends.lif_reference) operation by operation, and
 * the library is compiled with -ffp-contract=off, so spikes are bit-identical to PyTorch's. bfloat16 and float16
 * tensors are read and written in their storage type but computed in float32, exactly as the float32
 * kernel computes their float32 copy (the oracle upcasts half-precision inputs the same way): the membrane
 * never rounds to 8 or 11 mantissa bits, and no float32 copy of the input is ever made. PyTorch's CPU
 * kernels divide by a float scalar (tau); so do we. The backward pass recomputes H from the saved input and
 * follows the reference's autograd order; only the exponential in the sigmoid differs (by about one ulp).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spikformer_kernels.h"

#define LIF_BLOCK 256
#define LIF_MAX_THREADS 256

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

/* Round to nearest even, NaN to the canonical quiet NaN: c10::BFloat16's conversion. Written without a
 * branch (a select), so that loops that store bfloat16 under a condition vectorise without AVX-512's masks
 * too; equal to the branching form for all 2^32 inputs (checked once, exhaustively). */
static inline uint16_t bf16_store(float f) {
    const uint32_t u = float_to_bits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(f != f ? 0x7FC0u : rounded);
}

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

/* Whether 1 / tau is exact in float (tau a power of two in float's normal range): then x * (1 / tau)
 * rounds exactly as x / tau (the same real number), and the kernels multiply instead of dividing. */
static int exact_reciprocal(double tau) {
    int e;
    return frexp(fabs(tau), &e) == 0.5 && e > -120 && e < 120;
}
#define DIV_TAU(x) (tau_pow2 ? (x) * itau : (x) / tau)

/* --- the kernels, once per storage type ----------------------------------------------------------
 * STOR: storage type; COMP: compute type; LOAD/STORE convert; RND rounds a COMP to the precision the
 * arithmetic is done in (the identity everywhere now: half precision computes in float32; kept so that a
 * storage-precision variant stays a one-line instantiation). */

#define LIF_DEFINE(NAME, STOR, COMP, LOAD, STORE, RND, EXP)                                              \
    static void NAME##_forward(const lif_job *job, int64_t i0, int64_t i1) {                             \
        const STOR *x = (const STOR *)job->x;                                                           \
        STOR *s = (STOR *)job->out;                                                                     \
        const int64_t T = job->T, M = job->M;                                                           \
        const COMP tau = (COMP)job->tau, vth = RND((COMP)job->v_threshold), vr = RND((COMP)job->v_reset); \
        /* tau a power of two: x * (1 / tau) is x / tau, bit for bit, without a division */              \
        const int tau_pow2 = exact_reciprocal(job->tau);                                                \
        const COMP itau = (COMP)1 / tau;                                                                \
        const COMP v_rest = vr, one = (COMP)1, zero = (COMP)0;                                          \
        COMP v[LIF_BLOCK];                                                                              \
        for (int64_t b = i0; b < i1; b += LIF_BLOCK) {                                                  \
            const int64_t n = i1 - b < LIF_BLOCK ? i1 - b : LIF_BLOCK;                                  \
            for (int64_t j = 0; j < n; ++j) v[j] = v_rest;                                              \
            for (int64_t t = 0; t < T; ++t) {                                                           \
                const STOR *xt = x + t * M + b;                                                         \
                STOR *st = s + t * M + b;                                                               \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    const COMP h = RND(v[j] + RND(DIV_TAU(RND(LOAD(xt[j]) - RND(v[j] - vr)))));            \
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
        /* tau a power of two: x * (1 / tau) is x / tau, bit for bit, without a division */              \
        const int tau_pow2 = exact_reciprocal(job->tau);                                                \
        const COMP itau = (COMP)1 / tau;                                                                \
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
                    const COMP h = RND(v[j] + RND(DIV_TAU(RND(LOAD(xt[j]) - RND(v[j] - vr)))));            \
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
                    const COMP gxv = DIV_TAU(gh);                                                          \
                    gxt[j] = STORE(gxv);                                                                \
                    gv[j] = gh - gxv;                                                                   \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }

#define ID(a) (a)
LIF_DEFINE(lif_f32, float, float, ID, ID, ID, lif_expf)
LIF_DEFINE(lif_f64, double, double, ID, ID, ID, exp)
LIF_DEFINE(lif_bf16, uint16_t, float, bf16_load, bf16_store, ID, lif_expf)

#if defined(__FLT16_MAX__)
#define LIF_HAS_F16 1
#define F16_LOAD(a) ((float)(a))
#define F16_STORE(a) ((_Float16)(a))
LIF_DEFINE(lif_f16, _Float16, float, F16_LOAD, F16_STORE, ID, lif_expf)
#else
#define LIF_HAS_F16 0
#endif

/* --- BatchNorm (affine form) followed by LIF -------------------------------------------------------
 * z = RND(y * scale[c] + shift[c]) feeds the LIF; z is never stored. Per time step the tensor is R rows of
 * L elements: channels-last rows (tokens [B*N, D], channels-last images) hold one element per channel
 * (c = l), channel-first rows (NCHW images: [B*C, H*W]) hold one channel (c = r % C). The backward pass
 * recomputes z and H, writes dL/dz and accumulates, per channel, sum(dL/dz) and sum(dL/dz * (y - mean))
 * in double precision (per thread, then summed in a fixed order), which the BatchNorm backward needs. */

typedef struct {
    int dtype;
    const void *y, *g;
    void *out;
    const void *scale, *shift, *mean; /* [C] in the compute type (float, or double for float64) */
    const void *k1, *k0;              /* grad_input: dL/dy = dL/dz * scale + y * k1 + k0 */
    double *sums;                     /* backward: [nthreads][2][C] */
    int64_t T, R, L, C;
    int channels_last;
    double tau, v_threshold, v_reset, alpha;
    int detach_reset;
    int status;
} bn_job;

#define BN_CH(j) (cl ? l0 + (j) : c_row)

#define BNLIF_DEFINE(NAME, STOR, COMP, LOAD, STORE, RND, EXP)                                            \
    static void NAME##_bn_forward(const bn_job *job, int64_t r0, int64_t r1) {                           \
        const STOR *y = (const STOR *)job->y;                                                           \
        STOR *s = (STOR *)job->out;                                                                     \
        const COMP *scale = (const COMP *)job->scale, *shift = (const COMP *)job->shift;                \
        const int64_t T = job->T, L = job->L, C = job->C, M = job->R * job->L;                          \
        const int cl = job->channels_last;                                                              \
        const COMP tau = (COMP)job->tau, vth = RND((COMP)job->v_threshold), vr = RND((COMP)job->v_reset); \
        /* tau a power of two: x * (1 / tau) is x / tau, bit for bit, without a division */              \
        const int tau_pow2 = exact_reciprocal(job->tau);                                                \
        const COMP itau = (COMP)1 / tau;                                                                \
        const COMP one = (COMP)1, zero = (COMP)0;                                                       \
        COMP v[LIF_BLOCK], sc[LIF_BLOCK], sh[LIF_BLOCK];                                                \
        for (int64_t r = r0; r < r1; ++r) {                                                             \
            const int64_t c_row = r % C;                                                                \
            for (int64_t l0 = 0; l0 < L; l0 += LIF_BLOCK) {                                             \
                const int64_t n = L - l0 < LIF_BLOCK ? L - l0 : LIF_BLOCK;                              \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    v[j] = vr;                                                                          \
                    sc[j] = scale[BN_CH(j)];                                                            \
                    sh[j] = shift[BN_CH(j)];                                                            \
                }                                                                                       \
                for (int64_t t = 0; t < T; ++t) {                                                       \
                    const STOR *yt = y + t * M + r * L + l0;                                            \
                    STOR *st = s + t * M + r * L + l0;                                                  \
                    for (int64_t j = 0; j < n; ++j) {                                                   \
                        const COMP z = RND(LOAD(yt[j]) * sc[j] + sh[j]);                                \
                        const COMP h = RND(v[j] + RND(DIV_TAU(RND(z - RND(v[j] - vr)))));                  \
                        const int fired = h >= vth;                                                     \
                        st[j] = STORE(fired ? one : zero);                                              \
                        v[j] = fired ? vr : h;                                                          \
                    }                                                                                   \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    static void NAME##_bn_backward(const bn_job *job, int64_t r0, int64_t r1, COMP *hbuf, double *s1) {  \
        const STOR *y = (const STOR *)job->y, *g = (const STOR *)job->g;                                \
        STOR *gz_out = (STOR *)job->out;                                                                \
        const COMP *scale = (const COMP *)job->scale, *shift = (const COMP *)job->shift;                \
        const COMP *mean = (const COMP *)job->mean;                                                     \
        const int64_t T = job->T, L = job->L, C = job->C, M = job->R * job->L;                          \
        const int cl = job->channels_last, detach = job->detach_reset;                                  \
        const COMP tau = (COMP)job->tau, vth = RND((COMP)job->v_threshold), vr = RND((COMP)job->v_reset); \
        /* tau a power of two: x * (1 / tau) is x / tau, bit for bit, without a division */              \
        const int tau_pow2 = exact_reciprocal(job->tau);                                                \
        const COMP itau = (COMP)1 / tau;                                                                \
        const COMP alpha = (COMP)job->alpha, one = (COMP)1, zero = (COMP)0;                             \
        double *s2 = s1 + C;                                                                            \
        COMP v[LIF_BLOCK], gv[LIF_BLOCK], sc[LIF_BLOCK], sh[LIF_BLOCK], mu[LIF_BLOCK];                  \
        COMP a1[LIF_BLOCK], a2[LIF_BLOCK]; /* over the T steps of one element, then added in double */  \
        for (int64_t r = r0; r < r1; ++r) {                                                             \
            const int64_t c_row = r % C;                                                                \
            for (int64_t l0 = 0; l0 < L; l0 += LIF_BLOCK) {                                             \
                const int64_t n = L - l0 < LIF_BLOCK ? L - l0 : LIF_BLOCK;                              \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    v[j] = vr;                                                                          \
                    gv[j] = zero;                                                                       \
                    a1[j] = zero;                                                                       \
                    a2[j] = zero;                                                                       \
                    sc[j] = scale[BN_CH(j)];                                                            \
                    sh[j] = shift[BN_CH(j)];                                                            \
                    mu[j] = mean[BN_CH(j)];                                                             \
                }                                                                                       \
                for (int64_t t = 0; t < T; ++t) { /* recompute H */                                     \
                    const STOR *yt = y + t * M + r * L + l0;                                            \
                    COMP *ht = hbuf + t * LIF_BLOCK;                                                    \
                    for (int64_t j = 0; j < n; ++j) {                                                   \
                        const COMP z = RND(LOAD(yt[j]) * sc[j] + sh[j]);                                \
                        const COMP h = RND(v[j] + RND(DIV_TAU(RND(z - RND(v[j] - vr)))));                  \
                        ht[j] = h;                                                                      \
                        v[j] = h >= vth ? vr : h;                                                       \
                    }                                                                                   \
                }                                                                                       \
                for (int64_t t = T - 1; t >= 0; --t) {                                                  \
                    const STOR *yt = y + t * M + r * L + l0, *gt = g + t * M + r * L + l0;              \
                    STOR *ot = gz_out + t * M + r * L + l0;                                             \
                    const COMP *ht = hbuf + t * LIF_BLOCK;                                              \
                    for (int64_t j = 0; j < n; ++j) {                                                   \
                        const COMP h = ht[j];                                                           \
                        const COMP sgm = one / (one + EXP(-(alpha * (h - vth))));                       \
                        const COMP sg = alpha * sgm * (one - sgm);                                      \
                        const COMP not_fired = h >= vth ? zero : one;                                   \
                        const COMP dv_dh = detach ? not_fired : not_fired + (vr - h) * sg;              \
                        const COMP gh = LOAD(gt[j]) * sg + gv[j] * dv_dh;                               \
                        const COMP gz = DIV_TAU(gh);                                                       \
                        ot[j] = STORE(gz);                                                              \
                        gv[j] = gh - gz;                                                                \
                        a1[j] += gz;                                                                    \
                        a2[j] += gz * (LOAD(yt[j]) - mu[j]);                                            \
                    }                                                                                   \
                }                                                                                       \
                if (cl) {                                                                               \
                    for (int64_t j = 0; j < n; ++j) {                                                   \
                        s1[l0 + j] += a1[j];                                                            \
                        s2[l0 + j] += a2[j];                                                            \
                    }                                                                                   \
                } else {                                                                                \
                    double b1 = 0.0, b2 = 0.0;                                                          \
                    for (int64_t j = 0; j < n; ++j) {                                                   \
                        b1 += a1[j];                                                                    \
                        b2 += a2[j];                                                                    \
                    }                                                                                   \
                    s1[c_row] += b1;                                                                    \
                    s2[c_row] += b2;                                                                    \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    /* Per-channel sums for the batch statistics: pass 0 adds y, pass 1 adds (y - mean)^2 (mean: double). */ \
    static void NAME##_bn_stats(const bn_job *job, int64_t r0, int64_t r1, double *acc, int pass) {       \
        const STOR *y = (const STOR *)job->y;                                                           \
        const double *mean = (const double *)job->mean;                                                 \
        const int64_t T = job->T, L = job->L, C = job->C, M = job->R * job->L;                          \
        const int cl = job->channels_last;                                                              \
        double a[LIF_BLOCK], mu[LIF_BLOCK];                                                             \
        if (cl) { /* a row holds every channel once: add it to the sums in place (same order as below) */ \
            for (int64_t t = 0; t < T; ++t)                                                             \
                for (int64_t r = r0; r < r1; ++r) {                                                     \
                    const STOR *yr = y + t * M + r * L;                                                 \
                    if (pass) {                                                                         \
                        for (int64_t l = 0; l < L; ++l) {                                               \
                            const double d = (double)LOAD(yr[l]) - mean[l];                             \
                            acc[l] += d * d;                                                            \
                        }                                                                               \
                    } else {                                                                            \
                        for (int64_t l = 0; l < L; ++l) acc[l] += (double)LOAD(yr[l]);                  \
                    }                                                                                   \
                }                                                                                       \
            return;                                                                                     \
        }                                                                                               \
        for (int64_t r = r0; r < r1; ++r) {                                                             \
            const int64_t c_row = r % C;                                                                \
            for (int64_t l0 = 0; l0 < L; l0 += LIF_BLOCK) {                                             \
                const int64_t n = L - l0 < LIF_BLOCK ? L - l0 : LIF_BLOCK;                              \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    a[j] = 0.0;                                                                         \
                    mu[j] = pass ? mean[BN_CH(j)] : 0.0;                                                \
                }                                                                                       \
                for (int64_t t = 0; t < T; ++t) {                                                       \
                    const STOR *yt = y + t * M + r * L + l0;                                            \
                    if (pass) {                                                                         \
                        for (int64_t j = 0; j < n; ++j) {                                               \
                            const double d = (double)LOAD(yt[j]) - mu[j];                               \
                            a[j] += d * d;                                                              \
                        }                                                                               \
                    } else {                                                                            \
                        for (int64_t j = 0; j < n; ++j) a[j] += (double)LOAD(yt[j]);                    \
                    }                                                                                   \
                }                                                                                       \
                if (cl) {                                                                               \
                    for (int64_t j = 0; j < n; ++j) acc[l0 + j] += a[j];                                \
                } else {                                                                                \
                    double b = 0.0;                                                                     \
                    for (int64_t j = 0; j < n; ++j) b += a[j];                                          \
                    acc[c_row] += b;                                                                    \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    static void NAME##_bn_grad_input(const bn_job *job, int64_t r0, int64_t r1) {                        \
        const STOR *y = (const STOR *)job->y;                                                           \
        STOR *gy = (STOR *)job->out;                                                                    \
        const COMP *a = (const COMP *)job->scale, *k1 = (const COMP *)job->k1, *k0 = (const COMP *)job->k0; \
        const int64_t T = job->T, L = job->L, C = job->C, M = job->R * job->L;                          \
        const int cl = job->channels_last;                                                              \
        COMP ca[LIF_BLOCK], c1[LIF_BLOCK], c0[LIF_BLOCK];                                               \
        for (int64_t r = r0; r < r1; ++r) {                                                             \
            const int64_t c_row = r % C;                                                                \
            for (int64_t l0 = 0; l0 < L; l0 += LIF_BLOCK) {                                             \
                const int64_t n = L - l0 < LIF_BLOCK ? L - l0 : LIF_BLOCK;                              \
                for (int64_t j = 0; j < n; ++j) {                                                       \
                    ca[j] = a[BN_CH(j)];                                                                \
                    c1[j] = k1[BN_CH(j)];                                                               \
                    c0[j] = k0[BN_CH(j)];                                                               \
                }                                                                                       \
                for (int64_t t = 0; t < T; ++t) {                                                       \
                    const STOR *yt = y + t * M + r * L + l0;                                            \
                    STOR *gt = gy + t * M + r * L + l0;                                                 \
                    for (int64_t j = 0; j < n; ++j)                                                     \
                        gt[j] = STORE(LOAD(gt[j]) * ca[j] + (LOAD(yt[j]) * c1[j] + c0[j]));             \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }

BNLIF_DEFINE(lif_f32, float, float, ID, ID, ID, lif_expf)
BNLIF_DEFINE(lif_f64, double, double, ID, ID, ID, exp)
BNLIF_DEFINE(lif_bf16, uint16_t, float, bf16_load, bf16_store, ID, lif_expf)
#if LIF_HAS_F16
BNLIF_DEFINE(lif_f16, _Float16, float, F16_LOAD, F16_STORE, ID, lif_expf)
#endif

/* --- work split over threads ---------------------------------------------------------------------
 * [0, n) in `tasks` equal chunks (rounded up to a multiple of `align` items), the calling thread taking
 * the first; a thread that cannot be started has its share done by the caller. fn gets its task's index,
 * so that sums can be kept per task and added in task order: results never depend on scheduling. */

typedef void (*range_fn)(const void *ctx, int64_t i0, int64_t i1, int task);

typedef struct {
    range_fn fn;
    const void *ctx;
    int64_t i0, i1;
    int task;
} range_task;

static void *range_run(void *arg) {
    const range_task *t = (const range_task *)arg;
    if (t->i0 < t->i1) t->fn(t->ctx, t->i0, t->i1, t->task);
    return NULL;
}

/* How many tasks: at most nthreads and n, each with at least min_work of `work`, and at least one. */
static int task_count(int64_t n, int64_t work, int64_t min_work, int nthreads) {
    if (nthreads > LIF_MAX_THREADS) nthreads = LIF_MAX_THREADS;
    if ((int64_t)nthreads * min_work > work) nthreads = (int)(work / min_work);
    if (nthreads > n) nthreads = (int)n;
    return nthreads < 1 ? 1 : nthreads;
}

static void parallel_ranges(range_fn fn, const void *ctx, int64_t n, int64_t align, int tasks) {
    range_task task[LIF_MAX_THREADS];
    pthread_t threads[LIF_MAX_THREADS];
    int started[LIF_MAX_THREADS];
    const int64_t chunk = ((n + tasks - 1) / tasks + align - 1) / align * align;
    for (int k = 0; k < tasks; ++k) {
        const int64_t i0 = (int64_t)k * chunk, i1 = i0 + chunk;
        task[k] = (range_task){fn, ctx, i0 < n ? i0 : n, i1 < n ? i1 : n, k};
        started[k] = 0;
    }
    for (int k = 1; k < tasks; ++k) started[k] = pthread_create(&threads[k], NULL, range_run, &task[k]) == 0;
    range_run(&task[0]);
    for (int k = 1; k < tasks; ++k) {
        if (started[k])
            pthread_join(threads[k], NULL);
        else
            range_run(&task[k]);
    }
}

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

static void lif_forward_range(const void *job, int64_t i0, int64_t i1, int task) {
    (void)task;
    run_range((lif_job *)job, 0, i0, i1);
}

static void lif_backward_range(const void *job, int64_t i0, int64_t i1, int task) {
    (void)task;
    run_range((lif_job *)job, 1, i0, i1);
}

/* Split [0, M) into chunks aligned to 64 elements, so that no two threads share a cache line. */
static int run_parallel(lif_job *job, int backward, int nthreads) {
    job->status = 0;
    parallel_ranges(backward ? lif_backward_range : lif_forward_range, job, job->M, 64,
                    task_count(job->M, job->M * job->T, 16384, nthreads));
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

/* --- BatchNorm + LIF: dispatch ------------------------------------------------------------------- */

enum { BN_FORWARD = 0, BN_BACKWARD = 1, BN_GRAD_INPUT = 2, BN_STATS_SUM = 3, BN_STATS_SQUARES = 4 };

typedef struct {
    bn_job *job;
    int kind;
    int64_t r0, r1;
    double *sums; /* this thread's [2][C] (backward, statistics) */
} bn_task;

static void bn_run(bn_task *task) {
    bn_job *job = task->job;
    if (task->r0 >= task->r1) return;
    if (task->kind == BN_STATS_SUM || task->kind == BN_STATS_SQUARES) {
        const int pass = task->kind == BN_STATS_SQUARES;
        switch (job->dtype) {
            case LIF_F32: lif_f32_bn_stats(job, task->r0, task->r1, task->sums, pass); break;
            case LIF_F64: lif_f64_bn_stats(job, task->r0, task->r1, task->sums, pass); break;
            case LIF_BF16: lif_bf16_bn_stats(job, task->r0, task->r1, task->sums, pass); break;
#if LIF_HAS_F16
            case LIF_F16: lif_f16_bn_stats(job, task->r0, task->r1, task->sums, pass); break;
#endif
            default: job->status = -1;
        }
        return;
    }
    if (task->kind == BN_FORWARD || task->kind == BN_GRAD_INPUT) {
        const int fwd = task->kind == BN_FORWARD;
        switch (job->dtype) {
            case LIF_F32: fwd ? lif_f32_bn_forward(job, task->r0, task->r1) : lif_f32_bn_grad_input(job, task->r0, task->r1); break;
            case LIF_F64: fwd ? lif_f64_bn_forward(job, task->r0, task->r1) : lif_f64_bn_grad_input(job, task->r0, task->r1); break;
            case LIF_BF16: fwd ? lif_bf16_bn_forward(job, task->r0, task->r1) : lif_bf16_bn_grad_input(job, task->r0, task->r1); break;
#if LIF_HAS_F16
            case LIF_F16: fwd ? lif_f16_bn_forward(job, task->r0, task->r1) : lif_f16_bn_grad_input(job, task->r0, task->r1); break;
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
        case LIF_F32: lif_f32_bn_backward(job, task->r0, task->r1, (float *)hbuf, task->sums); break;
        case LIF_F64: lif_f64_bn_backward(job, task->r0, task->r1, (double *)hbuf, task->sums); break;
        case LIF_BF16: lif_bf16_bn_backward(job, task->r0, task->r1, (float *)hbuf, task->sums); break;
#if LIF_HAS_F16
        case LIF_F16: lif_f16_bn_backward(job, task->r0, task->r1, (float *)hbuf, task->sums); break;
#endif
        default: job->status = -1;
    }
    free(hbuf);
}

typedef struct {
    bn_job *job;
    int kind;
    double *sums; /* [tasks][2][C] (backward, statistics), or NULL */
} bn_call;

static void bn_range(const void *ctx, int64_t r0, int64_t r1, int task) {
    const bn_call *call = (const bn_call *)ctx;
    bn_task t = {call->job, call->kind, r0, r1, call->sums ? call->sums + (size_t)task * 2 * call->job->C : NULL};
    bn_run(&t);
}

/* Rows split over threads; for the backward pass and the statistics each thread sums into its own [2][C]
 * buffer and the buffers are added in thread order, so the result does not depend on scheduling. */
static int bn_parallel(bn_job *job, int kind, int nthreads, double *sums_out) {
    const int tasks = task_count(job->R, job->R * job->L * job->T, 16384, nthreads);
    job->status = 0;
    double *sums = NULL;
    if (kind == BN_BACKWARD || kind == BN_STATS_SUM || kind == BN_STATS_SQUARES) {
        sums = (double *)calloc((size_t)tasks * 2 * job->C, sizeof(double));
        if (!sums) return -2;
    }
    const bn_call call = {job, kind, sums};
    parallel_ranges(bn_range, &call, job->R, 1, tasks);
    if (sums) {
        for (int64_t i = 0; i < 2 * job->C; ++i) {
            double total = 0.0;
            for (int k = 0; k < tasks; ++k) total += sums[(size_t)k * 2 * job->C + i];
            sums_out[i] = total;
        }
        free(sums);
    }
    return job->status;
}

/* spikes = LIF(RND(y * scale[c] + shift[c])) for y laid out as [T][R rows][L]. */
int bn_lif_forward(int dtype, const void *y, void *spikes, const void *scale, const void *shift, int64_t T,
                   int64_t R, int64_t L, int64_t C, int channels_last, double tau, double v_threshold,
                   double v_reset, int nthreads) {
    bn_job job = {dtype, y, NULL, spikes, scale, shift, NULL, NULL, NULL, NULL, T, R, L, C, channels_last,
                  tau, v_threshold, v_reset, 0.0, 1, 0};
    return bn_parallel(&job, BN_FORWARD, nthreads, NULL);
}

/* grad_z = dL/dz (z recomputed from y) and sums = [sum(grad_z) per channel, sum(grad_z * (y - mean))]. */
int bn_lif_backward(int dtype, const void *y, const void *grad_spikes, void *grad_z, const void *scale,
                    const void *shift, const void *mean, double *sums, int64_t T, int64_t R, int64_t L,
                    int64_t C, int channels_last, double tau, double v_threshold, double v_reset, double alpha,
                    int detach_reset, int nthreads) {
    bn_job job = {dtype, y, grad_spikes, grad_z, scale, shift, mean, NULL, NULL, NULL, T, R, L, C, channels_last,
                  tau, v_threshold, v_reset, alpha, detach_reset, 0};
    return bn_parallel(&job, BN_BACKWARD, nthreads, sums);
}

/* In place: grad[i] = grad[i] * a[c] + (y[i] * k1[c] + k0[c]), the BatchNorm input gradient. */
int bn_grad_input(int dtype, void *grad, const void *y, const void *a, const void *k1, const void *k0, int64_t T,
                  int64_t R, int64_t L, int64_t C, int channels_last, int nthreads) {
    bn_job job = {dtype, y, NULL, grad, a, NULL, NULL, k1, k0, NULL, T, R, L, C, channels_last,
                  0.0, 0.0, 0.0, 0.0, 1, 0};
    return bn_parallel(&job, BN_GRAD_INPUT, nthreads, NULL);
}

/* Batch statistics of y laid out as [R rows][L] (one time step): per-channel mean and biased variance, in
 * double precision and two passes (the sum, then the squared deviations from the mean), so that no
 * cancellation creeps in. PyTorch's var_mean over the non-channel dimensions is several times slower here. */
int bn_stats(int dtype, const void *y, double *mean, double *var, int64_t R, int64_t L, int64_t C,
             int channels_last, int nthreads) {
    bn_job job = {dtype, y, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, R, L, C, channels_last,
                  0.0, 0.0, 0.0, 0.0, 1, 0};
    double *sums = (double *)malloc((size_t)2 * C * sizeof(double));
    if (!sums) return -2;
    const double count = (double)(R * L / C);
    int status = bn_parallel(&job, BN_STATS_SUM, nthreads, sums);
    for (int64_t c = 0; status == 0 && c < C; ++c) mean[c] = sums[c] / count;
    job.mean = mean;
    if (status == 0) status = bn_parallel(&job, BN_STATS_SQUARES, nthreads, sums);
    for (int64_t c = 0; status == 0 && c < C; ++c) var[c] = sums[c] / count;
    free(sums);
    return status;
}


/* --- 1-bit spike storage ------------------------------------------------------------------------------
 * A tensor saved for backward that holds only 0 and 1 is kept as one bit per element (element i in bit
 * i % 8 of byte i / 8, memory order) and expanded again when the backward pass needs it. Packing checks
 * every element on the way and stops at the first that is neither 0 nor 1 (returning 1: store the tensor
 * as it is), so offering it a pre-activation costs a few bytes read, not a pass. -0.0 is not packed (it
 * would come back as +0.0, and a gradient must come back bit for bit). */

/* Scalar loops, from element i0 (a multiple of 8) on: the whole job where no vector path exists, else the tail. */
#define PACK_DEFINE(NAME, BITS, ONE_BITS)                                                                \
    static int NAME##_pack(const BITS *x, uint8_t *out, int64_t i0, int64_t n) {                        \
        for (int64_t i = i0 / 8; i < (n + 7) / 8; ++i) {                                                \
            const int64_t k_end = n - 8 * i < 8 ? n - 8 * i : 8;                                        \
            unsigned bad = 0, b = 0;                                                                    \
            for (int64_t k = 0; k < k_end; ++k) {                                                       \
                const BITS u = x[8 * i + k];                                                            \
                bad |= (u != 0) & (u != (BITS)ONE_BITS);                                                \
                b |= (unsigned)(u == (BITS)ONE_BITS) << k;                                              \
            }                                                                                           \
            if (bad) return 1;                                                                          \
            out[i] = (uint8_t)b;                                                                        \
        }                                                                                               \
        return 0;                                                                                       \
    }                                                                                                   \
    static void NAME##_unpack(const uint8_t *in, BITS *x, int64_t i0, int64_t n) {                      \
        for (int64_t i = i0; i < n; ++i)                                                                \
            x[i] = ((in[i >> 3] >> (i & 7)) & 1u) ? (BITS)ONE_BITS : (BITS)0;                           \
    }

PACK_DEFINE(bits_f32, uint32_t, 0x3F800000u)
PACK_DEFINE(bits_f64, uint64_t, 0x3FF0000000000000ull)
PACK_DEFINE(bits_bf16, uint16_t, 0x3F80u)
PACK_DEFINE(bits_f16, uint16_t, 0x3C00u)

/* AVX-512: one compare gives the 16 (32-bit) or 32 (16-bit) bits of a vector in memory order, and a masked
 * move expands them again: about ten times faster than the scalar loops. Element bits are compared as
 * integers, so -0.0 and NaNs count as "not 0 or 1" exactly as in the scalar code. */
#if defined(__AVX512F__)
#include <immintrin.h>

static int64_t pack32_avx512(const uint32_t *x, uint8_t *out, int64_t n, uint32_t one, int *bad) {
    const __m512i vone = _mm512_set1_epi32((int)one), vzero = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i v = _mm512_loadu_si512((const void *)(x + i));
        const __mmask16 is1 = _mm512_cmpeq_epi32_mask(v, vone), is0 = _mm512_cmpeq_epi32_mask(v, vzero);
        if ((uint16_t)(is0 | is1) != 0xFFFFu) {
            *bad = 1;
            return i;
        }
        const uint16_t bits = (uint16_t)is1;
        memcpy(out + i / 8, &bits, sizeof bits);
    }
    return i;
}

static int64_t unpack32_avx512(const uint8_t *in, uint32_t *x, int64_t n, uint32_t one) {
    const __m512i vone = _mm512_set1_epi32((int)one);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint16_t bits;
        memcpy(&bits, in + i / 8, sizeof bits);
        _mm512_storeu_si512((void *)(x + i), _mm512_maskz_mov_epi32((__mmask16)bits, vone));
    }
    return i;
}
#endif

#if defined(__AVX512BW__)
static int64_t pack16_avx512(const uint16_t *x, uint8_t *out, int64_t n, uint16_t one, int *bad) {
    const __m512i vone = _mm512_set1_epi16((short)one), vzero = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512i v = _mm512_loadu_si512((const void *)(x + i));
        const __mmask32 is1 = _mm512_cmpeq_epi16_mask(v, vone), is0 = _mm512_cmpeq_epi16_mask(v, vzero);
        if ((uint32_t)(is0 | is1) != 0xFFFFFFFFu) {
            *bad = 1;
            return i;
        }
        const uint32_t bits = (uint32_t)is1;
        memcpy(out + i / 8, &bits, sizeof bits);
    }
    return i;
}

static int64_t unpack16_avx512(const uint8_t *in, uint16_t *x, int64_t n, uint16_t one) {
    const __m512i vone = _mm512_set1_epi16((short)one);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint32_t bits;
        memcpy(&bits, in + i / 8, sizeof bits);
        _mm512_storeu_si512((void *)(x + i), _mm512_maskz_mov_epi16((__mmask32)bits, vone));
    }
    return i;
}
#endif

static int pack_32(const uint32_t *x, uint8_t *bits, int64_t n, uint32_t one) {
    int64_t i = 0;
#if defined(__AVX512F__)
    int bad = 0;
    i = pack32_avx512(x, bits, n, one, &bad);
    if (bad) return 1;
#endif
    (void)one;
    return bits_f32_pack(x, bits, i, n);
}

static int pack_16(const uint16_t *x, uint8_t *bits, int64_t n, uint16_t one) {
    int64_t i = 0;
#if defined(__AVX512BW__)
    int bad = 0;
    i = pack16_avx512(x, bits, n, one, &bad);
    if (bad) return 1;
#endif
    return one == 0x3F80u ? bits_bf16_pack(x, bits, i, n) : bits_f16_pack(x, bits, i, n);
}

static void unpack_32(const uint8_t *bits, uint32_t *x, int64_t n, uint32_t one) {
    int64_t i = 0;
#if defined(__AVX512F__)
    i = unpack32_avx512(bits, x, n, one);
#endif
    (void)one;
    bits_f32_unpack(bits, x, i, n);
}

static void unpack_16(const uint8_t *bits, uint16_t *x, int64_t n, uint16_t one) {
    int64_t i = 0;
#if defined(__AVX512BW__)
    i = unpack16_avx512(bits, x, n, one);
#endif
    if (one == 0x3F80u)
        bits_bf16_unpack(bits, x, i, n);
    else
        bits_f16_unpack(bits, x, i, n);
}

/* bits[(n + 7) / 8] from x[n] of 0/1 values. Returns 0; 1 if some element is not 0 or 1 (bits is then
 * partly written and must be ignored); -1 for an unsupported dtype. */
int spikes_pack(int dtype, const void *x, uint8_t *bits, int64_t n) {
    switch (dtype) {
        case LIF_F32: return pack_32((const uint32_t *)x, bits, n, 0x3F800000u);
        case LIF_F64: return bits_f64_pack((const uint64_t *)x, bits, 0, n);
        case LIF_BF16: return pack_16((const uint16_t *)x, bits, n, 0x3F80u);
        case LIF_F16: return pack_16((const uint16_t *)x, bits, n, 0x3C00u);
        default: return -1;
    }
}

/* x[n] (0.0 or 1.0 in the dtype) from bits written by spikes_pack. Returns 0, or -1 for an unsupported dtype. */
int spikes_unpack(int dtype, const uint8_t *bits, void *x, int64_t n) {
    switch (dtype) {
        case LIF_F32: unpack_32(bits, (uint32_t *)x, n, 0x3F800000u); return 0;
        case LIF_F64: bits_f64_unpack(bits, (uint64_t *)x, 0, n); return 0;
        case LIF_BF16: unpack_16(bits, (uint16_t *)x, n, 0x3F80u); return 0;
        case LIF_F16: unpack_16(bits, (uint16_t *)x, n, 0x3C00u); return 0;
        default: return -1;
    }
}

/* --- Max-pooling of channels-last maps -----------------------------------------------------------------
 * PyTorch's max_pool2d takes the first maximum of each window in row-major order (a NaN counting as the
 * maximum); its backward adds every output's gradient to that element, output by output in row-major
 * order, rounding to the storage type after each addition. The forward kernel writes the values and, for
 * training, each maximum's place in its window as one byte (kh * kw <= 255 places, counted from the
 * unclipped window's corner) where PyTorch writes an int64 index; the backward kernel adds the gradients
 * in PyTorch's order and rounding, so the result is PyTorch's bit for bit. Layout: [N][H][W][C] in memory
 * (a channels-last NCHW tensor); the loops over C vectorise; images are split over threads. */

typedef struct {
    int dtype;
    const void *x;  /* forward: the input */
    void *out;      /* forward: the output; backward: the input gradient */
    uint8_t *where; /* forward (may be NULL) and backward: [N][OH][OW][C] places of the maxima */
    const void *g;  /* backward: the output gradient */
    int64_t N, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw;
} pool_job;

/* take ? a : b, for the backward's update of a gradient in place. For bfloat16 it is spelt as bit masking,
 * which GCC keeps as an unconditional store: as a select it becomes a conditional 16-bit store, which
 * does not vectorise without AVX-512's masked stores (the AVX2 build then ran the loop scalar, 6x slower). */
#define POOL_SELECT_F32(take, a, b) ((take) ? (a) : (b))
#define POOL_SELECT_U16(take, a, b) ((uint16_t)((b) ^ (((a) ^ (b)) & (uint16_t)-(int)(take))))

#define POOL_DEFINE(NAME, STOR, LOAD, STORE, SELECT)                                                     \
    static void NAME##_pool_forward(const pool_job *p, int64_t n0, int64_t n1) {                         \
        const STOR *x = (const STOR *)p->x;                                                             \
        STOR *out = (STOR *)p->out;                                                                     \
        const int64_t H = p->H, W = p->W, C = p->C;                                                     \
        float m[LIF_BLOCK];                                                                             \
        int32_t at[LIF_BLOCK]; /* (int32 lanes beside the float ones: the loop stays one vector width) */\
        for (int64_t n = n0; n < n1; ++n)                                                               \
            for (int64_t oh = 0; oh < p->OH; ++oh)                                                      \
                for (int64_t ow = 0; ow < p->OW; ++ow) {                                                \
                    const int64_t a = oh * p->sh - p->ph, b = ow * p->sw - p->pw;                       \
                    const int64_t h1 = a + p->kh < H ? a + p->kh : H, w1 = b + p->kw < W ? b + p->kw : W;\
                    const int64_t o = ((n * p->OH + oh) * p->OW + ow) * C;                              \
                    /* an all -inf window keeps its first element, as PyTorch's */                      \
                    const int32_t first = (int32_t)(((a < 0 ? 0 : a) - a) * p->kw + ((b < 0 ? 0 : b) - b));\
                    for (int64_t c0 = 0; c0 < C; c0 += LIF_BLOCK) {                                     \
                        const int64_t nc = C - c0 < LIF_BLOCK ? C - c0 : LIF_BLOCK;                     \
                        for (int64_t j = 0; j < nc; ++j) {                                              \
                            m[j] = -INFINITY;                                                           \
                            at[j] = first;                                                              \
                        }                                                                               \
                        for (int64_t ih = a < 0 ? 0 : a; ih < h1; ++ih)                                 \
                            for (int64_t iw = b < 0 ? 0 : b; iw < w1; ++iw) {                           \
                                const STOR *xp = x + ((n * H + ih) * W + iw) * C + c0;                  \
                                if (!p->where) { /* inference: the values alone */                      \
                                    for (int64_t j = 0; j < nc; ++j) {                                  \
                                        const float v = LOAD(xp[j]);                                    \
                                        m[j] = v > m[j] || v != v ? v : m[j];                           \
                                    }                                                                   \
                                    continue;                                                           \
                                }                                                                       \
                                const int32_t place = (int32_t)((ih - a) * p->kw + (iw - b));           \
                                for (int64_t j = 0; j < nc; ++j) {                                      \
                                    const float v = LOAD(xp[j]);                                        \
                                    const int take = v > m[j] || v != v;                                \
                                    m[j] = take ? v : m[j];                                             \
                                    at[j] = take ? place : at[j];                                       \
                                }                                                                       \
                            }                                                                           \
                        /* the maximum is an input value (a NaN may come back as the canonical one) */  \
                        for (int64_t j = 0; j < nc; ++j) out[o + c0 + j] = STORE(m[j]);                 \
                        if (p->where)                                                                   \
                            for (int64_t j = 0; j < nc; ++j) p->where[o + c0 + j] = (uint8_t)at[j];     \
                    }                                                                                   \
                }                                                                                       \
    }                                                                                                   \
                                                                                                        \
    static void NAME##_pool_backward(const pool_job *p, int64_t n0, int64_t n1) {                        \
        const STOR *g = (const STOR *)p->g;                                                             \
        STOR *gi = (STOR *)p->out;                                                                      \
        const int64_t H = p->H, W = p->W, C = p->C;                                                     \
        for (int64_t n = n0; n < n1; ++n) {                                                             \
            memset(gi + n * H * W * C, 0, (size_t)(H * W * C) * sizeof(STOR));                          \
            for (int64_t oh = 0; oh < p->OH; ++oh)                                                      \
                for (int64_t ow = 0; ow < p->OW; ++ow) {                                                \
                    const int64_t a = oh * p->sh - p->ph, b = ow * p->sw - p->pw;                       \
                    const int64_t h1 = a + p->kh < H ? a + p->kh : H, w1 = b + p->kw < W ? b + p->kw : W; \
                    const int64_t o = ((n * p->OH + oh) * p->OW + ow) * C;                              \
                    const STOR *go = g + o;                                                             \
                    const uint8_t *at = p->where + o;                                                   \
                    for (int64_t ih = a < 0 ? 0 : a; ih < h1; ++ih)                                     \
                        for (int64_t iw = b < 0 ? 0 : b; iw < w1; ++iw) {                               \
                            const uint8_t place = (uint8_t)((ih - a) * p->kw + (iw - b));               \
                            STOR *gp = gi + ((n * H + ih) * W + iw) * C;                                \
                            /* a select, not an added zero: an untouched -0.0 must stay -0.0 */         \
                            for (int64_t c = 0; c < C; ++c)                                             \
                                gp[c] = SELECT(at[c] == place, STORE(LOAD(gp[c]) + LOAD(go[c])), gp[c]);\
                        }                                                                               \
                }                                                                                       \
        }                                                                                               \
    }

POOL_DEFINE(pool_f32, float, ID, ID, POOL_SELECT_F32)
POOL_DEFINE(pool_bf16, uint16_t, bf16_load, bf16_store, POOL_SELECT_U16)

static void pool_forward_range(const void *job, int64_t n0, int64_t n1, int task) {
    const pool_job *p = (const pool_job *)job;
    (void)task;
    (p->dtype == LIF_BF16 ? pool_bf16_pool_forward : pool_f32_pool_forward)(p, n0, n1);
}

static void pool_backward_range(const void *job, int64_t n0, int64_t n1, int task) {
    const pool_job *p = (const pool_job *)job;
    (void)task;
    (p->dtype == LIF_BF16 ? pool_bf16_pool_backward : pool_f32_pool_backward)(p, n0, n1);
}

static int pool_parallel(const pool_job *job, int backward, int nthreads) {
    if (job->dtype != LIF_F32 && job->dtype != LIF_BF16) return -1;
    if (job->kh * job->kw > 255) return -3;
    parallel_ranges(backward ? pool_backward_range : pool_forward_range, job, job->N, 1,
                    task_count(job->N, job->N * job->H * job->W * job->C, 16384, nthreads));
    return 0;
}

/* out [N][OH][OW][C] = the window maxima of x [N][H][W][C] (float32 or bfloat16), and where (may be NULL)
 * their places. Returns 0, -1 for an unsupported dtype, -3 for a window of over 255 places. */
int max_pool_forward(int dtype, const void *x, void *out, uint8_t *where, int64_t N, int64_t H, int64_t W,
                     int64_t C, int64_t OH, int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int nthreads) {
    const pool_job job = {dtype, x, out, where, NULL, N, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw};
    return pool_parallel(&job, 0, nthreads);
}

/* grad_in [N][H][W][C] from grad_out [N][OH][OW][C] and the places max_pool_forward wrote. */
int max_pool_backward(int dtype, const uint8_t *where, const void *grad_out, void *grad_in, int64_t N, int64_t H,
                      int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t ph, int64_t pw, int nthreads) {
    const pool_job job = {dtype, NULL, grad_in, (uint8_t *)where, grad_out, N, H, W, C, OH, OW, kh, kw, sh, sw,
                          ph, pw};
    return pool_parallel(&job, 1, nthreads);
}


/* --- Spiking self-attention products -------------------------------------------------------------------
 * out = scale * Q (K^T V) per head, for spike tensors q, k, v [S][N][D] (S = T * B samples, D = H heads of d
 * channels, contiguous), without copying the heads apart. With 0/1 operands every partial sum is an integer
 * (at most N * d, exact in float32 up to 2^24), so any summation order gives the sums of PyTorch's matrix
 * products exactly, and the scale is then applied as PyTorch applies it (one float32 product). The loops
 * skip the zeros of Q and K (most of a spike tensor), so the products cost a fraction of a GEMM's work.
 * The backward pass recomputes K^T V and returns the gradients of q, k and v (float32 arithmetic, rounded
 * once to the storage type). */

typedef struct {
    int dtype;
    const void *q, *k, *v;
    const float *g; /* backward: gradient of out */
    float *out;     /* forward */
    void *dq, *dk, *dv;
    int64_t S, N, D, H;
    float scale;
    int status;
} attn_job;

/* The places of the nonzeros of x[0..d) (a -0.0 counts as zero, a NaN as nonzero); returns their count.
 * Spike rows are mostly zeros in no pattern: AVX-512 finds them 32 (16) at a time with one test, and the
 * scalar loop counts without a branch per element. */
static inline int64_t nonzeros_16(const uint16_t *x, int64_t d, int32_t *at) {
    int64_t count = 0, i = 0;
#if defined(__AVX512BW__)
    const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
    for (; i + 32 <= d; i += 32)
        for (uint32_t m = _mm512_test_epi16_mask(_mm512_loadu_si512((const void *)(x + i)), magnitude); m; m &= m - 1)
            at[count++] = (int32_t)(i + __builtin_ctz(m));
#endif
    for (; i < d; ++i) {
        at[count] = (int32_t)i;
        count += (x[i] & 0x7FFFu) != 0;
    }
    return count;
}

static inline int64_t nonzeros_32(const float *x, int64_t d, int32_t *at) {
    int64_t count = 0, i = 0;
#if defined(__AVX512F__)
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
    for (; i + 16 <= d; i += 16)
        for (uint32_t m = _mm512_test_epi32_mask(_mm512_loadu_si512((const void *)(x + i)), magnitude); m; m &= m - 1)
            at[count++] = (int32_t)(i + __builtin_ctz(m));
#endif
    for (; i < d; ++i) {
        at[count] = (int32_t)i;
        count += x[i] != 0.0f; /* a NaN counts (it is unequal to everything), a -0.0 does not */
    }
    return count;
}

/* Whether the attention kernel has its vector paths (else PyTorch's products are faster: see cpu.py). */
int spike_attention_vectorised(void) {
#if defined(__AVX512BW__)
    return 1;
#else
    return 0;
#endif
}

#define ATTN_NONZEROS(NZ, LOAD, x, d, at, val, count)                                                    \
    do {                                                                                                \
        count = NZ((x), (d), (at));                                                                     \
        for (int64_t c_ = 0; c_ < count; ++c_) (val)[c_] = LOAD((x)[(at)[c_]]);                         \
    } while (0)

/* out[0..d) = sum over c < count of val[c] * rows[at[c]][0..d): the rows picked by a spike row's nonzeros.
 * The usual head widths get their own copy, whose accumulators the compiler keeps in registers. */
/* (GCC/Clang vector types: left to itself the compiler vectorises across the picked rows, with gathers.) */
typedef float attn_v16 __attribute__((vector_size(64)));

#define ATTN_ROWS_FIXED(DD)                                                                              \
    static void attn_rows_##DD(const float *rows, const int32_t *at, const float *val, int64_t count,   \
                               float *out) {                                                            \
        attn_v16 a[DD / 16];                                                                            \
        for (int u = 0; u < DD / 16; ++u) a[u] = (attn_v16){0};                                         \
        for (int64_t c = 0; c < count; ++c) {                                                           \
            const float *r = rows + (int64_t)at[c] * DD;                                                \
            const float x = val[c];                                                                     \
            for (int u = 0; u < DD / 16; ++u) {                                                         \
                attn_v16 ru;                                                                            \
                memcpy(&ru, r + 16 * u, sizeof ru);                                                     \
                a[u] += x * ru;                                                                         \
            }                                                                                           \
        }                                                                                               \
        memcpy(out, a, sizeof a);                                                                       \
    }
ATTN_ROWS_FIXED(16)
ATTN_ROWS_FIXED(32)
ATTN_ROWS_FIXED(64)

static void attn_rows(const float *rows, int64_t d, const int32_t *at, const float *val, int64_t count,
                      float *out) {
    if (d == 32) return attn_rows_32(rows, at, val, count, out);
    if (d == 64) return attn_rows_64(rows, at, val, count, out);
    if (d == 16) return attn_rows_16(rows, at, val, count, out);
    for (int64_t j = 0; j < d; ++j) out[j] = 0.0f;
    for (int64_t c = 0; c < count; ++c) {
        const float *r = rows + (int64_t)at[c] * d;
        const float x = val[c];
        for (int64_t j = 0; j < d; ++j) out[j] += x * r[j];
    }
}

/* Per sample: its rows are read whole (all heads of a token side by side), so memory is read in order. */
#define ATTN_DEFINE(NAME, STOR, LOAD, STORE, NZ)                                                         \
    /* kv[h][i][j] = sum_n k[n][h d + i] v[n][h d + j] for one sample, every head (d x d, row-major) */ \
    static void NAME##_attn_kv(const attn_job *p, const STOR *k, const STOR *v, float *kv, float *row,   \
                               int32_t *at, float *val) {                                               \
        const int64_t N = p->N, D = p->D, d = p->D / p->H;                                              \
        memset(kv, 0, (size_t)(p->H * d * d) * sizeof(float));                                          \
        for (int64_t n = 0; n < N; ++n) {                                                               \
            for (int64_t j = 0; j < D; ++j) row[j] = LOAD(v[n * D + j]);                                \
            for (int64_t h = 0; h < p->H; ++h) {                                                        \
                int64_t count;                                                                          \
                ATTN_NONZEROS(NZ, LOAD, k + n * D + h * d, d, at, val, count);                          \
                float *kvh = kv + h * d * d;                                                            \
                const float *vh = row + h * d;                                                          \
                for (int64_t c = 0; c < count; ++c) {                                                   \
                    float *kvi = kvh + at[c] * d;                                                       \
                    const float ki = val[c];                                                            \
                    for (int64_t j = 0; j < d; ++j) kvi[j] += ki * vh[j];                               \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    static void NAME##_attn_forward(const void *job, int64_t s0, int64_t s1, int task) {                           \
        const attn_job *p = (const attn_job *)job;                                                      \
        (void)task;                                                                                     \
        const int64_t N = p->N, D = p->D, H = p->H, d = p->D / p->H;                                    \
        float *kv = (float *)malloc((size_t)(H * d * d + D + 2 * d) * sizeof(float) + (size_t)d * sizeof(int32_t)); \
        if (!kv) {                                                                                      \
            ((attn_job *)p)->status = -2;                                                               \
            return;                                                                                     \
        }                                                                                               \
        float *row = kv + H * d * d, *acc = row + D, *val = acc + d;                                    \
        int32_t *at = (int32_t *)(val + d);                                                             \
        for (int64_t s = s0; s < s1; ++s) {                                                             \
            const STOR *q = (const STOR *)p->q + s * N * D;                                             \
            NAME##_attn_kv(p, (const STOR *)p->k + s * N * D, (const STOR *)p->v + s * N * D, kv, row, at, val); \
            for (int64_t n = 0; n < N; ++n)                                                             \
                for (int64_t h = 0; h < H; ++h) {                                                       \
                    int64_t count;                                                                      \
                    ATTN_NONZEROS(NZ, LOAD, q + n * D + h * d, d, at, val, count);                      \
                    attn_rows(kv + h * d * d, d, at, val, count, acc);                                  \
                    float *o = p->out + (s * N + n) * D + h * d;                                        \
                    for (int64_t j = 0; j < d; ++j) o[j] = acc[j] * p->scale;                           \
                }                                                                                       \
        }                                                                                               \
        free(kv);                                                                                       \
    }                                                                                                   \
                                                                                                        \
    static void NAME##_attn_backward(const void *job, int64_t s0, int64_t s1, int task) {                          \
        const attn_job *p = (const attn_job *)job;                                                      \
        (void)task;                                                                                     \
        const int64_t N = p->N, D = p->D, H = p->H, d = p->D / p->H, hdd = p->H * d * d;                \
        /* per head: kv, its transpose, d(kv) and its transpose; two rows of D; the nonzeros' places */ \
        float *kv = (float *)malloc((size_t)(4 * hdd + 2 * D + 2 * d) * sizeof(float)                   \
                                    + (size_t)(2 * d) * sizeof(int32_t));                               \
        if (!kv) {                                                                                      \
            ((attn_job *)p)->status = -2;                                                               \
            return;                                                                                     \
        }                                                                                               \
        float *kvt = kv + hdd, *dkv = kvt + hdd, *dkvt = dkv + hdd;                                     \
        float *row = dkvt + hdd, *gs = row + D, *acc = gs + D, *val = acc + d;                          \
        int32_t *at = (int32_t *)(val + d), *every = at + d;                                            \
        for (int64_t i = 0; i < d; ++i) every[i] = (int32_t)i;                                          \
        for (int64_t s = s0; s < s1; ++s) {                                                             \
            const int64_t base = s * N * D;                                                             \
            const STOR *q = (const STOR *)p->q + base, *k = (const STOR *)p->k + base;                  \
            const STOR *v = (const STOR *)p->v + base;                                                  \
            NAME##_attn_kv(p, k, v, kv, row, at, val);                                                  \
            for (int64_t h = 0; h < H; ++h)                                                             \
                for (int64_t i = 0; i < d; ++i)                                                         \
                    for (int64_t j = 0; j < d; ++j) kvt[h * d * d + j * d + i] = kv[h * d * d + i * d + j]; \
            memset(dkv, 0, (size_t)hdd * sizeof(float));                                                \
            for (int64_t n = 0; n < N; ++n) {                                                           \
                const float *gr = p->g + base + n * D;                                                  \
                for (int64_t j = 0; j < D; ++j) gs[j] = gr[j] * p->scale;                               \
                for (int64_t h = 0; h < H; ++h) {                                                       \
                    const float *gh = gs + h * d;                                                       \
                    if (p->dq) { /* dq[n][i] = sum_j gs[j] kv[i][j], gs dense */                        \
                        attn_rows(kvt + h * d * d, d, every, gh, d, acc);                               \
                        STOR *o = (STOR *)p->dq + base + n * D + h * d;                                 \
                        for (int64_t i = 0; i < d; ++i) o[i] = STORE(acc[i]);                           \
                    }                                                                                   \
                    int64_t count; /* dkv[i][j] += q[n][i] gs[j] */                                     \
                    ATTN_NONZEROS(NZ, LOAD, q + n * D + h * d, d, at, val, count);                      \
                    for (int64_t c = 0; c < count; ++c) {                                               \
                        float *r = dkv + h * d * d + at[c] * d;                                         \
                        const float qi = val[c];                                                        \
                        for (int64_t j = 0; j < d; ++j) r[j] += qi * gh[j];                             \
                    }                                                                                   \
                }                                                                                       \
            }                                                                                           \
            for (int64_t h = 0; h < H; ++h)                                                             \
                for (int64_t i = 0; i < d; ++i)                                                         \
                    for (int64_t j = 0; j < d; ++j) dkvt[h * d * d + j * d + i] = dkv[h * d * d + i * d + j]; \
            for (int64_t n = 0; n < N; ++n)                                                             \
                for (int64_t h = 0; h < H; ++h) {                                                       \
                    const int64_t off = base + n * D + h * d;                                           \
                    int64_t count;                                                                      \
                    if (p->dk) { /* dk[n][i] = sum_j v[n][j] dkv[i][j] */                               \
                        ATTN_NONZEROS(NZ, LOAD, (const STOR *)p->v + off, d, at, val, count);           \
                        attn_rows(dkvt + h * d * d, d, at, val, count, acc);                            \
                        for (int64_t i = 0; i < d; ++i) ((STOR *)p->dk)[off + i] = STORE(acc[i]);       \
                    }                                                                                   \
                    if (p->dv) { /* dv[n][j] = sum_i k[n][i] dkv[i][j] */                               \
                        ATTN_NONZEROS(NZ, LOAD, (const STOR *)p->k + off, d, at, val, count);           \
                        attn_rows(dkv + h * d * d, d, at, val, count, acc);                             \
                        for (int64_t j = 0; j < d; ++j) ((STOR *)p->dv)[off + j] = STORE(acc[j]);       \
                    }                                                                                   \
                }                                                                                       \
        }                                                                                               \
        free(kv);                                                                                       \
    }

ATTN_DEFINE(attn_f32, float, ID, ID, nonzeros_32)
ATTN_DEFINE(attn_bf16, uint16_t, bf16_load, bf16_store, nonzeros_16)

static int attn_parallel(attn_job *job, int backward, int nthreads) {
    if ((job->dtype != LIF_F32 && job->dtype != LIF_BF16) || job->H < 1 || job->D % job->H != 0) return -1;
    const int bf16 = job->dtype == LIF_BF16;
    range_fn fn = backward ? (bf16 ? attn_bf16_attn_backward : attn_f32_attn_backward)
                           : (bf16 ? attn_bf16_attn_forward : attn_f32_attn_forward);
    job->status = 0;
    parallel_ranges(fn, job, job->S, 1, task_count(job->S, job->S * job->N * job->D, 16384, nthreads));
    return job->status;
}

/* out [S][N][D] (float32) = scale * Q (K^T V) per head of d = D / H channels. Returns 0, -1 or -2. */
int spike_attention_forward(int dtype, const void *q, const void *k, const void *v, float *out, int64_t S,
                            int64_t N, int64_t D, int64_t H, double scale, int nthreads) {
    attn_job job = {dtype, q, k, v, NULL, out, NULL, NULL, NULL, S, N, D, H, (float)scale, 0};
    return attn_parallel(&job, 0, nthreads);
}

/* dq, dk, dv [S][N][D] (each may be NULL) from the gradient g [S][N][D] of spike_attention_forward's out. */
int spike_attention_backward(int dtype, const void *q, const void *k, const void *v, const float *g, void *dq,
                             void *dk, void *dv, int64_t S, int64_t N, int64_t D, int64_t H, double scale,
                             int nthreads) {
    attn_job job = {dtype, q, k, v, g, NULL, dq, dk, dv, S, N, D, H, (float)scale, 0};
    return attn_parallel(&job, 1, nthreads);
}
