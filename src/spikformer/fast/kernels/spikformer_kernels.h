/* The C kernels' interface: every function the library exports, and the dtype codes they take.
 *
 * spikformer/fast/kernels/cpu.py reads this file to declare the ctypes signatures (nothing is copied by
 * hand), and lif_cpu.c includes it, so the compiler checks every definition against its prototype.
 * Conventions: `dtype` is one of the codes below; tensors are passed as pointers to their first element in
 * memory order; every function returns a status, 0 on success (lif_cpu.c says what the others mean);
 * `nthreads` is the number of threads the call may use.
 */
#ifndef SPIKFORMER_KERNELS_H
#define SPIKFORMER_KERNELS_H

#include <stdint.h>

enum { LIF_F32 = 0, LIF_F64 = 1, LIF_BF16 = 2, LIF_F16 = 3 };

/* Multi-step LIF over [T, M] (time first, M neurons dense in memory). */
int lif_supports(int dtype);
int lif_forward(int dtype, const void *x, void *spikes, int64_t T, int64_t M, double tau, double v_threshold,
                double v_reset, int nthreads);
int lif_backward(int dtype, const void *x, const void *grad_spikes, void *grad_x, int64_t T, int64_t M,
                 double tau, double v_threshold, double v_reset, double alpha, int detach_reset,
                 int nthreads);

/* BatchNorm (per-channel affine form) followed by LIF; batch statistics. Rows R, positions L, channels C. */
int bn_lif_forward(int dtype, const void *y, void *spikes, const void *scale, const void *shift, int64_t T,
                   int64_t R, int64_t L, int64_t C, int channels_last, double tau, double v_threshold,
                   double v_reset, int nthreads);
int bn_lif_backward(int dtype, const void *y, const void *grad_spikes, void *grad_z, const void *scale,
                    const void *shift, const void *mean, double *sums, int64_t T, int64_t R, int64_t L,
                    int64_t C, int channels_last, double tau, double v_threshold, double v_reset,
                    double alpha, int detach_reset, int nthreads);
int bn_grad_input(int dtype, void *grad, const void *y, const void *a, const void *k1, const void *k0,
                  int64_t T, int64_t R, int64_t L, int64_t C, int channels_last, int nthreads);
int bn_stats(int dtype, const void *y, double *mean, double *var, int64_t R, int64_t L, int64_t C,
             int channels_last, int nthreads);

/* 1-bit storage of 0/1 tensors: n elements <-> ceil(n / 8) bytes in memory order. */
int spikes_pack(int dtype, const void *x, uint8_t *bits, int64_t n);
int spikes_unpack(int dtype, const uint8_t *bits, void *x, int64_t n);

/* Max-pooling of channels-last maps [N, H, W, C]; `where` holds each output's place in its window. */
int max_pool_forward(int dtype, const void *x, void *out, uint8_t *where, int64_t N, int64_t H, int64_t W,
                     int64_t C, int64_t OH, int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                     int64_t ph, int64_t pw, int nthreads);
int max_pool_backward(int dtype, const uint8_t *where, const void *grad_out, void *grad_in, int64_t N,
                      int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t ph, int64_t pw, int nthreads);

/* Spiking self-attention products (Q K^T V) * scale per head, [S, N, D] with H heads. */
int spike_attention_vectorised(void);
int spike_attention_forward(int dtype, const void *q, const void *k, const void *v, float *out, int64_t S,
                            int64_t N, int64_t D, int64_t H, double scale, int nthreads);
int spike_attention_backward(int dtype, const void *q, const void *k, const void *v, const float *g, void *dq,
                             void *dk, void *dv, int64_t S, int64_t N, int64_t D, int64_t H, double scale,
                             int nthreads);

#endif
