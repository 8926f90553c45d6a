#ifndef MM1_KERNELS_H
#define MM1_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/* Index of the first element whose exponent bits are all ones (NaN or ±Inf), or -1. `p` need not be aligned. */
int64_t mm1_first_nonfinite_f32(const void *p, size_t count);
int64_t mm1_first_nonfinite_f16(const void *p, size_t count);
int64_t mm1_first_nonfinite_bf16(const void *p, size_t count);

#endif
