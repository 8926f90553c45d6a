#ifndef MM1_KERNELS_H
#define MM1_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/* Index of the first element whose exponent bits are all ones (NaN or ±Inf), or -1. `p` need not be aligned. */
int64_t mm1_first_nonfinite_f32(const void *p, size_t count);
int64_t mm1_first_nonfinite_f16(const void *p, size_t count);
int64_t mm1_first_nonfinite_bf16(const void *p, size_t count);

/* Widen `count` bf16 (upper halves of binary32) or binary16 values at `src` to f32 at `dst` (exact). `src` need
   not be aligned. AVX2/F16C paths are chosen at run time; the fallbacks are plain loops. */
void mm1_widen_bf16_f32(const void *src, float *dst, size_t count);
void mm1_widen_f16_f32(const void *src, float *dst, size_t count);

/* In place: x[i] = x[i] / (1 + exp(-beta * x[i])) (SiLU for beta = 1, QuickGELU for beta = 1.702). */
void mm1_sigmoid_gate_f32(float *x, size_t count, float beta);

/* In place, max-subtracted softmax of `count` values; returns nothing. The exponential is a vectorised polynomial
   (relative error ~2e-7) on AVX2/FMA CPUs, expf elsewhere. */
void mm1_softmax_f32(float *x, size_t count);

#endif
