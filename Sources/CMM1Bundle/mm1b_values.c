/*
 * mm1b_values.c - tensor values as float32 (bundle.md sections 2 and 2.2) and decoded section bytes (section 3).
 *
 * Portable scalar C on purpose: this is the reference other runtimes link, and the Swift tool dequantizes with its
 * own vectorised kernels (Sources/CKernels), so the fixture check compares two independent implementations.
 */
#include "mm1b_internal.h"

#include <stdio.h>
#include <string.h>
#include <zstd.h>

float mm1b_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu;
    uint32_t m = h & 0x3FFu;
    uint32_t bits;
    if (e == 0x1F) {
        bits = sign | 0x7F800000u | (m << 13); /* keeps NaN payloads, so no value is changed on the way */
    } else if (e != 0) {
        bits = sign | ((e + 112u) << 23) | (m << 13); /* rebias 15 -> 127 */
    } else if (m == 0) {
        bits = sign;
    } else {
        /* Subnormal binary16 = m * 2^-24: every one is a normal binary32, found by shifting m up to its leading 1. */
        uint32_t exp = 113u; /* binary32 biased exponent of 2^-14 */
        while (!(m & 0x400u)) {
            m <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((m & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float mm1b_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static int tensor_ok(const mm1b_tensor *t) {
    if (!t || (!t->data && t->length > 0)) return 0;
    switch (t->dtype) {
    case MM1B_DTYPE_F32:
    case MM1B_DTYPE_F16:
    case MM1B_DTYPE_BF16:
        return 1;
    case MM1B_DTYPE_I8:
    case MM1B_DTYPE_Q4:
        /* The parser fills these only after validating the canonical layout; a hand-built struct must not send the
         * loops below out of bounds or divide by zero. */
        return t->quant_group_size >= 2 && t->quant_cols % t->quant_group_size == 0 && t->quant_rows > 0 &&
               t->scales_length / 2 == t->quant_rows * (t->quant_cols / t->quant_group_size) &&
               (!t->quant_asym || t->zeros_length == t->scales_length) &&
               t->codes_length == (t->dtype == MM1B_DTYPE_I8 ? t->quant_rows * t->quant_cols
                                                              : t->quant_rows * t->quant_cols / 2);
    }
    return 0;
}

/* Elements [c0, c1) of row r of a quantized tensor. Each value is a single f32 multiplication whose operands are
 * exact (f16 -> f32 widening and small-integer differences are exact), which is what makes every conforming reader
 * agree bit for bit; the product is stored directly, so no compiler may contract it into a fused multiply-add. */
static void dequant_row(const mm1b_tensor *t, uint64_t r, uint64_t c0, uint64_t c1, float *dst) {
    const uint8_t *base = (const uint8_t *)t->data;
    const uint64_t K = t->quant_cols, G = t->quant_group_size, groups = K / G;
    const uint8_t *scales = base + t->scales_offset + 2 * r * groups;
    const uint8_t *zeros = t->quant_asym ? base + t->zeros_offset + 2 * r * groups : NULL;
    if (t->dtype == MM1B_DTYPE_I8) {
        const int8_t *codes = (const int8_t *)(base + t->codes_offset + r * K);
        for (uint64_t c = c0; c < c1; c++) {
            float s = mm1b_f16_to_f32(ld16(scales + 2 * (c / G)));
            *dst++ = s * (float)codes[c];
        }
        return;
    }
    const uint8_t *codes = base + t->codes_offset + r * (K / 2);
    for (uint64_t c = c0; c < c1; c++) {
        uint8_t byte = codes[c / 2];
        float u = (float)((c & 1) ? byte >> 4 : byte & 15);
        float s = mm1b_f16_to_f32(ld16(scales + 2 * (c / G)));
        float z = zeros ? mm1b_f16_to_f32(ld16(zeros + 2 * (c / G))) : 8.0f;
        float d = u - z;
        *dst++ = s * d;
    }
}

int mm1b_tensor_read_f32(const mm1b_tensor *t, uint64_t first, uint64_t count, float *dst) {
    if (!tensor_ok(t) || (count > 0 && !dst)) return MM1B_EINVAL;
    if (first > t->numel || count > t->numel - first) return MM1B_EINVAL;
    const uint8_t *p = (const uint8_t *)t->data;
    switch (t->dtype) {
    case MM1B_DTYPE_F32:
        memcpy(dst, p + 4 * first, (size_t)(4 * count));
        return MM1B_OK;
    case MM1B_DTYPE_F16:
        for (uint64_t i = 0; i < count; i++) dst[i] = mm1b_f16_to_f32(ld16(p + 2 * (first + i)));
        return MM1B_OK;
    case MM1B_DTYPE_BF16:
        for (uint64_t i = 0; i < count; i++) dst[i] = mm1b_bf16_to_f32(ld16(p + 2 * (first + i)));
        return MM1B_OK;
    default: {
        const uint64_t K = t->quant_cols;
        uint64_t i = first, end = first + count;
        while (i < end) {
            uint64_t r = i / K, c0 = i % K;
            uint64_t c1 = (end - r * K) < K ? end - r * K : K;
            dequant_row(t, r, c0, c1, dst);
            dst += c1 - c0;
            i += c1 - c0;
        }
        return MM1B_OK;
    }
    }
}

uint64_t mm1b_tensor_rows(const mm1b_tensor *t) {
    if (!t) return 0;
    if (t->rank == 0) return 1;
    return t->numel / t->shape[t->rank - 1];
}

uint64_t mm1b_tensor_cols(const mm1b_tensor *t) {
    if (!t) return 0;
    return t->rank == 0 ? 1 : t->shape[t->rank - 1];
}

int mm1b_tensor_read_rows_f32(const mm1b_tensor *t, uint64_t row, uint64_t nrows, float *dst) {
    uint64_t R = mm1b_tensor_rows(t), K = mm1b_tensor_cols(t);
    if (!t || row > R || nrows > R - row) return MM1B_EINVAL;
    /* R * K = numel <= 2^63 - 1, so neither product overflows. */
    return mm1b_tensor_read_f32(t, row * K, nrows * K, dst);
}

static int section_fail(const mm1b_bundle *b, const mm1b_section *s, char *err, size_t errlen, int code,
                        const char *fmt, const char *detail) {
    if (err && errlen > 0) {
        char what[160];
        snprintf(what, sizeof what, fmt, detail ? detail : "");
        snprintf(err, errlen, "%s: section '%s': %s", mm1b_file_name(b), s->name, what);
    }
    return code;
}

int mm1b_section_read(const mm1b_bundle *b, const mm1b_section *s, void *dst, size_t dst_len, char *err,
                      size_t errlen) {
    if (err && errlen > 0) err[0] = '\0';
    if (!b || !s || (!dst && s->raw_length > 0)) {
        if (err && errlen > 0) snprintf(err, errlen, "invalid argument");
        return MM1B_EINVAL;
    }
    if ((uint64_t)dst_len < s->raw_length)
        return section_fail(b, s, err, errlen, MM1B_EINVAL, "the buffer is smaller than raw_length%s", NULL);
    size_t raw = (size_t)s->raw_length;
    if (s->encoding == MM1B_ENCODING_RAW) {
        if (raw) memcpy(dst, s->data, raw);
    } else {
        size_t len = (size_t)s->length;
        static const unsigned char zstd_magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
        /* A skippable frame would decode to nothing, so "one frame" means one Zstandard frame (bundle.md 3). */
        if (len < 4 || memcmp(s->data, zstd_magic, 4) != 0)
            return section_fail(b, s, err, errlen, MM1B_EFORMAT,
                                "the stored bytes do not start with a Zstandard frame (magic 28 B5 2F FD)%s", NULL);
        size_t frame = ZSTD_findFrameCompressedSize(s->data, len);
        if (ZSTD_isError(frame))
            return section_fail(b, s, err, errlen, MM1B_EFORMAT, "not a zstd frame: %s", ZSTD_getErrorName(frame));
        if (frame != len)
            return section_fail(b, s, err, errlen, MM1B_EFORMAT, "the stored bytes are not exactly one zstd frame%s",
                                NULL);
        unsigned long long declared = ZSTD_getFrameContentSize(s->data, len);
        if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != (unsigned long long)s->raw_length)
            return section_fail(b, s, err, errlen, MM1B_EFORMAT,
                                "the zstd frame declares a content size other than raw_length%s", NULL);
        /* Decoding into exactly raw_length bytes is what bounds the output of a hostile frame. */
        size_t got = ZSTD_decompress(dst, raw, s->data, len);
        if (ZSTD_isError(got))
            return section_fail(b, s, err, errlen, MM1B_EFORMAT, "zstd decoding failed: %s (more bytes than "
                                "raw_length, or corrupt)", ZSTD_getErrorName(got));
        if (got != raw)
            return section_fail(b, s, err, errlen, MM1B_EFORMAT, "decodes to fewer bytes than raw_length%s", NULL);
    }
    int rc = mm1b_check_decoded(s, dst, raw);
    if (rc == MM1B_EDIGEST)
        return section_fail(b, s, err, errlen, rc, "sha256 of the decoded bytes does not match%s", NULL);
    return rc;
}
