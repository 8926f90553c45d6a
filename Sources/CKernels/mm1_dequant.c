#include "mm1_dequant.h"
#include <string.h>

/* Exact binary16 -> binary32 (every binary16 value, including subnormals, is representable in binary32). */
static float half_bits_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, bits;
    if (e == 0) {
        /* Subnormal or zero: m * 2^-24 is exact in binary32; the sign is OR'ed in so that -0 stays -0. */
        float v = (float)m * 5.9604644775390625e-8f;
        memcpy(&bits, &v, 4);
        bits |= sign;
    } else if (e == 31) {
        bits = sign | 0x7F800000u | (m << 13);
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t load_u16(const uint8_t *p, size_t i) {
    uint16_t v;
    memcpy(&v, p + 2 * i, 2);
    return v;
}

static void i8_scalar(const int8_t *c, const uint8_t *s, size_t rows, size_t cols, size_t group, float *d) {
    size_t groups = cols / group;
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < groups; g++) {
            float sc = half_bits_to_float(load_u16(s, r * groups + g));
            const int8_t *cp = c + r * cols + g * group;
            float *dp = d + r * cols + g * group;
            for (size_t i = 0; i < group; i++) dp[i] = sc * (float)cp[i];
        }
    }
}

static void q4_scalar(const uint8_t *c, const uint8_t *s, const uint8_t *z, size_t rows, size_t cols, size_t group,
                      float *d) {
    size_t groups = cols / group;
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < groups; g++) {
            size_t k = r * groups + g;
            float sc = half_bits_to_float(load_u16(s, k));
            float zp = z ? half_bits_to_float(load_u16(z, k)) : 8.0f;
            const uint8_t *cp = c + (r * cols + g * group) / 2;
            float *dp = d + r * cols + g * group;
            for (size_t j = 0; j < group / 2; j++) {
                dp[2 * j] = sc * ((float)(cp[j] & 15) - zp);
                dp[2 * j + 1] = sc * ((float)(cp[j] >> 4) - zp);
            }
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx2,f16c"))) static float half_f16c(const uint8_t *p, size_t i) {
    return _cvtsh_ss(load_u16(p, i));
}

/* group % 8 == 0 */
__attribute__((target("avx2,f16c"))) static void i8_avx2(const int8_t *c, const uint8_t *s, size_t rows, size_t cols,
                                                          size_t group, float *d) {
    size_t groups = cols / group;
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < groups; g++) {
            __m256 vs = _mm256_set1_ps(half_f16c(s, r * groups + g));
            const int8_t *cp = c + r * cols + g * group;
            float *dp = d + r * cols + g * group;
            for (size_t i = 0; i < group; i += 8) {
                __m128i b = _mm_loadl_epi64((const __m128i *)(cp + i));
                __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                _mm256_storeu_ps(dp + i, _mm256_mul_ps(vs, f));
            }
        }
    }
}

/* group % 16 == 0: 8 code bytes give 16 elements; interleaving the low and high nibbles byte-wise restores the
   element order (low nibble first). */
__attribute__((target("avx2,f16c"))) static void q4_avx2(const uint8_t *c, const uint8_t *s, const uint8_t *z,
                                                          size_t rows, size_t cols, size_t group, float *d) {
    size_t groups = cols / group;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (size_t r = 0; r < rows; r++) {
        for (size_t g = 0; g < groups; g++) {
            size_t k = r * groups + g;
            __m256 vs = _mm256_set1_ps(half_f16c(s, k));
            __m256 vz = _mm256_set1_ps(z ? half_f16c(z, k) : 8.0f);
            const uint8_t *cp = c + (r * cols + g * group) / 2;
            float *dp = d + r * cols + g * group;
            for (size_t i = 0; i < group; i += 16) {
                __m128i b = _mm_loadl_epi64((const __m128i *)(cp + i / 2));
                __m128i lo = _mm_and_si128(b, low4);
                __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
                __m128i e = _mm_unpacklo_epi8(lo, hi);
                __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e));
                __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e, 8)));
                _mm256_storeu_ps(dp + i, _mm256_mul_ps(vs, _mm256_sub_ps(f0, vz)));
                _mm256_storeu_ps(dp + i + 8, _mm256_mul_ps(vs, _mm256_sub_ps(f1, vz)));
            }
        }
    }
}

static int have_avx2_f16c(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"); }
#endif

void mm1_dequant_i8(const void *codes, const void *scales, size_t rows, size_t cols, size_t group, float *dst) {
    if (rows == 0 || cols == 0 || group == 0) return;
#if defined(__x86_64__) || defined(__i386__)
    if (group % 8 == 0 && have_avx2_f16c()) {
        i8_avx2((const int8_t *)codes, (const uint8_t *)scales, rows, cols, group, dst);
        return;
    }
#endif
    i8_scalar((const int8_t *)codes, (const uint8_t *)scales, rows, cols, group, dst);
}

void mm1_dequant_q4(const void *codes, const void *scales, const void *zeros, size_t rows, size_t cols, size_t group,
                    float *dst) {
    if (rows == 0 || cols == 0 || group == 0) return;
#if defined(__x86_64__) || defined(__i386__)
    if (group % 16 == 0 && have_avx2_f16c()) {
        q4_avx2((const uint8_t *)codes, (const uint8_t *)scales, (const uint8_t *)zeros, rows, cols, group, dst);
        return;
    }
#endif
    q4_scalar((const uint8_t *)codes, (const uint8_t *)scales, (const uint8_t *)zeros, rows, cols, group, dst);
}
