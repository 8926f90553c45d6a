#ifndef MM1_GGUF_H
#define MM1_GGUF_H
#include <stddef.h>
#include <stdint.h>

/* Dequantization of GGUF (ggml) tensor blocks to f32, written from the block layouts of the GGUF specification
   (formats/layouts/gguf.md lists them). Each call converts `n` consecutive elements starting at a block boundary
   of `src` (n a multiple of the type's block size) into dst[n]. The arithmetic is the reference one, in the same
   order, with no fused multiply-add, so the results equal those of a plain f32 evaluation of the formulas:

     Q8_0  (32 per 34-byte block)   x = q * d
     Q4_0  (32 per 18-byte block)   x = d * (q - 8)
     Q4_1  (32 per 20-byte block)   x = d * q + m
     Q4_K  (256 per 144-byte block) x = (d * sc) * q - (dmin * mn)     per 32-element sub-block (sc, mn 6-bit)
     Q6_K  (256 per 210-byte block) x = (d * sc) * (q - 32)            per 16-element sub-block (sc signed 8-bit)

   `src` need not be aligned. Returns 0, or -1 for a type number this file does not implement. */
enum {
    MM1_GGML_F32 = 0, MM1_GGML_F16 = 1, MM1_GGML_Q4_0 = 2, MM1_GGML_Q4_1 = 3, MM1_GGML_Q8_0 = 8,
    MM1_GGML_Q4_K = 12, MM1_GGML_Q6_K = 14, MM1_GGML_BF16 = 30
};

int mm1_gguf_dequant(int type, const void *src, size_t n, float *dst);

#endif
