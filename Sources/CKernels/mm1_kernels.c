#include "mm1_kernels.h"
#include <string.h>

/* A branch-free OR over blocks finds whether any element is non-finite at memory speed (the loop vectorises);
   only a block that has one is searched element by element. */
#define BLOCK 4096

#define DEFINE_SCAN(NAME, T, MASK)                                                     \
    int64_t NAME(const void *p, size_t count) {                                        \
        const unsigned char *b = (const unsigned char *)p;                             \
        for (size_t start = 0; start < count; start += BLOCK) {                        \
            size_t n = count - start < BLOCK ? count - start : BLOCK;                  \
            T hit = 0;                                                                 \
            for (size_t i = 0; i < n; i++) {                                           \
                T v;                                                                   \
                memcpy(&v, b + (start + i) * sizeof(T), sizeof(T));                    \
                hit |= (T)((v & (T)(MASK)) == (T)(MASK));                              \
            }                                                                          \
            if (hit) {                                                                 \
                for (size_t i = 0; i < n; i++) {                                       \
                    T v;                                                               \
                    memcpy(&v, b + (start + i) * sizeof(T), sizeof(T));                \
                    if ((v & (T)(MASK)) == (T)(MASK)) return (int64_t)(start + i);     \
                }                                                                      \
            }                                                                          \
        }                                                                              \
        return -1;                                                                     \
    }

DEFINE_SCAN(mm1_first_nonfinite_f32, uint32_t, 0x7F800000u)
DEFINE_SCAN(mm1_first_nonfinite_f16, uint16_t, 0x7C00u)
DEFINE_SCAN(mm1_first_nonfinite_bf16, uint16_t, 0x7F80u)

/* ---- widening ------------------------------------------------------------------------------------------------ */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx2"))) static void widen_bf16_avx2(const uint16_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i lo = _mm256_unpacklo_epi16(_mm256_setzero_si256(), v); /* interleave within 128-bit lanes */
        __m256i hi = _mm256_unpackhi_epi16(_mm256_setzero_si256(), v);
        /* lanes: lo = [0..3 | 8..11], hi = [4..7 | 12..15] → reorder to 0..7, 8..15 */
        __m256i a = _mm256_permute2x128_si256(lo, hi, 0x20);
        __m256i b = _mm256_permute2x128_si256(lo, hi, 0x31);
        _mm256_storeu_si256((__m256i *)(d + i), a);
        _mm256_storeu_si256((__m256i *)(d + i + 8), b);
    }
    for (; i < n; i++) {
        uint32_t w = (uint32_t)s[i] << 16;
        memcpy(d + i, &w, 4);
    }
}

__attribute__((target("avx2,f16c"))) static void widen_f16_f16c(const uint16_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(v));
    }
    for (; i < n; i++) {
        __m128i v = _mm_cvtsi32_si128(s[i]);
        d[i] = _mm_cvtss_f32(_mm_cvtph_ps(v));
    }
}
#endif

static float f16_to_f32_scalar(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void mm1_widen_bf16_f32(const void *src, float *dst, size_t count) {
    const uint16_t *s = (const uint16_t *)src;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2")) { widen_bf16_avx2(s, dst, count); return; }
#endif
    for (size_t i = 0; i < count; i++) {
        uint16_t h;
        memcpy(&h, s + i, 2);
        uint32_t w = (uint32_t)h << 16;
        memcpy(dst + i, &w, 4);
    }
}

void mm1_widen_f16_f32(const void *src, float *dst, size_t count) {
    const uint16_t *s = (const uint16_t *)src;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) { widen_f16_f16c(s, dst, count); return; }
#endif
    for (size_t i = 0; i < count; i++) {
        uint16_t h;
        memcpy(&h, s + i, 2);
        dst[i] = f16_to_f32_scalar(h);
    }
}

/* ---- exponentials -------------------------------------------------------------------------------------------- */

#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
/* Cephes-style exp: x = n·ln2 + r, |r| ≤ ln2/2, e^r by a degree-6 polynomial, scaled by 2^n. Inputs are clamped to
   [-87.3, 88.7], so e^x underflows to ~1e-38 rather than 0 and never overflows. */
__attribute__((target("avx2,fma"))) static inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.7f), lo = _mm256_set1_ps(-87.3f);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    __m256 x2 = _mm256_mul_ps(x, x);
    y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

__attribute__((target("avx2,fma"))) static void sigmoid_gate_avx2(float *x, size_t n, float beta) {
    size_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), nb = _mm256_set1_ps(-beta);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = exp256(_mm256_mul_ps(v, nb));
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    for (; i < n; i++) x[i] = x[i] / (1.0f + expf(-beta * x[i]));
}

__attribute__((target("avx2,fma"))) static void softmax_avx2(float *x, size_t n) {
    size_t i = 0;
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    float m = -INFINITY;
    for (int j = 0; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    const __m256 mm = _mm256_set1_ps(m);
    __m256 sv = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm));
        _mm256_storeu_ps(x + i, e);
        sv = _mm256_add_ps(sv, e);
    }
    _mm256_storeu_ps(lanes, sv);
    float s = 0;
    for (int j = 0; j < 8; j++) s += lanes[j];
    for (; i < n; i++) { float e = expf(x[i] - m); x[i] = e; s += e; }
    const __m256 inv = _mm256_set1_ps(1.0f / s);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= 1.0f / s;
}
#endif

void mm1_sigmoid_gate_f32(float *x, size_t count, float beta) {
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { sigmoid_gate_avx2(x, count, beta); return; }
#endif
    for (size_t i = 0; i < count; i++) x[i] = x[i] / (1.0f + expf(-beta * x[i]));
}

void mm1_softmax_f32(float *x, size_t count) {
    if (count == 0) return;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { softmax_avx2(x, count); return; }
#endif
    float m = -INFINITY, s = 0;
    for (size_t i = 0; i < count; i++) m = x[i] > m ? x[i] : m;
    for (size_t i = 0; i < count; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    for (size_t i = 0; i < count; i++) x[i] *= 1.0f / s;
}
