/*
 * mm1b_dump: prints the format version, tensor table and sections of an mm1pack bundle and checks every digest.
 *
 * usage: mm1b_dump [-q] BUNDLE
 * exit status: 0 everything valid, 1 the header is valid but some digest does not match, 2 the bundle cannot be
 * opened or is invalid (or bad usage).
 */
#include "mm1bundle.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define MAX_DECODED ((uint64_t)1 << 30)

static int check_zstd(const mm1b_section *s, const char **why) {
    if (s->raw_length > MAX_DECODED) {
        *why = "raw_length too large to decode here";
        return 0;
    }
    if (ZSTD_findFrameCompressedSize(s->data, (size_t)s->length) != (size_t)s->length) {
        *why = "not exactly one zstd frame";
        return 0;
    }
    void *out = malloc(s->raw_length ? (size_t)s->raw_length : 1);
    if (!out) {
        *why = "out of memory";
        return 0;
    }
    size_t r = ZSTD_decompress(out, (size_t)s->raw_length, s->data, (size_t)s->length);
    int ok = 0;
    if (ZSTD_isError(r)) *why = ZSTD_getErrorName(r);
    else if ((uint64_t)r != s->raw_length) *why = "decoded size differs from raw_length";
    else if (mm1b_check_decoded(s, out, r) != MM1B_OK) *why = "sha256 mismatch";
    else ok = 1;
    free(out);
    return ok;
}

int main(int argc, char **argv) {
    int quiet = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0) quiet = 1;
        else if (!path) path = argv[i];
        else path = NULL, i = argc;
    }
    if (!path) {
        fprintf(stderr, "usage: mm1b_dump [-q] BUNDLE\n");
        return 2;
    }
    mm1b_bundle *b = NULL;
    char err[2048];
    if (mm1b_open(path, &b, err, sizeof err) != MM1B_OK) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    int bad = 0;
    if (!quiet) {
        printf("format_version %" PRIu32 "\n", mm1b_format_version(b));
        printf("data_offset %" PRIu64 " data_length %" PRIu64 " alignment %" PRIu64 "\n", mm1b_data_offset(b),
               mm1b_data_length(b), mm1b_alignment(b));
        printf("tensors %zu\n", mm1b_tensor_count(b));
    }
    for (size_t i = 0; i < mm1b_tensor_count(b); i++) {
        const mm1b_tensor *t = mm1b_tensor_at(b, i);
        char hex[65], shape[8 * 21 + 3];
        size_t o = 0;
        mm1b_hex32(t->sha256, hex);
        shape[o++] = '[';
        for (uint32_t d = 0; d < t->rank; d++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, d ? ",%" PRIu64 : "%" PRIu64, t->shape[d]);
        shape[o++] = ']';
        shape[o] = '\0';
        int ok = mm1b_check_tensor(b, t) == MM1B_OK;
        if (!ok) bad = 1;
        if (!quiet || !ok)
            printf("%s %s %s %" PRIu64 " %" PRIu64 " %s %s\n", t->name, t->dtype_name, shape, t->offset, t->length,
                   hex, ok ? "ok" : "MISMATCH");
        if (!quiet && t->quant_json) {
            printf("  quant %s\n", t->quant_json);
            printf("  quant bits %" PRIu32 " scheme %s group_size %" PRIu64 " rows %" PRIu64 " cols %" PRIu64
                   " codes %" PRIu64 "+%" PRIu64 " scales %" PRIu64 "+%" PRIu64,
                   t->quant_bits, t->quant_asym ? "asym" : "sym", t->quant_group_size, t->quant_rows, t->quant_cols,
                   t->codes_offset, t->codes_length, t->scales_offset, t->scales_length);
            if (t->quant_asym) printf(" zeros %" PRIu64 "+%" PRIu64, t->zeros_offset, t->zeros_length);
            printf("\n");
        }
    }
    if (!quiet) printf("sections %zu\n", mm1b_section_count(b));
    for (size_t i = 0; i < mm1b_section_count(b); i++) {
        const mm1b_section *s = mm1b_section_at(b, i);
        char hex[65];
        const char *why = "sha256 mismatch";
        mm1b_hex32(s->sha256, hex);
        int ok = s->encoding == MM1B_ENCODING_RAW ? mm1b_check_section(b, s) == MM1B_OK : check_zstd(s, &why);
        if (!ok) bad = 1;
        if (!quiet || !ok)
            printf("%s %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %s %s%s\n", s->name, s->encoding_name, s->offset,
                   s->length, s->raw_length, hex, ok ? "ok" : "MISMATCH: ", ok ? "" : why);
    }
    if (bad) fprintf(stderr, "error: %s: some digests do not match\n", path);
    mm1b_close(b);
    return bad ? 1 : 0;
}
