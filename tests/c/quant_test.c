/*
 * quant_test: checks the parser's handling of quantized tensors (bundle.md section 2.2) on the bundles written by
 * mkbundle.py, as listed in its quant_cases.tsv:
 *   ok  FILE TENSOR bits asym group rows cols codes_off codes_len scales_off scales_len zeros_off zeros_len
 *   bad FILE TENSOR FRAGMENT
 * A valid case must open and expose exactly those parameters (and its digest must match); an invalid one must be
 * refused with MM1B_EFORMAT, naming TENSOR, with FRAGMENT in the message.
 *
 * usage: quant_test SAMPLES_DIR      exit status 0 when every case passes
 */
#include "mm1bundle.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELDS 16

static int split_tabs(char *line, char **fields) {
    int n = 0;
    char *p = line;
    while (n < MAX_FIELDS) {
        fields[n++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = '\0';
        p = tab + 1;
    }
    return n;
}

static int check_ok(const char *path, char **f, int nf) {
    if (nf != 14) {
        fprintf(stderr, "%s: malformed 'ok' line (%d fields)\n", path, nf);
        return 0;
    }
    mm1b_bundle *b = NULL;
    mm1b_error e;
    if (mm1b_open_ex(path, &b, &e) != MM1B_OK) {
        fprintf(stderr, "FAIL %s: refused: %s\n", path, e.full);
        return 0;
    }
    int ok = 1;
    const mm1b_tensor *t = mm1b_find_tensor(b, f[2]);
    if (!t) {
        fprintf(stderr, "FAIL %s: no tensor '%s'\n", path, f[2]);
        mm1b_close(b);
        return 0;
    }
    uint64_t want[11];
    for (int i = 0; i < 11; i++) want[i] = strtoull(f[3 + i], NULL, 10);
    uint64_t got[11] = {t->quant_bits,    (uint64_t)t->quant_asym, t->quant_group_size, t->quant_rows,
                        t->quant_cols,    t->codes_offset,         t->codes_length,     t->scales_offset,
                        t->scales_length, t->zeros_offset,         t->zeros_length};
    static const char *names[11] = {"bits",         "asym",          "group_size",    "rows",
                                    "cols",         "codes_offset",  "codes_length",  "scales_offset",
                                    "scales_length", "zeros_offset", "zeros_length"};
    for (int i = 0; i < 11; i++) {
        if (got[i] != want[i]) {
            fprintf(stderr, "FAIL %s: %s is %" PRIu64 ", expected %" PRIu64 "\n", path, names[i], got[i], want[i]);
            ok = 0;
        }
    }
    uint64_t end = t->quant_asym ? t->zeros_offset + t->zeros_length : t->scales_offset + t->scales_length;
    if (t->length != end) {
        fprintf(stderr, "FAIL %s: length %" PRIu64 " is not the end of the sub-blocks %" PRIu64 "\n", path, t->length,
                end);
        ok = 0;
    }
    if (!t->quant_json || t->element_size != 0) {
        fprintf(stderr, "FAIL %s: quant_json missing or element_size not 0\n", path);
        ok = 0;
    }
    if (mm1b_check_tensor(b, t) != MM1B_OK) {
        fprintf(stderr, "FAIL %s: digest mismatch\n", path);
        ok = 0;
    }
    /* Float tensors carry no quant parameters. */
    for (size_t i = 0; i < mm1b_tensor_count(b); i++) {
        const mm1b_tensor *u = mm1b_tensor_at(b, i);
        if (u->quant_json) continue;
        if (u->quant_bits || u->quant_asym || u->quant_group_size || u->quant_rows || u->quant_cols ||
            u->codes_offset || u->codes_length || u->scales_offset || u->scales_length || u->zeros_offset ||
            u->zeros_length) {
            fprintf(stderr, "FAIL %s: float tensor '%s' has quant parameters\n", path, u->name);
            ok = 0;
        }
    }
    mm1b_close(b);
    return ok;
}

static int check_bad(const char *path, char **f, int nf) {
    if (nf != 4) {
        fprintf(stderr, "%s: malformed 'bad' line (%d fields)\n", path, nf);
        return 0;
    }
    mm1b_bundle *b = NULL;
    mm1b_error e;
    int rc = mm1b_open_ex(path, &b, &e);
    if (rc == MM1B_OK) {
        fprintf(stderr, "FAIL %s: accepted, expected \"%s\"\n", path, f[3]);
        mm1b_close(b);
        return 0;
    }
    int ok = 1;
    if (rc != MM1B_EFORMAT) {
        fprintf(stderr, "FAIL %s: code %d, expected MM1B_EFORMAT (%s)\n", path, rc, e.full);
        ok = 0;
    }
    if (strcmp(e.tensor, f[2]) != 0) {
        fprintf(stderr, "FAIL %s: error names tensor '%s', expected '%s' (%s)\n", path, e.tensor, f[2], e.full);
        ok = 0;
    }
    if (!strstr(e.message, f[3])) {
        fprintf(stderr, "FAIL %s: message \"%s\" does not contain \"%s\"\n", path, e.message, f[3]);
        ok = 0;
    }
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: quant_test SAMPLES_DIR\n");
        return 2;
    }
    char list[4096];
    snprintf(list, sizeof list, "%s/quant_cases.tsv", argv[1]);
    FILE *fp = fopen(list, "r");
    if (!fp) {
        fprintf(stderr, "cannot open %s\n", list);
        return 2;
    }
    char line[8192];
    int cases = 0, failed = 0;
    while (fgets(line, sizeof line, fp)) {
        size_t n = strlen(line);
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        char *f[MAX_FIELDS];
        int nf = split_tabs(line, f);
        if (nf < 3) {
            fprintf(stderr, "malformed line in %s\n", list);
            fclose(fp);
            return 2;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[1], f[1]);
        int ok;
        if (strcmp(f[0], "ok") == 0) ok = check_ok(path, f, nf);
        else if (strcmp(f[0], "bad") == 0) ok = check_bad(path, f, nf);
        else {
            fprintf(stderr, "unknown case kind '%s' in %s\n", f[0], list);
            fclose(fp);
            return 2;
        }
        cases++;
        if (!ok) failed++;
    }
    fclose(fp);
    if (cases == 0) {
        fprintf(stderr, "no cases in %s\n", list);
        return 2;
    }
    printf("quant_test: %d cases, %d failed\n", cases, failed);
    return failed ? 1 : 0;
}
