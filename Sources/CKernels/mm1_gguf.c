/* GGUF block dequantization (see include/mm1_gguf.h). Written from the GGUF/ggml block layout descriptions; every
   formula is evaluated in f32 in the documented order, with contraction to FMA disabled. */
#include "mm1_gguf.h"

#include <string.h>

#pragma STDC FP_CONTRACT OFF

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* IEEE binary16 -> binary32, exact for every input (subnormals, infinities, NaN payloads). */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1Fu) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: value = man * 2^-24; normalise. */
        int e = -1;
        do { man <<= 1; e++; } while ((man & 0x400u) == 0);
        man &= 0x3FFu;
        bits = sign | ((uint32_t)(112 - e) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void deq_f32(const uint8_t *s, size_t n, float *d) { memcpy(d, s, n * 4); }

static void deq_f16(const uint8_t *s, size_t n, float *d) {
    for (size_t i = 0; i < n; i++) d[i] = half_to_float(rd16(s + 2 * i));
}

static void deq_bf16(const uint8_t *s, size_t n, float *d) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)rd16(s + 2 * i) << 16;
        memcpy(d + i, &bits, 4);
    }
}

/* Q8_0: f16 d; int8 q[32]. */
static void deq_q8_0(const uint8_t *s, size_t n, float *y) {
    for (size_t b = 0; b < n / 32; b++, s += 34, y += 32) {
        const float d = half_to_float(rd16(s));
        const int8_t *q = (const int8_t *)(s + 2);
        for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
    }
}

/* Q4_0: f16 d; u8 qs[16]; element j in the low nibble of qs[j], element j+16 in the high nibble. */
static void deq_q4_0(const uint8_t *s, size_t n, float *y) {
    for (size_t b = 0; b < n / 32; b++, s += 18, y += 32) {
        const float d = half_to_float(rd16(s));
        const uint8_t *qs = s + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((int)(qs[j] & 0x0F) - 8);
            y[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
        }
    }
}

/* Q4_1: f16 d; f16 m; u8 qs[16] (nibbles as Q4_0). */
static void deq_q4_1(const uint8_t *s, size_t n, float *y) {
    for (size_t b = 0; b < n / 32; b++, s += 20, y += 32) {
        const float d = half_to_float(rd16(s));
        const float m = half_to_float(rd16(s + 2));
        const uint8_t *qs = s + 4;
        for (int j = 0; j < 16; j++) {
            const float lo = d * (float)(qs[j] & 0x0F);
            const float hi = d * (float)(qs[j] >> 4);
            y[j] = lo + m;
            y[j + 16] = hi + m;
        }
    }
}

/* The 6-bit scale and min of sub-block i (0..7) from the 12 packed bytes of a Q4_K block:
   bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3 likewise; sub-blocks 4-7 take their low
   4 bits from bytes 8-11 (scale in the low nibble, min in the high one) and their top 2 bits from the top 2 bits
   of bytes 0-3 (scales) and 4-7 (mins). */
static void q4k_scale_min(const uint8_t *sc, int i, uint8_t *scale, uint8_t *min) {
    if (i < 4) {
        *scale = sc[i] & 63;
        *min = sc[i + 4] & 63;
    } else {
        *scale = (uint8_t)((sc[i + 4] & 0x0F) | ((sc[i - 4] >> 6) << 4));
        *min = (uint8_t)((sc[i + 4] >> 4) | ((sc[i] >> 6) << 4));
    }
}

/* Q4_K super-block: f16 d; f16 dmin; u8 scales[12]; u8 qs[128]. 256 elements in 4 groups of 64: group g uses
   qs[32g .. 32g+31]; its low nibbles are sub-block 2g (elements 64g + l), its high nibbles sub-block 2g+1
   (elements 64g + 32 + l). */
static void deq_q4_k(const uint8_t *s, size_t n, float *y) {
    for (size_t b = 0; b < n / 256; b++, s += 144, y += 256) {
        const float d = half_to_float(rd16(s));
        const float dmin = half_to_float(rd16(s + 2));
        const uint8_t *scales = s + 4;
        const uint8_t *qs = s + 16;
        for (int g = 0; g < 4; g++) {
            uint8_t sc0, m0, sc1, m1;
            q4k_scale_min(scales, 2 * g, &sc0, &m0);
            q4k_scale_min(scales, 2 * g + 1, &sc1, &m1);
            const float d0 = d * (float)sc0, mm0 = dmin * (float)m0;
            const float d1 = d * (float)sc1, mm1 = dmin * (float)m1;
            const uint8_t *q = qs + 32 * g;
            float *o = y + 64 * g;
            for (int l = 0; l < 32; l++) {
                const float a = d0 * (float)(q[l] & 0x0F);
                const float c = d1 * (float)(q[l] >> 4);
                o[l] = a - mm0;
                o[l + 32] = c - mm1;
            }
        }
    }
}

/* Q6_K super-block: u8 ql[128] (low 4 bits); u8 qh[64] (high 2 bits); i8 scales[16]; f16 d. 256 elements in two
   halves of 128; half h uses ql[64h ..], qh[32h ..], scales[8h ..]. Within a half, for l < 32:
     element l      = low nibble of ql[l]      | bits 0-1 of qh[l] << 4
     element l + 32 = low nibble of ql[l + 32] | bits 2-3 of qh[l] << 4
     element l + 64 = high nibble of ql[l]     | bits 4-5 of qh[l] << 4
     element l + 96 = high nibble of ql[l + 32]| bits 6-7 of qh[l] << 4
   each minus 32; element e of the half uses scale e / 16. */
static void deq_q6_k(const uint8_t *s, size_t n, float *y) {
    for (size_t b = 0; b < n / 256; b++, s += 210, y += 256) {
        const float d = half_to_float(rd16(s + 208));
        const int8_t *scales = (const int8_t *)(s + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = s + 64 * h;
            const uint8_t *qh = s + 128 + 32 * h;
            const int8_t *sc = scales + 8 * h;
            float *o = y + 128 * h;
            float ds[8];
            for (int k = 0; k < 8; k++) ds[k] = d * (float)sc[k];
            for (int l = 0; l < 32; l++) {
                const int q1 = (int)((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                o[l] = ds[l / 16] * (float)q1;
                o[l + 32] = ds[(l + 32) / 16] * (float)q2;
                o[l + 64] = ds[(l + 64) / 16] * (float)q3;
                o[l + 96] = ds[(l + 96) / 16] * (float)q4;
            }
        }
    }
}

int mm1_gguf_dequant(int type, const void *src, size_t n, float *dst) {
    const uint8_t *s = (const uint8_t *)src;
    switch (type) {
    case MM1_GGML_F32: deq_f32(s, n, dst); return 0;
    case MM1_GGML_F16: deq_f16(s, n, dst); return 0;
    case MM1_GGML_BF16: deq_bf16(s, n, dst); return 0;
    case MM1_GGML_Q8_0: deq_q8_0(s, n, dst); return 0;
    case MM1_GGML_Q4_0: deq_q4_0(s, n, dst); return 0;
    case MM1_GGML_Q4_1: deq_q4_1(s, n, dst); return 0;
    case MM1_GGML_Q4_K: deq_q4_k(s, n, dst); return 0;
    case MM1_GGML_Q6_K: deq_q6_k(s, n, dst); return 0;
    default: return -1;
    }
}
