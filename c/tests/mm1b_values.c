/*
 * mm1b_values: opens a bundle with libmm1bundle, prints its table, checks every digest, and prints the SHA-256 of
 * each tensor's values as little-endian float32 (stored floats widened, i8/q4 dequantized by the library). Two
 * readers that agree on every value print the same digests, so scripts/check_readers.py compares these lines with
 * the same digests over what `mm1pack inspect --dump` writes.
 *
 * usage: mm1b_values BUNDLE
 * output: "tensor NAME DTYPE [SHAPE] STORED_SHA256 ok|MISMATCH F32_SHA256" per tensor, then
 *         "section NAME ENCODING RAW_LENGTH SHA256 ok|<error>" per section
 * exit status: 0 all digests match, 1 some do not, 2 the bundle cannot be opened (or bad usage, out of memory).
 */
#include <mm1bundle.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows per read: bounds memory for large tensors while keeping calls few. */
#define CHUNK_FLOATS ((uint64_t)1 << 20)

static int f32_digest(const mm1b_tensor *t, float *buf, uint8_t out[32]) {
    mm1b_sha256_ctx c;
    mm1b_sha256_init(&c);
    for (uint64_t i = 0; i < t->numel; i += CHUNK_FLOATS) {
        uint64_t n = t->numel - i < CHUNK_FLOATS ? t->numel - i : CHUNK_FLOATS;
        if (mm1b_tensor_read_f32(t, i, n, buf) != MM1B_OK) return 0;
        /* The digest is over little-endian bytes, which is the host order on every platform this is built for;
         * refuse rather than print a wrong digest elsewhere. */
        const uint16_t one = 1;
        if (*(const uint8_t *)&one != 1) return 0;
        mm1b_sha256_update(&c, buf, (size_t)n * 4);
    }
    mm1b_sha256_final(&c, out);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: mm1b_values BUNDLE\n");
        return 2;
    }
    mm1b_bundle *b = NULL;
    char err[2048];
    if (mm1b_open(argv[1], &b, err, sizeof err) != MM1B_OK) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    float *buf = malloc(CHUNK_FLOATS * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "error: out of memory\n");
        mm1b_close(b);
        return 2;
    }
    int bad = 0;
    for (size_t i = 0; i < mm1b_tensor_count(b); i++) {
        const mm1b_tensor *t = mm1b_tensor_at(b, i);
        char stored[65], values[65] = "-", shape[8 * 21 + 3];
        uint8_t d[32];
        size_t o = 0;
        shape[o++] = '[';
        for (uint32_t k = 0; k < t->rank; k++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, k ? ",%" PRIu64 : "%" PRIu64, t->shape[k]);
        shape[o++] = ']';
        shape[o] = '\0';
        mm1b_hex32(t->sha256, stored);
        int ok = mm1b_check_tensor(b, t) == MM1B_OK;
        if (f32_digest(t, buf, d)) mm1b_hex32(d, values);
        else ok = 0;
        if (!ok) bad = 1;
        printf("tensor %s %s %s %s %s %s\n", t->name, t->dtype_name, shape, stored, ok ? "ok" : "MISMATCH", values);
    }
    for (size_t i = 0; i < mm1b_section_count(b); i++) {
        const mm1b_section *s = mm1b_section_at(b, i);
        char hex[65];
        mm1b_hex32(s->sha256, hex);
        void *out = malloc(s->raw_length ? (size_t)s->raw_length : 1);
        int rc = out ? mm1b_section_read(b, s, out, (size_t)s->raw_length, err, sizeof err) : MM1B_ENOMEM;
        free(out);
        if (rc != MM1B_OK) bad = 1;
        printf("section %s %s %" PRIu64 " %s %s\n", s->name, s->encoding_name, s->raw_length, hex,
               rc == MM1B_OK ? "ok" : (rc == MM1B_ENOMEM ? "out of memory" : err));
    }
    free(buf);
    mm1b_close(b);
    return bad ? 1 : 0;
}
