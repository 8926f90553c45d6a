/*
 * values_test: the value accessors of libmm1bundle against independent expectations.
 *   - mm1b_f16_to_f32 on all 65,536 binary16 patterns against the compiler's _Float16 conversion (when it has one)
 *     and against the closed form m * 2^(e - 25) evaluated in double;
 *   - mm1b_bf16_to_f32 against the bfloat16 definition (upper half of a binary32);
 *   - dequantization of the hand-made tensors below against values worked out by hand from bundle.md section 2.2
 *     (the spec's nibble example 0x21 0x43 0x0F 0x87, i8 0x81/0xFF/0x7F/0x80, asym zero points), whole and by
 *     row and element ranges, and range errors;
 *   - mm1b_section_read on the sample bundles of tests/c/mkbundle.py (raw, empty and a zstd frame), and on a zstd
 *     section whose stored frame is corrupted in memory.
 *
 * usage: values_test SAMPLES_DIR     (the output directory of tests/c/mkbundle.py)
 */
#include <mm1bundle.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond, ...)                                                                                              \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            failures++;                                                                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                       \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
        }                                                                                                              \
    } while (0)

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_f16(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        float got = mm1b_f16_to_f32((uint16_t)h);
        uint32_t e = (h >> 10) & 31, m = h & 1023;
        double sign = (h & 0x8000) ? -1.0 : 1.0;
        if (e == 31) {
            EXPECT(m ? isnan(got) : (isinf(got) && (got < 0) == (sign < 0)), "f16 0x%04x -> %a", h, (double)got);
            if (m) EXPECT((bits_of(got) & 0x7FFFFFu) >> 13 == m, "f16 NaN 0x%04x payload lost", h);
            continue;
        }
        double want = e ? sign * ldexp(1024.0 + m, (int)e - 25) : sign * ldexp((double)m, -24);
        EXPECT((double)got == want && !!signbit(got) == (sign < 0), "f16 0x%04x -> %a, want %a", h, (double)got, want);
#if defined(__FLT16_MAX__)
        __extension__ _Float16 x;
        uint16_t hh = (uint16_t)h;
        memcpy(&x, &hh, 2);
        EXPECT(bits_of((float)x) == bits_of(got), "f16 0x%04x differs from _Float16", h);
#endif
    }
}

static void test_bf16(void) {
    for (uint32_t h = 0; h < 65536; h++)
        EXPECT(bits_of(mm1b_bf16_to_f32((uint16_t)h)) == h << 16, "bf16 0x%04x", h);
}

/* Builds a one-tensor bundle in memory: the payload at data offset 0, with the given quant object. */
static unsigned char *make_bundle(const char *dtype, const char *shape, const unsigned char *payload, size_t plen,
                                  const char *quant, size_t *out_len) {
    uint8_t d[32];
    char hex[65], header[2048];
    mm1b_sha256(payload, plen, d);
    mm1b_hex32(d, hex);
    int hl = snprintf(header, sizeof header,
                      "{\"alignment\":64,\"config\":{},\"format\":\"mm1pack\",\"format_version\":1,\"metadata\":{},"
                      "\"provenance\":{},\"sections\":[],\"tensors\":[{\"dtype\":\"%s\",\"length\":%zu,\"name\":\"w\","
                      "\"offset\":0,%s%s%s\"sha256\":\"%s\",\"shape\":%s}]}",
                      dtype, plen, quant ? "\"quant\":" : "", quant ? quant : "", quant ? "," : "", hex, shape);
    size_t data_offset = (96 + (size_t)hl + 4095) / 4096 * 4096;
    size_t tail = (64 - plen % 64) % 64;
    size_t total = data_offset + plen + tail;
    unsigned char *f = calloc(1, total);
    memcpy(f, "MM1PACK", 8);
    uint64_t v[3] = {(uint64_t)hl, data_offset, plen + tail};
    f[8] = 1;
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 8; j++) f[16 + 8 * k + j] = (unsigned char)(v[k] >> (8 * j));
    mm1b_sha256(header, (size_t)hl, f + 40);
    memcpy(f + 96, header, (size_t)hl);
    memcpy(f + data_offset, payload, plen);
    *out_len = total;
    return f;
}

static void expect_floats(const char *what, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        EXPECT(bits_of(got[i]) == bits_of(want[i]), "%s[%zu] = %a, want %a", what, i, (double)got[i], (double)want[i]);
}

static void test_q4(void) {
    /* q4 asym, shape [2, 1, 8], G = 4: R = 2 rows. Row 0 is the spec's example u = 1 2 3 4 15 0 7 8; row 1 has
     * u = 0..7. Scales (f16): 0.5 (0x3800), -2 (0xC000) / 0.25 (0x3400), 3 (0x4200). Zeros: 8 (0x4800), 0 / 15
     * (0x4B80), 1 (0x3C00). */
    unsigned char p[128 + 8] = {0};
    const unsigned char codes[8] = {0x21, 0x43, 0x0F, 0x87, 0x10, 0x32, 0x54, 0x76};
    memcpy(p, codes, 8);
    const uint16_t sc[4] = {0x3800, 0xC000, 0x3400, 0x4200}, zs[4] = {0x4800, 0x0000, 0x4B80, 0x3C00};
    for (int i = 0; i < 4; i++) {
        p[64 + 2 * i] = (unsigned char)sc[i], p[65 + 2 * i] = (unsigned char)(sc[i] >> 8);
        p[128 + 2 * i] = (unsigned char)zs[i], p[129 + 2 * i] = (unsigned char)(zs[i] >> 8);
    }
    const float want[16] = {0.5f * (1 - 8),  0.5f * (2 - 8),  0.5f * (3 - 8),  0.5f * (4 - 8),
                            -2.0f * 15,      -2.0f * 0,       -2.0f * 7,       -2.0f * 8,
                            0.25f * (0 - 15), 0.25f * (1 - 15), 0.25f * (2 - 15), 0.25f * (3 - 15),
                            3.0f * (4 - 1),  3.0f * (5 - 1),  3.0f * (6 - 1),  3.0f * (7 - 1)};
    size_t len;
    unsigned char *f = make_bundle("q4", "[2,1,8]", p, sizeof p,
                                   "{\"codes\":{\"length\":8,\"offset\":0},\"group_size\":4,\"scale_dtype\":\"f16\","
                                   "\"scales\":{\"length\":8,\"offset\":64},\"scheme\":\"asym\","
                                   "\"zeros\":{\"length\":8,\"offset\":128}}",
                                   &len);
    mm1b_bundle *b = NULL;
    char err[2048];
    int rc = mm1b_open_memory(f, len, "q4-asym", &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open q4 asym: %s", err);
    if (rc == MM1B_OK) {
        const mm1b_tensor *t = mm1b_tensor_at(b, 0);
        float got[16];
        EXPECT(mm1b_tensor_rows(t) == 2 && mm1b_tensor_cols(t) == 8, "rows/cols");
        EXPECT(mm1b_tensor_read_f32(t, 0, 16, got) == MM1B_OK, "read all");
        expect_floats("q4 asym", got, want, 16);
        memset(got, 0, sizeof got);
        EXPECT(mm1b_tensor_read_rows_f32(t, 1, 1, got) == MM1B_OK, "read row 1");
        expect_floats("q4 asym row 1", got, want + 8, 8);
        EXPECT(mm1b_tensor_read_f32(t, 5, 6, got) == MM1B_OK, "read [5, 11)");
        expect_floats("q4 asym [5, 11)", got, want + 5, 6);
        EXPECT(mm1b_tensor_read_f32(t, 10, 7, got) == MM1B_EINVAL, "range past the end accepted");
        EXPECT(mm1b_tensor_read_rows_f32(t, 2, 1, got) == MM1B_EINVAL, "row past the end accepted");
        EXPECT(mm1b_tensor_read_f32(t, 16, 0, got) == MM1B_OK, "empty range at the end refused");
        mm1b_close(b);
    }
    free(f);
}

static void test_q4_sym_i8(void) {
    /* q4 sym [1, 4], G = 2: u = 0, 15, 8, 9 with scales 1.5 (0x3E00) and the smallest subnormal 2^-24 (0x0001). */
    unsigned char p[64 + 4] = {0xF0, 0x98};
    p[64] = 0x00, p[65] = 0x3E, p[66] = 0x01, p[67] = 0x00;
    const float want4[4] = {1.5f * -8, 1.5f * 7, 0.0f, ldexpf(1.0f, -24)};
    size_t len;
    unsigned char *f = make_bundle("q4", "[1,4]", p, sizeof p,
                                   "{\"codes\":{\"length\":2,\"offset\":0},\"group_size\":2,\"scale_dtype\":\"f16\","
                                   "\"scales\":{\"length\":4,\"offset\":64},\"scheme\":\"sym\"}",
                                   &len);
    mm1b_bundle *b = NULL;
    char err[2048];
    float got[6];
    int rc = mm1b_open_memory(f, len, "q4-sym", &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open q4 sym: %s", err);
    if (rc == MM1B_OK) {
        EXPECT(mm1b_tensor_read_f32(mm1b_tensor_at(b, 0), 0, 4, got) == MM1B_OK, "read");
        expect_floats("q4 sym", got, want4, 4);
        mm1b_close(b);
    }
    free(f);

    /* i8 [2, 3] with G = 3: refused (G must be even). */
    unsigned char q[64 + 4] = {0x81, 0xFF, 0x7F, 0x80, 0x00, 0x01};
    q[64] = 0x00, q[65] = 0xB8, q[66] = 0xFF, q[67] = 0x7B;
    f = make_bundle("i8", "[2,3]", q, sizeof q,
                    "{\"codes\":{\"length\":6,\"offset\":0},\"group_size\":3,\"scale_dtype\":\"f16\","
                    "\"scales\":{\"length\":4,\"offset\":64},\"scheme\":\"sym\"}",
                    &len);
    /* K = 3 has no even divisor, so no group size is valid: the open must fail naming the tensor. */
    rc = mm1b_open_memory(f, len, "i8-odd", &b, err, sizeof err);
    EXPECT(rc == MM1B_EFORMAT && strstr(err, "tensor 'w'") && strstr(err, "group_size 3"), "odd group: %s", err);
    if (rc == MM1B_OK) mm1b_close(b);
    free(f);

    /* i8 [2, 2], G = 2 (one scale per row): codes 0x81 0xFF / 0x80 0x7F, scales -0.5 (0xB800) and 65504 (0x7BFF,
     * the largest f16: 65504 * -128 is still finite in f32); 0x80 is -128, which writers never emit but readers
     * dequantize by the same formula. */
    unsigned char r[64 + 4] = {0x81, 0xFF, 0x80, 0x7F};
    r[64] = 0x00, r[65] = 0xB8, r[66] = 0xFF, r[67] = 0x7B;
    const float want8b[4] = {-0.5f * -127, -0.5f * -1, 65504.0f * -128, 65504.0f * 127};
    f = make_bundle("i8", "[2,2]", r, sizeof r,
                    "{\"codes\":{\"length\":4,\"offset\":0},\"group_size\":2,\"scale_dtype\":\"f16\","
                    "\"scales\":{\"length\":4,\"offset\":64},\"scheme\":\"sym\"}",
                    &len);
    rc = mm1b_open_memory(f, len, "i8", &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open i8: %s", err);
    if (rc == MM1B_OK) {
        EXPECT(mm1b_tensor_read_f32(mm1b_tensor_at(b, 0), 0, 4, got) == MM1B_OK, "read");
        expect_floats("i8", got, want8b, 4);
        mm1b_close(b);
    }
    free(f);
}

static void test_floats(void) {
    /* f16 [3]: 1, -2, 65504; bf16 of the same tensor name in another bundle: 1, -2, 3.140625 (0x4049). */
    unsigned char p[6] = {0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B};
    size_t len;
    unsigned char *f = make_bundle("f16", "[3]", p, sizeof p, NULL, &len);
    mm1b_bundle *b = NULL;
    char err[2048];
    float got[3];
    int rc = mm1b_open_memory(f, len, "f16", &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open f16: %s", err);
    if (rc == MM1B_OK) {
        const float want[3] = {1.0f, -2.0f, 65504.0f};
        EXPECT(mm1b_tensor_read_f32(mm1b_tensor_at(b, 0), 0, 3, got) == MM1B_OK, "read f16");
        expect_floats("f16", got, want, 3);
        EXPECT(mm1b_tensor_rows(mm1b_tensor_at(b, 0)) == 1 && mm1b_tensor_cols(mm1b_tensor_at(b, 0)) == 3, "1-D rows");
        mm1b_close(b);
    }
    free(f);
    unsigned char q[6] = {0x80, 0x3F, 0x00, 0xC0, 0x49, 0x40};
    f = make_bundle("bf16", "[3]", q, sizeof q, NULL, &len);
    rc = mm1b_open_memory(f, len, "bf16", &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open bf16: %s", err);
    if (rc == MM1B_OK) {
        const float want[3] = {1.0f, -2.0f, 3.140625f};
        EXPECT(mm1b_tensor_read_f32(mm1b_tensor_at(b, 0), 0, 3, got) == MM1B_OK, "read bf16");
        expect_floats("bf16", got, want, 3);
        mm1b_close(b);
    }
    free(f);
}

static void test_sections(const char *dir) {
    char path[4096], err[2048];
    snprintf(path, sizeof path, "%s/rank8.mm1", dir);
    mm1b_bundle *b = NULL;
    int rc = mm1b_open(path, &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open %s: %s", path, err);
    if (rc != MM1B_OK) return;
    const mm1b_section *z = mm1b_find_section(b, "tok.model"), *e = mm1b_find_section(b, "vocab-x.txt");
    EXPECT(z && z->encoding == MM1B_ENCODING_ZSTD && e, "sections of rank8.mm1");
    if (z && e) {
        char out[8] = {0};
        EXPECT(mm1b_section_read(b, z, out, sizeof out, err, sizeof err) == MM1B_OK && memcmp(out, "abc", 3) == 0,
               "zstd section: %s", err);
        EXPECT(mm1b_section_read(b, z, out, 2, err, sizeof err) == MM1B_EINVAL, "short buffer accepted");
        EXPECT(mm1b_section_read(b, e, NULL, 0, err, sizeof err) == MM1B_OK, "empty raw section: %s", err);

        /* Corrupt the stored frame: the block content "abc" becomes "abd", which decodes but fails the digest. */
        size_t len = (size_t)mm1b_file_size(b);
        unsigned char *copy = malloc(len);
        memcpy(copy, mm1b_file_data(b), len);
        copy[z->offset + z->length - 1] ^= 0x07;
        mm1b_bundle *c = NULL;
        rc = mm1b_open_memory(copy, len, "corrupt.mm1", &c, err, sizeof err);
        EXPECT(rc == MM1B_OK, "open corrupt copy: %s", err);
        if (rc == MM1B_OK) {
            rc = mm1b_section_read(c, mm1b_find_section(c, "tok.model"), out, sizeof out, err, sizeof err);
            EXPECT(rc == MM1B_EDIGEST && strstr(err, "corrupt.mm1: section 'tok.model'"), "corrupt zstd: %d %s", rc,
                   err);
            mm1b_close(c);
        }
        /* A skippable frame in place of the Zstandard frame (same length, 12 bytes) must be refused, not decoded
         * to nothing. */
        copy = malloc(len);
        memcpy(copy, mm1b_file_data(b), len);
        static const unsigned char skippable[12] = {0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 'a', 'b', 'c', 'd'};
        if (z->length == sizeof skippable) memcpy(copy + z->offset, skippable, sizeof skippable);
        EXPECT(z->length == sizeof skippable, "the sample's zstd frame is %d bytes", (int)z->length);
        rc = mm1b_open_memory(copy, len, "skip.mm1", &c, err, sizeof err);
        if (rc == MM1B_OK) {
            rc = mm1b_section_read(c, mm1b_find_section(c, "tok.model"), out, sizeof out, err, sizeof err);
            EXPECT(rc == MM1B_EFORMAT && strstr(err, "magic 28 B5 2F FD"), "skippable frame: %d %s", rc, err);
            mm1b_close(c);
        }
        free(copy);
    }
    snprintf(path, sizeof path, "%s/small.mm1", dir);
    mm1b_close(b);
    rc = mm1b_open(path, &b, err, sizeof err);
    EXPECT(rc == MM1B_OK, "open %s: %s", path, err);
    if (rc == MM1B_OK) {
        char out[16] = {0};
        const mm1b_section *s = mm1b_find_section(b, "tokenizer.json");
        EXPECT(s && mm1b_section_read(b, s, out, sizeof out, err, sizeof err) == MM1B_OK &&
                   strcmp(out, "{\"a\":1}") == 0,
               "raw section: %s", err);
        mm1b_close(b);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: values_test SAMPLES_DIR\n");
        return 2;
    }
    test_f16();
    test_bf16();
    test_q4();
    test_q4_sym_i8();
    test_floats();
    test_sections(argv[1]);
    if (failures) {
        fprintf(stderr, "values_test: %d failure(s)\n", failures);
        return 1;
    }
    printf("values_test: OK\n");
    return 0;
}
