#ifndef MM1_DEQUANT_H
#define MM1_DEQUANT_H
#include <stddef.h>
#include <stdint.h>

/* Dequantization of the bundle's quantized tensors (formats/bundle.md section 2.2), bit-exact with the formulas
   there: every element is one f32 multiplication (q4: after an exact-for-integer-zeros f32 subtraction), never a
   fused multiply-add, so any conforming reader gets the same bits.

   `rows` rows of `cols` elements go to dst[rows * cols]. `codes` points at the first code byte of the first row
   (i8: cols bytes per row; q4: cols / 2 bytes per row, element 2j in the low nibble of byte j), `scales` (and
   `zeros`) at the first little-endian binary16 value of that row (cols / group per row). `group` is even and
   divides `cols`. None of the pointers need be aligned. AVX2/F16C paths are chosen at run time. */
void mm1_dequant_i8(const void *codes, const void *scales, size_t rows, size_t cols, size_t group, float *dst);

/* zeros == NULL: the symmetric scheme (w = scale * (u - 8)); otherwise w = scale * (u - zero). */
void mm1_dequant_q4(const void *codes, const void *scales, const void *zeros, size_t rows, size_t cols, size_t group,
                    float *dst);

#endif
