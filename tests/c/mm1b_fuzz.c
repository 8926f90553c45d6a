/*
 * libFuzzer target for the bundle parser:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I../../Sources/CMM1Bundle/include mm1b_fuzz.c \
 *         ../../Sources/CMM1Bundle/mm1bundle.c ../../Sources/CMM1Bundle/sha256.c $(pkg-config --cflags --libs json-c)
 * Opening must never crash or read out of bounds; on success every accessor and digest check is exercised.
 * The input is used as is, a second time with the header digest fixed up, and a third time with the whole prefix
 * and padding rebuilt around its header text and data, so that the fuzzer gets into the JSON and table validation.
 */
#include "mm1bundle.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void exercise(const uint8_t *data, size_t size) {
    mm1b_bundle *b = NULL;
    char err[512];
    if (mm1b_open_memory(data, size, "fuzz.mm1", &b, err, sizeof err) != MM1B_OK) {
        if (strlen(err) == 0) abort(); /* every failure has a message */
        return;
    }
    size_t n = 0;
    const char *h = mm1b_header_json(b, &n);
    if (!h || n < 2) abort();
    if (!mm1b_config_json(b, &n)) abort();
    for (size_t i = 0; i < mm1b_tensor_count(b); i++) {
        const mm1b_tensor *t = mm1b_tensor_at(b, i);
        if (mm1b_find_tensor(b, t->name) != t) abort();
        if (t->offset + t->length > size) abort();
        /* An accepted quantized tensor's sub-blocks are in order, inside the tensor, and end where it ends. */
        if (t->quant_json) {
            uint64_t last_end = t->quant_asym ? t->zeros_offset + t->zeros_length : t->scales_offset + t->scales_length;
            if (t->codes_offset != 0 || t->codes_length > t->scales_offset || last_end != t->length ||
                (t->quant_asym && t->scales_offset + t->scales_length > t->zeros_offset))
                abort();
        }
        (void)mm1b_check_tensor(b, t);
    }
    for (size_t i = 0; i < mm1b_section_count(b); i++) {
        const mm1b_section *s = mm1b_section_at(b, i);
        if (mm1b_find_section(b, s->name) != s) abort();
        if (s->offset + s->length > size) abort();
        (void)mm1b_check_section(b, s);
    }
    mm1b_close(b);
}

/* Rebuilds a well-formed prefix and padding around the input's header text and data section, so that mutations
 * of the JSON and of the tensor bytes reach the table checks. */
static void exercise_repaired(const uint8_t *data, size_t size) {
    static const uint8_t magic[8] = {0x4D, 0x4D, 0x31, 0x50, 0x41, 0x43, 0x4B, 0x00};
    if (size < 98) return;
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)data[16 + i] << (8 * i);
    if (hl > size - 96) hl = size - 96;
    if (hl < 2) hl = 2;
    uint64_t data_offset = (96 + hl + 4095) / 4096 * 4096;
    const uint8_t *payload = data + 96 + hl;
    size_t plen = 0;
    if (data_offset <= size) {
        payload = data + data_offset;
        plen = size - (size_t)data_offset;
    } else {
        plen = size - (size_t)(96 + hl);
    }
    size_t total = (size_t)data_offset + plen;
    uint8_t *b = (uint8_t *)calloc(1, total);
    if (!b) return;
    memcpy(b, magic, 8);
    b[8] = 1;
    for (int i = 0; i < 8; i++) {
        b[16 + i] = (uint8_t)(hl >> (8 * i));
        b[24 + i] = (uint8_t)(data_offset >> (8 * i));
        b[32 + i] = (uint8_t)((uint64_t)plen >> (8 * i));
    }
    memcpy(b + 96, data + 96, (size_t)hl);
    mm1b_sha256(b + 96, (size_t)hl, b + 40);
    memcpy(b + data_offset, payload, plen);
    exercise(b, total);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    exercise(data, size);
    if (size >= 96) {
        uint64_t hl = 0;
        for (int i = 0; i < 8; i++) hl |= (uint64_t)data[16 + i] << (8 * i);
        if (hl <= size - 96) {
            uint8_t *copy = (uint8_t *)malloc(size);
            if (!copy) return 0;
            memcpy(copy, data, size);
            mm1b_sha256(copy + 96, (size_t)hl, copy + 40);
            exercise(copy, size);
            free(copy);
        }
    }
    exercise_repaired(data, size);
    return 0;
}

#ifdef MM1B_FUZZ_STANDALONE
/* Without libFuzzer: run each file given on the command line once. */
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *p = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
        if (p && fread(p, 1, (size_t)n, f) == (size_t)n) LLVMFuzzerTestOneInput(p, (size_t)n);
        free(p);
        fclose(f);
    }
    return 0;
}
#endif
